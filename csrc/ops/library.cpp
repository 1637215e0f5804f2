// The `recogfast` operator library. Every op file adds its schemas with STABLE_TORCH_LIBRARY_FRAGMENT;
// this file owns the namespace and records how the library was built, so that Python
// (`python -m recogfast.info`) and C++ users read the truth from the binary itself.
#include <torch/headeronly/version.h>

#include <string>

#include "ops/stable.h"

#ifndef RECOGFAST_CUDA_ARCHS
#define RECOGFAST_CUDA_ARCHS ""
#endif
#ifndef RECOGFAST_NVCC_VERSION
#define RECOGFAST_NVCC_VERSION ""
#endif

#define RF_STRINGIFY2(x) #x
#define RF_STRINGIFY(x) RF_STRINGIFY2(x)

namespace recogfast {

// "key=value" pairs separated by ';'. stable_abi: the oldest torch this binary runs on (TORCH_TARGET_VERSION,
// major.minor); torch_headers: the torch whose headers built it.
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
  const unsigned long long target = TORCH_TARGET_VERSION;
  const std::string stable_abi = std::to_string((target >> 56) & 0xff) + "." + std::to_string((target >> 48) & 0xff);
  const std::string headers = RF_STRINGIFY(TORCH_VERSION_MAJOR) "." RF_STRINGIFY(TORCH_VERSION_MINOR) "."
      RF_STRINGIFY(TORCH_VERSION_PATCH);
  return "cuda=" + cuda + ";cuda_archs=" RECOGFAST_CUDA_ARCHS ";nvcc=" RECOGFAST_NVCC_VERSION ";openmp=" + openmp +
         ";stable_abi=" + stable_abi + ";torch_headers=" + headers;
}

STABLE_TORCH_LIBRARY(recogfast, m) {
  m.def("_build_info() -> str");
}

STABLE_TORCH_LIBRARY_IMPL(recogfast, CompositeExplicitAutograd, m) {
  m.impl("_build_info", TORCH_BOX(&build_info));
}

}  // namespace recogfast
