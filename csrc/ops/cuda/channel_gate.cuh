// The two streaming passes of every channel gate (SE, CUBS Block 1): y = x * gate[b, c], where the gate
// comes from per-channel sums of x. Forward: pool, a per-sample head (op-specific), apply. Backward:
// pool x and grad_y * x together, the head's backward, then grad_x = grad_y * gate + coef[b, c].
// NCHW and NHWC (channels_last), any dtype, accumulation in acc_t; the pool's sums in double (issue 25: a lane's
// serial fp32 sum of HW / 32 = 98 terms at 56x56 was the largest rounding of CUBS Block 1's g and dz), stored as acc_t.
// Both passes read NCHW in 16-byte vectors for any HW where the pointers are aligned (vectors may span rows: 14x14
// and 7x7 in bf16, the default training layout), scalars otherwise (an offset view).
#pragma once

#include <cstdint>
#include <type_traits>

#include "ops/cuda/common.cuh"

namespace recogfast {
namespace channel_gate {

using gpu::ceil_div;
using gpu::kWarp;
using gpu::warp_sum;

// NCHW, the fallback (pointers not 16-byte aligned: an offset view): one warp per (b, c) row of HW contiguous
// elements, scalar loads. px[row] = sum x; with kGrad pgx[row] = sum grad_y x.
template <typename scalar_t, typename acc_t, bool kGrad>
__global__ void channel_gate_pool_nchw_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gy,
                                              acc_t* __restrict__ px, acc_t* __restrict__ pgx, int64_t rows,
                                              int64_t HW) {
  const int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= rows) return;
  const scalar_t* xr = x + row * HW;
  double sx = 0, sgx = 0;
  for (int64_t i = lane; i < HW; i += kWarp) {
    const acc_t v = static_cast<acc_t>(xr[i]);
    sx += double(v);
    if constexpr (kGrad) sgx += double(static_cast<acc_t>(gy[row * HW + i]) * v);
  }
  sx = warp_sum(sx);
  if constexpr (kGrad) sgx = warp_sum(sgx);
  if (lane == 0) {
    px[row] = acc_t(sx);
    if constexpr (kGrad) pgx[row] = acc_t(sgx);
  }
}

constexpr int kPoolSlots = kWarp + 1;  // a row's slots in the vector pool's shared memory, padded: no bank conflict
constexpr int kPoolMaxRows = 16;       // rows a warp at most (shared memory: 4 warps x 16 x 33 x 16 B = 33 KiB)
constexpr int kPoolWarps = 4;          // warps a block (each its own chunk)

// NCHW in 16-byte vectors, for any HW: the rows of consecutive (b, c) are contiguous, so a warp owns a chunk of R
// rows (R HW elements, R HW a multiple of V: the chunk starts on a 16-byte boundary; nchw_pool_rows) and its lanes
// read the chunk as flat vectors (lane l: vectors l, l + 32, ...). A vector may straddle two rows (HW not a
// multiple of V) or hold several (HW < V): each element steps its row on from the vector's first. A lane keeps the
// running sums of its current row in registers and stores them to its own shared-memory slot [row][lane] when its
// row changes (a lane's rows only grow: each slot is written at most once, no dynamic register indexing). Row j's
// 32 slots are then added in a fixed order: the 32 / R lanes j + R q each add R consecutive slots serially, a
// butterfly over those lanes adds their sums. The order depends only on (HW, R, dtype), so every run gives the same
// bits (no atomics, nothing timing-dependent). Sums in double, stored as acc_t; the last chunk may hold fewer rows,
// its last vector fewer elements (read one by one, the rest zero: they fall in rows past the tensor, not stored).
template <typename scalar_t, typename acc_t, bool kGrad>
__global__ void channel_gate_pool_nchw_vec_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gy,
                                                  acc_t* __restrict__ px, acc_t* __restrict__ pgx, int64_t rows,
                                                  int HW, int R) {
  constexpr int V = 16 / sizeof(scalar_t);
  constexpr int kBatch = 4;  // vectors a lane loads before adding them up (loads in flight)
  using Vec = gpu::VecT<scalar_t, V>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row0 = (blockIdx.x * int64_t(blockDim.x / kWarp) + warp) * R;
  if (row0 >= rows) return;  // the whole warp: no barrier below spans warps
  double* slot_x = reinterpret_cast<double*>(smem_raw) + int64_t(warp) * (kGrad ? 2 : 1) * R * kPoolSlots;
  double* slot_gx = slot_x + R * kPoolSlots;
  for (int r = 0; r < R; ++r) {  // a lane's slots of the rows it never reaches add 0
    slot_x[r * kPoolSlots + lane] = 0;
    if constexpr (kGrad) slot_gx[r * kPoolSlots + lane] = 0;
  }
  const int nrows = rows - row0 < R ? int(rows - row0) : R;
  const int n = nrows * HW, nv = (n + V - 1) / V;  // elements and vectors of this chunk
  const scalar_t* xc = x + row0 * HW;
  const scalar_t* gc = kGrad ? gy + row0 * HW : nullptr;
  auto load = [&](const scalar_t* p, int i) {
    if ((i + 1) * V <= n) return reinterpret_cast<const Vec*>(p)[i];
    Vec v;  // the tensor's last vector, cut short
#pragma unroll
    for (int k = 0; k < V; ++k) v.v[k] = i * V + k < n ? p[i * V + k] : static_cast<scalar_t>(acc_t(0));
    return v;
  };
  double sx = 0, sgx = 0;  // the lane's sums of row `cur` so far
  int cur = 0;
  auto flush = [&](int r) {  // on to row r: store row cur's sums (row 0's slot already holds 0 if cur never ran)
    slot_x[cur * kPoolSlots + lane] = sx;
    if constexpr (kGrad) slot_gx[cur * kPoolSlots + lane] = sgx;
    sx = sgx = 0;
    cur = r;
  };
  auto add = [&](const Vec& a, const Vec& g, int k) {
    const acc_t v = static_cast<acc_t>(a.v[k]);
    sx += double(v);
    if constexpr (kGrad) sgx += double(static_cast<acc_t>(g.v[k]) * v);
  };
  for (int i0 = lane; i0 < nv; i0 += kBatch * kWarp) {
    Vec vx[kBatch], vg[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      if (i0 + u * kWarp < nv) {
        vx[u] = load(xc, i0 + u * kWarp);
        if constexpr (kGrad) vg[u] = load(gc, i0 + u * kWarp);
      }
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int i = i0 + u * kWarp;
      if (i >= nv) continue;
      int r = i * V / HW, p = i * V - r * HW;  // the vector's first element: row, pixel
      if (p <= HW - V) {  // the whole vector in row r
        if (r != cur) flush(r);
#pragma unroll
        for (int k = 0; k < V; ++k) add(vx[u], vg[u], k);
      } else {  // it straddles rows: each element steps its row on
#pragma unroll
        for (int k = 0; k < V; ++k) {
          if (r != cur) flush(r);
          add(vx[u], vg[u], k);
          if (++p == HW) {
            p = 0;
            ++r;
          }
        }
      }
    }
  }
  flush(cur);
  __syncwarp();
  // Row j = lane % R: lane j + R q adds slots [q R, (q + 1) R) of it, then the butterfly over q (lane bits >= R).
  const int j = lane % R, q = lane / R;
  double tx = 0, tgx = 0;
  for (int t = 0; t < R; ++t) {
    tx += slot_x[j * kPoolSlots + q * R + t];
    if constexpr (kGrad) tgx += slot_gx[j * kPoolSlots + q * R + t];
  }
  for (int offset = R; offset < kWarp; offset <<= 1) {
    tx += __shfl_xor_sync(0xffffffffu, tx, offset);
    if constexpr (kGrad) tgx += __shfl_xor_sync(0xffffffffu, tgx, offset);
  }
  if (q == 0 && j < nrows) {
    px[row0 + j] = acc_t(tx);
    if constexpr (kGrad) pgx[row0 + j] = acc_t(tgx);
  }
}

// NHWC ([B, HW, C]): a block covers one sample and 32 of its channels (blockIdx.x; threadIdx.x is the
// channel, so reads are coalesced) and one chunk of pixels (blockIdx.y) with 8 pixel lanes (threadIdx.y).
// Partial sums land in p*[chunk][b][c]; the head adds the chunks up.
template <typename scalar_t, typename acc_t, bool kGrad>
__global__ void channel_gate_pool_nhwc_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gy,
                                              acc_t* __restrict__ px, acc_t* __restrict__ pgx, int64_t B, int64_t C,
                                              int64_t HW, int64_t per_chunk) {
  __shared__ double red[2][8][kWarp];
  const int64_t cblocks = ceil_div(C, kWarp);
  const int64_t b = blockIdx.x / cblocks, c = (blockIdx.x % cblocks) * kWarp + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  const int64_t p0 = chunk * per_chunk, p1 = min(HW, p0 + per_chunk);
  double sx = 0, sgx = 0;
  if (c < C) {
    for (int64_t p = p0 + threadIdx.y; p < p1; p += blockDim.y) {
      const int64_t idx = (b * HW + p) * C + c;
      const acc_t v = static_cast<acc_t>(x[idx]);
      sx += double(v);
      if constexpr (kGrad) sgx += double(static_cast<acc_t>(gy[idx]) * v);
    }
  }
  red[0][threadIdx.y][threadIdx.x] = sx;
  red[1][threadIdx.y][threadIdx.x] = sgx;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int y = 1; y < int(blockDim.y); ++y) {
      sx += red[0][y][threadIdx.x];
      sgx += red[1][y][threadIdx.x];
    }
    px[(chunk * B + b) * C + c] = acc_t(sx);
    if constexpr (kGrad) pgx[(chunk * B + b) * C + c] = acc_t(sgx);
  }
}

// out = in * gate[b, c] (+ coef[b, c] when kGrad), kVec elements a thread. Where kVec divides the innermost
// extent (HW for NCHW, C for NHWC) one division per vector finds (b, c); kSpan (NCHW whose HW kVec does not divide,
// 14x14 and 7x7 in bf16: the tensor read as flat 16-byte vectors) lets a vector span rows, each element stepping
// its (b, c) on from the vector's first.
template <typename scalar_t, typename acc_t, typename index_t, int kVec, bool kChannelsLast, bool kGrad,
          bool kSpan = false>
__global__ void channel_gate_apply_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                          const acc_t* __restrict__ gate, const acc_t* __restrict__ coef, index_t nvec,
                                          index_t C, index_t HW) {
  using Vec = gpu::VecT<scalar_t, kVec>;
  for (index_t i = blockIdx.x * blockDim.x + threadIdx.x; i < nvec; i += gridDim.x * blockDim.x) {
    const index_t e = i * kVec;
    index_t bc, r = 0;
    if constexpr (kChannelsLast) {
      const index_t pixel = e / C;
      bc = (pixel / HW) * C + (e - pixel * C);
    } else {
      bc = e / HW;
      r = e - bc * HW;  // the first element's pixel in its row
    }
    Vec v = reinterpret_cast<const Vec*>(in)[i];
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const index_t j = kChannelsLast ? bc + k : bc;
      acc_t y = static_cast<acc_t>(v.v[k]) * gate[j];
      if constexpr (kGrad) y += coef[j];
      v.v[k] = static_cast<scalar_t>(y);
      if constexpr (kSpan) {
        if (++r == HW) {
          r = 0;
          ++bc;
        }
      }
    }
    reinterpret_cast<Vec*>(out)[i] = v;
  }
}

// Pixel chunks the NHWC pool splits a sample into, so that B * channel blocks * chunks fills the GPU
// several times over with at least 32 pixels a chunk (1 for NCHW). Sets *per_chunk.
inline int64_t pool_chunks(int64_t B, int64_t C, int64_t HW, bool channels_last, int64_t* per_chunk) {
  if (!channels_last) {
    *per_chunk = HW;
    return 1;
  }
  const int64_t cblocks = ceil_div(C, kWarp);
  const int64_t want = std::max<int64_t>(1, ceil_div(gpu::num_sms() * 8, B * cblocks));
  const int64_t chunks = std::min<int64_t>({want, ceil_div(HW, 32), 65535});
  *per_chunk = ceil_div(HW, chunks);
  return ceil_div(HW, *per_chunk);
}

#ifdef RECOGFAST_CUDA_EMULATION
inline int emu_pool_vec_launches = 0;  // NCHW pools that took the vector kernel (the emulation checks its choice)
#endif

// Rows a warp of the NCHW vector pool owns for V elements a vector: the least power of two whose R HW a multiple
// of V is (the chunks start 16-byte aligned), doubled while a chunk gives a lane under 4 vectors, up to 16 (small
// HW; where V divides HW, large HW keeps a row a warp: as many warps as rows). 0: R HW over int32 (the kernel's
// chunk-local indices), the scalar kernel runs.
inline int nchw_pool_rows(int64_t HW, int V) {
  int64_t R = 1;
  while ((R * HW) % V != 0) R *= 2;
  while (R < kPoolMaxRows && R * HW < 4 * kWarp * V) R *= 2;
  return R * HW + V <= INT32_MAX ? int(R) : 0;
}

template <typename scalar_t, typename acc_t, bool kGrad>
void launch_pool(const scalar_t* x, const scalar_t* gy, acc_t* px, acc_t* pgx, int64_t B, int64_t C, int64_t HW,
                 bool channels_last, int64_t chunks, int64_t per_chunk, cudaStream_t stream) {
  if (!channels_last) {
    constexpr int V = 16 / sizeof(scalar_t);
    const bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(gy) % 16 == 0;
    const int R = nchw_pool_rows(HW, V);
    if (aligned && R) {
      constexpr int threads = kPoolWarps * kWarp;
      const size_t smem = size_t(kPoolWarps) * (kGrad ? 2 : 1) * R * kPoolSlots * sizeof(double);
      channel_gate_pool_nchw_vec_kernel<scalar_t, acc_t, kGrad>
          <<<ceil_div(ceil_div(B * C, R), kPoolWarps), threads, smem, stream>>>(x, gy, px, pgx, B * C, int(HW), R);
#ifdef RECOGFAST_CUDA_EMULATION
      ++emu_pool_vec_launches;
#endif
    } else {
      constexpr int threads = 256;
      channel_gate_pool_nchw_kernel<scalar_t, acc_t, kGrad>
          <<<ceil_div(B * C * kWarp, threads), threads, 0, stream>>>(x, gy, px, pgx, B * C, HW);
    }
  } else {
    channel_gate_pool_nhwc_kernel<scalar_t, acc_t, kGrad>
        <<<dim3(B * ceil_div(C, kWarp), chunks), dim3(kWarp, 8), 0, stream>>>(x, gy, px, pgx, B, C, HW, per_chunk);
  }
  RF_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename acc_t, bool kGrad>
void launch_apply(const scalar_t* in, scalar_t* out, const acc_t* gate, const acc_t* coef, int64_t numel, int64_t C,
                  int64_t HW, bool channels_last, cudaStream_t stream) {
  constexpr int threads = 256;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const int64_t inner = channels_last ? C : HW;
  const bool aligned = reinterpret_cast<uintptr_t>(in) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  // NCHW whose rows kVec does not divide: flat vectors spanning rows, where the whole tensor divides into them
  const bool span = !channels_last && inner % kVec != 0;
  const bool vec_ok = aligned && (span ? numel % kVec : inner % kVec) == 0;
  auto go = [&](auto vec_tag, auto index_tag) {
    constexpr int V = decltype(vec_tag)::value;
    using index_t = decltype(index_tag);
    const int64_t nvec = numel / V;
    auto kernel = channels_last ? channel_gate_apply_kernel<scalar_t, acc_t, index_t, V, true, kGrad>
                  : span        ? channel_gate_apply_kernel<scalar_t, acc_t, index_t, V, false, kGrad, V != 1>
                                : channel_gate_apply_kernel<scalar_t, acc_t, index_t, V, false, kGrad>;
    kernel<<<gpu::grid_for(nvec, threads), threads, 0, stream>>>(in, out, gate, coef, index_t(nvec), index_t(C),
                                                                 index_t(HW));
    RF_CUDA_KERNEL_LAUNCH_CHECK();
  };
  // 32-bit index arithmetic (cheaper divisions) whenever the grid-stride loop cannot overflow it.
  const bool small = gpu::fits_int32(numel, gpu::grid_for(numel, threads) * threads);
  if (vec_ok && small) {
    go(std::integral_constant<int, kVec>{}, int32_t{});
  } else if (vec_ok) {
    go(std::integral_constant<int, kVec>{}, int64_t{});
  } else if (small) {
    go(std::integral_constant<int, 1>{}, int32_t{});
  } else {
    go(std::integral_constant<int, 1>{}, int64_t{});
  }
}

}  // namespace channel_gate
}  // namespace recogfast
