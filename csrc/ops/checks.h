// Argument checks shared by every op's CPU and CUDA launchers. Each message names the op and the
// argument so that a user can fix the call without reading the kernel.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <sstream>
#include <initializer_list>
#include <string>
#include <vector>

namespace recogfast {
namespace checks {

inline std::string shape_str(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

// A dtype as Python writes it ("torch.float64"), so that the C++ checks and the Python ones
// (recogfast/ops/_spec.py) give the same message.
inline std::string dtype_str(at::ScalarType t) { return std::string("torch.") + std::string(c10::getDtypeNames(t).first); }

// `t` is a floating-point tensor with `ndim` dimensions.
inline void float_tensor(const char* op, const char* name, const at::Tensor& t, int64_t ndim) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.dim() == ndim, op, ": ", name, " must be a ", ndim, "-D tensor, got a ", t.dim(),
              "-D tensor of shape ", shape_str(t));
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be a floating-point tensor (float32, float64, float16 or bfloat16), got ",
              dtype_str(t.scalar_type()));
}

// `t` has exactly the sizes `expected` (written as `what`, e.g. "[R, C]").
inline void shape(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef expected,
                  const char* what) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", what, " = ", expected,
              ", got ", shape_str(t));
}

// `t` lives on the same device and has the same dtype as the reference tensor `ref` (named `ref_name`).
inline void like(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                 const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name,
              " is on ", ref.device(), "; move all arguments to one device");
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", dtype_str(t.scalar_type()),
              " but ", ref_name, " has dtype ", dtype_str(ref.scalar_type()), "; cast the weights to the input dtype");
}

// The contract of a gate op (SE, CUBS): an activation x [B, C, H, W] and weights, checked in the order
// recogfast/ops/_spec.py checks them -- every argument's rank and dtype kind (gate_ranks), then the hidden
// width, then the weights' shapes, then their device and dtype against x (gate_shapes) -- so that both
// report the same first error.
struct Rank {
  const char* name;
  const at::Tensor& t;
  int64_t ndim;
};

// Checks x (4-D) and every weight's rank and kind; returns the hidden width, the rows of `hidden` (which
// must be >= 1; its letter, e.g. "R", goes into the message), or 0 when hidden is nullptr.
inline int64_t gate_ranks(const char* op, const at::Tensor& x, std::initializer_list<Rank> weights,
                          const at::Tensor* hidden = nullptr, const char* hidden_name = nullptr,
                          const char* hidden_letter = nullptr) {
  float_tensor(op, "x", x, 4);
  for (const Rank& w : weights) float_tensor(op, w.name, w.t, w.ndim);
  if (hidden == nullptr) return 0;
  const int64_t width = hidden->size(0);
  TORCH_CHECK(width >= 1, op, ": ", hidden_name, " must have at least one row (", hidden_letter, " >= 1), got shape ",
              shape_str(*hidden));
  return width;
}

struct Shape {
  const char* name;
  const at::Tensor& t;
  std::vector<int64_t> sizes;
  const char* what;  // the shape as the message writes it, e.g. "[R, C] with C = x.size(1)"
};

inline void gate_shapes(const char* op, const at::Tensor& x, std::initializer_list<Shape> weights) {
  for (const Shape& w : weights) shape(op, w.name, w.t, w.sizes, w.what);
  for (const Shape& w : weights) like(op, w.name, w.t, "x", x);
}

// The memory layout a kernel reads a 4-D activation in: NHWC only when the tensor is channels_last
// and not also plain contiguous (for C == 1 or H == W == 1 both hold and NCHW indexing is right).
inline bool use_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::MemoryFormat layout_of(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// An activation (and, in a backward, its upstream gradient, checked against it) in the one layout
// the kernels index: NHWC for channels_last input, else NCHW.
struct Activation {
  at::Tensor x, grad_y;  // grad_y undefined in a forward
  bool channels_last;
};

inline Activation activation(const char* op, const at::Tensor& x, const at::Tensor& grad_y = at::Tensor()) {
  if (grad_y.defined()) {
    shape(op, "grad_y", grad_y, x.sizes(), "x.shape");
    like(op, "grad_y", grad_y, "x", x);
  }
  const bool cl = use_channels_last(x);
  return {x.contiguous(layout_of(cl)), grad_y.defined() ? grad_y.contiguous(layout_of(cl)) : at::Tensor(), cl};
}

// Gradients shaped like `params`, zero-filled when the batch is empty (a sum over no samples) so that
// kernels can return early.
inline std::vector<at::Tensor> param_grads(std::initializer_list<at::Tensor> params, bool empty_batch) {
  std::vector<at::Tensor> grads;
  for (const at::Tensor& p : params) {
    grads.push_back(at::empty_like(p, at::MemoryFormat::Contiguous));
    if (empty_batch) grads.back().zero_();
  }
  return grads;
}

}  // namespace checks
}  // namespace recogfast
