"""Progress reporting: joblib's verbose messages, a tqdm bar, or a user callback.

The run only appends snapshots to a queue; a reporter task in the run's task group writes
them, so a slow terminal or callback never delays dispatch. The reporter coalesces: while a
callback runs, new snapshots pile up, and the next call gets only the latest of them, so a
slow callback neither falls behind nor holds up the end of the run, and always sees the final
count. A sync callback runs in a worker thread (one call at a time, never overlapping), so
it never blocks the event loop either.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread

__all__ = ["ProgressEvent", "ProgressReporter", "short_format_time", "verbosity_filter"]


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """What a ``progress=callable`` receives after each finished batch."""

    #: Tasks finished so far.
    done: int
    #: Tasks in the input, once known (sized input, or the input is exhausted).
    total: int | None
    #: Seconds since the run started.
    elapsed: float


ProgressCallback = Callable[[ProgressEvent], Awaitable[Any] | Any]


def _is_async(func: object) -> bool:
    """True for a coroutine function, a partial of one, or an object with an async __call__."""
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004
    )


def _tqdm_class() -> Any:
    """tqdm's notebook bar where it can draw one, else the text bar, without tqdm's warning
    that ipywidgets is missing (a notebook without them gets the text bar, quietly)."""
    import warnings

    from tqdm import TqdmWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TqdmWarning)
        from tqdm.auto import tqdm
    return tqdm


def verbosity_filter(index: int, verbose: int) -> bool:
    """joblib's sqrt-lag filter: True means *skip* the report for this index."""
    if not verbose:
        return True
    if verbose > 10:
        return False
    if index == 0:
        return False
    scale_base = 0.5 * (11 - verbose) ** 2
    scale = math.sqrt(index / scale_base)
    next_scale = math.sqrt((index + 1) / scale_base)
    return int(next_scale) == int(scale)


def short_format_time(t: float) -> str:
    """joblib's duration format: ``'   0.2s'`` or ``' 1.5min'``."""
    if t > 60:
        return f"{t / 60.0:4.1f}min"
    return f" {t:5.1f}s"


@dataclass(frozen=True, slots=True)
class _Snapshot:
    completed: int
    dispatched: int
    dispatched_batches: int
    dispatch_done: bool
    elapsed: float
    total: int | None

    @property
    def final(self) -> bool:
        return self.dispatch_done and self.completed == self.dispatched


class ProgressReporter:
    """Collects run counters and reports them from its own task."""

    @staticmethod
    def reports(verbose: int, progress: bool | ProgressCallback) -> bool:
        """Whether a reporter of these settings reports anything (else its run skips it):
        verbose messages, a progress bar (``True``) or a callback."""
        return bool(verbose) or progress is not False

    def __init__(
        self,
        *,
        name: str,
        label: str,
        verbose: int,
        progress: bool | ProgressCallback,
        pre_dispatch: int | None,
        total: int | None = None,
    ):
        self._name = name
        self.label = label
        self.verbose = verbose
        self.pre_dispatch_amount = pre_dispatch or 0
        self.total = total
        self.completed = 0
        self.dispatched = 0
        self.dispatched_batches = 0
        self.dispatch_done = False
        self.start = time.monotonic()
        self._callback = None if isinstance(progress, bool) else progress
        self._want_bar = progress is True
        self._bar: Any = None
        self.enabled = self.reports(verbose, progress)
        self._queue: deque[_Snapshot] = deque()
        #: Only a reporter that reports waits on it (an Event costs ~3 µs per run).
        self._wake = anyio.Event() if self.enabled else None
        self._finishing = False
        self._last_final = False
        self._last_news: tuple[int, int | None] = (-1, None)
        self._verbose_done = 0  # tasks the verbose messages have reported

    # -- called by the run, never blocking -------------------------------------------------

    def dispatched_batch(self, n_calls: int) -> None:
        self.dispatched += n_calls
        self.dispatched_batches += 1

    def input_exhausted(self) -> None:
        self.dispatch_done = True
        self.total = self.dispatched

    def completed_batch(self, n_calls: int) -> None:
        self.completed += n_calls
        self._snapshot()

    def _snapshot(self) -> None:
        if self.enabled:
            snap = _Snapshot(
                self.completed,
                self.dispatched,
                self.dispatched_batches,
                self.dispatch_done,
                time.monotonic() - self.start,
                self.total,
            )
            self._last_final = snap.final
            self._queue.append(snap)
            assert self._wake is not None
            self._wake.set()

    # -- the reporter task -----------------------------------------------------------------

    def finish(self) -> None:
        """The run succeeded: report what is queued, then let :meth:`run` return."""
        if not self._last_final:  # the end of the input was found after the last completion
            self._snapshot()
        self._finishing = True
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Report snapshots one at a time, in order, until :meth:`finish` (or cancellation)."""
        if not self.enabled:
            return
        if self.verbose:
            self._print(f"Using backend {self.label} concurrent workers.")
        try:
            while True:
                assert self._wake is not None
                await self._wake.wait()
                self._wake = anyio.Event()
                await self._drain()
                if self._finishing and not self._queue:
                    return
        finally:
            if self._bar is not None:
                self._bar.close()

    async def _drain(self) -> None:
        """Every queued snapshot to the verbose messages; the latest news to bar and callback."""
        latest: _Snapshot | None = None
        while self._queue:
            snap = self._queue.popleft()
            if self.verbose:
                self._report_verbose(snap)
            news = (snap.completed, snap.total)
            if news != self._last_news:  # else the closing snapshot: only its verbose line
                self._last_news = news
                latest = snap
        if latest is None:
            return
        if self._want_bar:
            self._update_bar(latest)
        if self._callback is not None:
            await self._call(ProgressEvent(latest.completed, latest.total, latest.elapsed))

    async def _call(self, event: ProgressEvent) -> None:
        """An async callback is awaited here; a sync one runs in a worker thread."""
        assert self._callback is not None
        if _is_async(self._callback):
            result = self._callback(event)
        else:
            result = await anyio.to_thread.run_sync(self._callback, event, abandon_on_cancel=True)
        if inspect.isawaitable(result):
            await result

    def _update_bar(self, snap: _Snapshot) -> None:
        if self._bar is None:
            tqdm = _tqdm_class()
            self._bar = tqdm(total=self.total, desc=self._name, leave=True)
        if snap.total is not None and self._bar.total != snap.total:
            self._bar.total = snap.total
        self._bar.update(snap.completed - self._bar.n)
        if snap.total is not None and snap.completed >= snap.total:
            self._bar.close()

    def _print(self, msg: str) -> None:
        stream = sys.stderr if self.verbose < 50 else sys.stdout
        stream.write(f"[{self._name}]: {msg}\n")
        stream.flush()

    def _report_verbose(self, snap: _Snapshot) -> None:
        """joblib's messages for ``snap``; above ``verbose=10``, one per task.

        joblib reports after each completed task there; a snapshot follows a whole batch, so
        the tasks it completed since the previous one get their own messages first.
        """
        if self.verbose > 10:
            for done in range(self._verbose_done + 1, snap.completed):
                self._report_one(dataclasses.replace(snap, completed=done))
        self._verbose_done = snap.completed
        self._report_one(snap)

    def _report_one(self, snap: _Snapshot) -> None:
        """joblib's ``print_progress``, message for message."""
        elapsed = snap.elapsed
        if snap.dispatch_done and snap.completed == snap.dispatched:
            self._print(
                f"Done {snap.completed:3d} out of {snap.completed:3d} | elapsed: "
                f"{short_format_time(elapsed)} finished"
            )
            return
        if not snap.dispatch_done:
            if verbosity_filter(snap.dispatched_batches, self.verbose):
                return
            self._print(
                f"Done {snap.completed:3d} tasks      | elapsed: {short_format_time(elapsed)}"
            )
            return
        index = snap.completed
        total = snap.dispatched
        if index != 0:
            cursor = total - index + 1 - self.pre_dispatch_amount
            frequency = (total // self.verbose) + 1
            is_last_item = index + 1 == total
            if is_last_item or cursor % frequency:
                return
        remaining = (elapsed / index) * (total - index) if index else 0.0
        self._print(
            f"Done {index:3d} out of {total:3d} | elapsed: {short_format_time(elapsed)} "
            f"remaining: {short_format_time(remaining)}"
        )
