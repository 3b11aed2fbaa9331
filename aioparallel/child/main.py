"""The worker process, started by the pool as ``python -c <boot> ROOT REQ RESP SLOT LIFELINE
PARENT_PID`` (``backends.processes.worker._BOOT``): descriptor numbers of the pipes and slot
the parent created, and the parent's pid if it wants the kernel's parent-death signal (else 0).

Imports only the standard library and its siblings in ``aioparallel.child`` (a cold start
costs ~20 ms, not ~100 ms).
It reads jobs from the request pipe, runs their calls in order, and streams results back on
the response pipe; when jobs come back to back and a core is to spare, it watches for the
next one for a moment before it sleeps (``SPIN_SECONDS``). Before each call it writes the
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
import select
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

#: Results are sent at least this often during a long batch, so a crash loses little.
FLUSH_SECONDS = 0.05
#: After a job, a worker watches for the next frame for up to twice its last wait (at most
#: this), if that was under this, before it sleeps in ``read``: waking a sleeping process
#: costs ~30-50 µs (on a VM, an interrupt to another virtual CPU), as much as a one-call
#: job's whole work. Only if the job said a core is to spare (``protocol.SPIN``: nobody
#: waits for a worker, and the pool's other busy ones and the parent leave it one).
SPIN_SECONDS = 0.0005
#: One wait in this many goes the way the worker does not prefer (``Worker._watching``).
SPIN_PROBE = 16
#: A pair of waits counts for at most this much either way (``Worker._count``): a wake
#: costs tens of microseconds; a pair that differs by more differed in what the parent did.
GAIN_LIMIT = 0.00005
#: While it watches, it yields its CPU this often: the parent, woken by its results, may have
#: been put on this CPU (the other idle), and would otherwise wait for this one's time slice.
SPIN_YIELD = 0.00002
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
        #: Seconds to watch for the next frame before sleeping (``SPIN_SECONDS``), if the
        #: last job allowed it and a CPU is to spare now (``_cpu_to_spare``).
        self.spin = 0.0
        self.may_spin = False
        #: The last wait was longer than SPIN_SECONDS: jobs may have stopped coming.
        self._paused = False
        #: What watching saved on the wait for the next frame, on average: the sleeping
        #: wait minus the watching one, of two waits one after the other (``_watching``).
        self._gain: float | None = None
        #: The last wait counted: whether it was watched, and how long it was.
        self._last: tuple[bool, float] | None = None
        self._probes = 0
        self._poll = select.poll()
        self._poll.register(req_fd, select.POLLIN)
        self._loadavg = _open_loadavg()
        self._cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1

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

    def _next_frame(self, since: float) -> tuple[int, bytes] | None:
        """The next frame from the parent, or None at end of file. ``since``: when this
        worker last sent a job's results; the wait since then sets the next spin."""
        spin = self.spin
        could = bool(spin and self.may_spin and self._cpu_to_spare())
        watched = could and self._watching()
        if watched:
            deadline = since + spin
            poll, clock = self._poll.poll, time.perf_counter
            yield_at = since + SPIN_YIELD
            while not poll(0):
                now = clock()
                if now > deadline:
                    break
                if now > yield_at:  # a process woken on this CPU (the parent) goes first
                    os.sched_yield()
                    yield_at = now + SPIN_YIELD
        frame = protocol.read_frame(self.req_fd)
        waited = time.perf_counter() - since
        # what this way of waiting took, waking included; but a frame that came long after
        # the watch would have ended finds the worker asleep either way: its wait (the
        # parent had no job for it, as between two workloads) says nothing about how to
        # wait, and counted in, it held a worker asleep for a hundred short waits after
        if could and waited <= spin + SPIN_SECONDS:
            self._count(watched, waited)
        if waited < SPIN_SECONDS:
            self.spin, self._paused = min(2 * waited, SPIN_SECONDS), False
        else:  # the first job after a pause: the run's next may follow at once (a caller's
            # calls one after another), so watch once more; after a second such wait, sleep
            self.spin, self._paused = (0.0 if self._paused else SPIN_SECONDS), True
        return frame

    def _count(self, watched: bool, waited: float) -> None:
        """Count a wait: where the way of waiting changed from the last one (a probe, or
        back from one), the difference of the two is a sample of what watching saves.
        Waits one after the other are compared, not averages of each way: how long the
        parent takes to send the next job changes with the work (jobs of many calls, then
        single calls), and averages taken under different work compared the work (a
        worker that had watched through W1's big jobs slept through W3's single calls)."""
        last = self._last
        if last is not None and last[0] != watched:
            gain = waited - last[1] if last[0] else last[1] - waited  # slept minus watched
            gain = max(-GAIN_LIMIT, min(gain, GAIN_LIMIT))  # one odd pair moves it a little
            self._gain = gain if self._gain is None else (self._gain + gain) / 2
        self._last = (watched, waited)

    def _watching(self) -> bool:
        """Whether to watch for this frame: while watching has made the wait shorter than
        sleeping did (it costs the parent a CPU where the machine has fewer than it seems,
        as a virtual machine on a busy host), except one wait in ``SPIN_PROBE``, which goes
        the other way to keep measuring both."""
        self._probes += 1
        better = self._gain is None or self._gain >= 0
        return better != (self._probes % SPIN_PROBE == 0)

    def _cpu_to_spare(self) -> bool:
        """Linux: the processes runnable now, this one and the parent its results just woke
        among them, are no more than this process's CPUs: watching takes a CPU nobody
        wants (another worker still computing would share one with the parent). Elsewhere
        the job's word (``may_spin``) is taken."""
        if self._loadavg is None:
            return True
        try:  # "0.52 0.58 0.59 2/189 12345": running / all
            running = int(os.pread(self._loadavg, 64, 0).split()[3].split(b"/")[0])
        except (OSError, IndexError, ValueError):
            return False
        return running <= self._cpus

    def serve(self) -> None:
        observe.watch_logging(self.logs)
        protocol.write_frame(self.resp_fd, protocol.READY, str(os.getpid()).encode())
        env: tuple[list[str], str] | None = None
        since = time.perf_counter()
        while True:
            frame = self._next_frame(since)
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
            self.may_spin = bool(flags & protocol.SPIN)
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


def _open_loadavg() -> int | None:
    """``/proc/loadavg``, held open for ``Worker._cpu_to_spare`` (Linux); None elsewhere."""
    try:
        return os.open("/proc/loadavg", os.O_RDONLY)
    except OSError:
        return None


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
