// Multi-Similarity loss on CUDA, forward and backward, without the B x M similarity matrix: the products run
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
// fp32 through at::mm, which follows torch.backends.cuda.matmul.allow_tf32 / set_float32_matmul_precision
// (TF32 tensor cores when the user allows them, exact fp32 otherwise — then the fp32 SIMT rate bounds it);
// fp64 through at::mm in fp64. Everything else accumulates in fp32 (fp64 for fp64).
//
// Forward, per block of T anchor rows (T x M fp32 tile of S, T from kTileBytes):
//   GEMM      S_I = x_I · x_Bᵀ (and x_I · x_Rᵀ into the tile's reference part)
//   ms_loss_rows_kernel  one block per row: sweep 1 min positive / max negative similarity (with the
//             first index on ties, for "hardest"), excluding the anchor itself; sweep 2 (same row, in L2) the
//             two mined sums with the shift known from sweep 1 (the largest term is exp(0) = 1), then
//             log_z = softplus(shift + log z). Per-anchor stats [B, 4], hard_idx [B, 2], per-anchor loss [B].
//   loss = sum(per-anchor loss) / B (at::sum: deterministic).
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
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/cuda/ms_loss_rows.cuh"
#include "ops/ms_loss.h"

namespace recogfast {
namespace {

using namespace gpu;

// out = a · b with out in the accumulation dtype: cuBLAS through at::mm; bf16/fp16 operands accumulate and
// store in fp32 (aten::mm.dtype_out). The host emulation (CPU tensors: no mm.dtype) multiplies fp32 copies.
void gemm(at::Tensor out, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == out.scalar_type()) {
    at::mm_out(out, a, b);
    return;
  }
#ifdef RECOGFAST_MS_LOSS_EMULATION
  out.copy_(at::mm(a.to(out.scalar_type()), b.to(out.scalar_type())));
#else
  at::mm_out(out, a, b, out.scalar_type());
#endif
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
  at::Tensor x[2];                // raw rows, contiguous: batch, reference ([0, D] when none)
  at::Tensor xs[2], xg[2];         // operands of S and of the backward product: x or x · p2
  at::Tensor norms, inv, p2, inv2;  // [M] acc (see ms_loss_norms_kernel)
  at::Tensor lab;                  // [M] int64
  at::Tensor nonfinite;            // 0-dim bool on the device: some row holds NaN/inf

  // Per-candidate factors that turn a row of an operand (the scaled copy) into its normalised row.
  const acc_t* scale_s() const { return inv2.template const_data_ptr<acc_t>(); }
  const acc_t* scale_g() const { return inv2.template const_data_ptr<acc_t>(); }

  Candidates(const at::Tensor& emb, const at::Tensor& labels, const std::optional<at::Tensor>& ref,
             const std::optional<at::Tensor>& ref_labels, cudaStream_t stream) {
    B = emb.size(0);
    D = emb.size(1);
    R = ref.has_value() ? ref->size(0) : 0;
    M = B + R;
    const auto acc = emb.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    x[0] = emb.contiguous();
    x[1] = R > 0 ? ref->contiguous() : at::empty({0, D}, emb.options());
    norms = at::empty({M}, acc);
    inv = at::empty({M}, acc);
    p2 = at::empty({M}, acc);
    inv2 = at::empty({M}, acc);
    at::Tensor flags = at::zeros({2}, emb.options().dtype(at::kInt));
    constexpr int rows_per_block = kThreads / kWarp;
    for (int part = 0; part < 2; ++part) {
      const int64_t rows = part == 0 ? B : R, off = part == 0 ? 0 : B;
      if (rows == 0) continue;
      ms_loss_norms_kernel<scalar_t, acc_t><<<ceil_div(rows, rows_per_block), kThreads, 0, stream>>>(
          x[part].const_data_ptr<scalar_t>(), norms.mutable_data_ptr<acc_t>() + off,
          inv.mutable_data_ptr<acc_t>() + off, p2.mutable_data_ptr<acc_t>() + off,
          inv2.mutable_data_ptr<acc_t>() + off, flags.mutable_data_ptr<int>(), part, rows, D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    nonfinite = flags.any();  // stays on the device: no sync
    at::Tensor c[2];
    for (int part = 0; part < 2; ++part) {
      const int64_t rows = part == 0 ? B : R, off = part == 0 ? 0 : B;
      c[part] = at::empty({rows, D}, emb.options());
      if (rows * D == 0) continue;
      ms_loss_scale_rows_kernel<scalar_t, acc_t><<<grid_for(rows * D, kThreads), kThreads, 0, stream>>>(
          x[part].const_data_ptr<scalar_t>(), p2.const_data_ptr<acc_t>() + off, inv2.const_data_ptr<acc_t>() + off,
          c[part].mutable_data_ptr<scalar_t>(), rows, D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    for (int part = 0; part < 2; ++part) xs[part] = xg[part] = c[part];
    lab = R > 0 ? at::cat({labels.to(at::kLong), ref_labels->to(at::kLong)}).contiguous()
                : labels.to(at::kLong).contiguous();
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
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ms_loss_cuda(
    const at::Tensor& embeddings, const at::Tensor& labels, const std::optional<at::Tensor>& ref_embeddings,
    const std::optional<at::Tensor>& ref_labels, double alpha, double beta, double base, double epsilon,
    std::string_view mining_name, bool /*cache_ref_grad*/) {
  const Mining mining =
      detail::check_ms_loss_args(embeddings, labels, ref_embeddings, ref_labels, alpha, beta, epsilon, mining_name);
  const c10::cuda::CUDAGuard guard(embeddings.device());
  const int64_t B = embeddings.size(0);
  const auto acc = acc_dtype(embeddings.scalar_type());
  at::Tensor stats = at::empty({B, 4}, embeddings.options().dtype(acc));
  at::Tensor hard_idx = at::full({B, 2}, -1, embeddings.options().dtype(at::kLong));
  at::Tensor ref_grad_cache = at::empty({0}, embeddings.options().dtype(acc));
  if (B == 0) return {at::zeros({}, embeddings.options()), stats, hard_idx, ref_grad_cache};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor loss;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, embeddings.scalar_type(), "ms_loss_cuda", [&] {
    using acc_t = typename Candidates<scalar_t>::acc_t;
    const Candidates<scalar_t> cd(embeddings, labels, ref_embeddings, ref_labels, stream);
    const int64_t R = cd.R, M = cd.M;
    const Params p = make_params(B, M, mining, alpha, beta, base, epsilon);
    const int64_t T = tile_rows(M, B, sizeof(acc_t));
    at::Tensor sbuf = at::empty({T * M}, embeddings.options().dtype(acc));
    at::Tensor per_anchor = at::empty({B}, embeddings.options().dtype(acc));
    for (int64_t i0 = 0; i0 < B; i0 += T) {
      const int64_t ti = std::min(T, B - i0);
      const at::Tensor a = cd.xs[0].narrow(0, i0, ti);
      at::Tensor se = sbuf.narrow(0, 0, ti * B).view({ti, B});
      at::Tensor sr = sbuf.narrow(0, ti * B, ti * R).view({ti, R});
      gemm(se, a, cd.xs[0].t());
      if (R > 0) gemm(sr, a, cd.xs[1].t());
      ms_loss_rows_kernel<acc_t><<<static_cast<unsigned>(ti), kRowThreads, 0, stream>>>(
          se.const_data_ptr<acc_t>(), sr.const_data_ptr<acc_t>(), i0, cd.scale_s(), cd.lab.const_data_ptr<int64_t>(),
          stats.mutable_data_ptr<acc_t>(), hard_idx.mutable_data_ptr<int64_t>(),
          per_anchor.mutable_data_ptr<acc_t>(), p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    loss = at::sum(per_anchor).div_(double(B)).masked_fill_(cd.nonfinite, NAN).to(embeddings.scalar_type());
  });
  return {loss, stats, hard_idx, ref_grad_cache};
}

// Launches the weights kernel on a tile (rows x (nb + nr)).
template <typename acc_t, typename op_t>
void launch_weights(const at::Tensor& se, const at::Tensor& sr, int64_t rows, int64_t nb, int64_t nr, int64_t row0,
                    const acc_t* scale_s, const acc_t* scale_g, const at::Tensor& lab, const at::Tensor& stats,
                    const at::Tensor& hard_idx, at::Tensor& we, at::Tensor& wr, const Params& p,
                    cudaStream_t stream) {
  const int64_t col_blocks = ceil_div(nb + nr, kThreads);
  const int64_t row_blocks = std::max<int64_t>(1, std::min<int64_t>(rows, std::min<int64_t>(
      65535, ceil_div(num_sms() * 16, col_blocks))));
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(col_blocks, 1 << 20)), static_cast<unsigned>(row_blocks));
  ms_loss_weights_kernel<acc_t, op_t><<<grid, kThreads, 0, stream>>>(
      se.const_data_ptr<acc_t>(), sr.defined() ? sr.const_data_ptr<acc_t>() : nullptr, rows, nb, nr, row0, scale_s,
      scale_g, lab.const_data_ptr<int64_t>(), stats.const_data_ptr<acc_t>(), hard_idx.const_data_ptr<int64_t>(),
      we.mutable_data_ptr<op_t>(), wr.defined() ? wr.mutable_data_ptr<op_t>() : nullptr, p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> ms_loss_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& embeddings, const at::Tensor& labels,
    const std::optional<at::Tensor>& ref_embeddings, const std::optional<at::Tensor>& ref_labels,
    const at::Tensor& stats_, const at::Tensor& hard_idx_, const at::Tensor& ref_grad_cache, double alpha,
    double beta, double base, double epsilon, std::string_view mining_name, bool ref_requires_grad) {
  const Mining mining =
      detail::check_ms_loss_args(embeddings, labels, ref_embeddings, ref_labels, alpha, beta, epsilon, mining_name);
  detail::check_ms_loss_backward_args(grad_loss, embeddings, stats_, hard_idx_, ref_grad_cache);
  const c10::cuda::CUDAGuard guard(embeddings.device());
  const int64_t B = embeddings.size(0), D = embeddings.size(1);
  const int64_t R = ref_embeddings.has_value() ? ref_embeddings->size(0) : 0;
  const bool ref_grad = ref_requires_grad && ref_embeddings.has_value();
  at::Tensor grad_e = at::zeros({B, D}, embeddings.options());
  at::Tensor grad_r = ref_grad ? at::zeros({R, D}, embeddings.options()) : at::empty({0}, embeddings.options());
  if (B == 0 || D == 0) return {grad_e, grad_r};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto acc = acc_dtype(embeddings.scalar_type());
  const at::Tensor stats = stats_.to(acc).contiguous();
  const at::Tensor hard_idx = hard_idx_.contiguous();
  const at::Tensor g = grad_loss.reshape({1}).to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, embeddings.scalar_type(), "ms_loss_backward_cuda", [&] {
    using acc_t = typename Candidates<scalar_t>::acc_t;
    const Candidates<scalar_t> cd(embeddings, labels, ref_embeddings, ref_labels, stream);
    const int64_t M = cd.M;
    const Params p = make_params(B, M, mining, alpha, beta, base, epsilon);
    const auto acc_opts = embeddings.options().dtype(acc);
    constexpr int rows_per_block = kThreads / kWarp;
    // Anchor rows: all M candidates per row.
    {
      const int64_t T = tile_rows(M, B, sizeof(acc_t));
      at::Tensor sbuf = at::empty({T * M}, acc_opts);
      at::Tensor wbuf = at::empty({T * M}, embeddings.options());
      at::Tensor gbuf = at::empty({2, T, D}, acc_opts);
      for (int64_t i0 = 0; i0 < B; i0 += T) {
        const int64_t ti = std::min(T, B - i0);
        const at::Tensor a = cd.xs[0].narrow(0, i0, ti);
        at::Tensor se = sbuf.narrow(0, 0, ti * B).view({ti, B});
        at::Tensor sr = sbuf.narrow(0, ti * B, ti * R).view({ti, R});
        at::Tensor we = wbuf.narrow(0, 0, ti * B).view({ti, B});
        at::Tensor wr = wbuf.narrow(0, ti * B, ti * R).view({ti, R});
        gemm(se, a, cd.xs[0].t());
        if (R > 0) gemm(sr, a, cd.xs[1].t());
        launch_weights<acc_t, scalar_t>(se, sr, ti, B, R, i0, cd.scale_s(), cd.scale_g(), cd.lab, stats, hard_idx,
                                        we, wr, p, stream);
        at::Tensor g1 = gbuf[0].narrow(0, 0, ti), g2 = gbuf[1].narrow(0, 0, ti);
        gemm(g1, we, cd.xg[0]);
        if (R > 0) gemm(g2, wr, cd.xg[1]);
        ms_loss_normalize_backward_kernel<scalar_t, acc_t><<<ceil_div(ti, rows_per_block), kThreads, 0, stream>>>(
            g1.const_data_ptr<acc_t>(), R > 0 ? g2.const_data_ptr<acc_t>() : nullptr,
            cd.x[0].const_data_ptr<scalar_t>() + i0 * D, cd.norms.const_data_ptr<acc_t>() + i0,
            g.const_data_ptr<acc_t>(), B, grad_e.mutable_data_ptr<scalar_t>() + i0 * D, ti, D);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    // Reference rows (only when they need a gradient): rows are candidates B + j, columns the B anchors.
    if (ref_grad && R > 0) {
      const int64_t T = tile_rows(B, R, sizeof(acc_t));
      at::Tensor sbuf = at::empty({T, B}, acc_opts);
      at::Tensor wbuf = at::empty({T, B}, embeddings.options());
      at::Tensor gbuf = at::empty({T, D}, acc_opts);
      const at::Tensor none;
      at::Tensor none_w;
      for (int64_t j0 = 0; j0 < R; j0 += T) {
        const int64_t tj = std::min(T, R - j0);
        at::Tensor s = sbuf.narrow(0, 0, tj), w = wbuf.narrow(0, 0, tj), g1 = gbuf.narrow(0, 0, tj);
        gemm(s, cd.xs[1].narrow(0, j0, tj), cd.xs[0].t());
        launch_weights<acc_t, scalar_t>(s, none, tj, B, 0, B + j0, cd.scale_s(), cd.scale_g(), cd.lab, stats,
                                        hard_idx, w, none_w, p, stream);
        gemm(g1, w, cd.xg[0]);
        ms_loss_normalize_backward_kernel<scalar_t, acc_t><<<ceil_div(tj, rows_per_block), kThreads, 0, stream>>>(
            g1.const_data_ptr<acc_t>(), nullptr, cd.x[1].const_data_ptr<scalar_t>() + j0 * D,
            cd.norms.const_data_ptr<acc_t>() + B + j0, g.const_data_ptr<acc_t>(), B,
            grad_r.mutable_data_ptr<scalar_t>() + j0 * D, tj, D);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    grad_e.masked_fill_(cd.nonfinite, NAN);  // NaN/inf in: NaN out, decided on the device
    if (ref_grad) grad_r.masked_fill_(cd.nonfinite, NAN);
  });
  return {grad_e, grad_r};
}

}  // namespace

TORCH_LIBRARY_IMPL(recogfast, CUDA, m) {
  m.impl("ms_loss", &ms_loss_cuda);
  m.impl("_ms_loss_backward", &ms_loss_backward_cuda);
}

}  // namespace recogfast
