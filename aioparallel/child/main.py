"""The worker process, started by the pool as ``python -c <boot> ROOT REQ RESP SLOT LIFELINE
PARENT_PID`` (``backends.processes.worker._BOOT``): descriptor numbers of the pipes and slot
the parent created, and the parent's pid if it wants the kernel's parent-death signal (else 0).

Imports only the standard library and its siblings in ``aioparallel.child`` (a cold start
costs ~20 ms, not ~100 ms).
It reads jobs from the request pipe, runs their calls in order, and streams results back on
the response pipe; when jobs come back to back and a core is to spare, it watches for the
next one for a moment before it sleeps (``waiting``). Before each call it writes the
call's number and start time into the shared slot, so the parent can tell which call was
running if this process dies or runs past its timeout. A thread blocks on the lifeline
pipe: when the parent dies, the pipe reaches end of file and the worker (with its process
group) exits at once, even in the middle of a call, unless that call holds the GIL (then
Linux's parent-death signal does it).
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import signal
import sys
import threading
import time
import types
from typing import Any

from . import context, observe, protocol, results
from .arrays import drop_pages, noting
from .slot import SIZE as SLOT_SIZE
from .slot import CrashSlot
from .waiting import NextFrame

#: Results are sent at least this often during a long batch, so a crash loses little.
FLUSH_SECONDS = 0.05
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _watch_parent(lifeline_fd: int) -> None:
    """The lifeline: at its end of file the parent is gone, so this process and the ones its
    tasks started (our process group) end at once. Where the kernel's parent-death signal
    is not used (macOS), this is the only guard: it needs the GIL, so a C call that holds
    it delays the end until it returns."""
    try:
        while os.read(lifeline_fd, 1):
            pass
    except OSError:
        pass
    if os.getpgrp() == os.getpid():  # we lead the group (see main)
        try:
            os.killpg(os.getpid(), signal.SIGKILL)
        except OSError:  # pragma: no cover - we are in it: cannot fail
            pass
    os._exit(0)


class Worker:
    def __init__(self, req_fd: int, resp_fd: int, slot: CrashSlot):
        self.req_fd = req_fd
        self.resp_fd = resp_fd
        self.slot = slot
        self.write_lock = threading.Lock()
        #: The records tasks logged, waiting for a LOG frame (sent before any RESULTS frame).
        self.logs = observe.Logs(resp_fd, self.write_lock)
        #: The worker's event loop thread (``async_loop.WorkerLoop``), once needed.
        self.loop: Any = None
        #: How it waits for the parent's next frame (watching the pipe, or asleep in ``read``).
        self.frames = NextFrame(req_fd)

    def send_results(
        self,
        positions: list[int],
        values: list[Any],
        done: bool,
        run_dir: str,
        max_nbytes: int | None,
    ) -> None:
        """One RESULTS frame. Sync results that could run code while pickled were pickled
        one by one as their calls returned (``_outcome``); async outcomes are pickled here,
        on the loop thread."""
        try:
            body = results.dump_results(values, run_dir, max_nbytes)
        except BaseException:  # a result's __reduce__ may raise anything
            body = protocol.dumps([results.picklable(v) for v in values])
        kind = protocol.RESULTS
        if len(body) > protocol.INLINE_LIMIT:
            try:
                body, kind = protocol.spill(run_dir, body, "results-"), protocol.RESULTS_FILE
            except OSError as exc:  # the run's folder is unusable: each value fails with why
                body = protocol.dumps([protocol.TaskError.capture(exc)] * len(values))
        with self.write_lock:
            wrote = run_dir in protocol.wrote_into  # under the lock: said by one frame
            if wrote:
                protocol.wrote_into.discard(run_dir)
            frame = protocol.results_header(positions, done, wrote) + body
            self.logs.send_locked()  # the records of these calls arrive before their results
            protocol.write_frame(self.resp_fd, kind, frame)

    def run_job(
        self,
        base: int,
        loaded_from: float,
        stop_on_error: bool,
        run_dir: str,
        max_nbytes: int | None,
        func: Any,
        calls: list[Any],
        async_job: tuple[bytes | None, float | None, int],
        values: tuple[Any, context.Values] | None,
        memory_limit: int | None,
        time_budget: float | None,
        mapped: list[Any],
    ) -> None:
        """Run the calls in order; async ones (``async_job``: per-call flags or None, timeout,
        concurrency), and coroutines sync calls return, go to the worker's loop thread and
        finish out of order. ``values``: the caller's context variables, or None; past
        ``memory_limit`` resident bytes after a call, or ``time_budget`` seconds into the job,
        the rest is left to other workers.
        A sync call's slot clock starts with it (the first's with the job's loading) and runs
        while its result is pickled; a result leaves once ``FLUSH_SECONDS`` passed since the
        last frame, measured as its call returns: before a slow call's next one starts.
        A call's arguments are let go as it starts, and the pages of the job's memmaps
        (``mapped``) that a sync call read leave this process as it returns."""
        slot, logs, monotonic = self.slot, self.logs, time.monotonic
        job = _Job(self, base, stop_on_error, run_dir, max_nbytes, func, async_job, values)
        # the hot loop below: locals only, one clock read and two slot writes per sync call
        keep, outcome, coroutine = job.keep, results.outcome, types.CoroutineType
        flags, loop, around = async_job[0], None, values[0] if values is not None else None
        limited = memory_limit is not None or time_budget is not None
        for i, call in enumerate(calls):
            calls[i] = None  # only ``call`` holds them now: freed once it is done
            if (loop is not None and loop.stopped) or (
                limited and i and _past(memory_limit, time_budget, loaded_from)
            ):
                break
            if flags is not None and flags[i]:
                if not job.submit(i, call):
                    break
                loop = job.loop
                continue
            if i:  # the results of the calls before leave first if it is time (the first
                # call's clock starts with the job's loading)
                started = monotonic()
                if started - job.last_flush > FLUSH_SECONDS:
                    job.flush()
                    started = monotonic()
            else:
                started = loaded_from
            slot.running(base, i, started)
            logs.task = i  # whose records these are
            try:
                if around is not None:
                    value = _in_context(around, func, call)
                elif func is not None:
                    value = func(*call)
                else:
                    f, args, kwargs = call
                    value = f(*args, **kwargs)
                if type(value) is coroutine:  # never hand back an un-awaited one
                    if not job.submit_coroutine(i, value):
                        break
                    loop = job.loop
                    continue
            except BaseException as exc:
                slot.sending(base, i)  # pickling the exception may run its code too
                error = protocol.TaskError.capture(exc)
                keep(i, (error, protocol.dumps(error)))
                if stop_on_error:
                    break
            else:
                keep(i, outcome(value, slot, base, i, run_dir, max_nbytes))
            if mapped:
                drop_pages(mapped)
        job.end()

    def async_loop(self, job: _Job) -> Any:
        """The event loop thread, started on the first async call of this worker's life."""
        if self.loop is None:
            from . import async_loop

            self.loop = async_loop.WorkerLoop(self.req_fd)
        self.loop.begin(
            job.async_job[1],
            job.stop_on_error,
            job.send_async,
            job.base,
            job.values,
            job.async_job[2],
            job.slot,
        )
        return self.loop

    def serve(self) -> None:
        observe.watch_logging(self.logs)
        protocol.write_frame(self.resp_fd, protocol.READY, str(os.getpid()).encode())
        env: tuple[list[str], str] | None = None
        since = time.perf_counter()
        while True:
            frame = self.frames.next(since)
            if frame is None:
                return
            kind, body = frame
            if kind == protocol.CANCEL:  # late: the job it was meant for has finished
                continue
            if kind == protocol.SETUP:
                path, cwd, authkey, levels = pickle.loads(body)
                self.logs.set_levels(levels)
                env = (path, cwd)
                _enter(env)
                if authkey is not None:  # before any job is unpickled: its proxies need it
                    _set_authkey(authkey)
                continue
            if kind == protocol.INIT:
                _initialize(self, body)
                if env is not None:  # whatever the initializer did, jobs run where sent
                    _enter(env)
                continue
            base, flags = protocol.JOB_HEADER.unpack_from(body)
            self.frames.may_spin = bool(flags & protocol.SPIN)
            body = body[protocol.JOB_HEADER.size :]
            loaded_from = time.monotonic()  # the job's timeout clock starts now
            self.slot.loading(base, loaded_from)
            try:
                job = _load(kind, body)
            except BaseException as exc:
                text = "".join(_format(exc))
                protocol.write_frame(
                    self.resp_fd, protocol.LOAD_ERROR, text.encode("utf-8", "replace")
                )
                continue
            finally:
                self.slot.idle()
            self.run_job(base, loaded_from, *job)
            since = time.perf_counter()
            del job  # its memmaps are unmapped now, not when the next job arrives
            if env is not None:  # whatever its tasks did, the next job runs where it was sent
                _enter(env)


class _Job:
    """One job while its calls run (``Worker.run_job``): the sync outcomes waiting for their
    results frame, and the event loop its async calls went to, begun at the first one."""

    __slots__ = (
        "async_job",
        "base",
        "func",
        "last_flush",
        "logs",
        "loop",
        "max_nbytes",
        "positions",
        "results",
        "run_dir",
        "slot",
        "stop_on_error",
        "values",
        "worker",
    )

    def __init__(
        self,
        worker: Worker,
        base: int,
        stop_on_error: bool,
        run_dir: str,
        max_nbytes: int | None,
        func: Any,
        async_job: tuple[bytes | None, float | None, int],
        values: tuple[Any, context.Values] | None,
    ):
        self.worker = worker
        self.slot = worker.slot
        self.logs = worker.logs
        self.logs.base = base
        self.base = base
        self.stop_on_error = stop_on_error
        self.run_dir = run_dir
        self.max_nbytes = max_nbytes
        self.func = func
        self.async_job = async_job
        #: The caller's context variables, set in each async task too.
        self.values = values[1] if values is not None else []
        #: The worker's event loop thread, once this job handed it a call.
        self.loop: Any = None
        self.positions: list[int] = []
        self.results: list[Any] = []
        self.last_flush = time.monotonic()

    def send_async(self, done_positions: list[int], values: list[Any]) -> None:
        self.worker.send_results(done_positions, values, False, self.run_dir, self.max_nbytes)

    def flush(self) -> None:
        self.worker.send_results(self.positions, self.results, False, self.run_dir, self.max_nbytes)
        self.slot.sent(self.base)  # the pipe has them now: it outlives this process too
        self.positions, self.results = [], []
        self.last_flush = time.monotonic()

    def keep(self, i: int, outcome: tuple[Any, bytes | float | None]) -> None:
        """Call ``i``'s outcome waits for the next frame in the slot's journal (or, when
        the journal is full, goes out now with those waiting); then it counts as
        finished: never run again, even if this process dies before the frame."""
        self.positions.append(i)
        self.results.append(outcome[0])
        if not self.slot.returned(self.base, i, outcome[1]):  # no room in the journal:
            self.flush()  # this outcome goes with the kept ones, into the pipe
            self.slot.finished(self.base, i + 1)
        if self.logs.records:  # they leave before the next call, which may kill us
            self.logs.send()

    def _begin_loop(self) -> Any:
        if self.loop is None:
            self.loop = self.worker.async_loop(self)
        return self.loop

    def submit(self, i: int, call: Any) -> bool:
        """Hand async call ``i`` to the event loop (waiting for room under the job's
        concurrency); False if the job stopped."""
        loop = self._begin_loop()
        self.slot.idle()  # no sync call running while we wait for room
        f, args, kwargs = (self.func, call, {}) if self.func is not None else call
        if not loop.submit(i, f, args, kwargs):
            return False
        self.slot.finished(self.base, i + 1)
        return True

    def submit_coroutine(self, i: int, coroutine: Any) -> bool:
        """Hand the coroutine sync call ``i`` returned to the event loop, to be awaited
        there; False (the coroutine closed, never run) if the job stopped."""
        self.slot.idle()
        loop = self._begin_loop()
        if not loop.submit_coroutine(i, coroutine):
            return False
        self.slot.finished(self.base, i + 1)
        return True

    def end(self) -> None:
        """Wait for the job's async calls, then send the last frame (``done``)."""
        if self.loop is not None:
            self.slot.idle()
            self.loop.end()
        _flush_output()  # what the calls printed goes out before their results come back
        self.worker.send_results(self.positions, self.results, True, self.run_dir, self.max_nbytes)
        self.slot.idle()
        self.logs.task = None  # records from now on belong to no call


def _flush_output() -> None:
    """Flush the worker's stdout and stderr: it stays warm after its caller's event loop
    ends, so its exit is no longer when a block-buffered print shows up."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # replaced or closed by a task
            pass


def _enter(env: tuple[list[str], str]) -> None:
    """Take the parent's ``sys.path`` and working directory (SETUP), or return to them after
    a job whose tasks changed them: the parent sends them only when its own change, so a
    task's ``os.chdir`` must not outlive its job. (Environment variables a task sets do
    stay, as with joblib: they are the process's own, not the parent's view.)"""
    path, cwd = env
    if sys.path != path:
        sys.path[:] = path
    try:
        if os.getcwd() == cwd:
            return
    except OSError:  # a task removed the directory it moved into
        pass
    try:
        os.chdir(cwd)
    except OSError:  # the parent's directory is gone: stay where we are
        pass


def _load(kind: int, body: bytes) -> tuple[Any, ...]:
    """A job as ``run_job`` takes it (but its base and clock), from its frame's body."""
    if kind == protocol.BATCH_FILE:
        body = protocol.unspill(body)
    mapped: list[Any] = []
    noting(mapped)  # the job's memmaps: their pages leave as each call returns (drop_pages)
    try:
        unpickler = pickle.Unpickler(io.BytesIO(body))
        meta = unpickler.load()
        stop_on_error, run_dir, max_nbytes, func, n_chunks, async_job, carried, limit, budget = meta
        calls: list[Any] = unpickler.load() if n_chunks else []  # a fresh list: ours to extend
        for _ in range(n_chunks - 1):
            calls += unpickler.load()
        values = context.load(carried)
    finally:
        noting(None)
    return stop_on_error, run_dir, max_nbytes, func, calls, async_job, values, limit, budget, mapped


def _past(memory_limit: int | None, time_budget: float | None, loaded_from: float) -> bool:
    """The job may start no further call: past its worker's memory limit or its time."""
    if time_budget is not None and time.monotonic() - loaded_from > time_budget:
        return True
    return _over(memory_limit) if memory_limit else False


def _over(memory_limit: int) -> bool:
    """This worker's resident memory is past ``max_worker_memory`` (Linux's
    ``/proc/self/statm``; where it cannot be read, the parent checks after the job)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE > memory_limit
    except (OSError, IndexError, ValueError):
        return False


def _in_context(around: Any, func: Any, call: Any) -> Any:
    """A sync call in a copy of the context holding the caller's values: whatever it sets
    there ends with it."""
    if func is not None:
        return around.copy().run(func, *call)
    f, args, kwargs = call
    return around.copy().run(f, *args, **kwargs)


def _initialize(worker: Worker, body: bytes) -> None:
    """Run the user's ``initializer(*initargs)`` once, before any job; answer INIT_DONE, or
    INIT_ERROR with what it raised (unpickling it included), whatever its type. What it
    logged goes first."""
    try:
        initializer, initargs = pickle.loads(body)
        initializer(*initargs)
    except BaseException as exc:  # the parent stops the run with it, and kills this worker
        kind, answer = protocol.INIT_ERROR, protocol.dumps(protocol.TaskError.capture(exc))
    else:
        kind, answer = protocol.INIT_DONE, b""
    with worker.write_lock:
        worker.logs.send_locked()
        protocol.write_frame(worker.resp_fd, kind, answer)


def _set_authkey(authkey: bytes) -> None:
    """Take the parent's ``multiprocessing`` authkey, so ``Manager()`` proxies in the jobs
    can authenticate to their manager. Imported here, not at start: multiprocessing costs
    a worker ~5-10 ms, paid only when the parent uses it."""
    from multiprocessing import process

    if bytes(process.current_process().authkey) != authkey:
        process.current_process().authkey = authkey


def _format(exc: BaseException) -> list[str]:
    import traceback

    return traceback.format_exception(type(exc), exc, exc.__traceback__)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel SIGKILL us when the parent dies, even while a C call holds the
    GIL and the lifeline thread cannot run. (The parent asks for it, with its pid, where its
    ``FEATURES.death_signal`` says so, from its event loop's own thread: the signal follows
    the spawning thread, not the process.)"""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(0)


def main(argv: list[str]) -> None:
    req_fd, resp_fd, slot_fd, lifeline_fd, parent_pid = (int(a) for a in argv)
    # Lead a process group of our own: the processes our tasks start join it, and the
    # parent kills the whole group when it kills us (as loky does).
    try:
        os.setpgid(0, 0)
    except OSError:  # pragma: no cover - already a group leader
        pass
    if parent_pid:  # 0: the parent wants no death signal (not Linux, or AIOPARALLEL_PORTABLE)
        _die_with_parent(parent_pid)
    for fd in (req_fd, resp_fd, lifeline_fd):  # a task's own subprocesses must not hold them
        os.set_inheritable(fd, False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    threading.Thread(target=_watch_parent, args=(lifeline_fd,), daemon=True).start()
    slot = CrashSlot(mmap.mmap(slot_fd, SLOT_SIZE))
    os.close(slot_fd)
    try:
        Worker(req_fd, resp_fd, slot).serve()
    except BrokenPipeError:
        pass
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
