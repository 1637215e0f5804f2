// The one door to libtorch: every recogfast source reaches tensors, dtypes, errors, threads and ATen ops
// through this header, which uses only the LibTorch Stable ABI (torch/csrc/stable, torch/headeronly; the
// build defines TORCH_STABLE_ONLY and TORCH_TARGET_VERSION, so a non-stable include is a compile error).
// One binary therefore runs on every torch from the targeted version on (README: "Build once").
//
// What it adds to the stable API: an at::-like vocabulary (Tensor, empty/zeros/full on a device, contiguous
// in a memory format, narrow, mm), the dtype switch the kernels instantiate over, RF_CHECK (a RuntimeError
// whose message is exactly the text given, as Python's checks write it) and call_op, which calls any ATen or
// recogfast op through the dispatcher (boxed: about a microsecond a call). Scalar arguments cannot cross
// the stable boundary (torch 2.14 still refuses them), so ops with a Scalar in their schema (addmm_,
// index_add_, masked_fill_, div_) are written as loops or kernels where the code needs them.
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/MemoryFormat.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace recogfast {

using Tensor = torch::stable::Tensor;
using Device = torch::stable::Device;
using ScalarType = torch::headeronly::ScalarType;
using MemoryFormat = torch::headeronly::MemoryFormat;
using IntList = torch::headeronly::IntHeaderOnlyArrayRef;
using Half = c10::Half;
using BFloat16 = c10::BFloat16;

constexpr ScalarType kDouble = ScalarType::Double;
constexpr ScalarType kFloat = ScalarType::Float;
constexpr ScalarType kHalf = ScalarType::Half;
constexpr ScalarType kBFloat16 = ScalarType::BFloat16;
constexpr ScalarType kLong = ScalarType::Long;
constexpr ScalarType kInt = ScalarType::Int;

// ---- messages and errors ----------------------------------------------------------------------------

template <typename... A>
std::string str(const A&... a) {
  std::ostringstream os;
  (os << ... << a);
  return os.str();
}

// Throws std::runtime_error with exactly the message given (Python sees a RuntimeError with this text; the
// library's STD_TORCH_CHECK would prefix the C++ function, file and line, which Python's checks cannot match).
#define RF_CHECK(cond, ...)                                               \
  do {                                                                    \
    if (!(cond)) throw std::runtime_error(::recogfast::str(__VA_ARGS__)); \
  } while (0)

// Sizes as Python writes a shape's list: "[2, 3]".
inline std::string sizes_str(IntList s) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

// A dtype as Python writes it ("torch.float64").
inline std::string dtype_str(ScalarType t) {
  switch (t) {
    case ScalarType::Double: return "torch.float64";
    case ScalarType::Float: return "torch.float32";
    case ScalarType::Half: return "torch.float16";
    case ScalarType::BFloat16: return "torch.bfloat16";
    case ScalarType::Long: return "torch.int64";
    case ScalarType::Int: return "torch.int32";
    case ScalarType::Short: return "torch.int16";
    case ScalarType::Char: return "torch.int8";
    case ScalarType::Byte: return "torch.uint8";
    case ScalarType::Bool: return "torch.bool";
    case ScalarType::ComplexFloat: return "torch.complex64";
    case ScalarType::ComplexDouble: return "torch.complex128";
    default: return str("torch.", torch::headeronly::toString(t));
  }
}

// A device as Python writes it ("cpu", "cuda:0").
inline std::string device_str(const Device& d) {
  if (d.type() == torch::headeronly::DeviceType::CPU) return "cpu";
  const char* type = d.type() == torch::headeronly::DeviceType::CUDA ? "cuda" : "device";
  return d.has_index() ? str(type, ':', int(d.index())) : std::string(type);
}

inline bool is_floating(ScalarType t) {
  return t == kDouble || t == kFloat || t == kHalf || t == kBFloat16;
}

// ---- the dtype switch ---------------------------------------------------------------------------------

// Accumulation type: float for the 16-bit types, else the type itself (ATen's opmath_type).
template <typename T>
struct OpMath {
  using type = T;
};
template <>
struct OpMath<Half> {
  using type = float;
};
template <>
struct OpMath<BFloat16> {
  using type = float;
};
template <typename T>
using opmath_t = typename OpMath<T>::type;

template <typename T>
constexpr ScalarType scalar_type_of();
template <>
constexpr ScalarType scalar_type_of<double>() { return kDouble; }
template <>
constexpr ScalarType scalar_type_of<float>() { return kFloat; }
template <>
constexpr ScalarType scalar_type_of<Half>() { return kHalf; }
template <>
constexpr ScalarType scalar_type_of<BFloat16>() { return kBFloat16; }
template <>
constexpr ScalarType scalar_type_of<int64_t>() { return kLong; }

// RF_DISPATCH_FLOATING(dtype, "name", [&] { ... scalar_t ... }): the body once per floating dtype.
#define RF_DISPATCH_CASE(ST, T, ...) \
  case ST: {                         \
    using scalar_t = T;              \
    return __VA_ARGS__();            \
  }
#define RF_DISPATCH_FLOATING(TYPE, NAME, ...)                                                               \
  [&] {                                                                                                     \
    const ::recogfast::ScalarType rf_dtype_ = (TYPE);                                                       \
    switch (rf_dtype_) {                                                                                    \
      RF_DISPATCH_CASE(::recogfast::kDouble, double, __VA_ARGS__)                                           \
      RF_DISPATCH_CASE(::recogfast::kFloat, float, __VA_ARGS__)                                             \
      RF_DISPATCH_CASE(::recogfast::kHalf, ::recogfast::Half, __VA_ARGS__)                                  \
      RF_DISPATCH_CASE(::recogfast::kBFloat16, ::recogfast::BFloat16, __VA_ARGS__)                          \
      default:                                                                                              \
        throw std::runtime_error(::recogfast::str(NAME, ": unsupported dtype ", ::recogfast::dtype_str(rf_dtype_))); \
    }                                                                                                       \
  }()

// ---- ops through the dispatcher ---------------------------------------------------------------------------

// Calls `name.overload` with the arguments given (every schema argument, defaults included, in order) and
// returns its first N outputs. Tensors, ints, doubles, bools, ScalarType, MemoryFormat, Device, optionals and
// int lists cross; Scalar does not.
template <size_t N = 1, typename... A>
std::array<Tensor, N> call_op_n(const char* name, const char* overload, const A&... args) {
  constexpr size_t n = sizeof...(A) > N ? sizeof...(A) : N;
  std::array<StableIValue, n> stack{};
  size_t i = 0;
  ((stack[i++] = torch::stable::detail::from(args)), ...);
  STABLE_TORCH_ERROR_CODE_CHECK(torch_call_dispatcher(name, overload, stack.data(), TORCH_ABI_VERSION));
  std::array<Tensor, N> out;
  for (size_t k = 0; k < N; ++k) out[k] = torch::stable::detail::to<Tensor>(stack[k]);
  return out;
}

template <size_t N, size_t... I>
auto as_tuple_impl(std::array<Tensor, N>& a, std::index_sequence<I...>) {
  return std::make_tuple(std::move(a[I])...);
}
// std::tuple<Tensor, ...> of a call_op_n result (the C++ API of the multi-output ops).
template <size_t N>
auto as_tuple(std::array<Tensor, N> a) {
  return as_tuple_impl(a, std::make_index_sequence<N>{});
}

template <typename... A>
Tensor call_op(const char* name, const char* overload, const A&... args) {
  return call_op_n<1>(name, overload, args...)[0];
}

// ---- tensors ----------------------------------------------------------------------------------------------
// The stable API's own free functions (found by argument-dependent lookup on Tensor): view, reshape, index_select, copy_, zero_, transpose, empty_like(t), sum, full, from_blob.
using torch::stable::copy_;
using torch::stable::index_select;
using torch::stable::reshape;
using torch::stable::view;
using torch::stable::zero_;

// t.scalar_type() for the four floating types the kernels take, without the stable API's conversion, which maps
// the shim's dtype code through a chain of calls into libtorch (aoti_torch_dtype_uint8(), _int8(), ...: seven
// for float32, thirteen for bfloat16) on every call; an op's checks, dispatch and typed data pointers ask some
// thirty times a call (~1 µs for a SE forward and backward). The four codes are read from the shim once; any
// other dtype takes scalar_type().
inline ScalarType dtype_of(const Tensor& t) {
  static const int32_t f32 = aoti_torch_dtype_float32(), f64 = aoti_torch_dtype_float64(),
                       f16 = aoti_torch_dtype_float16(), bf16 = aoti_torch_dtype_bfloat16();
  int32_t code;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dtype(t.get(), &code));
  if (code == f32) return kFloat;
  if (code == f64) return kDouble;
  if (code == f16) return kHalf;
  if (code == bf16) return kBFloat16;
  return t.scalar_type();
}

// t's data as T* where the caller has checked t's dtype (dispatched on it): the stable API's typed
// const_data_ptr<T>() / mutable_data_ptr<T>() convert the dtype again (see dtype_of) to check it.
template <typename T>
inline const T* data_of(const Tensor& t) {
  return static_cast<const T*>(t.const_data_ptr());
}
template <typename T>
inline T* mutable_data_of(const Tensor& t) {
  return static_cast<T*>(t.mutable_data_ptr());
}

// aten::empty without the dispatcher. torch::stable::empty is a boxed call (the operator looked up by name,
// the arguments converted both ways: about half a microsecond), which a small op's host time feels (a SE
// backward allocates five outputs); the stable C shim's aoti_torch_empty_strided allocates directly. The
// strides are the ones c10 gives the format (TensorImpl::empty_tensor_restride), so the tensor is the same;
// other formats and ranks take aten::empty.
inline Tensor empty(IntList sizes, ScalarType dtype, const Device& device,
                    MemoryFormat fmt = MemoryFormat::Contiguous) {
  constexpr size_t kMaxDim = 8;
  const size_t n = sizes.size();
  const bool cl = fmt == MemoryFormat::ChannelsLast && n == 4;
  if (n > kMaxDim || !(fmt == MemoryFormat::Contiguous || cl)) {
    return torch::stable::empty(sizes, dtype, std::nullopt, device, std::nullopt, fmt);
  }
  std::array<int64_t, kMaxDim> strides{};
  if (cl) {  // c10::get_channels_last_strides_2d
    strides[1] = 1;
    strides[3] = sizes[1];
    strides[2] = strides[3] * sizes[3];
    strides[0] = strides[2] * sizes[2];
  } else {  // contiguous: a dimension of size 0 counts as 1
    int64_t s = 1;
    for (size_t i = n; i-- > 0;) {
      strides[i] = s;
      s *= sizes[i] > 1 ? sizes[i] : 1;
    }
  }
  namespace sd = torch::stable::detail;
  AtenTensorHandle out = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_empty_strided(
      int64_t(n), sizes.data(), strides.data(), sd::to<int32_t>(sd::from(dtype)),
      sd::to<int32_t>(sd::from(device.type())), int32_t(device.index()), &out));
  return Tensor(out);
}
// A new tensor on `like`'s device (dtype: like's unless given), as at::empty(sizes, like.options()).
inline Tensor empty_as(const Tensor& like, IntList sizes, std::optional<ScalarType> dtype = std::nullopt) {
  return empty(sizes, dtype.value_or(dtype_of(like)), like.device());
}
inline Tensor full_as(const Tensor& like, IntList sizes, double value, std::optional<ScalarType> dtype = std::nullopt) {
  return torch::stable::full(sizes, value, dtype.value_or(dtype_of(like)), std::nullopt, like.device());
}
inline Tensor zeros_as(const Tensor& like, IntList sizes, std::optional<ScalarType> dtype = std::nullopt) {
  return full_as(like, sizes, 0.0, dtype);
}
inline Tensor empty_like(const Tensor& t, MemoryFormat fmt) {
  return empty(t.sizes(), dtype_of(t), t.device(), fmt);
}

// t.is_contiguous(fmt), from the strides, as c10 computes it (dimensions of size 1 do not count).
inline bool is_contiguous(const Tensor& t, MemoryFormat fmt = MemoryFormat::Contiguous) {
  if (fmt == MemoryFormat::Contiguous) return t.is_contiguous();
  if (fmt != MemoryFormat::ChannelsLast || t.dim() != 4) return false;
  int64_t expected = 1;
  for (int64_t d : {1, 3, 2, 0}) {
    const int64_t size = t.size(d);
    if (size == 1) continue;
    if (t.stride(d) != expected) return false;
    expected *= size;
  }
  return true;
}
// t itself when it already has that layout (no dispatcher call: each boxed call costs about a microsecond of
// host time, which the small CUDA calls feel), else aten::contiguous's copy.
inline Tensor as_contiguous(const Tensor& t, MemoryFormat fmt = MemoryFormat::Contiguous) {
  return is_contiguous(t, fmt) ? t : torch::stable::contiguous(t, fmt);
}
inline Tensor narrow(const Tensor& t, int64_t dim, int64_t start, int64_t length) {
  return call_op("aten::narrow", "", t, dim, start, length);
}
inline Tensor transposed(const Tensor& t) { return torch::stable::transpose(t, 0, 1); }
inline Tensor to_dtype(const Tensor& t, ScalarType dtype) {
  if (dtype_of(t) == dtype) return t;
  return torch::stable::to(t, dtype);
}
inline Tensor to_cpu(const Tensor& t) {
  return torch::stable::to(t, Device(torch::headeronly::DeviceType::CPU));
}
inline Tensor mm(const Tensor& a, const Tensor& b) { return call_op("aten::mm", "", a, b); }
// out = a b, written into out (which must have the result's dtype: aten::mm.out).
inline void mm_out(Tensor out, const Tensor& a, const Tensor& b) { call_op("aten::mm", "out", a, b, out); }
// out = a b in out's dtype with a wider accumulation (aten::mm.dtype_out: bf16/fp16 operands, fp32 out).
inline void mm_out_dtype(Tensor out, const Tensor& a, const Tensor& b) {
  call_op("aten::mm", "dtype_out", a, b, out.scalar_type(), out);
}
// Single-element tensor's value as a double (copies to the host: synchronises with the device).
inline double item_double(const Tensor& t) {
  const Tensor c = to_cpu(to_dtype(t, kDouble));
  return *c.const_data_ptr<double>();
}

// ---- CPU threads ------------------------------------------------------------------------------------------

template <class F>
inline void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (begin >= end) return;
  torch::stable::parallel_for(begin, end, grain, f);
}
inline int64_t num_threads() { return int64_t(torch::stable::get_num_threads()); }

}  // namespace recogfast
