"""Calls under a ``timeout`` on thread workers: the parent holds each task's deadline.

A thread cannot be killed, and an async task that blocks its thread's event loop (a sync
call inside async code) cannot be cancelled on that loop either. So the event loop thread
keeps the deadlines:

- ``DaemonThreads`` runs timed work on daemon threads of one backend entry. A call given up
  on at its deadline goes on in the background (its result dropped) on a thread that never
  holds up the interpreter's exit, as anyio's worker threads (joined at exit) would.
- ``Watch`` sees one async batch from the parent: when each task began on the thread's loop
  and how it ended. A task still running ``CANCEL_GRACE + BLOCKED_MARGIN`` past its timeout
  blocks its loop (the loop would have reported it otherwise): the parent fails it, starts
  no further task of the batch there, and gives up on the thread once every task that began
  has ended or failed so; the tasks that never began run elsewhere.

::

    event loop thread                         daemon thread
    ─────────────────                         ─────────────
    DaemonThreads.submit ─► Job ─────────►    ctx.run(func, *args) (the caller's context)
    Watch.hold: wakes at the next deadline      Watch.timed wrapper: began / ended, per task
      or when the Job is done (Signal)    ◄──   Job.done.set()
      overdue task → Failure(TimeoutError)
"""

from __future__ import annotations

import contextvars
import queue
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from .crossloop import Signal

__all__ = ["DaemonThreads", "Job", "NotStarted", "Watch"]


class Job:
    """One piece of work for a daemon thread; ``done`` is set once it returned or raised."""

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...]):
        self.func = func
        self.args = args
        self.context = contextvars.copy_context()  # as anyio's threads: the caller's context
        self.done = Signal()
        self.finished = False
        self.value: Any = None
        self.error: BaseException | None = None
        #: The parent no longer waits for it: its thread must not be reused (still busy).
        self.given_up = False

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class DaemonThreads:
    """Daemon threads for one entry of a thread backend (``async with``), reused while their
    calls return, so the initializer runs once per thread as on anyio's threads. A thread
    whose call was given up on is not reused; it ends when that call returns. ``close`` ends
    the idle ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[Job | None]] = []
        self._closed = False
        self._count = 0

    def submit(self, func: Callable[..., Any], *args: Any) -> Job:
        job = Job(func, args)
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
            self._count += 1
            number = self._count
        if inbox is None:
            inbox = queue.SimpleQueue()
            thread = threading.Thread(
                target=self._serve, args=(inbox,), name=f"aioparallel-timed-{number}", daemon=True
            )
            thread.start()
        inbox.put(job)
        return job

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        """``func(*args)`` on a daemon thread. Cancelled: the call is given up on (it goes
        on in the background and its result is dropped)."""
        job = self.submit(func, *args)
        try:
            await job.done.wait()
        except BaseException:  # cancelled (a timeout, or the run): do not wait for it
            self.give_up(job)
            raise
        return job.result()

    def give_up(self, job: Job) -> None:
        with self._lock:
            job.given_up = True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for inbox in idle:
            inbox.put(None)

    def _serve(self, inbox: queue.SimpleQueue[Job | None]) -> None:
        while (job := inbox.get()) is not None:
            try:
                job.value = job.context.run(job.func, *job.args)
            except BaseException as exc:  # handed to the waiting task, whatever it is
                job.error = exc
            job.finished = True
            with self._lock:
                keep = not (self._closed or job.given_up)
                if keep:
                    self._idle.append(inbox)
            job.done.set()
            if not keep:
                return


class NotStarted(Exception):
    """Raised instead of starting a task of a batch the parent gave up on (never seen)."""


class Watch:
    """One async batch on a thread's loop, as the parent sees it. The wrapped functions
    (``timed``) record on the loop's thread; the parent reads under the same lock."""

    def __init__(self, start: int) -> None:
        #: Input index of the batch's first call (positions count from it).
        self.start = start
        self._lock = threading.Lock()
        self.began: dict[int, float] = {}
        #: position -> (seconds it ran, raised, value or exception)
        self.ended: dict[int, tuple[float, bool, Any]] = {}
        #: position -> seconds it had run when the parent failed it (it blocks its loop)
        self.overdue: dict[int, float] = {}
        self.given_up = False
        #: The task whose code is on the loop's thread when the parent gives up: the one
        #: blocking the loop (None: not found there). The others are held up behind it.
        self.blocker: int | None = None
        self._thread: int | None = None

    def timed(
        self, position: int, func: Callable[..., Any]
    ) -> Callable[..., Coroutine[Any, Any, Any]]:
        """``func`` (async), recording when it begins and how it ends."""

        async def task(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                if self.given_up:
                    raise NotStarted
                self._thread = threading.get_ident()
                began = self.began[position] = time.monotonic()
            try:
                value = await func(*args, **kwargs)
            except BaseException as exc:
                self._end(position, began, True, exc)
                raise
            self._end(position, began, False, value)
            return value

        return task

    def _end(self, position: int, began: float, raised: bool, value: Any) -> None:
        with self._lock:
            self.ended[position] = (time.monotonic() - began, raised, value)

    async def hold(self, job: Job, limit: float) -> bool:
        """Wait for ``job`` (the batch's thread) while failing each task that runs past
        ``limit``; True if it finished, False once the parent gave up on it (a task blocks
        its loop, and every other task that began has ended or is overdue too)."""
        while not job.finished:
            with anyio.move_on_after(self._check(limit)):
                await job.done.wait()
            if not job.finished and self.given_up and self._settled():
                return False
        return True

    def _check(self, limit: float) -> float:
        """Mark the overdue tasks; seconds until the next one could be."""
        now = time.monotonic()
        wake = limit  # a task that begins from now on is overdue no sooner
        with self._lock:
            for position, began in self.began.items():
                if position in self.ended or position in self.overdue:
                    continue
                if now - began > limit:
                    self.overdue[position] = now - began
                    if not self.given_up:
                        self.given_up = True
                        self.blocker = self._running_task()
                else:
                    wake = min(wake, began + limit - now)
        return max(wake, 0.01)

    def _running_task(self) -> int | None:
        """The position of the task whose wrapper is on the loop thread's stack now."""
        frame = sys._current_frames().get(self._thread or 0)
        while frame is not None:
            if frame.f_code is _TASK_CODE:
                position = frame.f_locals.get("position")
                return position if isinstance(position, int) else None
            frame = frame.f_back
        return None

    def _settled(self) -> bool:
        with self._lock:
            return all(p in self.ended or p in self.overdue for p in self.began)


_TASK_CODE = Watch(0).timed(0, print).__code__
