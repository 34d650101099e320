// Contract of the sampler of include/rlcu/ops.h (the kernels/op_table.inc row with CONTRACT = 1): the sampling
// parameters (sampling::check_sample_params, kernels/sample_common.h), logits F32 or BF16 [B, V] with V >= 1, tokens,
// seq_ids and positions I32 [B], logprobs F32 [B] when given. The backends keep what is theirs: the CPU twin
// (kernels/cpu/sample.cpp) takes 1-D vectors, the CUDA kernel (kernels/sample.cu) a vocabulary below INT_MAX.
#include "contract/contract.h"
#include "sample_common.h"

namespace rlcu::contract {

void sample(const Tensor& tokens, const Tensor& logprobs, const Tensor& logits, const Tensor& seq_ids,
            const Tensor& positions, const ops::SampleParams& p) {
  sampling::check_sample_params(p);
  RLCU_CHECK(!logits.empty() && logits.ndim == 2, "sample: logits has shape {}, expected [B, V]", logits.shape_str());
  RLCU_CHECK(logits.dtype == DType::F32 || logits.dtype == DType::BF16, "sample: logits is {}, expected f32 or bf16",
             dtype_name(logits.dtype));
  RLCU_CHECK(logits.size(1) >= 1, "sample: empty vocabulary (logits {})", logits.shape_str());
  const int64_t B = logits.size(0);
  RLCU_CHECK(tokens.dtype == DType::I32 && tokens.numel() == B, "sample: tokens {} {}, expected i32 [{}]",
             dtype_name(tokens.dtype), tokens.shape_str(), B);
  RLCU_CHECK(seq_ids.dtype == DType::I32 && seq_ids.numel() == B, "sample: seq_ids {} {}, expected i32 [{}]",
             dtype_name(seq_ids.dtype), seq_ids.shape_str(), B);
  RLCU_CHECK(positions.dtype == DType::I32 && positions.numel() == B, "sample: positions {} {}, expected i32 [{}]",
             dtype_name(positions.dtype), positions.shape_str(), B);
  if (!logprobs.empty())
    RLCU_CHECK(logprobs.dtype == DType::F32 && logprobs.numel() == B, "sample: logprobs {} {}, expected f32 [{}]",
               dtype_name(logprobs.dtype), logprobs.shape_str(), B);
}

}  // namespace rlcu::contract
