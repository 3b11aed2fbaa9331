"""Module-level tasks and instruments of the reliability suite.

Process workers see the parent's ``sys.path``, so they import these by name
(``tests.reliability.helpers``). Tasks that misbehave do so only for the one input ``at``
they are told to, and record when and where (pid, ``time.monotonic()``) just before, in a
"stamp" file: ``CLOCK_MONOTONIC`` is system-wide on Linux, so the parent can measure how long
the library took to notice, from the moment the fault happened.
"""

from __future__ import annotations

import ctypes
import glob
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.probes import RssSampler as _ProbeRssSampler
from tests.helpers import identity as identity
from tests.helpers import square as square
from tests.helpers import stamp as stamp
from tests.helpers import wait_file
from tests.proc_helpers import pid_then_wait_file as pid_then_wait_file
from tests.proc_helpers import square_and_pid as square_and_pid

#: Longest any task blocks or spins; the library must cut it short long before.
LONG = 60.0
#: Upper bound of the bounded polls below.
POLL_LIMIT = 10.0
#: How far above the worker's current address space the memory cap is set.
MEMORY_HEADROOM = 64 * 1024**2
#: What a task tries to allocate under that cap.
MEMORY_HOG = 2 * 1024**3


# -- stamps: "this process reached this point at this time" -----------------------------------


def read_stamp(folder: str | Path, name: str) -> tuple[int, float] | None:
    try:
        pid, when = Path(folder, name).read_text().split()
    except FileNotFoundError:
        return None
    return int(pid), float(when)


def wait_stamp_sync(folder: str | Path, name: str, limit: float = POLL_LIMIT) -> tuple[int, float]:
    """Bounded poll (blocking) until the stamp exists."""
    deadline = time.monotonic() + limit
    while True:
        found = read_stamp(folder, name)
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no stamp {name!r} in {folder} after {limit}s")
        time.sleep(0.005)


def wait_file_sync(path: str | Path, limit: float = POLL_LIMIT) -> bool:
    """Bounded poll until ``path`` exists; False if it never did."""
    return wait_file(path, limit)


# -- plain tasks -----------------------------------------------------------------------------


def nap(x: int, seconds: float, folder: str | None = None) -> int:
    """Sleep, then return ``x``; with ``folder``, first leave a file named after our pid."""
    if folder is not None:
        Path(folder, str(os.getpid())).touch()
    time.sleep(seconds)
    return x


def timed_nap(x: int, seconds: float, folder: str) -> int:
    """Stamp ``<x>.start``, sleep, stamp ``<x>.end``; return ``x``."""
    stamp(folder, f"{x}.start")
    time.sleep(seconds)
    stamp(folder, f"{x}.end")
    return x


# -- worker faults ---------------------------------------------------------------------------


def fault(x: int, at: int, how: str, folder: str, stop: threading.Event | None = None) -> int:
    """``x * x``, except at input ``at``: stamp ``fault``, then misbehave as ``how`` says."""
    if x != at:
        return x * x
    stamp(folder, "fault")
    if how == "exit":
        os._exit(3)
    if how == "sigkill":  # the test kills this process from outside
        time.sleep(LONG)
    elif how == "segfault":
        ctypes.string_at(0)
    elif how == "memory":
        return exhaust_memory()
    elif how == "hang":
        spin(stop)
    raise AssertionError(f"fault {how!r} did not happen")


def exhaust_memory() -> int:
    """Cap our address space (RLIMIT_AS) just above its current size, then allocate past it.

    The cap is lifted again on the way out, so the worker stays usable (only the task fails).
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (size + MEMORY_HEADROOM, hard))
    try:
        hog = bytearray(MEMORY_HOG)  # MEMORY-MARKER
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    return len(hog)


def spin(stop: threading.Event | None = None) -> None:
    """A busy loop that never sleeps; ends after LONG seconds, or when ``stop`` is set."""
    deadline = time.monotonic() + LONG
    while time.monotonic() < deadline:
        if stop is not None and stop.is_set():
            return


# -- bad data --------------------------------------------------------------------------------


class NeedsArgError(Exception):
    """Pickles, but cannot be rebuilt: ``__init__`` needs a second argument."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class HoldsLockError(Exception):
    """Cannot be pickled at all: it holds a lock."""

    def __init__(self, message: str):
        super().__init__(message)
        self.lock = threading.Lock()


def raise_at(x: int, at: int, kind: str) -> int:
    if x == at:
        if kind == "needs_arg":
            raise NeedsArgError(f"task input {x} needs an extra argument", 7)  # NEEDS-ARG-MARKER
        raise HoldsLockError(f"task input {x} holds a lock")  # HOLDS-LOCK-MARKER
    return x


def lock_at(x: int, at: int) -> Any:
    """``x``, or an unpicklable lock at input ``at``."""
    return threading.Lock() if x == at else x


class LockedCallable:
    """A callable that cannot be pickled: it holds a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __call__(self, x: int) -> int:
        with self.lock:
            return x * x


def bad_in_parent_at(x: int, at: int) -> Any:
    """``x``, or (at ``at``) an object whose unpickling raises in the parent."""
    if x != at:
        return x
    from tests.proc_helpers import BadAtUnpickleInParent

    return BadAtUnpickleInParent("exception")


# -- security --------------------------------------------------------------------------------


def memmap_folder(array: Any) -> tuple[str, int, int, bool]:
    """Where the memmapped argument lives: (folder, its mode bits, its owner, is a memmap)."""
    import numpy as np

    folder = os.path.dirname(array.filename)
    st = os.stat(folder)
    return folder, stat.S_IMODE(st.st_mode), st.st_uid, isinstance(array, np.memmap)


def parent_folders(blob: bytes, base: str, *keep: Any) -> list[tuple[str, int, int, list[int]]]:
    """The parent's ``aioparallel-*`` folders in ``base``, as seen while this task runs:
    (path, mode bits, owner, mode bits of each file inside). ``keep``: arguments (memmapped
    arrays) whose files stay in the folder while the run lasts."""
    assert len(blob) > 0
    found = []
    for path in sorted(glob.glob(os.path.join(base, f"aioparallel-{os.getppid()}-*"))):
        st = os.stat(path)
        files = [stat.S_IMODE(os.stat(os.path.join(path, f)).st_mode) for f in os.listdir(path)]
        found.append((path, stat.S_IMODE(st.st_mode), st.st_uid, files))
    return found


def set_env(name: str, value: str) -> tuple[int, str | None]:
    """Set an environment variable in the worker; (pid, the in-worker flag)."""
    os.environ[name] = value
    return os.getpid(), os.environ.get("AIOPARALLEL_IN_WORKER")


def get_env(name: str) -> str | None:
    return os.environ.get(name)


# -- instruments -----------------------------------------------------------------------------


class RssSampler(_ProbeRssSampler):
    """Samples this process's resident set size in a thread: ``with RssSampler() as s:``.

    The benchmarks' sampler, for this process only; ``s.growth`` is the peak RSS over the
    block minus the RSS when the block began.
    """

    def __init__(self, interval: float = 0.005):
        super().__init__(children=False, interval=interval)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline
