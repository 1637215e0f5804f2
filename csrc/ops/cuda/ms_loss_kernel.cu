// Multi-Similarity loss on CUDA, forward and backward, without the B x M similarity matrix. Two paths: on
// sm_80+ for bf16/fp16/fp32 the flash kernels (ms_loss_flash.cuh: S tiles on tensor cores, consumed in registers;
// the choice is ms_loss_flash_host.cuh's use_flash), elsewhere the tiles path below. Tiles path: the products run
// in cuBLAS (tensor cores for bf16/fp16, and for fp32 when torch allows TF32), custom kernels do only the
// per-row reductions and the element-wise work, and the backward pass has no atomics (deterministic). This file
// is the host side (tiles, GEMMs, launches); the kernels named below are in ms_loss_rows.cuh.
//
// Candidates are the B anchors followed by the R reference rows (M = B + R). Rows are L2-normalised inside:
// c = x / max(|x|, 1e-12). The GEMM operands:
//   S operand  a copy x' = x · 2^-e of the rows, each scaled by a power of two to a norm in [0.5, 1) — exact,
//              no rounding — with scales inv' = 1 / |x'| in (1, 2]: S_ij = (x'_i · x'_j) · (inv'_i · inv'_j). The
//              products see the exact inputs (so the mining decisions agree with the CPU kernel) and cannot
//              under/overflow in fp32 whatever the norms. Always the copy: choosing raw rows when every norm is
//              in range would need the norms on the host, i.e. a device-to-host sync on every call.
//   W operand  of the backward product G = W·c: the same copy with the column scales folded into W
//              (W'_ij = W_ij · inv'_j stays within ±2, which fp16 holds), so W'·x' = W·c.
// NaN/inf in the inputs: the norms kernel raises a device flag and the loss (and, in the backward pass, the
// gradients) come out NaN, decided on the device — no host sync in a training step. The CPU kernel raises
// instead; RECOGFAST_CHECK_FINITE=1 makes the Python wrapper raise the CPU's error on CUDA too (one sync).
// Products: bf16/fp16 operands with fp32 accumulation and fp32 output (aten::mm.dtype_out, torch >= 2.8);
// fp32 through aten::mm (the dispatcher), which follows torch.backends.cuda.matmul.allow_tf32 / set_float32_matmul_precision
// (TF32 tensor cores when the user allows them, exact fp32 otherwise — then the fp32 SIMT rate bounds it);
// fp64 through aten::mm in fp64. Everything else accumulates in fp32 (fp64 for fp64).
//
// Forward, per block of T anchor rows (T x M fp32 tile of S, T from kTileBytes):
//   GEMM      S_I = x_I · x_Bᵀ (and x_I · x_Rᵀ into the tile's reference part)
//   ms_loss_rows_kernel  one block per row: sweep 1 min positive / max negative similarity (with the
//             first index on ties, for "hardest"), excluding the anchor itself; sweep 2 (same row, in L2) the
//             two mined sums with the shift known from sweep 1 (the largest term is exp(0) = 1), then
//             log_z = softplus(shift + log z). Per-anchor stats [B, 4], hard_idx [B, 2], per-anchor loss [B].
//   loss = sum(per-anchor loss) / B (ms_loss_finish_kernel: one block, fixed order: deterministic).
// Backward, per block of T anchor rows, with the per-anchor stats saved by the forward op:
//   GEMM      S_I again (same shapes and operands as the forward pass: the same values)
//   ms_loss_weights_kernel  W'_I[i, j] = (dL/dS_ij + [j < B] dL/dS_ji) · scale_j  (S is symmetric on the
//             batch block, so row i of S also gives column i; anchor j's thresholds come from the saved
//             stats), in the operand dtype
//   GEMM      G_I = W'_I · x (fp32 out), each anchor row written once — no atomics, no accumulator
//   ms_loss_normalize_backward_kernel  grad_x_I = (g/B)(G - c (c·G)) / |x|, straight into grad_embeddings
// and, only when the reference rows need a gradient (cross-rank mining), per block of T reference rows J:
//   GEMM S_J = x_J · x_Bᵀ, weights W'_J[j, i] = dL/dS_ij · scale_i, GEMM G_J = W'_J · x_B, normalise backward.
//
// Work: 3 GEMMs of B x M x D without reference-set gradient (forward 1, backward 2), 5 with it:
// B = 16384, M = 16384, D = 512: 3 · 2 · B · M · D = 0.82 TFLOP; at the H100 SXM's 989 TFLOP/s dense bf16
// (NVIDIA H100 datasheet) that is a 0.83 ms floor, plus the tile sweeps (B·M·(4 + 4 + 4 + 2) bytes through
// L2: the fp32 S tile written by the GEMM, read twice forward, read once and W written once backward).
// Extra memory (bf16, no reference set): the S tile T·M·4 <= kTileBytes (16 MB), the W tile T·M·2 (8 MB),
// G T·D·4, O(M) norms/scales/labels, and the scaled copy M·D·2 (16 MB at B = 16384): ~41 MB at B = 16384
// (T = 256); fp32 has a 16 MB W tile and a 32 MB copy. The tile is at least two row blocks per SM
// (round_up(2·SMs, 16) rows, within kMaxTileBytes) so that the per-row kernels fill the GPU at large M.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/cuda/ms_loss_flash_host.cuh"
#include "ops/cuda/ms_loss_rows.cuh"
#include "ops/ms_loss.h"

namespace recogfast {
namespace {

using namespace gpu;

// out = a · b with out in the accumulation dtype: cuBLAS through aten::mm; bf16/fp16 operands accumulate and
// store in fp32 (aten::mm.dtype_out). The host emulation (CPU tensors: no mm.dtype) multiplies fp32 copies.
void gemm(Tensor out, const Tensor& a, const Tensor& b) {
  if (a.scalar_type() == out.scalar_type()) {
    mm_out(out, a, b);
    return;
  }
#ifdef RECOGFAST_MS_LOSS_EMULATION
  copy_(out, mm(to_dtype(a, out.scalar_type()), to_dtype(b, out.scalar_type())));
#else
  mm_out_dtype(out, a, b);
#endif
}

// loss = sum(per_anchor) / B in the embeddings' dtype, NaN when a row held NaN/inf (flags): one block, fixed
// order, on the device (no host sync).
template <typename acc_t, typename scalar_t>
__global__ void ms_loss_finish_kernel(const acc_t* __restrict__ per_anchor, int64_t B, const int* __restrict__ flags,
                                      scalar_t* __restrict__ loss) {
  __shared__ acc_t red[kThreads / kWarp];
  acc_t s = 0;
  for (int64_t i = threadIdx.x; i < B; i += blockDim.x) s += per_anchor[i];
  s = block_sum(s, red);
  if (threadIdx.x == 0) loss[0] = static_cast<scalar_t>((flags[0] | flags[1]) ? acc_t(NAN) : s / acc_t(B));
}

// x[0, n) = NaN when a row held NaN/inf (flags): NaN in, NaN out, decided on the device.
template <typename scalar_t>
__global__ void ms_loss_nan_if_kernel(scalar_t* __restrict__ x, int64_t n, const int* __restrict__ flags) {
  if (!(flags[0] | flags[1])) return;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = static_cast<scalar_t>(NAN);
}

template <typename scalar_t>
void nan_if_nonfinite(Tensor& x, const Tensor& flags, cudaStream_t stream) {
  if (x.numel() == 0) return;
  ms_loss_nan_if_kernel<scalar_t><<<grid_for(x.numel(), kThreads), kThreads, 0, stream>>>(
      x.mutable_data_ptr<scalar_t>(), x.numel(), flags.const_data_ptr<int>());
  RF_CUDA_KERNEL_LAUNCH_CHECK();
}

// Rows of a tile with `cols` candidates so that the S tile stays within kTileBytes (at least kMinTileRows;
// multiples of 64 or 16 rows, the GEMMs' tile heights) — but at least two rows per SM, so that the per-row
// kernels (one block a row) keep every SM busy, as long as that tile stays within kMaxTileBytes.
int64_t tile_rows(int64_t cols, int64_t rows, int64_t elem) {
  const int64_t row_bytes = std::max<int64_t>(1, cols * elem);
  int64_t t = std::max(kTileBytes / row_bytes, kMinTileRows);
  t = t >= 64 ? t / 64 * 64 : t >= 16 ? t / 16 * 16 : t;
  const int64_t fill = ceil_div(2 * num_sms(), 16) * 16;
  if (t < fill) t = std::max(t, std::min(fill, kMaxTileBytes / row_bytes / 16 * 16));
  return std::max<int64_t>(1, std::min(t, rows));
}

// Everything a launcher needs about the candidates (see the file comment for the operands).
template <typename scalar_t>
struct Candidates {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  int64_t B = 0, R = 0, M = 0, D = 0;
  Tensor x[2];                // raw rows, contiguous: batch, reference ([0, D] when none)
  Tensor xs[2], xg[2];         // operands of S and of the backward product: x or x · p2
  Tensor norms, inv, p2, inv2;  // [M] acc (see ms_loss_norms_kernel)
  Tensor lab;                  // [M] int64
  Tensor flags;                // [3] int on the device: some batch / reference row holds NaN/inf; [2] a label
                               // does not fit int32 (set by the flash path's narrowing copy)

  // Per-candidate factors that turn a row of an operand (the scaled copy) into its normalised row.
  const acc_t* scale_s() const { return inv2.template const_data_ptr<acc_t>(); }
  const acc_t* scale_g() const { return inv2.template const_data_ptr<acc_t>(); }

  Candidates(const Tensor& emb, const Tensor& labels, const std::optional<Tensor>& ref,
             const std::optional<Tensor>& ref_labels, cudaStream_t stream, bool scaled_copy = true) {
    B = emb.size(0);
    D = emb.size(1);
    R = ref.has_value() ? ref->size(0) : 0;
    M = B + R;
    const ScalarType acc = scalar_type_of<acc_t>();
    x[0] = as_contiguous(emb);
    x[1] = R > 0 ? as_contiguous(*ref) : empty_as(emb, {0, D});
    norms = empty_as(emb, {M}, acc);
    inv = empty_as(emb, {M}, acc);
    p2 = empty_as(emb, {M}, acc);
    inv2 = empty_as(emb, {M}, acc);
    flags = zeros_as(emb, {3}, kInt);
    constexpr int rows_per_block = kThreads / kWarp;
    for (int part = 0; part < 2; ++part) {
      const int64_t rows = part == 0 ? B : R, off = part == 0 ? 0 : B;
      if (rows == 0) continue;
      ms_loss_norms_kernel<scalar_t, acc_t><<<ceil_div(rows, rows_per_block), kThreads, 0, stream>>>(
          x[part].const_data_ptr<scalar_t>(), norms.mutable_data_ptr<acc_t>() + off,
          inv.mutable_data_ptr<acc_t>() + off, p2.mutable_data_ptr<acc_t>() + off,
          inv2.mutable_data_ptr<acc_t>() + off, flags.mutable_data_ptr<int>(), part, rows, D);
      RF_CUDA_KERNEL_LAUNCH_CHECK();
    }
    Tensor c[2];
    for (int part = 0; part < 2 && scaled_copy; ++part) {
      const int64_t rows = part == 0 ? B : R, off = part == 0 ? 0 : B;
      c[part] = empty_as(emb, {rows, D});
      if (rows * D == 0) continue;
      ms_loss_scale_rows_kernel<scalar_t, acc_t><<<grid_for(rows * D, kThreads), kThreads, 0, stream>>>(
          x[part].const_data_ptr<scalar_t>(), p2.const_data_ptr<acc_t>() + off, inv2.const_data_ptr<acc_t>() + off,
          c[part].mutable_data_ptr<scalar_t>(), rows, D);
      RF_CUDA_KERNEL_LAUNCH_CHECK();
    }
    for (int part = 0; part < 2; ++part) xs[part] = xg[part] = c[part];
    lab = empty_as(emb, {M}, kLong);
    Tensor lab_b = narrow(lab, 0, 0, B);
    copy_(lab_b, labels);  // copy_ casts to int64
    if (R > 0) {
      Tensor lab_r = narrow(lab, 0, B, R);
      copy_(lab_r, *ref_labels);
    }
  }
};

Params make_params(int64_t B, int64_t M, Mining mining, double alpha, double beta, double base, double eps) {
  Params p{};
  p.B = B;
  p.M = M;
  p.mining = int(mining);
  p.alpha = alpha;
  p.beta = beta;
  p.base = base;
  p.eps = eps;
  return p;
}

// ref_grad_cache is always empty here (cache_ref_grad is a CPU optimisation; see ms_loss.h).
std::tuple<Tensor, Tensor, Tensor, Tensor> ms_loss_cuda(
    const Tensor& embeddings, const Tensor& labels, const std::optional<Tensor>& ref_embeddings,
    const std::optional<Tensor>& ref_labels, double alpha, double beta, double base, double epsilon,
    std::string_view mining_name, bool /*cache_ref_grad*/, bool allow_tf32) {
  const Mining mining =
      detail::check_ms_loss_args(embeddings, labels, ref_embeddings, ref_labels, alpha, beta, epsilon, mining_name);
  const gpu::DeviceGuard guard(embeddings);
  const int64_t B = embeddings.size(0);
  const auto acc = acc_dtype(embeddings.scalar_type());
  Tensor stats = empty_as(embeddings, {B, 4}, acc);
  Tensor hard_idx = full_as(embeddings, {B, 2}, -1, kLong);
  Tensor ref_grad_cache = empty_as(embeddings, {0}, acc);
  if (B == 0) return {zeros_as(embeddings, {}), stats, hard_idx, ref_grad_cache};
  const cudaStream_t stream = gpu::current_stream(embeddings);
  Tensor loss;
  const bool flash = use_flash(embeddings.scalar_type(), allow_tf32);
  RF_DISPATCH_FLOATING(embeddings.scalar_type(), "ms_loss_cuda", [&] {
    using acc_t = typename Candidates<scalar_t>::acc_t;
    const Candidates<scalar_t> cd(embeddings, labels, ref_embeddings, ref_labels, stream, !flash);
    const int64_t R = cd.R, M = cd.M;
    const Params p = make_params(B, M, mining, alpha, beta, base, epsilon);
    const int64_t T = tile_rows(M, B, sizeof(acc_t));
    Tensor per_anchor = empty_as(embeddings, {B}, acc);
    if constexpr (!std::is_same_v<scalar_t, double>) {
      if (flash)
        with_mma_kind<scalar_t>(allow_tf32, [&](auto k) {
          flash_forward<scalar_t, decltype(k)::value>(cd, p, stats, hard_idx, per_anchor, stream);
        });
    }
    Tensor sbuf = empty_as(embeddings, {flash ? 0 : T * M}, acc);
    for (int64_t i0 = 0; i0 < B && !flash; i0 += T) {
      const int64_t ti = std::min(T, B - i0);
      const Tensor a = narrow(cd.xs[0], 0, i0, ti);
      Tensor se = view(narrow(sbuf, 0, 0, ti * B), {ti, B});
      Tensor sr = view(narrow(sbuf, 0, ti * B, ti * R), {ti, R});
      gemm(se, a, transposed(cd.xs[0]));
      if (R > 0) gemm(sr, a, transposed(cd.xs[1]));
      ms_loss_rows_kernel<acc_t><<<static_cast<unsigned>(ti), kRowThreads, 0, stream>>>(
          se.const_data_ptr<acc_t>(), sr.const_data_ptr<acc_t>(), i0, cd.scale_s(), cd.lab.const_data_ptr<int64_t>(),
          stats.mutable_data_ptr<acc_t>(), hard_idx.mutable_data_ptr<int64_t>(),
          per_anchor.mutable_data_ptr<acc_t>(), p);
      RF_CUDA_KERNEL_LAUNCH_CHECK();
    }
    loss = empty_as(embeddings, {});
    ms_loss_finish_kernel<acc_t, scalar_t><<<1, kThreads, 0, stream>>>(
        per_anchor.const_data_ptr<acc_t>(), B, cd.flags.const_data_ptr<int>(), loss.mutable_data_ptr<scalar_t>());
    RF_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, stats, hard_idx, ref_grad_cache};
}

// Launches the weights kernel on a tile (rows x (nb + nr)).
template <typename acc_t, typename op_t>
void launch_weights(const Tensor& se, const Tensor& sr, int64_t rows, int64_t nb, int64_t nr, int64_t row0,
                    const acc_t* scale_s, const acc_t* scale_g, const Tensor& lab, const Tensor& stats,
                    const Tensor& hard_idx, Tensor& we, Tensor& wr, const Params& p,
                    cudaStream_t stream) {
  const int64_t col_blocks = ceil_div(nb + nr, kThreads);
  const int64_t row_blocks = std::max<int64_t>(1, std::min<int64_t>(rows, std::min<int64_t>(
      65535, ceil_div(num_sms() * 16, col_blocks))));
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(col_blocks, 1 << 20)), static_cast<unsigned>(row_blocks));
  ms_loss_weights_kernel<acc_t, op_t><<<grid, kThreads, 0, stream>>>(
      se.const_data_ptr<acc_t>(), sr.defined() ? sr.const_data_ptr<acc_t>() : nullptr, rows, nb, nr, row0, scale_s,
      scale_g, lab.const_data_ptr<int64_t>(), stats.const_data_ptr<acc_t>(), hard_idx.const_data_ptr<int64_t>(),
      we.mutable_data_ptr<op_t>(), wr.defined() ? wr.mutable_data_ptr<op_t>() : nullptr, p);
  RF_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<Tensor, Tensor> ms_loss_backward_cuda(
    const Tensor& grad_loss, const Tensor& embeddings, const Tensor& labels,
    const std::optional<Tensor>& ref_embeddings, const std::optional<Tensor>& ref_labels,
    const Tensor& stats_, const Tensor& hard_idx_, const Tensor& ref_grad_cache, double alpha,
    double beta, double base, double epsilon, std::string_view mining_name, bool ref_requires_grad, bool allow_tf32) {
  const Mining mining =
      detail::check_ms_loss_args(embeddings, labels, ref_embeddings, ref_labels, alpha, beta, epsilon, mining_name);
  detail::check_ms_loss_backward_args(grad_loss, embeddings, stats_, hard_idx_, ref_grad_cache);
  const gpu::DeviceGuard guard(embeddings);
  const int64_t B = embeddings.size(0), D = embeddings.size(1);
  const int64_t R = ref_embeddings.has_value() ? ref_embeddings->size(0) : 0;
  const bool ref_grad = ref_requires_grad && ref_embeddings.has_value();
  Tensor grad_e = zeros_as(embeddings, {B, D});
  Tensor grad_r = ref_grad ? zeros_as(embeddings, {R, D}) : empty_as(embeddings, {0});
  if (B == 0 || D == 0) return {grad_e, grad_r};
  const cudaStream_t stream = gpu::current_stream(embeddings);
  const auto acc = acc_dtype(embeddings.scalar_type());
  const Tensor stats = as_contiguous(to_dtype(stats_, acc));
  const Tensor hard_idx = as_contiguous(hard_idx_);
  const Tensor g = as_contiguous(to_dtype(reshape(grad_loss, {1}), acc));
  const bool flash = use_flash(embeddings.scalar_type(), allow_tf32);
  RF_DISPATCH_FLOATING(embeddings.scalar_type(), "ms_loss_backward_cuda", [&] {
    using acc_t = typename Candidates<scalar_t>::acc_t;
    const Candidates<scalar_t> cd(embeddings, labels, ref_embeddings, ref_labels, stream, !flash);
    const int64_t M = cd.M;
    const Params p = make_params(B, M, mining, alpha, beta, base, epsilon);
    if constexpr (!std::is_same_v<scalar_t, double>) {
      if (flash) {
        with_mma_kind<scalar_t>(allow_tf32, [&](auto k) {
          flash_backward<scalar_t, decltype(k)::value>(cd, p, stats, hard_idx, g, grad_e, ref_grad ? &grad_r : nullptr,
                                                       stream);
        });
        nan_if_nonfinite<scalar_t>(grad_e, cd.flags, stream);
        if (ref_grad) nan_if_nonfinite<scalar_t>(grad_r, cd.flags, stream);
        return;
      }
    }
    const ScalarType acc_type = acc;
    constexpr int rows_per_block = kThreads / kWarp;
    // Anchor rows: all M candidates per row.
    {
      const int64_t T = tile_rows(M, B, sizeof(acc_t));
      Tensor sbuf = empty_as(embeddings, {T * M}, acc_type);
      Tensor wbuf = empty_as(embeddings, {T * M});
      Tensor gbuf = empty_as(embeddings, {2, T, D}, acc_type);
      for (int64_t i0 = 0; i0 < B; i0 += T) {
        const int64_t ti = std::min(T, B - i0);
        const Tensor a = narrow(cd.xs[0], 0, i0, ti);
        Tensor se = view(narrow(sbuf, 0, 0, ti * B), {ti, B});
        Tensor sr = view(narrow(sbuf, 0, ti * B, ti * R), {ti, R});
        Tensor we = view(narrow(wbuf, 0, 0, ti * B), {ti, B});
        Tensor wr = view(narrow(wbuf, 0, ti * B, ti * R), {ti, R});
        gemm(se, a, transposed(cd.xs[0]));
        if (R > 0) gemm(sr, a, transposed(cd.xs[1]));
        launch_weights<acc_t, scalar_t>(se, sr, ti, B, R, i0, cd.scale_s(), cd.scale_g(), cd.lab, stats, hard_idx,
                                        we, wr, p, stream);
        Tensor g1 = narrow(torch::stable::select(gbuf, 0, 0), 0, 0, ti);
        Tensor g2 = narrow(torch::stable::select(gbuf, 0, 1), 0, 0, ti);
        gemm(g1, we, cd.xg[0]);
        if (R > 0) gemm(g2, wr, cd.xg[1]);
        ms_loss_normalize_backward_kernel<scalar_t, acc_t><<<ceil_div(ti, rows_per_block), kThreads, 0, stream>>>(
            g1.const_data_ptr<acc_t>(), R > 0 ? g2.const_data_ptr<acc_t>() : nullptr,
            cd.x[0].const_data_ptr<scalar_t>() + i0 * D, cd.norms.const_data_ptr<acc_t>() + i0,
            g.const_data_ptr<acc_t>(), B, grad_e.mutable_data_ptr<scalar_t>() + i0 * D, ti, D);
        RF_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    // Reference rows (only when they need a gradient): rows are candidates B + j, columns the B anchors.
    if (ref_grad && R > 0) {
      const int64_t T = tile_rows(B, R, sizeof(acc_t));
      Tensor sbuf = empty_as(embeddings, {T, B}, acc_type);
      Tensor wbuf = empty_as(embeddings, {T, B});
      Tensor gbuf = empty_as(embeddings, {T, D}, acc_type);
      const Tensor none;
      Tensor none_w;
      for (int64_t j0 = 0; j0 < R; j0 += T) {
        const int64_t tj = std::min(T, R - j0);
        Tensor s = narrow(sbuf, 0, 0, tj), w = narrow(wbuf, 0, 0, tj), g1 = narrow(gbuf, 0, 0, tj);
        gemm(s, narrow(cd.xs[1], 0, j0, tj), transposed(cd.xs[0]));
        launch_weights<acc_t, scalar_t>(s, none, tj, B, 0, B + j0, cd.scale_s(), cd.scale_g(), cd.lab, stats,
                                        hard_idx, w, none_w, p, stream);
        gemm(g1, w, cd.xg[0]);
        ms_loss_normalize_backward_kernel<scalar_t, acc_t><<<ceil_div(tj, rows_per_block), kThreads, 0, stream>>>(
            g1.const_data_ptr<acc_t>(), nullptr, cd.x[1].const_data_ptr<scalar_t>() + j0 * D,
            cd.norms.const_data_ptr<acc_t>() + B + j0, g.const_data_ptr<acc_t>(), B,
            grad_r.mutable_data_ptr<scalar_t>() + j0 * D, tj, D);
        RF_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    nan_if_nonfinite<scalar_t>(grad_e, cd.flags, stream);  // NaN/inf in: NaN out, decided on the device
    if (ref_grad) nan_if_nonfinite<scalar_t>(grad_r, cd.flags, stream);
  });
  return {grad_e, grad_r};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(recogfast, CUDA, m) {
  m.impl("ms_loss", TORCH_BOX(&ms_loss_cuda));
  m.impl("_ms_loss_backward", TORCH_BOX(&ms_loss_backward_cuda));
}

}  // namespace recogfast
