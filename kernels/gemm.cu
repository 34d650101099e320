// Matrix products and bias on CUDA.
//
// gemm: out[M,N] = alpha * op(a) @ op(b) + beta * out over row-major 2-D views (a tensor of more dims is read as
//   [rows, last dim]). Types: bf16 x bf16 -> bf16 or f32, f32 x f32 -> f32; fp32 accumulation always (f32 inputs
//   use plain fp32, not tf32). beta = 0 never reads `out` (it may hold NaN); beta = 1 accumulates, which is how
//   parameter gradients (F32) accumulate.
//   Row-major -> cuBLASLt column-major: a row-major [r, c] matrix is the column-major [c, r] matrix with the same
//   leading dimension, so out^T[N,M] = op(b)^T @ op(a)^T is computed with cuBLASLt's A = b and B = a.
//   Matmul descriptors, layouts and the heuristic's algorithm are cached per (handle, types, shape, transposes,
//   pointer alignment, beta != 0): after the first call of a shape the hot path does no heuristic query.
//   When cuBLASLt offers no algorithm (rare odd shapes), a portable tiled kernel computes the same product.
// bias_add: out[T,N] += bias[N]            (activation: in place)
// bias_grad: dbias[N] (F32) += sum_t dy[T,N] (parameter gradient: accumulates; deterministic two-pass column
//   reduction, no atomics)
// Shapes are checked before the call (kernels/contract/gemm.cpp); this file checks its supported dtype pairs.
#include <cublasLt.h>

#include <cstring>
#include <mutex>
#include <unordered_map>

#include "cuda_common.cuh"
#include "backends.h"
#include "contract/contract.h"
#include "ops_cuda_internal.h"

namespace rlcu::cuda {

namespace {

// ---- cuBLASLt plan cache ------------------------------------------------------------------------------------------

struct GemmKey {
  const void* handle;
  DType ab, c;
  bool ta, tb, beta_nonzero;
  int64_t m, n, k;
  int align_a, align_b, align_c;
  bool operator==(const GemmKey& o) const {
    return handle == o.handle && ab == o.ab && c == o.c && ta == o.ta && tb == o.tb &&
           beta_nonzero == o.beta_nonzero && m == o.m && n == o.n && k == o.k && align_a == o.align_a &&
           align_b == o.align_b && align_c == o.align_c;
  }
};

struct GemmKeyHash {
  size_t operator()(const GemmKey& k) const {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&h](uint64_t v) {
      h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    };
    mix(reinterpret_cast<uintptr_t>(k.handle));
    mix(static_cast<uint64_t>(k.ab) | (static_cast<uint64_t>(k.c) << 8) | (uint64_t(k.ta) << 16) |
        (uint64_t(k.tb) << 17) | (uint64_t(k.beta_nonzero) << 18));
    mix(static_cast<uint64_t>(k.m));
    mix(static_cast<uint64_t>(k.n));
    mix(static_cast<uint64_t>(k.k));
    mix(static_cast<uint64_t>(k.align_a) | (static_cast<uint64_t>(k.align_b) << 16) |
        (static_cast<uint64_t>(k.align_c) << 32));
    return static_cast<size_t>(h);
  }
};

struct GemmPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool has_algo = false;
  GemmPlan() = default;
  GemmPlan(const GemmPlan&) = delete;
  GemmPlan& operator=(const GemmPlan&) = delete;
  ~GemmPlan() {
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

cudaDataType_t cuda_type(DType t) { return t == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F; }

// Largest power of two (<= 256) dividing the address: cuBLASLt's heuristic must only offer algorithms that work at
// the actual alignment.
int alignment_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int al = 256;
  while (al > 1 && a % al != 0) al >>= 1;
  return al;
}

class PlanCache {
 public:
  static PlanCache& instance() {
    static PlanCache c;
    return c;
  }
  // Returns the plan for `key`, building it (descriptors + one heuristic query) on first use.
  const GemmPlan& get(const GemmKey& key, cublasLtHandle_t handle, size_t workspace_bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = plans_.find(key);
    if (it != plans_.end()) return *it->second;
    auto plan = std::make_unique<GemmPlan>();
    build(*plan, key, handle, workspace_bytes);
    const GemmPlan& ref = *plan;
    plans_.emplace(key, std::move(plan));
    return ref;
  }

 private:
  static void build(GemmPlan& p, const GemmKey& key, cublasLtHandle_t handle, size_t workspace_bytes) {
    RLCU_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    // cuBLASLt's A is our b, its B our a (see the header comment).
    const cublasOperation_t opA = key.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t opB = key.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    RLCU_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof(opA)));
    RLCU_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof(opB)));
    const int64_t M = key.m, N = key.n, K = key.k;
    const cudaDataType_t tab = cuda_type(key.ab), tc = cuda_type(key.c);
    // Stored (pre-op) column-major shapes: b is [N,K] ld N (no trans) or [K,N] ld K (trans); a is [K,M] ld K or
    // [M,K] ld M; out is [N,M] ld N.
    if (key.tb) RLCU_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.la, tab, K, N, K));
    else RLCU_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.la, tab, N, K, N));
    if (key.ta) RLCU_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.lb, tab, M, K, M));
    else RLCU_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.lb, tab, K, M, K));
    RLCU_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.lc, tc, N, M, N));

    cublasLtMatmulPreference_t pref = nullptr;
    RLCU_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = workspace_bytes;
    uint32_t al_a = static_cast<uint32_t>(key.align_b), al_b = static_cast<uint32_t>(key.align_a),
             al_c = static_cast<uint32_t>(key.align_c);
    cublasStatus_t st =
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a));
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b));
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c));
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof(al_c));
    cublasLtMatmulHeuristicResult_t result{};
    int returned = 0;
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulAlgoGetHeuristic(handle, p.op, p.la, p.lb, p.lc, p.lc, pref, 1, &result, &returned);
    cublasLtMatmulPreferenceDestroy(pref);
    // NOT_SUPPORTED means "no algorithm for this shape": the caller falls back; anything else is an error.
    if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED) RLCU_CUBLAS_CHECK(st);
    p.has_algo = st == CUBLAS_STATUS_SUCCESS && returned > 0;
    if (p.has_algo) p.algo = result.algo;
  }

  std::mutex mu_;
  std::unordered_map<GemmKey, std::unique_ptr<GemmPlan>, GemmKeyHash> plans_;
};

// ---- portable fallback: 32x32 output tile per block of 32x8 threads, fp32 accumulation ---------------------------

constexpr int kFbTile = 32;

template <class TI, class TO>
__global__ void gemm_fallback_kernel(TO* out, const TO* c, const TI* __restrict__ a, const TI* __restrict__ b,
                                     int64_t M, int64_t N, int64_t K, bool ta, bool tb, float alpha, float beta) {
  __shared__ float as[kFbTile][kFbTile + 1];  // as[m][k]
  __shared__ float bs[kFbTile][kFbTile + 1];  // bs[k][n]
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kFbTile, n0 = static_cast<int64_t>(blockIdx.x) * kFbTile;
  float acc[kFbTile / 8] = {};
  for (int64_t k0 = 0; k0 < K; k0 += kFbTile) {
    for (int i = ty; i < kFbTile; i += 8) {
      // as[i][tx] = op(a)[m0+i][k0+tx]; bs[i][tx] = op(b)[k0+i][n0+tx]
      const int64_t m = m0 + i, k = k0 + tx;
      float va = 0.0f;
      if (m < M && k < K) va = to_f32(ta ? a[k * M + m] : a[m * K + k]);
      as[i][tx] = va;
      const int64_t kb = k0 + i, n = n0 + tx;
      float vb = 0.0f;
      if (kb < K && n < N) vb = to_f32(tb ? b[n * K + kb] : b[kb * N + n]);
      bs[i][tx] = vb;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kFbTile; ++kk) {
      const float bv = bs[kk][tx];
#pragma unroll
      for (int j = 0; j < kFbTile / 8; ++j) acc[j] = fmaf(as[ty + 8 * j][kk], bv, acc[j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < kFbTile / 8; ++j) {
    const int64_t m = m0 + ty + 8 * j, n = n0 + tx;
    if (m < M && n < N) {
      float r = alpha * acc[j];
      if (beta != 0.0f) r += beta * to_f32(c[m * N + n]);
      out[m * N + n] = from_f32<TO>(r);
    }
  }
}

template <class TI, class TO>
void launch_fallback(const Tensor& out, const Tensor& a, const Tensor& b, int64_t M, int64_t N, int64_t K,
                     const ops::GemmParams& p, cudaStream_t s) {
  dim3 grid(static_cast<unsigned>(ceil_div(N, kFbTile)), static_cast<unsigned>(ceil_div(M, kFbTile)));
  RLCU_CHECK(grid.y <= 65535u, "gemm fallback: M = {} too large", M);
  const TO* c = p.addend ? p.addend->ptr<TO>() : out.ptr<TO>();
  gemm_fallback_kernel<TI, TO><<<grid, dim3(kFbTile, 8), 0, s>>>(out.ptr<TO>(), c, a.ptr<TI>(), b.ptr<TI>(), M, N, K,
                                                                  p.trans_a, p.trans_b, p.alpha, p.beta);
  RLCU_LAUNCH_CHECK(s);
}

void run_fallback(const Tensor& out, const Tensor& a, const Tensor& b, int64_t M, int64_t N, int64_t K,
                  const ops::GemmParams& p, cudaStream_t s) {
  if (a.dtype == DType::F32) launch_fallback<float, float>(out, a, b, M, N, K, p, s);
  else if (out.dtype == DType::F32) launch_fallback<bf16, float>(out, a, b, M, N, K, p, s);
  else launch_fallback<bf16, bf16>(out, a, b, M, N, K, p, s);
}

// ---- bias ------------------------------------------------------------------------------------------------------

template <class TO, class TB, int V>
__global__ void bias_add_kernel(TO* __restrict__ out, const TB* __restrict__ bias, int64_t rows, int64_t cols) {
  const int64_t nvec = rows * cols / V;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nvec;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = i * V;
    const int64_t c = e % cols;  // V divides cols on the vector path
    Vec<TO, V> o = load_vec<V>(out + e);
    Vec<TB, V> bv = load_vec<V>(bias + c);
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = from_f32<TO>(to_f32(o.v[j]) + to_f32(bv.v[j]));
    store_vec<V>(out + e, o);
  }
}

template <class T>
struct ColumnLoad {
  const T* p;
  int64_t cols;
  __device__ float operator()(int64_t r, int64_t c) const { return to_f32(p[r * cols + c]); }
};

// The product on `path`, the arguments already checked by contract::gemm.
void gemm_run(const Tensor& out, const Tensor& a, const Tensor& b, const ops::GemmParams& p, GemmPath path,
              Context& ctx) {
  const int64_t M = lead_rows(out), N = out.cols();
  const int64_t K = p.trans_a ? lead_rows(a) : a.cols();
  const bool types_ok = (a.dtype == DType::BF16 && (out.dtype == DType::BF16 || out.dtype == DType::F32)) ||
                        (a.dtype == DType::F32 && out.dtype == DType::F32);
  RLCU_CHECK(types_ok, "gemm: unsupported types {} x {} -> {} (expected bf16 x bf16 -> bf16/f32 or f32 -> f32)",
             dtype_name(a.dtype), dtype_name(b.dtype), dtype_name(out.dtype));
  const Tensor& c = p.addend ? *p.addend : out;  // what the beta term reads
  cudaStream_t s = stream_of(ctx);
  if (M == 0 || N == 0) return;
  if (K == 0) {  // empty sum: out = beta * c (beta = 0 must not read c)
    if (p.beta == 0.0f) fill(out, 0.0f, ctx);
    else scale(out, c, p.beta, ctx);
    return;
  }
  if (path == GemmPath::Fallback) {
    run_fallback(out, a, b, M, N, K, p, s);
    return;
  }
  auto handle = static_cast<cublasLtHandle_t>(ctx.cublaslt());
  RLCU_CHECK(handle != nullptr, "gemm: the context has no cuBLASLt handle");
  const GemmKey key{handle, a.dtype, out.dtype, p.trans_a, p.trans_b, p.beta != 0.0f, M, N, K,
                    alignment_of(a.data), alignment_of(b.data),
                    std::min(alignment_of(out.data), alignment_of(c.data))};
  const GemmPlan& plan = PlanCache::instance().get(key, handle, ctx.workspace_bytes());
  if (!plan.has_algo) {
    RLCU_CHECK(path == GemmPath::Auto, "gemm: cuBLASLt has no algorithm for M={} N={} K={} ({} -> {})", M, N, K,
               dtype_name(a.dtype), dtype_name(out.dtype));
    run_fallback(out, a, b, M, N, K, p, s);
    return;
  }
  RLCU_CUBLAS_CHECK(cublasLtMatmul(handle, plan.op, &p.alpha, b.data, plan.la, a.data, plan.lb, &p.beta, c.data,
                                   plan.lc, out.data, plan.lc, &plan.algo, ctx.workspace(), ctx.workspace_bytes(), s));
  RLCU_LAUNCH_CHECK(s);
}

}  // namespace

// The entry that bypasses ops::gemm's dispatch runs the contract itself.
void gemm_with_path(const Tensor& out, const Tensor& a, const Tensor& b, const ops::GemmParams& p, GemmPath path,
                    Context& ctx) {
  contract::gemm(out, a, b, p);
  gemm_run(out, a, b, p, path, ctx);
}

void gemm(const Tensor& out, const Tensor& a, const Tensor& b, const ops::GemmParams& p, Context& ctx) {
  gemm_run(out, a, b, p, GemmPath::Auto, ctx);
}

void bias_add(const Tensor& out, const Tensor& bias, Context& ctx) {
  const int64_t rows = out.rows(), cols = out.cols();
  cudaStream_t s = stream_of(ctx);
  dispatch_float(out.dtype, "bias_add out", [&](auto to) {
    using TO = decltype(to);
    dispatch_float(bias.dtype, "bias_add bias", [&](auto tb) {
      using TB = decltype(tb);
      constexpr int V = 8;  // 16 bytes of bf16, 32 of f32
      const bool vec = cols % V == 0 && is_aligned(out.data, V * sizeof(TO)) && is_aligned(bias.data, V * sizeof(TB));
      if (vec) {
        bias_add_kernel<TO, TB, V><<<grid_for(rows * cols / V, 256), 256, 0, s>>>(out.ptr<TO>(), bias.ptr<TB>(), rows,
                                                                                 cols);
      } else {
        bias_add_kernel<TO, TB, 1><<<grid_for(rows * cols, 256), 256, 0, s>>>(out.ptr<TO>(), bias.ptr<TB>(), rows,
                                                                             cols);
      }
      RLCU_LAUNCH_CHECK(s);
    });
  });
}

void bias_grad(const Tensor& dbias, const Tensor& dy, Context& ctx) {
  const int64_t rows = dy.rows(), cols = dy.cols();
  cudaStream_t s = stream_of(ctx);
  float* partial = static_cast<float*>(scratch(ctx, column_scratch_floats(rows, cols) * sizeof(float)));
  dispatch_float(dy.dtype, "bias_grad dy", [&](auto t) {
    using T = decltype(t);
    column_sum_accumulate(dbias.ptr<float>(), rows, cols, ColumnLoad<T>{dy.ptr<T>(), cols}, partial, s);
  });
}

}  // namespace rlcu::cuda
