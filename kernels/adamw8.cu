// 8-bit AdamW on CUDA (ops::adamw8_update): one thread block of kBlock = 256 threads per quantisation block (grid-
// stride over blocks), one element per thread. Each thread dequantises its two moment codes with the block's stored
// absmax, updates m, v and the F32 master in fp32 (adamw8::update_one, shared with kernels/cpu/adamw8.cpp), writes
// the master and the working weights; a block max of |m| and v gives the new absmax scales, and each thread
// requantises its element. The code tables come from the host (adamw8::tables(), 2 KiB kernel argument) and are
// copied to shared memory. Same bits as the CPU twin. master, codes and absmax are updated in place; grad is read
// only. Shapes, dtypes and the step are checked before the call (kernels/contract/optimizer.cpp).
#include "adamw8_common.h"
#include "cuda_common.cuh"
#include "backends.h"

namespace rlcu::cuda {

namespace {

template <class W>
__global__ void __launch_bounds__(adamw8::kBlock)
    adamw8_kernel(float* __restrict__ master, uint8_t* __restrict__ mc, float* __restrict__ ma,
                  uint8_t* __restrict__ vc, float* __restrict__ va, W* __restrict__ weights,
                  const float* __restrict__ grad, int64_t n, int64_t nb, const adamw8::Tables tables,
                  const adamw8::Consts c) {
  __shared__ float sgn[adamw8::kCodes], uns[adamw8::kCodes];
  __shared__ float red[32];
  sgn[threadIdx.x] = tables.sgn[threadIdx.x];
  uns[threadIdx.x] = tables.uns[threadIdx.x];
  __syncthreads();
  for (int64_t b = blockIdx.x; b < nb; b += gridDim.x) {
    const int64_t i = b * adamw8::kBlock + threadIdx.x;
    const bool live = i < n;
    float m = 0.0f, v = 0.0f;
    if (live) {
      m = adamw8::dequantise(sgn, mc[i], ma[b]);
      v = adamw8::dequantise(uns, vc[i], va[b]);
      float w = master[i];
      const float nw = adamw8::update_one(w, m, v, grad[i], c);
      master[i] = w;
      if (weights) {
        if constexpr (sizeof(W) == 2) weights[i] = __ushort_as_bfloat16(adamw8::bf16_bits(nw));
        else weights[i] = nw;
      }
    }
    const float mmax = fmaxf(block_max(live ? fabsf(m) : 0.0f, red), 0.0f);
    __syncthreads();  // red is reused
    const float vmax = fmaxf(block_max(live ? v : 0.0f, red), 0.0f);
    __syncthreads();
    if (live) {
      mc[i] = adamw8::quantise_scaled(sgn, m, mmax, adamw8::kSignedZero);
      vc[i] = adamw8::quantise_scaled(uns, v, vmax, adamw8::kUnsignedZero);
    }
    if (threadIdx.x == 0) {  // every thread has read ma[b], va[b] before the block max
      ma[b] = mmax;
      va[b] = vmax;
    }
  }
}

}  // namespace

void adamw8_update(const Tensor& master, const Tensor& m_codes, const Tensor& m_absmax, const Tensor& v_codes,
                   const Tensor& v_absmax, const Tensor& weights, const Tensor& grad, const ops::AdamWParams& p,
                   Context& ctx) {
  const int64_t n = master.numel();
  const int64_t nb = adamw8::num_blocks(n);
  if (n == 0) return;
  const adamw8::Consts c = adamw8::make_consts(p);
  cudaStream_t s = stream_of(ctx);
  const unsigned grid = grid_for(nb, 1, int64_t(1) << 20);
  auto run = [&](auto tag) {
    using W = decltype(tag);
    W* w = weights.empty() ? nullptr : weights.ptr<W>();
    adamw8_kernel<W><<<grid, adamw8::kBlock, 0, s>>>(master.ptr<float>(), m_codes.ptr<uint8_t>(),
                                                     m_absmax.ptr<float>(), v_codes.ptr<uint8_t>(),
                                                     v_absmax.ptr<float>(), w, grad.ptr<float>(), n, nb,
                                                     adamw8::tables(), c);
  };
  if (!weights.empty() && weights.dtype == DType::F32) run(float{});
  else run(bf16{});
  RLCU_LAUNCH_CHECK(s);
}

}  // namespace rlcu::cuda
