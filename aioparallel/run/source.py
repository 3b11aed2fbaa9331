"""The input: a sync or async iterable of calls, consumed lazily, in batches."""

from __future__ import annotations

import operator
import time
import types
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator
from itertools import islice
from typing import Any

from .._call import Call, Calls, Delayed, OneFuncCalls
from .._errors import NotACallError

__all__ = ["NotACallError", "ProducerError", "Source", "as_call", "close_coroutines"]


#: Longest stretch spent pulling items from a sync iterable before the loop gets a turn.
TAKE_SECONDS = 0.001
#: Items pulled between two looks at the clock.
TAKE_CHUNK = 64
_CALL_TYPE = frozenset({Call})


class ProducerError(Exception):
    """Carries an exception raised by the user's iterable, so the run re-raises it as is."""

    def __init__(self, error: BaseException):
        super().__init__(error)
        self.error = error


def as_call(item: object, index: int) -> Call[Any]:
    """Accept a ``delayed`` call or a joblib-style ``(f, args, kwargs)`` tuple."""
    if type(item) is Call:
        return item
    if isinstance(item, tuple) and len(item) == 3:
        func, args, kwargs = item
        if callable(func) and isinstance(args, (tuple, list)) and isinstance(kwargs, dict):
            return Call(func, tuple(args), kwargs)
    if isinstance(item, Call):
        return item
    raise NotACallError(f"input item {index} is not a delayed call: {_what_instead(item)}")


def _what_instead(item: object) -> str:
    """What the input item is, and the delayed call the user most likely meant."""
    if isinstance(item, types.CoroutineType):
        name = item.__qualname__
        return (
            f"got a coroutine of {name}: the async function was called directly, f(x); "
            f"record the call as delayed({name})(x), which runs it on a worker"
        )
    if callable(item):
        name = getattr(item, "__qualname__", None) or type(item).__name__
        if isinstance(item, Delayed):
            return f"got delayed({name}) without its arguments: call it, delayed({name})(x)"
        return f"got the function {name} itself: record the call as delayed({name})(x)"
    return (
        f"got {type(item).__name__} {item!r:.80} (was the function called directly, f(x)?); "
        "pass delayed(f)(x) or a (f, args, kwargs) tuple"
    )


def close_coroutines(items: Iterable[object]) -> None:
    """Close the coroutines among input items (``f(x)`` for an async ``f``) once one is
    refused: they never run, and unclosed they would each warn "never awaited" at exit."""
    for item in items:
        if isinstance(item, Coroutine):  # an un-awaited Parallel(...)(calls) too
            item.close()


class Source:
    """Takes calls from the user's iterable, ``n`` at a time, numbering them."""

    def __init__(self, iterable: object):
        self.total: int | None = None
        self._sync: Iterator[Any] | None = None
        self._async: AsyncIterator[Any] | None = None
        #: A list or tuple input: its coroutines are closed if one is refused.
        self._items = iterable if isinstance(iterable, (list, tuple)) else ()
        if hasattr(iterable, "__aiter__"):
            self._async = iterable.__aiter__()
        elif hasattr(iterable, "__iter__"):
            try:
                self.total = operator.length_hint(iterable, -1)
            except Exception:
                self.total = -1
            if self.total < 0 or not hasattr(iterable, "__len__"):
                self.total = None
            self._sync = iter(iterable)
        else:
            raise TypeError(
                f"Parallel(...) needs an iterable or async iterable of delayed calls, "
                f"got {type(iterable).__name__}"
            )
        self.taken = 0
        self.exhausted = False

    async def take(self, n: int) -> Calls:
        """Up to ``n`` calls (fewer when the input ends, see ``exhausted``, or is slow to
        produce them). Errors raised by the input are wrapped in ProducerError."""
        calls: Calls = []
        index = self.taken
        try:
            if self._sync is not None:
                # A slow producer runs on the event loop: yield back after TAKE_SECONDS,
                # checked every TAKE_CHUNK items (pulled by islice: no bytecode per item).
                deadline = time.perf_counter() + TAKE_SECONDS
                while True:
                    want = min(TAKE_CHUNK, n - len(calls))
                    chunk = list(islice(self._sync, want))
                    if {*map(type, chunk)} - _CALL_TYPE:  # a tuple or a Call subclass
                        at = index + len(calls)
                        try:
                            chunk = [as_call(item, at + i) for i, item in enumerate(chunk)]
                        except NotACallError:
                            close_coroutines(chunk)
                            close_coroutines(self._items)
                            raise
                    calls = self._joined(calls, chunk)
                    if len(chunk) < want:
                        self.exhausted = True
                        break
                    if len(calls) >= n or time.perf_counter() > deadline:
                        break
            else:
                assert self._async is not None
                got: list[Call[Any]] = []  # the chunk being read
                while len(calls) + len(got) < n:
                    try:
                        item = await self._async.__anext__()
                    except StopAsyncIteration:
                        self.exhausted = True
                        break
                    try:
                        got.append(as_call(item, index + len(calls) + len(got)))
                    except NotACallError:
                        close_coroutines([item])
                        raise
                    if len(got) == TAKE_CHUNK:
                        calls, got = self._joined(calls, got), []
                calls = self._joined(calls, got)
        except NotACallError:
            raise
        except Exception as exc:
            raise ProducerError(exc) from None
        self.taken += len(calls)
        return calls

    @staticmethod
    def _joined(calls: Calls, chunk: list[Call[Any]]) -> Calls:
        """``calls`` then ``chunk``; one function's calls held as their argument tuples
        (``OneFuncCalls``), so that the chunk's ``Call`` objects die young."""
        if calls:
            calls += chunk
            return calls
        return OneFuncCalls.of(chunk) or chunk

    @property
    def closable(self) -> bool:
        """Whether ``aclose`` has anything to do: an async generator input not consumed to
        its end. (A run can skip the shielded, bounded close, ~20 µs, when it has not.)"""
        return not self.exhausted and getattr(self._async, "aclose", None) is not None

    async def aclose(self) -> None:
        """Close an async generator input we stopped consuming early."""
        aclose = getattr(self._async, "aclose", None)
        if aclose is not None and not self.exhausted:
            await aclose()
