"""One run of ``Parallel(...)(calls)``: the only task group, and how data flows through it.

::

    user iterable ──Source.take(n)──► lane 1 ──run_batch──► worker ┐
       (lazy)        ▲ Budget           lane 2 ──run_batch──► worker ├─ Backend
                     │ (pre_dispatch)   ...   (≤ n_workers lanes)   ┘
                     │                   │
                     └── released by ◄── Sink ◄──put(start, values)── lanes
                                         │   list / ordered stream / unordered stream
                                         ▼
                                       caller          lanes ──counts──► ProgressReporter task

Each lane takes the next consecutive batch (under a lock, so batches are numbered in input
order), runs it on one worker, learns its duration for auto batching, and hands the values
to the sink. On a pool that other runs share, a lane that finds no worker free waits in line
for one before it takes (the backend's ``wait_for_worker``): its batch is then cut for the
pool as it is when the batch can run. A lane that took a batch starts the next lane, until
there are as many as batches the backend runs at once: a short input gets a lane per batch
(and one that finds its end), whatever ``n_jobs`` says; a run of one lane (one call, or one
worker) runs it in the caller's task, with no group to start or cancel. (An unsized input's
takes ask for one call more than their batch, to find its end: a generator of one call runs
as one lane.) The first failure (a task error without ``return_exceptions``, or an error of
the input itself) is recorded and cancels the task group; it is re-raised unwrapped, with
its own type, once every lane has stopped and the backend has cleaned up. A task's exception
of any type is its outcome (a ``Failure`` in its slot), never the run's own cancellation;
only a ``StopIteration``/``StopAsyncIteration`` is wrapped in a ``RuntimeError`` naming the
task, as it cannot leave a coroutine or an async iterator as itself (PEP 479).

At the end, an async generator input we stopped consuming is closed, shielded from the
caller's cancellation but bounded by ``SOURCE_CLOSE_GRACE``: a generator whose ``finally``
hangs gets a ``RuntimeWarning``, not the caller's run stuck forever.

``Run`` reads in three parts: the run itself (``execute``, ``_run_lanes``), cutting the input
into batches (``_take_next``: the size auto batching learned, a crowded pool's whole small
run, the tail of an unsized input shared out, the calls a budgeted batch returned, the async
floor), and the lanes that run them (``_run_batches``, taking the next batch ahead where a
take is slow, ``_deliver``).
"""

from __future__ import annotations

import sys
import time
import warnings
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from .._call import Calls
from .._coroutines import async_flags, is_async_callable
from ..backends.base import (
    Backend,
    Batch,
    RunBatch,
    RunOptions,
    batch_seconds,
    batches_per_worker,
    crowded,
)
from .batching import (
    ASYNC_BATCH_FACTOR,
    MIN_BATCH_SECONDS,
    AutoBatcher,
    FixedBatcher,
    last_length,
    latest_call_seconds,
    note_call_seconds,
    note_length,
)
from .outcomes import raise_unwrapped, settle
from .progress import ProgressReporter
from .results import Sink
from .source import ProducerError, Source

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["SOURCE_CLOSE_GRACE", "Run"]

_NOTHING: Any = object()
_MIXED: Any = object()
#: Seconds the user's async generator gets to run its ``finally`` once the run stops with it.
SOURCE_CLOSE_GRACE = 2.0
#: A lane takes its next batch while its batch runs once a take lasts this long: the worker
#: would idle through it (100,000 calls of ``x * 2`` from a generator on 2 workers: a batch
#: of ~2,500 calls took ~1.5 ms to read, and a lane took it only after its batch returned).
TAKE_AHEAD_SECONDS = 0.0005


class Run:
    """Executes the calls of one input on a backend, feeding a sink."""

    def __init__(
        self,
        *,
        iterable: object,
        backend: Backend,
        options: RunOptions,
        batch_size: int | None,
        pre_dispatch: int | None,
        widen_bound: bool,
        return_exceptions: bool,
        sink: Sink[Any],
        reporter: ProgressReporter,
    ):
        self.source = Source(iterable)
        self.backend = backend
        # weakly: the options must not keep the run (and its results) alive in a cycle
        estimate = weakref.WeakMethod(self.expected_work)
        self.options = options.with_expected_work(lambda: _call_alive(estimate))
        self.batcher: AutoBatcher | FixedBatcher = (
            AutoBatcher(batch_seconds(backend, MIN_BATCH_SECONDS))
            if batch_size is None
            else FixedBatcher(batch_size)
        )
        self.budget = sink.budget
        self.budget.limit = pre_dispatch
        #: Whether pre_dispatch is the default bound, which grows with the batches.
        self._widen = widen_bound
        self._widen_for(self.batcher.size)
        self.return_exceptions = return_exceptions
        self.sink = sink
        self.reporter = reporter
        if reporter.total is None:
            reporter.total = self.source.total
        self.error: BaseException | None = None
        #: Lanes take batches in turn (None while the run has one lane: ``_run_lanes``).
        self._take_lock: anyio.Lock | None = None
        self._async_floor = ASYNC_BATCH_FACTOR * options.worker_concurrency
        #: The calls' function (_MIXED if they have several, as far as the first and last
        #: of each batch tell): auto batching learns per function, across runs.
        self._func: Any = _NOTHING
        #: The function of the first call taken, once it is (``_func`` is set as it is cut).
        self._first_func: Any = _NOTHING
        #: The input's last take, when it ended an unsized input: shared out between the
        #: lanes in batches of ``_tail_size`` (``_share_tail``), first call at ``_tail_start``.
        self._tail: Calls = []
        self._tail_start = self._tail_size = 0
        #: Calls a batch with a ``budget`` did not run, to send again (first call's index,
        #: the calls), taken before anything else; their results slots are reserved already.
        self._returned: list[tuple[int, Calls]] = []
        #: The budget of the batch starting at each index (a batch cut on a crowded pool).
        self._budgets: dict[int, float | None] = {}
        #: Each take of an unsized input that could have several lanes asks for one call
        #: more, pre_dispatch permitting: its end is then known with its last batch (an input
        #: of one batch runs without lanes, ``_run_lanes``). The call taken ahead is
        #: ``_held``: the start of the next batch.
        self._look_ahead = False
        self._held: Calls = []
        self._lanes: anyio.abc.TaskGroup | None = None
        #: Lanes the run may still start (``_run_lanes``).
        self._unstarted_lanes = 0
        #: Lanes the run may have at once, and lanes running now (``_run_lanes``).
        self._max_lanes = self._live_lanes = 0
        #: Seconds per call of this run's latest batch (0: none finished yet).
        self._call_seconds = 0.0
        #: What says whether the backend is crowded for this run: the callable ``open_run``
        #: gave, if it can tell (a run's own batches do not crowd it), else the backend.
        self._crowding: object = backend
        #: How long the latest take from the input lasted, and whether the backend says
        #: when a batch has gone to its worker (``Batch.on_sent``; unknown until one ran):
        #: together, whether a lane takes its next batch while its batch runs.
        self._take_seconds = 0.0
        self._says_sent = True

    def expected_work(self) -> float | None:
        """The worker seconds this run's calls need in all, as far as it can tell now: how
        many calls (its length; what it took once the input ended; else as many as the last
        completed run of its function made, or what it took so far if more) times what a call
        takes (its own latest batch's, else the latest batch's of its function in any run).
        None if either is unknown. Read from any thread, by a pool deciding who is small."""
        source = self.source
        func = self._first_func if self._func is _NOTHING else self._func
        n = source.total
        if n is None:
            n = source.taken
            if not source.exhausted:
                usual = last_length(func)
                if usual is None:
                    return None
                n = max(n, usual)
        per_call = self._call_seconds or latest_call_seconds(func)
        return None if per_call is None else n * per_call

    async def execute(self) -> None:
        """Run to completion; raise the first error with its own type."""
        try:
            async with self.backend.open_run(self.options) as run_batch:
                if self.reporter.enabled:
                    async with anyio.create_task_group() as outer:
                        outer.start_soon(self.reporter.run)
                        await self._run_lanes(run_batch)
                        if self.error is None:
                            self.reporter.finish()  # the group waits for the last report
                        else:
                            outer.cancel_scope.cancel()
                else:  # no reporter task, no group for it (~20 µs of a small run)
                    await self._run_lanes(run_batch)
        except BaseExceptionGroup as group:
            raise_unwrapped(group)
        finally:
            await self._close_source()
        if self.error is not None:
            self.sink.close(self.error)  # a stream tells it from its own cancellation
            raise self.error

    async def _run_lanes(self, run_batch: RunBatch) -> None:
        """Lanes start as the input proves there is work for them, up to one per batch the
        backend runs at once: a lane that takes a batch starts the next one, so 8 calls on
        ``n_jobs=100_000`` start 9 lanes, not 100,000 (5 s of a blocked loop)."""
        n_lanes = max(1, self.backend.n_workers) * batches_per_worker(self.backend)
        if hasattr(run_batch, "crowded"):
            self._crowding = run_batch
        first = None
        if self.source.total is not None:
            n_lanes = max(1, min(n_lanes, self.source.total))
        elif n_lanes > 1:  # an unsized input: its first batch may be all of it
            self._look_ahead = True
            first = await self._take_or_fail(getattr(run_batch, "wait_for_worker", None))
            if first is None:
                return
            if self._all_taken and not self._budgets:  # (a budgeted batch may come back)
                n_lanes = 1
        self._unstarted_lanes = n_lanes - 1
        self._max_lanes = n_lanes
        if n_lanes == 1:  # no other lane to start or cancel: no group, no lock (a small run)
            await self._lane(run_batch, first)
        else:
            self._take_lock = anyio.Lock(fast_acquire=True)
            async with anyio.create_task_group() as lanes:
                self._lanes = lanes
                await self._lane(run_batch, first)
        if self.error is None:
            self.batcher.remember(self._func)
            note_length(self._func, self.source.taken)

    async def _close_source(self) -> None:
        """Close the input, shielded and bounded: a hanging ``finally`` only gets a warning."""
        if not self.source.closable:  # the common case: nothing left to close
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(SOURCE_CLOSE_GRACE) as scope:
            await self.source.aclose()
        if scope.cancelled_caught:
            warnings.warn(
                f"the input async generator did not finish closing within "
                f"{SOURCE_CLOSE_GRACE:g}s (its finally block or an await in it hangs); "
                "it was cancelled and the run went on without waiting for it",
                RuntimeWarning,
                stacklevel=2,
            )

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        if self._lanes is not None:  # else the one lane, which stops after this call
            self._lanes.cancel_scope.cancel()

    # -- cutting the input into batches (one lane at a time: the take lock) ------------------

    @property
    def _all_taken(self) -> bool:
        """Every call is in a batch: the input ended, and none waits in its tail or was
        taken ahead (``_held``)."""
        return self.source.exhausted and not self._pending

    @property
    def _last_batch(self) -> bool:
        """``_all_taken``, or a sized input's length taken (its iterator may still yield
        more: a hint, for ``Batch.last``, never a reason to stop taking)."""
        source = self.source
        ended = source.exhausted or (source.total is not None and source.taken >= source.total)
        return ended and not self._pending

    @property
    def _pending(self) -> bool:
        """Calls taken from the input that no batch has yet: in the tail, taken ahead, or
        returned by a budgeted batch."""
        return bool(self._tail or self._held or self._returned)

    def _widen_for(self, batch_size: int) -> None:
        """The default pre_dispatch bound grows with the batches: two of ``batch_size`` per
        worker (an explicit bound stays as given)."""
        if self._widen:
            self.budget.widen(2 * self.backend.n_workers * batch_size)

    async def _take_batch(self) -> tuple[int, Calls]:
        """The next consecutive batch, within the pre_dispatch budget."""
        if self._take_lock is None:
            return await self._take_next()
        async with self._take_lock:
            return await self._take_next()

    async def _take_next(self) -> tuple[int, Calls]:
        """``_take_batch``, by one lane at a time."""
        if self._returned:
            return self._next_returned()
        if self._tail:
            return self._next_of_tail()
        held, self._held = self._held, []
        if self.source.exhausted and not held:  # (found empty by the take before a wait)
            self.reporter.input_exhausted()
            return self.source.taken, []
        remaining = self._remaining(len(held))
        want = self.batcher.next_size(remaining, self.backend.n_workers)
        self._widen_for(want)  # a tail's share may be larger than the learned size
        ahead = self._look_ahead
        n = await self.budget.acquire(want + ahead - len(held)) if want > len(held) else 0
        start = self.source.taken - len(held)
        began = time.perf_counter()
        try:
            calls = held + await self.source.take(n) if n else held
        except BaseException:
            self.budget.release(n)
            raise
        self._take_seconds = time.perf_counter() - began
        self.budget.release(n - (len(calls) - len(held)))
        if len(calls) > want:  # the call taken ahead starts the next batch
            self._held = calls[want:]
            del calls[want:]
        crowded_size = 0
        if calls and self._func is _NOTHING:  # the first batch: one call, unless crowded
            self._func = calls[0].func
            self.batcher.start_from(self._func)  # the next batches: as learned before
            self._widen_for(self.batcher.size)
        # every worker busy, some with other runs': a small run goes whole (n_jobs=1: in order)
        if calls and self.backend.n_workers > 1 and crowded(self._crowding):
            self.batcher.expect(latest_call_seconds(self._func))
            crowded_size = self.batcher.crowded_size(remaining)
            if crowded_size <= len(calls):  # the batch as cut is as large
                crowded_size = 0
        if calls and self._async_floor and self._async(calls):
            calls += self._held  # back in this batch, which grows to the async floor
            self._held = []
            calls += await self._async_input(remaining, len(calls))
        elif crowded_size:  # a small run goes whole, as every worker is busy
            calls += self._held
            self._held = []
            self._widen_for(max(self.batcher.size, crowded_size))
            calls += await self._take_more(crowded_size - len(calls) + self._look_ahead)
            if len(calls) > crowded_size:  # the call taken ahead: the input goes on after all
                self._held = calls[crowded_size:]
                del calls[crowded_size:]
            self._budgets[start] = self.batcher.crowded_budget(len(calls))
        if calls and (calls[0].func is not self._func or calls[-1].func is not self._func):
            self._func = _MIXED  # what this run learns is not one function's to keep
        ended_unsized = self.source.exhausted and self.source.total is None
        if ended_unsized and len(calls) > 1 and not crowded_size:  # a crowded batch stays whole
            return self._share_tail(start, calls)
        if calls:
            self.sink.reserve(start, len(calls))
            self.reporter.dispatched_batch(len(calls))
        if self.source.exhausted:
            self.reporter.input_exhausted()
        return start, calls

    def _remaining(self, held: int) -> int | None:
        """Calls left to cut into batches, ``held`` calls taken ahead among them: of a sized
        input, else as many as the function's last completed run made (a hint: a generator
        may be longer this time, and is then taken on at the learned size); None when
        nothing tells."""
        source = self.source
        cut = source.taken - held
        if source.total is not None:
            return source.total - cut
        usual = last_length(self._func)
        return None if usual is None or usual <= cut else usual - cut

    def _share_tail(self, start: int, calls: Calls) -> tuple[int, Calls]:
        """The take that ended an unsized input: cut it as the tail of a sized input of that
        length would be (``next_size``), so that no worker idles while calls wait behind a
        batch size learned on faster calls. Returns its first batch."""
        self._tail, self._tail_start = calls, start
        self._tail_size = self.batcher.next_size(len(calls), self.backend.n_workers)
        return self._next_of_tail()

    def _next_returned(self) -> tuple[int, Calls]:
        """The next batch of the calls a budgeted batch returned unrun, sized on what its
        calls took (``next_size``); their slots are reserved and counted already."""
        start, calls = self._returned[0]
        size = self.batcher.next_size(len(calls), self.backend.n_workers)
        if size >= len(calls):
            self._returned.pop(0)
            return start, calls
        self._returned[0] = (start + size, calls[size:])
        return start, calls[:size]

    def _next_of_tail(self) -> tuple[int, Calls]:
        if self.batcher.measured:  # larger, if this run's own calls say so now they have
            size = self.batcher.next_size(len(self._tail), self.backend.n_workers)
            self._tail_size = max(self._tail_size, size)
        start, calls = self._tail_start, self._tail[: self._tail_size]
        del self._tail[: self._tail_size]
        self._tail_start += len(calls)
        self.sink.reserve(start, len(calls))
        self.reporter.dispatched_batch(len(calls))
        if not self._tail:  # dispatch is done once the tail is (as joblib counts it)
            self.reporter.input_exhausted()
        return start, calls

    async def _take_more(self, more: int) -> Calls:
        """Up to ``more`` calls to add to the batch just taken, as many as pre_dispatch has
        room for: it never waits holding taken calls. Under the take lock."""
        budget = self.budget
        full = budget.limit is not None and budget.used >= budget.limit
        if more <= 0 or self.source.exhausted or full:
            return []
        n = await budget.acquire(more)
        try:
            extra: Calls = await self.source.take(n)
        except BaseException:
            budget.release(n)
            raise
        budget.release(n - len(extra))
        return extra

    def _async(self, calls: Calls) -> bool:
        """Whether the batch just taken has async calls (every call looked at while batches
        are smaller than the async floor; past it, as a learned size may be, the first
        only: a sync run's batches of thousands are not looked through again)."""
        if self.batcher.size < self._async_floor:
            return async_flags(calls) is not None
        return is_async_callable(calls[0].func)

    async def _async_input(self, remaining: int | None, taken: int) -> Calls:
        """The input has async calls: their duration is mostly waiting, so raise
        the batch floor to keep ``worker_concurrency`` of them in flight per worker, and top
        up the batch just taken to it. Called once, under the take lock."""
        self.batcher.raise_floor(self._async_floor)
        self._async_floor = 0
        self._widen_for(self.batcher.size)
        return await self._take_more(
            self.batcher.next_size(remaining, self.backend.n_workers) - taken
        )

    # -- lanes: each runs its batches on one worker at a time --------------------------------

    async def _when_a_worker_is_ready(self, wait_for_worker: Callable[[], Awaitable[None]]) -> None:
        """Before a take: wait until a worker can run the batch (the backend's
        ``wait_for_worker``), so that it is cut on the pool as it is then, not as it was
        when the lane began to wait (the last request of a burst, alone by then, spreads
        instead of going whole to one worker). A run that has taken nothing yet takes its
        first call before it waits (it starts its first batch), so that the pool can tell
        what the run needs meanwhile (``expected_work``: a small run passes a huge one)."""
        if self._func is _NOTHING and not self._held and not self.source.exhausted:
            self._held = await self._take_more(1)
            if self._held:
                self._first_func = self._held[0].func
        await wait_for_worker()

    async def _take_or_fail(
        self, wait_for_worker: Callable[[], Awaitable[None]] | None = None
    ) -> tuple[int, Calls] | None:
        """``_take_batch``, or None once there is nothing to run: the input ended, or it
        failed (the run's error then)."""
        try:
            if wait_for_worker is not None:
                await self._when_a_worker_is_ready(wait_for_worker)
            start, calls = await self._take_batch()
        except ProducerError as exc:
            self._fail(exc.error)
            return None
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # a bad input item
            self._fail(exc)
            return None
        return (start, calls) if calls else None

    async def _lane(self, run_batch: RunBatch, first: tuple[int, Calls] | None) -> None:
        """Run batches until none is left; ``first``: one taken for it already."""
        self._live_lanes += 1
        try:
            await self._run_batches(run_batch, first)
        finally:
            self._live_lanes -= 1

    async def _run_batches(self, run_batch: RunBatch, first: tuple[int, Calls] | None) -> None:
        """``_lane``'s loop."""
        wait_for_worker = getattr(run_batch, "wait_for_worker", None)
        keep_idle = getattr(run_batch, "keep_idle", None)
        ahead: _TakeAhead | None = None  # the next batch, taken while this one runs
        while True:
            if ahead is not None:
                await ahead.done.wait()
                taken, ahead = ahead.taken, None
            else:
                taken = first or await self._take_or_fail(wait_for_worker)
            first = None
            if taken is None:
                return
            start, calls = taken
            if self._unstarted_lanes and not self._all_taken:  # more work: another lane
                self._unstarted_lanes -= 1
                assert self._lanes is not None
                self._lanes.start_soon(self._lane, run_batch, None)
                if keep_idle is not None:  # for this lane and the new one, before newer runs
                    keep_idle(2)
            batch = Batch(
                start, calls, budget=self._budgets.pop(start, None), last=self._last_batch
            )
            if self._worth_taking_ahead():
                ahead = self._take_ahead(batch)
            began = time.perf_counter()
            values = await run_batch(batch)
            ran = time.perf_counter() - (began if batch.started is None else batch.started)
            if ahead is not None and not ahead.sent.is_set():  # the backend never says so
                self._says_sent = False
                ahead.waiting.cancel()
                ahead = None
            self.batcher.record(len(values), ran, batch.nbytes)
            if values:
                self._call_seconds = ran / len(values)
                note_call_seconds(self._func, self._call_seconds)
            self._widen_for(self.batcher.size)
            if not self._deliver(start, values, calls, batch.budget is not None):
                return
            if self._all_taken and ahead is None:
                return
            # the finished calls go before the input is read again: their arguments (an
            # array's file too) are not held while the next batch is taken
            del taken, calls, batch, values
            # Taking the next batch is a few ms of work for a large batch, and an inline
            # backend never yields: let the loop run the rest of the program first.
            await anyio.lowlevel.checkpoint()

    def _worth_taking_ahead(self) -> bool:
        """Whether a lane takes its next batch while its batch runs: when a take lasts long
        enough for a worker to idle through it (a large batch of a slow input) and the
        backend says when a batch has gone. Not on a pool crowded with other runs: there
        a batch is cut when a worker can run it (``wait_for_worker``)."""
        return (
            self._take_seconds >= TAKE_AHEAD_SECONDS
            and self._says_sent
            and self._lanes is not None
            and not self._all_taken
            and self.error is None
            and not crowded(self._crowding)
        )

    def _take_ahead(self, batch: Batch) -> _TakeAhead:
        """Start taking the batch after ``batch``, once the backend says ``batch`` has gone.
        A task of the run's group, not the lane's: the lane delivers its values meanwhile,
        releasing the ``pre_dispatch`` room the take may be waiting for."""
        ahead = _TakeAhead()
        batch.on_sent = ahead.sent.set
        assert self._lanes is not None
        self._lanes.start_soon(self._take_when_sent, ahead)
        return ahead

    async def _take_when_sent(self, ahead: _TakeAhead) -> None:
        try:
            with ahead.waiting:
                await ahead.sent.wait()
            if ahead.sent.is_set():
                ahead.taken = await self._take_or_fail()
        finally:
            ahead.done.set()

    def _deliver(self, start: int, values: list[Any], calls: Calls, budgeted: bool = False) -> bool:
        """Hand values to the sink; False if a failure stops the run. A budgeted batch may
        come back with the values of its first calls only: the rest go out again."""
        n_calls = len(calls)
        error = settle(values, start, calls, self.return_exceptions)
        if error is not None:
            self._fail(error)
            return False
        if budgeted and 0 < len(values) < n_calls:  # stopped at its budget: the rest again
            self._returned.append((start + len(values), calls[len(values) :]))
            # spread over lanes again, also in place of those that found nothing left
            self._unstarted_lanes = self._max_lanes - self._live_lanes
        elif len(values) != n_calls:  # else a backend stops a batch early only at a failure
            self._fail(RuntimeError(f"backend returned {len(values)} results for {n_calls} calls"))
            return False
        self.sink.put(start, values)
        self.reporter.completed_batch(len(values))
        return True


class _TakeAhead:
    """A lane's next batch, taken while its batch runs (``Run._take_ahead``): ``taken``,
    None if nothing is left to run (the input ended, or failed), once ``done``. Waiting
    for ``sent`` is cancelled if the backend never calls ``Batch.on_sent``."""

    __slots__ = ("done", "sent", "taken", "waiting")

    def __init__(self) -> None:
        self.sent = anyio.Event()
        self.done = anyio.Event()
        self.waiting = anyio.CancelScope()
        self.taken: tuple[int, Calls] | None = None


def _call_alive(method: weakref.WeakMethod[Any]) -> Any:
    """``method()`` while its object lives; None after."""
    bound = method()
    return None if bound is None else bound()
