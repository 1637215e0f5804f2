// Argument checks shared by every op's CPU and CUDA launchers. Each message names the op and the
// argument so that a user can fix the call without reading the kernel.
#pragma once

#include <initializer_list>
#include <string>
#include <vector>

#include "ops/stable.h"

namespace recogfast {
namespace checks {

inline std::string shape_str(const Tensor& t) { return sizes_str(t.sizes()); }
using ::recogfast::dtype_str;

// dtypes and devices are written as Python writes them (stable.h: dtype_str, device_str), so that the C++
// checks and the Python ones (recogfast/ops/_spec.py) give the same message.

// `t` is a floating-point tensor with `ndim` dimensions.
inline void float_tensor(const char* op, const char* name, const Tensor& t, int64_t ndim) {
  RF_CHECK(t.defined(), op, ": ", name, " is undefined");
  RF_CHECK(t.dim() == ndim, op, ": ", name, " must be a ", ndim, "-D tensor, got a ", t.dim(),
              "-D tensor of shape ", shape_str(t));
  RF_CHECK(is_floating(dtype_of(t)), op, ": ", name,
              " must be a floating-point tensor (float32, float64, float16 or bfloat16), got ",
              dtype_str(dtype_of(t)));
}

// `t` has exactly the sizes `expected` (written as `what`, e.g. "[R, C]").
inline void shape(const char* op, const char* name, const Tensor& t, IntList expected, const char* what) {
  RF_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", what, " = ", sizes_str(expected),
           ", got ", shape_str(t));
}

// `t` (grad_y) lives on the same device and has the same dtype as the reference tensor `ref` (named `ref_name`).
inline void like(const char* op, const char* name, const Tensor& t, const char* ref_name,
                 const Tensor& ref) {
  RF_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", device_str(t.device()), " but ", ref_name,
           " is on ", device_str(ref.device()), "; move all arguments to one device");
  RF_CHECK(dtype_of(t) == dtype_of(ref), op, ": ", name, " has dtype ", dtype_str(dtype_of(t)),
              " but ", ref_name, " has dtype ", dtype_str(dtype_of(ref)), "; ", name, " must have ", ref_name,
           "'s dtype");
}

// The contract of a gate op (SE, CUBS): an activation x [B, C, H, W] and weights, checked in the order
// recogfast/ops/_spec.py checks them -- every argument's rank and dtype kind (gate_ranks), then the hidden
// width, then the weights' shapes, then their device and dtype against x (gate_shapes) -- so that both
// report the same first error.
struct Rank {
  const char* name;
  const Tensor& t;
  int64_t ndim;
};

// Checks x (4-D) and every weight's rank and kind; returns the hidden width, the rows of `hidden` (which
// must be >= 1; its letter, e.g. "R", goes into the message), or 0 when hidden is nullptr.
inline int64_t gate_ranks(const char* op, const Tensor& x, std::initializer_list<Rank> weights,
                          const Tensor* hidden = nullptr, const char* hidden_name = nullptr,
                          const char* hidden_letter = nullptr) {
  float_tensor(op, "x", x, 4);
  for (const Rank& w : weights) float_tensor(op, w.name, w.t, w.ndim);
  if (hidden == nullptr) return 0;
  const int64_t width = hidden->size(0);
  RF_CHECK(width >= 1, op, ": ", hidden_name, " must have at least one row (", hidden_letter, " >= 1), got shape ",
              shape_str(*hidden));
  return width;
}

struct Shape {
  const char* name;
  const Tensor& t;
  std::vector<int64_t> sizes;
  const char* what;  // the shape as the message writes it, e.g. "[R, C] with C = x.size(1)"
};

// The weights' dtypes a gate op takes (docs/SPEC.md "Dtypes"): x's dtype, or float32 with a float16 / bfloat16
// x ("mixed": the fp32 parameters of a module under autocast, read as they are, no per-call cast).
inline bool mixed_weights(ScalarType x, ScalarType w) {
  return w == kFloat && (x == kHalf || x == kBFloat16);
}

// `t`, a weight, lives on x's device and has x's dtype, or is float32 with a 16-bit x.
inline void weight_like(const char* op, const char* name, const Tensor& t, const Tensor& x) {
  RF_CHECK(t.device() == x.device(), op, ": ", name, " is on ", device_str(t.device()), " but x is on ",
           device_str(x.device()), "; move all arguments to one device");
  RF_CHECK(dtype_of(t) == dtype_of(x) || mixed_weights(dtype_of(x), dtype_of(t)), op, ": ", name,
           " has dtype ", dtype_str(dtype_of(t)), " but x has dtype ", dtype_str(dtype_of(x)),
           "; the weights must have x's dtype, or be float32 with a float16 or bfloat16 x");
}

// One weight dtype for all: a call is mixed only as a whole (every weight float32), so that the kernels have
// one weight pointer type.
inline void gate_shapes(const char* op, const Tensor& x, std::initializer_list<Shape> weights) {
  for (const Shape& w : weights) shape(op, w.name, w.t, w.sizes, w.what);
  for (const Shape& w : weights) weight_like(op, w.name, w.t, x);
  const Shape& first = *weights.begin();
  for (const Shape& w : weights)
    RF_CHECK(dtype_of(w.t) == dtype_of(first.t), op, ": ", w.name, " has dtype ",
             dtype_str(dtype_of(w.t)), " but ", first.name, " has dtype ", dtype_str(dtype_of(first.t)),
             "; all weights must have one dtype");
}

// RF_DISPATCH_GATE(x dtype, weight dtype, "name", [&] { ... scalar_t ... w_t ... }): the body with scalar_t the
// activation's type and w_t the weights' (scalar_t, or float for mixed 16-bit calls): six instantiations, the
// four matching dtypes and (Half, float), (BFloat16, float). The checks above have refused any other pair.
#define RF_DISPATCH_GATE_CASE(ST, T, WT, NAME, ...)                                              \
  case ST: {                                                                                      \
    using scalar_t = T;                                                                           \
    if (::recogfast::checks::mixed_weights(ST, WT)) {                                             \
      using w_t = float;                                                                          \
      return __VA_ARGS__();                                                                       \
    }                                                                                             \
    using w_t = T;                                                                                \
    return __VA_ARGS__();                                                                         \
  }
#define RF_DISPATCH_GATE(TYPE, WTYPE, NAME, ...)                                                                  \
  [&] {                                                                                                           \
    const ::recogfast::ScalarType rf_dtype_ = (TYPE), rf_wtype_ = (WTYPE);                                        \
    switch (rf_dtype_) {                                                                                          \
      case ::recogfast::kDouble: {                                                                                \
        using scalar_t = double;                                                                                  \
        using w_t = double;                                                                                       \
        return __VA_ARGS__();                                                                                     \
      }                                                                                                           \
      case ::recogfast::kFloat: {                                                                                 \
        using scalar_t = float;                                                                                   \
        using w_t = float;                                                                                        \
        return __VA_ARGS__();                                                                                     \
      }                                                                                                           \
      RF_DISPATCH_GATE_CASE(::recogfast::kHalf, ::recogfast::Half, rf_wtype_, NAME, __VA_ARGS__)                  \
      RF_DISPATCH_GATE_CASE(::recogfast::kBFloat16, ::recogfast::BFloat16, rf_wtype_, NAME, __VA_ARGS__)          \
      default:                                                                                                    \
        throw std::runtime_error(::recogfast::str(NAME, ": unsupported dtype ", ::recogfast::dtype_str(rf_dtype_))); \
    }                                                                                                             \
  }()

// The memory layout a kernel reads a 4-D activation in: NHWC only when the tensor is channels_last
// and not also plain contiguous (for C == 1 or H == W == 1 both hold and NCHW indexing is right).
inline bool use_channels_last(const Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && is_contiguous(x, MemoryFormat::ChannelsLast);
}

inline MemoryFormat layout_of(bool channels_last) {
  return channels_last ? MemoryFormat::ChannelsLast : MemoryFormat::Contiguous;
}

// An activation (and, in a backward, its upstream gradient, checked against it) in the one layout
// the kernels index: NHWC for channels_last input, else NCHW.
struct Activation {
  Tensor x, grad_y;  // grad_y undefined in a forward
  bool channels_last;
};

inline Activation activation(const char* op, const Tensor& x, const Tensor& grad_y = Tensor()) {
  if (grad_y.defined()) {
    shape(op, "grad_y", grad_y, x.sizes(), "x.shape");
    like(op, "grad_y", grad_y, "x", x);
  }
  const bool cl = use_channels_last(x);
  return {as_contiguous(x, layout_of(cl)), grad_y.defined() ? as_contiguous(grad_y, layout_of(cl)) : Tensor(), cl};
}

// Gradients shaped like `params`, zero-filled when the batch is empty (a sum over no samples) so that
// kernels can return early.
inline std::vector<Tensor> param_grads(std::initializer_list<Tensor> params, bool empty_batch) {
  std::vector<Tensor> grads;
  for (const Tensor& p : params) {
    grads.push_back(empty_like(p, MemoryFormat::Contiguous));
    if (empty_batch) zero_(grads.back());
  }
  return grads;
}

}  // namespace checks
}  // namespace recogfast
