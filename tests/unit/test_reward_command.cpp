// External reward command: JSON lines out, one reward per line back, reuse across batches, and each failure
// (exit before all replies, timeout, malformed reply, an extra line, a mismatched index, no newline at the end, a
// line over 1 MiB) as an rlcu::Error naming the command and the reply line.
// The commands are /bin/sh scripts using only sh builtins and sed.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "rlcu/config.h"
#include "rlcu/error.h"
#include "rlcu/reward.h"
#include "rlcu/tokenizer.h"

using namespace rlcu;

namespace {

std::vector<std::string> strs(size_t n, const std::string& prefix) {
  std::vector<std::string> v;
  for (size_t i = 0; i < n; ++i) v.push_back(prefix + std::to_string(i));
  return v;
}

std::string error_of(RewardCommand& c, size_t n) {
  try {
    c.score(strs(n, "p"), strs(n, "c"), strs(n, "a"));
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string temp_path(const std::string& name) {
  return (std::string(::testing::TempDir()) + "/rlcu_reward_cmd_" + std::to_string(getpid()) + "_" + name);
}

}  // namespace

TEST(RewardCommand, ReadsNumbersAndObjectsAndSeesTheRequest) {
  const std::string log = temp_path("requests.jsonl");
  std::remove(log.c_str());
  // Echoes the request's index as the reward, as a bare number for even indices and {"reward": x} for odd ones.
  RewardCommand c("while IFS= read -r l; do printf '%s\\n' \"$l\" >> '" + log +
                      "'; i=$(printf '%s' \"$l\" | sed 's/.*\"index\":\\([0-9]*\\).*/\\1/'); "
                      "if [ $((i % 2)) = 0 ]; then echo \"$i.5\"; else echo \"{\\\"reward\\\": -$i}\"; fi; done",
                  10.0);
  const std::vector<std::string> prompts{"What is 2+2?", "say \"hi\"\n", "caf\xc3\xa9"};
  const std::vector<std::string> completions{"4", "hi", "bad \xff byte"};
  const std::vector<std::string> answers{"4", "", "x"};
  const std::vector<float> r = c.score(prompts, completions, answers);
  EXPECT_EQ(r, (std::vector<float>{0.5f, -1.0f, 2.5f}));
  EXPECT_TRUE(c.running());

  std::ifstream in(log);
  std::string line;
  std::vector<nlohmann::json> reqs;
  while (std::getline(in, line)) reqs.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(reqs.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(reqs[i]["index"], i);
    EXPECT_EQ(reqs[i]["prompt"], prompts[i]);
    EXPECT_EQ(reqs[i]["answer"], answers[i]);
  }
  EXPECT_EQ(reqs[0]["completion"], "4");
  EXPECT_EQ(reqs[2]["completion"], "bad \xef\xbf\xbd byte");  // invalid UTF-8 becomes U+FFFD
  std::remove(log.c_str());
}

TEST(RewardCommand, ReusedAcrossBatches) {
  // A counter that lives as long as the process: the second batch continues at 3.
  RewardCommand c("n=0; while read -r l; do n=$((n+1)); echo $n; done", 10.0);
  EXPECT_EQ(c.score(strs(2, "p"), strs(2, "c"), strs(2, "a")), (std::vector<float>{1, 2}));
  EXPECT_EQ(c.score(strs(3, "p"), strs(3, "c"), strs(3, "a")), (std::vector<float>{3, 4, 5}));
  EXPECT_TRUE(c.score({}, {}, {}).empty());
}

TEST(RewardCommand, LargeBatchDoesNotDeadlock) {
  // 4000 requests of ~1 KB each exceed any pipe buffer; the command answers as it reads.
  RewardCommand c("while read -r l; do echo 1; done", 60.0);
  const size_t n = 4000;
  std::vector<std::string> big(n, std::string(1000, 'x'));
  const std::vector<float> r = c.score(big, big, strs(n, "a"));
  ASSERT_EQ(r.size(), n);
  for (float v : r) ASSERT_EQ(v, 1.0f);
}

TEST(RewardCommand, ExitBeforeAllRepliesNamesCommandAndLine) {
  RewardCommand c("read -r l; echo 1; exit 3", 10.0);
  const std::string e = error_of(c, 3);
  EXPECT_NE(e.find("read -r l; echo 1; exit 3"), std::string::npos) << e;
  EXPECT_NE(e.find("reply line 2"), std::string::npos) << e;
  EXPECT_NE(e.find("exited"), std::string::npos) << e;
  EXPECT_FALSE(c.running());
  RewardCommand gone("exit 0", 10.0);
  const std::string e2 = error_of(gone, 2);
  EXPECT_NE(e2.find("reply line 1"), std::string::npos) << e2;
}

TEST(RewardCommand, TimeoutNamesCommandAndLine) {
  RewardCommand c("read -r l; echo 0.25; while read -r l; do :; done", 0.5);
  const auto t0 = std::chrono::steady_clock::now();
  const std::string e = error_of(c, 3);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(e.find("timed out"), std::string::npos) << e;
  EXPECT_NE(e.find("reply line 2"), std::string::npos) << e;
  EXPECT_NE(e.find("while read -r l; do :; done"), std::string::npos) << e;
  EXPECT_GE(secs, 0.45);
  EXPECT_LT(secs, 10.0);
}

TEST(RewardCommand, MalformedRepliesNameTheLine) {
  RewardCommand c("n=0; while read -r l; do n=$((n+1)); if [ $n = 2 ]; then echo '{\"score\": 1}'; else echo 1; fi; done",
                  10.0);
  std::string e = error_of(c, 3);
  EXPECT_NE(e.find("reply line 2"), std::string::npos) << e;
  EXPECT_NE(e.find("without a `reward` field"), std::string::npos) << e;
  EXPECT_NE(e.find("reward command `n=0;"), std::string::npos) << e;

  RewardCommand words("while read -r l; do echo hello; done", 10.0);
  e = error_of(words, 2);
  EXPECT_NE(e.find("reply line 1"), std::string::npos) << e;
  EXPECT_NE(e.find("not valid JSON"), std::string::npos) << e;

  RewardCommand text("while read -r l; do echo '\"1\"'; done", 10.0);
  e = error_of(text, 1);
  EXPECT_NE(e.find("expected a number"), std::string::npos) << e;
}

TEST(RewardCommand, RestartsAfterAnError) {
  // Replies garbage to a request whose prompt says "bad"; a fresh process serves the next batch.
  RewardCommand c("while IFS= read -r l; do case \"$l\" in *bad*) echo nope;; *) echo 1;; esac; done", 10.0);
  try {
    c.score({"ok", "bad"}, {"c", "c"}, {"a", "a"});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("reply line 2"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(c.running());
  EXPECT_EQ(c.score({"ok", "fine"}, {"c", "c"}, {"a", "a"}), (std::vector<float>{1, 1}));
}

TEST(RewardCommand, ThroughRewardSet) {
  const Tokenizer tok = Tokenizer::load(std::string(RLCU_TEST_FIXTURES) + "/tokenizers/qwen3");
  RewardSection cfg;
  cfg.math_answer = 0;
  cfg.command = 2.0;
  // Reward = 1 when the detokenised completion is exactly "yes" (the JSON line holds "completion":"yes").
  cfg.command_line = "while IFS= read -r l; do case \"$l\" in *'\"completion\":\"yes\"'*) echo 1;; *) echo 0;; esac; done";
  RewardSet set(cfg, &tok, Context::cpu());
  RewardBatch b;
  for (const char* s : {"yes", "no", "yes!"}) {
    RewardItem it;
    it.prompt = "p";
    it.completion = tok.encode(s);
    b.items.push_back(it);
  }
  const RewardResult r = set.score(b);
  EXPECT_EQ(r.components.at("command"), (std::vector<float>{1, 0, 0}));
  EXPECT_EQ(r.total, (std::vector<float>{2, 0, 0}));
}

// ---- strictness: one line per request, bounded lines --------------------------------------------------------------

TEST(RewardCommand, AnExtraLineIsAnErrorNotTheNextCompletionsReward) {
  // Four lines (in one write) for a batch of three: the fourth answers no request. Before, it became the reward of
  // the next batch's first completion.
  RewardCommand c("read -r l; printf '1\\n2\\n3\\n4\\n'; while read -r l; do echo 9; done", 10.0);
  std::string e = error_of(c, 3);
  EXPECT_NE(e.find("reward command `read -r l;"), std::string::npos) << e;
  EXPECT_NE(e.find("an extra reply line after reply line 3 of 3, the batch's last: `4`"), std::string::npos) << e;
  EXPECT_FALSE(c.running());

  // Extra output after the batch's last reply, arriving late: seen before the next batch is written.
  RewardCommand after("n=0; while read -r l; do n=$((n+1)); echo 1; if [ $n = 2 ]; then sleep 0.3; echo 5; fi; done",
                      10.0);
  EXPECT_EQ(after.score(strs(2, "p"), strs(2, "c"), strs(2, "a")), (std::vector<float>{1, 1}));
  usleep(600000);
  e = error_of(after, 2);
  EXPECT_NE(e.find("extra reply line before this batch's requests were written"), std::string::npos) << e;
  EXPECT_NE(e.find("`5`"), std::string::npos) << e;
}

TEST(RewardCommand, AMismatchedIndexIsAnError) {
  RewardCommand c("n=0; while read -r l; do echo \"{\\\"reward\\\": 1, \\\"index\\\": $((1 - n))}\"; n=$((n+1)); done",
                  10.0);
  const std::string e = error_of(c, 2);
  EXPECT_NE(e.find("reply line 1"), std::string::npos) << e;
  EXPECT_NE(e.find("its `index` is 1, but this line answers request index 0"), std::string::npos) << e;
  RewardCommand ok("n=0; while read -r l; do echo \"{\\\"reward\\\": $n, \\\"index\\\": $n}\"; n=$((n+1)); done", 10.0);
  EXPECT_EQ(ok.score(strs(3, "p"), strs(3, "c"), strs(3, "a")), (std::vector<float>{0, 1, 2}));
}

TEST(RewardCommand, NoNewlineAtTheEndIsAnError) {
  // The last reply without a newline, then exit: the line may be cut short, so it is not used.
  RewardCommand c("read -r l; echo 1; read -r l; printf 2; exit 0", 10.0);
  const std::string e = error_of(c, 2);
  EXPECT_NE(e.find("reply line 2 of 2 of the batch has no newline at the end of the output: `2`"), std::string::npos)
      << e;
}

TEST(RewardCommand, ALineOverTheBoundIsAnErrorNotUnboundedMemory) {
  // 3 MiB without a newline (the command would go on for ever): the error comes at 1 MiB.
  RewardCommand endless("read -r l; while :; do printf '%01024d' 0; done", 30.0);
  std::string e = error_of(endless, 1);
  EXPECT_NE(e.find("reply line 1 of 1 of the batch is longer than 1048576 bytes (no newline yet): `000"),
            std::string::npos)
      << e.substr(0, 300);
  EXPECT_LT(e.size(), 400u);  // a prefix of the text, not the megabyte
  // A long line under the bound is parsed (a number after 1000 spaces).
  RewardCommand spaces("read -r l; printf '%1000s1\\n' ''", 30.0);
  EXPECT_EQ(spaces.score(strs(1, "p"), strs(1, "c"), strs(1, "a")), (std::vector<float>{1}));
}

TEST(ParseRewardReply, Forms) {
  float r = 0;
  EXPECT_EQ(parse_reward_reply("0.5", 0, &r), "");
  EXPECT_EQ(r, 0.5f);
  EXPECT_EQ(parse_reward_reply("{\"reward\": -2, \"index\": 4}", 4, &r), "");
  EXPECT_EQ(r, -2.0f);
  EXPECT_NE(parse_reward_reply("{\"reward\": 1, \"index\": -1}", 0, &r), "");
  EXPECT_NE(parse_reward_reply("{\"reward\": 1, \"index\": \"0\"}", 0, &r), "");
  EXPECT_EQ(parse_reward_reply("1 2", 0, &r), "not valid JSON");
  EXPECT_EQ(parse_reward_reply("", 0, &r), "not valid JSON");
}
