// Contracts of the fused log-prob head of include/rlcu/ops.h (kernels/op_table.inc rows with CONTRACT = 1):
// hidden [T, H] and weight [V, H] of one dtype (BF16 or F32) and a non-empty vocabulary, targets I32 [T], the F32
// [T] vectors, dhidden [T, H] (F32 or BF16) and dweight F32 [V, H], a positive finite inv_temperature and the saved
// softmax (probs [T, V] of hidden's dtype with prob_stats F32 [T, logprob_prob_stats_cols(V)], both or neither).
// The backends keep what is theirs: the CPU twin (kernels/cpu/logprob.cpp) takes 2-D F32, the CUDA kernels
// (kernels/logprob.cu) their chunking.
#include <cmath>

#include "contract/contract.h"

namespace rlcu::contract {

namespace {

struct Head {
  int64_t tokens, hidden, vocab;
};

Head check_head(const Tensor& hidden, const Tensor& weight, const Tensor& targets, const ops::LogprobParams& p,
                const char* op) {
  RLCU_CHECK(weight.ndim == 2, "{}: weight must be [V, H], got {}", op, weight.shape_str());
  const Head s{lead_rows(hidden), hidden.cols(), weight.size(0)};
  RLCU_CHECK(weight.size(1) == s.hidden, "{}: hidden {} and weight {} disagree on H", op, hidden.shape_str(),
             weight.shape_str());
  RLCU_CHECK(hidden.dtype == weight.dtype && (hidden.dtype == DType::BF16 || hidden.dtype == DType::F32),
             "{}: hidden ({}) and weight ({}) must both be bf16 or both f32", op, dtype_name(hidden.dtype),
             dtype_name(weight.dtype));
  RLCU_CHECK(targets.dtype == DType::I32 && targets.numel() == s.tokens, "{}: targets must be i32 [{}], got {} {}", op,
             s.tokens, dtype_name(targets.dtype), targets.shape_str());
  RLCU_CHECK(s.vocab > 0 && s.hidden > 0, "{}: empty weight {}", op, weight.shape_str());
  RLCU_CHECK(std::isfinite(p.inv_temperature) && p.inv_temperature > 0.0f, "{}: inv_temperature {} must be positive",
             op, p.inv_temperature);
  return s;
}

void check_vec(const Tensor& t, int64_t n, const char* op, const char* name) {
  RLCU_CHECK(t.dtype == DType::F32 && t.numel() == n, "{}: {} must be f32 [{}], got {} {}", op, name, n,
             dtype_name(t.dtype), t.shape_str());
}

void check_saved_softmax(const ops::LogprobParams& p, const Head& sh, DType dt, const char* op) {
  RLCU_CHECK((p.probs == nullptr) == (p.prob_stats == nullptr), "{}: probs and prob_stats go together", op);
  if (!p.probs) return;
  const Tensor& pr = *p.probs;
  const Tensor& st = *p.prob_stats;
  RLCU_CHECK(pr.dtype == dt && lead_rows(pr) == sh.tokens && pr.cols() == sh.vocab,
             "{}: probs must be {} [{}, {}], got {} {}", op, dtype_name(dt), sh.tokens, sh.vocab, dtype_name(pr.dtype),
             pr.shape_str());
  const int64_t cols = ops::logprob_prob_stats_cols(sh.vocab);
  RLCU_CHECK(st.dtype == DType::F32 && lead_rows(st) == sh.tokens && st.cols() == cols,
             "{}: prob_stats must be f32 [{}, {}], got {} {}", op, sh.tokens, cols, dtype_name(st.dtype),
             st.shape_str());
}

}  // namespace

void logprob_fwd(const Tensor& logprob, const Tensor& entropy, const Tensor& lse, const Tensor& hidden,
                 const Tensor& weight, const Tensor& targets, const ops::LogprobParams& p) {
  const char* op = "logprob_fwd";
  const Head sh = check_head(hidden, weight, targets, p, op);
  check_vec(logprob, sh.tokens, op, "logprob");
  check_vec(lse, sh.tokens, op, "lse");
  if (!entropy.empty()) check_vec(entropy, sh.tokens, op, "entropy");
  check_saved_softmax(p, sh, hidden.dtype, op);
}

void logprob_bwd(const Tensor& dhidden, const Tensor& dweight, const Tensor& dlogprob, const Tensor& dentropy,
                 const Tensor& hidden, const Tensor& weight, const Tensor& targets, const Tensor& lse,
                 const ops::LogprobParams& p) {
  const char* op = "logprob_bwd";
  const Head sh = check_head(hidden, weight, targets, p, op);
  check_vec(dlogprob, sh.tokens, op, "dlogprob");
  check_vec(lse, sh.tokens, op, "lse");
  if (!dentropy.empty()) check_vec(dentropy, sh.tokens, op, "dentropy");
  RLCU_CHECK(lead_rows(dhidden) == sh.tokens && dhidden.cols() == sh.hidden &&
                 (dhidden.dtype == DType::F32 || dhidden.dtype == DType::BF16),
             "logprob_bwd: dhidden must be f32 or bf16 [{}, {}], got {} {}", sh.tokens, sh.hidden,
             dtype_name(dhidden.dtype), dhidden.shape_str());
  RLCU_CHECK(dweight.empty() ||
                 (dweight.dtype == DType::F32 && lead_rows(dweight) == sh.vocab && dweight.cols() == sh.hidden),
             "logprob_bwd: dweight must be empty or f32 [{}, {}], got {} {}", sh.vocab, sh.hidden, dtype_name(dweight.dtype),
             dweight.shape_str());
  check_saved_softmax(p, sh, hidden.dtype, op);
}

}  // namespace rlcu::contract
