// The rollout engine's scheduler without a model. A fake sampler stands in for the runner: the token sampled for
// sequence id at position p is a hash of (seed, id, p), as ops::sample keys its draws, so a completion must not
// depend on batching or preemption.
//
// Deterministic cases: a group prefill forks the prompt's blocks to its samples and frees the group; copy-on-write
// is reported when a sample first writes to the shared, partially filled last block (and never for a full one);
// the most recently admitted running sequence is the preemption victim; a sequence alone on a full pool preempts
// itself (a decode step without rows) and an entry that can never fit is an error; admission stops at the running
// slots and the prefill budget; each stop rule.
// A randomized test runs 1,000 random workloads (requests with random n and prompt lengths, random EOS ids and stop
// strings over random token bytes, tiny pools that force preemption) and checks after every step: the block
// manager's invariants, that exactly the running sequences hold blocks, that no sequence is both running and
// waiting, the batch limit, the prefill budget, that admission stops only where a limit is reached, that tokens are
// appended in position order, that a recompute prefill feeds prompt + the sequence's tokens, that the victims are
// the most recently admitted and wait at the front, the decode batch's slots, block tables and copy-on-write
// copies; at the end that every sequence finished with the completion and finish reason of an independent
// reference of the stop rules, and that every block is back.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "engine/scheduler.h"
#include "rlcu/error.h"
#include "rlcu/rng.h"
#include "rlcu/token_bytes.h"

using namespace rlcu;
using namespace rlcu::engine;

namespace {

int32_t fake_token(uint64_t seed, int32_t id, int32_t pos, int64_t vocab) {
  return static_cast<int32_t>(mix_key(mix_key(seed, static_cast<uint64_t>(id)), static_cast<uint64_t>(pos)) %
                              static_cast<uint64_t>(vocab));
}
float fake_logprob(int32_t id, int32_t pos) { return -0.25f * static_cast<float>(pos) - static_cast<float>(id); }

SchedulerConfig make_config(int64_t max_batch, int64_t prefill_tokens, int64_t max_model_len, int64_t num_blocks,
                            int64_t block_size, int64_t watermark = 0, int64_t vocab = 16) {
  SchedulerConfig c;
  c.max_batch = max_batch;
  c.prefill_tokens = prefill_tokens;
  c.max_model_len = max_model_len;
  c.vocab_size = vocab;
  c.blocks.num_blocks = num_blocks;
  c.blocks.block_size = block_size;
  c.blocks.watermark_blocks = watermark;
  return c;
}

SamplingOptions no_stops(int64_t max_new_tokens) {
  SamplingOptions so;
  so.max_new_tokens = max_new_tokens;
  return so;
}

// Runs `step` with the given tokens (log-probs from fake_logprob).
void apply(Scheduler& sched, const Step& step, const std::vector<int32_t>& tokens) {
  std::vector<float> lps;
  for (int64_t r = 0; r < step.num_samples(); ++r)
    lps.push_back(fake_logprob(step.sample_ids[static_cast<size_t>(r)], step.sample_positions[static_cast<size_t>(r)]));
  sched.postprocess(step, tokens, lps);
}

// Runs `step` with one fixed token for every row.
void apply_all(Scheduler& sched, const Step& step, int32_t token) {
  apply(sched, step, std::vector<int32_t>(static_cast<size_t>(step.num_samples()), token));
}

}  // namespace

TEST(Scheduler, GroupPrefillForksThePromptsBlocksToItsSamples) {
  Scheduler sched(make_config(8, 64, 32, 16, 4));
  const std::vector<Request> reqs = {{{1, 2, 3, 4, 5, 6}, 3}};
  sched.start(reqs, no_stops(4));
  const Step step = sched.schedule();
  ASSERT_EQ(step.kind, StepKind::Prefill);
  ASSERT_EQ(step.admitted.size(), 1u);
  EXPECT_EQ(step.prefill.ids, reqs[0].prompt);  // the prompt once, not once per sample
  EXPECT_EQ(step.prefill.positions, (std::vector<int32_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(step.prefill.cu_seqlens, (std::vector<int32_t>{0, 6}));
  EXPECT_EQ(step.prefill.logit_rows, (std::vector<int32_t>{5, 5, 5}));
  EXPECT_EQ(step.sample_ids, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(step.sample_positions, (std::vector<int32_t>{6, 6, 6}));
  const BlockManager& bm = sched.block_manager();
  const std::vector<BlockId> prompt_blocks = bm.block_table(Scheduler::group_id(0));
  ASSERT_EQ(prompt_blocks.size(), 2u);
  for (int64_t p = 0; p < 6; ++p)
    EXPECT_EQ(step.prefill.slots[static_cast<size_t>(p)], bm.slot(Scheduler::group_id(0), p));
  apply_all(sched, step, 7);
  EXPECT_FALSE(bm.has(Scheduler::group_id(0)));
  EXPECT_EQ(bm.sequences(), (std::vector<SeqId>{0, 1, 2}));
  for (SeqId s = 0; s < 3; ++s) {
    EXPECT_EQ(bm.block_table(s), prompt_blocks);
    EXPECT_EQ(bm.num_tokens(s), 6);
    EXPECT_EQ(sched.sequence(static_cast<int32_t>(s)).ids, (std::vector<int32_t>{7}));
  }
  for (BlockId b : prompt_blocks) EXPECT_EQ(bm.ref_count(b), 3);
  EXPECT_EQ(bm.num_free(), 14);
  EXPECT_EQ(sched.running(), (std::vector<int32_t>{0, 1, 2}));
  bm.check_invariants();
}

TEST(Scheduler, CopyOnWriteWhenASampleFirstWritesToASharedPartialBlock) {
  Scheduler sched(make_config(8, 64, 32, 16, 4));
  const std::vector<Request> reqs = {{{1, 2, 3, 4, 5, 6}, 3}, {{1, 2, 3, 4, 5, 6, 7, 8}, 2}};
  sched.start(reqs, no_stops(4));
  const Step prefill = sched.schedule();
  ASSERT_EQ(prefill.admitted.size(), 2u);
  apply_all(sched, prefill, 9);
  const BlockManager& bm = sched.block_manager();
  const std::vector<BlockId> shared6 = bm.block_table(0), shared8 = bm.block_table(3);
  const Step step = sched.schedule();
  ASSERT_EQ(step.kind, StepKind::Decode);
  EXPECT_EQ(step.rows, (std::vector<int32_t>{0, 1, 2, 3, 4}));
  // Prompt of 6 in blocks of 4: the last block holds 2 tokens and is shared by 3 samples; the first two copy it,
  // the last writes in place. Prompt of 8 ends on a full block: each sample starts a new block, no copy.
  ASSERT_EQ(step.copies.size(), 2u);
  for (size_t k = 0; k < 2; ++k) {
    EXPECT_EQ(step.copies[k].src, shared6[1]);
    EXPECT_EQ(step.copies[k].num_tokens, 2);
    EXPECT_EQ(step.copies[k].dst, bm.block_table(static_cast<SeqId>(k))[1]);
    EXPECT_EQ(step.decode.slots[k], step.copies[k].dst * 4 + 2);
  }
  EXPECT_NE(step.copies[0].dst, step.copies[1].dst);
  EXPECT_EQ(bm.block_table(2), shared6);
  EXPECT_EQ(step.decode.slots[2], shared6[1] * 4 + 2);
  EXPECT_EQ(bm.ref_count(shared6[0]), 3);  // the full block stays shared
  for (SeqId s : {3, 4}) {
    ASSERT_EQ(bm.block_table(s).size(), 3u);
    EXPECT_EQ(bm.block_table(s)[1], shared8[1]);
    EXPECT_EQ(step.decode.slots[static_cast<size_t>(s)], bm.block_table(s)[2] * 4);
  }
  EXPECT_EQ(step.decode.positions, (std::vector<int32_t>{6, 6, 6, 8, 8}));
  EXPECT_EQ(step.decode.context_lens, (std::vector<int32_t>{7, 7, 7, 9, 9}));
  EXPECT_EQ(step.sample_positions, step.decode.context_lens);
  EXPECT_EQ(step.decode.ids, (std::vector<int32_t>{9, 9, 9, 9, 9}));
  const int64_t mb = sched.max_blocks_per_seq();
  ASSERT_EQ(static_cast<int64_t>(step.decode.block_tables.size()), 5 * mb);
  for (size_t k = 0; k < 5; ++k) {
    std::vector<int32_t> row(step.decode.block_tables.begin() + static_cast<std::ptrdiff_t>(k) * mb,
                             step.decode.block_tables.begin() + static_cast<std::ptrdiff_t>(k + 1) * mb);
    const std::vector<BlockId>& table = bm.block_table(static_cast<SeqId>(k));
    std::vector<int32_t> want(table.begin(), table.end());
    want.resize(static_cast<size_t>(mb), 0);
    EXPECT_EQ(row, want) << "row " << k;
  }
  apply_all(sched, step, 9);
  // Written blocks are private now: the next step copies nothing.
  EXPECT_TRUE(sched.schedule().copies.empty());
}

TEST(Scheduler, TheMostRecentlyAdmittedSequenceIsTheVictim) {
  // Blocks of 2, a pool of 4: two prompts of 3 tokens take 2 blocks each; the step that needs a fifth block
  // preempts the later admitted one, though the earlier one is asking.
  Scheduler sched(make_config(8, 64, 32, 4, 2));
  const std::vector<Request> reqs = {{{1, 2, 3}, 1}, {{4, 5, 6}, 1}};
  sched.start(reqs, no_stops(10));
  const Step prefill = sched.schedule();
  ASSERT_EQ(prefill.admitted.size(), 2u);
  apply_all(sched, prefill, 1);
  EXPECT_LT(sched.sequence(0).admitted, sched.sequence(1).admitted);
  Step step = sched.schedule();  // position 3 fits the half-filled blocks
  EXPECT_EQ(step.rows, (std::vector<int32_t>{0, 1}));
  apply_all(sched, step, 2);
  EXPECT_EQ(sched.block_manager().num_free(), 0);
  step = sched.schedule();
  ASSERT_EQ(step.kind, StepKind::Decode);
  EXPECT_EQ(step.rows, (std::vector<int32_t>{0}));
  EXPECT_EQ(sched.stats().preemptions, 1);
  ASSERT_EQ(sched.waiting().size(), 1u);
  EXPECT_EQ(sched.waiting().front().seq, 1);
  EXPECT_EQ(sched.sequence(1).phase, SeqPhase::Waiting);
  EXPECT_FALSE(sched.block_manager().has(1));
  EXPECT_EQ(sched.prefill_tokens(sched.waiting().front()), (std::vector<int32_t>{4, 5, 6, 1, 2}));
  apply_all(sched, step, 3);
  EXPECT_EQ(sched.running(), (std::vector<int32_t>{0}));
  // Sequence 0 finishes (EOS) and frees its blocks: the victim is recomputed from prompt + its tokens, and
  // samples its next token at the position it would have had without preemption.
  SamplingOptions so = no_stops(10);
  so.eos_ids = {15};
  sched.start(reqs, so);
  apply_all(sched, sched.schedule(), 1);
  apply_all(sched, sched.schedule(), 2);
  step = sched.schedule();
  ASSERT_EQ(step.rows, (std::vector<int32_t>{0}));
  apply_all(sched, step, 15);
  EXPECT_EQ(sched.sequence(0).finish, FinishReason::Eos);
  EXPECT_EQ(sched.block_manager().num_free(), 4);
  step = sched.schedule();
  ASSERT_EQ(step.kind, StepKind::Prefill);
  EXPECT_EQ(step.prefill.ids, (std::vector<int32_t>{4, 5, 6, 1, 2}));
  EXPECT_EQ(step.sample_ids, (std::vector<int32_t>{1}));
  EXPECT_EQ(step.sample_positions, (std::vector<int32_t>{5}));
  apply_all(sched, step, 4);
  EXPECT_GT(sched.sequence(1).admitted, sched.sequence(0).admitted);
  EXPECT_EQ(sched.sequence(1).ids, (std::vector<int32_t>{1, 2, 4}));
}

TEST(Scheduler, ASequenceAloneOnAFullPoolPreemptsItselfThenAnEntryThatNeverFitsIsAnError) {
  // Blocks of 1, a pool of 5: a prompt of 2 grows to 5 cached tokens; the next append has no block and the only
  // running sequence is its own victim, leaving a decode step without rows; its recompute (6 tokens) cannot fit.
  Scheduler sched(make_config(4, 64, 64, 5, 1));
  const std::vector<Request> reqs = {{{1, 2}, 1}};
  sched.start(reqs, no_stops(20));
  apply_all(sched, sched.schedule(), 3);
  for (int i = 0; i < 3; ++i) {
    const Step step = sched.schedule();
    ASSERT_EQ(step.rows.size(), 1u);
    apply_all(sched, step, 3);
  }
  EXPECT_EQ(sched.block_manager().num_free(), 0);
  const Step step = sched.schedule();
  EXPECT_EQ(step.kind, StepKind::Decode);
  EXPECT_TRUE(step.rows.empty());
  EXPECT_TRUE(step.copies.empty());
  EXPECT_EQ(step.num_samples(), 0);
  EXPECT_EQ(sched.stats().preemptions, 1);
  apply(sched, step, {});
  EXPECT_TRUE(sched.running().empty());
  EXPECT_EQ(sched.block_manager().num_free(), 5);
  try {
    sched.schedule();
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the KV pool (5 blocks of 1 tokens) cannot hold the next prompt"),
              std::string::npos)
        << e.what();
  }
}

TEST(Scheduler, AdmissionStopsAtTheRunningSlotsAndThePrefillBudget) {
  // Budget of 10 tokens: prompts of 6 and 6 need two prefill passes, both before the first decode step.
  Scheduler a(make_config(8, 10, 32, 32, 4));
  const std::vector<Request> two = {{{1, 2, 3, 4, 5, 6}, 1}, {{1, 2, 3, 4, 5, 6}, 1}};
  a.start(two, no_stops(3));
  Step step = a.schedule();
  ASSERT_EQ(step.kind, StepKind::Prefill);
  EXPECT_EQ(step.admitted.size(), 1u);
  apply_all(a, step, 1);
  step = a.schedule();
  ASSERT_EQ(step.kind, StepKind::Prefill);
  EXPECT_EQ(step.admitted.front().request, 1);
  apply_all(a, step, 1);
  EXPECT_EQ(a.schedule().kind, StepKind::Decode);
  // A batch of 4: a group of 3 runs, the next group of 3 waits until the first group finishes.
  Scheduler b(make_config(4, 64, 32, 32, 4));
  const std::vector<Request> groups = {{{1, 2}, 3}, {{3, 4}, 3}};
  b.start(groups, no_stops(2));
  step = b.schedule();
  EXPECT_EQ(step.admitted.size(), 1u);
  apply_all(b, step, 1);
  step = b.schedule();
  ASSERT_EQ(step.kind, StepKind::Decode);
  apply_all(b, step, 1);  // the first group reaches max_new_tokens
  EXPECT_TRUE(b.running().empty());
  step = b.schedule();
  ASSERT_EQ(step.kind, StepKind::Prefill);
  EXPECT_EQ(step.admitted.front().request, 1);
}

TEST(Scheduler, StopRules) {
  // Token i spells "<i>"; "1><2" spans tokens 1 and 2.
  std::vector<std::string> spelled;
  for (int i = 0; i < 16; ++i) spelled.push_back("<" + std::to_string(i) + ">");
  const TokenBytesTable bytes = TokenBytesTable::from_strings(spelled);
  const std::vector<Request> reqs = {{{5}, 1}};
  auto run = [&](const SamplingOptions& so, int64_t max_len, const std::vector<int32_t>& tokens) {
    Scheduler sched(make_config(4, 64, max_len, 32, 4));
    sched.start(reqs, so);
    for (int32_t t : tokens) {
      if (sched.done()) break;
      apply_all(sched, sched.schedule(), t);
    }
    EXPECT_TRUE(sched.done());
    return sched.take_completions().at(0);
  };
  SamplingOptions so = no_stops(8);
  so.eos_ids = {9, 4};
  Completion c = run(so, 64, {3, 4, 7});
  EXPECT_EQ(c.ids, (std::vector<int32_t>{3, 4}));  // the EOS token is kept
  EXPECT_EQ(c.finish, FinishReason::Eos);
  EXPECT_EQ(c.logprobs, (std::vector<float>{fake_logprob(0, 1), fake_logprob(0, 2)}));
  so.ignore_eos = true;
  c = run(so, 64, {3, 4, 7, 7, 7, 7, 7, 7, 7});
  EXPECT_EQ(c.ids.size(), 8u);
  EXPECT_EQ(c.finish, FinishReason::Length);
  so.token_bytes = &bytes;
  so.stop_strings = {"zz", "1><2"};
  c = run(so, 64, {3, 1, 2, 7});
  EXPECT_EQ(c.ids, (std::vector<int32_t>{3, 1, 2}));
  EXPECT_EQ(c.finish, FinishReason::Stop);
  c = run(so, 64, {1, 3, 2, 7, 7, 7, 7, 7, 7});  // "<1><3><2>": no match across the gap
  EXPECT_EQ(c.finish, FinishReason::Length);
  // The context length: a prompt of 1 in a context of 4 leaves room for 3 tokens.
  c = run(no_stops(8), 4, {1, 1, 1, 1});
  EXPECT_EQ(c.ids.size(), 3u);
  EXPECT_EQ(c.finish, FinishReason::Length);
}

// ---- randomized ------------------------------------------------------------------------------------------------

namespace {

struct Workload {
  SchedulerConfig config;
  std::vector<Request> requests;
  SamplingOptions sampling;
  std::unique_ptr<TokenBytesTable> bytes;
  uint64_t seed = 0;
};

Workload random_workload(uint64_t seed) {
  KeyedRng g(mix_key(20261203, seed));
  auto uni = [&](int64_t lo, int64_t hi) { return g.uniform(lo, hi); };
  Workload w;
  w.seed = seed;
  const int64_t vocab = uni(4, 24), bs = std::vector<int64_t>{1, 2, 3, 4, 8}[static_cast<size_t>(uni(0, 4))];
  const int64_t max_len = uni(4, 40), max_batch = uni(1, 10), watermark = uni(0, 2);
  w.requests.resize(static_cast<size_t>(uni(1, 8)));
  int64_t longest = 0;
  for (Request& r : w.requests) {
    r.prompt.resize(static_cast<size_t>(uni(1, std::min<int64_t>(max_len - 1, 12))));
    for (int32_t& t : r.prompt) t = static_cast<int32_t>(uni(0, vocab - 1));
    r.n = static_cast<int>(uni(1, max_batch));
    longest = std::max<int64_t>(longest, static_cast<int64_t>(r.prompt.size()));
  }
  // Half the pools hold a sequence of max_len tokens, so a recompute always fits once nothing else runs; the
  // others just hold the longest prompt (what the engine's validation asks), so a sequence alone may run out and
  // its recompute may not fit. The budget holds the longest prompt. Anything smaller than what the sequences need
  // together forces preemption.
  const int64_t need = (uni(0, 1) ? max_len : longest + 1);
  const int64_t num_blocks = (need + bs - 1) / bs + watermark + uni(0, 8);
  w.config = make_config(max_batch, uni(longest, 3 * max_len), max_len, num_blocks, bs, watermark, vocab);
  w.sampling.max_new_tokens = uni(1, 30);
  for (int64_t k = uni(0, 2); k > 0; --k) w.sampling.eos_ids.push_back(static_cast<int32_t>(uni(0, vocab - 1)));
  w.sampling.ignore_eos = uni(0, 4) == 0;
  if (uni(0, 1)) {
    // Tokens spell 0-2 letters of "abc"; stop strings of 2-3 letters often span tokens.
    std::vector<std::string> spelled(static_cast<size_t>(vocab));
    for (std::string& s : spelled)
      for (int64_t k = uni(0, 2); k > 0; --k) s += static_cast<char>('a' + uni(0, 2));
    w.bytes = std::make_unique<TokenBytesTable>(TokenBytesTable::from_strings(spelled));
    w.sampling.token_bytes = w.bytes.get();
    for (int64_t k = uni(1, 2); k > 0; --k) {
      std::string st;
      for (int64_t c = uni(2, 3); c > 0; --c) st += static_cast<char>('a' + uni(0, 2));
      w.sampling.stop_strings.push_back(st);
    }
  }
  return w;
}

// The stop rules applied to the fake sampler's stream alone, searching the whole completion text.
Completion reference(const Workload& w, int32_t id, int request) {
  const auto P = static_cast<int32_t>(w.requests[static_cast<size_t>(request)].prompt.size());
  const SamplingOptions& so = w.sampling;
  Completion c;
  std::string text;
  for (;;) {
    const int32_t pos = P + static_cast<int32_t>(c.ids.size());
    const int32_t tok = fake_token(w.seed, id, pos, w.config.vocab_size);
    c.ids.push_back(tok);
    c.logprobs.push_back(fake_logprob(id, pos));
    if (!so.ignore_eos && std::count(so.eos_ids.begin(), so.eos_ids.end(), tok)) {
      c.finish = FinishReason::Eos;
      return c;
    }
    if (so.token_bytes) text += so.token_bytes->token(tok);
    for (const std::string& st : so.stop_strings)
      if (text.find(st) != std::string::npos) {
        c.finish = FinishReason::Stop;
        return c;
      }
    if (static_cast<int64_t>(c.ids.size()) >= so.max_new_tokens || pos + 1 >= w.config.max_model_len) {
      c.finish = FinishReason::Length;
      return c;
    }
  }
}

struct Coverage {
  int64_t multi_entry_prefills = 0, recomputes = 0, preemptions = 0, rowless_decodes = 0, copies = 0;
  int64_t decodes_with_waiting = 0, eos = 0, stop = 0, length = 0, length_by_context = 0;
  int64_t completed = 0, pool_errors = 0;
};

// Drives one workload through the scheduler with the fake sampler, checking every step.
class Driver {
 public:
  Driver(const Workload& w, Coverage& cov) : w_(w), cov_(cov), sched_(w.config) {}

  void run() {
    sched_.start(w_.requests, w_.sampling);
    tokens_.assign(static_cast<size_t>(sched_.num_sequences()), {});
    for (int steps = 0; !sched_.done(); ++steps) {
      ASSERT_LT(steps, 100000) << "no progress";
      const std::vector<int32_t> running = sched_.running();
      const std::deque<WaitEntry> waiting = sched_.waiting();
      std::map<int32_t, std::vector<BlockId>> tables;
      for (int32_t id : running) tables[id] = sched_.block_manager().block_table(id);
      const bool front_fits = !waiting.empty() && fits(waiting.front(), static_cast<int64_t>(running.size()), 0, 0);
      Step step;
      try {
        step = sched_.schedule();
      } catch (const Error& e) {
        // Legitimate only when nothing runs and the front entry does not fit even alone.
        ASSERT_NE(std::string(e.what()).find("cannot hold the next prompt"), std::string::npos) << e.what();
        ASSERT_TRUE(running.empty());
        ASSERT_FALSE(waiting.empty());
        ASSERT_FALSE(front_fits);
        const int64_t T = static_cast<int64_t>(entry_tokens(waiting.front()).size());
        ASSERT_TRUE(T > w_.config.prefill_tokens || !sched_.block_manager().can_allocate(T));
        ++cov_.pool_errors;
        return;
      }
      if (step.kind == StepKind::Prefill) {
        ASSERT_TRUE(front_fits) << "a prefill pass although the front entry does not fit";
        check_prefill(step, running, waiting);
      } else {
        ASSERT_FALSE(front_fits) << "a decode step although the front entry fits";
        check_decode(step, running, waiting, tables);
      }
      if (::testing::Test::HasFatalFailure()) return;
      std::vector<int32_t> toks;
      for (int64_t r = 0; r < step.num_samples(); ++r) {
        const int32_t id = step.sample_ids[static_cast<size_t>(r)], pos = step.sample_positions[static_cast<size_t>(r)];
        ASSERT_EQ(pos, prompt_len(id) + static_cast<int32_t>(tokens_[static_cast<size_t>(id)].size()))
            << "sequence " << id << " sampled out of position order";
        toks.push_back(fake_token(w_.seed, id, pos, w_.config.vocab_size));
        tokens_[static_cast<size_t>(id)].push_back(toks.back());
      }
      apply(sched_, step, toks);
      check_state();
      if (::testing::Test::HasFatalFailure()) return;
    }
    check_end();
  }

 private:
  int32_t prompt_len(int32_t id) const {
    return static_cast<int32_t>(w_.requests[static_cast<size_t>(sched_.sequence(id).request)].prompt.size());
  }
  int entry_rows(const WaitEntry& e) const {
    return e.request >= 0 ? w_.requests[static_cast<size_t>(e.request)].n : 1;
  }
  std::vector<int32_t> entry_tokens(const WaitEntry& e) const {
    if (e.request >= 0) return w_.requests[static_cast<size_t>(e.request)].prompt;
    std::vector<int32_t> t = w_.requests[static_cast<size_t>(sched_.sequence(e.seq).request)].prompt;
    t.insert(t.end(), tokens_[static_cast<size_t>(e.seq)].begin(), tokens_[static_cast<size_t>(e.seq)].end());
    return t;
  }
  // Whether entry e may join a prefill pass that already holds `rows` logit rows and `tokens` tokens.
  bool fits(const WaitEntry& e, int64_t running, int64_t rows, int64_t tokens) const {
    const int64_t n = entry_rows(e), T = static_cast<int64_t>(entry_tokens(e).size());
    return running + rows + n <= w_.config.max_batch && tokens + T <= w_.config.prefill_tokens &&
           rows + n <= w_.config.max_batch && sched_.block_manager().can_allocate(T);
  }

  void check_prefill(const Step& step, const std::vector<int32_t>& running, const std::deque<WaitEntry>& waiting) {
    const PrefillInput& pin = step.prefill;
    const size_t k = step.admitted.size();
    ASSERT_GE(k, 1u);
    ASSERT_LE(k, waiting.size());
    ASSERT_EQ(sched_.waiting().size(), waiting.size() - k);
    ASSERT_EQ(sched_.running(), running);
    ASSERT_EQ(pin.cu_seqlens.size(), k + 1);
    ASSERT_LE(static_cast<int64_t>(pin.ids.size()), w_.config.prefill_tokens);
    ASSERT_LE(step.num_samples(), w_.config.max_batch);
    ASSERT_LE(static_cast<int64_t>(running.size()) + step.num_samples(), w_.config.max_batch);
    ASSERT_EQ(pin.logit_rows.size(), step.sample_ids.size());
    ASSERT_EQ(pin.positions.size(), pin.ids.size());
    ASSERT_EQ(pin.slots.size(), pin.ids.size());
    size_t row = 0;
    int32_t longest = 0;
    for (size_t i = 0; i < k; ++i) {
      const WaitEntry& e = step.admitted[i];
      ASSERT_EQ(e.request, waiting[i].request);
      ASSERT_EQ(e.seq, waiting[i].seq);
      if (e.seq >= 0) {
        ASSERT_EQ(sched_.sequence(e.seq).phase, SeqPhase::Waiting);
        ++cov_.recomputes;
      }
      const std::vector<int32_t> want = entry_tokens(e);  // a recompute feeds prompt + its tokens so far
      const int32_t b = pin.cu_seqlens[i], T = pin.cu_seqlens[i + 1] - b;
      ASSERT_EQ(T, static_cast<int32_t>(want.size()));
      longest = std::max(longest, T);
      const SeqId owner = e.request >= 0 ? Scheduler::group_id(e.request) : e.seq;
      for (int32_t p = 0; p < T; ++p) {
        ASSERT_EQ(pin.ids[static_cast<size_t>(b + p)], want[static_cast<size_t>(p)]);
        ASSERT_EQ(pin.positions[static_cast<size_t>(b + p)], p);
        ASSERT_EQ(pin.slots[static_cast<size_t>(b + p)], sched_.block_manager().slot(owner, p));
      }
      for (int j = 0; j < entry_rows(e); ++j, ++row) {
        ASSERT_EQ(pin.logit_rows[row], b + T - 1);
        ASSERT_EQ(step.sample_positions[row], T);
        // A group's rows sample its n sequences in order; a recompute's row samples that sequence.
        if (e.request >= 0) {
          ASSERT_EQ(sched_.sequence(step.sample_ids[row]).request, e.request);
          ASSERT_EQ(sched_.sequence(step.sample_ids[row]).sample, j);
        } else {
          ASSERT_EQ(step.sample_ids[row], e.seq);
        }
      }
    }
    ASSERT_EQ(pin.max_seqlen, longest);
    ASSERT_EQ(row, step.sample_ids.size());
    // Admission stopped at a limit.
    if (!sched_.waiting().empty()) {
      ASSERT_FALSE(fits(sched_.waiting().front(), static_cast<int64_t>(running.size()), step.num_samples(),
                        static_cast<int64_t>(pin.ids.size())));
    }
    cov_.multi_entry_prefills += k > 1;
  }

  void check_decode(const Step& step, const std::vector<int32_t>& running, const std::deque<WaitEntry>& waiting,
                    const std::map<int32_t, std::vector<BlockId>>& tables) {
    const BlockManager& bm = sched_.block_manager();
    const DecodeInput& din = step.decode;
    const size_t B = step.rows.size();
    ASSERT_TRUE(std::is_sorted(step.rows.begin(), step.rows.end()));
    std::set<int32_t> rows(step.rows.begin(), step.rows.end()), victims;
    ASSERT_EQ(rows.size(), B);
    for (int32_t id : running)
      if (!rows.count(id)) victims.insert(id);
    ASSERT_EQ(rows.size() + victims.size(), running.size()) << "a row that was not running";
    // Victims: the most recently admitted, now waiting at the front (least recent first), holding no blocks.
    const size_t v = victims.size();
    ASSERT_EQ(sched_.waiting().size(), waiting.size() + v);
    int64_t last_admitted = -1;
    for (size_t i = 0; i < v; ++i) {
      const WaitEntry& e = sched_.waiting()[i];
      ASSERT_TRUE(e.seq >= 0 && victims.count(e.seq)) << "waiting entry " << i;
      ASSERT_GT(sched_.sequence(e.seq).admitted, last_admitted);
      last_admitted = sched_.sequence(e.seq).admitted;
      ASSERT_EQ(sched_.sequence(e.seq).phase, SeqPhase::Waiting);
      ASSERT_FALSE(bm.has(e.seq));
      for (int32_t r : step.rows) ASSERT_GT(sched_.sequence(e.seq).admitted, sched_.sequence(r).admitted);
    }
    for (size_t i = 0; i < waiting.size(); ++i) {
      ASSERT_EQ(sched_.waiting()[v + i].request, waiting[i].request);
      ASSERT_EQ(sched_.waiting()[v + i].seq, waiting[i].seq);
    }
    cov_.preemptions += static_cast<int64_t>(v);
    preemptions_ += static_cast<int64_t>(v);
    cov_.rowless_decodes += B == 0;
    cov_.decodes_with_waiting += !waiting.empty();
    ASSERT_EQ(din.ids.size(), B);
    ASSERT_EQ(din.positions.size(), B);
    ASSERT_EQ(din.slots.size(), B);
    ASSERT_EQ(din.context_lens.size(), B);
    ASSERT_EQ(step.sample_ids, step.rows);
    ASSERT_EQ(step.sample_positions, din.context_lens);
    const int64_t mb = sched_.max_blocks_per_seq(), bs = bm.block_size();
    ASSERT_EQ(static_cast<int64_t>(din.block_tables.size()), static_cast<int64_t>(B) * mb);
    size_t copies = 0;
    for (size_t k = 0; k < B; ++k) {
      const int32_t id = step.rows[k];
      const std::vector<int32_t>& toks = tokens_[static_cast<size_t>(id)];
      const int32_t pos = prompt_len(id) + static_cast<int32_t>(toks.size()) - 1;
      ASSERT_EQ(din.ids[k], toks.back()) << "the last sampled token is fed";
      ASSERT_EQ(din.positions[k], pos);
      ASSERT_EQ(din.context_lens[k], pos + 1);
      ASSERT_EQ(bm.num_tokens(id), pos + 1);
      ASSERT_EQ(din.slots[k], bm.slot(id, pos));
      const std::vector<BlockId>& table = bm.block_table(id);
      for (int64_t j = 0; j < mb; ++j)
        ASSERT_EQ(din.block_tables[static_cast<size_t>(static_cast<int64_t>(k) * mb + j)],
                  j < static_cast<int64_t>(table.size()) ? table[static_cast<size_t>(j)] : 0);
      const std::vector<BlockId>& before = tables.at(id);
      if (pos % bs == 0) {
        ASSERT_EQ(table.size(), before.size() + 1);
        ASSERT_TRUE(std::equal(before.begin(), before.end(), table.begin()));
        continue;
      }
      ASSERT_EQ(table.size(), before.size());
      ASSERT_TRUE(std::equal(before.begin(), before.end() - 1, table.begin()));
      if (table.back() == before.back()) continue;
      // Copy-on-write of the shared partial block: reported with its filled length.
      const bool reported = std::any_of(step.copies.begin(), step.copies.end(), [&](const BlockCopy& c) {
        return c.src == before.back() && c.dst == table.back() && c.num_tokens == pos % bs;
      });
      ASSERT_TRUE(reported) << "sequence " << id << " moved to block " << table.back() << " without a copy";
      ++copies;
    }
    ASSERT_EQ(step.copies.size(), copies) << "a copy for a sequence outside the batch";
    cov_.copies += static_cast<int64_t>(copies);
  }

  void check_state() {
    const BlockManager& bm = sched_.block_manager();
    bm.check_invariants();
    const std::vector<int32_t>& running = sched_.running();
    ASSERT_LE(static_cast<int64_t>(running.size()), w_.config.max_batch);
    ASSERT_TRUE(std::is_sorted(running.begin(), running.end()));
    // Exactly the running sequences hold blocks (no group, finished or waiting sequence does).
    ASSERT_EQ(bm.sequences(), std::vector<SeqId>(running.begin(), running.end()));
    std::set<int32_t> waiting_seqs, waiting_groups;
    for (const WaitEntry& e : sched_.waiting()) {
      if (e.seq >= 0)
        waiting_seqs.insert(e.seq);
      else
        waiting_groups.insert(e.request);
    }
    ASSERT_EQ(waiting_seqs.size() + waiting_groups.size(), sched_.waiting().size()) << "an entry waits twice";
    int64_t finished = 0, last_admitted = -1;
    for (int32_t id = 0; id < sched_.num_sequences(); ++id) {
      const SeqState& q = sched_.sequence(id);
      ASSERT_EQ(q.ids, tokens_[static_cast<size_t>(id)]) << "sequence " << id;
      ASSERT_EQ(q.logprobs.size(), q.ids.size());
      const bool in_running = std::binary_search(running.begin(), running.end(), id);
      const bool waits = waiting_seqs.count(id) || waiting_groups.count(q.request);
      ASSERT_FALSE(in_running && waits) << "sequence " << id << " is both running and waiting";
      ASSERT_EQ(in_running, q.phase == SeqPhase::Running);
      ASSERT_EQ(waits, q.phase == SeqPhase::Waiting) << "sequence " << id;
      ASSERT_EQ(waiting_groups.count(q.request) != 0, q.ids.empty() && q.phase == SeqPhase::Waiting);
      finished += q.phase == SeqPhase::Finished;
      if (in_running) {
        ASSERT_EQ(bm.num_tokens(id), prompt_len(id) + static_cast<int64_t>(q.ids.size()) - 1);
        // Admission order equals id order among the running sequences: victims are always the highest ids.
        ASSERT_GT(q.admitted, last_admitted);
        last_admitted = q.admitted;
      }
    }
    ASSERT_EQ(finished, sched_.num_finished());
    ASSERT_GE(sched_.stats().peak_blocks_used, bm.num_blocks() - bm.num_free());
  }

  void check_end() {
    const int64_t preemptions = sched_.stats().preemptions, generated = sched_.stats().generated_tokens;
    const std::vector<Completion> out = sched_.take_completions();
    ASSERT_EQ(static_cast<int64_t>(out.size()), static_cast<int64_t>(tokens_.size()));
    int64_t total = 0;
    for (size_t id = 0; id < out.size(); ++id) {
      const Completion& c = out[id];
      const Completion want = reference(w_, static_cast<int32_t>(id), c.request);
      ASSERT_EQ(c.ids, want.ids) << "sequence " << id;
      ASSERT_EQ(c.logprobs, want.logprobs);
      ASSERT_EQ(c.finish, want.finish) << "sequence " << id;
      total += static_cast<int64_t>(c.ids.size());
      cov_.eos += c.finish == FinishReason::Eos;
      cov_.stop += c.finish == FinishReason::Stop;
      cov_.length += c.finish == FinishReason::Length;
      cov_.length_by_context +=
          c.finish == FinishReason::Length &&
          static_cast<int64_t>(c.ids.size()) < w_.sampling.max_new_tokens;
    }
    ASSERT_EQ(generated, total);
    ASSERT_EQ(preemptions, preemptions_);
    ASSERT_EQ(sched_.block_manager().num_free(), sched_.block_manager().num_blocks());
    ++cov_.completed;
  }

  const Workload& w_;
  Coverage& cov_;
  Scheduler sched_;
  std::vector<std::vector<int32_t>> tokens_;  // the fake sampler's tokens per sequence, in the order sampled
  int64_t preemptions_ = 0;
};

}  // namespace

TEST(Scheduler, RandomWorkloadsKeepEveryInvariant) {
  Coverage cov;
  for (int trial = 0; trial < 1000; ++trial) {
    const Workload w = random_workload(static_cast<uint64_t>(trial));
    Driver d(w, cov);
    d.run();
    ASSERT_FALSE(::testing::Test::HasFatalFailure()) << "trial " << trial;
  }
  // Most workloads finish, and they reach every path.
  EXPECT_GT(cov.completed, 800);
  EXPECT_GT(cov.pool_errors, 0);
  EXPECT_GT(cov.multi_entry_prefills, 0);
  EXPECT_GT(cov.recomputes, 0);
  EXPECT_GT(cov.preemptions, 0);
  EXPECT_GT(cov.rowless_decodes, 0);
  EXPECT_GT(cov.copies, 0);
  EXPECT_GT(cov.decodes_with_waiting, 0);
  EXPECT_GT(cov.eos, 0);
  EXPECT_GT(cov.stop, 0);
  EXPECT_GT(cov.length, 0);
  EXPECT_GT(cov.length_by_context, 0);
  std::printf("%lld workloads finished, %lld ended by a full pool; %lld multi-entry prefills, %lld recomputes, %lld "
              "preemptions, %lld decode steps without rows, %lld copies, %lld decodes with prompts waiting; "
              "finishes: %lld eos, %lld stop, %lld length (%lld by the context)\n",
              static_cast<long long>(cov.completed), static_cast<long long>(cov.pool_errors),
              static_cast<long long>(cov.multi_entry_prefills), static_cast<long long>(cov.recomputes),
              static_cast<long long>(cov.preemptions), static_cast<long long>(cov.rowless_decodes),
              static_cast<long long>(cov.copies), static_cast<long long>(cov.decodes_with_waiting),
              static_cast<long long>(cov.eos), static_cast<long long>(cov.stop), static_cast<long long>(cov.length),
              static_cast<long long>(cov.length_by_context));
}
