// The row accumulations that ATen would do with addmm_ / index_add_ / add_, whose Scalar arguments cannot
// cross the stable ABI: the products still go through aten::mm (the MS-loss CPU kernel's tiles), the "+=" is
// these loops over contiguous [*, D] rows; and a host buffer seen as a tensor without a copy.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <vector>

#include "ops/cpu/parallel.h"
#include "ops/stable.h"

namespace recogfast {
namespace cpu {

// dst[r] = dst[r] * scale[r] + src[r] (scale may be null: 1).
template <typename T>
inline void add_rows(T* dst, const T* src, int64_t rows, int64_t D, const T* scale = nullptr) {
  parallel_for(0, rows, cpu::grain_for(D), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      T* o = dst + r * D;
      const T* x = src + r * D;
      const T f = scale ? scale[r] : T(1);
      if (scale)
        for (int64_t d = 0; d < D; ++d) o[d] = o[d] * f + x[d];
      else
        for (int64_t d = 0; d < D; ++d) o[d] += x[d];
    }
  });
}
// dst[idx[r]] += src[r] for r < n, in order (an index may repeat).
template <typename T>
inline void index_add_rows(T* dst, const int64_t* idx, int64_t n, const T* src, int64_t D) {
  for (int64_t r = 0; r < n; ++r) {
    T* o = dst + idx[r] * D;
    const T* x = src + r * D;
    for (int64_t d = 0; d < D; ++d) o[d] += x[d];
  }
}
// A host buffer seen as a contiguous CPU tensor (no copy, no ownership).
inline Tensor host_view(void* data, std::initializer_list<int64_t> sizes, ScalarType dtype) {
  std::vector<int64_t> sz(sizes), strides(sz.size(), 1);
  for (int64_t k = int64_t(sz.size()) - 2; k >= 0; --k) strides[k] = strides[k + 1] * sz[k + 1];
  return torch::stable::from_blob(data, sz, strides, Device(torch::headeronly::DeviceType::CPU), dtype);
}

}  // namespace cpu
}  // namespace recogfast
