"""delayed() and the Call it builds: a joblib-compatible ``(f, args, kwargs)`` triple."""

from __future__ import annotations

import functools
import types
import weakref
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Generic, ParamSpec, TypeVar, overload

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["Call", "delayed"]


class Call(Generic[R]):
    """One deferred call ``f(*args, **kwargs)``.

    It unpacks as the tuple ``(f, args, kwargs)`` so producers written for joblib work unchanged,
    and it carries the result type ``R`` so ``await Parallel()(calls)`` is typed ``list[R]``.
    """

    __slots__ = ("args", "func", "kwargs")

    def __init__(self, func: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.func = func
        self.args = args
        self.kwargs = kwargs

    def __iter__(self) -> Iterator[Any]:
        return iter((self.func, self.args, self.kwargs))

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> Any:
        return (self.func, self.args, self.kwargs)[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Call, tuple)):
            return tuple(self) == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __call__(self) -> R:
        return self.func(*self.args, **self.kwargs)

    def __repr__(self) -> str:
        return f"delayed({function_name(self.func)})(...)"


# ``delayed(f)(x) for x in xs`` asks for the same wrapper once per item: build it once.
# Only for plain functions: their equality is identity, so a cached wrapper is always theirs.
_CACHEABLE = frozenset({types.FunctionType})
_wrappers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


@overload
def delayed(func: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Call[R]]: ...


@overload
def delayed(func: Callable[P, R]) -> Callable[P, Call[R]]: ...


def delayed(func: Callable[P, Any]) -> Callable[P, Call[Any]]:
    """Defer ``func``: ``delayed(f)(x, y=1)`` records the call instead of making it.

    The wrapper keeps ``func``'s name, docstring and parameter types. A coroutine function
    (``async def``) is awaited where the call runs (SPEC §8), so its call is typed with the
    coroutine's result: ``await Parallel()(delayed(async_f)(x) for x in xs)`` is ``list[R]``.
    """
    cacheable = type(func) in _CACHEABLE
    if cacheable:
        cached: Callable[P, Call[Any]] | None = _wrappers.get(func)
        if cached is not None:
            return cached
    elif not callable(func):
        raise TypeError(f"delayed() needs a callable, got {type(func).__name__}: {func!r}")

    def delayed_function(*args: P.args, **kwargs: P.kwargs) -> Call[Any]:
        return Call(func, args, kwargs)

    try:
        delayed_function = functools.wraps(func)(delayed_function)
    except AttributeError:  # some callable objects lack __name__
        pass
    if cacheable:
        _wrappers[func] = delayed_function
    return delayed_function


def function_name(func: object) -> str:
    """A readable name for error messages, even for partials and callable objects."""
    inner = getattr(func, "func", None) if isinstance(func, functools.partial) else None
    if inner is not None:
        return f"partial({function_name(inner)})"
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    return str(name) if name else type(func).__name__
