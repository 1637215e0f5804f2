"""Time every CPU op of two builds of recogfast in one run, interleaved, and print the ratio B / A.

    python tools/bench_ab.py A_TREE B_TREE [--rounds 5] [--threads 2]

Each tree is a source checkout with its extension built in place (`setup.py build_ext --inplace`). Every
round starts one fresh process per tree and case (so the two builds alternate and share the machine's
drift), times forward + backward of the case with the median of several repetitions, and the table gives
the median over rounds per tree and the minimum (the least disturbed round, for a shared machine). Used for refactors of csrc/ that must not cost speed (issue 17: no op
may move beyond noise; issue 20: no op may lose more than 5 %) and for kernel changes that must show a gain
(issue 25: CUBS Block 1's accuracy fix, Block 2 in two passes):

    OMP_NUM_THREADS=1 python tools/bench_ab.py A B --threads 1 --clock cpu --only cubs_spatial --modes fwd+bwd,fwd

``--modes`` fwd+bwd (forward and backward, the default) and/or fwd (forward under no_grad); ``--clock cpu``
times with time.process_time (CPU time: a loaded machine's waiting does not count) instead of the wall clock.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

# (name, python expression building `args` and `fn`), timed as fn(*args).backward() on the CPU, float32.
CASES = {
    "se_gate 32x256x28x28": (
        "x = torch.randn(32, 256, 28, 28, requires_grad=True); C, R = 256, 16\n"
        "w = [torch.randn(R, C) / 16, torch.zeros(R), torch.randn(C, R) / 4, torch.zeros(C)]\n"
        "fn = lambda: torch.ops.recogfast.se_gate(x, *w).sum()"),
    "cubs_channel 32x256x14x14": (
        "x = torch.randn(32, 256, 14, 14, requires_grad=True); C, N = 256, 128\n"
        "w = [torch.randn(N, C) / 16, torch.zeros(N), torch.randn(N, C) / 16, torch.zeros(N),"
        " torch.randn(N, C) / 16, torch.zeros(N), torch.randn(C, N) / 11, torch.zeros(C)]\n"
        "fn = lambda: torch.ops.recogfast.cubs_channel(x, *w).sum()"),
    "cubs_spatial 8x64x56x56": (
        "x = torch.randn(8, 64, 56, 56, requires_grad=True); C = 64\n"
        "w = [torch.randn(C) / 8, torch.zeros(1), torch.randn(C) / 8, torch.zeros(1), torch.randn(C) / 8, torch.zeros(1)]\n"
        "fn = lambda: torch.ops.recogfast.cubs_spatial(x, *w).sum()"),
    # the wrappers' fused path (what the modules run): Block 2's training forward with saved statistics
    **{f"cubs_spatial wrapper {B}x{C}x{H}x{W}": (
        f"x = torch.randn({B}, {C}, {H}, {W}, requires_grad=True); C = {C}\n"
        "w = [t.requires_grad_() for _ in range(3) for t in (torch.randn(C) / C ** 0.5, torch.zeros(1))]\n"
        "fn = lambda: recogfast.ops.cubs_spatial(x, *w, impl='fused').sum()")
       for B, C, H, W in ((8, 64, 56, 56), (16, 128, 28, 28), (4, 64, 7, 7))},
    **{f"cubs_channel {B}x{C}x{H}x{W}": (
        f"x = torch.randn({B}, {C}, {H}, {W}, requires_grad=True); C, N = {C}, {C // 2}\n"
        "w = [torch.randn(N, C) * 2 / C ** 0.5, 0.3 * torch.randn(N)] * 3 + [torch.randn(C, N) * 2 / N ** 0.5,"
        " 0.3 * torch.randn(C)]\n"
        "w = [t.clone().requires_grad_(True) for t in w]\n"
        "fn = lambda: torch.ops.recogfast.cubs_channel(x, *w).sum()")
       for B, C, H, W in ((8, 64, 56, 56), (8, 256, 14, 14), (32, 512, 7, 7))},
    "ms_loss B=2048 D=512": (
        "x = torch.randn(2048, 512, requires_grad=True); lab = torch.arange(2048) // 4\n"
        "fn = lambda: recogfast.ops.ms_loss(x, lab, impl='fused')"),
    "ms_loss B=256 R=16384 D=512": (
        "x = torch.randn(256, 512, requires_grad=True); lab = torch.arange(256) // 4\n"
        "ref = torch.randn(16384, 512); rl = torch.randint(0, 4000, (16384,))\n"
        "fn = lambda: recogfast.ops.ms_loss(x, lab, ref_embeddings=ref, ref_labels=rl, impl='fused')"),
}

CHILD = """
import json, sys, time, statistics, torch, recogfast
torch.manual_seed(0)
torch.set_num_threads({threads})
{setup}
clock = time.process_time if {cpu} else time.perf_counter
def step():
    if {grad}:
        fn().backward()
    else:
        with torch.no_grad():
            fn()
for _ in range(2):
    step()
ts = []
for _ in range({reps}):
    t0 = clock(); step(); ts.append(clock() - t0)
print(json.dumps(statistics.median(ts)))
"""


def time_case(tree: str, setup: str, threads: int, reps: int, grad: bool = True, cpu: bool = False) -> float:
    tree = os.path.abspath(tree)
    env = dict(os.environ, PYTHONPATH=tree)
    code = CHILD.format(setup=setup, threads=threads, reps=reps, grad=grad, cpu=cpu)
    # cwd = the tree: `python -c` puts the working directory first on sys.path, ahead of PYTHONPATH, so run from
    # inside a checkout both sides imported that checkout's recogfast
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="", help="time only the cases whose name contains this text")
    p.add_argument("--modes", default="fwd+bwd", help="fwd+bwd and/or fwd (no_grad), comma-separated")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    if not modes or any(m not in ("fwd+bwd", "fwd") for m in modes):
        p.error(f"--modes: fwd+bwd and/or fwd, got {args.modes!r}")
    cases = {f"{name} {m}" if len(modes) > 1 or m != "fwd+bwd" else name: (setup, m == "fwd+bwd")
             for name, setup in CASES.items() if args.only in name for m in modes}
    times = {name: {"a": [], "b": []} for name in cases}
    for r in range(args.rounds):
        for name, (setup, grad) in cases.items():
            order = ("a", "b") if r % 2 == 0 else ("b", "a")
            for side in order:
                times[name][side].append(time_case(getattr(args, side), setup, args.threads, args.reps, grad,
                                                   args.clock == "cpu"))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"{'case (fp32, CPU, ' + args.clock + ' clock)':<42} {'A ms':>9} {'B ms':>9} {'B/A':>6}  {'min A':>9} {'min B':>9} {'B/A':>6}"
          "  spread A / B")
    rows = {}
    for name, t in times.items():
        a, b = statistics.median(t["a"]), statistics.median(t["b"])
        spread = [(max(v) - min(v)) / statistics.median(v) for v in (t["a"], t["b"])]
        lo_a, lo_b = min(t["a"]), min(t["b"])  # the least disturbed round: robust to other load on the machine
        rows[name] = {"a_ms": a * 1e3, "b_ms": b * 1e3, "ratio": b / a, "min_a_ms": lo_a * 1e3, "min_b_ms": lo_b * 1e3,
                      "min_ratio": lo_b / lo_a}
        print(f"{name:<42} {a * 1e3:9.2f} {b * 1e3:9.2f} {b / a:6.3f}  {lo_a * 1e3:9.2f} {lo_b * 1e3:9.2f} "
              f"{lo_b / lo_a:6.3f}  {spread[0]:.0%} / {spread[1]:.0%}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
