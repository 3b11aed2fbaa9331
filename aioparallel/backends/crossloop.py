"""What the process-wide worker pool needs to serve several event loops at once.

The shared pool outlives any one event loop and may be used by two loops in two threads at
the same time, so none of its state may be bound to a loop:

- ``Signal``: a one-shot flag that any thread sets and any task of any loop (asyncio or
  trio) awaits; the wake-up is delivered into the waiting task's own loop
  (``call_soon_threadsafe``, or the trio token's ``run_sync_soon``).
- ``LoopRef``: the loop a task runs in, as another thread sees it: running, stopped (it may
  run again) or gone for good, so that what a gone loop held can be taken back.
- ``Reaper``: a daemon thread that runs a function at the times it asks for (the idle
  timeout), alive only while that function has something to wait for, so no thread is left
  behind once no worker is idle.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import Literal

import anyio

from .._detached import _in_trio

__all__ = ["LoopRef", "Reaper", "Signal", "call_soon", "resolve"]


def call_soon(callback: Callable[[], object]) -> None:
    """Run ``callback`` in the running event loop once the current task has yielded (the
    loop's next turn): asyncio's ``call_soon``, trio's ``run_sync_soon``."""
    if _in_trio():
        import trio

        trio.lowlevel.current_trio_token().run_sync_soon(callback)
        return
    asyncio.get_running_loop().call_soon(callback)


LoopState = Literal["running", "stopped", "gone"]


def _noop() -> None:
    pass


class LoopRef:
    """The event loop (asyncio) or trio run of the calling task, as seen from any thread.

    An asyncio loop can be stopped and closed with tasks still pending (``loop.stop()``, then
    ``loop.close()``: older pytest-asyncio did that), and those tasks never run their cleanup:
    what they hold must be taken back by others. A stopped loop may run again
    (``run_until_complete`` in bursts), so only a closed (or collected) one is gone. A trio
    run cancels and finishes all its tasks before it ends, so it is only ever "running", or
    "gone" once it has ended. Weak for asyncio: it does not keep a dead loop alive.
    """

    __slots__ = ("_loop", "_token")

    def __init__(self) -> None:
        self._loop: weakref.ref[object] | None = None
        self._token: object = None
        if _in_trio():
            import trio

            self._token = trio.lowlevel.current_trio_token()
        else:
            self._loop = weakref.ref(asyncio.get_running_loop())

    def state(self) -> LoopState:
        """Whether the loop runs now, is stopped (asyncio; it may run again) or is gone."""
        if self._loop is None:
            return self._trio_state()
        loop = self._loop()
        if loop is None or loop.is_closed():  # type: ignore[attr-defined]
            return "gone"
        return "running" if loop.is_running() else "stopped"  # type: ignore[attr-defined]

    def _trio_state(self) -> LoopState:
        import trio

        if _in_trio() and trio.lowlevel.current_trio_token() is self._token:
            return "running"
        try:  # the only way to ask from outside: a no-op callback
            self._token.run_sync_soon(_noop)  # type: ignore[attr-defined]
        except trio.RunFinishedError:
            return "gone"
        return "running"


def _loop_waker(wake_up: Callable[[], object]) -> Callable[[], bool]:
    """A function that calls ``wake_up`` (which sets something made in the running loop) in
    that loop, from any thread; it returns False if that loop has ended (nobody can be
    waiting any more)."""
    if _in_trio():
        import trio

        token = trio.lowlevel.current_trio_token()

        def wake_trio() -> bool:
            if _in_trio() and trio.lowlevel.current_trio_token() is token:
                wake_up()  # this very run: no need to go around
                return True
            try:
                token.run_sync_soon(wake_up)
            except trio.RunFinishedError:
                return False
            return True

        return wake_trio

    loop = asyncio.get_running_loop()

    def wake_asyncio() -> bool:
        try:
            running: object = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread
            running = None
        if running is loop:  # this very loop: no need to go around
            wake_up()
            return True
        try:
            loop.call_soon_threadsafe(wake_up)
        except RuntimeError:  # the loop is closed
            return False
        return True

    return wake_asyncio


def resolve(future: asyncio.Future[bool], value: bool) -> None:
    """Set ``future``'s result unless it has one (a timer and a wake-up may both fire)."""
    if not future.done():
        future.set_result(value)


class Signal:
    """Set once, from any thread; awaited by any number of tasks, in any loops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._wakers: list[Callable[[], bool]] = []

    def set(self) -> bool:
        """Set it and wake its waiters; False if it had waiters and none of their loops
        still runs (True if it had none yet: a task about to wait sees it set)."""
        with self._lock:
            if self._set:
                return True
            self._set = True
            wakers, self._wakers = self._wakers, []
        woken = [wake() for wake in wakers]  # outside the lock: a waker may run the callback
        return any(woken) or not wakers

    async def wait(self, seconds: float | None = None) -> bool:
        """True once set; False if ``seconds`` passed first. On asyncio the time limit is a
        timer on the loop, not a cancel scope: a pool's waiters look up every second, and a
        scope that expires costs a cancellation, raised and caught, each time."""
        timed = seconds is not None and not _in_trio()
        if timed:
            loop = asyncio.get_running_loop()
            woken: asyncio.Future[bool] = loop.create_future()
            wake = _loop_waker(functools.partial(resolve, woken, True))
        else:
            event = anyio.Event()
            wake = _loop_waker(event.set)
        with self._lock:
            if self._set:
                return True
            self._wakers.append(wake)
        try:
            if timed and seconds is not None:
                timer = loop.call_later(seconds, resolve, woken, False)
                try:
                    return await woken
                finally:
                    timer.cancel()
            with anyio.move_on_after(math.inf if seconds is None else seconds):
                await event.wait()
                return True
            return False
        finally:
            with self._lock:
                if wake in self._wakers:
                    self._wakers.remove(wake)


class Reaper:
    """A daemon thread that calls ``reap()`` and sleeps for the seconds it returns, until it
    returns None (nothing left to wait for): then the thread ends, and the next ``watch()``
    starts another. ``stop()`` ends it at once (it restarts on the next ``watch()``)."""

    def __init__(self, reap: Callable[[], float | None], name: str):
        self._reap = reap
        self._name = name
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._dirty = False  # watched since the thread last looked: look again
        self._next = math.inf  # when the thread wakes next (inf: it is looking now)

    def watch(self, when: float | None = None) -> None:
        """Something may expire at ``when`` (``time.monotonic()``; None: anything may have
        changed): make sure the thread runs and wakes up by then."""
        with self._cv:
            if self._thread is not None:
                if when is not None and when >= self._next:
                    return  # it wakes up before that anyway
                self._dirty = True
                self._cv.notify_all()
                return
            self._dirty = True
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the thread now and wait for it (bounded: it may be stopping a worker)."""
        with self._cv:
            thread, self._thread = self._thread, None
            self._cv.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10.0)

    def forget(self) -> None:
        """In a forked child: the parent's thread does not exist here."""
        self._cv = threading.Condition()
        self._thread = None
        self._dirty = False
        self._next = math.inf

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cv:
                if self._thread is not me:
                    return
                self._dirty = False
                self._next = math.inf
            try:
                delay = self._reap()
            except BaseException:  # not ours to swallow; the next watch() starts a thread
                with self._cv:
                    if self._thread is me:
                        self._thread = None
                raise
            with self._cv:
                if self._thread is not me:
                    return
                if self._dirty:
                    continue
                if delay is None:
                    self._thread = None
                    return
                self._next = time.monotonic() + delay
                self._cv.wait(delay)
