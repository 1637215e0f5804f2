"""Issue 25 (Block 1): CPU time of cubs_channel forward + backward, fp32, for two builds, alternated.

    OMP_NUM_THREADS=1 python tools/bench_b1.py A_TREE B_TREE [--rounds 4] [--reps 20]

A tree is a directory whose recogfast/ holds the built extension (PYTHONPATH=tree). Every round starts one fresh
process per tree and shape, A then B, and times fn().backward() with time.process_time (CPU time, so that a loaded
machine's waiting does not count); a process reports the mean of its fastest quarter of repetitions. The table
gives, per shape, each tree's range over rounds and the median over rounds of B / A.
"""
import argparse, json, os, statistics, subprocess, sys

SHAPES = [(8, 64, 56, 56), (8, 256, 14, 14), (32, 512, 7, 7)]
CHILD = """
import json, time, math, torch, recogfast
torch.manual_seed(0); torch.set_num_threads(1)
B, C, H, W = {shape}; N = C // 2
x = torch.randn(B, C, H, W, requires_grad=True)
w = [torch.randn(N, C) * 2 / math.sqrt(C), 0.3 * torch.randn(N)] * 3 + [torch.randn(C, N) * 2 / math.sqrt(N), 0.3 * torch.randn(C)]
w = [t.clone().requires_grad_(True) for t in w]
fn = lambda: torch.ops.recogfast.cubs_channel(x, *w).sum()
for _ in range(3): fn().backward()
ts = []
for _ in range({reps}):
    t0 = time.process_time(); fn().backward(); ts.append(time.process_time() - t0)
ts.sort(); q = ts[:max(1, len(ts) // 4)]
print(json.dumps(sum(q) / len(q)))
"""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("a"); p.add_argument("b")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--reps", type=int, default=20)
    o = p.parse_args()
    res = {s: {"a": [], "b": []} for s in SHAPES}
    for r in range(o.rounds):
        for s in SHAPES:
            for tree, key in ((o.a, "a"), (o.b, "b")):
                env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1")
                out = subprocess.run([sys.executable, "-c", CHILD.format(shape=s, reps=o.reps)], env=env,
                                     capture_output=True, text=True, check=True, cwd="/")
                res[s][key].append(json.loads(out.stdout.strip().splitlines()[-1]) * 1e3)
        print(f"round {r + 1} done", file=sys.stderr, flush=True)
    print("| shape (fwd+bwd, fp32, 1 thread) | A ms (range over rounds) | B ms | B / A (median of rounds) |")
    print("|---|---|---|---|")
    for s in SHAPES:
        a, b = res[s]["a"], res[s]["b"]
        ratio = statistics.median(y / x for x, y in zip(a, b))
        print(f"| {'x'.join(map(str, s))} | {min(a):.2f}-{max(a):.2f} | {min(b):.2f}-{max(b):.2f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
