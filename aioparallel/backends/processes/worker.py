"""The parent's handle on one worker process: spawn it, talk to it, kill and reap it.

A ``WorkerProcess`` is a fresh interpreter (never a fork of the event-loop process) with
four descriptors the parent created: a request pipe, a response pipe, a lifeline pipe whose
end of file tells the worker its parent is gone, and a small shared slot where the worker
notes which call it is running. No network socket is involved. Its descriptors are closed
only by the task that holds it; a kill takes its process group (the task's own
subprocesses). Workers still alive at interpreter exit are stopped then.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import select
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import anyio

from ..._detached import _in_trio
from ..._errors import describe_exit
from ..._system import FEATURES, IN_WORKER_ENV, blas_thread_env
from ...child import protocol
from ...child.slot import SIZE as SLOT_SIZE
from ...child.slot import CrashSlot, Snapshot
from ..crossloop import resolve
from ..failures import rebuild
from ..setup import PLAIN, WorkerSetup, initializer_error
from . import logs
from .process import ChildProcess

__all__ = ["WorkerProcess", "wait_readable"]

#: The folder that holds the ``aioparallel`` package (this file is
#: ``aioparallel/backends/processes/worker.py``): first on the worker's ``sys.path``.
_PACKAGE_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 3))
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from aioparallel.child.main import main; main(sys.argv[1:])"
)
STARTUP_TIMEOUT = 60.0
#: While waiting for results, how often to check that the worker is still alive: end of
#: file on its pipe says so at once, unless a process the task forked holds the pipe.
LIVENESS_SECONDS = 1.0
_F_SETPIPE_SZ = 1031
#: While the parent watches for a reply (``WorkerProcess._watch``), it yields its CPU this
#: often, as a watching worker does (``child.waiting.SPIN_YIELD``).
WATCH_YIELD = 0.00002


def _death_signal_parent() -> int:
    """The pid a new worker checks its parent against when it asks the kernel for a death
    signal; 0: ask for none. The signal follows the spawning *thread*, and the shared pools
    outlive the loops (and threads) that spawn their workers: only the main thread, which
    lasts as long as the process, may ask. (Workers spawned elsewhere still die with the
    process through their lifeline pipe.)"""
    if not FEATURES.death_signal:
        return 0
    return os.getpid() if threading.current_thread() is threading.main_thread() else 0


def _slot_fd() -> int:
    """The worker's slot (``child.slot``): a memfd, or a temp file unlinked at once (macOS).
    Close on exec either way: only the worker it is passed to (``pass_fds``) gets it."""
    if FEATURES.memfd:
        fd = os.memfd_create("aioparallel-slot")
    else:
        fd, path = tempfile.mkstemp(prefix=protocol.FOLDER_PREFIX + "slot-")
        os.unlink(path)
    os.ftruncate(fd, SLOT_SIZE)
    return fd


def _widen(*pipes: int) -> None:
    """Make room in the pipes for a whole inline frame: one write, one read."""
    if not FEATURES.pipe_size:
        return
    import fcntl

    for fd in pipes:
        try:
            fcntl.fcntl(fd, _F_SETPIPE_SZ, protocol.INLINE_LIMIT + protocol.HEADER.size)
        except OSError:
            pass


def _authkey() -> bytes | None:
    """The parent's ``multiprocessing`` authkey, which ``Manager()`` proxies passed to tasks
    need in the worker to reach their manager; None while the parent has not imported
    ``multiprocessing.managers`` (no proxy can exist: the worker then does not import
    ``multiprocessing`` either; the parent itself imports the package for its error types).
    It travels in the SETUP frame over the worker's own pipe, never in its environment or
    command line, where other local users could read it."""
    if "multiprocessing.managers" not in sys.modules:
        return None
    from multiprocessing import current_process

    return bytes(current_process().authkey)


class WorkerProcess:
    """One worker process and its pipes, driven from the event loop.

    Its descriptors and slot are closed only by the task that holds the worker (the pool's
    ``release``, ``reap_idle`` or ``close`` once the worker is out of every list): another
    task that wants it gone only signals it (``kill_now``), so no reader ever finds a
    descriptor closed (or reused for another file) under it.
    """

    def __init__(self, process: ChildProcess, req: int, resp: int, lifeline: int, slot: Any):
        self.process = process
        self.pid: int = process.pid
        self._req = req
        self._resp = resp
        self._lifeline = lifeline
        self._slot = slot
        self.slot = CrashSlot(slot)
        self._buffer = bytearray()
        self._poll: Any = None  # select.poll for ``_watch``, once needed
        self._env: tuple[list[str], str, bytes | None, Any] | None = None
        self._seq = 0
        self.last_used = time.monotonic()
        self.closed = False
        #: Calls it has run, across runs (``max_tasks_per_worker``).
        self.calls_run = 0
        #: We killed it (a timeout, a cancellation, a shutdown): its death is no crash.
        self.killed = False

    @classmethod
    async def spawn(cls, n_workers: int, setup: WorkerSetup = PLAIN) -> WorkerProcess:
        import mmap

        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        life_r, life_w = os.pipe()
        slot_fd = _slot_fd()
        child_ends = (req_r, resp_w, slot_fd, life_r)
        _widen(req_w, resp_w)
        threads = blas_thread_env(n_workers, setup.inner_max_num_threads)
        env = {**os.environ, **threads, IN_WORKER_ENV: "1"}
        # Without a death signal ("0") the worker's lifeline thread alone ends it when we die.
        death_signal = str(_death_signal_parent())
        try:
            process = ChildProcess(
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
        slot = mmap.mmap(slot_fd, SLOT_SIZE)
        for fd in child_ends:  # the child has its copies; the mapping keeps the slot
            os.close(fd)
        os.set_blocking(req_w, False)
        os.set_blocking(resp_r, False)
        worker = cls(process, req_w, resp_r, life_w, slot)
        started = False
        try:
            with anyio.fail_after(STARTUP_TIMEOUT):
                frame = await worker.read_frame()
            if frame is None or frame[0] != protocol.READY:
                raise RuntimeError(f"worker process {worker.pid} failed to start")
            if setup.initializer is not None:  # as long as it takes: not a start-up timeout
                await worker._initialize(setup.initializer, setup.initializer_name)
            started = True
        finally:  # not in an ``except``: nothing of ours becomes the context of what is raised
            if not started:
                with anyio.CancelScope(shield=True):
                    await worker.kill()
        return worker

    # -- frames ------------------------------------------------------------------------------

    async def read_frame(self, sent: bool = False, watch: float = 0.0) -> tuple[int, bytes] | None:
        """The next frame, or None once the worker has exited (end of file). ``sent``: a job
        was just written, so its reply cannot be there yet: wait before reading (a read that
        finds nothing costs a system call and an exception). ``watch``: for up to these
        seconds, look for the reply between the loop's other work (``_watch``) first."""
        header_size = protocol.HEADER.size
        if sent and not self._buffer and not (watch and await self._watch(watch)):
            await wait_readable(self._resp, LIVENESS_SECONDS)  # then as usual, timed out or not
        while True:
            buffer = self._buffer
            if len(buffer) >= header_size:
                kind, length = protocol.HEADER.unpack_from(buffer)
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
                readable = await wait_readable(self._resp, LIVENESS_SECONDS)
                if not readable and self.process.returncode is not None:
                    return None  # exited, pipe empty; a process it forked holds it open
                continue
            if not chunk:
                return None
            buffer += chunk

    async def _watch(self, seconds: float) -> bool:
        """Whether a reply came within ``seconds``, looked for once per pass of the event
        loop: the loop runs its other tasks meanwhile, and this process keeps its CPU. A
        reply expected within microseconds would otherwise find it asleep, and waking a
        sleeping CPU (on a virtual machine, an interrupt through the host) can cost more
        than the whole round trip."""
        poll = self._poll
        if poll is None:
            poll = self._poll = select.poll()
            poll.register(self._resp, select.POLLIN)
        clock = time.perf_counter
        now = clock()
        deadline, yield_at = now + seconds, now + WATCH_YIELD
        while not poll.poll(0):
            now = clock()
            if now > deadline:
                return False
            if now > yield_at:  # the worker, woken by our job, may have been put on our CPU
                os.sched_yield()
                yield_at = now + WATCH_YIELD
            await anyio.lowlevel.checkpoint()
        return True

    async def write_frame(self, kind: int, body: bytes) -> None:
        """Raises BrokenPipeError if the worker is gone."""
        data = memoryview(protocol.HEADER.pack(kind, len(body)) + body)
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
        """Give the worker the parent's current sys.path, working directory,
        multiprocessing authkey and logging levels. (The worker returns to the last path and
        directory it was given after each job, so this cache stays true whatever a task did.)"""
        env = (list(sys.path), os.getcwd(), _authkey(), logs.levels())
        if env != self._env:
            await self.write_frame(protocol.SETUP, pickle.dumps(env))
            self._env = env

    async def _initialize(self, payload: bytes, name: str) -> None:
        """Run the user's initializer in the new worker, after SETUP (its module may be found
        only on the parent's sys.path; a Manager proxy in its initargs needs the authkey).
        Raises ``InitializerError`` if it raised or the worker died running it."""
        await self.sync_env()
        frame: tuple[int, bytes] | None = None
        try:
            await self.write_frame(protocol.INIT, payload)
        except OSError:  # died before reading it: the exit code says why
            pass
        else:
            frame = await self.read_frame()
            while frame is not None and frame[0] == protocol.LOG:  # what the initializer logged
                await logs.handle(frame[1], logs.untold)
                frame = await self.read_frame()
        if frame is not None and frame[0] == protocol.INIT_DONE:
            return
        where = f"worker process {self.pid}"
        if frame is not None and frame[0] == protocol.INIT_ERROR:
            raise initializer_error(name, where, rebuild(pickle.loads(frame[1])))
        died = describe_exit(await self.exit_code())
        raise initializer_error(name, where, None, died=died)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def snapshot(self, seq: int) -> Snapshot:
        """What the worker's slot says about job ``seq`` now (final once it has died)."""
        return self.slot.snapshot(seq)

    # -- life and death ----------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return not self.closed and self.process.returncode is None

    def kill_now(self) -> None:
        """SIGKILL it and its process tree, without waiting: a signal only, safe from any
        task (the holder reaps it and closes its descriptors)."""
        self.killed = True
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

    def ask_to_exit(self) -> None:
        """Close its request pipe: at the end of it, the worker flushes its output and exits."""
        if not self.closed and self._req >= 0:
            try:
                os.close(self._req)
            except OSError:
                pass
            self._req = -1

    def stop_blocking(self, deadline: float) -> None:
        """``stop`` for a thread with no event loop (the idle reaper, the interpreter's exit):
        wait for the exit until ``deadline`` (``time.monotonic()``), then kill; reap, close.
        Only for the worker's holder."""
        if self.process.returncode is not None:  # it died while idle: take its tree too
            self.kill_now()
        else:
            self.ask_to_exit()
            self.process.wait_blocking(deadline - time.monotonic())
        if self.process.returncode is None:
            self.kill_now()
            self.process.wait_blocking(1.0)  # killed: gone in a few ms
        self._close()

    async def stop(self) -> None:
        """Ask the worker to exit (end of its request pipe, so it flushes its output first),
        then reap it. Only for the worker's holder; call shielded."""
        self.ask_to_exit()
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
            self._close()

    def _close(self) -> None:
        """Reap the ended process and close every descriptor (once)."""
        if self.closed:
            return
        self.closed = True
        self.process.reap()
        self._close_descriptors()
        self.process.close()

    def _close_descriptors(self) -> None:
        for fd in (self._req, self._resp, self._lifeline):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._slot.close()

    def forget_in_child(self) -> None:
        """In a forked child: close our copies of its descriptors, leave the process alone
        (it is the parent's; the lifeline must end when the parent's copy does)."""
        self.closed = True
        self._close_descriptors()
        self.process.close()


async def wait_readable(fd: int, seconds: float) -> bool:
    """Wait until ``fd`` is readable (True) or ``seconds`` have passed (False). On asyncio,
    straight on the loop: one reader and one timer, no cancel scope (anyio's
    ``move_on_after`` around ``wait_readable`` costs a tenth of a one-call run). A cancel
    arrives as the task's cancellation at the ``await``, as anyio's own wait gets it."""
    if _in_trio():
        with anyio.move_on_after(seconds):
            await anyio.wait_readable(fd)
            return True
        return False
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[bool] = loop.create_future()
    loop.add_reader(fd, resolve, woken, True)
    timer = loop.call_later(seconds, resolve, woken, False)
    try:
        return await woken
    finally:
        loop.remove_reader(fd)
        timer.cancel()
