"""Auto batch sizing from measured batch durations (pure, no I/O).

Tiny tasks are grouped so that one round trip to a worker carries enough work to hide its
overhead; long tasks go one at a time so load stays balanced and a crash names its task.
"""

from __future__ import annotations

import math
import types
import weakref
from typing import Any

__all__ = ["CROWDED_BUDGET_FACTOR", "CROWDED_RUN_SECONDS", "AutoBatcher", "FixedBatcher"]

#: A batch should take about this long (seconds): long enough to hide a ~0.2 ms round trip,
#: short enough to balance load and keep crash re-runs cheap.
MIN_BATCH_SECONDS = 0.02
MAX_BATCH_SECONDS = 0.2
#: Near the end of a sized input, batches shrink to share the tail between the workers, but
#: not below this much work each (by the measured time per call): below it, a batch's round
#: trip costs more than the balance gains. A batch costs the parent ~0.25 ms of CPU, which on
#: a machine as busy as its workers is taken from them: 2.5% of a 10 ms batch (a web
#: backend's 20-call runs of 1 ms calls went in 5 batches at 5 ms, 1.2 x the ideal time).
MIN_TAIL_SECONDS = 0.01
#: While every worker of the backend is busy (``Backend.crowded``), a run whose whole work is
#: expected to take less than this (by what its function's calls took before) goes in one
#: batch: spread over several workers it would pay a hand-over per batch (~0.7 ms of a
#: worker's idle time each, measured with 50 concurrent 20-call runs of 1 ms calls: 1.15 x
#: the ideal time in batches of 1, 10 and 9, 1.10 x in one batch) and gain nothing, as the
#: other workers are taken anyway.
CROWDED_RUN_SECONDS = 2 * MIN_BATCH_SECONDS
#: Such a batch's budget (``Batch.budget``), over what its calls took before: past it, the
#: worker starts none of its other calls, and the run sends them again, spread over the
#: workers as a fresh run would, so that a run whose calls are slower than their function's
#: were is never slower for having been sent whole.
CROWDED_BUDGET_FACTOR = 2.0
#: Upper bounds on one batch, by calls and by pickled bytes.
MAX_BATCH_CALLS = 4096
MAX_BATCH_BYTES = 1024**2
#: Async input: a batch holds at least this many times ``worker_concurrency`` calls, so a
#: worker refills its in-flight set as tasks finish instead of draining it at every batch's
#: end (measured: 1,000 tasks of 20 ms wait + 0.5 ms CPU on 2 workers at concurrency 16 take
#: 1.20 s in batches of 16, 0.99 s in batches of 64, 0.96 s in batches of 128).
ASYNC_BATCH_FACTOR = 4


class FixedBatcher:
    """The user's ``batch_size``, as given."""

    #: Sizes come from the user, never from measurements.
    measured = False

    def __init__(self, size: int):
        self.size = size

    def record(self, n_calls: int, seconds: float, nbytes: int = 0) -> None:
        """Fixed sizes ignore measurements."""

    def raise_floor(self, floor: int) -> None:
        """An explicit batch_size is honoured, async input or not."""

    def start_from(self, func: Any) -> None:
        """An explicit batch_size does not learn."""

    def remember(self, func: Any) -> None:
        """An explicit batch_size does not learn."""

    def next_size(self, remaining: int | None, n_workers: int) -> int:
        return self.size

    def expect(self, call_seconds: float | None) -> None:
        """An explicit batch_size does not learn."""

    def crowded_size(self, remaining: int | None) -> int:
        """An explicit batch_size is honoured on a crowded backend too."""
        return 0

    def crowded_budget(self, n_calls: int) -> float | None:
        """Never called: ``crowded_size`` is 0."""
        return None


#: What auto batching learned about a function in earlier runs: (batch size, seconds per
#: call, calls per batch under MAX_BATCH_BYTES). A web backend runs the same small map on
#: every request; each run would otherwise start again from one call per batch. Weak keys:
#: a function is not kept alive by it.
_learned: weakref.WeakKeyDictionary[types.FunctionType, tuple[int, float, int]] = (
    weakref.WeakKeyDictionary()
)


#: Seconds per call of each function's latest batch, in any run: what a run that has not
#: measured its own calls yet expects them to take (``latest_call_seconds``).
_latest: weakref.WeakKeyDictionary[types.FunctionType, float] = weakref.WeakKeyDictionary()


def note_call_seconds(func: Any, seconds: float) -> None:
    """A batch of ``func`` just took ``seconds`` per call."""
    if type(func) is types.FunctionType and seconds > 0.0:
        _latest[func] = seconds


#: How many calls each function's last completed run made: what a run of it whose input
#: has no length (a generator) expects to make, until it has taken more.
_lengths: weakref.WeakKeyDictionary[types.FunctionType, int] = weakref.WeakKeyDictionary()


def note_length(func: Any, n_calls: int) -> None:
    """A run of ``func`` completed after ``n_calls`` calls."""
    if type(func) is types.FunctionType:
        _lengths[func] = n_calls


def last_length(func: Any) -> int | None:
    """How many calls ``func``'s last completed run made; None if none completed yet."""
    return _lengths.get(func) if type(func) is types.FunctionType else None


def latest_call_seconds(func: Any) -> float | None:
    """Seconds per call of ``func``'s latest batch, in any run; None if none ran yet."""
    return _latest.get(func) if type(func) is types.FunctionType else None


class AutoBatcher:
    """Grow batches while they finish under MIN_BATCH_SECONDS; shrink them above MAX."""

    def __init__(self, min_seconds: float = MIN_BATCH_SECONDS) -> None:
        #: A batch should take from ``min_seconds`` to ``max_seconds`` (the backend's
        #: ``batch_seconds``; a cluster's per-batch cost asks for longer batches).
        self.min_seconds = min_seconds
        self.max_seconds = max(MAX_BATCH_SECONDS, 5 * min_seconds)
        self.size = 1
        #: Seconds per call of the last batch measured (0: nothing measured yet).
        self.call_seconds = 0.0
        #: Calls and seconds of all the batches this run measured, and the seconds per call
        #: earlier runs had learned (0: none), for ``remember``.
        self._run_calls = 0
        self._run_seconds = 0.0
        self._learned_seconds = 0.0
        #: Whether ``call_seconds`` was measured in this run (not learned from earlier ones):
        #: only then may it keep the tail in batches larger than a fresh run would send, as
        #: a function fast on earlier inputs may be slow on these.
        self.measured = False
        self._byte_cap = MAX_BATCH_CALLS
        #: Calls per batch that MAX_BATCH_BYTES allowed in the function's earlier runs.
        self.learned_byte_cap = MAX_BATCH_CALLS
        #: Smallest batch: ``ASYNC_BATCH_FACTOR * worker_concurrency`` once the input has
        #: async calls, whose duration is mostly waiting, so a worker gets enough of them
        #: to overlap.
        self.floor = 1

    def raise_floor(self, floor: int) -> None:
        self.floor = max(self.floor, min(floor, MAX_BATCH_CALLS))
        self.size = max(self.size, min(self.floor, self._byte_cap))

    def record(self, n_calls: int, seconds: float, nbytes: int = 0) -> None:
        """Learn from a finished batch; batches of a stale size are ignored (as in joblib)."""
        if nbytes > 0 and n_calls > 0:
            per_call = nbytes / n_calls
            self._byte_cap = max(1, min(MAX_BATCH_CALLS, int(MAX_BATCH_BYTES / per_call)))
        if n_calls > 0:
            self.call_seconds = seconds / n_calls
            self.measured = True
            self._run_calls += n_calls
            self._run_seconds += seconds
        if n_calls != self.size:
            self.size = min(self.size, self._byte_cap)
            return
        if seconds < self.min_seconds:
            ideal = n_calls * self.min_seconds / max(seconds, 1e-6)
            self.size = min(2 * n_calls, max(1, int(2 * ideal)))
        elif seconds > self.max_seconds and n_calls >= 2:
            self.size = max(1, n_calls // 2)
        self.size = max(1, min(max(self.size, self.floor), self._byte_cap, MAX_BATCH_CALLS))

    def start_from(self, func: Any) -> None:
        """Start where the last run of ``func`` left off (a plain function only: others are
        made anew for each call, or may not be hashable)."""
        if type(func) is types.FunctionType and self.call_seconds == 0.0:
            size, self.call_seconds, self.learned_byte_cap = _learned.get(
                func, (self.size, 0.0, MAX_BATCH_CALLS)
            )
            self._learned_seconds = self.call_seconds
            self.size = max(self.size, min(size, self._byte_cap))

    def remember(self, func: Any) -> None:
        """Keep what this run learned for the next run of ``func``. Its time per call is
        this run's over all its batches, not the last batch's (a tail of one call, whose
        round trip on a loaded machine can read as milliseconds per call), averaged with
        what earlier runs had learned: one run's hiccup does not decide how the next goes
        (``crowded_size`` sends a run whole on it)."""
        if type(func) is not types.FunctionType or self.call_seconds <= 0.0:
            return
        call_seconds = self.call_seconds
        if self._run_calls and self._run_seconds > 0.0:
            call_seconds = self._run_seconds / self._run_calls
            if self._learned_seconds:
                call_seconds = (call_seconds + self._learned_seconds) / 2
        _learned[func] = (self.size, call_seconds, self._byte_cap)

    def expect(self, call_seconds: float | None) -> None:
        """What a concurrent run of the function measured per call (``latest_call_seconds``),
        taken as learned while this run knows nothing: ten requests that start at once on a
        fresh process would otherwise all send their calls one by one."""
        if call_seconds and self.call_seconds == 0.0:
            self.call_seconds = call_seconds

    def crowded_size(self, remaining: int | None) -> int:
        """A batch cut while every worker of the backend is busy: as many calls as take
        ``CROWDED_RUN_SECONDS`` (at the time per call measured in this run, else learned in
        earlier or concurrent ones), so that a run of a few milliseconds of work goes in one
        batch; at most what MAX_BATCH_BYTES allows by their pickled size, and the
        ``remaining`` calls of a sized input. 0 when nothing is known or that is one call:
        a run's first batch is then one call, as on a free backend."""
        if self.call_seconds <= 0.0:
            return 0
        size = min(
            int(CROWDED_RUN_SECONDS / self.call_seconds), self.learned_byte_cap, self._byte_cap
        )
        if remaining is not None:
            size = min(size, remaining)
        return size if size > 1 else 0

    def crowded_budget(self, n_calls: int) -> float:
        """The budget (``Batch.budget``) of a batch of ``n_calls`` that ``crowded_size``
        sized: twice what they took before. Past it the worker leaves the rest to be sent
        again, spread as a fresh run would (the calls are slower than before)."""
        return CROWDED_BUDGET_FACTOR * n_calls * self.call_seconds

    def next_size(self, remaining: int | None, n_workers: int) -> int:
        """The size to dispatch next; near the end of a sized input, share the tail, as a
        fresh run would until this run has measured its calls (so that what earlier runs
        learned never makes a run slower: 4 calls on 4 workers go one per worker)."""
        if remaining is None or remaining <= 0:
            return self.size
        share = math.ceil(remaining / (2 * n_workers))
        floor = cap = 0
        if self.call_seconds > 0.0:  # but not in batches too small to pay their way
            floor = math.ceil(MIN_TAIL_SECONDS / self.call_seconds)
            # learned from earlier runs only: still a share for every worker, as the calls
            # may be slower on these inputs (4 calls on 4 workers: one each)
            cap = remaining if self.measured else math.ceil(remaining / n_workers)
        if share >= max(self.size, min(floor, cap)):  # not yet the tail: sizes grow as
            return self.size  # ``record`` finds (it ignores batches of another size)
        if floor:
            share = max(share, min(floor, cap))
            if remaining - share < floor / 2:  # no stub of a batch left behind: two
                # halves if neither is one (the other worker takes the second), else all
                halves = remaining // 2 >= floor / 2
                share = math.ceil(remaining / 2) if halves else max(share, min(remaining, cap))
        if self.floor > 1:  # async: up to a floor's worth each, rather than half a share
            share = max(share, min(self.floor, math.ceil(remaining / n_workers)))
            if self.measured:  # and, once batches are under way (others busy with theirs),
                # never under one worker's tasks in flight: fewer take a wait all the same
                share = max(share, min(remaining, self.floor // ASYNC_BATCH_FACTOR))
        return max(1, min(share, MAX_BATCH_CALLS))
