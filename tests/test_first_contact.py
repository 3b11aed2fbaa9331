"""The first mistakes of a joblib user: each names the fix; every real entry point still works."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
import trio

from aioparallel import Parallel, delayed
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
