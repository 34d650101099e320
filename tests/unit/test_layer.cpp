// rlcu/layer.h's layer_forward on the CPU, on each layer of the fixture models (Qwen3: QK-norm; Qwen2: q/k/v bias;
// Llama 3), over packed sequences with random inputs; every buffer starts as NaN so a value that is not written
// shows:
//   * the fused q/k/v path (one product + qkv_prepare) and the separate ops give bitwise-equal activations and
//     output, with and without a KV cache, and write the same cache;
//   * the engine runner's aliasing (x_mid = x_out = x, h2 = h1, one rstd buffer for every statistic) gives the same
//     bits as separate buffers;
//   * with_cache writes each token's K/V at its slot, skips negative slots and leaves other slots alone;
//   * paged decode of a sequence's next token over the cache a dense prefill wrote equals the dense forward of the
//     longer sequence at that token (to float rounding: the reductions differ in order), for both paths;
//   * full = false stops after gate_up: the same gate_up as the full run, act and x_out not written;
//   * the argument checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "rlcu/layer.h"
#include "rlcu/model.h"
#include "rlcu/ops.h"

namespace rlcu {
namespace {

const std::string kModels = std::string(RLCU_TEST_FIXTURES) + "/models/";
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kMark = -7.0f;  // unwritten cache slots

Context& cpu() { return Context::cpu(); }

std::vector<float> host(const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  std::memcpy(v.data(), t.data, t.nbytes());
  return v;
}

void fill(const Tensor& t, float value) {
  float* p = t.ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = value;
}

void fill_random(const Tensor& t, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  float* p = t.ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = d(g);
}

void expect_bits(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.numel(), want.numel()) << what;
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < got.numel(); ++i)
    if (std::memcmp(got.ptr<float>() + i, want.ptr<float>() + i, 4) != 0 && bad++ == 0) first = i;
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.numel() << " differ, first at " << first;
}

void expect_finite(const Tensor& t, const std::string& what) {
  int64_t bad = 0;
  for (int64_t i = 0; i < t.numel(); ++i) bad += std::isfinite(t.ptr<float>()[i]) ? 0 : 1;
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << t.numel() << " not finite";
}

// CPU memory for tests: F32 / I32 tensors that live as long as the pool.
class Pool {
 public:
  Tensor f32(std::initializer_list<int64_t> dims, float value = kNaN) {
    Tensor t = alloc(DType::F32, dims);
    fill(t, value);
    return t;
  }
  Tensor i32(const std::vector<int32_t>& v) {
    Tensor t = alloc(DType::I32, {static_cast<int64_t>(v.size())});
    std::memcpy(t.data, v.data(), v.size() * 4);
    return t;
  }

 private:
  Tensor alloc(DType dt, std::initializer_list<int64_t> dims) {
    Tensor probe(nullptr, dt, Device::CPU, dims);
    bufs_.push_back(Buffer::alloc(std::max<size_t>(probe.nbytes(), 4), Device::CPU));
    return Tensor(bufs_.back().data(), dt, Device::CPU, dims);
  }
  std::vector<Buffer> bufs_;
};

// Every buffer of one layer, separate (no aliasing), for Tm rows.
LayerBuffers separate_buffers(Pool& p, const ModelConfig& c, int64_t Tm) {
  const int64_t H = c.hidden_size, qd = c.q_dim(), kvd = c.kv_dim(), I = c.intermediate_size;
  LayerBuffers b;
  b.rstd1 = p.f32({Tm});
  b.h1 = p.f32({Tm, H});
  b.qkv = p.f32({Tm, qd + 2 * kvd});
  b.q_raw = p.f32({Tm, qd});
  b.k_raw = p.f32({Tm, kvd});
  b.rstd_q = p.f32({Tm, c.num_heads});
  b.rstd_k = p.f32({Tm, c.num_kv_heads});
  b.q = p.f32({Tm, qd});
  b.k = p.f32({Tm, kvd});
  b.v = p.f32({Tm, kvd});
  b.attn = p.f32({Tm, qd});
  b.lse = p.f32({Tm, c.num_heads});
  b.x_mid = p.f32({Tm, H});
  b.rstd2 = p.f32({Tm});
  b.h2 = p.f32({Tm, H});
  b.gate_up = p.f32({Tm, 2 * I});
  b.act = p.f32({Tm, I});
  return b;
}

LayerOptions options(bool fused, bool full) {
  LayerOptions o;
  o.fused_qkv = fused;
  o.full = full;
  return o;
}

struct Packed {
  std::vector<int32_t> positions, cu_seqlens{0};
  int max_seqlen = 0;
  explicit Packed(const std::vector<int>& lengths) {
    for (int n : lengths) {
      for (int i = 0; i < n; ++i) positions.push_back(i);
      cu_seqlens.push_back(static_cast<int32_t>(positions.size()));
      max_seqlen = std::max(max_seqlen, n);
    }
  }
  int64_t tokens() const { return static_cast<int64_t>(positions.size()); }
  int seqs() const { return static_cast<int>(cu_seqlens.size()) - 1; }
};

class LayerForward : public ::testing::TestWithParam<const char*> {
 protected:
  // The model's weights, plus fused q/k/v views where its layout has none (the Qwen2 fixture's biases are padded
  // apart): copies of q | k | v and of their biases.
  void SetUp() override {
    ModelOptions mo;
    model_ = Model::load(kModels + GetParam(), mo, cpu());
    const int64_t H = c().hidden_size, n = c().q_dim() + 2 * c().kv_dim();
    for (const LayerWeights& lw : model_->weights().layers) {
      LayerWeights f = lw;
      if (f.qkv.empty()) {
        f.qkv = pool_.f32({n, H});
        concat(f.qkv, {lw.q, lw.k, lw.v});
      }
      if (c().qkv_bias && f.qkv_bias.empty()) {
        f.qkv_bias = pool_.f32({n});
        concat(f.qkv_bias, {lw.q_bias, lw.k_bias, lw.v_bias});
      }
      ASSERT_TRUE(fused_qkv_available(f, c()));
      fused_.push_back(f);
    }
  }
  static void concat(const Tensor& out, std::initializer_list<Tensor> parts) {
    size_t off = 0;
    for (const Tensor& t : parts) {
      std::memcpy(static_cast<char*>(out.data) + off, t.data, t.nbytes());
      off += t.nbytes();
    }
    ASSERT_EQ(off, out.nbytes());
  }
  const ModelConfig& c() const { return model_->config(); }
  const LayerWeights& w(int64_t l) const { return model_->weights().layers[static_cast<size_t>(l)]; }
  void run(const Tensor& x_out, const LayerBuffers& b, const Tensor& x, int64_t l, const Tensor& positions,
           const AttentionSpec& attn, const LayerOptions& o) {
    const LayerWeights& lw = o.fused_qkv ? fused_[static_cast<size_t>(l)] : w(l);
    layer_forward(x_out, b, x, lw, positions, model_->inv_freq(), c(), attn, o, cpu());
  }
  std::unique_ptr<Model> model_;
  Pool pool_;
  std::vector<LayerWeights> fused_;
};

TEST_P(LayerForward, FusedAndSeparatePathsAgreeBitwise) {
  const Packed pk({5, 1, 3});
  const int64_t T = pk.tokens(), H = c().hidden_size;
  const Tensor pos = pool_.i32(pk.positions), cu = pool_.i32(pk.cu_seqlens);
  const AttentionSpec dense = AttentionSpec::dense(cu, pk.seqs(), pk.max_seqlen);
  for (int64_t l = 0; l < c().num_layers; ++l) {
    const Tensor x = pool_.f32({T, H});
    fill_random(x, 10 + static_cast<uint64_t>(l));
    const LayerBuffers bf = separate_buffers(pool_, c(), T), bs = separate_buffers(pool_, c(), T);
    const Tensor yf = pool_.f32({T, H}), ys = pool_.f32({T, H});
    run(yf, bf, x, l, pos, dense, options(true, true));
    run(ys, bs, x, l, pos, dense, options(false, true));
    const std::string at = std::string(GetParam()) + " layer " + std::to_string(l);
    expect_finite(yf, at + " x_out");
    expect_bits(yf, ys, at + " x_out");
    expect_bits(bf.q, bs.q, at + " q");
    expect_bits(bf.k, bs.k, at + " k");
    expect_bits(bf.v, bs.v, at + " v");
    expect_bits(bf.attn, bs.attn, at + " attn");
    expect_bits(bf.lse, bs.lse, at + " lse");
    expect_bits(bf.x_mid, bs.x_mid, at + " x_mid");
    expect_bits(bf.gate_up, bs.gate_up, at + " gate_up");
    expect_bits(bf.act, bs.act, at + " act");
  }
}

// The runner's buffers: one residual updated in place, h for both norms, one rstd buffer [Tm * nq] for all.
TEST_P(LayerForward, InPlaceResidualAndSharedBuffersGiveTheSameBits) {
  const Packed pk({4, 6});
  const int64_t T = pk.tokens(), H = c().hidden_size, nq = c().num_heads, nkv = c().num_kv_heads;
  const Tensor pos = pool_.i32(pk.positions), cu = pool_.i32(pk.cu_seqlens);
  const AttentionSpec dense = AttentionSpec::dense(cu, pk.seqs(), pk.max_seqlen);
  for (bool fused : {true, false}) {
    for (int64_t l = 0; l < c().num_layers; ++l) {
      const Tensor x = pool_.f32({T, H});
      fill_random(x, 20 + static_cast<uint64_t>(l));
      const Tensor y = pool_.f32({T, H});
      run(y, separate_buffers(pool_, c(), T), x, l, pos, dense, options(fused, true));

      LayerBuffers b = separate_buffers(pool_, c(), T);
      const Tensor xr = pool_.f32({T, H}), rstd = pool_.f32({T * nq});
      std::memcpy(xr.data, x.data, x.nbytes());
      b.x_mid = xr;
      b.h2 = b.h1;
      b.rstd1 = b.rstd2 = rstd;
      b.rstd_q = rstd.view({T, nq});
      b.rstd_k = rstd.slice_rows(0, T * nkv).view({T, nkv});
      run(xr, b, xr, l, pos, dense, options(fused, true));
      expect_bits(xr, y, std::string(GetParam()) + (fused ? " fused" : " separate") + " layer " + std::to_string(l));
    }
  }
}

TEST_P(LayerForward, CacheWriteAtSlotsFromBothPaths) {
  const Packed pk({3, 4});
  const int64_t T = pk.tokens(), H = c().hidden_size, nkv = c().num_kv_heads, hd = c().head_dim, slots_n = 12;
  const std::vector<int32_t> slots = {5, 6, 7, 0, -1, 9, 10};
  const Tensor pos = pool_.i32(pk.positions), cu = pool_.i32(pk.cu_seqlens), sl = pool_.i32(slots);
  const Tensor x = pool_.f32({T, H});
  fill_random(x, 30);
  Tensor kc[2], vc[2], y[2];
  LayerBuffers b[2];
  for (int i = 0; i < 2; ++i) {
    kc[i] = pool_.f32({slots_n, nkv, hd}, kMark);
    vc[i] = pool_.f32({slots_n, nkv, hd}, kMark);
    y[i] = pool_.f32({T, H});
    b[i] = separate_buffers(pool_, c(), T);
    run(y[i], b[i], x, 1, pos, AttentionSpec::dense(cu, pk.seqs(), pk.max_seqlen).with_cache(kc[i], vc[i], sl),
        options(i == 0, true));
  }
  expect_bits(kc[0], kc[1], "k cache");
  expect_bits(vc[0], vc[1], "v cache");
  expect_bits(y[0], y[1], "x_out");
  const int64_t row = nkv * hd;
  const std::vector<float> k = host(b[0].k), v = host(b[0].v), kh = host(kc[0]), vh = host(vc[0]);
  std::vector<bool> written(static_cast<size_t>(slots_n), false);
  for (int64_t t = 0; t < T; ++t) {
    if (slots[t] < 0) continue;
    written[static_cast<size_t>(slots[t])] = true;
    for (int64_t e = 0; e < row; ++e) {
      EXPECT_EQ(kh[slots[t] * row + e], k[t * row + e]) << "k of token " << t;
      EXPECT_EQ(vh[slots[t] * row + e], v[t * row + e]) << "v of token " << t;
    }
  }
  for (int64_t s = 0; s < slots_n; ++s) {
    if (written[static_cast<size_t>(s)]) continue;
    for (int64_t e = 0; e < row; ++e) {
      EXPECT_EQ(kh[s * row + e], kMark) << "k slot " << s << " was written";
      EXPECT_EQ(vh[s * row + e], kMark) << "v slot " << s << " was written";
    }
  }
}

// Prefill n tokens into a paged cache (block size 4, blocks out of order), then decode token n: the same output row
// as the dense forward of all n + 1 tokens, and the same bits from both q/k/v paths.
TEST_P(LayerForward, PagedDecodeMatchesDenseForward) {
  const int n = 6, bs = 4;
  const int64_t H = c().hidden_size, nq = c().num_heads, nkv = c().num_kv_heads, hd = c().head_dim;
  const std::vector<int32_t> table = {2, 0};  // token p at slot table[p / bs] * bs + p % bs
  std::vector<int32_t> slots;
  for (int p = 0; p <= n; ++p) slots.push_back(table[static_cast<size_t>(p / bs)] * bs + p % bs);
  const Packed full({n + 1}), prompt({n});
  const Tensor x = pool_.f32({n + 1, H});
  fill_random(x, 40);
  for (int64_t l = 0; l < c().num_layers; ++l) {
    const Tensor y_dense = pool_.f32({n + 1, H});
    run(y_dense, separate_buffers(pool_, c(), n + 1), x, l, pool_.i32(full.positions),
        AttentionSpec::dense(pool_.i32(full.cu_seqlens), 1, n + 1), options(true, true));
    Tensor y_dec[2];
    for (int i = 0; i < 2; ++i) {
      const bool fused = i == 0;
      const Tensor kc = pool_.f32({3 * bs, nkv, hd}, kMark), vc = pool_.f32({3 * bs, nkv, hd}, kMark);
      const std::vector<int32_t> prompt_slots(slots.begin(), slots.begin() + n);
      run(pool_.f32({n, H}), separate_buffers(pool_, c(), n), x.slice_rows(0, n), l, pool_.i32(prompt.positions),
          AttentionSpec::dense(pool_.i32(prompt.cu_seqlens), 1, n).with_cache(kc, vc, pool_.i32(prompt_slots)),
          options(fused, true));
      const Tensor ws = pool_.f32({ops::paged_attention_workspace_elems(1, nq, hd, 1)});
      const AttentionSpec paged =
          AttentionSpec::paged(pool_.i32(table).view({1, 2}), pool_.i32({n + 1}), ws, bs, 1)
              .with_cache(kc, vc, pool_.i32({slots[n]}));
      y_dec[i] = pool_.f32({1, H});
      run(y_dec[i], separate_buffers(pool_, c(), 1), x.slice_rows(n, n + 1), l, pool_.i32({n}), paged,
          options(fused, true));
    }
    const std::string at = std::string(GetParam()) + " layer " + std::to_string(l);
    expect_finite(y_dec[0], at);
    expect_bits(y_dec[0], y_dec[1], at + " fused vs separate decode");
    const std::vector<float> got = host(y_dec[0]), want = host(y_dense.slice_rows(n, n + 1));
    for (int64_t e = 0; e < H; ++e) EXPECT_NEAR(got[e], want[e], 1e-5f * (1.0f + std::fabs(want[e]))) << at;
  }
}

TEST_P(LayerForward, PartialStopsAfterGateUp) {
  const Packed pk({7});
  const int64_t T = pk.tokens(), H = c().hidden_size;
  const Tensor pos = pool_.i32(pk.positions), cu = pool_.i32(pk.cu_seqlens);
  const AttentionSpec dense = AttentionSpec::dense(cu, 1, pk.max_seqlen);
  const Tensor x = pool_.f32({T, H});
  fill_random(x, 50);
  const LayerBuffers a = separate_buffers(pool_, c(), T), b = separate_buffers(pool_, c(), T);
  run(pool_.f32({T, H}), a, x, 0, pos, dense, options(true, true));
  run(Tensor(), b, x, 0, pos, dense, options(true, false));
  expect_bits(b.gate_up, a.gate_up, "gate_up");
  expect_bits(b.x_mid, a.x_mid, "x_mid");
  for (float v : host(b.act)) ASSERT_TRUE(std::isnan(v)) << "act written by a partial layer";
}

TEST_P(LayerForward, RejectsInconsistentArguments) {
  const Packed pk({3});
  const int64_t T = pk.tokens(), H = c().hidden_size;
  const Tensor pos = pool_.i32(pk.positions), cu = pool_.i32(pk.cu_seqlens);
  const Tensor x = pool_.f32({T, H}, 0.5f), y = pool_.f32({T, H});
  const LayerBuffers b = separate_buffers(pool_, c(), T);
  const AttentionSpec dense = AttentionSpec::dense(cu, 1, 3);
  // paged attention without a cache
  const AttentionSpec paged = AttentionSpec::paged(pool_.i32({0}).view({1, 1}), pool_.i32({1}), Tensor(), 16, 1);
  EXPECT_THROW(run(y.slice_rows(0, 1), b, x.slice_rows(0, 1), 0, pool_.i32({0}), paged, options(true, true)),
               InternalError);
  // positions of another length, a missing x_out, fused without the fused weights
  EXPECT_THROW(run(y, b, x, 0, pos.slice_rows(0, 2), dense, options(true, true)), InternalError);
  EXPECT_THROW(run(Tensor(), b, x, 0, pos, dense, options(true, true)), InternalError);
  LayerWeights unfused = fused_[0];
  unfused.qkv = Tensor();
  EXPECT_FALSE(fused_qkv_available(unfused, c()));
  EXPECT_THROW(layer_forward(y, b, x, unfused, pos, model_->inv_freq(), c(), dense, options(true, true), cpu()),
               InternalError);
}

INSTANTIATE_TEST_SUITE_P(Models, LayerForward, ::testing::Values("qwen3-tiny", "qwen2-tiny", "llama3-tiny"));

}  // namespace
}  // namespace rlcu
