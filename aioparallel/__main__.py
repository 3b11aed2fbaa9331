"""``python -m aioparallel demo | bench``."""

from __future__ import annotations

import sys
from pathlib import Path

USAGE = """usage: python -m aioparallel {demo,bench,--version} [options]

  demo   map a CPU-bound function on process workers, with a progress bar, while a
         heartbeat shows the event loop stays responsive
  bench  compare aioparallel with joblib, run_in_executor, anyio.to_process, ...
         (needs a source checkout: the benchmarks/ folder; pip install -e '.[bench]')
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
            print("bench needs a source checkout of aioparallel (the benchmarks/ folder)")
            return 2
        sys.path.insert(0, str(root))
        from benchmarks.run import main as bench

        return int(bench(rest) or 0)
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
