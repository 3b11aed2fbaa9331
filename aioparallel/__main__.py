"""``python -m aioparallel demo | bench``."""

from __future__ import annotations

import sys
from pathlib import Path

USAGE = """usage: python -m aioparallel {demo,bench,--version} [options]

  demo   map a CPU-bound function on process workers, with a progress bar, while a
         heartbeat shows the event loop stays responsive
  bench  compare aioparallel with joblib, run_in_executor, anyio.to_process, ...
         (from a source checkout only: see `python -m aioparallel bench --help`)
"""

#: What an installed copy (which has no benchmarks/ folder) says about ``bench``.
BENCH_FROM_SOURCE = """\
python -m aioparallel bench runs from aioparallel's source: the harness and its workloads
live in the benchmarks/ folder of the source distribution, which the installed wheel does
not include. To run it:

    pip download --no-deps --no-binary :all: aioparallel
    tar xzf aioparallel-*.tar.gz && cd aioparallel-*/
    python -m venv .venv && . .venv/bin/activate
    pip install -e '.[bench]'
    python -m aioparallel bench --quick

Published results: https://aioparallel.readthedocs.io/benchmarks/
"""


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in ("-V", "--version"):
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"aioparallel {version('aioparallel')}")
        except PackageNotFoundError:  # imported from a source tree that is not installed
            print("aioparallel (not installed: no version metadata)")
        return 0
    if command == "demo":
        from ._demo import main as demo

        return demo(rest)
    if command == "bench":
        root = Path(__file__).resolve().parent.parent
        if not (root / "benchmarks" / "run.py").exists():
            wants_help = bool({"-h", "--help"} & set(rest))
            text = BENCH_FROM_SOURCE
            print(text, end="", file=sys.stdout if wants_help else sys.stderr)
            return 0 if wants_help else 2
        sys.path.insert(0, str(root))
        # imported by name: the harness is not part of the package (nor of its type check)
        from importlib import import_module

        return int(import_module("benchmarks.run").main(rest) or 0)
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
