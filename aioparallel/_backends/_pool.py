"""Worker processes and the warm pool that keeps them between runs.

A ``WorkerProcess`` is a fresh interpreter (never a fork of the event-loop process) with
four descriptors the parent created: a request pipe, a response pipe, a lifeline pipe whose
end of file tells the worker its parent is gone, and a 16-byte shared slot where the worker
notes which call it is running. No network socket is involved.

A ``Pool`` hands workers out first come, first served, so concurrent runs share it fairly;
it replaces dead workers lazily, reaps idle ones after ``idle_timeout``, and is shut down
when its event loop ends (the shared pools) or when ``async with Parallel()`` exits (a
private pool). Workers still alive at interpreter exit are killed then.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio

from .._detached import loop_identity, spawn_detached
from .._system import IN_WORKER_ENV, blas_thread_env
from . import _wire

__all__ = ["Pool", "PoolClosedError", "WorkerProcess", "shared_pool"]

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from aioparallel._backends._worker import main; main(sys.argv[1:])"
)
STARTUP_TIMEOUT = 60.0
#: While waiting for results, how often to check that the worker is still alive: end of
#: file on its pipe says so at once, unless a process the task forked holds the pipe.
LIVENESS_SECONDS = 1.0
_F_SETPIPE_SZ = 1031
_live_pids: set[int] = set()


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_live_pids):
        try:
            os.killpg(pid, signal.SIGKILL)  # its tasks' processes: it is their group leader
        except OSError:
            pass
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass


def _slot_fd() -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("aioparallel-slot", 0)
    else:  # pragma: no cover - non-Linux
        fd, path = tempfile.mkstemp(prefix=_wire.FOLDER_PREFIX)
        os.unlink(path)
    os.ftruncate(fd, _wire.SLOT_SIZE)
    return fd


class _Child:
    """A worker process started synchronously (so no cancellation can lose it half-spawned),
    awaited through a pidfd where the kernel has them.

    The worker leads its own process group (it calls ``setpgid`` first thing), so ``kill()``
    takes the processes its tasks started with it (SPEC §6). Its exit is observed without
    reaping it (``waitid(WNOWAIT)``) until ``reap()``: while the dead leader is unreaped, its
    pid and group id cannot be reused, so the group kill can never hit a stranger, even
    after a crash the parent noticed late. (A task that moves its children into a session
    of their own, ``setsid()``, takes them out of our reach: we do not walk ``/proc``.)
    """

    def __init__(self, popen: subprocess.Popen[bytes]):
        self.popen = popen
        self.pid = popen.pid
        self._waiting: anyio.Event | None = None
        try:
            self._pidfd = os.pidfd_open(popen.pid) if hasattr(os, "pidfd_open") else -1
        except OSError:
            self._pidfd = -1

    @property
    def returncode(self) -> int | None:
        """The exit code (negative: the signal) once the process has ended; None while it
        runs. Does not reap it."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # pragma: no cover - reaped behind our back
            return self.popen.poll()
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def kill(self) -> None:
        """SIGKILL the process and its process group (until it is reaped: after that, the
        numbers may belong to others)."""
        if self.popen.returncode is not None:
            return
        for kill in (os.killpg, os.kill):  # the group is not there yet for a ms at start-up
            try:
                kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    async def wait(self) -> int:
        """The exit code, once the process ends (not reaped); several tasks may wait."""
        while (code := self.returncode) is None:
            if self._waiting is not None:  # one task watches the pidfd, the others its event
                await self._waiting.wait()
                continue
            self._waiting = anyio.Event()
            try:
                if self._pidfd >= 0:
                    await anyio.wait_readable(self._pidfd)
                else:  # pragma: no cover - no pidfd: poll
                    await anyio.sleep(0.01)
            finally:
                self._waiting.set()
                self._waiting = None
        return code

    def wait_blocking(self, timeout: float) -> None:
        """Wait synchronously for the end: only for cleanup that can no longer await."""
        deadline = time.monotonic() + timeout
        while self.returncode is None and time.monotonic() < deadline:
            time.sleep(0.001)

    def reap(self) -> None:
        """Collect the ended process's exit status (after which its pid may be reused)."""
        if self.returncode is not None:
            self.popen.wait()

    def close(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


class WorkerProcess:
    """One worker process and its pipes, driven from the event loop.

    Its descriptors and slot are closed only by the task that holds the worker (the pool's
    ``release``, ``reap_idle`` or ``close`` once the worker is out of every list): another
    task that wants it gone only signals it (``kill_now``), so no reader ever finds a
    descriptor closed (or reused for another file) under it.
    """

    def __init__(self, process: _Child, req: int, resp: int, lifeline: int, slot: Any):
        self.process = process
        self.pid: int = process.pid
        self._req = req
        self._resp = resp
        self._lifeline = lifeline
        self._slot = slot
        self._buffer = bytearray()
        self._env: tuple[list[str], str] | None = None
        self._seq = 0
        self.last_used = time.monotonic()
        self.closed = False

    @classmethod
    async def spawn(cls, n_workers: int) -> WorkerProcess:
        import mmap

        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        life_r, life_w = os.pipe()
        slot_fd = _slot_fd()
        child_ends = (req_r, resp_w, slot_fd, life_r)
        for fd in (req_w, resp_w):
            try:
                fcntl.fcntl(fd, _F_SETPIPE_SZ, _wire.INLINE_LIMIT + _wire.HEADER.size)
            except OSError:
                pass
        env = {**os.environ, **blas_thread_env(n_workers), IN_WORKER_ENV: "1"}
        # The kernel's parent-death signal follows the spawning thread: the loop's thread,
        # which outlives the pool, since the pool closes when its loop ends.
        death_signal = str(os.getpid())
        try:
            process = _Child(
                subprocess.Popen(  # noqa: ASYNC220 (a ~1 ms fork/exec that must not be cut short)
                    [
                        sys.executable,
                        "-c",
                        _BOOT,
                        _PACKAGE_ROOT,
                        *map(str, child_ends),
                        death_signal,
                    ],
                    stdin=subprocess.DEVNULL,
                    pass_fds=child_ends,
                    env=env,
                )
            )
        except BaseException:
            for fd in (*child_ends, req_w, resp_r, life_w):
                os.close(fd)
            raise
        slot = mmap.mmap(slot_fd, _wire.SLOT_SIZE)
        for fd in child_ends:  # the child has its copies; the mapping keeps the slot
            os.close(fd)
        os.set_blocking(req_w, False)
        os.set_blocking(resp_r, False)
        worker = cls(process, req_w, resp_r, life_w, slot)
        _live_pids.add(worker.pid)
        started = False
        try:
            with anyio.fail_after(STARTUP_TIMEOUT):
                frame = await worker.read_frame()
            if frame is None or frame[0] != _wire.READY:
                raise RuntimeError(f"worker process {worker.pid} failed to start")
            started = True
        finally:  # not in an ``except``: nothing of ours becomes the context of what is raised
            if not started:
                with anyio.CancelScope(shield=True):
                    await worker.kill()
        return worker

    # -- frames ------------------------------------------------------------------------------

    async def read_frame(self) -> tuple[int, bytes] | None:
        """The next frame, or None once the worker has exited (end of file)."""
        header_size = _wire.HEADER.size
        while True:
            buffer = self._buffer
            if len(buffer) >= header_size:
                kind, length = _wire.HEADER.unpack_from(buffer)
                end = header_size + length
                if len(buffer) >= end:
                    body = bytes(buffer[header_size:end])
                    del buffer[:end]
                    return kind, body
            try:
                chunk: bytes | None = os.read(self._resp, 1 << 20)
            except BlockingIOError:
                chunk = None  # wait below, outside the handler (no internal context)
            except OSError:
                return None
            if chunk is None:
                if self.process.returncode is not None:
                    return None  # exited, pipe empty; a process it forked may hold it open
                with anyio.move_on_after(LIVENESS_SECONDS):
                    await anyio.wait_readable(self._resp)
                continue
            if not chunk:
                return None
            buffer += chunk

    async def write_frame(self, kind: int, body: bytes) -> None:
        """Raises BrokenPipeError if the worker is gone."""
        data = memoryview(_wire.HEADER.pack(kind, len(body)) + body)
        while data:
            try:
                written = os.write(self._req, data)
            except BlockingIOError:
                written = 0  # wait below, outside the handler (no internal context)
            if not written:
                await anyio.wait_writable(self._req)
                continue
            data = data[written:]

    async def sync_env(self) -> None:
        """Give the worker the parent's current sys.path and working directory. (The worker
        returns to the last ones it was given after each job, so this cache stays true
        whatever a task did.)"""
        env = (list(sys.path), os.getcwd())
        if env != self._env:
            await self.write_frame(_wire.SETUP, pickle.dumps(env))
            self._env = env

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def running(self, seq: int) -> tuple[int, int, float] | None:
        """What the worker is doing for job ``seq``: (phase flag, position in the job, start
        time of that call); None if it is not working on that job."""
        number = _wire.SLOT_POS.unpack_from(self._slot, 0)[0]
        started = _wire.SLOT_TIME.unpack_from(self._slot, 8)[0]
        if number < 0 or number >> _wire.BATCH_SHIFT != seq:
            return None
        phase = number & (_wire.SLOT_LOADING | _wire.SLOT_SENDING)
        return phase, number & _wire.POSITION_MASK, started

    def async_started(self, seq: int) -> int:
        """Job position of the last async call the worker started for job ``seq``, or -1."""
        number = _wire.SLOT_POS.unpack_from(self._slot, _wire.SLOT_ASYNC)[0]
        if number < 0 or number >> _wire.BATCH_SHIFT != seq:
            return -1
        return int(number & _wire.POSITION_MASK)

    # -- life and death ----------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return not self.closed and self.process.returncode is None

    def kill_now(self) -> None:
        """SIGKILL it and its process tree, without waiting: a signal only, safe from any
        task (the holder reaps it and closes its descriptors)."""
        self.process.kill()

    async def exit_code(self) -> int | None:
        """Wait (bounded) for the process to end; kill it if it does not."""
        with anyio.move_on_after(2):
            return await self.process.wait()
        self.kill_now()
        with anyio.move_on_after(2):
            return await self.process.wait()
        return None

    async def kill(self) -> None:
        """Kill it and its process tree, reap it and close every descriptor. Only for the
        worker's holder; call shielded."""
        self.kill_now()
        await self._reap()

    async def stop(self) -> None:
        """Ask the worker to exit (end of its request pipe, so it flushes its output first),
        then reap it. Only for the worker's holder; call shielded."""
        if not self.closed and self._req >= 0:
            try:
                os.close(self._req)
            except OSError:
                pass
            self._req = -1
        try:
            with anyio.move_on_after(1):
                await self.process.wait()
        finally:
            if self.process.returncode is None:
                self.kill_now()
            await self._reap()

    async def _reap(self) -> None:
        try:
            with anyio.move_on_after(5):
                await self.process.wait()
        finally:  # even if the end of the event loop cuts the wait short
            if self.process.returncode is None:
                self.kill_now()
                self.process.wait_blocking(1.0)  # killed: gone in a few ms
            if not self.closed:
                self.closed = True
                self.process.reap()
                if self.process.popen.returncode is not None:
                    _live_pids.discard(self.pid)
                for fd in (self._req, self._resp, self._lifeline):
                    if fd >= 0:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
                self._slot.close()
                self.process.close()


class PoolClosedError(RuntimeError):
    """The pool was shut down: no worker to be had."""


#: What a waiter may be handed: a worker, or this, a place to spawn one in.
_PLACE: Any = object()


class _Waiter:
    def __init__(self) -> None:
        self.event = anyio.Event()
        self.handed: Any = None  # a WorkerProcess, _PLACE, or None (nothing, or closed)


class _Roster:
    """The pool's ``size`` places and who holds each: the one owner of "live worker
    processes <= size". Its methods are the only way to change its state, and none awaits,
    so no task ever sees a half-made change.

    A place is the permission to have one worker process; it counts from the moment a
    spawn is allowed until the process is reaped::

                  claim()               spawned(w)              release(w)
          free ───────────> spawning ─────────────> busy <──────────────────> idle
           ^ ^                 │                    │  │       take()          │
           │ └── free_place() ─┘                    │  └── (release: handed to a waiter)
           │                           retire(w)    │                          │
           └──── free_place() ── retiring <─────────┴───────── retire_idle() ──┘

    ``free_place()`` and ``release()`` hand the place (to spawn in) or the worker straight
    to the first waiter, if any: it then stays counted. ``close()`` wakes every waiter
    empty-handed and sends every idle worker to ``retiring``; busy ones stay with their
    holders, which retire them when they give them back (``closed`` says so).
    """

    def __init__(self, size: int):
        self.size = size
        self.count = 0
        self.idle: list[WorkerProcess] = []
        self.busy: set[WorkerProcess] = set()
        self.waiters: deque[_Waiter] = deque()
        self.closed = False
        self._emptied = anyio.Event()

    def take(self) -> WorkerProcess | None:
        """idle -> busy: the most recently used idle worker (alive or not), if any."""
        if not self.idle:
            return None
        worker = self.idle.pop()
        self.busy.add(worker)
        return worker

    def claim(self) -> _Waiter | None:
        """free -> spawning if a place is free (None); else a waiter queued for the next
        worker or place given back."""
        if self.closed:
            raise PoolClosedError("the worker pool is shut down")
        if self.count < self.size:
            self.count += 1
            return None
        waiter = _Waiter()
        self.waiters.append(waiter)
        return waiter

    def withdraw(self, waiter: _Waiter) -> Any:
        """A waiter stops waiting: what it was handed (None if nothing)."""
        if waiter.handed is None and waiter in self.waiters:
            self.waiters.remove(waiter)
        return waiter.handed

    def spawned(self, worker: WorkerProcess) -> None:
        """spawning -> busy."""
        self.busy.add(worker)

    def release(self, worker: WorkerProcess) -> None:
        """busy -> idle, or to the first waiter (still busy). A closed roster takes no idle
        worker: retire it instead."""
        assert not self.closed and worker in self.busy
        if self.waiters:
            self._hand(worker)
        else:
            self.busy.discard(worker)
            self.idle.append(worker)

    def retire(self, worker: WorkerProcess) -> None:
        """busy -> retiring: its holder now kills and reaps it, then calls free_place()."""
        self.busy.discard(worker)

    def retire_idle(self, expired: Callable[[WorkerProcess], bool]) -> list[WorkerProcess]:
        """idle -> retiring, for each idle worker that ``expired`` says must go."""
        going: list[WorkerProcess] = []
        keep: list[WorkerProcess] = []
        for worker in self.idle:
            (going if expired(worker) else keep).append(worker)
        self.idle[:] = keep
        return going

    def free_place(self) -> None:
        """spawning or retiring -> free, or (spawning) to the first waiter."""
        if self.waiters and not self.closed:
            self._hand(_PLACE)
            return
        self.count -= 1
        if self.closed and self.count == 0:
            self._emptied.set()

    def close(self) -> list[WorkerProcess]:
        """Refuse new claims, wake every waiter empty-handed; the idle workers, now retiring."""
        self.closed = True
        while self.waiters:
            self.waiters.popleft().event.set()
        idle, self.idle = self.idle, []
        if self.count == 0:
            self._emptied.set()
        return idle

    async def emptied(self) -> None:
        """Wait until every place is free again (after ``close``)."""
        await self._emptied.wait()

    def _hand(self, given: Any) -> None:
        waiter = self.waiters.popleft()
        waiter.handed = given
        if given is not _PLACE:
            self.busy.add(given)
        waiter.event.set()


class Pool:
    """Up to ``size`` workers, handed out first come, first served.

    A worker's holder gives it back with ``release`` (healthy or not); the holder, not the
    pool, kills and reaps an unhealthy one, so its descriptors are closed by the one task
    that reads them. ``close`` only signals busy workers and waits (bounded) for their
    holders to give them back.
    """

    #: How long ``close`` waits for busy workers' holders to give them back.
    CLOSE_WAIT = 5.0

    def __init__(self, size: int, idle_timeout: float = 300.0):
        self.size = size
        self.idle_timeout = idle_timeout
        self._roster = _Roster(size)
        #: Set when the idle timeout changes, so the keeper recomputes its next wake-up.
        self.retimed = anyio.Event()

    @property
    def closed(self) -> bool:
        return self._roster.closed

    async def acquire(self) -> WorkerProcess:
        """A worker for the caller to hold until it calls ``release``. Raises
        ``PoolClosedError`` once the pool is shut down."""
        roster = self._roster
        while not roster.closed:
            worker = roster.take()
            if worker is None:
                break
            if worker.alive:
                return worker
            with anyio.CancelScope(shield=True):  # died while idle
                await self.release(worker, healthy=False)
        waiter = roster.claim()
        if waiter is not None:
            waited = False
            try:
                await waiter.event.wait()
                waited = True
            finally:
                handed = roster.withdraw(waiter)
                if not waited and handed is not None:  # handed over as we were cancelled
                    await self._give_back(handed)
            if handed is None:
                raise PoolClosedError("the worker pool is shut down")
            if handed is not _PLACE:
                return handed  # type: ignore[no-any-return]
        return await self._spawn()

    async def _give_back(self, handed: Any) -> None:
        if handed is _PLACE:
            self._roster.free_place()
        else:
            with anyio.CancelScope(shield=True):
                await self.release(handed)

    async def _spawn(self) -> WorkerProcess:
        try:
            worker = await WorkerProcess.spawn(self.size)
        except BaseException:
            self._roster.free_place()
            raise
        self._roster.spawned(worker)
        if self.closed:  # shut down while it started
            with anyio.CancelScope(shield=True):
                await self.release(worker, healthy=False)
            raise PoolClosedError("the worker pool is shut down")
        return worker

    async def release(self, worker: WorkerProcess, healthy: bool = True) -> None:
        """Give a held worker back. A healthy one goes to the next waiter or the idle list;
        any other (unhealthy, dead, or the pool closed) is killed with its process tree and
        reaped here, in the holder's task, and its place freed. Call shielded."""
        roster = self._roster
        if healthy and worker.alive and not roster.closed:
            worker.last_used = time.monotonic()
            roster.release(worker)
            return
        roster.retire(worker)
        try:
            await worker.kill()
        finally:
            roster.free_place()

    async def reap_idle(self) -> float:
        """Stop workers idle past ``idle_timeout``; seconds until the next may expire."""
        now = time.monotonic()
        for worker in self._roster.retire_idle(
            lambda w: now - w.last_used >= self.idle_timeout or not w.alive
        ):
            await self._stop(worker)
        keep = self._roster.idle
        if not keep:
            return self.idle_timeout
        return max(0.01, min(w.last_used for w in keep) + self.idle_timeout - time.monotonic())

    async def _stop(self, worker: WorkerProcess) -> None:
        """Stop a retiring worker (kill it and its tree if it died: a crash) and free its
        place."""
        try:
            with anyio.CancelScope(shield=True):
                await (worker.stop() if worker.alive else worker.kill())
        finally:
            self._roster.free_place()

    async def close(self) -> None:
        """Stop the idle workers; kill the busy ones (a signal: their holders reap them and
        fail their calls) and wait, bounded, for them to come back. Call shielded."""
        roster = self._roster
        idle = roster.close()
        for worker in roster.busy:
            worker.kill_now()
        async with anyio.create_task_group() as tg:
            for worker in idle:
                tg.start_soon(self._stop, worker)
        with anyio.move_on_after(self.CLOSE_WAIT):
            await roster.emptied()


_shared: dict[tuple[object, int], Pool] = {}


def shared_pool(size: int, idle_timeout: float) -> Pool:
    """The warm pool of this event loop for ``size`` workers, shut down when the loop ends."""
    key = (loop_identity(), size)
    pool = _shared.get(key)
    if pool is not None and not pool.closed:
        if pool.idle_timeout != idle_timeout:
            pool.idle_timeout = idle_timeout
            pool.retimed.set()
        return pool
    pool = Pool(size, idle_timeout)
    _shared[key] = pool

    async def keeper() -> None:
        try:
            while True:
                with anyio.move_on_after(await pool.reap_idle()):
                    await pool.retimed.wait()
                    pool.retimed = anyio.Event()
        finally:
            _shared.pop(key, None)
            with anyio.CancelScope(shield=True):
                await pool.close()

    spawn_detached(keeper)
    return pool
