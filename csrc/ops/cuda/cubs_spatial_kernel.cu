// CUBS Block 2 on CUDA, forward and backward, NCHW and NHWC, fp32/fp64/fp16/bf16 with fp32 (fp64 for
// double) accumulation and no [B, HW, HW] buffer: scratch is a few [B, HW] vectors.
//
// Forward:  1. q, k, v per pixel                      (cubs_spatial_project_*)
//           2. min k, max k (and v there) per sample   (cubs_spatial_key_range_kernel; training: mean of v)
//           3. per row i: l_i, f_i in one pass over j  (cubs_spatial_row_kernel), gate = sigmoid(f); the
//              training forward (_cubs_spatial_forward_train) also forms sum e k, sum e k v, sum e v about the
//              mean of v and saves stats = {f, 1 / l, cov} per row; its epilogue: y = x * gate over the block's
//              pixels (gate_tile, cubs_spatial_pixels.cuh)
// Backward (from the saved stats): 1. q, k, v and d_i = sum_c grad_y x; 2. the key range and per row gate, dq and
//           the column pass's factors (cubs_spatial_prep_kernel, O(B·HW)); 3. a column pass over i -> dk, dv
//           (cubs_spatial_col_kernel), its epilogue grad_x over the block's pixels; 4. weight gradients
//           (fixed-order sums).
// Kernels: 3 a forward, 5 a backward (project, prep, col, wgrad, reduce), two B·HW² passes a step (issue 25 part
// 2: the gating folded into the quadratic passes, 4 and 6 before; the emulation checks the counts).
// _cubs_spatial_backward (no stats: the registered op's autograd) runs the key range and the row pass with stats
// (no epilogue) first (7 kernels, three passes a step).
//
// The two B·HW² passes: each thread owns kRows rows (or columns); the block (kThreads threads) stages tiles of
// kTile of the other side's values in shared memory, read as broadcasts (every thread reads the same address), so
// the inner loop per pair is one FFMA, one MUFU.EX2 and two or three FFMA/FADD: it is bound by the exponential
// rate (16 MUFU ops/clk/SM on sm_90), the floor the benchmark reports. Those passes (steps 2-3 of
// the forward, 2-3 of the backward) are in cubs_spatial_passes.cuh, the per-pixel kernels in
// cubs_spatial_pixels.cuh; this file holds the launches. (kThreads, kRows, kTile) is a variant compiled in and
// chosen by RECOGFAST_CUBS_SPATIAL_TILE = 0 (default: 128, 2, 512), 1 (256, 1, 512), 2 (128, 3, 512) or
// 3 (64, 2, 1024), read once per process; all four give bit-identical results (cubs_spatial_passes.cuh).
// The weights are w_t: x's type, or float for a 16-bit x (mixed, read without a cast). Only the projections and
// the backward's grad_x (the column pass's epilogue) read both x and weights. The row pass is compiled per x type
// (its epilogue writes y; the layout is a runtime branch there): 4 x types x 2 (stats or not) x 4 variants, the
// backward's recomputation taking the fp32 / fp64 ones without x; the column pass per accumulation type and
// variant, its epilogue taking grad_y's and the weights' types at run time (with_x_type). The row pass keeps its
// per-type build: taking x's type at run time as well cost its fp32 inference pass of variants 0 and 3 a 4-byte
// spill (nvcc -Xptxas -v, sm_90).

#include <algorithm>

#include "ops/cubs_spatial.h"
#include "ops/cuda/cubs_common.cuh"
#include "ops/cuda/cubs_spatial_passes.cuh"
#include "ops/cuda/cubs_spatial_pixels.cuh"

namespace recogfast {
namespace {

using namespace cubs_cuda;

struct Launch {
  int64_t B, C, P;
  bool cl;
  cudaStream_t stream;
  ScalarType dtype;  // x's: picks the tuned variant of the quadratic passes (with_spatial_tile)
};

// The grid of a quadratic pass under the variant Cfg (cubs_spatial_passes.cuh).
template <class Cfg>
dim3 quad_grid(const Launch& L) {
  return dim3(static_cast<unsigned>(ceil_div(L.P, Cfg::kThreads * Cfg::kRows)), L.B);
}

template <typename scalar_t, typename w_t, typename acc_t, bool kGrad>
void launch_project(const Launch& L, const scalar_t* x, const scalar_t* gy, const Weights<w_t>& wt, acc_t* qkv,
                    acc_t* d) {
  constexpr int threads = 256;
  if (L.cl) {
    cubs_spatial_project_nhwc<scalar_t, w_t, acc_t, kGrad>
        <<<grid_for(L.B * L.P * kWarp, threads), threads, 0, L.stream>>>(x, gy, wt, L.B, L.C, L.P, qkv, d);
  } else {
    cubs_spatial_project_nchw<scalar_t, w_t, acc_t, kGrad>
        <<<grid_for(L.B * L.P, threads), threads, 0, L.stream>>>(x, gy, wt, L.B, L.C, L.P, qkv, d);
  }
  RF_CUDA_KERNEL_LAUNCH_CHECK();
}

// The key range of each sample, then the row pass: gate = sigmoid(f) (into gate unless null); with stats
// (training) also the mean of v and the saved statistics; with x (the forward) also y = x * gate, the row pass's
// epilogue. vmean: B scratch values (stats only).
template <typename scalar_t, typename acc_t>
void launch_rows(const Launch& L, const acc_t* qkv, Quad<acc_t>* kr, acc_t* vmean, acc_t* gate, acc_t* stats,
                 const scalar_t* x, scalar_t* y) {
  const int64_t BP = L.B * L.P;
  cubs_spatial_key_range_kernel<acc_t><<<L.B, 256, 0, L.stream>>>(qkv + BP, qkv + 2 * BP, L.P, kr,
                                                                  stats ? vmean : nullptr);
  RF_CUDA_KERNEL_LAUNCH_CHECK();
  const bool vec = x != nullptr && gate_tile_vec<scalar_t>(L.C, x, y);
  with_spatial_tile(L.dtype, [&](auto cfg) {
    using Cfg = decltype(cfg);
    if (stats) {
      cubs_spatial_row_kernel<scalar_t, acc_t, true, Cfg><<<quad_grid<Cfg>(L), Cfg::kThreads, 0, L.stream>>>(
          qkv, kr, vmean, L.B, L.P, gate, stats, x, y, L.C, L.cl, vec);
    } else {
      cubs_spatial_row_kernel<scalar_t, acc_t, false, Cfg><<<quad_grid<Cfg>(L), Cfg::kThreads, 0, L.stream>>>(
          qkv, kr, nullptr, L.B, L.P, gate, nullptr, x, y, L.C, L.cl, vec);
    }
    RF_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void check_launch(const Launch& L) {
  RF_CHECK(L.B <= 65535, "recogfast::cubs_spatial: the CUDA kernel takes at most 65535 samples, x has ", L.B);
}

// The forward; with stats (the training forward) it also saves the per-row statistics.
Tensor spatial_forward_cuda(const char* op, const Tensor& x_, const Tensor& wq, const Tensor& bq, const Tensor& wk,
                            const Tensor& bk, const Tensor& wv, const Tensor& bv, Tensor* stats) {
  detail::check_cubs_spatial_args(x_, wq, bq, wk, bk, wv, bv);
  RF_CHECK(x_.is_cuda(), op, ": x must be a CUDA tensor for the CUDA kernel, got ", device_str(x_.device()));
  const gpu::DeviceGuard guard(x_);
  const auto act = checks::activation(op, x_);
  const Tensor& x = act.x;
  const bool cl = act.channels_last;
  Tensor y = empty_like(x, checks::layout_of(cl));
  if (stats) {
    const std::initializer_list<int64_t> shape = {3, x.size(0), x.size(2) * x.size(3)};
    *stats = x.numel() == 0 ? zeros_as(x, shape, detail::cubs_spatial_stats_dtype(x))
                            : empty_as(x, shape, detail::cubs_spatial_stats_dtype(x));
  }
  if (x.numel() == 0) return y;
  const Launch L{x.size(0), x.size(1), x.size(2) * x.size(3), cl, gpu::current_stream(x_), x.scalar_type()};
  const ScalarType acc_type = acc_dtype(x.scalar_type());
  check_launch(L);
  const Tensor wc[6] = {as_contiguous(wq), bq, as_contiguous(wk), bk, as_contiguous(wv), bv};
  RF_DISPATCH_GATE(x.scalar_type(), wq.scalar_type(), "cubs_spatial_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    const Weights<w_t> wt{{wc[0].const_data_ptr<w_t>(), wc[2].const_data_ptr<w_t>(), wc[4].const_data_ptr<w_t>()},
                          {wc[1].const_data_ptr<w_t>(), wc[3].const_data_ptr<w_t>(), wc[5].const_data_ptr<w_t>()}};
    const int64_t BP = L.B * L.P;
    Tensor scratch = empty_as(x, {3 * BP}, acc_type);  // q, k, v (the gates stay in the row pass)
    Tensor key_range = empty_as(x, {5 * L.B}, acc_type);  // kr (4 a sample), vmean
    acc_t* qkv = scratch.mutable_data_ptr<acc_t>();
    auto* kr = reinterpret_cast<Quad<acc_t>*>(key_range.mutable_data_ptr<acc_t>());
    acc_t* vmean = key_range.mutable_data_ptr<acc_t>() + 4 * L.B;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    launch_project<scalar_t, w_t, acc_t, false>(L, xp, nullptr, wt, qkv, nullptr);
    // the row pass's epilogue reads no weight: one instantiation per x type serves a mixed call too
    launch_rows<scalar_t, acc_t>(L, qkv, kr, vmean, nullptr, stats ? stats->mutable_data_ptr<acc_t>() : nullptr,
                                 xp, y.mutable_data_ptr<scalar_t>());
  });
  return y;
}

Tensor cubs_spatial_cuda(const Tensor& x, const Tensor& wq, const Tensor& bq, const Tensor& wk, const Tensor& bk,
                         const Tensor& wv, const Tensor& bv) {
  return spatial_forward_cuda("recogfast::cubs_spatial", x, wq, bq, wk, bk, wv, bv, nullptr);
}

CubsSpatialTrain cubs_spatial_forward_train_cuda(const Tensor& x, const Tensor& wq, const Tensor& bq,
                                                 const Tensor& wk, const Tensor& bk, const Tensor& wv,
                                                 const Tensor& bv) {
  Tensor stats;
  Tensor y = spatial_forward_cuda("recogfast::_cubs_spatial_forward_train", x, wq, bq, wk, bk, wv, bv, &stats);
  return {y, stats};
}

// The backward from the saved statistics, or (saved == nullptr) with the row pass run first for them.
CubsSpatialGrads spatial_backward_cuda(const char* op, const Tensor& grad_y_, const Tensor& x_, const Tensor* saved,
                                       const Tensor& wq, const Tensor& bq, const Tensor& wk, const Tensor& bk,
                                       const Tensor& wv, const Tensor& bv) {
  detail::check_cubs_spatial_args(x_, wq, bq, wk, bk, wv, bv);
  RF_CHECK(x_.is_cuda(), op, ": x must be a CUDA tensor for the CUDA kernel, got ", device_str(x_.device()));
  const gpu::DeviceGuard guard(x_);
  const auto act = checks::activation(op, x_, grad_y_);
  if (saved) detail::check_cubs_spatial_stats(x_, *saved);
  const Tensor &x = act.x, &gy = act.grad_y;
  const bool cl = act.channels_last;
  Tensor gx = empty_like(x, checks::layout_of(cl));
  const auto g = checks::param_grads({wq, bq, wk, bk, wv, bv}, x.numel() == 0);
  if (x.numel() == 0) {
    return {gx, g[0], g[1], g[2], g[3], g[4], g[5]};
  }
  const Launch L{x.size(0), x.size(1), x.size(2) * x.size(3), cl, gpu::current_stream(x_), x.scalar_type()};
  const ScalarType acc_type = acc_dtype(x.scalar_type());
  check_launch(L);
  const Tensor wc[6] = {as_contiguous(wq), bq, as_contiguous(wk), bk, as_contiguous(wv), bv};
  RF_DISPATCH_GATE(x.scalar_type(), wq.scalar_type(), "cubs_spatial_backward_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    const Weights<w_t> wt{{wc[0].const_data_ptr<w_t>(), wc[2].const_data_ptr<w_t>(), wc[4].const_data_ptr<w_t>()},
                          {wc[1].const_data_ptr<w_t>(), wc[3].const_data_ptr<w_t>(), wc[5].const_data_ptr<w_t>()}};
    const int64_t B = L.B, C = L.C, P = L.P, BP = B * P;
    // q, k, v | d | gate | dq, dk, dv | pack (4) | fr
    Tensor scratch = empty_as(x, {13 * BP}, acc_type);
    acc_t* qkv = scratch.mutable_data_ptr<acc_t>();
    acc_t* d = qkv + 3 * BP;
    acc_t* gate = d + BP;
    acc_t* dqkv = gate + BP;
    auto* pack = reinterpret_cast<Quad<acc_t>*>(dqkv + 3 * BP);  // 16-byte aligned: offset 8·BP elements
    acc_t* fr = dqkv + 3 * BP + 4 * BP;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    launch_project<scalar_t, w_t, acc_t, true>(L, xp, gy.const_data_ptr<scalar_t>(), wt, qkv, d);
    Tensor own;  // the recomputed statistics when none were saved
    if (!saved) {
      own = empty_as(x, {5 * B + 3 * BP}, acc_type);  // kr (4 a sample, first: 16-byte aligned) | vmean | stats
      acc_t* o = own.mutable_data_ptr<acc_t>();
      launch_rows<acc_t, acc_t>(L, qkv, reinterpret_cast<Quad<acc_t>*>(o), o + 4 * B, gate, o + 5 * B, nullptr,
                                nullptr);
    }
    const acc_t* stats = saved ? saved->const_data_ptr<acc_t>() : own.const_data_ptr<acc_t>() + 5 * B;
    cubs_spatial_prep_kernel<acc_t><<<B, 256, 0, L.stream>>>(qkv, stats, d, B, P, gate, dqkv, pack, fr);
    RF_CUDA_KERNEL_LAUNCH_CHECK();
    const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    const bool vec = gate_tile_vec<scalar_t>(C, gyp, gxp);
    with_spatial_tile(L.dtype, [&](auto cfg) {  // dk, dv, and grad_x in its epilogue
      using Cfg = decltype(cfg);
      cubs_spatial_col_kernel<acc_t, Cfg><<<quad_grid<Cfg>(L), Cfg::kThreads, 0, L.stream>>>(
          qkv, pack, fr, B, P, dqkv + BP, dqkv + 2 * BP, gate, dqkv, gyp, gxp, wt.w[0], wt.w[1], wt.w[2],
          x_kind(L.dtype), !std::is_same_v<w_t, scalar_t>, C, cl, vec);
      RF_CUDA_KERNEL_LAUNCH_CHECK();
    });
    int64_t tasks = B;
    Tensor part;
    if (cl) {
      const int64_t cblocks = ceil_div(C, kWarp);
      const int64_t want = std::max<int64_t>(1, ceil_div(num_sms() * 8, B * cblocks));
      const int64_t chunks = std::min<int64_t>({want, ceil_div(P, 32), 65535});
      const int64_t per_chunk = ceil_div(P, chunks);
      const int64_t n_chunks = ceil_div(P, per_chunk);
      tasks = B * n_chunks;
      part = empty_as(x, {tasks * 3 * C}, acc_type);
      cubs_spatial_wgrad_nhwc<scalar_t, acc_t><<<dim3(B * cblocks, n_chunks), dim3(kWarp, 8), 0, L.stream>>>(
          xp, dqkv, B, C, P, per_chunk, part.mutable_data_ptr<acc_t>());
    } else {
      part = empty_as(x, {tasks * 3 * C}, acc_type);
      constexpr int threads = 256;
      cubs_spatial_wgrad_nchw<scalar_t, acc_t><<<ceil_div(B * C * kWarp, threads), threads, 0, L.stream>>>(
          xp, dqkv, B, C, P, part.mutable_data_ptr<acc_t>());
    }
    RF_CUDA_KERNEL_LAUNCH_CHECK();
    cubs_spatial_wgrad_reduce<w_t, acc_t><<<3 * C + 3, 256, 0, L.stream>>>(
        part.const_data_ptr<acc_t>(), tasks, dqkv, BP, C, g[0].mutable_data_ptr<w_t>(), g[2].mutable_data_ptr<w_t>(),
        g[4].mutable_data_ptr<w_t>(), g[1].mutable_data_ptr<w_t>(), g[3].mutable_data_ptr<w_t>(),
        g[5].mutable_data_ptr<w_t>());
    RF_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gx, g[0], g[1], g[2], g[3], g[4], g[5]};
}

CubsSpatialGrads cubs_spatial_backward_cuda(const Tensor& grad_y, const Tensor& x, const Tensor& wq, const Tensor& bq,
                                            const Tensor& wk, const Tensor& bk, const Tensor& wv, const Tensor& bv) {
  return spatial_backward_cuda("recogfast::_cubs_spatial_backward", grad_y, x, nullptr, wq, bq, wk, bk, wv, bv);
}

CubsSpatialGrads cubs_spatial_backward_saved_cuda(const Tensor& grad_y, const Tensor& x, const Tensor& stats,
                                                  const Tensor& wq, const Tensor& bq, const Tensor& wk,
                                                  const Tensor& bk, const Tensor& wv, const Tensor& bv) {
  return spatial_backward_cuda("recogfast::_cubs_spatial_backward_saved", grad_y, x, &stats, wq, bq, wk, bk, wv, bv);
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(recogfast, CUDA, m) {
  m.impl("cubs_spatial", TORCH_BOX(&cubs_spatial_cuda));
  m.impl("_cubs_spatial_backward", TORCH_BOX(&cubs_spatial_backward_cuda));
  m.impl("_cubs_spatial_forward_train", TORCH_BOX(&cubs_spatial_forward_train_cuda));
  m.impl("_cubs_spatial_backward_saved", TORCH_BOX(&cubs_spatial_backward_saved_cuda));
}

}  // namespace recogfast
