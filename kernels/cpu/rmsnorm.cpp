// CPU RMSNorm over the last dimension: x viewed as [N, D] (N = rows of any shape, so per-head QK-norm is
// x[T, heads, hd] with D = hd), weight[D], rstd[N] saved for backward:
//   rstd[n] = 1 / sqrt(mean_d x[n,d]^2 + eps),   out[n,d] = x[n,d] * rstd[n] * weight[d].
// Backward with g = dout * weight:
//   dx[n,d] = rstd * g[n,d] - x[n,d] * rstd^3 / D * sum_e g[n,e] x[n,e]        (activation gradient: OVERWRITE)
//   dweight[d] += sum_n dout[n,d] * x[n,d] * rstd[n]                           (parameter gradient: ACCUMULATE)
// Sums run in double. out may alias x (each row is read fully before it is written).
// Threads (rlcu/parallel.h) take fixed chunks of rows (out, rstd, dx) or of columns (dweight, summed over the rows in
// order), so results do not depend on the thread count.
// Sizes, dtypes, eps and the no-alias rule are checked by kernels/contract/norm.cpp; the CPU twin adds its own rules
// (non-empty F32 tensors, out/dx/dout with x's last dim).
#include <cmath>
#include <vector>

#include "backends.h"
#include "rlcu/parallel.h"
#include "reference.h"

namespace rlcu::cpu {
namespace ref {

template <class T>
void rmsnorm_fwd_ref(T* out, T* rstd, const T* x, const T* weight, int64_t rows, int64_t dim, double eps) {
  parallel_for(rows, grain_for(3 * dim), [&](int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const T* xr = x + n * dim;
    double ss = 0.0;
    for (int64_t d = 0; d < dim; ++d) ss += static_cast<double>(xr[d]) * static_cast<double>(xr[d]);
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(dim) + eps);
    rstd[n] = static_cast<T>(r);
    T* o = out + n * dim;
    for (int64_t d = 0; d < dim; ++d) o[d] = static_cast<T>(static_cast<double>(xr[d]) * r * weight[d]);
  }
  });
}

template <class T>
void rmsnorm_bwd_ref(T* dx, T* dweight, const T* dout, const T* x, const T* weight, const T* rstd, int64_t rows,
                     int64_t dim) {
  // dweight over column chunks (each sums its rows in order), then dx over row chunks.
  parallel_for(dim, grain_for(rows), [&](int64_t d0, int64_t d1) {
    std::vector<double> dw(static_cast<size_t>(d1 - d0), 0.0);
    for (int64_t n = 0; n < rows; ++n) {
      const T* xr = x + n * dim;
      const T* gr = dout + n * dim;
      const double r = static_cast<double>(rstd[n]);
      for (int64_t d = d0; d < d1; ++d) dw[d - d0] += static_cast<double>(gr[d]) * xr[d] * r;
    }
    for (int64_t d = d0; d < d1; ++d) dweight[d] = static_cast<T>(static_cast<double>(dweight[d]) + dw[d - d0]);
  });
  parallel_for(rows, grain_for(4 * dim), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const T* xr = x + n * dim;
      const T* gr = dout + n * dim;
      const double r = static_cast<double>(rstd[n]);
      double dot = 0.0;
      for (int64_t d = 0; d < dim; ++d) dot += static_cast<double>(gr[d]) * weight[d] * xr[d];
      const double c = r * r * r * dot / static_cast<double>(dim);
      T* o = dx + n * dim;
      for (int64_t d = 0; d < dim; ++d)
        o[d] = static_cast<T>(r * static_cast<double>(gr[d]) * weight[d] - static_cast<double>(xr[d]) * c);
    }
  });
}

#define RLCU_INSTANTIATE(T)                                                                            \
  template void rmsnorm_fwd_ref<T>(T*, T*, const T*, const T*, int64_t, int64_t, double);            \
  template void rmsnorm_bwd_ref<T>(T*, T*, const T*, const T*, const T*, const T*, int64_t, int64_t);
RLCU_INSTANTIATE(float)
RLCU_INSTANTIATE(double)
#undef RLCU_INSTANTIATE

}  // namespace ref

void rmsnorm_fwd(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight, float eps,
                 Context& ctx) {
  check::tensor("rmsnorm_fwd", "out", out, DType::F32);
  check::tensor("rmsnorm_fwd", "x", x, DType::F32);
  check::tensor("rmsnorm_fwd", "weight", weight, DType::F32);
  const int64_t rows = x.rows(), dim = x.cols();
  RLCU_CHECK(out.cols() == dim, "rmsnorm_fwd: out {} does not match x {}", out.shape_str(), x.shape_str());
  ref::rmsnorm_fwd_ref<float>(out.ptr<float>(), rstd.ptr<float>(), x.ptr<float>(), weight.ptr<float>(), rows, dim,
                              eps);
}

void rmsnorm_bwd(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                 const Tensor& rstd, Context& ctx) {
  check::tensor("rmsnorm_bwd", "dx", dx, DType::F32);
  check::tensor("rmsnorm_bwd", "dout", dout, DType::F32);
  check::tensor("rmsnorm_bwd", "x", x, DType::F32);
  check::tensor("rmsnorm_bwd", "weight", weight, DType::F32);
  const int64_t rows = x.rows(), dim = x.cols();
  RLCU_CHECK(dx.cols() == dim, "rmsnorm_bwd: dx {} does not match x {}", dx.shape_str(), x.shape_str());
  RLCU_CHECK(dout.cols() == dim, "rmsnorm_bwd: dout {} does not match x {}", dout.shape_str(), x.shape_str());
  ref::rmsnorm_bwd_ref<float>(dx.ptr<float>(), dweight.ptr<float>(), dout.ptr<float>(), x.ptr<float>(),
                              weight.ptr<float>(), rstd.ptr<float>(), rows, dim);
}

void rmsnorm_bwd_add(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                     const Tensor& weight, const Tensor& rstd, Context& ctx) {
  check::tensor("rmsnorm_bwd_add", "dx", dx, DType::F32);
  std::vector<float> g(static_cast<size_t>(dx.numel()));
  rmsnorm_bwd(Tensor(g.data(), DType::F32, Device::CPU, {x.rows(), x.cols()}), dweight, dout, x, weight, rstd, ctx);
  float* d = dx.ptr<float>();
  for (size_t i = 0; i < g.size(); ++i) d[i] += g[i];
}

}  // namespace rlcu::cpu
