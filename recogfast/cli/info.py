"""``recogfast info`` (build, devices, kernels, models) and ``recogfast bench`` (the benchmark suites)."""

from __future__ import annotations

import os
import subprocess
import sys

from recogfast.cli.errors import UsageError


def add_info_parsers(sub) -> None:
    sub.add_parser("info", help="build, devices, kernels, models").set_defaults(handler=cmd_info)
    bench = sub.add_parser("bench", help="run the benchmark suites and print one table")
    bench.add_argument("filter", nargs="?", default=None, help="pytest -k expression")
    bench.set_defaults(handler=cmd_bench)


def cmd_info(args) -> int:
    from recogfast.info import report
    from recogfast.models import list_models, model_info

    print(report())
    print("\nmodels:")
    for name in list_models():
        print(f"  {name:<24} {model_info(name)['description']}")
    return 0


def cmd_bench(args) -> int:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    folder = os.path.join(root, "benchmarks")
    if not os.path.isdir(folder):
        raise UsageError(f"benchmarks folder not found next to the package ({folder}); run from a source checkout")
    cmd = [sys.executable, "-m", "pytest", folder, "--benchmark-only", "-q",
           "--benchmark-columns=min,median,mean,ops,rounds", "--benchmark-sort=fullname"]
    if args.filter:
        cmd += ["-k", args.filter]
    return subprocess.call(cmd, cwd=root)


def register(parser, sub) -> None:
    add_info_parsers(sub)
