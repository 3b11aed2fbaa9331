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
from typing import Any

import anyio

from .._detached import loop_identity, spawn_detached
from .._system import IN_WORKER_ENV, blas_thread_env
from . import _wire

__all__ = ["Pool", "WorkerProcess", "shared_pool"]

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
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (OSError, ChildProcessError):
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
    """A child process started synchronously (so no cancellation can lose it half-spawned),
    awaited through a pidfd where the kernel has them."""

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
        return self.popen.poll()

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.kill()
            except ProcessLookupError:
                pass

    async def wait(self) -> int:
        """The exit code, once the process ends; several tasks may wait at once."""
        while (code := self.popen.poll()) is None:
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
        """Reap synchronously: only for cleanup that can no longer await."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


class WorkerProcess:
    """One worker process and its pipes, driven from the event loop."""

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
        try:
            with anyio.fail_after(STARTUP_TIMEOUT):
                frame = await worker.read_frame()
            if frame is None or frame[0] != _wire.READY:
                raise RuntimeError(f"worker process {worker.pid} failed to start")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await worker.kill()
            raise
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
                chunk = os.read(self._resp, 1 << 20)
            except BlockingIOError:
                if self.process.returncode is not None:
                    return None  # exited, pipe empty; a process it forked may hold it open
                with anyio.move_on_after(LIVENESS_SECONDS):
                    await anyio.wait_readable(self._resp)
                continue
            except OSError:
                return None
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
                await anyio.wait_writable(self._req)
                continue
            data = data[written:]

    async def sync_env(self) -> None:
        """Give the worker the parent's current sys.path and working directory."""
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
        """SIGKILL without waiting (safe from any task)."""
        if self.process.returncode is None:
            try:
                self.process.kill()
            except ProcessLookupError:
                pass

    async def exit_code(self) -> int | None:
        """Wait (bounded) for the process to end; kill it if it does not."""
        with anyio.move_on_after(2):
            return await self.process.wait()
        self.kill_now()
        with anyio.move_on_after(2):
            return await self.process.wait()
        return None

    async def kill(self) -> None:
        """Kill, reap and release every descriptor. Call shielded."""
        self.kill_now()
        await self._reap()

    async def stop(self) -> None:
        """Ask the worker to exit (end of its request pipe, so it flushes its output first),
        then reap it. Call shielded."""
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
                if self.process.returncode is not None:
                    _live_pids.discard(self.pid)
                for fd in (self._req, self._resp, self._lifeline):
                    if fd >= 0:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
                self._slot.close()
                self.process.close()


class Pool:
    """Up to ``size`` workers, handed out first come, first served."""

    def __init__(self, size: int, idle_timeout: float = 300.0):
        self.size = size
        self.idle_timeout = idle_timeout
        self._idle: list[WorkerProcess] = []
        self._busy: set[WorkerProcess] = set()
        self._live = 0
        self._waiters: deque[tuple[anyio.Event, list[WorkerProcess | None]]] = deque()
        self.closed = False
        #: Set when the idle timeout changes, so the keeper recomputes its next wake-up.
        self.retimed = anyio.Event()

    async def acquire(self) -> WorkerProcess:
        if self.closed:
            raise RuntimeError("the worker pool is shut down")
        while self._idle:
            worker = self._idle.pop()
            if worker.alive:
                self._busy.add(worker)
                return worker
            self._live -= 1
            with anyio.CancelScope(shield=True):
                await worker.kill()
        if self._live < self.size:
            self._live += 1
            return await self._spawn()
        event = anyio.Event()
        handed: list[WorkerProcess | None] = []
        entry = (event, handed)
        self._waiters.append(entry)
        try:
            await event.wait()
        except BaseException:
            if handed:  # handed over just as we were cancelled: pass it on
                self._pass_on(handed[0])
            else:
                self._waiters.remove(entry)
            raise
        given = handed[0]
        if given is None:  # a permission to replace a dead worker
            return await self._spawn()
        return given

    async def _spawn(self) -> WorkerProcess:
        try:
            worker = await WorkerProcess.spawn(self.size)
        except BaseException:
            self._pass_on(None)
            raise
        self._busy.add(worker)
        return worker

    def release(self, worker: WorkerProcess) -> None:
        """Give a worker back; a dead one (already killed by the caller) frees its place."""
        self._busy.discard(worker)
        if worker.closed or not worker.alive or self.closed:
            self._pass_on(None)
            return
        worker.last_used = time.monotonic()
        self._pass_on(worker)

    def _pass_on(self, worker: WorkerProcess | None) -> None:
        if self._waiters:
            event, handed = self._waiters.popleft()
            handed.append(worker)
            if worker is not None:
                self._busy.add(worker)
            event.set()
        elif worker is None:
            self._live -= 1
        else:
            self._busy.discard(worker)
            self._idle.append(worker)

    async def reap_idle(self) -> float:
        """Stop workers idle past ``idle_timeout``; seconds until the next may expire."""
        now = time.monotonic()
        keep = []
        for worker in self._idle:
            if now - worker.last_used >= self.idle_timeout or not worker.alive:
                self._live -= 1
                with anyio.CancelScope(shield=True):
                    await worker.stop()
            else:
                keep.append(worker)
        self._idle[:] = keep
        if not keep:
            return self.idle_timeout
        return max(0.01, min(w.last_used for w in keep) + self.idle_timeout - now)

    async def close(self) -> None:
        """Stop every worker (busy ones are killed). Call shielded."""
        self.closed = True
        idle, self._idle = self._idle, []
        busy, self._busy = list(self._busy), set()
        for worker in busy:
            worker.kill_now()
        async with anyio.create_task_group() as tg:
            for worker in idle:
                tg.start_soon(worker.stop)
            for worker in busy:
                tg.start_soon(worker.kill)
        while self._waiters:
            event, handed = self._waiters.popleft()
            handed.append(None)
            event.set()


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
