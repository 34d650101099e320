// `rlcu init-model` end to end: for qwen3, qwen2 and llama (tied and untied) the written directory loads with
// Model::load and `rlcu score`, has exactly the HF tensor names/shapes of that architecture in bf16, norms are
// ones, biases zero, matrices have mean ~0 and std ~0.02, and near-uniform log-probabilities come out; the same
// seed gives byte-identical files; the byte-level tokenizer round-trips bytes and is accepted by the chat-template
// auto-detection; a copied tokenizer sets the vocabulary; bad flags are usage errors (exit 2).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "parity/model_test_util.h"
#include "rlcu/chat.h"
#include "rlcu/context.h"
#include "rlcu/init_model.h"
#include "rlcu/model.h"
#include "rlcu/safetensors.h"
#include "rlcu/tokenizer.h"

using namespace rlcu;
using namespace rlcu::test;
using nlohmann::json;

namespace {

const char* kSmall = " --hidden 64 --layers 2 --heads 4 --kv-heads 2 --intermediate 96";

// The HF tensor names of a 2-layer model and their shapes, written out independently of the library.
std::map<std::string, std::vector<int64_t>> expected_tensors(const std::string& arch, bool tie, int64_t V) {
  const int64_t H = 64, I = 96, hd = 16, qd = 64, kvd = 32;
  std::map<std::string, std::vector<int64_t>> m;
  m["model.embed_tokens.weight"] = {V, H};
  m["model.norm.weight"] = {H};
  if (!tie) m["lm_head.weight"] = {V, H};
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    m[p + "input_layernorm.weight"] = {H};
    m[p + "post_attention_layernorm.weight"] = {H};
    m[p + "self_attn.q_proj.weight"] = {qd, H};
    m[p + "self_attn.k_proj.weight"] = {kvd, H};
    m[p + "self_attn.v_proj.weight"] = {kvd, H};
    m[p + "self_attn.o_proj.weight"] = {H, qd};
    m[p + "mlp.gate_proj.weight"] = {I, H};
    m[p + "mlp.up_proj.weight"] = {I, H};
    m[p + "mlp.down_proj.weight"] = {H, I};
    if (arch == "qwen2") {
      m[p + "self_attn.q_proj.bias"] = {qd};
      m[p + "self_attn.k_proj.bias"] = {kvd};
      m[p + "self_attn.v_proj.bias"] = {kvd};
    }
    if (arch == "qwen3") {
      m[p + "self_attn.q_norm.weight"] = {hd};
      m[p + "self_attn.k_norm.weight"] = {hd};
    }
  }
  return m;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::vector<float> read_bf16(const SafetensorsFile& f, const SafetensorsEntry& e) {
  std::vector<float> v(static_cast<size_t>(e.numel()));
  f.read_converted(e, v.data(), DType::F32);
  return v;
}

void expect_usage_error(const std::string& args, const std::string& part) {
  const CmdResult r = run_rlcu("init-model" + args);
  EXPECT_EQ(r.code, 2) << args << "\n" << r.err;
  EXPECT_NE(r.err.find(part), std::string::npos) << "'" << part << "' not in: " << r.err;
}

}  // namespace

TEST(CliInitModel, ArchitecturesLoadAndScore) {
  struct Case {
    std::string arch;
    bool tie;
  };
  for (const Case& c : {Case{"qwen3", true}, Case{"qwen2", false}, Case{"llama", true}, Case{"llama", false}}) {
    SCOPED_TRACE(c.arch + (c.tie ? " tied" : " untied"));
    TempDir d("init");
    const std::string dir = d.file("m");
    const CmdResult r = run_rlcu("init-model --arch " + c.arch + kSmall + " --byte-tokenizer --seed 1 --out " +
                                 quote(dir) + (c.tie ? " --tie" : " --no-tie"));
    ASSERT_EQ(r.code, 0) << r.err;

    const json cfg = read_json(dir + "/config.json");
    EXPECT_EQ(cfg["model_type"], c.arch);
    EXPECT_EQ(cfg["vocab_size"], 320);  // 261 tokens rounded up to 64
    EXPECT_EQ(cfg["tie_word_embeddings"], c.tie);
    EXPECT_EQ(cfg["torch_dtype"], "bfloat16");
    EXPECT_EQ(cfg["eos_token_id"], 258);
    EXPECT_EQ(cfg["head_dim"], 16);
    EXPECT_EQ(cfg["intermediate_size"], 96);
    EXPECT_EQ(cfg["architectures"][0], c.arch == "qwen3"   ? "Qwen3ForCausalLM"
                                       : c.arch == "qwen2" ? "Qwen2ForCausalLM"
                                                           : "LlamaForCausalLM");
    EXPECT_EQ(cfg.contains("attention_bias"), c.arch != "qwen2");
    const json gen = read_json(dir + "/generation_config.json");
    EXPECT_EQ(gen["eos_token_id"], json::array({258, 256}));

    // Tensor names, shapes, dtype and values.
    const SafetensorsFile f = SafetensorsFile::open(dir + "/model.safetensors");
    EXPECT_EQ(f.metadata().at("format"), "pt");
    const auto want = expected_tensors(c.arch, c.tie, 320);
    EXPECT_EQ(f.tensors().size(), want.size());
    for (const auto& [name, shape] : want) {
      const SafetensorsEntry* e = f.find(name);
      ASSERT_NE(e, nullptr) << name;
      EXPECT_EQ(e->dtype, "BF16") << name;
      EXPECT_EQ(e->shape, shape) << name;
      const std::vector<float> v = read_bf16(f, *e);
      if (ends_with(name, "norm.weight") || ends_with(name, "layernorm.weight")) {
        for (float x : v) ASSERT_EQ(x, 1.0f) << name;
      } else if (ends_with(name, ".bias")) {
        for (float x : v) ASSERT_EQ(x, 0.0f) << name;
      } else {
        double s = 0, s2 = 0;
        for (float x : v) s += x, s2 += static_cast<double>(x) * x;
        const double n = static_cast<double>(v.size()), mean = s / n, sd = std::sqrt(s2 / n - mean * mean);
        EXPECT_LT(std::abs(mean), 5 * 0.02 / std::sqrt(n)) << name;
        EXPECT_NEAR(sd, 0.02, 0.02 * 6 / std::sqrt(2 * n)) << name;
      }
    }

    // Model::load accepts it.
    const auto model = Model::load(dir, ModelOptions{}, Context::cpu());
    EXPECT_EQ(model->config().vocab_size, 320);
    EXPECT_EQ(model->config().qk_norm, c.arch == "qwen3");
    EXPECT_EQ(model->config().qkv_bias, c.arch == "qwen2");
    EXPECT_EQ(static_cast<size_t>(model->hf_tensors().size()), want.size());

    // `rlcu score`: with std-0.02 weights the next-token distribution is close to uniform over 320 tokens.
    const std::string in = d.file("in.jsonl");
    write_text(in, "{\"ids\": [257, 117, 115, 101, 114, 10, 49, 43, 50, 61]}\n{\"ids\": [0, 319]}\n");
    const CmdResult s = run_rlcu("score --model " + quote(dir) + " --input " + quote(in));
    ASSERT_EQ(s.code, 0) << s.err;
    std::istringstream lines(s.out);
    std::string line;
    std::vector<size_t> counts;
    while (std::getline(lines, line)) {
      const auto lp = json::parse(line).at("logprobs").get<std::vector<double>>();
      counts.push_back(lp.size());
      for (double x : lp) EXPECT_NEAR(x, -std::log(320.0), 0.8);
    }
    EXPECT_EQ(counts, (std::vector<size_t>{9, 1}));
  }
}

TEST(CliInitModel, SameSeedSameBytes) {
  TempDir d("init");
  const std::string base = std::string("init-model --arch qwen3") + kSmall + " --byte-tokenizer --out ";
  ASSERT_EQ(run_rlcu(base + quote(d.file("a")) + " --seed 7").code, 0);
  ASSERT_EQ(run_rlcu(base + quote(d.file("b")) + " --seed 7").code, 0);
  ASSERT_EQ(run_rlcu(base + quote(d.file("c")) + " --seed 8").code, 0);
  for (const char* f : {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                        "tokenizer_config.json"})
    EXPECT_EQ(read_text(d.file("a") + "/" + f), read_text(d.file("b") + "/" + f)) << f;
  EXPECT_NE(read_text(d.file("a") + "/model.safetensors"), read_text(d.file("c") + "/model.safetensors"));
  EXPECT_EQ(read_text(d.file("a") + "/config.json"), read_text(d.file("c") + "/config.json"));

  // The library call gives the same bytes, and a tensor does not depend on which other tensors exist: qwen2 (with
  // biases, no q_norm) has the same embedding and projections as qwen3 for the same seed.
  InitModelOptions o;
  o.arch = "qwen2";
  o.hidden = 64;
  o.layers = 2;
  o.heads = 4;
  o.kv_heads = 2;
  o.intermediate = 96;
  o.byte_tokenizer = true;
  o.seed = 7;
  o.out_dir = d.file("q2");
  const InitModelResult res = init_model(o);
  EXPECT_EQ(res.tokenizer_size, kByteTokenizerSize);
  EXPECT_EQ(res.config["vocab_size"], 320);
  const SafetensorsFile fa = SafetensorsFile::open(d.file("a") + "/model.safetensors");
  const SafetensorsFile fq = SafetensorsFile::open(d.file("q2") + "/model.safetensors");
  for (const char* name : {"model.embed_tokens.weight", "model.layers.1.self_attn.k_proj.weight"})
    EXPECT_EQ(read_bf16(fa, *fa.find(name)), read_bf16(fq, *fq.find(name))) << name;
  int64_t n = 0;
  for (const auto& [name, e] : fq.tensors()) n += e.numel();
  EXPECT_EQ(res.num_parameters, n);
}

TEST(CliInitModel, ByteTokenizer) {
  TempDir d("init");
  const std::string dir = d.file("m");
  ASSERT_EQ(run_rlcu(std::string("init-model --arch llama") + kSmall + " --byte-tokenizer --out " + quote(dir)).code,
            0);
  const Tokenizer tok = Tokenizer::load(dir);
  EXPECT_EQ(tok.vocab_size(), 261);
  EXPECT_EQ(tok.eos_id(), 258);
  EXPECT_EQ(tok.pad_id(), 256);
  EXPECT_EQ(tok.bos_id(), -1);
  EXPECT_EQ(tok.eos_ids(), (std::vector<int32_t>{258, 256}));
  const std::vector<std::pair<std::string, int32_t>> added = {
      {"<|endoftext|>", 256}, {"<|im_start|>", 257}, {"<|im_end|>", 258}, {"<think>", 259}, {"</think>", 260}};
  for (const auto& [s, id] : added) {
    EXPECT_EQ(tok.token_to_id(s), id) << s;
    EXPECT_EQ(tok.encode(s), std::vector<int32_t>{id}) << s;
  }
  EXPECT_TRUE(tok.is_special(258));
  EXPECT_FALSE(tok.is_special(259));
  // One token per byte, id = byte value, for any UTF-8 text (random bytes too: token_bytes is the raw byte).
  for (int b = 0; b < 256; ++b) EXPECT_EQ(tok.token_bytes(b), std::string(1, static_cast<char>(b))) << b;
  const std::string text = "Use 3 5 7 to make 22\n  héllo ✓ \t日本\r\n";
  const auto ids = tok.encode(text);
  ASSERT_EQ(ids.size(), text.size());
  for (size_t i = 0; i < text.size(); ++i) EXPECT_EQ(ids[i], static_cast<unsigned char>(text[i]));
  EXPECT_EQ(tok.decode(ids), text);
  std::mt19937 rng(3);
  for (int t = 0; t < 20; ++t) {
    std::string s;
    for (int i = 0; i < 40; ++i) s += static_cast<char>(rng() % 128);  // ASCII, control characters included
    EXPECT_EQ(tok.decode(tok.encode(s, EncodeOptions{false, false})), s);
  }
  // The model's chat template is plain ChatML and renders the usual prompt.
  const ChatTemplate chat = ChatTemplate::for_tokenizer(tok);
  EXPECT_EQ(tok.chat_template_text(), ChatTemplate::builtin_source("chatml"));
  const std::string prompt = chat.render({{"user", "12+7=", ""}});
  EXPECT_EQ(prompt, "<|im_start|>user\n12+7=<|im_end|>\n<|im_start|>assistant\n");
  const auto pids = tok.encode(prompt);
  EXPECT_EQ(pids.front(), 257);
  EXPECT_EQ(pids.size(), 1u + 10 + 1 + 1 + 1 + 10);  // specials, "user\n12+7=", "\n", "assistant\n"
  const json tc = read_json(dir + "/tokenizer_config.json");
  EXPECT_EQ(tc["eos_token"], "<|im_end|>");
  EXPECT_EQ(tc["pad_token"], "<|endoftext|>");
  EXPECT_EQ(tc["model_max_length"], 4096);
}

TEST(CliInitModel, CopiedTokenizer) {
  TempDir d("init");
  const std::string src = std::string(RLCU_TEST_FIXTURES) + "/tokenizers/qwen3";
  const std::string dir = d.file("m");
  const CmdResult r = run_rlcu(std::string("init-model --arch qwen3") + kSmall + " --max-position 512 --tokenizer " +
                               quote(src) + " --out " + quote(dir));
  ASSERT_EQ(r.code, 0) << r.err;
  const Tokenizer src_tok = Tokenizer::load(src);
  EXPECT_EQ(read_text(dir + "/tokenizer.json"), read_text(src + "/tokenizer.json"));
  EXPECT_EQ(read_text(dir + "/tokenizer_config.json"), read_text(src + "/tokenizer_config.json"));
  const json cfg = read_json(dir + "/config.json");
  const int64_t size = src_tok.vocab_size();
  EXPECT_EQ(cfg["vocab_size"].get<int64_t>(), (size + 63) / 64 * 64);
  EXPECT_GE(cfg["vocab_size"].get<int64_t>(), size);
  EXPECT_EQ(cfg["eos_token_id"], src_tok.eos_id());
  EXPECT_EQ(cfg["max_position_embeddings"], 512);
  const Tokenizer tok = Tokenizer::load(dir);
  EXPECT_EQ(tok.vocab_size(), size);
  EXPECT_EQ(tok.encode("Hello world"), src_tok.encode("Hello world"));
  const auto model = Model::load(dir, ModelOptions{}, Context::cpu());
  EXPECT_EQ(model->config().eos_token_ids.front(), src_tok.eos_id());

  // An explicit --vocab at least the tokenizer's size is taken as is.
  const CmdResult r2 = run_rlcu(std::string("init-model --arch qwen3") + kSmall + " --tokenizer " + quote(src) +
                                " --vocab " + std::to_string(size + 3) + " --out " + quote(d.file("m2")));
  ASSERT_EQ(r2.code, 0) << r2.err;
  EXPECT_EQ(read_json(d.file("m2") + "/config.json")["vocab_size"], size + 3);
}

TEST(CliInitModel, UsageAndFileErrors) {
  TempDir d("init");
  const std::string out = " --out " + quote(d.file("x"));
  const std::string src = std::string(RLCU_TEST_FIXTURES) + "/tokenizers/qwen3";
  expect_usage_error(std::string(" --arch qwen3") + kSmall + " --byte-tokenizer --tokenizer " + quote(src) + out,
                     "--tokenizer");
  expect_usage_error(" --arch qwen3 --hidden 64 --layers 2 --heads 4 --kv-heads 3 --byte-tokenizer" + out,
                     "--kv-heads 3 must divide --heads 4");
  expect_usage_error(" --arch qwen3 --hidden 60 --layers 2 --heads 4 --kv-heads 2 --byte-tokenizer" + out,
                     "head dim 15 is odd");
  expect_usage_error(" --arch qwen3 --hidden 64 --layers 2 --heads 3 --kv-heads 1 --byte-tokenizer" + out,
                     "--heads 3 does not divide --hidden 64");
  expect_usage_error(std::string(" --arch qwen3") + kSmall + out, "--vocab");
  expect_usage_error(std::string(" --arch qwen3") + kSmall + " --byte-tokenizer --vocab 200" + out,
                     "--vocab 200 is smaller than the tokenizer's 261 tokens");
  expect_usage_error(std::string(" --arch gpt2") + kSmall + " --byte-tokenizer" + out, "--arch");
  expect_usage_error(std::string(" --arch qwen3") + kSmall + " --byte-tokenizer --layers 0" + out, "--layers");
  expect_usage_error(std::string(" --arch qwen3") + kSmall + " --byte-tokenizer", "--out");
  expect_usage_error(std::string(" --arch qwen3") + kSmall + " --byte-tokenizer --tie --no-tie" + out, "tie");
  EXPECT_FALSE(fs::exists(d.file("x")));

  // Without a tokenizer, --vocab alone is enough (no tokenizer files).
  const std::string plain = d.file("plain");
  CmdResult r = run_rlcu(std::string("init-model --arch llama") + kSmall + " --vocab 100 --out " + quote(plain));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(fs::exists(plain + "/tokenizer.json"));
  EXPECT_EQ(Model::load(plain, ModelOptions{}, Context::cpu())->config().vocab_size, 100);

  // A non-empty output directory needs --force; a missing tokenizer directory is a file error.
  r = run_rlcu(std::string("init-model --arch llama") + kSmall + " --vocab 100 --out " + quote(plain));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("not empty"), std::string::npos) << r.err;
  r = run_rlcu(std::string("init-model --arch llama") + kSmall + " --vocab 128 --force --out " + quote(plain));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(read_json(plain + "/config.json")["vocab_size"], 128);
  r = run_rlcu(std::string("init-model --arch llama") + kSmall + " --tokenizer " + quote(d.file("nope")) + out);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("nope"), std::string::npos) << r.err;
}
