// The streaming passes every channel gate (SE, CUBS Block 1) shares on the CPU: per-channel sums of x
// (and of grad_y * x), and out = in * gate[b, c] (+ coef[b, c]), in NCHW or NHWC, plus the schedule
// that runs them around an op-specific per-sample head.
//
// When there are at least as many samples as threads, each thread takes whole samples and runs
// pool -> head -> scale on one sample back to back, so the second read of x (and of grad_y in the
// backward) hits the cache: two passes over DRAM instead of three. With fewer samples (B = 1 at
// inference) the work is split into (sample, channel block) tasks in three parallel phases instead.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "ops/cpu/parallel.h"
#include "ops/cpu/simd.h"

namespace recogfast {
namespace cpu {

// Long channel sums (HW = 3136 at 56x56; issue 25): fp32 lane sums of chunks of kPoolChunk elements, added in
// double (acc_t float), so that only a chunk's terms share an fp32 rounding. acc_t double: plain double sums.
constexpr int64_t kPoolChunk = 256;

template <typename T, typename acc_t>
inline acc_t sum_row_chunked(const T* a, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i += kPoolChunk) s += double(sum_row<T, acc_t>(a + i, std::min(kPoolChunk, n - i)));
  return acc_t(s);
}

template <typename T, typename U, typename acc_t>
inline acc_t dot_row_chunked(const T* a, const U* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i += kPoolChunk) s += double(dot_row<T, U, acc_t>(a + i, b + i, std::min(kPoolChunk, n - i)));
  return acc_t(s);
}

template <typename scalar_t>
struct ChannelGate {
  using acc_t = opmath_t<scalar_t>;

  static constexpr int64_t kPixelBlock = 16;  // NHWC reduce: fp32 sums of 16 pixels a channel, added in double

  const scalar_t* x;
  int64_t B, C, HW;
  bool channels_last;

  // sx[c] = sum_hw x[b, c], and when gy is given sgx[c] = sum_hw gy[b, c] * x[b, c], for c in [c0, c1).
  void reduce(const scalar_t* gy, int64_t b, int64_t c0, int64_t c1, acc_t* sx, acc_t* sgx) const {
    const scalar_t* xb = x + b * C * HW;
    const scalar_t* gb = gy ? gy + b * C * HW : nullptr;
    if (!channels_last) {
      for (int64_t c = c0; c < c1; ++c) {
        const scalar_t* xr = xb + c * HW;
        sx[c] = sum_row_chunked<scalar_t, acc_t>(xr, HW);
        if (gb) sgx[c] = dot_row_chunked<scalar_t, scalar_t, acc_t>(gb + c * HW, xr, HW);
      }
      return;
    }
    // fp32 sums of kPixelBlock pixels a channel, added in double
    std::vector<double> dx(c1 - c0, 0.0), dgx(gb ? c1 - c0 : 0, 0.0);
    for (int64_t p0 = 0; p0 < HW; p0 += kPixelBlock) {
      std::fill(sx + c0, sx + c1, acc_t(0));
      if (gb) std::fill(sgx + c0, sgx + c1, acc_t(0));
      for (int64_t p = p0; p < std::min(HW, p0 + kPixelBlock); ++p) {
        const scalar_t* xr = xb + p * C;
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) sx[c] += acc_t(xr[c]);
        if (gb) {
          const scalar_t* gr = gb + p * C;
#pragma omp simd
          for (int64_t c = c0; c < c1; ++c) sgx[c] += acc_t(gr[c]) * acc_t(xr[c]);
        }
      }
      for (int64_t c = c0; c < c1; ++c) dx[c - c0] += double(sx[c]);
      if (gb)
        for (int64_t c = c0; c < c1; ++c) dgx[c - c0] += double(sgx[c]);
    }
    for (int64_t c = c0; c < c1; ++c) sx[c] = acc_t(dx[c - c0]);
    if (gb)
      for (int64_t c = c0; c < c1; ++c) sgx[c] = acc_t(dgx[c - c0]);
  }

  // out[b, c, :] = in[b, c, :] * s[c] (+ coef[c] when given), for c in [c0, c1).
  void apply(const scalar_t* in, scalar_t* out, int64_t b, int64_t c0, int64_t c1, const acc_t* s,
             const acc_t* coef) const {
    const scalar_t* ib = in + b * C * HW;
    scalar_t* ob = out + b * C * HW;
    if (!channels_last) {
      for (int64_t c = c0; c < c1; ++c) {
        const acc_t sc = s[c], k = coef ? coef[c] : acc_t(0);
        const scalar_t* ir = ib + c * HW;
        scalar_t* orow = ob + c * HW;
#pragma omp simd
        for (int64_t i = 0; i < HW; ++i) orow[i] = scalar_t(acc_t(ir[i]) * sc + k);
      }
      return;
    }
    for (int64_t p = 0; p < HW; ++p) {
      const scalar_t* ir = ib + p * C;
      scalar_t* orow = ob + p * C;
      if (coef) {
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) orow[c] = scalar_t(acc_t(ir[c]) * s[c] + coef[c]);
      } else {
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) orow[c] = scalar_t(acc_t(ir[c]) * s[c]);
      }
    }
  }

  // How many channel blocks each sample is cut into so that every thread has work.
  int64_t channel_blocks() const {
    const int64_t threads = num_threads();
    if (B >= threads) return 1;
    return std::min<int64_t>(C, (4 * threads + B - 1) / B);
  }

  // Runs pass1(b, c0, c1), then per_sample(b), then pass2(b, c0, c1) over all samples and channel
  // blocks. `head_work` is the per-sample head's operation count, for the parallel grain.
  template <typename Pass1, typename PerSample, typename Pass2>
  void schedule(const Pass1& pass1, const PerSample& per_sample, const Pass2& pass2, int64_t head_work) const {
    const int64_t nblk = channel_blocks();
    if (nblk == 1) {
      parallel_for(0, B, grain_for(2 * C * HW + head_work), [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          pass1(b, 0, C);
          per_sample(b);
          pass2(b, 0, C);
        }
      });
      return;
    }
    const int64_t cb = (C + nblk - 1) / nblk;
    auto blocks = [&](const auto& fn) {
      parallel_for(0, B * nblk, grain_for(cb * HW), [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t b = t / nblk, c0 = (t % nblk) * cb, c1 = std::min(C, c0 + cb);
          if (c0 < c1) fn(b, c0, c1);
        }
      });
    };
    blocks(pass1);
    parallel_for(0, B, grain_for(head_work), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) per_sample(b);
    });
    blocks(pass2);
  }
};

}  // namespace cpu
}  // namespace recogfast
