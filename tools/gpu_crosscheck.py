"""Cross-check every op's CUDA kernel against its CPU kernel: outputs and gradients, over dtypes
(float64, float32, bfloat16, float16), layouts (NCHW, NHWC), unaligned and strided views, and multi-tile
Multi-Similarity loss sizes.

Rule (the project's): with the float64 CPU kernel as the truth, the device's error in a dtype is at most
twice the CPU kernel's error in that dtype plus one unit of the dtype's resolution on the output's scale
(float64: 1e-9 relative). Every comparison is one JSON record; the exit status is 1 when any fails.

    python tools/gpu_crosscheck.py --out crosscheck.json             # on a GPU: CUDA vs CPU
    python tools/gpu_crosscheck.py --device cpu --small --out x.json  # rehearsal: the harness against itself
    python tools/gpu_crosscheck.py --small                            # the subset compute-sanitizer runs
    RECOGFAST_MS_LOSS_PATH=flash python tools/gpu_crosscheck.py --small --ops ms_loss --dtypes bfloat16 --report-only
                                                # a kernel variant under compute-sanitizer (tools/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import recogfast  # noqa: F401  (loads the extension)

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
EPS = {torch.float64: 1e-9, torch.float32: 2e-6, torch.bfloat16: 2**-8, torch.float16: 2**-11}


def _unaligned(t: torch.Tensor) -> torch.Tensor:
    """The same values at a storage offset of one element: the data pointer is not 16-byte aligned."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


def _layout(x: torch.Tensor, name: str) -> torch.Tensor:
    """x (NCHW values) in one of the layouts the kernels must handle, on x's device."""
    if name == "nchw":
        return x.contiguous()
    if name == "nhwc":
        return x.contiguous(memory_format=torch.channels_last)
    if name == "unaligned":
        return _unaligned(x.contiguous())
    wide = torch.zeros(*x.shape[:3], 2 * x.shape[3] + 1, dtype=x.dtype, device=x.device)  # "strided"
    wide[..., 1::2] = x
    return wide[..., 1::2]


def _attn_cases(small: bool):
    g = torch.Generator().manual_seed(0)

    def rn(*s, scale=1.0):
        return torch.randn(*s, generator=g, dtype=torch.float64) * scale

    # 2x64x56x56: a sample over one CTA's shared memory, a cluster of CTAs a sample in the one-CTA variants
    se_shapes = [(4, 64, 14, 14, 4), (3, 33, 5, 7, 2), (2, 64, 56, 56, 4)] + ([] if small else [(2, 1000, 2, 2, 62),
                                                                                                (8, 256, 7, 7, 16)])
    for B, C, H, W, R in se_shapes:
        w = [rn(R, C, scale=C**-0.5), rn(R, scale=0.1), rn(C, R, scale=R**-0.5), rn(C, scale=0.1)]
        yield "se_gate", (B, C, H, W), rn(B, C, H, W), w
    ch_shapes = [(4, 64, 7, 7, 32), (2, 3, 5, 4, 2), (2, 64, 56, 56, 32)] + ([] if small else [(2, 256, 14, 14, 128),
                                                                                                (8, 32, 28, 28, 16)])
    for B, C, H, W, N in ch_shapes:
        w = [rn(N, C, scale=C**-0.5), rn(N, scale=0.1), rn(N, C, scale=C**-0.5), rn(N, scale=0.1),
             rn(N, C, scale=C**-0.5), rn(N, scale=0.1), rn(C, N, scale=N**-0.5), rn(C, scale=0.1)]
        yield "cubs_channel", (B, C, H, W), rn(B, C, H, W), w
    sp_shapes = [(2, 16, 14, 14), (1, 3, 5, 7)] + ([] if small else [(2, 64, 56, 56), (3, 1, 9, 9), (2, 128, 28, 28)])
    for B, C, H, W in sp_shapes:
        w = [rn(C, scale=C**-0.5), rn(1, scale=0.1)] * 3
        w = [t.clone() for t in w]
        yield "cubs_spatial", (B, C, H, W), rn(B, C, H, W), w


def _ms_cases(small: bool):
    g = torch.Generator().manual_seed(1)
    sizes = [(64, 16, 0), (300, 64, 200)] + ([] if small else [(7, 5, 0), (1100, 128, 0), (5000, 128, 0),
                                                                (2048, 512, 3000), (20000, 64, 0)])
    for B, D, R in sizes:
        labels = (torch.arange(B) // 4)[torch.randperm(B, generator=g)]
        e = torch.randn(B, D, generator=g, dtype=torch.float64)
        ref = torch.randn(R, D, generator=g, dtype=torch.float64) if R else None
        ref_labels = torch.randint(0, max(1, B // 4), (R,), generator=g) if R else None
        for mining in (("ms",) if small or B > 1000 else ("ms", "all", "hardest")):
            yield (B, D, R, mining), e, labels, ref, ref_labels


def _run_attn(op: str, x: torch.Tensor, w, gy: torch.Tensor):
    if op == "cubs_spatial_saved":  # Block 2's training forward and the backward from its saved statistics
        y, stats = torch.ops.recogfast._cubs_spatial_forward_train(x, *w)
        return [y, *torch.ops.recogfast._cubs_spatial_backward_saved(gy, x, stats, *w)]
    fn = getattr(torch.ops.recogfast, op)
    leaves = [x.detach().requires_grad_(True)] + [t.detach().requires_grad_(True) for t in w]
    y = fn(*leaves)
    grads = torch.autograd.grad(y, leaves, gy)
    return [y.detach(), *grads]


def _run_ms(e, labels, ref, ref_labels, mining):
    leaves = [e.detach().requires_grad_(True)] + ([ref.detach().requires_grad_(True)] if ref is not None else [])
    loss = torch.ops.recogfast.ms_loss(leaves[0], labels, leaves[1] if ref is not None else None, ref_labels,
                                       2.0, 50.0, 0.5, 0.1, mining, False)[0]
    grads = torch.autograd.grad(loss, leaves)
    return [loss.detach(), *grads]


def _compare(name: str, dtype, outs_dev, outs_cpu, truth) -> list[dict]:
    """Some gradients are zero in exact arithmetic (grad bk of Block 2: softmax ignores a shift of k):
    their rounding noise is measured on the scale of the call's largest gradient, as tests/test_cubs.py does."""
    recs = []
    grad_scale = max((t.abs().max().item() for t in truth[1:] if t.numel()), default=0.0)
    for i, (d, c, t) in enumerate(zip(outs_dev, outs_cpu, truth)):
        t = t.double().cpu()
        scale = max(t.abs().max().item() if t.numel() else 0.0, 1e-30)
        if i > 0 and scale < 1e-9 * grad_scale:
            scale = grad_scale
        err_dev = (d.double().cpu() - t).abs().max().item() if t.numel() else 0.0
        err_cpu = (c.double().cpu() - t).abs().max().item() if t.numel() else 0.0
        bound = 2 * err_cpu + EPS[dtype] * scale
        ok = bool(err_dev <= bound) and d.shape == t.shape
        recs.append(dict(case=name, dtype=str(dtype).replace("torch.", ""), output=i, err_device=err_dev,
                         err_cpu=err_cpu, scale=scale, bound=bound, ok=ok))
    return recs


OPS = ("se_gate", "cubs_channel", "cubs_spatial", "cubs_spatial_saved", "ms_loss")


def crosscheck(device: str, small: bool, dtypes, tiny: bool = False, ops=OPS) -> list[dict]:
    """The records of every comparison of `ops` (cubs_spatial_saved: Block 2's training forward and saved-statistics
    backward, on cubs_spatial's cases and truth)."""
    recs, seen = [], set()
    for op, shape, x64, w64 in _attn_cases(small):
        if tiny and op in seen:
            continue
        seen.add(op)
        variants = [v for v in ((op, "cubs_spatial_saved") if op == "cubs_spatial" else (op,)) if v in ops]
        if not variants:
            continue
        gy64 = torch.randn(x64.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        truth = _run_attn(op, x64, w64, gy64)
        for dtype in dtypes:
            for layout in ("nchw", "nhwc") if small else ("nchw", "nhwc", "unaligned", "strided"):
                w = [t.to(dtype) for t in w64]
                gy = gy64.to(dtype)
                for v in variants:
                    cpu = _run_attn(v, _layout(x64.to(dtype), layout), w, gy)
                    dev = _run_attn(v, _layout(x64.to(dtype).to(device), layout), [t.to(device) for t in w],
                                    gy.to(device))
                    if layout == "nhwc" and x64.shape[1] > 1 and x64.shape[2] * x64.shape[3] > 1 and \
                            not dev[0].is_contiguous(memory_format=torch.channels_last):
                        recs.append(dict(case=f"{v} {shape} {layout}", dtype=str(dtype), output=0, ok=False,
                                         error="output lost channels_last"))
                    recs += _compare(f"{v} {shape} {layout}", dtype, dev, cpu, truth)
    if "ms_loss" not in ops:
        return recs
    for (B, D, R, mining), e64, labels, ref64, rl in _ms_cases(small):
        if tiny and "ms_loss" in seen:
            continue
        seen.add("ms_loss")
        truth = _run_ms(e64, labels, ref64, rl, mining)
        for dtype in dtypes:
            e, ref = e64.to(dtype), (ref64.to(dtype) if ref64 is not None else None)
            cpu = _run_ms(e, labels, ref, rl, mining)
            dev = _run_ms(e.to(device), labels.to(device), ref.to(device) if ref is not None else None,
                          rl.to(device) if rl is not None else None, mining)
            recs += _compare(f"ms_loss B={B} D={D} R={R} {mining}", dtype, dev, cpu, truth)
    return recs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="few shapes, fp32 and bf16 (for compute-sanitizer)")
    ap.add_argument("--tiny", action="store_true", help="with --small: one shape per op, fp32 only (racecheck)")
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, of {', '.join(OPS)}")
    ap.add_argument("--dtypes", help="comma-separated torch dtype names (default: all; --small fp32 and bf16; "
                    "--tiny fp32)")
    ap.add_argument("--report-only", action="store_true",
                    help="print value mismatches but exit 0 (under compute-sanitizer, whose exit code is the verdict, "
                    "for kernel variants whose values the tests check)")
    ap.add_argument("--out", help="write the records as JSON here")
    args = ap.parse_args(argv)
    ops = tuple(args.ops.split(","))
    if set(ops) - set(OPS):
        ap.error(f"--ops: unknown {', '.join(sorted(set(ops) - set(OPS)))}; known: {', '.join(OPS)}")
    dtypes = [torch.float32] if args.tiny else [torch.float32, torch.bfloat16] if args.small else DTYPES
    if args.dtypes:
        try:
            dtypes = [getattr(torch, n) for n in args.dtypes.split(",")]
        except AttributeError as exc:
            ap.error(f"--dtypes: {exc}")
    t0 = time.perf_counter()
    recs = crosscheck(args.device, args.small or args.tiny, dtypes, tiny=args.tiny, ops=ops)
    bad = [r for r in recs if not r["ok"]]
    summary = dict(device=args.device, small=args.small, comparisons=len(recs), failed=len(bad),
                   seconds=round(time.perf_counter() - t0, 1),
                   worst=max((r.get("err_device", 0) / r["bound"] for r in recs if r.get("bound")), default=0.0))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(summary=summary, records=recs), f, indent=1)
    print(f"crosscheck {args.device}: {len(recs)} comparisons, {len(bad)} failed, worst error/bound "
          f"{summary['worst']:.3f}, {summary['seconds']} s")
    for r in bad[:40]:
        print("FAIL", json.dumps(r))
    return 1 if bad and not args.report_only else 0


if __name__ == "__main__":
    sys.exit(main())
