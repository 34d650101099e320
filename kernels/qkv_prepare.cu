// Fused Q/K/V preparation of generation on CUDA (math and shapes in include/rlcu/ops.h; CPU twin in
// kernels/cpu/qkv_prepare.cpp). One launch does, per token t and head of the fused projection row
// qkv[t] = [q heads | k heads | v heads]:
//   bias_add -> per-head rmsnorm_fwd (q, k; when q_norm/k_norm are given) -> rope_fwd (q, k) -> q_out / k_cache,
//   v_cache at slots[t] (slot < 0 or >= num_slots: skipped, as kv_cache_write) / k_out, v_out (when given).
//
// Bit-exact with the composed CUDA ops (bias_add; rmsnorm_fwd; rope_fwd; kv_cache_write), so generation log-probs
// equal the trainer's:
//   * every intermediate is rounded to the activation dtype where the separate ops store it (after the bias, after
//     the norm, after the rotation), with the same expressions: from_f32(to_f32(x) + to_f32(b)) as bias_add_kernel,
//     from_f32(to_f32(x) * r * to_f32(w)) as rmsnorm_fwd_kernel;
//   * the norm's sum of squares follows rmsnorm_fwd_kernel's order exactly: a row of hd elements is split into
//     16-byte vectors of V elements; with nvec = hd / V, rmsnorm uses G = rmsnorm_lanes_per_row(nvec) lanes (the
//     layout of rmsnorm_common.cuh), lane `sub` chaining fmaf over its vectors' elements in order (vectors sub,
//     sub + G, ...), then the xor butterfly over G lanes (offsets G/2 .. 1); rstd = rsqrtf(ss / float(hd) + eps) with hd a runtime value (a constant divisor
//     could turn into a contracted multiply-add);
//   * the rotation is rope_rotate_pair (rope_common.cuh), the very helper rope_kernel calls, with the sign passed
//     at run time as rope_fwd does.
// Paths:
//   vec:     nvec a power of two in 4..32 (bf16: hd 32/64/128/256; f32: hd 16/32/64/128) and 16-byte aligned
//            tensors. P = nvec / 2 lanes per (token, head) row, 32 / P rows per warp; lane `sub` holds vector sub
//            (first half of the row) and vector sub + P (second half): exactly the rope pair, and its two fmaf
//            chains added are the first butterfly step of rmsnorm's G = nvec lanes (offset P, and fp addition is
//            commutative), the remaining steps being offsets P/2 .. 1. Registers only, 16-byte loads/stores.
//   generic: any even hd up to 1024, any alignment: one warp per row, the row staged in shared memory in the
//            activation dtype; the norm reproduces rmsnorm's (V, G) layout for that row (the vector layout when hd is
//            a multiple of V and the weight 16-byte aligned, as rmsnorm_fwd picks for aligned activations, else
//            one element per lane over 32 lanes).
// Without a KV cache (k_cache, v_cache empty: the training forward) the same kernels skip the cache writes.
//
// qkv_prepare_bwd (backward of q_out / k_out / v_out w.r.t. qkv; math in include/rlcu/ops.h): one launch writes
// dqkv = [dx of q heads | dx of k heads | dv] with, per q / k row, g = the transpose rope of dq / dk (kept in fp32),
// and with QK-norm x = qkv + bias (rounded as bias_add), rstd from x (the forward's reduction order on the vector
// path), dx = rstd (w g - x rstd^2 mean(w g x)). The norm-weight gradients are per-block partials of g x rstd
// (fixed order: lanes, row groups of a warp, warps) that qkv_norm_finish_kernel adds in block order (fp64) into
// dq_norm / dk_norm: no atomics, bit-reproducible for a given shape. Grid: min(row blocks, kBwdBlocks), grid-stride.
//   vec:     the forward's lane layout (P = hd / (2 V) lanes per row, 16-byte loads of the rope pair), 8 warps.
//   generic: any even hd up to 1024, any alignment: one warp per row, 4 warps per block, two passes over the row.
#include <algorithm>
#include <type_traits>

#include "cuda_common.cuh"
#include "backends.h"
#include "rmsnorm_common.cuh"
#include "rope_common.cuh"

namespace rlcu::cuda {

namespace {

constexpr int kWarps = 8;          // warps per block
constexpr int64_t kMaxHeadDim = 1024;  // generic path: kWarps rows of hd elements in shared memory

template <class T, class B, class W>
struct QkvArgs {
  T* q_out;
  T* k_out;  // may be null
  T* v_out;  // may be null
  T* kc;  // null (with vc): no KV cache
  T* vc;
  const T* qkv;
  const B* bias;  // may be null
  const W* qn;    // null: no QK-norm
  const W* kn;
  const int* positions;
  const float* inv_freq;
  const int* slots;
  int64_t rows;  // T * (nq + 2 nkv)
  int64_t nq, nkv, hd, num_slots;
  float eps;
  float sign;  // always 1 (rope_fwd); a runtime value like rope_kernel's
  int vq, gq, vk, gk;  // generic path: rmsnorm's elements per vector and lanes per row for q and k rows
};

template <class T, int V>
__device__ __forceinline__ void store_pair(T* row, int64_t clo, int64_t chi, const Vec<T, V>& lo,
                                           const Vec<T, V>& hi) {
  store_vec<V>(row + clo, lo);
  store_vec<V>(row + chi, hi);
}

template <class T, class B, class W, int V, int P>
__global__ void __launch_bounds__(kWarps * 32) qkv_prepare_vec_kernel(const QkvArgs<T, B, W> a) {
  constexpr int kRowsPerWarp = 32 / P;
  const int lane = threadIdx.x & 31, sub = lane % P;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5)) * kRowsPerWarp + lane / P;
  const bool ok = row < a.rows;  // every lane takes part in the shuffles
  const int64_t H = a.nq + 2 * a.nkv, hd = a.hd;
  const int64_t t = ok ? row / H : 0, h = ok ? row % H : 0;
  const int64_t clo = static_cast<int64_t>(sub) * V, chi = hd / 2 + clo;
  const bool is_q = h < a.nq, is_k = !is_q && h < a.nq + a.nkv;

  Vec<T, V> lo, hi;
  if (ok) {
    const T* x = a.qkv + row * hd;  // row t of qkv, head h: (t * H + h) * hd
    lo = load_vec<V>(x + clo);
    hi = load_vec<V>(x + chi);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) lo.v[j] = hi.v[j] = from_f32<T>(0.0f);
  }
  // bias_add (rounded).
  if (a.bias != nullptr && ok) {
    const Vec<B, V> blo = load_vec<V>(a.bias + h * hd + clo), bhi = load_vec<V>(a.bias + h * hd + chi);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      lo.v[j] = from_f32<T>(to_f32(lo.v[j]) + to_f32(blo.v[j]));
      hi.v[j] = from_f32<T>(to_f32(hi.v[j]) + to_f32(bhi.v[j]));
    }
  }
  // rmsnorm_fwd of q and k heads (rounded). All lanes reduce (v rows too) so the shuffles stay convergent.
  if (a.qn != nullptr) {
    float sl = 0.0f, sh = 0.0f;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float f = to_f32(lo.v[j]);
      sl = fmaf(f, f, sl);
    }
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float f = to_f32(hi.v[j]);
      sh = fmaf(f, f, sh);
    }
    float ss = sl + sh;  // rmsnorm's butterfly step at offset P: lane sub + lane sub + P
#pragma unroll
    for (int o = P / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float r = rsqrtf(ss / static_cast<float>(hd) + a.eps);
    if (ok && (is_q || is_k)) {
      const W* w = is_q ? a.qn : a.kn;
      const Vec<W, V> wlo = load_vec<V>(w + clo), whi = load_vec<V>(w + chi);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        lo.v[j] = from_f32<T>(to_f32(lo.v[j]) * r * to_f32(wlo.v[j]));
        hi.v[j] = from_f32<T>(to_f32(hi.v[j]) * r * to_f32(whi.v[j]));
      }
    }
  }
  if (!ok) return;
  // rope_fwd of q and k heads (rounded).
  if (is_q || is_k) {
    const float pos = static_cast<float>(a.positions[t]);
    const Vec<float, V> f = load_vec<V>(a.inv_freq + clo);
    Vec<T, V> olo, ohi;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      float rlo, rhi;
      rope_rotate_pair(to_f32(lo.v[j]), to_f32(hi.v[j]), pos, f.v[j], a.sign, rlo, rhi);
      olo.v[j] = from_f32<T>(rlo);
      ohi.v[j] = from_f32<T>(rhi);
    }
    lo = olo;
    hi = ohi;
  }
  if (is_q) {
    store_pair<T, V>(a.q_out + (t * a.nq + h) * hd, clo, chi, lo, hi);
    return;
  }
  const int64_t kh = is_k ? h - a.nq : h - a.nq - a.nkv;
  T* dense = is_k ? a.k_out : a.v_out;
  if (dense != nullptr) store_pair<T, V>(dense + (t * a.nkv + kh) * hd, clo, chi, lo, hi);
  if (a.kc == nullptr) return;  // no KV cache
  const int s = a.slots[t];
  if (s >= 0 && s < a.num_slots)
    store_pair<T, V>((is_k ? a.kc : a.vc) + (static_cast<int64_t>(s) * a.nkv + kh) * hd, clo, chi, lo, hi);
}

// One warp per (token, head) row; the row lives in shared memory (activation dtype) between the steps.
template <class T, class B, class W>
__global__ void __launch_bounds__(kWarps * 32) qkv_prepare_generic_kernel(const QkvArgs<T, B, W> a) {
  extern __shared__ __align__(16) unsigned char qkv_smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= a.rows) return;  // warp-uniform
  const int64_t H = a.nq + 2 * a.nkv, hd = a.hd, half = hd / 2;
  const int64_t t = row / H, h = row % H;
  const bool is_q = h < a.nq, is_k = !is_q && h < a.nq + a.nkv;
  T* buf = reinterpret_cast<T*>(qkv_smem) + warp * hd;
  const T* x = a.qkv + row * hd;
  for (int64_t c = lane; c < hd; c += 32) {
    T v = x[c];
    if (a.bias != nullptr) v = from_f32<T>(to_f32(v) + to_f32(a.bias[h * hd + c]));
    buf[c] = v;
  }
  __syncwarp();
  if ((is_q || is_k) && a.qn != nullptr) {
    const int V = is_q ? a.vq : a.vk, G = is_q ? a.gq : a.gk;
    float ss = 0.0f;
    if (lane < G)
      for (int64_t c = static_cast<int64_t>(lane) * V; c < hd; c += static_cast<int64_t>(G) * V)
        for (int j = 0; j < V; ++j) {
          const float f = to_f32(buf[c + j]);
          ss = fmaf(f, f, ss);
        }
    for (int o = G / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    ss = __shfl_sync(0xffffffffu, ss, 0);  // lanes >= G summed nothing: every lane takes the row's sum
    const float r = rsqrtf(ss / static_cast<float>(hd) + a.eps);
    const W* w = is_q ? a.qn : a.kn;
    for (int64_t c = lane; c < hd; c += 32) buf[c] = from_f32<T>(to_f32(buf[c]) * r * to_f32(w[c]));
    __syncwarp();
  }
  T* dense = nullptr;
  T* cache = nullptr;
  if (is_q) {
    dense = a.q_out + (t * a.nq + h) * hd;
  } else {
    const int64_t kh = is_k ? h - a.nq : h - a.nq - a.nkv;
    if ((is_k ? a.k_out : a.v_out) != nullptr) dense = (is_k ? a.k_out : a.v_out) + (t * a.nkv + kh) * hd;
    const int s = a.kc == nullptr ? -1 : a.slots[t];
    if (s >= 0 && s < a.num_slots) cache = (is_k ? a.kc : a.vc) + (static_cast<int64_t>(s) * a.nkv + kh) * hd;
  }
  if (is_q || is_k) {
    const float pos = static_cast<float>(a.positions[t]);
    for (int64_t i = lane; i < half; i += 32) {
      float rlo, rhi;
      rope_rotate_pair(to_f32(buf[i]), to_f32(buf[i + half]), pos, a.inv_freq[i], a.sign, rlo, rhi);
      const T olo = from_f32<T>(rlo), ohi = from_f32<T>(rhi);
      if (dense != nullptr) {
        dense[i] = olo;
        dense[i + half] = ohi;
      }
      if (cache != nullptr) {
        cache[i] = olo;
        cache[i + half] = ohi;
      }
    }
  } else {
    for (int64_t c = lane; c < hd; c += 32) {
      if (dense != nullptr) dense[c] = buf[c];
      if (cache != nullptr) cache[c] = buf[c];
    }
  }
}

// Calls f(P) for P = 2, 4, 8, 16 (the vector path's lanes per row).
template <class F>
void with_pair_lanes(int p, F&& f) {
  switch (p) {
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    default: f(std::integral_constant<int, 16>{}); break;
  }
}

// Calls f(P{}) with P = float for F32, or P = T for T's dtype (bf16); anything else is an error.
template <class T, class F>
void dispatch_param(DType d, const char* op, const char* name, F&& f) {
  if (d == DType::F32) {
    f(float{});
    return;
  }
  if constexpr (!std::is_same_v<T, float>) {
    if (d == DType::BF16) {
      f(T{});
      return;
    }
  }
  RLCU_CHECK(false, "{}: {} is {}, expected f32 or the activation dtype", op, name, dtype_name(d));
}

template <class T, class B, class W>
void launch(const QkvArgs<T, B, W>& a, bool aligned, cudaStream_t s) {
  constexpr int V = vec16<T>();
  const int64_t nvec = a.hd % V == 0 ? a.hd / V : 0;
  const bool pow2 = nvec >= 4 && nvec <= 32 && (nvec & (nvec - 1)) == 0;
  if (aligned && pow2) {
    with_pair_lanes(static_cast<int>(nvec / 2), [&](auto pc) {
      constexpr int P = decltype(pc)::value;
      const unsigned grid = static_cast<unsigned>(ceil_div(a.rows, kWarps * (32 / P)));
      qkv_prepare_vec_kernel<T, B, W, V, P><<<grid, kWarps * 32, 0, s>>>(a);
    });
  } else {
    const size_t smem = sizeof(T) * kWarps * static_cast<size_t>(a.hd);
    qkv_prepare_generic_kernel<T, B, W>
        <<<static_cast<unsigned>(ceil_div(a.rows, kWarps)), kWarps * 32, smem, s>>>(a);
  }
  RLCU_LAUNCH_CHECK(s);
}

// ---- backward ----------------------------------------------------------------------------------------------------
constexpr int kBwdBlocks = 528;       // grid cap (a constant: the norm-weight sums depend on the shape only)
constexpr int kBwdGenericWarps = 4;   // generic backward: 4 warps x 2 hd floats of shared memory (hd <= 1024)

template <class T, class B, class W>
struct QkvBwdArgs {
  T* dqkv;
  float* partial;  // [gridDim.x][2 hd]: q_norm then k_norm columns; null without QK-norm
  const T* dq;
  const T* dk;
  const T* dv;
  const T* qkv;   // read only with QK-norm
  const B* bias;  // may be null
  const W* qn;    // null: no QK-norm
  const W* kn;
  const int* positions;
  const float* inv_freq;
  int64_t rows;  // T * (nq + 2 nkv)
  int64_t nq, nkv, hd;
  float eps;
  float sign;  // always -1 (the transpose rotation); a runtime value like rope_kernel's
};

// Vector path: the forward's lane layout (P lanes per (token, head) row, lane `sub` holding vectors sub and sub + P,
// i.e. the rope pairs), a grid-stride walk over rows. Per row: g = rope_bwd(dout) in fp32; with QK-norm x = qkv +
// bias (rounded), rstd from x with the forward's reduction order, dx = rstd (w g - x rstd^2 mean(w g x)); the lane
// adds g x rstd into its columns' q or k sums. v rows copy dv. Block end: butterfly over the row groups of a warp,
// then the warps in order through shared memory into partial[block].
template <class T, class B, class W, int V, int P>
__global__ void __launch_bounds__(kWarps * 32) qkv_prepare_bwd_vec_kernel(const QkvBwdArgs<T, B, W> a) {
  extern __shared__ float bwd_warp_sums[];  // [kWarps][2 hd], only with QK-norm
  constexpr int kRowsPerWarp = 32 / P;
  constexpr int64_t kRowsPerBlock = kWarps * kRowsPerWarp;
  const int lane = threadIdx.x & 31, sub = lane % P, warp = threadIdx.x >> 5;
  const int64_t H = a.nq + 2 * a.nkv, hd = a.hd;
  const int64_t clo = static_cast<int64_t>(sub) * V, chi = hd / 2 + clo;
  const bool norm = a.qn != nullptr;
  float accq[2][V], acck[2][V];
#pragma unroll
  for (int j = 0; j < V; ++j) accq[0][j] = accq[1][j] = acck[0][j] = acck[1][j] = 0.0f;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock; base < a.rows;
       base += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const int64_t row = base + warp * kRowsPerWarp + lane / P;
    const bool ok = row < a.rows;  // every lane takes part in the shuffles
    const int64_t t = ok ? row / H : 0, h = ok ? row % H : 0;
    const bool is_q = ok && h < a.nq, is_k = ok && !is_q && h < a.nq + a.nkv, is_v = ok && !is_q && !is_k;
    if (is_v) {
      const T* d = a.dv + (t * a.nkv + (h - a.nq - a.nkv)) * hd;
      store_pair<T, V>(a.dqkv + row * hd, clo, chi, load_vec<V>(d + clo), load_vec<V>(d + chi));
    }
    const bool qk = is_q || is_k;
    float glo[V], ghi[V];
    if (qk) {
      const T* d = is_q ? a.dq + (t * a.nq + h) * hd : a.dk + (t * a.nkv + (h - a.nq)) * hd;
      const Vec<T, V> lo = load_vec<V>(d + clo), hi = load_vec<V>(d + chi);
      const Vec<float, V> f = load_vec<V>(a.inv_freq + clo);
      const float pos = static_cast<float>(a.positions[t]);
#pragma unroll
      for (int j = 0; j < V; ++j) rope_rotate_pair(to_f32(lo.v[j]), to_f32(hi.v[j]), pos, f.v[j], a.sign, glo[j], ghi[j]);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) glo[j] = ghi[j] = 0.0f;
    }
    if (norm) {  // grid-uniform
      float xlo[V], xhi[V], wlo[V], whi[V];
      if (qk) {
        Vec<T, V> lo = load_vec<V>(a.qkv + row * hd + clo), hi = load_vec<V>(a.qkv + row * hd + chi);
        if (a.bias != nullptr) {
          const Vec<B, V> blo = load_vec<V>(a.bias + h * hd + clo), bhi = load_vec<V>(a.bias + h * hd + chi);
#pragma unroll
          for (int j = 0; j < V; ++j) {
            lo.v[j] = from_f32<T>(to_f32(lo.v[j]) + to_f32(blo.v[j]));
            hi.v[j] = from_f32<T>(to_f32(hi.v[j]) + to_f32(bhi.v[j]));
          }
        }
        const W* w = is_q ? a.qn : a.kn;
        const Vec<W, V> wl = load_vec<V>(w + clo), wh = load_vec<V>(w + chi);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          xlo[j] = to_f32(lo.v[j]);
          xhi[j] = to_f32(hi.v[j]);
          wlo[j] = to_f32(wl.v[j]);
          whi[j] = to_f32(wh.v[j]);
        }
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) xlo[j] = xhi[j] = wlo[j] = whi[j] = 0.0f;
      }
      // Sum of squares in the forward's order (two fmaf chains, then the butterfly), and sum of w g x.
      float sl = 0.0f, sh = 0.0f, dot = 0.0f;
#pragma unroll
      for (int j = 0; j < V; ++j) sl = fmaf(xlo[j], xlo[j], sl);
#pragma unroll
      for (int j = 0; j < V; ++j) sh = fmaf(xhi[j], xhi[j], sh);
#pragma unroll
      for (int j = 0; j < V; ++j) dot = fmaf(wlo[j] * glo[j], xlo[j], dot);
#pragma unroll
      for (int j = 0; j < V; ++j) dot = fmaf(whi[j] * ghi[j], xhi[j], dot);
      float ss = sl + sh;
#pragma unroll
      for (int o = P / 2; o > 0; o >>= 1) {
        ss += __shfl_xor_sync(0xffffffffu, ss, o);
        dot += __shfl_xor_sync(0xffffffffu, dot, o);
      }
      const float r = rsqrtf(ss / static_cast<float>(hd) + a.eps);
      const float k = r * r * dot / static_cast<float>(hd);
      if (qk) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const float pl = glo[j] * xlo[j], ph = ghi[j] * xhi[j];
          if (is_q) {
            accq[0][j] = fmaf(pl, r, accq[0][j]);
            accq[1][j] = fmaf(ph, r, accq[1][j]);
          } else {
            acck[0][j] = fmaf(pl, r, acck[0][j]);
            acck[1][j] = fmaf(ph, r, acck[1][j]);
          }
          glo[j] = r * (wlo[j] * glo[j] - xlo[j] * k);
          ghi[j] = r * (whi[j] * ghi[j] - xhi[j] * k);
        }
      }
    }
    if (qk) {
      Vec<T, V> olo, ohi;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        olo.v[j] = from_f32<T>(glo[j]);
        ohi.v[j] = from_f32<T>(ghi[j]);
      }
      store_pair<T, V>(a.dqkv + row * hd, clo, chi, olo, ohi);
    }
  }
  if (!norm) return;  // grid-uniform
  // The row groups of a warp (lane bits above P, fixed order), then the warps in order.
#pragma unroll
  for (int j = 0; j < V; ++j)
#pragma unroll
    for (int o = 16; o >= P; o >>= 1) {
      accq[0][j] += __shfl_xor_sync(0xffffffffu, accq[0][j], o);
      accq[1][j] += __shfl_xor_sync(0xffffffffu, accq[1][j], o);
      acck[0][j] += __shfl_xor_sync(0xffffffffu, acck[0][j], o);
      acck[1][j] += __shfl_xor_sync(0xffffffffu, acck[1][j], o);
    }
  float* ws = bwd_warp_sums + static_cast<int64_t>(warp) * 2 * hd;
  if (lane < P) {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      ws[clo + j] = accq[0][j];
      ws[chi + j] = accq[1][j];
      ws[hd + clo + j] = acck[0][j];
      ws[hd + chi + j] = acck[1][j];
    }
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < 2 * hd; c += blockDim.x) {
    float sum = bwd_warp_sums[c];
#pragma unroll
    for (int i = 1; i < kWarps; ++i) sum += bwd_warp_sums[i * 2 * hd + c];
    a.partial[static_cast<int64_t>(blockIdx.x) * 2 * hd + c] = sum;
  }
}

// Generic path (any even hd, any alignment): one warp per row of a grid-stride walk, lane l taking the rope pairs
// (i, i + hd/2) for i = l, l + 32, ...; two passes over the row (sums, then dx; g and x recomputed from memory).
// Each warp adds g x rstd into its own shared-memory columns (a column always belongs to the same lane), then the
// warps are added in order into partial[block].
template <class T, class B, class W>
__global__ void __launch_bounds__(kBwdGenericWarps * 32) qkv_prepare_bwd_generic_kernel(const QkvBwdArgs<T, B, W> a) {
  extern __shared__ float bwd_warp_sums[];  // [kBwdGenericWarps][2 hd], only with QK-norm
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t H = a.nq + 2 * a.nkv, hd = a.hd, half = hd / 2;
  const bool norm = a.qn != nullptr;
  float* ws = bwd_warp_sums + static_cast<int64_t>(warp) * 2 * hd;
  if (norm)
    for (int64_t c = lane; c < 2 * hd; c += 32) ws[c] = 0.0f;
  __syncwarp();  // a lane accumulates into columns another lane zeroed
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kBwdGenericWarps + warp; row < a.rows;
       row += static_cast<int64_t>(gridDim.x) * kBwdGenericWarps) {  // warp-uniform
    const int64_t t = row / H, h = row % H;
    const bool is_q = h < a.nq, is_k = !is_q && h < a.nq + a.nkv;
    T* out = a.dqkv + row * hd;
    if (!is_q && !is_k) {
      const T* d = a.dv + (t * a.nkv + (h - a.nq - a.nkv)) * hd;
      for (int64_t c = lane; c < hd; c += 32) out[c] = d[c];
      continue;
    }
    const T* d = is_q ? a.dq + (t * a.nq + h) * hd : a.dk + (t * a.nkv + (h - a.nq)) * hd;
    const float pos = static_cast<float>(a.positions[t]);
    if (!norm) {
      for (int64_t i = lane; i < half; i += 32) {
        float glo, ghi;
        rope_rotate_pair(to_f32(d[i]), to_f32(d[i + half]), pos, a.inv_freq[i], a.sign, glo, ghi);
        out[i] = from_f32<T>(glo);
        out[i + half] = from_f32<T>(ghi);
      }
      continue;
    }
    const T* xr = a.qkv + row * hd;
    const B* br = a.bias == nullptr ? nullptr : a.bias + h * hd;
    const W* w = is_q ? a.qn : a.kn;
    auto x_at = [&](int64_t c) {
      return br == nullptr ? to_f32(xr[c]) : to_f32(from_f32<T>(to_f32(xr[c]) + to_f32(br[c])));
    };
    float ss = 0.0f, dot = 0.0f;
    for (int64_t i = lane; i < half; i += 32) {
      float glo, ghi;
      rope_rotate_pair(to_f32(d[i]), to_f32(d[i + half]), pos, a.inv_freq[i], a.sign, glo, ghi);
      const float xlo = x_at(i), xhi = x_at(i + half);
      ss = fmaf(xlo, xlo, ss);
      ss = fmaf(xhi, xhi, ss);
      dot = fmaf(to_f32(w[i]) * glo, xlo, dot);
      dot = fmaf(to_f32(w[i + half]) * ghi, xhi, dot);
    }
    ss = warp_sum(ss);
    dot = warp_sum(dot);
    const float r = rsqrtf(ss / static_cast<float>(hd) + a.eps);
    const float k = r * r * dot / static_cast<float>(hd);
    float* acc = ws + (is_q ? 0 : hd);
    for (int64_t i = lane; i < half; i += 32) {
      float glo, ghi;
      rope_rotate_pair(to_f32(d[i]), to_f32(d[i + half]), pos, a.inv_freq[i], a.sign, glo, ghi);
      const float xlo = x_at(i), xhi = x_at(i + half);
      acc[i] = fmaf(glo * xlo, r, acc[i]);
      acc[i + half] = fmaf(ghi * xhi, r, acc[i + half]);
      out[i] = from_f32<T>(r * (to_f32(w[i]) * glo - xlo * k));
      out[i + half] = from_f32<T>(r * (to_f32(w[i + half]) * ghi - xhi * k));
    }
  }
  if (!norm) return;  // grid-uniform
  __syncthreads();
  for (int64_t c = threadIdx.x; c < 2 * hd; c += blockDim.x) {
    float sum = bwd_warp_sums[c];
#pragma unroll
    for (int i = 1; i < kBwdGenericWarps; ++i) sum += bwd_warp_sums[i * 2 * hd + c];
    a.partial[static_cast<int64_t>(blockIdx.x) * 2 * hd + c] = sum;
  }
}

// dq_norm[c] (c < hd) / dk_norm[c - hd] += sum over blocks of partial[block][c], in block order (fp64): the layout of
// column_finish_kernel (cuda_common.cuh) with the two destinations of one [2 hd] partial row.
constexpr int kNormFinishCols = 32;
constexpr int kNormFinishLanes = 16;
__global__ void qkv_norm_finish_kernel(float* __restrict__ dq_norm, float* __restrict__ dk_norm,
                                       const float* __restrict__ partial, int blocks, int64_t hd) {
  __shared__ double red[kNormFinishLanes][kNormFinishCols];
  const int tx = threadIdx.x % kNormFinishCols, ty = threadIdx.x / kNormFinishCols;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kNormFinishCols + tx, cols = 2 * hd;
  double s = 0.0;
  if (c < cols)
    for (int b = ty; b < blocks; b += kNormFinishLanes) s += partial[static_cast<int64_t>(b) * cols + c];
  red[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && c < cols) {
    double t = red[0][tx];
#pragma unroll
    for (int i = 1; i < kNormFinishLanes; ++i) t += red[i][tx];
    float* dst = c < hd ? dq_norm + c : dk_norm + (c - hd);
    *dst += static_cast<float>(t);
  }
}

template <class T, class B, class W>
void launch_bwd(QkvBwdArgs<T, B, W> a, float* dq_norm, float* dk_norm, bool aligned, Context& ctx) {
  constexpr int V = vec16<T>();
  const bool norm = a.qn != nullptr;
  const int64_t nvec = a.hd % V == 0 ? a.hd / V : 0;
  const bool vec = aligned && nvec >= 4 && nvec <= 32 && (nvec & (nvec - 1)) == 0;
  const int64_t rows_per_block = vec ? kWarps * (32 / (nvec / 2)) : kBwdGenericWarps;
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(a.rows, rows_per_block), kBwdBlocks));
  if (norm) a.partial = static_cast<float*>(scratch(ctx, sizeof(float) * blocks * 2 * a.hd));
  cudaStream_t s = stream_of(ctx);
  if (vec) {
    const size_t smem = norm ? sizeof(float) * kWarps * 2 * a.hd : 0;
    with_pair_lanes(static_cast<int>(nvec / 2), [&](auto pc) {
      constexpr int P = decltype(pc)::value;
      qkv_prepare_bwd_vec_kernel<T, B, W, V, P><<<blocks, kWarps * 32, smem, s>>>(a);
    });
  } else {
    const size_t smem = norm ? sizeof(float) * kBwdGenericWarps * 2 * a.hd : 0;
    qkv_prepare_bwd_generic_kernel<T, B, W><<<blocks, kBwdGenericWarps * 32, smem, s>>>(a);
  }
  RLCU_LAUNCH_CHECK(s);
  if (!norm) return;
  qkv_norm_finish_kernel<<<static_cast<unsigned>(ceil_div(2 * a.hd, kNormFinishCols)),
                           kNormFinishCols * kNormFinishLanes, 0, s>>>(dq_norm, dk_norm, a.partial, blocks, a.hd);
  RLCU_LAUNCH_CHECK(s);
}

}  // namespace

void qkv_prepare(const Tensor& q_out, const Tensor& k_out, const Tensor& v_out, const Tensor& k_cache,
                 const Tensor& v_cache, const Tensor& qkv, const Tensor& bias, const Tensor& q_norm,
                 const Tensor& k_norm, float eps, const Tensor& positions, const Tensor& inv_freq,
                 const Tensor& slots, Context& ctx) {
  const char* op = "qkv_prepare";
  RLCU_CHECK(k_cache.empty() == v_cache.empty(), "{}: k_cache and v_cache must be both given or both empty", op);
  const bool cache = !k_cache.empty();
  // Without a cache (the training forward) k_out gives nkv and the dtype, and the dense outputs are required.
  RLCU_CHECK(cache || (!k_out.empty() && !v_out.empty()), "{}: without a KV cache k_out and v_out are required", op);
  const Tensor& kv = cache ? k_cache : k_out;
  check_cuda_tensor(kv, op);
  const DType dt = kv.dtype;
  RLCU_CHECK(kv.ndim == 3, "{}: {} {} must be [{}, nkv, hd]", op, cache ? "k_cache" : "k_out", kv.shape_str(),
             cache ? "slots" : "T");
  if (cache) {
    check_cuda_tensor(v_cache, op);
    RLCU_CHECK(v_cache.ndim == 3 && v_cache.dtype == dt && v_cache.shape[0] == k_cache.shape[0] &&
                   v_cache.shape[1] == k_cache.shape[1] && v_cache.shape[2] == k_cache.shape[2],
               "{}: k_cache {} {} and v_cache {} {} must be equal [slots, nkv, hd] tensors", op, dtype_name(dt),
               k_cache.shape_str(), dtype_name(v_cache.dtype), v_cache.shape_str());
  }
  check_cuda_tensor(q_out, op);
  RLCU_CHECK(q_out.dtype == dt && q_out.ndim == 3 && q_out.shape[2] == kv.shape[2],
             "{}: q_out {} {} must be [T, nq, hd] of the cache's dtype and head dim ({} {})", op,
             dtype_name(q_out.dtype), q_out.shape_str(), dtype_name(dt), kv.shape_str());
  const int64_t T = q_out.shape[0], nq = q_out.shape[1], hd = q_out.shape[2];
  const int64_t num_slots = cache ? k_cache.shape[0] : 0, nkv = kv.shape[1];
  const int64_t W = (nq + 2 * nkv) * hd;
  RLCU_CHECK(hd > 0 && hd % 2 == 0 && hd <= kMaxHeadDim, "{}: head dim {} must be even, in [2, {}]", op, hd,
             kMaxHeadDim);
  check_cuda_tensor(qkv, op);
  RLCU_CHECK(qkv.dtype == dt && qkv.ndim == 2 && qkv.shape[0] == T && qkv.shape[1] == W,
             "{}: qkv {} {} must be {} [{}, {}]", op, dtype_name(qkv.dtype), qkv.shape_str(), dtype_name(dt), T, W);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"k_out", &k_out}, {"v_out", &v_out}}) {
    if (t->empty()) continue;
    check_cuda_tensor(*t, op);
    RLCU_CHECK(t->dtype == dt && t->ndim == 3 && t->shape[0] == T && t->shape[1] == nkv && t->shape[2] == hd,
               "{}: {} {} {} must be empty or {} [{}, {}, {}]", op, name, dtype_name(t->dtype), t->shape_str(),
               dtype_name(dt), T, nkv, hd);
  }
  if (!bias.empty()) {
    check_cuda_tensor(bias, op);
    RLCU_CHECK(bias.numel() == W, "{}: bias {} must have {} elements (qd + 2 kvd)", op, bias.shape_str(), W);
  }
  RLCU_CHECK(q_norm.empty() == k_norm.empty(), "{}: q_norm and k_norm must be both given or both empty", op);
  const bool norm = !q_norm.empty();
  if (norm) {
    check_cuda_tensor(q_norm, op);
    check_cuda_tensor(k_norm, op);
    RLCU_CHECK(q_norm.numel() == hd && k_norm.numel() == hd && q_norm.dtype == k_norm.dtype,
               "{}: q_norm {} {} and k_norm {} {} must both be [{}] of one dtype", op, dtype_name(q_norm.dtype),
               q_norm.shape_str(), dtype_name(k_norm.dtype), k_norm.shape_str(), hd);
  }
  check_cuda_tensor(inv_freq, op);
  RLCU_CHECK(inv_freq.dtype == DType::F32 && inv_freq.numel() == hd / 2,
             "{}: inv_freq must be f32 with {} elements, got {} {}", op, hd / 2, dtype_name(inv_freq.dtype),
             inv_freq.shape_str());
  if (T == 0) return;
  check_cuda_tensor(positions, op);
  RLCU_CHECK(positions.dtype == DType::I32 && positions.numel() == T,
             "{}: positions must be i32 with {} elements, got {} {}", op, T, dtype_name(positions.dtype),
             positions.shape_str());
  if (cache) {
    check_cuda_tensor(slots, op);
    RLCU_CHECK(slots.dtype == DType::I32 && slots.numel() == T, "{}: slots must be i32 with {} elements, got {} {}",
               op, T, dtype_name(slots.dtype), slots.shape_str());
  }
  if (nq + 2 * nkv == 0) return;
  cudaStream_t s = stream_of(ctx);
  dispatch_float(dt, op, [&](auto tt) {
    using Tt = decltype(tt);
    dispatch_param<Tt>(bias.empty() ? dt : bias.dtype, op, "bias", [&](auto tb) {
      using Bt = decltype(tb);
      dispatch_param<Tt>(norm ? q_norm.dtype : dt, op, "q_norm", [&](auto tw) {
        using Wt = decltype(tw);
        constexpr int V = vec16<Tt>();
        QkvArgs<Tt, Bt, Wt> a{};
        a.q_out = q_out.ptr<Tt>();
        a.k_out = k_out.empty() ? nullptr : k_out.ptr<Tt>();
        a.v_out = v_out.empty() ? nullptr : v_out.ptr<Tt>();
        a.kc = cache ? k_cache.ptr<Tt>() : nullptr;
        a.vc = cache ? v_cache.ptr<Tt>() : nullptr;
        a.qkv = qkv.ptr<Tt>();
        a.bias = bias.empty() ? nullptr : bias.ptr<Bt>();
        a.qn = norm ? q_norm.ptr<Wt>() : nullptr;
        a.kn = norm ? k_norm.ptr<Wt>() : nullptr;
        a.positions = positions.ptr<int>();
        a.inv_freq = inv_freq.ptr<float>();
        a.slots = cache ? slots.ptr<int>() : nullptr;
        a.rows = T * (nq + 2 * nkv);
        a.nq = nq;
        a.nkv = nkv;
        a.hd = hd;
        a.num_slots = num_slots;
        a.eps = eps;
        a.sign = 1.0f;
        // rmsnorm_fwd's layout per weight (for activations aligned as the engine's buffers are).
        auto layout = [&](const void* w, int& v, int& g) {
          const bool vec = hd % V == 0 && is_aligned(w, V * sizeof(Wt));
          v = vec ? V : 1;
          g = vec ? rmsnorm_lanes_per_row(hd / V) : 32;
        };
        layout(a.qn, a.vq, a.gq);
        layout(a.kn, a.vk, a.gk);
        bool aligned = is_aligned(a.inv_freq, V * sizeof(float)) &&
                       (a.bias == nullptr || is_aligned(a.bias, V * sizeof(Bt))) &&
                       (!norm || (is_aligned(a.qn, V * sizeof(Wt)) && is_aligned(a.kn, V * sizeof(Wt))));
        for (const void* p : {static_cast<const void*>(a.q_out), static_cast<const void*>(a.k_out),
                              static_cast<const void*>(a.v_out), static_cast<const void*>(a.kc),
                              static_cast<const void*>(a.vc), static_cast<const void*>(a.qkv)})
          aligned = aligned && is_aligned(p, 16);
        launch(a, aligned, s);
      });
    });
  });
}

void qkv_prepare_bwd(const Tensor& dqkv, const Tensor& dq_norm, const Tensor& dk_norm, const Tensor& dq,
                     const Tensor& dk, const Tensor& dv, const Tensor& qkv, const Tensor& bias, const Tensor& q_norm,
                     const Tensor& k_norm, float eps, const Tensor& positions, const Tensor& inv_freq, Context& ctx) {
  const char* op = "qkv_prepare_bwd";
  check_cuda_tensor(dq, op);
  check_cuda_tensor(dk, op);
  check_cuda_tensor(dv, op);
  check_cuda_tensor(dqkv, op);
  const DType dt = dq.dtype;
  RLCU_CHECK(dq.ndim == 3 && dk.ndim == 3, "{}: dq {} and dk {} must be [T, heads, hd]", op, dq.shape_str(),
             dk.shape_str());
  const int64_t T = dq.shape[0], nq = dq.shape[1], hd = dq.shape[2], nkv = dk.shape[1];
  const int64_t W = (nq + 2 * nkv) * hd;
  RLCU_CHECK(hd > 0 && hd % 2 == 0 && hd <= kMaxHeadDim, "{}: head dim {} must be even, in [2, {}]", op, hd,
             kMaxHeadDim);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"dk", &dk}, {"dv", &dv}})
    RLCU_CHECK(t->dtype == dt && t->ndim == 3 && t->shape[0] == T && t->shape[1] == nkv && t->shape[2] == hd,
               "{}: {} {} {} must be {} [{}, {}, {}]", op, name, dtype_name(t->dtype), t->shape_str(), dtype_name(dt),
               T, nkv, hd);
  RLCU_CHECK(dqkv.dtype == dt && dqkv.ndim == 2 && dqkv.shape[0] == T && dqkv.shape[1] == W,
             "{}: dqkv {} {} must be {} [{}, {}]", op, dtype_name(dqkv.dtype), dqkv.shape_str(), dtype_name(dt), T, W);
  RLCU_CHECK(q_norm.empty() == k_norm.empty(), "{}: q_norm and k_norm must be both given or both empty", op);
  const bool norm = !q_norm.empty();
  if (norm) {
    for (const Tensor* t : {&q_norm, &k_norm, &dq_norm, &dk_norm, &qkv}) check_cuda_tensor(*t, op);
    RLCU_CHECK(q_norm.numel() == hd && k_norm.numel() == hd && q_norm.dtype == k_norm.dtype,
               "{}: q_norm {} {} and k_norm {} {} must both be [{}] of one dtype", op, dtype_name(q_norm.dtype),
               q_norm.shape_str(), dtype_name(k_norm.dtype), k_norm.shape_str(), hd);
    RLCU_CHECK(dq_norm.dtype == DType::F32 && dk_norm.dtype == DType::F32 && dq_norm.numel() == hd &&
                   dk_norm.numel() == hd,
               "{}: dq_norm {} {} and dk_norm {} {} must be f32 [{}]", op, dtype_name(dq_norm.dtype),
               dq_norm.shape_str(), dtype_name(dk_norm.dtype), dk_norm.shape_str(), hd);
    RLCU_CHECK(qkv.dtype == dt && qkv.ndim == 2 && qkv.shape[0] == T && qkv.shape[1] == W,
               "{}: qkv {} {} must be {} [{}, {}]", op, dtype_name(qkv.dtype), qkv.shape_str(), dtype_name(dt), T, W);
    if (!bias.empty()) {
      check_cuda_tensor(bias, op);
      RLCU_CHECK(bias.numel() == W, "{}: bias {} must have {} elements (qd + 2 kvd)", op, bias.shape_str(), W);
    }
  } else {
    RLCU_CHECK(dq_norm.empty() && dk_norm.empty(), "{}: dq_norm / dk_norm given without QK-norm weights", op);
  }
  check_cuda_tensor(inv_freq, op);
  RLCU_CHECK(inv_freq.dtype == DType::F32 && inv_freq.numel() == hd / 2,
             "{}: inv_freq must be f32 with {} elements, got {} {}", op, hd / 2, dtype_name(inv_freq.dtype),
             inv_freq.shape_str());
  if (T == 0 || nq + 2 * nkv == 0) return;
  check_cuda_tensor(positions, op);
  RLCU_CHECK(positions.dtype == DType::I32 && positions.numel() == T,
             "{}: positions must be i32 with {} elements, got {} {}", op, T, dtype_name(positions.dtype),
             positions.shape_str());
  const bool with_bias = norm && !bias.empty();
  dispatch_float(dt, op, [&](auto tt) {
    using Tt = decltype(tt);
    dispatch_param<Tt>(with_bias ? bias.dtype : dt, op, "bias", [&](auto tb) {
      using Bt = decltype(tb);
      dispatch_param<Tt>(norm ? q_norm.dtype : dt, op, "q_norm", [&](auto tw) {
        using Wt = decltype(tw);
        constexpr int V = vec16<Tt>();
        QkvBwdArgs<Tt, Bt, Wt> a{};
        a.dqkv = dqkv.ptr<Tt>();
        a.dq = dq.ptr<Tt>();
        a.dk = dk.ptr<Tt>();
        a.dv = dv.ptr<Tt>();
        a.qkv = norm ? qkv.ptr<Tt>() : nullptr;
        a.bias = with_bias ? bias.ptr<Bt>() : nullptr;
        a.qn = norm ? q_norm.ptr<Wt>() : nullptr;
        a.kn = norm ? k_norm.ptr<Wt>() : nullptr;
        a.positions = positions.ptr<int>();
        a.inv_freq = inv_freq.ptr<float>();
        a.rows = T * (nq + 2 * nkv);
        a.nq = nq;
        a.nkv = nkv;
        a.hd = hd;
        a.eps = eps;
        a.sign = -1.0f;
        bool aligned = is_aligned(a.inv_freq, V * sizeof(float)) &&
                       (a.bias == nullptr || is_aligned(a.bias, V * sizeof(Bt))) &&
                       (!norm || (is_aligned(a.qn, V * sizeof(Wt)) && is_aligned(a.kn, V * sizeof(Wt))));
        for (const void* p : {static_cast<const void*>(a.dqkv), static_cast<const void*>(a.dq),
                              static_cast<const void*>(a.dk), static_cast<const void*>(a.dv),
                              static_cast<const void*>(a.qkv)})
          aligned = aligned && is_aligned(p, 16);
        launch_bwd(a, norm ? dq_norm.ptr<float>() : nullptr, norm ? dk_norm.ptr<float>() : nullptr, aligned, ctx);
      });
    });
  });
}

}  // namespace rlcu::cuda
