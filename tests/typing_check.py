"""Static checks of the public types, run by ``mypy --strict`` (see test_typing.py).

Never imported by the tests: mypy reads it. ``assert_type`` fails the type check when an
inferred type differs; the ``type: ignore[arg-type]`` lines fail it (warn_unused_ignores)
when the call they mark is *not* an error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from typing_extensions import assert_type

from aioparallel import Call, Parallel, delayed, parallel_config


def f(x: int) -> int:
    return x * 2


def g(name: str, *, repeat: int = 1) -> list[str]:
    return [name] * repeat


async def list_mode(xs: list[int]) -> None:
    results = await Parallel(n_jobs=2)(delayed(f)(x) for x in xs)
    assert_type(results, list[int])

    named = await Parallel(n_jobs=2, backend="threads")([delayed(g)("a", repeat=2)])
    assert_type(named, list[list[str]])

    explicit = await Parallel(n_jobs=2, return_as="list")(delayed(f)(x) for x in xs)
    assert_type(explicit, list[int])


async def fetch(x: int) -> str:
    return str(x)


async def async_tasks(xs: list[int]) -> None:
    """docs/async-tasks.md: a coroutine function's calls are awaited on the workers."""
    fetched = await Parallel(n_jobs=2)(delayed(fetch)(x) for x in xs)
    assert_type(fetched, list[str])
    assert_type(delayed(fetch)(1), Call[str])
    delayed(fetch)("not an int")  # type: ignore[arg-type]
    async for r in Parallel(n_jobs=2, return_as="generator")(delayed(fetch)(x) for x in xs):
        assert_type(r, str)


async def generator_modes(xs: list[int]) -> None:
    ordered = Parallel(n_jobs=2, return_as="generator")(delayed(f)(x) for x in xs)
    stream: AsyncIterator[int] = ordered
    async for r in stream:
        assert_type(r, int)

    unordered = Parallel(n_jobs=2, return_as="generator_unordered")(delayed(f)(x) for x in xs)
    async for u in unordered:
        assert_type(u, int)
    assert_type(await unordered.__anext__(), int)


async def async_input() -> None:
    async def calls() -> AsyncIterator[Call[int]]:
        yield delayed(f)(1)

    assert_type(await Parallel(n_jobs=2)(calls()), list[int])


def delayed_keeps_parameters() -> None:
    call = delayed(f)(1)
    assert_type(call, Call[int])
    assert_type(call(), int)
    delayed(f)("not an int")  # type: ignore[arg-type]
    delayed(g)("a", repeat="twice")  # type: ignore[arg-type]
    delayed(g)("a", 2)  # type: ignore[call-arg]


def config_is_a_context_manager() -> None:
    with parallel_config(backend="threads", n_jobs=2):
        pass
