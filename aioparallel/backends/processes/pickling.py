"""Which jobs are obviously cheap to pickle, so that the event loop may pickle them itself.

A job is pickled on the loop only if every callable goes by name and every argument is a
small scalar or a short string; anything else, a callable that carries data (a bound
method, a partial, a closure) or a large or unusual argument, is pickled in a thread
(pickling of large payloads never runs on the event loop thread). These checks
run once per batch on the parent's hot path, so the common case, one function with scalar
arguments, is decided at C speed.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from itertools import chain, repeat
from operator import attrgetter, is_
from typing import Any

from ..._call import Call
from ..._coroutines import async_flags, is_async_callable

__all__ = ["cheap_callable", "job_flags", "one_func", "small_args", "small_calls"]

_SCALARS = frozenset({int, float, bool, type(None), complex})
_SMALL_SEQUENCES = frozenset({str, bytes})
_SMALL_KINDS = _SCALARS | _SMALL_SEQUENCES
_FUNC = attrgetter("func")


def _by_reference(func: object) -> bool:
    """True if pickle sends ``func`` by name (cheap); lambdas, closures and functions of
    ``__main__`` travel by value, with whatever they capture."""
    module = getattr(func, "__module__", None)
    return module not in (None, "__main__") and "<" not in getattr(func, "__qualname__", "<")


def cheap_callable(func: object) -> bool:
    """True if pickling ``func`` writes its name and nothing else: a module-level function
    or class, or a module's builtin. Anything else carries state of unknown size by value:
    a bound method its object, a partial its arguments, a closure its cells, a callable
    object its attributes."""
    kind = type(func)
    if kind is types.FunctionType or isinstance(func, type):
        return _by_reference(func)
    if kind is types.BuiltinFunctionType:
        owner = getattr(func, "__self__", None)
        return (owner is None or type(owner) is types.ModuleType) and _by_reference(func)
    return False


def _small_values(values: Any) -> bool:
    for value in values:
        kind = type(value)
        if kind in _SCALARS or (kind in _SMALL_SEQUENCES and len(value) <= 4096):
            continue
        return False
    return True


def small_args(items: list[tuple[Any, ...]]) -> bool:
    """``_small_values`` over many argument tuples at once: the types are gathered at C
    speed, and only strings and bytes need a look at each (their length)."""
    kinds = {*map(type, chain.from_iterable(items))}
    if kinds <= _SCALARS:
        return True
    return kinds <= _SMALL_KINDS and _small_values(chain.from_iterable(items))


def one_func(calls: Sequence[Call[Any]]) -> Any:
    """The function all ``calls`` make (compared by identity), or None if they make
    several."""
    func = calls[0].func
    return func if all(map(is_, map(_FUNC, calls), repeat(func))) else None


def job_flags(calls: Sequence[Call[Any]], func: Any) -> bytes | None:
    """``async_flags(calls)``; ``func``: their one function (``one_func``), or None."""
    if func is None:
        return async_flags(calls)
    return b"\x01" * len(calls) if is_async_callable(func) else None


def small_calls(calls: Sequence[Call[Any]]) -> bool:
    """Whether pickling ``calls`` is obviously cheap (safe on the event loop): cheap
    callables and small positional and keyword arguments."""
    cheap: object = None  # the last callable found cheap: most calls share one
    for call in calls:
        if call.func is not cheap:
            if not cheap_callable(call.func):
                return False
            cheap = call.func
        if not _small_values(call.args) or (
            call.kwargs and not _small_values(call.kwargs.values())
        ):
            return False
    return True
