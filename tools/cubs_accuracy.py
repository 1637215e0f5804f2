"""What tools/repro_bq.py (CUBS Block 2) and tools/repro_b1.py (Block 1) share: one fp32 fwd+bwd of the kernel
and of the reference against the float64 truth, the tests' rules per tensor, and the table over seeds.

Per tensor the ratio err_kernel / max(err_ref, floor) (floor = 1e-7 x the tensor's scale); the tests' fp32
rule err <= 2e-5 scale + 2 err_ref + 1e-6 (tests/test_cubs.py; a gradient whose scale is below 1e-9 of the
call's largest gradient is scaled by that one); the seeded tests' strict rule err <= 2 err_ref + eps32 x the
call's largest gradient (for y: eps32 x max |y|).
"""
import sys

import torch

EPS32 = torch.finfo(torch.float32).eps


def run(fn, args, gy):
    """y and the gradients of every argument for the cotangent gy."""
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    y = fn(*leaves)
    return [y.detach(), *torch.autograd.grad(y, leaves, gy)]


def compare(kernel, reference, a64, gy64):
    """Rows (err, err_ref, scale, ratio, rule ok, strict ok) per output for float64 inputs a64, gy64."""
    truth = run(reference, a64, gy64)
    a32, gy32 = [a.float() for a in a64], gy64.float()
    ker, ref = run(kernel, a32, gy32), run(reference, a32, gy32)
    gscale = max(t.abs().max().item() for t in truth[1:])
    rows = []
    for i in range(len(truth)):
        scale = truth[i].abs().max().item()
        if i > 0 and scale < 1e-9 * gscale:
            scale = gscale
        e = (ker[i].double() - truth[i]).abs().max().item()
        r = (ref[i].double() - truth[i]).abs().max().item()
        ok = e <= 2e-5 * scale + 2 * r + 1e-6
        strict = e <= 2 * r + EPS32 * (scale if i == 0 else gscale)
        rows.append((e, r, scale, e / max(r, 1e-7 * scale), ok, strict))
    return rows


def report(title, names, per_seed):
    """Prints the median / p90 / worst ratio, the worst seed and the rule failures per tensor over
    `per_seed`, an iterable of (seed, rows of `compare`)."""
    worst = [(0.0, None, (0.0, 0.0, 0.0))] * len(names)
    fails = [[] for _ in names]
    sfails = [[] for _ in names]
    ratios = [[] for _ in names]
    n = 0
    for seed, rows in per_seed:
        n += 1
        for i, (e, r, sc, ratio, ok, strict) in enumerate(rows):
            ratios[i].append(ratio)
            if ratio > worst[i][0]:
                worst[i] = (ratio, seed, (e, r, sc))
            if not ok:
                fails[i].append(seed)
            if not strict:
                sfails[i].append(seed)
    print(f"{title} ({n} seeds)")
    for i, nm in enumerate(names):
        ratio, seed, (e, r, sc) = worst[i]
        f, sf, rs = fails[i], sfails[i], sorted(ratios[i])
        print(f"  {nm:4s} median {rs[len(rs) // 2]:5.2f} p90 {rs[len(rs) * 9 // 10]:6.2f} worst {ratio:7.2f}"
              f" (seed {seed}: err {e:.2e}, ref {r:.2e}, scale {sc:.3g})"
              f"  rule fails {len(f)}{' ' + str(f[:6]) if f else ''}"
              f"  strict fails {len(sf)}{' ' + str(sf[:6]) if sf else ''}")
    sys.stdout.flush()
