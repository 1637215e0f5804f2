// Schema and C++ API of the Multi-Similarity loss. The kernels live in cpu/ms_loss_kernel.cpp and
// cuda/ms_loss_kernel.cu; autograd and the fake (meta) kernels are registered from Python
// (recogfast/ops/ms_loss.py) so that torch.compile sees through the op.
#include "ops/ms_loss.h"

namespace recogfast {

std::tuple<Tensor, Tensor, Tensor, Tensor> ms_loss(
    const Tensor& embeddings, const Tensor& labels, const std::optional<Tensor>& ref_embeddings,
    const std::optional<Tensor>& ref_labels, double alpha, double beta, double base, double epsilon,
    std::string_view mining, bool cache_ref_grad, bool allow_tf32) {
  return as_tuple(call_op_n<4>("recogfast::ms_loss", "", embeddings, labels, ref_embeddings, ref_labels, alpha, beta, base, epsilon, std::string(mining), cache_ref_grad, allow_tf32));
}

std::tuple<Tensor, Tensor> ms_loss_backward(
    const Tensor& grad_loss, const Tensor& embeddings, const Tensor& labels,
    const std::optional<Tensor>& ref_embeddings, const std::optional<Tensor>& ref_labels,
    const Tensor& stats, const Tensor& hard_idx, const Tensor& ref_grad_cache, double alpha, double beta,
    double base, double epsilon, std::string_view mining, bool ref_requires_grad, bool allow_tf32) {
  return as_tuple(call_op_n<2>("recogfast::_ms_loss_backward", "", grad_loss, embeddings, labels, ref_embeddings, ref_labels, stats, hard_idx, ref_grad_cache, alpha,
                 beta, base, epsilon, std::string(mining), ref_requires_grad, allow_tf32));
}

STABLE_TORCH_LIBRARY_FRAGMENT(recogfast, m) {
  m.def(
      "ms_loss(Tensor embeddings, Tensor labels, Tensor? ref_embeddings, Tensor? ref_labels, float alpha, "
      "float beta, float base, float epsilon, str mining, bool cache_ref_grad=False, bool allow_tf32=False) "
      "-> (Tensor loss, Tensor stats, Tensor hard_idx, Tensor ref_grad_cache)");
  m.def(
      "_ms_loss_backward(Tensor grad_loss, Tensor embeddings, Tensor labels, Tensor? ref_embeddings, "
      "Tensor? ref_labels, Tensor stats, Tensor hard_idx, Tensor ref_grad_cache, float alpha, float beta, "
      "float base, float epsilon, "
      "str mining, bool ref_requires_grad, bool allow_tf32=False) -> (Tensor grad_embeddings, Tensor grad_ref_embeddings)");
}

}  // namespace recogfast
