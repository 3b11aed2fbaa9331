"""The session's local Ray instance for the Ray backend's tests, and the task functions it
runs (imported by name in Ray's workers, which see the driver's ``sys.path``).

``RaySession`` starts Ray once (``ray.init(num_cpus=2)``: ~4 s here) and stops it at the end
of the session. Ray's processes (GCS, raylet, its agents, and the worker processes the raylet
starts, replaces and reaps as it pleases) outlive each test by design: ``adopt`` tells the
leak check they are Ray's, and only Ray's processes are exempted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

# the tasks shared with the other suites, re-exported for the tests that import them here
from tests.helpers import add as add
from tests.helpers import fail_on as fail_on
from tests.helpers import square as square

#: Bounded waits of the tests (seconds).
WAIT = 30.0


@dataclass
class RaySession:
    """This process's Ray: the pids of the processes ``ray.init`` started (the node's)."""

    node_pids: set[int] = field(default_factory=set)
    address: str = ""
    node_ip: str = ""

    def processes(self) -> set[int]:
        """Ray's processes now: the node's and all their descendants (workers come and go)."""
        pids: set[int] = set()
        for pid in self.node_pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                pids.add(pid)
                pids.update(p.pid for p in psutil.Process(pid).children(recursive=True))
        return pids


class RayAware(set[int]):
    """The leak check's "children before the test", which also holds, whenever it is asked,
    every process of the session's Ray (so none of Ray's comings and goings is a leak)."""

    def __init__(self, pids: set[int], session: RaySession) -> None:
        super().__init__(pids)
        self.session = session

    def __contains__(self, pid: object) -> bool:
        return super().__contains__(pid) or pid in self.session.processes()


class RayFds(dict[int, str]):
    """The leak check's "file descriptors before the test", which also holds, whenever it is
    asked, this process's sockets to Ray's node (the driver opens a gRPC connection to each
    worker it leases tasks to, and closes it at Ray's pace, after the worker is gone)."""

    def __init__(self, fds: dict[int, str], session: RaySession) -> None:
        super().__init__(fds)
        self.session = session

    def get(self, fd: int, default: Any = None) -> Any:  # type: ignore[override]
        known = super().get(fd, default)
        current = _fd_target(fd)
        if known == current:
            return known
        for conn in psutil.Process().net_connections(kind="inet"):
            if conn.fd == fd and conn.raddr and _ipv4(conn.raddr.ip) == self.session.node_ip:
                return current  # a socket to Ray (its number may be a closed one's, reused)
        return known


def _ipv4(ip: str) -> str:
    return ip.removeprefix("::ffff:")  # an IPv4 peer of an IPv6 socket


def _fd_target(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def start_session() -> RaySession:
    import ray

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    session = RaySession()
    session.node_pids = {p.pid for p in psutil.Process().children()} - before
    session.address = ray.get_runtime_context().gcs_address
    session.node_ip = ray.util.get_node_ip_address()
    warm_up()
    return session


def warm_up() -> None:
    """What the driver opens lazily (its threads for awaited refs, its connections), once,
    before any test's snapshot: a sync task awaited, an async batch, a put."""
    from aioparallel import Parallel, delayed, parallel_config

    async def run() -> None:
        with parallel_config(backend="ray"):
            await Parallel(n_jobs=2)(delayed(square)(x) for x in range(4))
            await Parallel(n_jobs=2)(delayed(square_later)(x) for x in range(4))

    asyncio.run(run())


def stop_session(session: RaySession) -> list[int]:
    """``ray.shutdown()``; the pids of Ray's processes still alive after a bounded wait."""
    import ray

    family = [psutil.Process(pid) for pid in session.processes() if psutil.pid_exists(pid)]
    ray.shutdown()
    _, alive = psutil.wait_procs(family, timeout=WAIT)
    return [p.pid for p in alive]


# -- task functions ---------------------------------------------------------------------------


async def square_later(x: int) -> int:
    await asyncio.sleep(0.01)
    return x * x


def pid(_: int = 0) -> int:
    return os.getpid()


def total(array: Any, scale: int = 1) -> float:
    return float(array.sum()) * scale


def exit_hard(x: int, bad: int, folder: str) -> int:
    """Task ``bad`` counts its attempt in ``folder`` and kills its Ray worker (``os._exit``)."""
    if x == bad:
        with open(Path(folder) / f"attempt-{time.monotonic_ns()}", "w"):
            pass
        os._exit(3)
    return x


def tick(x: int, folder: str, ignore_interrupts: bool = False) -> int:
    """Write our pid, then append a tick to ``folder``/ticks every 20 ms, for up to 60 s.
    ``ignore_interrupts``: carry on through KeyboardInterrupt (only a kill stops it)."""
    (Path(folder) / "pid").write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            _tick(folder)
            time.sleep(0.02)
        except KeyboardInterrupt:
            if not ignore_interrupts:
                raise
    return x


def tick_deaf(x: int, folder: str) -> int:
    """``tick`` deaf to everything but a kill: SIGALRM ignored (as code stuck in C never
    returns to Python to see it), KeyboardInterrupt too."""
    import signal

    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    return tick(x, folder, ignore_interrupts=True)


def _tick(folder: str) -> None:
    with open(Path(folder) / "ticks", "a") as ticks:
        ticks.write(".")


def names(folder: Path, pattern: str) -> list[str]:
    """The names of the files in ``folder`` that match ``pattern``."""
    return sorted(path.name for path in folder.glob(pattern))


async def tick_async(x: int, folder: str) -> int:
    """Like ``tick``, in a coroutine; its ``finally`` leaves a file named ``finally``."""
    (Path(folder) / "pid").write_text(str(os.getpid()))
    try:
        for _ in range(3000):
            _tick(folder)
            await asyncio.sleep(0.02)
    finally:
        (Path(folder) / "finally").write_text("ran")
    return x


#: Set by ``remember`` (the initializer) in each Ray worker process; read by ``remembered``.
_state: dict[str, Any] = {}


def remember(value: str, folder: str) -> None:
    _state["value"] = value
    with open(Path(folder) / f"init-{os.getpid()}-{time.monotonic_ns()}", "w"):
        pass


def remembered(_: int) -> tuple[int, Any]:
    return os.getpid(), _state.get("value")


def refuse(_: str) -> None:
    raise RuntimeError("no model here")
