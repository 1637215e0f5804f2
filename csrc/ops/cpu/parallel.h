// Parallel-loop sizing shared by the CPU kernels.
#pragma once

#include <algorithm>
#include <cstdint>

#include "ops/stable.h"

namespace recogfast {
namespace cpu {

// Grain for parallel_for (stable.h: torch's thread pool) over items of `work_per_item` elementary operations: at least ~64k
// operations a task, so that small inputs run inline instead of paying a parallel region.
inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, work_per_item));
}

}  // namespace cpu
}  // namespace recogfast
