// rlcu_grad_dump: a test tool for scripts/parity_hf.py. For sequences {"ids": [...]} (--input) and per-token weights
// {"weights": [...]} (--weights, n-1 values per sequence) it computes logprob[t] = log p(ids[t+1] | ids[..t]) and
// the gradient of L = sum_t w_t * logprob_t for every parameter, and writes
//   --out-logprobs FILE.jsonl   {"logprobs": [...]} per sequence, in input order
//   --out-grads FILE.safetensors F32 gradients under their Hugging Face names.
// It runs the training forward/backward with the trainer's defaults (F32 residual stream, the head's saved softmax);
// --bf16-residual and --recompute-head select the other paths.
#include <fstream>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "rlcu/context.h"
#include "rlcu/error.h"
#include "rlcu/model.h"
#include "rlcu/safetensors.h"

using namespace rlcu;

namespace {
std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot open");
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"rlcu_grad_dump: log-probs and weighted-log-prob gradients for parity checks"};
  std::string model_dir, input, weights_path, device = "cuda", out_lp, out_grads;
  int64_t max_tokens = 4096;
  bool bf16_residual = false, recompute_head = false;
  app.add_option("--model", model_dir)->required();
  app.add_option("--input", input)->required();
  app.add_option("--weights", weights_path)->required();
  app.add_option("--device", device);
  app.add_option("--out-logprobs", out_lp)->required();
  app.add_option("--out-grads", out_grads)->required();
  app.add_option("--max-tokens", max_tokens);
  // The trainer's defaults (train.fp32_residual, train.save_head_probs) unless these are given.
  app.add_flag("--bf16-residual", bf16_residual);
  app.add_flag("--recompute-head", recompute_head);
  CLI11_PARSE(app, argc, argv);
  try {
    int idx = 0;
    const Device dev = parse_device(device, "--device", &idx);
    std::unique_ptr<Context> cctx;
    if (dev == Device::CUDA) cctx = Context::cuda(idx);
    Context& ctx = dev == Device::CUDA ? *cctx : Context::cpu();
    ModelOptions mo;
    mo.training = true;
    auto model = Model::load(model_dir, mo, ctx);
    const auto seqs = read_jsonl(input), ws = read_jsonl(weights_path);
    RLCU_CHECK(seqs.size() == ws.size(), "{} sequences but {} weight lines", seqs.size(), ws.size());
    int64_t longest = 1;
    for (const auto& s : seqs) longest = std::max<int64_t>(longest, static_cast<int64_t>(s["ids"].size()));
    TransformerOptions to;
    to.max_tokens = std::max(max_tokens, longest);
    to.act_dtype = default_act_dtype(dev);
    to.training = true;
    to.fp32_residual = !bf16_residual;
    to.save_head_probs = !recompute_head;
    Transformer tf(*model, to, ctx);
    OwnedTensor lp = OwnedTensor::make(DType::F32, dev, {to.max_tokens});
    OwnedTensor dlp = OwnedTensor::make(DType::F32, dev, {to.max_tokens});
    model->zero_grads(ctx);
    std::ofstream out(out_lp);
    // One sequence per micro-batch keeps the bookkeeping trivial; gradients accumulate across them.
    for (size_t i = 0; i < seqs.size(); ++i) {
      const std::vector<int32_t> ids = seqs[i]["ids"].get<std::vector<int32_t>>();
      const std::vector<float> w = ws[i]["weights"].get<std::vector<float>>();
      RLCU_CHECK(w.size() + 1 == ids.size() || (ids.size() <= 1 && w.empty()), "sequence {}: {} ids, {} weights", i,
                 ids.size(), w.size());
      PackedBatch pb;
      pb.add_sequence(ids);
      const int64_t T = pb.num_tokens();
      DeviceBatch db = tf.upload(pb, ctx);
      std::vector<float> dl(T, 0.0f);
      std::copy(w.begin(), w.end(), dl.begin());
      from_host_f32(dlp.t.slice_rows(0, T), dl);
      tf.forward(lp.t.slice_rows(0, T), Tensor(), db, ctx);
      tf.backward(dlp.t.slice_rows(0, T), Tensor(), ctx);
      std::vector<float> got = to_host_f32(lp.t.slice_rows(0, T));
      got.resize(T - 1);
      out << nlohmann::json({{"logprobs", got}}).dump() << "\n";
    }
    ctx.synchronize("grad dump");
    std::vector<SafetensorsWriteItem> items;
    for (const HfTensor& h : model->hf_tensors()) items.push_back({h.name, h.grad, DType::F32, h.shape});
    write_safetensors(out_grads, items, {});
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rlcu_grad_dump: error: %s\n", e.what());
    return 1;
  }
}
