// The `recogfast` operator library. Every op file adds its schemas with TORCH_LIBRARY_FRAGMENT;
// this file owns the namespace and records how the library was built, so that Python
// (`python -m recogfast.info`) and C++ users read the truth from the binary itself.
#include <torch/library.h>

#include <string>

#ifndef RECOGFAST_CUDA_ARCHS
#define RECOGFAST_CUDA_ARCHS ""
#endif
#ifndef RECOGFAST_NVCC_VERSION
#define RECOGFAST_NVCC_VERSION ""
#endif

namespace recogfast {

// "key=value" pairs separated by ';'.
std::string build_info() {
#ifdef RECOGFAST_WITH_CUDA
  const std::string cuda = "1";
#else
  const std::string cuda = "0";
#endif
#ifdef _OPENMP
  const std::string openmp = "1";
#else
  const std::string openmp = "0";
#endif
  return "cuda=" + cuda + ";cuda_archs=" RECOGFAST_CUDA_ARCHS ";nvcc=" RECOGFAST_NVCC_VERSION ";openmp=" + openmp;
}

TORCH_LIBRARY(recogfast, m) {
  m.def("_build_info() -> str", &build_info);
}

}  // namespace recogfast
