"""CUBS Block 2 on the CPU, two builds interleaved: fwd+bwd and fwd (no grad) through the wrapper's fused path
(`recogfast.ops.cubs_spatial(..., impl="fused")`, what the modules run), fp32, CPU time (time.process_time) per
call, one fresh process per (tree, shape, mode) and round, the trees alternating so that they share the machine's
drift (issue 25 part 5: the saved-stats backward makes two B·HW² passes a step where the base made three).

    OMP_NUM_THREADS=1 python tools/bench_spatial_passes.py BASE_TREE NEW_TREE [--rounds 5] [--reps 5]

Prints per shape and mode the median over rounds of each tree's per-round median, the spread (min-max over
rounds) and the ratio new / base.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

SHAPES = [(8, 64, 56, 56), (16, 128, 28, 28), (4, 64, 7, 7)]

CHILD = """
import json, time, statistics, torch, recogfast
from recogfast.ops import cubs_spatial
torch.manual_seed(0)
torch.set_num_threads(1)
B, C, H, W = {shape}
x = torch.randn(B, C, H, W, requires_grad=True)
w = [torch.randn(C) / C ** 0.5, torch.zeros(1), torch.randn(C) / C ** 0.5, torch.zeros(1),
     torch.randn(C) / C ** 0.5, torch.zeros(1)]
w = [t.requires_grad_(True) for t in w]
gy = torch.randn_like(x)
def step():
    if {grad}:
        cubs_spatial(x, *w, impl="fused").backward(gy)
    else:
        with torch.no_grad():
            cubs_spatial(x, *w, impl="fused")
reps = {reps} if B * (H * W) ** 2 > 1e6 else 50 * {reps}
step(); step()
ts = []
for _ in range(reps):
    t0 = time.process_time(); step(); ts.append(time.process_time() - t0)
print(json.dumps(statistics.median(ts)))
"""


def run(tree: str, shape, grad: bool, reps: int) -> float:
    tree = os.path.abspath(tree)
    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1")
    # cwd = the tree: `python -c` puts the working directory first on sys.path, ahead of PYTHONPATH
    out = subprocess.run([sys.executable, "-c", CHILD.format(shape=shape, grad=grad, reps=reps)], env=env, cwd=tree,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    times: dict = {}
    for r in range(a.rounds):
        for shape in SHAPES:
            for grad in (True, False):
                for tree in ((a.base, a.new) if r % 2 == 0 else (a.new, a.base)):
                    times.setdefault((shape, grad, tree), []).append(run(tree, shape, grad, a.reps))
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr, flush=True)
    print("| shape | mode | base ms (min-max) | new ms (min-max) | new / base |")
    print("|---|---|---|---|---|")
    for shape in SHAPES:
        for grad in (True, False):
            b, n = times[(shape, grad, a.base)], times[(shape, grad, a.new)]
            mb, mn = statistics.median(b), statistics.median(n)
            print(f"| {'x'.join(map(str, shape))} | {'fwd+bwd' if grad else 'fwd (no grad)'} | "
                  f"{mb * 1e3:.3g} ({min(b) * 1e3:.3g}-{max(b) * 1e3:.3g}) | "
                  f"{mn * 1e3:.3g} ({min(n) * 1e3:.3g}-{max(n) * 1e3:.3g}) | {mn / mb:.2f} |")


if __name__ == "__main__":
    main()
