// Dispatch of include/rlcu/ops.h to the CPU or CUDA implementation by the device of the first tensor.
#include "rlcu/ops.h"

#include "cuda_backend.h"
#include "rlcu/profile.h"

#include "cpu/ops_cpu.h"
#include "ops_cuda.h"

namespace rlcu::ops {

namespace {
void check_same_device(const char* op, Device d, std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    RLCU_CHECK(t->empty() || t->device == d, "{}: tensors on different devices ({} vs {})", op, device_name(t->device),
               device_name(d));
}
}  // namespace

void gemm(const Tensor& out, const Tensor& a, const Tensor& b, const GemmParams& p, Context& ctx) {
  check_same_device("gemm", out.device, {&out, &a, &b});
  if (out.device == Device::CPU) {
    cpu::gemm(out, a, b, p, ctx);
    return;
  }
  ProfileScope prof_(profiler_enabled() ? fmt::format("gemm {}x{}x{}{}{} -> {}", out.size(0), out.size(1),
                                                      p.trans_a ? a.size(0) : a.size(1), p.trans_a ? " Ta" : "",
                                                      p.trans_b ? " Tb" : "", dtype_name(out.dtype))
                                       : std::string(),
                      ctx);
  RLCU_CUDA_BACKEND(cuda::gemm(out, a, b, p, ctx));
}

void bias_add(const Tensor& out, const Tensor& bias, Context& ctx) {
  check_same_device("bias_add", out.device, {&out, &bias});
  if (out.device == Device::CPU) {
    cpu::bias_add(out, bias, ctx);
    return;
  }
  ProfileScope prof_("bias_add", ctx);
  RLCU_CUDA_BACKEND(cuda::bias_add(out, bias, ctx));
}

void bias_grad(const Tensor& dbias, const Tensor& dy, Context& ctx) {
  check_same_device("bias_grad", dbias.device, {&dbias, &dy});
  if (dbias.device == Device::CPU) {
    cpu::bias_grad(dbias, dy, ctx);
    return;
  }
  ProfileScope prof_("bias_grad", ctx);
  RLCU_CUDA_BACKEND(cuda::bias_grad(dbias, dy, ctx));
}

void embedding_fwd(const Tensor& out, const Tensor& table, const Tensor& ids, Context& ctx) {
  check_same_device("embedding_fwd", out.device, {&out, &table, &ids});
  if (out.device == Device::CPU) {
    cpu::embedding_fwd(out, table, ids, ctx);
    return;
  }
  ProfileScope prof_("embedding_fwd", ctx);
  RLCU_CUDA_BACKEND(cuda::embedding_fwd(out, table, ids, ctx));
}

void embedding_bwd(const Tensor& dtable, const Tensor& dout, const Tensor& ids, Context& ctx) {
  check_same_device("embedding_bwd", dtable.device, {&dtable, &dout, &ids});
  if (dtable.device == Device::CPU) {
    cpu::embedding_bwd(dtable, dout, ids, ctx);
    return;
  }
  ProfileScope prof_("embedding_bwd", ctx);
  RLCU_CUDA_BACKEND(cuda::embedding_bwd(dtable, dout, ids, ctx));
}

void rmsnorm_fwd(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight, float eps, Context& ctx) {
  check_same_device("rmsnorm_fwd", out.device, {&out, &rstd, &x, &weight});
  if (out.device == Device::CPU) {
    cpu::rmsnorm_fwd(out, rstd, x, weight, eps, ctx);
    return;
  }
  ProfileScope prof_("rmsnorm_fwd", ctx);
  RLCU_CUDA_BACKEND(cuda::rmsnorm_fwd(out, rstd, x, weight, eps, ctx));
}

void rmsnorm_bwd(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x, const Tensor& weight, const Tensor& rstd, Context& ctx) {
  check_same_device("rmsnorm_bwd", dx.device, {&dx, &dweight, &dout, &x, &weight, &rstd});
  if (dx.device == Device::CPU) {
    cpu::rmsnorm_bwd(dx, dweight, dout, x, weight, rstd, ctx);
    return;
  }
  ProfileScope prof_("rmsnorm_bwd", ctx);
  RLCU_CUDA_BACKEND(cuda::rmsnorm_bwd(dx, dweight, dout, x, weight, rstd, ctx));
}

void rmsnorm_bwd_add(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x, const Tensor& weight, const Tensor& rstd, Context& ctx) {
  check_same_device("rmsnorm_bwd_add", dx.device, {&dx, &dweight, &dout, &x, &weight, &rstd});
  if (dx.device == Device::CPU) {
    cpu::rmsnorm_bwd_add(dx, dweight, dout, x, weight, rstd, ctx);
    return;
  }
  ProfileScope prof_("rmsnorm_bwd", ctx);
  RLCU_CUDA_BACKEND(cuda::rmsnorm_bwd_add(dx, dweight, dout, x, weight, rstd, ctx));
}

void rope_fwd(const Tensor& out, const Tensor& x, const Tensor& positions, const Tensor& inv_freq, Context& ctx) {
  check_same_device("rope_fwd", out.device, {&out, &x, &positions, &inv_freq});
  if (out.device == Device::CPU) {
    cpu::rope_fwd(out, x, positions, inv_freq, ctx);
    return;
  }
  ProfileScope prof_("rope_fwd", ctx);
  RLCU_CUDA_BACKEND(cuda::rope_fwd(out, x, positions, inv_freq, ctx));
}

void rope_bwd(const Tensor& dx, const Tensor& dout, const Tensor& positions, const Tensor& inv_freq, Context& ctx) {
  check_same_device("rope_bwd", dx.device, {&dx, &dout, &positions, &inv_freq});
  if (dx.device == Device::CPU) {
    cpu::rope_bwd(dx, dout, positions, inv_freq, ctx);
    return;
  }
  ProfileScope prof_("rope_bwd", ctx);
  RLCU_CUDA_BACKEND(cuda::rope_bwd(dx, dout, positions, inv_freq, ctx));
}

void attention_fwd(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens, const AttentionParams& p, Context& ctx) {
  check_same_device("attention_fwd", out.device, {&out, &lse, &q, &k, &v, &cu_seqlens});
  if (out.device == Device::CPU) {
    cpu::attention_fwd(out, lse, q, k, v, cu_seqlens, p, ctx);
    return;
  }
  ProfileScope prof_("attention_fwd", ctx);
  RLCU_CUDA_BACKEND(cuda::attention_fwd(out, lse, q, k, v, cu_seqlens, p, ctx));
}

void attention_bwd(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, const Tensor& cu_seqlens, const AttentionParams& p, Context& ctx) {
  check_same_device("attention_bwd", dq.device, {&dq, &dk, &dv, &dout, &q, &k, &v, &out, &lse, &cu_seqlens});
  if (dq.device == Device::CPU) {
    cpu::attention_bwd(dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, p, ctx);
    return;
  }
  ProfileScope prof_("attention_bwd", ctx);
  RLCU_CUDA_BACKEND(cuda::attention_bwd(dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, p, ctx));
}

void kv_cache_write(const Tensor& k_cache, const Tensor& v_cache, const Tensor& k, const Tensor& v,
                    const Tensor& slots, Context& ctx) {
  check_same_device("kv_cache_write", k_cache.device, {&k_cache, &v_cache, &k, &v, &slots});
  if (k_cache.device == Device::CPU) {
    cpu::kv_cache_write(k_cache, v_cache, k, v, slots, ctx);
    return;
  }
  ProfileScope prof_("kv_cache_write", ctx);
  RLCU_CUDA_BACKEND(cuda::kv_cache_write(k_cache, v_cache, k, v, slots, ctx));
}

void qkv_prepare(const Tensor& q_out, const Tensor& k_out, const Tensor& v_out, const Tensor& k_cache,
                 const Tensor& v_cache, const Tensor& qkv, const Tensor& bias, const Tensor& q_norm,
                 const Tensor& k_norm, float eps, const Tensor& positions, const Tensor& inv_freq,
                 const Tensor& slots, Context& ctx) {
  check_same_device("qkv_prepare", q_out.device,
                    {&q_out, &k_out, &v_out, &k_cache, &v_cache, &qkv, &bias, &q_norm, &k_norm, &positions,
                     &inv_freq, &slots});
  if (q_out.device == Device::CPU) {
    cpu::qkv_prepare(q_out, k_out, v_out, k_cache, v_cache, qkv, bias, q_norm, k_norm, eps, positions, inv_freq,
                     slots, ctx);
    return;
  }
  ProfileScope prof_("qkv_prepare", ctx);
  RLCU_CUDA_BACKEND(cuda::qkv_prepare(q_out, k_out, v_out, k_cache, v_cache, qkv, bias, q_norm, k_norm, eps, positions, inv_freq,
                    slots, ctx));
}

void qkv_prepare_bwd(const Tensor& dqkv, const Tensor& dq_norm, const Tensor& dk_norm, const Tensor& dq,
                     const Tensor& dk, const Tensor& dv, const Tensor& qkv, const Tensor& bias, const Tensor& q_norm,
                     const Tensor& k_norm, float eps, const Tensor& positions, const Tensor& inv_freq, Context& ctx) {
  check_same_device("qkv_prepare_bwd", dqkv.device,
                    {&dqkv, &dq_norm, &dk_norm, &dq, &dk, &dv, &qkv, &bias, &q_norm, &k_norm, &positions, &inv_freq});
  if (dqkv.device == Device::CPU) {
    cpu::qkv_prepare_bwd(dqkv, dq_norm, dk_norm, dq, dk, dv, qkv, bias, q_norm, k_norm, eps, positions, inv_freq,
                         ctx);
    return;
  }
  ProfileScope prof_("qkv_prepare_bwd", ctx);
  RLCU_CUDA_BACKEND(cuda::qkv_prepare_bwd(dqkv, dq_norm, dk_norm, dq, dk, dv, qkv, bias, q_norm, k_norm, eps, positions, inv_freq,
                        ctx));
}

void kv_block_copy(const Tensor& cache, const Tensor& copies, Context& ctx) {
  check_same_device("kv_block_copy", cache.device, {&cache, &copies});
  if (cache.device == Device::CPU) {
    cpu::kv_block_copy(cache, copies, ctx);
    return;
  }
  ProfileScope prof_("kv_block_copy", ctx);
  RLCU_CUDA_BACKEND(cuda::kv_block_copy(cache, copies, ctx));
}

void paged_attention_decode(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            const Tensor& block_tables, const Tensor& context_lens, const Tensor& workspace,
                            const PagedAttentionParams& p, Context& ctx) {
  check_same_device("paged_attention_decode", out.device,
                    {&out, &q, &k_cache, &v_cache, &block_tables, &context_lens, &workspace});
  if (out.device == Device::CPU) {
    cpu::paged_attention_decode(out, q, k_cache, v_cache, block_tables, context_lens, workspace, p, ctx);
    return;
  }
  ProfileScope prof_("paged_attention_decode", ctx);
  RLCU_CUDA_BACKEND(cuda::paged_attention_decode(out, q, k_cache, v_cache, block_tables, context_lens, workspace, p, ctx));
}

void swiglu_fwd(const Tensor& out, const Tensor& gate_up, Context& ctx) {
  check_same_device("swiglu_fwd", out.device, {&out, &gate_up});
  if (out.device == Device::CPU) {
    cpu::swiglu_fwd(out, gate_up, ctx);
    return;
  }
  ProfileScope prof_("swiglu_fwd", ctx);
  RLCU_CUDA_BACKEND(cuda::swiglu_fwd(out, gate_up, ctx));
}

void swiglu_bwd(const Tensor& dgate_up, const Tensor& dout, const Tensor& gate_up, Context& ctx) {
  check_same_device("swiglu_bwd", dgate_up.device, {&dgate_up, &dout, &gate_up});
  if (dgate_up.device == Device::CPU) {
    cpu::swiglu_bwd(dgate_up, dout, gate_up, ctx);
    return;
  }
  ProfileScope prof_("swiglu_bwd", ctx);
  RLCU_CUDA_BACKEND(cuda::swiglu_bwd(dgate_up, dout, gate_up, ctx));
}

void add(const Tensor& out, const Tensor& a, const Tensor& b, Context& ctx) {
  check_same_device("add", out.device, {&out, &a, &b});
  if (out.device == Device::CPU) {
    cpu::add(out, a, b, ctx);
    return;
  }
  ProfileScope prof_("add", ctx);
  RLCU_CUDA_BACKEND(cuda::add(out, a, b, ctx));
}

void scale(const Tensor& out, const Tensor& x, float s, Context& ctx) {
  check_same_device("scale", out.device, {&out, &x});
  if (out.device == Device::CPU) {
    cpu::scale(out, x, s, ctx);
    return;
  }
  ProfileScope prof_("scale", ctx);
  RLCU_CUDA_BACKEND(cuda::scale(out, x, s, ctx));
}

void cast(const Tensor& out, const Tensor& x, Context& ctx) {
  check_same_device("cast", out.device, {&out, &x});
  if (out.device == Device::CPU) {
    cpu::cast(out, x, ctx);
    return;
  }
  ProfileScope prof_("cast", ctx);
  RLCU_CUDA_BACKEND(cuda::cast(out, x, ctx));
}

void fill(const Tensor& out, float value, Context& ctx) {
  check_same_device("fill", out.device, {&out});
  if (out.device == Device::CPU) {
    cpu::fill(out, value, ctx);
    return;
  }
  ProfileScope prof_("fill", ctx);
  RLCU_CUDA_BACKEND(cuda::fill(out, value, ctx));
}

void logprob_fwd(const Tensor& logprob, const Tensor& entropy, const Tensor& lse, const Tensor& hidden, const Tensor& weight, const Tensor& targets, const LogprobParams& p, Context& ctx) {
  check_same_device("logprob_fwd", logprob.device, {&logprob, &entropy, &lse, &hidden, &weight, &targets});
  if (logprob.device == Device::CPU) {
    cpu::logprob_fwd(logprob, entropy, lse, hidden, weight, targets, p, ctx);
    return;
  }
  ProfileScope prof_("logprob_fwd", ctx);
  RLCU_CUDA_BACKEND(cuda::logprob_fwd(logprob, entropy, lse, hidden, weight, targets, p, ctx));
}

void logprob_bwd(const Tensor& dhidden, const Tensor& dweight, const Tensor& dlogprob, const Tensor& dentropy, const Tensor& hidden, const Tensor& weight, const Tensor& targets, const Tensor& lse, const LogprobParams& p, Context& ctx) {
  check_same_device("logprob_bwd", dhidden.device, {&dhidden, &dweight, &dlogprob, &dentropy, &hidden, &weight, &targets, &lse});
  if (dhidden.device == Device::CPU) {
    cpu::logprob_bwd(dhidden, dweight, dlogprob, dentropy, hidden, weight, targets, lse, p, ctx);
    return;
  }
  ProfileScope prof_("logprob_bwd", ctx);
  RLCU_CUDA_BACKEND(cuda::logprob_bwd(dhidden, dweight, dlogprob, dentropy, hidden, weight, targets, lse, p, ctx));
}

void sum_squares(const Tensor& out, const Tensor& x, Context& ctx) {
  check_same_device("sum_squares", out.device, {&out, &x});
  if (out.device == Device::CPU) {
    cpu::sum_squares(out, x, ctx);
    return;
  }
  ProfileScope prof_("sum_squares", ctx);
  RLCU_CUDA_BACKEND(cuda::sum_squares(out, x, ctx));
}

void adamw_update(const Tensor& master, const Tensor& m, const Tensor& v, const Tensor& weights, const Tensor& grad, const AdamWParams& p, Context& ctx) {
  check_same_device("adamw_update", master.device, {&master, &m, &v, &weights, &grad});
  if (master.device == Device::CPU) {
    cpu::adamw_update(master, m, v, weights, grad, p, ctx);
    return;
  }
  ProfileScope prof_("adamw_update", ctx);
  RLCU_CUDA_BACKEND(cuda::adamw_update(master, m, v, weights, grad, p, ctx));
}

void adamw8_update(const Tensor& master, const Tensor& m_codes, const Tensor& m_absmax, const Tensor& v_codes,
                   const Tensor& v_absmax, const Tensor& weights, const Tensor& grad, const AdamWParams& p,
                   Context& ctx) {
  check_same_device("adamw8_update", master.device,
                    {&master, &m_codes, &m_absmax, &v_codes, &v_absmax, &weights, &grad});
  if (master.device == Device::CPU) {
    cpu::adamw8_update(master, m_codes, m_absmax, v_codes, v_absmax, weights, grad, p, ctx);
    return;
  }
  ProfileScope prof_("adamw8_update", ctx);
  RLCU_CUDA_BACKEND(cuda::adamw8_update(master, m_codes, m_absmax, v_codes, v_absmax, weights, grad, p, ctx));
}

void sample(const Tensor& tokens, const Tensor& logprobs, const Tensor& logits, const Tensor& seq_ids,
            const Tensor& positions, const SampleParams& p, Context& ctx) {
  check_same_device("sample", tokens.device, {&tokens, &logprobs, &logits, &seq_ids, &positions});
  if (tokens.device == Device::CPU) {
    cpu::sample(tokens, logprobs, logits, seq_ids, positions, p, ctx);
    return;
  }
  ProfileScope prof_("sample", ctx);
  RLCU_CUDA_BACKEND(cuda::sample(tokens, logprobs, logits, seq_ids, positions, p, ctx));
}

}  // namespace rlcu::ops
