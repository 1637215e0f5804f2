// The recogfast ops as an ATen program calls them: through the dispatcher, with at::Tensor, from a binary built
// against the full (non-stable) libtorch API. The C++ tests and the CUDA host emulation are such programs: the
// library they load (librecogfast, built on the stable ABI like recogfast._C) registers the ops; these
// wrappers find them by name. Errors come back as c10::Error with the op's message.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>
#include <tuple>

namespace recogfast_aten {

using at::Tensor;
using T2 = std::tuple<Tensor, Tensor>;
using T4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using T5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
using T7 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using T9 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using CT = const Tensor&;
using OT = const std::optional<Tensor>&;

template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

inline Tensor se_gate(CT x, CT w1, CT b1, CT w2, CT b2) {
  return op<Tensor(CT, CT, CT, CT, CT)>("recogfast::se_gate").call(x, w1, b1, w2, b2);
}
inline T5 se_gate_backward(CT gy, CT x, CT w1, CT b1, CT w2, CT b2) {
  return op<T5(CT, CT, CT, CT, CT, CT)>("recogfast::_se_gate_backward").call(gy, x, w1, b1, w2, b2);
}
inline Tensor cubs_channel(CT x, CT wq, CT bq, CT wk, CT bk, CT wv, CT bv, CT wo, CT bo) {
  return op<Tensor(CT, CT, CT, CT, CT, CT, CT, CT, CT)>("recogfast::cubs_channel").call(x, wq, bq, wk, bk, wv, bv, wo, bo);
}
inline T9 cubs_channel_backward(CT gy, CT x, CT wq, CT bq, CT wk, CT bk, CT wv, CT bv, CT wo, CT bo) {
  return op<T9(CT, CT, CT, CT, CT, CT, CT, CT, CT, CT)>("recogfast::_cubs_channel_backward")
      .call(gy, x, wq, bq, wk, bk, wv, bv, wo, bo);
}
inline Tensor cubs_spatial(CT x, CT wq, CT bq, CT wk, CT bk, CT wv, CT bv) {
  return op<Tensor(CT, CT, CT, CT, CT, CT, CT)>("recogfast::cubs_spatial").call(x, wq, bq, wk, bk, wv, bv);
}
inline T7 cubs_spatial_backward(CT gy, CT x, CT wq, CT bq, CT wk, CT bk, CT wv, CT bv) {
  return op<T7(CT, CT, CT, CT, CT, CT, CT, CT)>("recogfast::_cubs_spatial_backward").call(gy, x, wq, bq, wk, bk, wv, bv);
}
inline T2 cubs_spatial_forward_train(CT x, CT wq, CT bq, CT wk, CT bk, CT wv, CT bv) {
  return op<T2(CT, CT, CT, CT, CT, CT, CT)>("recogfast::_cubs_spatial_forward_train").call(x, wq, bq, wk, bk, wv, bv);
}
inline T7 cubs_spatial_backward_saved(CT gy, CT x, CT stats, CT wq, CT bq, CT wk, CT bk, CT wv, CT bv) {
  return op<T7(CT, CT, CT, CT, CT, CT, CT, CT, CT)>("recogfast::_cubs_spatial_backward_saved")
      .call(gy, x, stats, wq, bq, wk, bk, wv, bv);
}
inline T4 ms_loss(CT e, CT l, OT r, OT rl, double alpha, double beta, double base, double eps, std::string_view mining,
                  bool cache_ref_grad = false, bool allow_tf32 = false) {
  return op<T4(CT, CT, OT, OT, double, double, double, double, std::string_view, bool, bool)>("recogfast::ms_loss")
      .call(e, l, r, rl, alpha, beta, base, eps, mining, cache_ref_grad, allow_tf32);
}
inline T2 ms_loss_backward(CT g, CT e, CT l, OT r, OT rl, CT stats, CT hard_idx, CT cache, double alpha, double beta,
                           double base, double eps, std::string_view mining, bool ref_requires_grad,
                           bool allow_tf32 = false) {
  return op<T2(CT, CT, CT, OT, OT, CT, CT, CT, double, double, double, double, std::string_view, bool, bool)>(
             "recogfast::_ms_loss_backward")
      .call(g, e, l, r, rl, stats, hard_idx, cache, alpha, beta, base, eps, mining, ref_requires_grad, allow_tf32);
}

}  // namespace recogfast_aten
