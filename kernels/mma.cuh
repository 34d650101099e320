// Warp-level tensor-core and asynchronous-copy primitives (sm_80+ PTX), for the kernels that tile bf16 matrix
// products through shared memory (today the attention fast paths, kernels/attention_fwd_fast.cu and
// kernels/attention_bwd_fast.cu):
//   smem_addr                      generic -> shared-window address, the operand form of the PTX below
//   cp_async16 / cp_async4         global -> shared copies that bypass registers (zero-fill when !valid),
//   cp_async_commit / _wait<N>     grouped and awaited per stage (double buffering)
//   ldmatrix_x4 / ldmatrix_x4_trans  four 8x8 b16 matrices from shared memory into the mma fragment layout
//   mma_bf16                       d[16x8] += a[16x16] b[16x8], m16n8k16, bf16 inputs, fp32 accumulators
//   pack_bf16                      two floats -> one register of two bf16 (round to nearest even)
//   a_frag_addr / bt_frag_addr / b_frag_addr_trans   the lane's row address for each ldmatrix pattern
// Device-only, inlined into each kernel; no state.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace rlcu::cuda {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; zero-fills the destination when !valid (then nothing is read from src).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
  const int n = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// d[16x8] += a[16x16] (row-major fragment) * b[16x8] (column fragment), bf16 inputs, fp32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Addresses for the three ldmatrix patterns used below, for a tile stored row-major with `ld` elements per row.
// A operand (16 rows x 16 cols at (r0, c0)): registers a0..a3 of the m16n8k16 A fragment.
__device__ __forceinline__ const __nv_bfloat16* a_frag_addr(const __nv_bfloat16* tile, int ld, int r0, int c0,
                                                            int lane) {
  return tile + (r0 + (lane & 15)) * ld + c0 + (lane >> 4) * 8;
}
// B operand from a tile stored [n][k] (B^T row-major): covers n0..n0+15, k0..k0+15 and yields {b0,b1} for
// n-tile n0 and {b2,b3} for n-tile n0+8.
__device__ __forceinline__ const __nv_bfloat16* bt_frag_addr(const __nv_bfloat16* tile, int ld, int n0, int k0,
                                                             int lane) {
  return tile + (n0 + (lane & 7) + ((lane >> 4) << 3)) * ld + k0 + ((lane >> 3) & 1) * 8;
}
// B operand from a tile stored [k][n] (B row-major), read with ldmatrix.trans: same register order as above.
__device__ __forceinline__ const __nv_bfloat16* b_frag_addr_trans(const __nv_bfloat16* tile, int ld, int k0, int n0,
                                                                  int lane) {
  return tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8;
}

}  // namespace rlcu::cuda
