"""A real dask cluster for the dask backend's tests, and the task functions it runs.

``ExternalCluster`` starts ``dask scheduler`` and ``dask worker`` processes (with nannies,
so a killed worker comes back, as in a real deployment) on 127.0.0.1 with random ports and
tears them all down. The workers get the repository root on their ``PYTHONPATH``, so the
task functions below are importable there by name (``tests.dask_cluster``), as a user's own
module would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import psutil
from distributed import Client, LocalCluster, SchedulerPlugin

# the tasks shared with the other suites, re-exported for the tests that import them here
from tests.helpers import add as add
from tests.helpers import fail_on as fail_on
from tests.helpers import square as square

if TYPE_CHECKING:
    from tests.conftest import LeakCheck

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGTERM the child if pytest dies, so no cluster outlives a killed test run."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ExternalCluster:
    """A scheduler and ``n_workers`` single-threaded workers, as separate processes."""

    def __init__(self, folder: Path, n_workers: int = 2, allowed_failures: int = 1) -> None:
        self.folder = folder
        self.n_workers = n_workers
        self.allowed_failures = allowed_failures
        self.scheduler_file = folder / "scheduler.json"
        self.address = ""
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            # A task whose worker dies is retried once, then fails with KilledWorker.
            "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": str(allowed_failures),
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"process-{len(self.processes)}.log", "wb")  # noqa: SIM115
        with log:
            process = subprocess.Popen(
                [sys.executable, "-m", *args],
                cwd=self.folder,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.processes.append(process)
        return process

    def start(self) -> str:
        """Start everything; return the scheduler address once all workers have joined."""
        self._spawn(
            "distributed.cli.dask_scheduler",
            "--host=127.0.0.1",
            "--port=0",
            "--no-dashboard",
            f"--scheduler-file={self.scheduler_file}",
        )
        self.address = self._wait_for_scheduler_file()
        for _ in range(self.n_workers):
            self.spawn_worker()
        asyncio.run(self.wait_for_workers())
        return self.address

    def spawn_worker(self) -> subprocess.Popen[bytes]:
        """One more nanny-managed single-thread worker; the caller waits for it to join."""
        return self._spawn(
            "distributed.cli.dask_worker",
            "--host=127.0.0.1",
            "--nthreads=1",
            "--nworkers=1",
            "--no-dashboard",
            "--death-timeout=60",
            f"--local-directory={self.folder}",
            f"--scheduler-file={self.scheduler_file}",
        )

    async def retire_worker(self, nanny: subprocess.Popen[bytes]) -> None:
        """Stop a worker that ``spawn_worker`` added, until the scheduler no longer counts it:
        the session's cluster is back to its own size for the tests after."""
        nanny.terminate()
        await asyncio.to_thread(nanny.wait, 15)
        self.processes.remove(nanny)
        self.n_workers -= 1
        async with Client(self.address, asynchronous=True, set_as_default=False) as client:
            deadline = time.monotonic() + START_TIMEOUT
            while len((await client.scheduler.identity())["workers"]) > self.n_workers:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the retired worker is still on the scheduler: {nanny.pid}")
                await asyncio.sleep(0.05)

    async def set_allowed_failures(self, n: int) -> None:
        """How many times a task may be on a worker that dies before it fails with KilledWorker
        (the scheduler reads it at each death; its start value is ``allowed_failures``)."""
        async with Client(self.address, asynchronous=True, set_as_default=False) as client:
            await client.run_on_scheduler(_set_allowed_failures, n)

    def _wait_for_scheduler_file(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.processes[0].poll() is not None:
                raise RuntimeError(f"dask scheduler exited: {self.logs()}")
            with contextlib.suppress(OSError, ValueError):
                return str(json.loads(self.scheduler_file.read_text())["address"])
            time.sleep(0.05)
        raise TimeoutError(f"dask scheduler did not start in {START_TIMEOUT}s: {self.logs()}")

    async def wait_for_workers(self, n: int | None = None) -> None:
        """Until ``n`` (default: all) workers are connected; bounded by START_TIMEOUT."""
        async with Client(self.address, asynchronous=True, set_as_default=False) as client:
            await client.wait_for_workers(n or self.n_workers, timeout=START_TIMEOUT)

    def worker_pids(self) -> set[int]:
        """Pids of the worker processes (the nannies' children)."""
        pids: set[int] = set()
        for nanny in self.processes[1:]:
            with contextlib.suppress(psutil.NoSuchProcess):
                pids.update(child.pid for child in psutil.Process(nanny.pid).children())
        return pids

    def stop(self) -> None:
        """Terminate workers, then the scheduler; kill whatever is left, descendants too."""
        family: list[psutil.Process] = []
        for process in self.processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                family += psutil.Process(process.pid).children(recursive=True)
        # Workers first, and wait for them: a worker whose scheduler is already gone spends
        # its nanny's whole close timeout trying to say goodbye.
        workers, scheduler = self.processes[1:], self.processes[:1]
        for group in (workers, scheduler):
            for process in group:
                if process.poll() is None:
                    process.terminate()
            for process in group:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
        _, alive = psutil.wait_procs(family, timeout=5)
        for leftover in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
        psutil.wait_procs(alive, timeout=5)

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.folder.glob("*.log"))


def _set_allowed_failures(n: int, dask_scheduler: Any) -> None:  # runs on the scheduler
    dask_scheduler.allowed_failures = n


def adopt_restarted_workers(leak_check: LeakCheck, cluster: ExternalCluster) -> None:
    """A nanny replaced a killed worker: the new process is the cluster's, not a leak."""
    leak_check.before.children |= cluster.worker_pids()


# -- the in-process cluster (``local`` fixture): its scheduler is inspectable ---------------------


class SchedulerLog(SchedulerPlugin):
    """Sees every transition of an in-process scheduler: scattered keys, and when to look."""

    def __init__(self) -> None:
        self.array_keys: set[str] = set()
        self._changed = asyncio.Event()

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if str(key).startswith("aioparallel-array-"):
            self.array_keys.add(str(key))
        self._changed.set()

    async def wait_for(self, condition: Callable[[], bool], seconds: float = 10) -> None:
        """Until ``condition()`` holds, checked after each transition; bounded."""
        with anyio.fail_after(seconds):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


@dataclass
class Local:
    cluster: LocalCluster
    client: Client
    log: SchedulerLog

    def no_tasks(self) -> bool:
        return not self.cluster.scheduler.tasks


# -- task functions: imported by name on the workers -------------------------------------------


def total(*arrays: Any, **named: Any) -> float:
    """Sum of every array found in the arguments (nested in lists/dicts too)."""
    result = 0.0
    for item in [*arrays, *named.values()]:
        if isinstance(item, (list, tuple)):
            result += total(*item)
        elif isinstance(item, dict):
            result += total(**item)
        else:
            result += float(item.sum())
    return result


def type_name(x: object) -> str:
    return type(x).__name__


def make_lock(_: int) -> threading.Lock:
    return threading.Lock()


def exit_task(code: int) -> None:
    raise SystemExit(code)


def pid(_: int = 0) -> int:
    return os.getpid()


def kill_own_worker(_: int) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


#: In-process (``processes=False``) clusters only: lets a test hold a task on its worker.
gate = threading.Event()
started = threading.Event()


def wait_for_gate(x: int) -> int:
    started.set()
    gate.wait(30)
    return x


def report_then_wait(x: int, queue: str, event: str) -> int:
    """Put this worker's pid on a dask Queue, then block until the dask Event is set."""
    from distributed import Event, Queue

    Queue(queue).put(os.getpid())
    Event(event).wait(30)
    return x


def kill_when_queued(x: int, bad: int, report: str) -> int:
    """Task ``bad`` kills its worker process; the others sleep 50 ms and return ``x``.

    On its first attempt, task ``bad`` waits (bounded) until its worker holds another task
    queued behind it, and writes how many it saw to the file ``report``: the death then
    falls on a worker that holds innocent work too. Later attempts kill at once.
    """
    if x != bad:
        time.sleep(0.05)
        return x
    if not os.path.exists(report):
        from distributed import get_worker

        worker = get_worker()
        own = worker.get_current_task()
        deadline = time.monotonic() + 20
        queued: list[Any] = []
        while not queued and time.monotonic() < deadline:
            tasks = list(worker.state.tasks.items())  # one C call: safe beside the loop thread
            queued = [k for k, ts in tasks if k != own and ts.state in ("ready", "constrained")]
            time.sleep(0.005)
        Path(report).write_text(str(len(queued)))
    os.kill(os.getpid(), signal.SIGKILL)
    return x
