"""Shared fixtures: the leak check every test runs under, the anyio backend matrix, the dask
clusters, the local Ray instance.

The leak check snapshots child processes, threads, file descriptors and ``aioparallel-*``
temp folders before each test and fails the test if new ones are still there after it.
Cleanup may finish asynchronously, so it waits, bounded: it polls at short intervals for up
to ``LEAK_WAIT`` seconds and returns as soon as everything is gone. The shared pool keeps
idle workers warm across event loops, by design (docs/workers.md): each poll first stops the idle
ones (``aioparallel.shutdown_workers()``), so only a worker still busy is a leak.

Ordering: the check is a plain sync autouse fixture, so pytest sets it up before the event
loop of the test (pytest-asyncio appends its runner fixture after autouse fixtures; the anyio
plugin opens and closes its runner around the test call) and tears it down after the loop is
closed. ``test_leak_check_runs_after_the_loop_closed`` in test_api.py checks this.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest
import pytest_asyncio

import aioparallel
from aioparallel.backends.processes import tracker as _tracker
from tests.helpers import MODES

if TYPE_CHECKING:  # imported by the dask fixtures only: other sessions need no distributed
    from tests.dask_cluster import ExternalCluster, Local
    from tests.ray_helpers import RaySession

#: Seconds the leak check waits for asynchronous cleanup before it fails the test.
LEAK_WAIT = 5.0
_POLL = 0.01

try:  # tqdm's monitor thread would outlive every test that draws a bar
    import tqdm

    tqdm.tqdm.monitor_interval = 0
except ImportError:  # pragma: no cover
    pass


try:  # uvloop opens one process-wide pipe (libuv's signal pipe) with its first loop: do
    # that now, so the leak check's snapshots all include it
    import uvloop

    uvloop.new_event_loop().close()
except ImportError:  # pragma: no cover  (Windows)
    pass


# The folder tracker (a detached process and its pipe, started when a run first names a folder)
# lives as long as the session: start it now, so that every snapshot includes its pipe.
_tracker.start()


if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):  # keep .hypothesis/ out of the checkout
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "hypothesis-aioparallel-tests")


def _temp_roots() -> list[Path]:
    roots = [Path("/dev/shm"), Path(tempfile.gettempdir())]
    env = os.environ.get("AIOPARALLEL_TEMP_FOLDER")
    if env:
        roots.append(Path(env))
    return [root for root in roots if root.is_dir()]


def _idle_trio_threads() -> set[int]:
    """Threads parked in trio's global thread cache (they idle for 10 s, by design)."""
    module = sys.modules.get("trio._core._thread_cache")
    if module is None:
        return set()
    cache = getattr(module, "THREAD_CACHE", None)
    workers = list(getattr(cache, "_idle_workers", {}))
    return {w._thread.ident for w in workers if getattr(w, "_thread", None) is not None}


def _open_fds() -> dict[int, str]:
    fds: dict[int, str] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # not Linux: skip this part of the check
        return fds
    for name in names:
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listdir's own fd, already closed
            continue
    return fds


def _folder_owner(path: str) -> int | None:
    """The pid in an ``aioparallel-<pid>-<token>`` folder name: another process's folders
    (a concurrent test session) are not this test's leaks."""
    match = re.match(r"aioparallel-(\d+)-", os.path.basename(path))
    return int(match[1]) if match else None


@dataclass
class Snapshot:
    children: set[int] = field(default_factory=set)
    threads: set[int | None] = field(default_factory=set)
    fds: dict[int, str] = field(default_factory=dict)
    temp_folders: set[str] = field(default_factory=set)

    @classmethod
    def take(cls) -> Snapshot:
        return cls(
            children={p.pid for p in psutil.Process().children(recursive=True)},
            threads={t.ident for t in threading.enumerate()},
            fds=_open_fds(),
            temp_folders={
                str(path) for root in _temp_roots() for path in root.glob("aioparallel-*")
            },
        )

    def leaks_since(self, before: Snapshot) -> list[str]:
        """What is here now and was not before, described for the failure message."""
        leaks: list[str] = []
        for proc in psutil.Process().children(recursive=True):
            if proc.pid in before.children:
                continue
            try:
                desc = f"{proc.status()} {' '.join(proc.cmdline())[:120]}"
            except psutil.Error as exc:
                desc = type(exc).__name__
            leaks.append(f"child process {proc.pid} ({desc})")
        idle = _idle_trio_threads()
        for thread in threading.enumerate():
            if thread.ident not in before.threads and thread.ident not in idle:
                leaks.append(f"thread {thread.name!r} (daemon={thread.daemon})")
        for fd, target in self.fds.items():
            if before.fds.get(fd) != target:
                leaks.append(f"file descriptor {fd} -> {target}")
        ours = {os.getpid(), *before.children, *self.children}
        leaks.extend(
            f"temp folder {path}"
            for path in sorted(self.temp_folders - before.temp_folders)
            if _folder_owner(path) in (None, *ours)
        )
        return leaks


def leaks_after(before: Snapshot, wait: float = LEAK_WAIT) -> list[str]:
    """Poll until nothing leaked (bounded by ``wait`` seconds); the leaks left, if any. Idle
    shared workers are not leaks: they are stopped first."""
    deadline = time.monotonic() + wait
    while True:
        aioparallel.shutdown_workers()
        leaks = Snapshot.take().leaks_since(before)
        if not leaks or time.monotonic() >= deadline:
            return leaks
        time.sleep(_POLL)


@dataclass
class LeakCheck:
    """What ``leak_check`` yields: the snapshot, and hooks to run at its teardown."""

    before: Snapshot
    #: Called at teardown, before the leak poll (a test can check what state it sees).
    at_teardown: list[Callable[[], None]] = field(default_factory=list)


@pytest.fixture(autouse=True)
def leak_check(request: pytest.FixtureRequest) -> Iterator[LeakCheck]:
    """Fail the test if it leaves child processes, threads, fds or temp folders behind."""
    check = LeakCheck(Snapshot.take())
    yield check
    for hook in check.at_teardown:
        hook()
    leaks = leaks_after(check.before)
    if leaks:
        pytest.fail(
            f"{request.node.nodeid} leaked (still there {LEAK_WAIT:g}s after the test):\n  "
            + "\n  ".join(leaks),
            pytrace=False,
        )


def _anyio_backends() -> list[Any]:
    params: list[Any] = [pytest.param("asyncio", id="asyncio")]
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover  (Windows)
        pass
    else:
        params.append(pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"))
    params.append(pytest.param("trio", id="trio"))
    return params


def choice_fixture(values: list[str]) -> Any:
    """A fixture that takes each of ``values`` in turn; named by the module attribute it is
    bound to (``backend = choice_fixture(BACKENDS)``), for lists that differ by module."""

    @pytest.fixture(params=values)
    def choice(request: pytest.FixtureRequest) -> str:
        return str(request.param)

    return choice


#: Each ``return_as`` mode in turn.
mode = choice_fixture(MODES)


@pytest.fixture(params=_anyio_backends())
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """The loop matrix of ``@pytest.mark.anyio`` tests: asyncio, asyncio+uvloop, trio."""
    return request.param


# -- dask: the session's real cluster, the in-process one, distributed's own thread -------------


@pytest.fixture(scope="session")
def dask_offload_thread() -> None:
    """distributed keeps one offload thread for the life of the process, by design: start it
    before the leak check's first snapshot (a session fixture is set up before a test's own),
    so that no test is blamed for it."""
    pytest.importorskip("distributed")
    from distributed.utils import _offload_executor

    _offload_executor.submit(int).result(timeout=10)


@pytest.fixture(scope="session")
def external(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExternalCluster]:
    """A real cluster: a scheduler and two nanny-managed single-thread workers on 127.0.0.1,
    started once per session by the first test that asks for it.

    The leak check: pytest sets a session fixture up before the function-scoped ``leak_check``
    of the test that first needs it, so the cluster's processes are in that test's snapshot
    and every later one. A test that kills a worker adopts its replacement
    (``dask_cluster.adopt_restarted_workers``); a test that changes the cluster (its size, its
    allowed failures, its worker plugins) puts it back before it ends.
    """
    from tests.dask_cluster import ExternalCluster

    cluster = ExternalCluster(tmp_path_factory.mktemp("dask-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
    leftovers = [p.pid for p in cluster.processes if p.poll() is None]
    assert not leftovers, f"dask processes left running: {leftovers}"


@pytest_asyncio.fixture
async def local() -> AsyncIterator[Local]:
    """Two single-thread workers in this process; their scheduler is inspectable."""
    from distributed import Client, LocalCluster

    from tests import dask_cluster

    dask_cluster.gate.clear()
    dask_cluster.started.clear()
    async with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=False,
            asynchronous=True,
            dashboard_address=":0",
        ) as cluster,
        Client(cluster, asynchronous=True, set_as_default=False) as client,
    ):
        log = dask_cluster.SchedulerLog()
        cluster.scheduler.add_plugin(log)
        try:
            yield dask_cluster.Local(cluster, client, log)
        finally:
            dask_cluster.gate.set()  # free any worker thread a test left waiting


# -- ray: the session's local Ray instance --------------------------------------------------------


@pytest.fixture(scope="session")
def ray_session() -> Iterator[RaySession]:
    """A local Ray instance (2 CPUs), started once per session by the first test that asks
    for it (a session fixture: set up before that test's leak check snapshots), stopped at the
    end of the session with every process it started."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'aioparallel[ray]'")
    from tests.ray_helpers import start_session, stop_session

    session = start_session()
    try:
        yield session
    finally:
        leftovers = stop_session(session)
    assert not leftovers, f"Ray processes left running after ray.shutdown(): {leftovers}"


@pytest.fixture
def ray_cluster(ray_session: RaySession, leak_check: LeakCheck) -> RaySession:
    """The session's Ray, for one test: the worker processes Ray starts or replaces during the
    test, or while the leak check polls after it (it spawns them on demand and reaps idle ones),
    and the driver's connections to them, are Ray's, not leaks: the snapshot counts the
    descendants of Ray's node processes, and the sockets to Ray's node, as they are when
    asked, and nothing else."""
    from tests.ray_helpers import RayAware, RayFds

    leak_check.before.children = RayAware(leak_check.before.children, ray_session)
    leak_check.before.fds = RayFds(leak_check.before.fds, ray_session)
    return ray_session
