// CPU matrix products: out[M,N] = alpha * op(a) @ op(b) + beta * out with op(x) = x or x^T (row-major, F32), and
// the bias broadcast add / bias gradient.
//
// Every output element is accumulated in double. The loop order is i-k-j over blocks of NB output columns, so the
// inner loop runs over contiguous memory of both the B panel and the accumulator row (vectorisable) and a K x NB
// panel of B stays in cache while all rows of A pass over it. Transposed operands are packed to row-major first.
// With beta == 0 the previous contents of `out` are not read (BLAS convention).
// Threads (rlcu/parallel.h) take fixed chunks of output rows (packing: of packed rows); each element's sum over k
// runs in the same order on any number of threads.
// Gradients are expressed with gemm itself: an activation gradient (dx = dy W) overwrites with beta = 0, a
// parameter gradient (dW += dy^T x) accumulates with beta = 1. bias_grad is a parameter gradient: it ACCUMULATES
// (+=) into dbias; bias_add updates `out` in place.
// Shapes (and one input dtype) are checked by kernels/contract/gemm.cpp; the CPU twin takes 2-D F32 operands.
#include <cstring>
#include <algorithm>
#include <vector>

#include "backends.h"
#include "rlcu/parallel.h"
#include "reference.h"

namespace rlcu::cpu {
namespace ref {

template <class T>
void matmul_f64(double* acc, const T* a, const T* b, int64_t M, int64_t N, int64_t K, bool trans_a, bool trans_b) {
  std::vector<T> a_packed, b_packed;
  if (trans_a) {  // a is [K,M]: pack to [M,K]
    a_packed.resize(static_cast<size_t>(M * K));
    T* ap = a_packed.data();
    parallel_for(M, grain_for(K), [&](int64_t i0, int64_t i1) {
      for (int64_t k = 0; k < K; ++k)
        for (int64_t i = i0; i < i1; ++i) ap[i * K + k] = a[k * M + i];
    });
    a = a_packed.data();
  }
  if (trans_b) {  // b is [N,K]: pack to [K,N]
    b_packed.resize(static_cast<size_t>(K * N));
    T* bp = b_packed.data();
    parallel_for(N, grain_for(K), [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t k = 0; k < K; ++k) bp[k * N + j] = b[j * K + k];
    });
    b = b_packed.data();
  }
  constexpr int64_t NB = 256;
  parallel_for(M, grain_for(N * K), [&](int64_t i0, int64_t i1) {
    for (int64_t j0 = 0; j0 < N; j0 += NB) {
      const int64_t nb = std::min(NB, N - j0);
      for (int64_t i = i0; i < i1; ++i) {
        double* row = acc + i * N + j0;
        std::fill(row, row + nb, 0.0);
        const T* arow = a + i * K;
        for (int64_t k = 0; k < K; ++k) {
          const double aik = static_cast<double>(arow[k]);
          const T* brow = b + k * N + j0;
          for (int64_t j = 0; j < nb; ++j) row[j] += aik * static_cast<double>(brow[j]);
        }
      }
    }
  });
}

template <class T>
void gemm_ref(T* out, const T* a, const T* b, int64_t M, int64_t N, int64_t K, bool trans_a, bool trans_b,
              double alpha, double beta) {
  std::vector<double> acc(static_cast<size_t>(M * N));
  matmul_f64(acc.data(), a, b, M, N, K, trans_a, trans_b);
  parallel_for(M * N, grain_for(1), [&](int64_t i0, int64_t i1) {
    if (beta == 0.0) {
      for (int64_t i = i0; i < i1; ++i) out[i] = static_cast<T>(alpha * acc[i]);
    } else {
      for (int64_t i = i0; i < i1; ++i) out[i] = static_cast<T>(alpha * acc[i] + beta * static_cast<double>(out[i]));
    }
  });
}

template <class T>
void bias_add_ref(T* out, const T* bias, int64_t rows, int64_t n) {
  parallel_for(rows, grain_for(n), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t j = 0; j < n; ++j) out[r * n + j] = static_cast<T>(out[r * n + j] + bias[j]);
  });
}

template <class T>
void bias_grad_ref(T* dbias, const T* dy, int64_t rows, int64_t n) {
  std::vector<double> acc(static_cast<size_t>(n), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < n; ++j) acc[j] += static_cast<double>(dy[r * n + j]);
  for (int64_t j = 0; j < n; ++j) dbias[j] = static_cast<T>(static_cast<double>(dbias[j]) + acc[j]);
}

#define RLCU_INSTANTIATE(T)                                                                                     \
  template void matmul_f64<T>(double*, const T*, const T*, int64_t, int64_t, int64_t, bool, bool);              \
  template void gemm_ref<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, bool, bool, double, double);     \
  template void bias_add_ref<T>(T*, const T*, int64_t, int64_t);                                               \
  template void bias_grad_ref<T>(T*, const T*, int64_t, int64_t);
RLCU_INSTANTIATE(float)
RLCU_INSTANTIATE(double)
#undef RLCU_INSTANTIATE

}  // namespace ref

void gemm(const Tensor& out, const Tensor& a, const Tensor& b, const ops::GemmParams& p, Context& ctx) {
  check::tensor("gemm", "out", out, DType::F32, 2);
  check::tensor("gemm", "a", a, DType::F32, 2);
  check::tensor("gemm", "b", b, DType::F32, 2);
  const int64_t M = out.shape[0], N = out.shape[1];
  const int64_t ak = p.trans_a ? a.shape[0] : a.shape[1];
  if (p.addend && p.addend->data != out.data && p.beta != 0.0f) {  // out = addend, then the usual beta * out
    check::tensor("gemm", "addend", *p.addend, DType::F32, 2);
    std::memcpy(out.data, p.addend->data, out.nbytes());
  }
  ref::gemm_ref<float>(out.ptr<float>(), a.ptr<float>(), b.ptr<float>(), M, N, ak, p.trans_a, p.trans_b, p.alpha,
                       p.beta);
}

void bias_add(const Tensor& out, const Tensor& bias, Context& ctx) {
  check::tensor("bias_add", "out", out, DType::F32);
  check::tensor("bias_add", "bias", bias, DType::F32);
  ref::bias_add_ref<float>(out.ptr<float>(), bias.ptr<float>(), out.rows(), out.cols());
}

void bias_grad(const Tensor& dbias, const Tensor& dy, Context& ctx) {
  check::tensor("bias_grad", "dy", dy, DType::F32);
  ref::bias_grad_ref<float>(dbias.ptr<float>(), dy.ptr<float>(), dy.rows(), dy.cols());
}

}  // namespace rlcu::cpu
