"""Windows, as far as it can be checked here (docs/platforms.md): with the POSIX-only modules and
``os`` functions gone, ``import aioparallel`` works, so do every module outside the process backend
and the sequential and threads backends, and ``backend="processes"`` (the default) fails at
``Parallel(...)`` with an error that names the platform and the alternatives.

It runs in a fresh interpreter whose ``sys.modules`` makes those modules unimportable before
aioparallel is imported (``sys.platform`` itself cannot be faked: asyncio would then want
Windows' own modules). dask.distributed, if installed, is imported first: on Linux it loads
psutil's Linux parts, which Windows would not import.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Modules that exist on Linux and macOS only.
POSIX_ONLY_MODULES = ("fcntl", "resource", "termios", "tty", "pty", "pwd", "grp", "syslog")
#: os functions Windows lacks that the process backend uses (os itself is already imported).
POSIX_ONLY_OS = ("killpg", "setpgid", "getpgid", "getuid", "waitid", "pidfd_open", "memfd_create")

SCRIPT = """
import sys, os
missing = set()  # the optional engines not installed: their backends are not imported
for third_party in ("distributed", "ray"):  # loaded first: on Linux they import their
    try:                                    # Linux parts (psutil's, pwd)
        __import__(third_party)
    except ImportError:
        missing.add(third_party)
for name in {modules!r}:
    sys.modules[name] = None  # import name -> ImportError, as on Windows
for name in {os_names!r}:
    if hasattr(os, name):
        delattr(os, name)
sys.path.insert(0, {root!r})

import importlib, pkgutil, asyncio
import aioparallel
from aioparallel import Parallel, delayed, parallel_config

PROCESS_BACKEND = {{
    "aioparallel.backends.processes.pool.pool",
    "aioparallel.backends.processes.pool.run_workers",
    "aioparallel.backends.processes.pool.shared",
    "aioparallel.backends.processes.backend",
    "aioparallel.backends.processes.batch",
    "aioparallel.child.main",
}}
NEEDS = {{"aioparallel.backends.dask.": "distributed", "aioparallel.backends.ray.": "ray"}}
for info in pkgutil.walk_packages(aioparallel.__path__, "aioparallel."):
    if any(info.name.startswith(p) and NEEDS[p] in missing for p in NEEDS):
        continue
    if info.name not in PROCESS_BACKEND and info.name != "aioparallel.__main__":
        importlib.import_module(info.name)

async def main():
    square = lambda x: x * x
    assert await Parallel(n_jobs=2, backend="threads")(delayed(square)(x) for x in range(5)) == [
        0, 1, 4, 9, 16
    ]
    assert await Parallel(backend="sequential")(delayed(square)(x) for x in range(3)) == [0, 1, 4]
    with parallel_config(backend="threads"):
        assert await Parallel(n_jobs=2)(delayed(square)(x) for x in range(3)) == [0, 1, 4]

asyncio.run(main())
for make in (Parallel, lambda: Parallel(n_jobs=2), lambda: Parallel(n_jobs=2, backend="processes")):
    try:
        make()
    except NotImplementedError as exc:
        print("ERROR:", exc)
    else:
        raise SystemExit("backend='processes' was accepted without its POSIX facilities")
print("OK")
"""


def test_import_and_the_thread_backends_work_without_posix_only_modules() -> None:
    script = SCRIPT.format(modules=POSIX_ONLY_MODULES, os_names=POSIX_ONLY_OS, root=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "OK", done.stdout
    errors = [line for line in lines if line.startswith("ERROR:")]
    assert len(errors) == 3, done.stdout  # even n_jobs=1: the same code fails alike at any size
    for message in errors:
        assert "backend='processes'" in message, message
        assert sys.platform in message, message  # names the platform
        assert "backend='threads'" in message and "backend='dask'" in message, message
