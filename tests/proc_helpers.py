"""Task functions and instruments for the process-backend tests.

Everything here is module level, so process workers (which see the parent's ``sys.path``)
import it by name. Crash helpers take effect only where they are meant to: a pickling hook
checks whether it runs in a worker (``AIOPARALLEL_IN_WORKER``) before it misbehaves, so the
parent never exits or segfaults by accident.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import psutil

from tests.helpers import square as square  # re-exported: tests call ``h.square``
from tests.helpers import stamp, wait_file

#: Longest a blocking task sleeps; cancellation and timeouts must cut it short.
LONG_SLEEP = 30.0
#: How long the bounded polls below wait at most.
POLL_LIMIT = 10.0
BLAS_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "BLIS_NUM_THREADS",
)


def in_worker() -> bool:
    return os.environ.get("AIOPARALLEL_IN_WORKER") == "1"


# -- plain tasks -----------------------------------------------------------------------------


def pid_of(_x: object = None) -> int:
    return os.getpid()


def square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def tagged(x: int) -> tuple[int, int]:
    """``(x, x * x)``: results that name their task, for completion-order checks."""
    return x, x * x


def slow_tagged(x: int, seconds: float) -> tuple[int, int]:
    time.sleep(seconds)
    return x, x * x


def raise_value_error(x: int) -> int:
    raise ValueError(f"bad input {x}")  # FAILING-LINE-MARKER


def fail_on(x: int, bad: Iterable[int] = ()) -> tuple[int, int]:
    if x in bad:
        raise KeyError(f"task input {x} is bad")  # FAIL-ON-MARKER
    return x, x * x


def env_of(names: Iterable[str]) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in names}


def noisy(x: int) -> int:
    """Prints to both streams, including bytes that look like protocol frames."""
    # one write per line: two workers share the parent's descriptors, and a print() may
    # issue the text and its newline as two writes, which can interleave across processes
    print(f"worker-stdout {x}\n", end="", flush=True)
    print(f"worker-stderr {x}\n", end="", file=sys.stderr, flush=True)
    print("\x01\x00\x00\x00\x10" * 20 + "\n", end="", flush=True)
    os.write(1, b"\x05\xff\xff\xff\xff raw fd write\n")
    return x * x


def quiet_print(x: int) -> int:
    """Prints without flushing: the output must still reach the parent eventually."""
    print(f"unflushed-stdout {x}")
    print(f"unflushed-stderr {x}", file=sys.stderr)
    return x


def nested_run(n: int) -> tuple[list[int], int, str | None]:
    """Calls Parallel(n_jobs=2) inside a worker: (inner pids, own pid, nesting flag)."""
    import asyncio

    from aioparallel import Parallel, delayed

    async def inner() -> list[int]:
        return await Parallel(n_jobs=2)(delayed(pid_of)(i) for i in range(n))

    return asyncio.run(inner()), os.getpid(), os.environ.get("AIOPARALLEL_IN_WORKER")


# -- tasks that record their pid, then block -------------------------------------------------


def write_pid(folder: str, x: int) -> None:
    path = Path(folder, f"{x}.pid")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.rename(path)  # atomic: a reader never sees a half-written file


def pid_then_sleep(folder: str, x: int, seconds: float = LONG_SLEEP) -> int:
    write_pid(folder, x)
    time.sleep(seconds)
    return x


def pid_then_hold_the_gil(folder: str, x: int, n: int = 1_200_000) -> int:
    """Records its pid, then runs one long C call that never releases the GIL (~7 s)."""
    import math

    write_pid(folder, x)
    math.factorial(n)
    return x


def sleep_if(
    x: int, slow: Iterable[int], folder: str, seconds: float = LONG_SLEEP
) -> tuple[int, int]:
    """``(x, x * x)`` at once, except the ``slow`` ones, which record their pid and sleep."""
    if x in slow:
        write_pid(folder, x)
        time.sleep(seconds)
    return x, x * x


def pid_then_wait_file(folder: str, x: int, release: str) -> int:
    """Records its pid (``<x>.pid``, for :func:`read_pids`) and when it started (the stamp
    ``<x>.started``, for the reliability suite's ``read_stamp``), then blocks until the file
    ``release`` exists (bounded)."""
    write_pid(folder, x)
    stamp(folder, f"{x}.started")
    wait_file(release, POLL_LIMIT)
    return x


def mark_then_wait_file(folder: str, x: int, waits: bool, release: str, bad: int = -1) -> bool:
    """Marks itself run (``<x>.ran``); if it ``waits``, waits for the file ``release``
    (bounded) and says whether it appeared; raises if it is ``bad``."""
    Path(folder, f"{x}.ran").touch()
    seen = wait_file(release, POLL_LIMIT) if waits else True
    if x == bad:
        raise KeyError(f"task input {x} is bad")
    return seen


def sleep_then_mark(folder: str, x: int, seconds: float) -> int:
    """Sleeps ``seconds``, then marks itself done (``<x>.done``)."""
    time.sleep(seconds)
    Path(folder, f"{x}.done").touch()
    return x


def fail_or_sleep(folder: str, x: int, bad: int, seconds: float) -> tuple[int, int]:
    """Marks itself started; raises for ``bad``, else sleeps ``seconds``."""
    Path(folder, f"{x}.started").touch()
    if x == bad:
        raise KeyError(f"task input {x} is bad")
    time.sleep(seconds)
    return x, x * x


def count_started(folder: Path) -> int:
    return len(list(folder.glob("*.started")))


def showcase_task(x: int) -> tuple[int, int]:
    """Most tasks are tiny; 3 raise, 1 kills its worker, 1 hangs (past any sane timeout)."""
    if x in (100, 500, 900):
        raise KeyError(f"task input {x} is bad")
    if x == 300:
        os._exit(3)
    if x == 700:
        time.sleep(LONG_SLEEP)
    return x, x * x


def read_pids(folder: Path) -> dict[int, int]:
    return {int(p.stem): int(p.read_text()) for p in folder.glob("*.pid")}


async def wait_for_pids(folder: Path, n: int, limit: float = POLL_LIMIT) -> dict[int, int]:
    """Bounded poll until at least ``n`` tasks wrote their pid; fails the test if not."""
    with anyio.fail_after(limit):
        while True:
            pids = read_pids(folder)
            if len(pids) >= n:
                return pids
            await anyio.sleep(0.01)


def wait_for_pids_sync(folder: Path, n: int, limit: float = POLL_LIMIT) -> dict[int, int]:
    deadline = time.monotonic() + limit
    while True:
        pids = read_pids(folder)
        if len(pids) >= n:
            return pids
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(pids)} of {n} pid files after {limit}s: {pids}")
        time.sleep(0.01)


# -- processes -------------------------------------------------------------------------------


def pid_gone(pid: int) -> bool:
    """True if ``pid`` no longer runs and is not our unreaped child.

    A zombie left to a foreign reaper (a worker of a SIGKILLed parent, re-parented) counts as
    gone; a zombie child of this process does not: reaping it is the pool's job.
    """
    try:
        proc = psutil.Process(pid)
        return proc.status() == psutil.STATUS_ZOMBIE and proc.ppid() != os.getpid()
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: Iterable[int], limit: float) -> list[int]:
    """Bounded poll until every pid is gone; the pids still running at the end."""
    deadline = time.monotonic() + limit
    while True:
        alive = [pid for pid in pids if not pid_gone(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


def pid_dead(pid: int) -> bool:
    """True if ``pid`` no longer runs (reaped, or a zombie of anyone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_dead_async(pids: Iterable[int], limit: float = POLL_LIMIT) -> None:
    """Bounded poll until no pid runs any more (reaped or not)."""
    with anyio.fail_after(limit):
        while True:
            if all(pid_dead(pid) for pid in pids):
                return
            await anyio.sleep(0.01)


async def wait_gone_async(pids: Iterable[int], limit: float) -> list[int]:
    """Like :func:`wait_gone`, polling from the event loop."""
    deadline = time.monotonic() + limit
    while True:
        alive = [pid for pid in pids if not pid_gone(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        await anyio.sleep(0.02)


def child_pids() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


# -- ways to die -----------------------------------------------------------------------------


def exit3(x: int = 0) -> int:
    os._exit(3)


def sigkill_self(x: int = 0) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(LONG_SLEEP)
    return x


def segfault(x: int = 0) -> int:
    ctypes.string_at(0)
    return x


def die_at(x: int, at: int, how: str = "exit") -> tuple[int, int]:
    if x == at:
        if how == "exit":
            os._exit(3)
        segfault()
    return x, x * x


def fork_then_exit(folder: str, x: int) -> tuple[int, int]:
    """Task 1 forks a grandchild (which inherits every descriptor, as a fork without exec
    does), records its pid, then kills its worker with ``os._exit(3)``."""
    if x == 1:
        pid = os.fork()
        if pid == 0:  # the grandchild: lives on, holding the worker's pipes
            time.sleep(LONG_SLEEP)
            os._exit(0)
        Path(folder, "grandchild.pid").write_text(str(pid))
        os._exit(3)
    return x, x * x


# -- crash matrix: objects that misbehave while (un)pickled -----------------------------------


def _misbehave(how: str) -> None:
    if how == "exception":
        raise RuntimeError("misbehaving (un)pickle")  # MISBEHAVE-MARKER
    if how == "systemexit":
        sys.exit(7)
    if how == "os_exit":
        os._exit(3)
    if how == "segfault":
        segfault()
    raise AssertionError(how)


def misbehave_in_worker(how: str) -> None:
    """Used as a reconstructor: misbehaves when unpickled in a worker, else builds a dummy."""
    if in_worker():
        _misbehave(how)


def misbehave_in_parent(how: str) -> Any:
    """Used as a reconstructor: misbehaves when unpickled in the parent."""
    if not in_worker():
        _misbehave(how)
    return None


class BadAtPickle:
    """Misbehaves when pickled (in whichever process pickles it)."""

    def __init__(self, how: str):
        self.how = how

    def __reduce__(self) -> tuple[Any, ...]:
        _misbehave(self.how)
        return (BadAtPickle, (self.how,))


class BadAtUnpickleInWorker:
    """Pickles fine; its reconstruction misbehaves in a worker."""

    def __init__(self, how: str):
        self.how = how

    def __reduce__(self) -> tuple[Any, ...]:
        return (misbehave_in_worker, (self.how,))


class BadAtUnpickleInParent:
    """Pickles fine (in the worker); its reconstruction misbehaves in the parent."""

    def __init__(self, how: str):
        self.how = how

    def __reduce__(self) -> tuple[Any, ...]:
        return (misbehave_in_parent, (self.how,))


def misbehave_call(how: str) -> None:
    _misbehave(how)


def return_instance(cls: Callable[[str], Any], how: str) -> Any:
    return cls(how)


def take_arg(arg: object) -> str:
    return "ran"


def return_lock(x: int = 0) -> Any:
    return threading.Lock()


def return_generator(x: int = 0) -> Any:
    return (i for i in range(3))


def unpickle_error() -> None:
    raise RuntimeError("cannot rebuild this argument in the worker")  # UNPICKLE-MARKER


class FailsToUnpickle:
    """Pickles in the parent; rebuilding it in the worker raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (unpickle_error, ())


# -- counting pickles: one per batch ----------------------------------------------------------

_serials = itertools.count()


class PickleCounter:
    """A callable whose pickles are counted in the parent.

    Each unpickled copy gets a fresh serial number in its worker, and every call returns
    ``(pid, serial, x)``: the distinct ``(pid, serial)`` pairs are the copies the workers
    received. One pickle per batch means ``pickles == copies received``.
    """

    pickles = 0
    _lock = threading.Lock()

    def __init__(self, token: str = "counter"):
        self.token = token
        self.serial = next(_serials)

    def __reduce__(self) -> tuple[Any, ...]:
        with PickleCounter._lock:
            PickleCounter.pickles += 1
        return (PickleCounter, (self.token,))

    def __call__(self, x: int) -> tuple[int, int, int]:
        return os.getpid(), self.serial, x


def worker_children() -> set[int]:
    """Our child processes that run the worker module (zombies included: unreaped is not
    gone, and still takes a place)."""
    found = set()
    for proc in psutil.Process().children():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE or any(
                "aioparallel.child.main" in part for part in proc.cmdline()
            ):
                found.add(proc.pid)
        except psutil.Error:
            continue
    return found
