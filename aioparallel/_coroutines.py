"""Which calls are async: detected once in the parent, so workers need not import
``inspect`` and batching can give async input enough calls per worker.

A call is async when its function is a coroutine function: ``async def``, a
``functools.partial`` of one, a bound async method (``inspect`` sees through those), or an
object whose ``__call__`` is ``async def``. A sync call that happens to return a coroutine
is awaited too, where it runs (``is_coroutine``), so nobody is ever handed an un-awaited
coroutine.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Sequence
from typing import Any

from ._call import Call, OneFuncCalls

__all__ = ["async_flags", "is_async_callable", "is_coroutine"]


def is_async_callable(func: object) -> bool:
    """True if calling ``func`` makes a coroutine that must be awaited."""
    if inspect.iscoroutinefunction(func):
        return True
    if isinstance(func, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
        return False
    return inspect.iscoroutinefunction(getattr(func, "__call__", None))  # noqa: B004


def is_coroutine(value: object) -> bool:
    """A coroutine object (what a sync function returns when it hands back an ``async def``'s
    call instead of awaiting it)."""
    return isinstance(value, types.CoroutineType)


def async_flags(calls: Sequence[Call[Any]]) -> bytes | None:
    """One byte per call, 1 for an async call; None when no call is async (the common case,
    and what the process worker checks first). Detection runs once per distinct function in
    a row, so a batch of one function costs one check."""
    if type(calls) is OneFuncCalls:
        return b"\x01" * len(calls) if calls and is_async_callable(calls.func) else None
    flags = bytearray(len(calls))
    last: object = None
    last_async = False
    for i, call in enumerate(calls):
        func = call.func
        if func is not last:
            last, last_async = func, is_async_callable(func)
        if last_async:
            flags[i] = 1
    return bytes(flags) if any(flags) else None
