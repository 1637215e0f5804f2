"""Fails (exit 1, one line) unless recogfast._C is the stable-ABI binary of this tree and loads under the
running torch and Python: the cross-version half of `make compat-test` (README: "Build once")."""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def main() -> int:
    so = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "recogfast").glob("_C*.so"))
    if so != ["_C.abi3.so"]:
        print(f"compat_check: expected exactly recogfast/_C.abi3.so, found {so}")
        return 1
    try:
        import recogfast
    except ImportError as err:
        print(f"compat_check: the binary does not load under torch {torch.__version__}, Python "
              f"{sys.version.split()[0]}: {err}")
        return 1
    info = recogfast.build_info()
    print(f"compat_check: recogfast/_C.abi3.so (built with torch {info['torch_headers']} headers, stable ABI "
          f">= {info['stable_abi']}) loads under torch {torch.__version__}, Python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
