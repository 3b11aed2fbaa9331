"""One batch on the process backend: send it, receive its outcomes, and when the worker
dies, blame the call it was running and run the rest again.

::

    BatchRun.run ──► _run_positions(todo) on one worker (run_workers.RunWorkers.acquire)
                       │
                       ├─ send:    pickling.pickle_job (on the loop while cheap, else a
                       │           thread; a large job spilled to a file) ──write_frame──► worker
                       │             └─ does not pickle: several calls -> split, one by one
                       │                                 one call       -> it fails
                       ├─ receive: _collect ◄──results frames── worker   (into results)
                       │             ├─ crash.watch_deadline (timeout=): a call past its
                       │             │   deadline -> kill the worker, Kill noted for the blame
                       │             ├─ LOG: a task's log records -> the parent's loggers
                       │             └─ LOAD_ERROR: the job did not unpickle there -> split
                       │
                       ├─ done ─────────────────────────────► release the worker (healthy)
                       └─ crashed: exit code, outcomes kept in the slot (_recover)
                                 ──► child.slot.blame(snapshot, got, flags, killed)
                                       ├─ failed:  crash.crash_errors: WorkerCrashedError /
                                       │           TimeoutError / killed / lost result
                                       │           (never run twice)
                                       ├─ rerun:   calls not started ──► a fresh worker
                                       └─ nobody:  died between calls -> rerun; after
                                                   MAX_BLAMELESS_CRASHES the next call fails

If the worker dies, the shared slot says which call it was running: that call fails with
``WorkerCrashedError`` (or ``TimeoutError`` if ``watch_deadline`` killed it for running past
``timeout``), the calls that had started or finished without their result arriving fail too
(never run twice: they may have had side effects), and the calls that had not started are
re-run on a fresh worker (``child.slot.blame`` decides which is which). A cancelled batch
asks its worker to cancel its async tasks (``_cancel_coroutines``, bounded), then kills it,
shielded, before the cancellation goes on.

(Over 450 lines: one class for one batch's life, whose send, receive and recovery steps
share its results and positions; what stands alone is in ``pickling``, ``crash`` and
``logs``.)
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from ..._call import Call, function_name
from ..._errors import PicklingError, SerializationError, UnpicklingError, attach_task
from ...child.protocol import (
    CANCEL,
    CANCEL_GRACE,
    LOAD_ERROR,
    LOG,
    RESULTS_FILE,
    TaskError,
    TempFolderError,
    TimedOut,
    split_results,
    unspill,
    wrote_files,
)
from ...child.slot import BATCH_SHIFT, Kill, blame
from ..base import Batch, Failure, RunOptions
from ..failures import (
    async_timeout_error,
    closed_error,
    raised_in_worker,
    repeated_crash_error,
    serialization_error,
)
from ..unpickling import loads
from . import logs
from .crash import Death, crash_errors, watch_deadline
from .pickling import job_flags, one_func, pickle_job
from .pool.pool import PoolClosedError, WorkerProcess
from .pool.run_workers import RunWorkers
from .tempfiles import Lease, RunFolder

__all__ = ["MAX_BLAMELESS_CRASHES", "BatchRun"]


#: Crashes that hit no call (the worker died between calls) before we blame the next call.
MAX_BLAMELESS_CRASHES = 3
_MISSING: Any = object()
#: Values of a results frame that are outcomes other than a plain result.
_OUTCOMES = frozenset({TaskError, Failure, TimedOut})
#: A run whose calls together took less than this last time (a web request's one quick
#: call) has its reply watched for this long before the parent sleeps (``_reply_watch``).
REPLY_WATCH_SECONDS = 0.0003


@dataclass
class _Attempt:
    """What came back from one worker for one job."""

    #: Job positions whose outcome arrived.
    got: set[int] = field(default_factory=set)
    #: Positions whose results arrived but could not be unpickled: run them one by one.
    resend: list[int] = field(default_factory=list)
    done: bool = False
    load_error: str | None = None
    #: We killed the worker, for this call: its timeout (the watchdog, from the snapshot it
    #: decided on), or an async call that did not finish cancelling after its timeout.
    killed: Kill | None = None


class BatchRun:
    """One batch, until every call has a result or a failure (re-running after crashes)."""

    def __init__(self, pool: RunWorkers, folder: RunFolder, options: RunOptions, batch: Batch):
        self.pool = pool
        self.folder = folder
        self.options = options
        self.batch = batch
        self.results: list[Any] = [_MISSING] * len(batch.calls)
        self.failed = False
        self.blameless = 0
        #: The array files this batch's jobs reference (released when the batch is over).
        self.lease = Lease()
        #: Set when a job did not (un)pickle as a whole: run what is left call by call.
        self._split = False

    def _index(self, position: int) -> int:
        return self.batch.start + position

    def _name(self, position: int) -> str:
        return function_name(self.batch.calls[position].func)

    def _task(self, position: int) -> tuple[int, str]:
        return self._index(position), self._name(position)

    async def run(self) -> list[Any]:
        calls = self.batch.calls
        groups = [list(range(len(calls)))]
        while groups:
            rest = await self._run_positions(groups.pop(0))
            if self.failed and self.options.stop_on_error:
                break
            if self.batch.budget is not None and _a_tail(rest, len(calls)) and not self._split:
                # the worker stopped at the batch's budget (or a limit): the run sends the
                # rest again, spread over its workers (``Batch.budget``)
                return self.results[: rest[0]]
            if rest and self._split:  # a job that did not (un)pickle: one call at a time
                groups[:0] = [[p] for p in rest]
                self._split = False
            elif rest:
                groups.insert(0, rest)
        if self.failed and self.options.stop_on_error:
            # the run stops at its first failure, in its own slot (the run names the task
            # by position); slots before it may still be empty, and are never read
            first = next(p for p, v in enumerate(self.results) if type(v) is Failure)
            return self.results[: first + 1]
        return self.results

    async def _run_positions(self, todo: list[int]) -> list[int]:
        """Run ``todo`` on one worker; return the positions that must run again: those it
        could not run, and those past the calls it has left (``max_tasks_per_worker``),
        which go on to the next worker."""
        try:
            worker = await self.pool.acquire()
        except PoolClosedError:
            return self._closed(todo, None)
        budget = self.pool.budget(worker)
        if budget is not None and budget < len(todo):
            return await self._run_on(worker, todo[:budget]) + todo[budget:]
        return await self._run_on(worker, todo)

    async def _run_on(self, worker: WorkerProcess, todo: list[int]) -> list[int]:
        """Run ``todo`` on ``worker``; return the positions that must run again.

        This task holds the worker until it gives it back (``release``, shielded); an
        unhealthy one is killed and reaped there, so its descriptors are closed by this
        task and no other."""
        if self.batch.started is None:  # auto batching times the work, not the wait
            self.batch.started = time.perf_counter()
        healthy = False
        calls = self._calls_at(todo)
        func = one_func(calls)
        flags = job_flags(calls, func)
        sent = False
        ran = 0  # calls the worker completed, whatever their outcome
        try:
            try:
                seq = worker.next_seq()
                spin = self.pool.spare_core
                body, self.batch.nbytes = await pickle_job(
                    calls,
                    func,
                    seq,
                    flags,
                    self.options,
                    self.folder,
                    self.lease,
                    self.pool.memory_limit,
                    self.batch.budget,
                    spin,
                )
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # a __reduce__ may raise anything
                healthy = True
                return self._pickling_failed(todo, exc)
            try:
                await worker.sync_env()
                await worker.write_frame(*body)
                sent = True
                if self.batch.on_sent is not None:
                    self.batch.on_sent()
            except OSError:  # the worker died while idle: nobody to blame
                return self._crashed_between(todo)
            attempt = await self._collect(worker, seq, todo, _reply_watch(spin, self.options))
            ran = len(attempt.got)
            if attempt.resend:
                self._split = True
            if attempt.done:
                healthy = attempt.killed is None  # killed as the job ended
                # calls the worker did not start (past max_worker_memory, or after the
                # failure that stops the run): they go on to another worker
                got = attempt.got
                unrun = (
                    [todo[j] for j in range(len(todo)) if j not in got]
                    if len(got) < len(todo)
                    else []
                )
                return attempt.resend + unrun
            if attempt.load_error is not None:
                healthy = True
                return self._load_failed(todo, attempt.load_error)
            rerun = await self._crashed(worker, seq, todo, attempt, flags)
            ran = len(todo) - len(rerun)  # finished, or failed with the worker
            return attempt.resend + rerun
        finally:
            if sent and not healthy:  # it may have written files no frame told us of
                self.folder.may_exist()
            self.pool.count(worker, ran)
            # a healthy worker is kept synchronously: a shielded scope costs ~25 us
            if not (healthy and self.pool.keep(worker, again=not self.batch.last)):
                with anyio.CancelScope(shield=True):
                    if not healthy and flags is not None and sent and worker.alive:
                        await _cancel_coroutines(worker)  # their finally blocks run, bounded
                    await self.pool.release(worker, healthy=False)

    # -- sending -----------------------------------------------------------------------------

    def _calls_at(self, todo: list[int]) -> Sequence[Call[Any]]:
        """The batch's calls at positions ``todo`` (ascending): all of them, most often."""
        calls = self.batch.calls
        return calls if len(todo) == len(calls) else [calls[p] for p in todo]

    def _pickling_failed(self, todo: list[int], exc: BaseException) -> list[int]:
        if isinstance(exc, TempFolderError) and len(todo) == 1:
            # the folder, not the call, is at fault: say so, naming the task it stopped
            attach_task(exc, self._index(todo[0]), self._name(todo[0]))
            self._fail(todo[0], exc)
            return []
        what = f"could not be pickled for a worker process: {type(exc).__name__}: {exc}"
        return self._serialization_failed(todo, what, cause=exc)

    def _load_failed(self, todo: list[int], tb: str) -> list[int]:
        what = (
            "could not be unpickled in the worker process (is everything it uses importable "
            "there?); see the worker traceback below"
        )
        return self._serialization_failed(todo, what, tb=tb, kind=UnpicklingError)

    def _serialization_failed(
        self,
        todo: list[int],
        what: str,
        cause: BaseException | None = None,
        tb: str | None = None,
        kind: type[SerializationError] = PicklingError,
    ) -> list[int]:
        """A job that did not (un)pickle: with several calls, find the culprit by sending them
        one by one; with one, that call fails."""
        if len(todo) > 1:
            self._split = True
            return todo
        self._fail(todo[0], self._serialization_error(todo[0], what, cause, tb, kind))
        return []

    def _serialization_error(
        self,
        position: int,
        what: str,
        cause: BaseException | None = None,
        tb: str | None = None,
        kind: type[SerializationError] = PicklingError,
    ) -> SerializationError:
        """``kind``: PicklingError or UnpicklingError, by which side of the trip failed."""
        index, name = self._index(position), self._name(position)
        return serialization_error(index, name, what, cause, tb, kind)

    # -- receiving ---------------------------------------------------------------------------

    async def _collect(
        self, worker: WorkerProcess, seq: int, todo: list[int], watch: float
    ) -> _Attempt:
        attempt = _Attempt()
        timeout = self.options.timeout
        if timeout is None:
            await self._receive(worker, seq, todo, attempt, watch)
            return attempt
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch, worker, seq, timeout, attempt)
            await self._receive(worker, seq, todo, attempt, watch)
            tg.cancel_scope.cancel()
        return attempt

    @staticmethod
    async def _watch(
        worker: WorkerProcess,
        seq: int,
        timeout: float,  # noqa: ASYNC109 (a per-call limit, not this function's)
        attempt: _Attempt,
    ) -> None:
        attempt.killed = await watch_deadline(worker, seq, timeout)  # no await between

    async def _receive(
        self, worker: WorkerProcess, seq: int, todo: list[int], attempt: _Attempt, watch: float
    ) -> None:
        """Read result frames into ``self.results`` until the job is done or the worker dies;
        hand log records to the parent's loggers as they come. ``watch``: seconds to watch
        for the first (``_reply_watch``)."""
        sent = True  # the job was just written
        while True:
            frame = await worker.read_frame(sent, watch)
            sent = False
            if frame is None:
                break
            kind, body = frame
            if kind == LOG:  # what the job's tasks logged, before their results
                await logs.handle(body, lambda task: self._task_index(seq, todo, task))
                continue
            if kind == LOAD_ERROR:
                attempt.load_error = body.decode("utf-8", "replace")
                break
            if wrote_files(body):
                self.folder.may_exist()
            job_positions, done, body = split_results(body)
            if kind == RESULTS_FILE:
                body = await anyio.to_thread.run_sync(unspill, body)
            whole = len(todo) == len(self.results)  # then todo[p] is p
            positions = job_positions if whole else [todo[p] for p in job_positions]
            attempt.got.update(job_positions)
            values = await self._loads_results(body, positions)
            if values is None:
                attempt.resend.extend(positions)
            elif (
                type(positions) is range
                and len(values) == len(positions)
                and not (_OUTCOMES.intersection(map(type, values)))
            ):  # plain results of consecutive calls (a sync job's): stored at once
                self.results[positions.start : positions.stop] = values
            else:
                self._store(worker, positions, job_positions, values, attempt)
            if done:
                attempt.done = True
                break

    def _task_index(self, seq: int, todo: list[int], task: tuple[int, int] | None) -> int | None:
        """The run index of the task of job ``seq`` that logged a record; None for a record
        of no task, or of an earlier job's task (a thread it left behind)."""
        if task is None or task[0] != seq << BATCH_SHIFT or task[1] >= len(todo):
            return None
        return self._index(todo[task[1]])

    def _store(
        self,
        worker: WorkerProcess,
        positions: Sequence[int],
        job_positions: Sequence[int],
        values: list[Any],
        attempt: _Attempt,
    ) -> None:
        results = self.results
        for position, job_position, value in zip(positions, job_positions, values, strict=True):
            if type(value) is TaskError or type(value) is Failure:
                self._fail(position, value)
            elif type(value) is TimedOut:
                self._timed_out(worker, position, job_position, value, attempt)
            else:
                results[position] = value

    def _recover(self, worker: WorkerProcess, seq: int, todo: list[int], attempt: _Attempt) -> None:
        """The outcomes the dead worker had kept in its slot, not sent yet: they are the
        outcomes of calls that finished, as if their frame had arrived."""
        for job_position, data in worker.slot.kept(seq):
            if job_position in attempt.got or job_position >= len(todo):
                continue
            position = todo[job_position]
            attempt.got.add(job_position)
            try:  # one outcome (at most the journal's size: unpickled on the loop)
                value = pickle.loads(data)
            except (Exception, SystemExit) as exc:
                what = f"returned a result that could not be unpickled in the parent: {exc!r}"
                value = Failure(
                    self._serialization_error(position, what, exc, kind=UnpicklingError)
                )
            self._store(worker, [position], [job_position], [value], attempt)

    def _timed_out(
        self,
        worker: WorkerProcess,
        position: int,
        job_position: int,
        outcome: TimedOut,
        attempt: _Attempt,
    ) -> None:
        """An async task cancelled in its worker for running past its timeout; if it did not
        finish cancelling, its worker is killed (its other tasks then count as crashed)."""
        index, name = self._index(position), self._name(position)
        timeout = self.options.timeout or 0.0
        self._fail(
            position,
            async_timeout_error(index, name, timeout, outcome.elapsed, worker.pid, outcome.stuck),
        )
        if outcome.stuck:
            attempt.killed = Kill(job_position, why="stuck")
            worker.kill_now()

    async def _loads_results(self, body: bytes, positions: Sequence[int]) -> list[Any] | None:
        """The values of a results frame; None if several did not unpickle together (then
        they are re-run one by one, to find the culprit). A large body is unpickled in a
        thread that hands the GIL to the loop at every frame: ``pickle.loads`` would hold
        it throughout (0.25-0.5 s for a million small tuples)."""
        try:
            values: list[Any] = await loads(body)
            return values
        except (Exception, SystemExit) as exc:
            if len(positions) > 1:
                return None
            what = f"returned a result that could not be unpickled in the parent: {exc!r}"
            error = self._serialization_error(positions[0], what, exc, kind=UnpicklingError)
            return [Failure(error)]

    def _fail(self, position: int, error: BaseException | TaskError | Failure) -> None:
        if isinstance(error, TaskError):
            failure = Failure(raised_in_worker(error, self._index(position), self._name(position)))
        elif isinstance(error, Failure):
            failure = error
        else:
            failure = Failure(error)
        self.results[position] = failure
        self.failed = True

    # -- crashes -----------------------------------------------------------------------------

    async def _crashed(
        self,
        worker: WorkerProcess,
        seq: int,
        todo: list[int],
        attempt: _Attempt,
        flags: bytes | None,
    ) -> list[int]:
        """Fail the calls the worker had started or finished without their outcome arriving;
        return the ones it had not started, to run again (``child.slot.blame``, from the slot as
        the dead worker left it). A call that finished is never run again."""
        exitcode = await worker.exit_code()  # first: the slot is final once it is dead
        self._recover(worker, seq, todo, attempt)
        snap = worker.snapshot(seq)
        verdicts = blame(snap, len(todo), attempt.got, flags, attempt.killed)
        if self.pool.closed:  # killed by the pool's shutdown, not by its task
            current = {todo[j] for j, v in verdicts.failed.items() if v.kind != "lost"}
            unfinished = [todo[j] for j in range(len(todo)) if j not in attempt.got]
            return self._closed(unfinished, worker.pid, current)
        if verdicts.split:  # it died unpickling the job: find the culprit call by call
            self._split = True
            return [todo[j] for j in verdicts.rerun]
        if not verdicts.failed:  # it died between calls: nobody to blame (yet)
            return self._crashed_between([todo[j] for j in verdicts.rerun])
        death = Death(worker.pid, exitcode, snap, attempt.killed, self.options.timeout)
        stop = self.options.stop_on_error
        for position, error in crash_errors(death, verdicts, todo, self._task, stop).items():
            self._fail(position, error)
        return [todo[j] for j in verdicts.rerun]

    def _crashed_between(self, rest: list[int]) -> list[int]:
        """The worker died outside any call: re-run the rest, blaming the next call if it
        keeps happening."""
        if self.pool.closed:
            return self._closed(rest, None)
        self.blameless += 1
        if self.blameless < MAX_BLAMELESS_CRASHES or not rest:
            return rest
        position = rest[0]
        error = repeated_crash_error(self._index(position), self._name(position), self.blameless)
        self._fail(position, error)
        return rest[1:]

    def _closed(
        self, rest: list[int], pid: int | None, running: frozenset[int] | set[int] = frozenset()
    ) -> list[int]:
        """The pool was shut down under this batch: its unfinished calls fail, saying so (the
        calls at the positions in ``running`` were running on worker ``pid``)."""
        for position in rest:
            ran = pid if position in running else None
            self._fail(position, closed_error(self._index(position), self._name(position), ran))
        return []


async def _cancel_coroutines(worker: WorkerProcess) -> None:
    """Ask a worker to cancel its async tasks, so their ``finally`` blocks run, and give it
    ``CANCEL_GRACE`` seconds to finish the job; the caller kills it after. Call shielded."""
    with anyio.move_on_after(CANCEL_GRACE):
        try:
            await worker.write_frame(CANCEL, b"")
        except OSError:
            return
        while True:
            frame = await worker.read_frame()
            if frame is None:
                return
            if frame[0] == LOG:  # the cancelled tasks' last words
                await logs.handle(frame[1], logs.untold)
            elif frame[0] != LOAD_ERROR and split_results(frame[1])[1]:
                return


def _reply_watch(spin: bool, options: RunOptions) -> float:
    """Seconds to watch for a job's reply (``WorkerProcess.read_frame``) before sleeping: only
    where a CPU is to spare (``spin``: the worker watches for its next job too), and the
    whole run is expected to take less than ``REPLY_WATCH_SECONDS``."""
    if not spin or options.expected_work is None:
        return 0.0
    expected = options.expected_work()
    return REPLY_WATCH_SECONDS if expected is not None and expected < REPLY_WATCH_SECONDS else 0.0


def _a_tail(positions: list[int], n: int) -> bool:
    """``positions`` are the last ones of a batch of ``n``, in order, and not all of them."""
    return bool(positions) and positions[0] > 0 and positions == list(range(positions[0], n))
