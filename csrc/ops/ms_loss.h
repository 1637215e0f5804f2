// Multi-Similarity loss with hard-pair mining. See docs/SPEC.md "Loss" and recogfast/ops/ms_loss.py.
//
// Outputs of the forward op: the loss (0-dim, the embeddings' dtype), the per-anchor statistics
// stats [B, 4] in the accumulation dtype (float32, float64 for float64 input) with columns
//   0 log_z_pos = log(1 + sum_{p in P_i} exp(-alpha (S_ip - base)))
//   1 log_z_neg = log(1 + sum_{n in N_i} exp( beta (S_in - base)))
//   2 min_pos   = min over positives of S_ip (+inf without positives)
//   3 max_neg   = max over negatives of S_in (-inf without negatives)
// and hard_idx [B, 2] int64: the candidate index of the hardest positive and negative of each anchor
// for mining="hardest" (-1 where the anchor mines nothing; all -1 for the other modes), and
// ref_grad_cache: with cache_ref_grad on the CPU, for a reference set that needs no gradient and mining
// "ms"/"all", the reference set's share of dL/d(normalised anchors) for dL/dloss = B, [B, D] in the
// accumulation dtype, gathered from the forward pass's tiles so that the backward pass need not
// recompute the B x R tiles; otherwise empty ([0]).
// Candidates are the B rows of embeddings followed by the R rows of ref_embeddings.
// allow_tf32 (both ops): torch.backends.cuda.matmul.allow_tf32 as the Python wrapper read it (the stable ABI
// cannot read torch's flag): lets the CUDA kernel run fp32 embeddings on the flash path with TF32 products
// (csrc/ops/cuda/ms_loss_flash_host.cuh). The CPU kernel ignores it; the CUDA tiles path's aten::mm follows
// torch's flag itself.
#pragma once

#include <optional>
#include <string_view>
#include <tuple>

#include "ops/checks.h"

namespace recogfast {

enum class Mining : int { kMS = 0, kAll = 1, kHardest = 2 };

std::tuple<Tensor, Tensor, Tensor, Tensor> ms_loss(
    const Tensor& embeddings, const Tensor& labels, const std::optional<Tensor>& ref_embeddings,
    const std::optional<Tensor>& ref_labels, double alpha, double beta, double base, double epsilon,
    std::string_view mining, bool cache_ref_grad = false, bool allow_tf32 = false);

std::tuple<Tensor, Tensor> ms_loss_backward(
    const Tensor& grad_loss, const Tensor& embeddings, const Tensor& labels,
    const std::optional<Tensor>& ref_embeddings, const std::optional<Tensor>& ref_labels,
    const Tensor& stats, const Tensor& hard_idx, const Tensor& ref_grad_cache, double alpha, double beta,
    double base, double epsilon, std::string_view mining, bool ref_requires_grad, bool allow_tf32 = false);

namespace detail {

inline bool is_integer_dtype(ScalarType t) {
  return t == kLong || t == kInt || t == ScalarType::Short || t == ScalarType::Char || t == ScalarType::Byte ||
         t == ScalarType::UInt16 || t == ScalarType::UInt32 || t == ScalarType::UInt64;
}

// Validates the arguments of ms_loss (everything but the values of the embeddings, which the kernels
// check for NaN/inf while they normalise) and returns the mining mode.
inline Mining check_ms_loss_args(const Tensor& embeddings, const Tensor& labels,
                                 const std::optional<Tensor>& ref_embeddings,
                                 const std::optional<Tensor>& ref_labels, double alpha, double beta,
                                 double epsilon, std::string_view mining) {
  constexpr const char* op = "recogfast::ms_loss";
  RF_CHECK(embeddings.defined(), op, ": embeddings is undefined");
  RF_CHECK(embeddings.dim() == 2, op, ": embeddings must be a 2-D tensor [N, D], got a ", embeddings.dim(),
              "-D tensor of shape ", checks::shape_str(embeddings));
  RF_CHECK(is_floating(embeddings.scalar_type()), op,
              ": embeddings must be a floating-point tensor (float32, float64, float16 or bfloat16), got ",
              checks::dtype_str(embeddings.scalar_type()));
  RF_CHECK(labels.defined() && labels.dim() == 1 && is_integer_dtype(labels.scalar_type()), op,
              ": labels must be a 1-D integer tensor, got a ", labels.dim(), "-D tensor of dtype ",
              checks::dtype_str(labels.scalar_type()));
  if (ref_embeddings.has_value()) {
    const Tensor& r = *ref_embeddings;
    RF_CHECK(r.dim() == 2, op, ": ref_embeddings must be a 2-D tensor [N, D], got a ", r.dim(),
                "-D tensor of shape ", checks::shape_str(r));
    RF_CHECK(is_floating(r.scalar_type()), op,
                ": ref_embeddings must be a floating-point tensor (float32, float64, float16 or bfloat16), got ",
                checks::dtype_str(r.scalar_type()));
  }
  if (ref_labels.has_value()) {
    const Tensor& l = *ref_labels;
    RF_CHECK(l.dim() == 1 && is_integer_dtype(l.scalar_type()), op,
                ": ref_labels must be a 1-D integer tensor, got a ", l.dim(), "-D tensor of dtype ",
                checks::dtype_str(l.scalar_type()));
  }
  RF_CHECK(ref_embeddings.has_value() == ref_labels.has_value(), op,
              ": ref_embeddings and ref_labels must be given together");
  RF_CHECK(labels.size(0) == embeddings.size(0), op,
              ": labels must have one entry per row of embeddings: labels has ", labels.size(0), ", embeddings has ",
              embeddings.size(0), " rows");
  RF_CHECK(labels.device() == embeddings.device(), op, ": labels is on ", device_str(labels.device()),
              " but embeddings is on ", device_str(embeddings.device()), "; move all arguments to one device");
  if (ref_embeddings.has_value()) {
    const Tensor& r = *ref_embeddings;
    const Tensor& l = *ref_labels;
    RF_CHECK(r.size(1) == embeddings.size(1), op, ": ref_embeddings must have D = embeddings.size(1) = ",
                embeddings.size(1), " columns, got shape ", checks::shape_str(r));
    RF_CHECK(l.size(0) == r.size(0), op, ": ref_labels must have one entry per row of ref_embeddings: ref_labels has ",
                l.size(0), ", ref_embeddings has ", r.size(0), " rows");
    RF_CHECK(r.device() == embeddings.device(), op, ": ref_embeddings is on ", device_str(r.device()),
                " but embeddings is on ", device_str(embeddings.device()), "; move all arguments to one device");
    RF_CHECK(l.device() == embeddings.device(), op, ": ref_labels is on ", device_str(l.device()), " but embeddings is on ",
                device_str(embeddings.device()), "; move all arguments to one device");
    RF_CHECK(r.scalar_type() == embeddings.scalar_type(), op, ": ref_embeddings has dtype ",
                checks::dtype_str(r.scalar_type()), " but embeddings has dtype ",
                checks::dtype_str(embeddings.scalar_type()),
                "; cast the reference set to the embeddings' dtype");
  }
  RF_CHECK(alpha > 0, op, ": alpha must be > 0, got ", alpha);
  RF_CHECK(beta > 0, op, ": beta must be > 0, got ", beta);
  RF_CHECK(epsilon >= 0, op, ": epsilon must be >= 0, got ", epsilon);
  if (mining == "ms") return Mining::kMS;
  if (mining == "all") return Mining::kAll;
  if (mining == "hardest") return Mining::kHardest;
  RF_CHECK(false, op, ": mining must be one of 'ms', 'all', 'hardest', got '", std::string(mining), "'");
}

// Whether the forward op fills ref_grad_cache (only the CPU kernel does; see above).
inline bool ms_loss_caches_ref_grad(const Tensor& embeddings, const std::optional<Tensor>& ref_embeddings,
                                    Mining mining, bool cache_ref_grad) {
  return cache_ref_grad && embeddings.device().is_cpu() && ref_embeddings.has_value() &&
         ref_embeddings->size(0) > 0 && mining != Mining::kHardest;
}

// Extra checks of the backward op's saved tensors.
inline void check_ms_loss_backward_args(const Tensor& grad_loss, const Tensor& embeddings,
                                        const Tensor& stats, const Tensor& hard_idx,
                                        const Tensor& ref_grad_cache) {
  constexpr const char* op = "recogfast::_ms_loss_backward";
  const int64_t B = embeddings.size(0);
  RF_CHECK(grad_loss.numel() == 1, op, ": grad_loss must hold one value, got shape ", checks::shape_str(grad_loss));
  checks::shape(op, "stats", stats, {B, 4}, "[B, 4]");
  checks::shape(op, "hard_idx", hard_idx, {B, 2}, "[B, 2]");
  RF_CHECK(hard_idx.scalar_type() == kLong, op, ": hard_idx must be int64, got ",
              checks::dtype_str(hard_idx.scalar_type()));
  RF_CHECK(ref_grad_cache.numel() == 0 || ref_grad_cache.sizes() == embeddings.sizes(), op,
              ": ref_grad_cache must be empty or of the shape of embeddings, got ", checks::shape_str(ref_grad_cache));
  RF_CHECK(stats.device() == embeddings.device() && hard_idx.device() == embeddings.device() &&
                  grad_loss.device() == embeddings.device(),
              op, ": grad_loss, stats and hard_idx must be on the device of embeddings (", device_str(embeddings.device()), ")");
}

}  // namespace detail
}  // namespace recogfast
