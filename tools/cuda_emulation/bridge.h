// at::Tensor <-> the stable ABI's Tensor, for the emulation's wrappers: main.cpp is an ATen program (it builds
// inputs and compares with ATen ops), the launchers of csrc/ops/cuda take torch::stable::Tensor. Both views
// share one TensorImpl (no copy). Only this host test mixes the two APIs; the library never does.
#pragma once
#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_torch/utils.h>

#include <optional>
#include <tuple>
#include <utility>

#include "ops/stable.h"
#include "tests/aten_ops.h"

namespace recogfast_emu {
inline recogfast::Tensor S(const at::Tensor& t) {
  return recogfast::Tensor(torch::aot_inductor::new_tensor_handle(at::Tensor(t)));
}
inline std::optional<recogfast::Tensor> S(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<recogfast::Tensor>(S(*t)) : std::nullopt;
}
inline at::Tensor A(const recogfast::Tensor& t) { return *torch::aot_inductor::tensor_handle_to_tensor_pointer(t.get()); }
template <typename... T>
auto A(const std::tuple<T...>& t) {
  return std::apply([](const auto&... x) { return std::make_tuple(A(x)...); }, t);
}
}  // namespace recogfast_emu
