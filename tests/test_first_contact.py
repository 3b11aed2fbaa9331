"""The first mistakes of a joblib user: each names the fix; every real entry point still works."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio

from aioparallel import NotACallError, Parallel, delayed
from tests.helpers import square

ROOT = Path(__file__).resolve().parent.parent
CALLS = [delayed(square)(i) for i in range(4)]
EXPECTED = [i * i for i in range(4)]


def test_results_used_without_await_name_the_fix() -> None:
    pending = Parallel(n_jobs=2, backend="threads")(CALLS)
    assert "not awaited" in repr(pending)
    assert "Parallel._gather" not in repr(pending)
    for misuse in (lambda: pending[0], lambda: list(pending)):
        with pytest.raises(TypeError, match=r"results = await Parallel\(n_jobs=2\)") as info:
            misuse()
        assert "asyncio.run(" in str(info.value)
    pending.close()


def test_never_awaited_warning_names_the_call() -> None:
    pending = Parallel(n_jobs=2, backend="threads")(CALLS)
    with pytest.warns(RuntimeWarning, match=r"Parallel\(n_jobs=2\)\(…\) was never awaited"):
        del pending
        gc.collect()


def test_for_over_a_stream_names_async_for() -> None:
    stream = Parallel(n_jobs=2, backend="threads", return_as="generator")(CALLS)
    with pytest.raises(TypeError, match="async for"):
        for _ in stream:  # type: ignore[attr-defined]
            pass
    np = pytest.importorskip("numpy")
    misuses = (lambda: len(stream), lambda: stream[0], lambda: np.array(stream))  # type: ignore[arg-type,index]
    for misuse in misuses:
        with pytest.raises(TypeError, match="async for"):
            misuse()
    assert stream


def test_plain_with_names_async_with() -> None:
    with pytest.raises(TypeError, match=r"async with Parallel\(n_jobs=2\) as"):
        with Parallel(n_jobs=2):  # type: ignore[attr-defined]
            pass
    stream = Parallel(n_jobs=2, return_as="generator")(CALLS)
    with pytest.raises(TypeError, match="async with Parallel"):
        with stream:  # type: ignore[attr-defined]
            pass


@pytest.mark.parametrize(
    ("inputs", "fix"),
    [
        ((square for _ in range(3)), r"the function square itself: .*delayed\(square\)\(x\)"),
        ((delayed(square) for _ in range(3)), r"delayed\(square\) without its arguments"),
        ((square(i) for i in range(3)), r"int 0 \(was the function called directly"),
    ],
    ids=["bare-function", "delayed-without-call", "called-directly"],
)
def test_items_that_are_not_delayed_calls_name_the_fix(inputs: object, fix: str) -> None:
    with pytest.raises(TypeError, match=fix):
        asyncio.run(Parallel(n_jobs=2, backend="threads")(inputs))  # type: ignore[call-overload]


def test_a_function_instead_of_an_iterable_names_the_fix() -> None:
    with pytest.raises(TypeError, match=r"delayed\(f\)\(x\) for x in xs"):
        Parallel(n_jobs=2)(delayed(square))  # type: ignore[call-overload]


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_asyncio_entry_points(backend: str) -> None:
    parallel = Parallel(n_jobs=2, backend=backend)
    assert asyncio.run(parallel(CALLS)) == EXPECTED

    async def main() -> None:
        assert await parallel(CALLS) == EXPECTED
        assert await asyncio.gather(parallel(CALLS), parallel(CALLS)) == [EXPECTED, EXPECTED]
        assert await asyncio.create_task(parallel(CALLS)) == EXPECTED
        assert await asyncio.wait_for(parallel(CALLS), 30) == EXPECTED

    asyncio.run(main())


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_trio_and_anyio_entry_points(backend: str) -> None:
    parallel = Parallel(n_jobs=2, backend=backend)
    got: list[list[int]] = []

    async def collect() -> None:
        got.append(await parallel(CALLS))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: parallel(CALLS))
            nursery.start_soon(collect)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: parallel(CALLS))
            tg.start_soon(collect)

    trio.run(main)
    assert got == [EXPECTED, EXPECTED]


def test_bench_from_an_installed_copy_says_how_to_get_it(tmp_path: Path) -> None:
    """An installed copy (the package without the repository's benchmarks/ folder, as in the
    wheel) answers `bench --help` and `bench --quick` with how to get the source distribution
    that has it."""
    import shutil

    installed = tmp_path / "site-packages"
    shutil.copytree(
        ROOT / "aioparallel",
        installed / "aioparallel",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    env = {**os.environ, "PYTHONPATH": str(installed)}

    def bench(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "aioparallel", "bench", *args]
        return subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
        )

    helped = bench("--help")
    assert helped.returncode == 0, helped.stderr
    assert "source distribution" in helped.stdout
    assert "pip download --no-deps --no-binary :all: aioparallel" in helped.stdout
    assert "pip install -e '.[bench]'" in helped.stdout
    assert "python -m aioparallel bench --quick" in helped.stdout
    refused = bench("--quick")
    assert refused.returncode == 2
    assert refused.stdout == "" and "pip install -e '.[bench]'" in refused.stderr


def test_asyncio_may_inspect_the_call_like_any_coroutine() -> None:
    """asyncio looks at a task's coroutine (``if task._coro:`` in its repr, 3.12+)."""

    async def main() -> None:
        pending = Parallel(n_jobs=2, backend="threads")(CALLS)
        assert pending
        task = asyncio.ensure_future(pending)
        assert "Task" in repr(task)
        assert await task == EXPECTED

    asyncio.run(main())


# -- a forgotten await, every way it shows ------------------------------------------------

FIX = r"results = await Parallel\(n_jobs=2\)"


def test_len_and_in_name_the_fix() -> None:
    pending = Parallel(n_jobs=2, backend="threads")(CALLS)
    for misuse in (lambda: len(pending), lambda: 1 in pending):  # type: ignore[arg-type,operator]
        with pytest.raises(TypeError, match=FIX):
            misuse()
    pending.close()


def test_numpy_array_of_an_unawaited_call_names_the_fix() -> None:
    """``np.array(Parallel(...)(calls))`` is joblib's commonest idiom: not a 0-d object array."""
    np = pytest.importorskip("numpy")
    pending = Parallel(n_jobs=2, backend="threads")(CALLS)
    for convert in (np.array, np.asarray, np.stack):
        with pytest.raises(TypeError, match=FIX):
            convert(pending)
    pending.close()


def test_comparing_an_unawaited_call_names_the_fix() -> None:
    pending = Parallel(n_jobs=2, backend="threads")(CALLS)
    with pytest.raises(TypeError, match=FIX):
        assert pending == EXPECTED
    with pytest.raises(TypeError, match=FIX):
        assert pending != EXPECTED
    assert pending == pending  # identity still holds, so sets and dicts work
    assert pending in {pending: 1} and hash(pending) == hash(pending)
    pending.close()


def test_async_for_over_a_list_call_names_the_fix() -> None:
    async def main() -> None:
        pending = Parallel(n_jobs=2, backend="threads")(CALLS)
        with pytest.raises(TypeError, match=r"return_as='list'.*results = await Parallel"):
            async for _ in pending:  # type: ignore[attr-defined]
                pass
        with pytest.raises(TypeError, match="return_as='generator'"):
            async for _ in pending:  # type: ignore[attr-defined]
                pass
        assert await pending == EXPECTED  # still usable: the misuse ran nothing

    asyncio.run(main())


def test_await_on_a_stream_names_async_for() -> None:
    async def main() -> None:
        stream = Parallel(n_jobs=2, backend="threads", return_as="generator")(CALLS)
        with pytest.raises(TypeError, match=r"async for r in .*return_as='list'"):
            await stream  # type: ignore[misc]
        assert [r async for r in stream] == EXPECTED  # still usable: the misuse ran nothing

    asyncio.run(main())


async def _coroutine_task(x: int) -> int:
    return x


async def _aiter_coroutines(n: int) -> Any:
    for i in range(n):
        yield _coroutine_task(i)


@pytest.mark.parametrize("kind", ["list", "generator", "async-iterable"])
def test_coroutines_as_input_items_are_refused_and_closed(kind: str) -> None:
    """``Parallel()(f(x) for x in xs)`` with ``async def f``: the error names ``delayed``,
    and the coroutines it took (a list's: all) are closed rather than left to warn "never
    awaited"."""
    inputs: object = {
        "list": lambda: [_coroutine_task(i) for i in range(100)],
        "generator": lambda: (_coroutine_task(i) for i in range(100)),
        "async-iterable": lambda: _aiter_coroutines(100),
    }[kind]()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(NotACallError, match=r"_coroutine_task.*delayed\(_coroutine_task\)"):
            asyncio.run(Parallel(n_jobs=2, backend="threads")(inputs))  # type: ignore[call-overload]
        del inputs
        gc.collect()
    assert [str(w.message) for w in caught] == []


# -- joblib-style nesting: a sync task returns the inner call un-awaited ------------------


def nest_unawaited(n: int) -> Any:
    """joblib's nesting, written as for joblib: the inner call is never awaited."""
    return Parallel(n_jobs=2)(delayed(square)(i) for i in range(n))


def nest_stream(n: int) -> Any:
    return Parallel(n_jobs=2, return_as="generator")(delayed(square)(i) for i in range(n))


async def nest_unawaited_async(n: int) -> Any:
    return Parallel(n_jobs=2)(delayed(square)(i) for i in range(n))


def _check_nested_error(info: pytest.ExceptionInfo[TypeError], task: str) -> None:
    message = str(info.value)
    assert "never awaited" in message and "nothing ran" in message
    assert "asyncio.run(" in message and "async def" in message
    assert f"aioparallel: raised by task 0 ({task})" in info.value.__notes__
    assert "cannot pickle" not in message


@pytest.mark.parametrize("backend", ["processes", "threads", "sequential"])
@pytest.mark.parametrize("task", [nest_unawaited, nest_stream, nest_unawaited_async])
def test_a_task_returning_an_unawaited_call_names_the_fix(backend: str, task: Any) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TypeError) as info:
            asyncio.run(Parallel(n_jobs=2, backend=backend)([delayed(task)(2)]))
        gc.collect()
    _check_nested_error(info, task.__name__)
    assert [str(w.message) for w in caught] == []


@pytest.mark.usefixtures("dask_offload_thread")  # conftest.py
def test_a_dask_task_returning_an_unawaited_call_names_the_fix() -> None:
    import distributed

    from aioparallel import parallel_config

    async def main() -> None:
        async with (
            distributed.LocalCluster(
                n_workers=1,
                threads_per_worker=1,
                processes=False,
                asynchronous=True,
                dashboard_address=":0",
            ) as cluster,
            distributed.Client(cluster, asynchronous=True, set_as_default=False) as client,
        ):
            with parallel_config(backend="dask", client=client):
                for task in (nest_unawaited, nest_stream, nest_unawaited_async):
                    with pytest.raises(TypeError) as info:
                        await Parallel()([delayed(task)(2)])
                    _check_nested_error(info, task.__name__)

    asyncio.run(main())


# -- public exceptions show as aioparallel's -----------------------------------------------


def test_every_public_exception_shows_as_aioparallel() -> None:
    import pickle
    import traceback

    import aioparallel

    assert aioparallel.NotACallError is NotACallError
    errors = [
        value
        for value in (getattr(aioparallel, name) for name in aioparallel.__all__)
        if isinstance(value, type) and issubclass(value, BaseException)
    ]
    assert NotACallError in errors and len(errors) >= 9
    for error in errors:
        name = error.__name__
        assert error.__module__ == "aioparallel", name
        assert repr(error) == f"<class 'aioparallel.{name}'>"
        assert pickle.loads(pickle.dumps(error)) is error
    with pytest.raises(NotACallError) as info:
        asyncio.run(Parallel(n_jobs=2, backend="threads")([square]))
    shown = traceback.format_exception_only(info.type, info.value)[-1]
    assert shown.startswith("aioparallel.NotACallError: input item 0 is not a delayed call")
