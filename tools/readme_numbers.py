"""The README's Task 4 chain, re-run: its printed lines replace the README's, so the numbers there are
the ones a user gets (`make readme-numbers`; `--check` fails when the README differs instead).

    python tools/readme_numbers.py [--check] [--out runs/readme]

The two runs are the README's commands as written (Shapes196, resnet18 at 32×32, 5 epochs each) with
`--out` under ``--out``; each prints a "best val" line and a TEST line, which go between the README's
``<!-- readme-numbers:NAME -->`` and ``<!-- /readme-numbers:NAME -->`` markers. Numbers depend on the
machine's arithmetic (CPU kind, thread count): the README says which machine wrote them.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--dataset", "shapes196", "--model", "resnet18", "--stem", "imagenet", "--image-size", "32", "--epochs", "5",
          "--optimizer", "adamw", "--crop-scale", "0.35", "--quiet", "--no-report", "--overwrite"]


def chain(out: str) -> list[tuple[str, list[str]]]:
    cls, ms = os.path.join(out, "shapes-cls"), os.path.join(out, "shapes-ms")
    return [
        ("task4-classifier", ["train", "classify", *COMMON, "--protocol", "retrieval", "--lr", "2e-3", "--out", cls]),
        ("task4-ms", ["train", "retrieval", *COMMON, "--weights", os.path.join(cls, "best.pt"), "--batch-size", "64",
                      "--lr", "1e-3", "--out", ms]),
    ]


def result_lines(stdout: str, out: str, shown: str) -> list[str]:
    """The "best val" and TEST lines of a run's output, and its folder as the README names it."""
    keep = [line for line in stdout.splitlines() if line.startswith(("best val ", "no validation", "TEST "))]
    if len(keep) != 2:
        raise SystemExit(f"readme_numbers: expected a best-val and a TEST line, got:\n{stdout[-2000:]}")
    return keep + [f"run folder: {shown}"]


def replace_block(text: str, name: str, lines: list[str]) -> str:
    begin, end = f"<!-- readme-numbers:{name} -->", f"<!-- /readme-numbers:{name} -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"readme_numbers: README.md has no {begin} ... {end} block")
    body = "\n".join(["", "", *("    " + line for line in lines), ""]) + "\n"
    return pattern.sub(lambda _: begin + body + end, text, count=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="fail (exit 1) when the README's lines differ")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "readme"))
    args = p.parse_args(argv)
    readme = os.path.join(ROOT, "README.md")
    found = {}
    for name, cmd in chain(args.out):
        print("$ recogfast " + " ".join(cmd), flush=True)
        run = subprocess.run([sys.executable, "-m", "recogfast", *cmd], capture_output=True, text=True, cwd=ROOT)
        if run.returncode != 0:
            print(run.stdout[-3000:], run.stderr[-3000:], sep="\n", file=sys.stderr)
            return run.returncode
        lines = result_lines(run.stdout, args.out, "runs/" + cmd[cmd.index("--out") + 1].rsplit(os.sep, 1)[-1])
        print("\n".join(lines), flush=True)
        found[name] = lines
    text = original = open(readme).read()  # read now: the README may have changed while the chain ran
    for name, lines in found.items():
        text = replace_block(text, name, lines)
    if text == original:
        print("README.md: the numbers are the ones the chain prints")
        return 0
    if args.check:
        print("README.md differs from what the chain prints (run `make readme-numbers`)", file=sys.stderr)
        return 1
    with open(readme, "w") as f:
        f.write(text)
    print("README.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
