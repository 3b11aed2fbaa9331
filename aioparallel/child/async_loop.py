"""Async tasks on a worker: an asyncio event loop keeps up to ``worker_concurrency``
coroutines of a batch in flight, so the waits of one overlap the others.

Standard library only (and ``protocol``): the process worker imports this module on its first
async call, so a worker that only ever runs sync calls never imports asyncio.

::

    process worker                                   thread worker
    ──────────────                                   ─────────────
    main thread: the job's calls in input order      its own thread: ``run_calls_on_loop``
                                                     (``backends.thread_loop``)
      sync call ─► runs here, as always                runs a loop for the batch; sync calls
      async call ─► WorkerLoop.submit (blocks while    run inline, async ones as tasks
        ``concurrency`` are in flight, and as many
        wait to start)
            │
            ▼
    loop thread: InFlight ─ task per call ─ timeout timer ─► outcome ─► RESULTS frame
                 (a task that ends starts the next waiting one, whose first step runs
                  next: ``_EAGER``, ``_step_next``)
            ▲  (positions explicit: async results finish out of order)
    request pipe: CANCEL ─► cancel every coroutine (their ``finally`` blocks run)

The main thread of a process worker never runs an event loop, so a sync task may call
``asyncio.run(...)`` itself, and signals and crash attribution (the slot) work as before.
A coroutine cancelled for its timeout has ``CANCEL_GRACE`` seconds to finish; one that does
not is reported ``stuck``, and the parent kills its worker.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from . import protocol
from .context import Values, in_task
from .protocol import CANCEL_GRACE, TimedOut
from .slot import CrashSlot

__all__ = ["CANCEL_GRACE", "InFlight", "TimedOut", "WorkerLoop"]

#: A process worker's main thread, while it waits for its async tasks, checks this often
#: whether one is overdue by more than the grace plus ``BLOCKED_MARGIN`` (the loop thread
#: should have reported it by then, unless a sync call inside async code blocks the loop).
BLOCKED_CHECK = 0.25
BLOCKED_MARGIN = 0.5

#: Async outcomes are sent at most this long after they are known: one frame carries
#: several, instead of one frame (and one wake-up of the parent) per task.
FLUSH_SECONDS = 0.01

#: Python 3.12+: a task whose first step runs at once, in its creator's step. Tasks that wake
#: together run their CPU parts one after another; started from the callbacks that follow,
#: their successors would all start (and so wake) together again, a wave per wait, and the
#: waits and the CPU add up instead of overlapping (1,000 tasks of a 20 ms wait and 0.5 ms
#: of CPU, 16 at a time on 2 workers: 0.98 s; started eagerly by the task that ends, 0.76 s).
#: Before 3.12 a new task's first step waits for the loop's next pass whoever creates it;
#: ``_step_next`` has the successor's step run next (the same 1,000 tasks on 3.11: 0.97 s
#: started by the task that ends, 0.80 s when each one's first step runs next).
_EAGER: Any = getattr(asyncio, "eager_task_factory", None)


def _step_next(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
    """Before Python 3.12: have ``task``, just created (its first step the last callback in
    the loop's queue), take its first step next, in this pass of the loop, as an eager task
    would, rather than after the other tasks that woke with the one that started it. Only
    the standard library's loop keeps that queue (a deque); on another, the step waits its
    turn."""
    ready = getattr(loop, "_ready", None)
    if type(ready) is deque and ready and getattr(ready[-1]._callback, "__self__", None) is task:
        ready.rotate(1)


#: Outcome kinds handed to ``InFlight``'s report callback.
VALUE, RAISED, TIMED_OUT = 0, 1, 2


async def _call(func: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """The call itself runs on the loop too, so whatever it sets up belongs to the loop."""
    value = func(*args, **kwargs)
    if hasattr(value, "__await__"):
        return await value
    return value


class _Raised:
    """A task's KeyboardInterrupt or SystemExit, returned instead of raised: asyncio lets
    those escape the event loop from a task, which would end the loop (and its thread) and
    strand every task in flight. They are the task's outcome like any other."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc


async def _outcome(coro: Any, ended: Callable[[bool], None] | None = None) -> Any:
    """The task's coroutine; ``ended(ok)`` runs in its last step (``InFlight``: the next
    call starts from there), ``ok`` if it returned."""
    ok = False
    try:
        value = await coro
        ok = True
        return value
    except (KeyboardInterrupt, SystemExit) as exc:
        return _Raised(exc)
    finally:
        if ended is not None:
            ended(ok)


Report = Callable[[int, int, Any], None]


class InFlight:
    """The async tasks of one batch on one loop. Every method runs on the loop's thread.

    Each task ends in exactly one ``report(position, kind, value)`` call, unless it was
    dropped (``cancel_all``: the batch stops, nobody wants its outcome). ``settled`` runs
    after each task leaves the set (reported or dropped).

    With a ``limit``, at most that many run at once; the calls started beyond it wait, in
    order, and each task that ends starts the next from its last step, whose first step
    runs next (``_EAGER``, ``_step_next``), but not after a failure when the batch stops at
    the first (``stop_on_error``). ``begun(position)`` runs as each call starts."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float | None,
        report: Report,
        settled: Callable[[], None],
        limit: int | None = None,
        stop_on_error: bool = False,
        begun: Callable[[int], None] | None = None,
    ):
        self.loop = loop
        self.timeout = timeout
        self.report = report
        self.settled = settled
        self.tasks: dict[int, asyncio.Task[Any]] = {}
        self._expired: dict[int, float] = {}
        self._dropping = False
        self._limit = limit
        self._stop_on_error = stop_on_error
        self._begun = begun
        self._running: set[int] = set()
        self._waiting: deque[tuple[int, Any]] = deque()
        #: The call whose eager first step runs now (``_blocking_position``).
        self.starting: int | None = None

    def start(self, position: int, func: Callable[..., Any], args: Any, kwargs: Any) -> None:
        self.start_coroutine(position, _call(func, args, kwargs))

    def start_coroutine(self, position: int, coro: Any) -> None:
        if self._limit is not None and (self._waiting or len(self._running) >= self._limit):
            self._waiting.append((position, coro))
            return
        self._start(position, coro)

    def _ended(self, position: int, ok: bool) -> None:
        """Task ``position`` no longer runs (from its last step, or ``_finished`` if it was
        cancelled before its first): start the next waiting call."""
        if position not in self._running:
            return
        self._running.discard(position)
        if self._waiting and not self._dropping and (ok or not self._stop_on_error):
            self._start(*self._waiting.popleft(), next_step=True)

    def _start(self, position: int, coro: Any, next_step: bool = False) -> None:
        """``next_step``: started by the task that ends (``_ended``), from its last step."""
        self._running.add(position)
        if self._begun is not None:
            self._begun(position)
        wrapped = _outcome(coro, lambda ok: self._ended(position, ok))
        started = time.monotonic()  # an eager first step counts towards the timeout
        if _EAGER is not None and self._limit is not None:
            self.starting = position  # its task is not in ``tasks`` until the step returns
            try:
                task = _EAGER(self.loop, wrapped)
            finally:
                self.starting = None
        else:
            task = self.loop.create_task(wrapped)
            if next_step:
                _step_next(self.loop, task)
        self.tasks[position] = task
        timer = None
        if self.timeout is not None:
            left = max(0.0, self.timeout - (time.monotonic() - started))
            timer = self.loop.call_later(left, self._expire, position, task, started)
        task.add_done_callback(lambda t: self._finished(position, t, timer, coro))

    def _expire(self, position: int, task: asyncio.Task[Any], started: float) -> None:
        self._expired[position] = started
        task.cancel()
        self.loop.call_later(CANCEL_GRACE, self._give_up, position, task)

    def _give_up(self, position: int, task: asyncio.Task[Any]) -> None:
        if task.done() or self.tasks.get(position) is not task:
            return
        del self.tasks[position]
        elapsed = time.monotonic() - self._expired.pop(position)
        self.report(position, TIMED_OUT, TimedOut(elapsed, stuck=True))
        self._ended(position, False)  # it goes on in the background, out of the count
        self.settled()

    def _finished(
        self,
        position: int,
        task: asyncio.Task[Any],
        timer: asyncio.TimerHandle | None,
        coro: Any,
    ) -> None:
        # a task cancelled before its first step (cancel_all) never awaited its coroutine:
        # closed here, it never warns "was never awaited" (a no-op once it has run)
        coro.close()
        self._ended(position, False)
        if timer is not None:
            timer.cancel()
        if self.tasks.get(position) is not task:  # given up on as stuck: already reported
            return
        del self.tasks[position]
        started = self._expired.pop(position, None)
        if started is not None:
            self.report(position, TIMED_OUT, TimedOut(time.monotonic() - started, stuck=False))
        elif self._dropping:
            pass
        elif task.cancelled():  # the task raised CancelledError itself: that is its outcome
            self.report(position, RAISED, asyncio.CancelledError())
        elif (exc := task.exception()) is not None:
            self.report(position, RAISED, exc)
        elif type(result := task.result()) is _Raised:
            self.report(position, RAISED, result.exc)
        else:
            self.report(position, VALUE, result)
        self.settled()

    def cancel_all(self) -> None:
        """Cancel every task and drop its outcome (the batch is stopping). A task still
        running ``CANCEL_GRACE`` later (it ignores cancellation) is given up on, so the batch
        can end; it goes on in the background."""
        if self._dropping:
            return
        self._dropping = True
        while self._waiting:  # never started: nothing to cancel
            self._waiting.popleft()[1].close()
            self.settled()
        for task in self.tasks.values():
            task.cancel()
        self.loop.call_later(CANCEL_GRACE, self._give_up_dropped)

    def _give_up_dropped(self) -> None:
        for position in list(self.tasks):
            del self.tasks[position]
            self.settled()


# -- process workers -------------------------------------------------------------------------


class WorkerLoop:
    """A process worker's event loop, in a daemon thread started on the first async call.

    The main thread calls ``begin``, ``submit`` (blocking while ``concurrency`` tasks are in
    flight and as many more wait to start: the loop thread starts those as others end)
    and ``end`` (blocking until every task settled and its outcome was sent). While a job
    runs, the loop also watches the request pipe for the parent's CANCEL frame.
    """

    def __init__(self, req_fd: int):
        self.req_fd = req_fd
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._unsent = 0
        self.stopped = False
        self._tasks: InFlight | None = None
        self._outcomes: list[tuple[int, Any]] = []
        self._send: Callable[[list[int], list[Any]], None] | None = None
        self._stop_on_error = False
        self._flush_scheduled = False
        self._timeout: float | None = None
        #: Async tasks started and not yet reported (position -> start time): written and
        #: cleared by the loop thread, read by the main thread (``_wait``).
        self._started: dict[int, float] = {}
        #: The job's slot base and the caller's context variables, for each task.
        self._base = 0
        self._values: Values = []
        self._slot: CrashSlot | None = None
        #: Calls the main thread may hand over before the first of them settles: the job's
        #: ``concurrency``, and as many more waiting to start (``InFlight``).
        self._room = 0

    def begin(
        self,
        timeout: float | None,
        stop_on_error: bool,
        send: Callable[[list[int], list[Any]], None],
        base: int,
        values: Values | None,
        concurrency: int,
        slot: CrashSlot,
    ) -> None:
        self.stopped = False
        self._base = base
        self._slot = slot
        self._room = 2 * concurrency
        self._values = values or []
        self._stop_on_error = stop_on_error
        self._send = send
        self._in_flight = self._unsent = 0
        self._timeout = timeout
        self._started = {}
        self._tasks = InFlight(
            self.loop, timeout, self._report, self._settled, concurrency, stop_on_error, self._begun
        )
        self._on_loop(self.loop.add_reader, self.req_fd, self._on_request)

    def submit(
        self,
        position: int,
        func: Callable[..., Any],
        args: Any,
        kwargs: Any,
    ) -> bool:
        """Start an async call once fewer than the job's ``concurrency`` are in flight;
        False if the job stopped (an error, or the parent cancelled)."""
        if not self._admit(position):
            return False
        assert self._tasks is not None
        coro = in_task((self._base, position), self._values, _call(func, args, kwargs))
        self.loop.call_soon_threadsafe(self._tasks.start_coroutine, position, coro)
        return True

    def submit_coroutine(self, position: int, coro: Any) -> bool:
        """Await a coroutine a sync call returned, under the same ``concurrency`` bound;
        False (the coroutine closed, never run) if the job stopped."""
        if not self._admit(position):
            coro.close()
            return False
        assert self._tasks is not None
        coro = in_task((self._base, position), self._values, coro)
        self.loop.call_soon_threadsafe(self._tasks.start_coroutine, position, coro)
        return True

    def _admit(self, position: int) -> bool:
        """Wait for room; then note the call as handed in the slot before it can start on the
        loop. Its start is noted there too (``_begun``): a crash fails a call that began and
        runs again one that was handed but never began."""
        with self._cond:
            while self._in_flight >= self._room and not self.stopped:
                self._wait()
            if self.stopped:
                return False
            assert self._slot is not None
            self._slot.handed(self._base, position)
            self._in_flight += 1
            self._unsent += 1
        return True

    def end(self) -> None:
        """Wait until every task of the job settled and its outcome was sent."""
        with self._cond:
            while self._unsent:
                self._wait()
        self._on_loop(self.loop.remove_reader, self.req_fd)
        os.set_blocking(self.req_fd, True)  # some loops (uvloop) leave a watched fd non-blocking
        self._tasks = None

    def _wait(self) -> None:
        """Wait for the loop thread (holding ``_cond``). With a timeout, also watch for a
        task overdue past its timeout and grace: the loop could not cancel it, so a sync call
        inside async code blocks it. The task the loop is stuck in is reported stuck (the
        parent then kills this worker, the only way to stop it); the others in flight are
        its victims, not culprits: they fail with the worker (WorkerCrashedError)."""
        if self._timeout is None:
            self._cond.wait()
            return
        self._cond.wait(BLOCKED_CHECK)
        send = self._send
        if self.stopped or send is None:  # dropped tasks are given up on, or we get killed
            return
        limit = self._timeout + CANCEL_GRACE + BLOCKED_MARGIN
        now = time.monotonic()
        overdue = [p for p, started in list(self._started.items()) if now - started > limit]
        if not overdue:
            return
        stuck_in = self._blocking_position()
        if stuck_in is not None:  # the loop is stuck in that task: it alone is to blame
            overdue = [stuck_in] if stuck_in in overdue else []
        for position in overdue:
            started = self._started.pop(position, None)  # unless the loop reported it
            if started is not None:
                send([position], [TimedOut(now - started, stuck=True)])

    def _blocking_position(self) -> int | None:
        """The position of the task the loop thread is running now (None: between tasks, or
        unknown). Read from the main thread while that loop is blocked."""
        tasks = self._tasks
        try:
            current = asyncio.current_task(self.loop)
        except RuntimeError:  # pragma: no cover - a Python that refuses a foreign loop
            return None
        if current is None or tasks is None:
            return None
        for position, task in list(tasks.tasks.items()):
            if task is current:
                return position
        return tasks.starting  # an eager first step, its task not yet in ``tasks``

    def _on_loop(self, func: Callable[..., Any], *args: Any) -> None:
        done = threading.Event()

        def run() -> None:
            try:
                func(*args)
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        done.wait()

    # -- on the loop thread ----------------------------------------------------------------

    def _begun(self, position: int) -> None:
        """Call ``position`` starts: noted in the slot (a crash from then on fails it), and
        its clock for the blocked-loop check starts."""
        if self._slot is not None:
            self._slot.begun(self._base, position)
        self._started[position] = time.monotonic()

    def _on_request(self) -> None:
        frame = protocol.read_frame(self.req_fd)
        if frame is None or frame[0] == protocol.CANCEL:
            self.loop.remove_reader(self.req_fd)
            self._stop()

    def _stop(self) -> None:
        with self._cond:
            self.stopped = True
            self._cond.notify_all()
        if self._tasks is not None:
            self._tasks.cancel_all()

    def _report(self, position: int, kind: int, value: Any) -> None:
        if self._started.pop(position, None) is None:  # already reported stuck (blocked)
            return
        if kind == RAISED:
            value = protocol.TaskError.capture(value)
        if kind != VALUE and self._stop_on_error:
            self._stop()
        self._outcomes.append((position, value))
        if not self._flush_scheduled:  # outcomes of FLUSH_SECONDS share a frame
            self._flush_scheduled = True
            self.loop.call_later(FLUSH_SECONDS, self._flush)

    def _settled(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()
        if not self._in_flight:  # the job may be ending: send what is left now
            self.loop.call_soon(self._flush)
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_later(FLUSH_SECONDS, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        outcomes, self._outcomes = self._outcomes, []
        if outcomes and self._send is not None:
            self._send([p for p, _ in outcomes], [v for _, v in outcomes])
        with self._cond:
            self._unsent = self._in_flight + len(self._outcomes)
            self._cond.notify_all()
