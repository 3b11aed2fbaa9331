"""A run of one call (``run.single``): it skips the run's machinery, and nothing else. Its
result, its failure, the input it reads and what auto batching learns from it are those of
a run of one batch; an input of more calls reaches the run whole."""

from __future__ import annotations

import contextlib
import types
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from aioparallel import Parallel, delayed
from aioparallel.run import batching
from aioparallel.run import run as run_module
from tests.helpers import fail_at, square

pytestmark = pytest.mark.anyio


def cube(x: int) -> int:
    """A function of this module alone: what auto batching learns of it is this test's."""
    return x * x * x


def stopper(x: int) -> int:
    raise StopIteration(x)


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-call input must not start a Run: one that does fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a one-call input started a Run")

    monkeypatch.setattr(run_module.Run, "__init__", refuse)


def one_item_inputs() -> dict[str, Any]:
    return {
        "list": lambda: [delayed(square)(7)],
        "tuple": lambda: (delayed(square)(7),),
        "generator": lambda: (delayed(square)(x) for x in [7]),
        "joblib-tuple": lambda: [(square, (7,), {})],
    }


@pytest.mark.parametrize("form", sorted(one_item_inputs()))
@pytest.mark.parametrize("warm", [True, False], ids=["async-with", "fresh"])
async def test_one_call_runs_without_a_run(no_run: None, form: str, warm: bool) -> None:
    make = one_item_inputs()[form]
    if warm:
        async with Parallel(n_jobs=2) as p:
            assert await p(make()) == [49]
    else:
        assert await Parallel(n_jobs=2)(make()) == [49]


async def test_its_failure_names_its_task_as_a_run_does(no_run: None) -> None:
    with pytest.raises(ValueError, match="task input 3 is bad") as info:
        await Parallel(n_jobs=2)([delayed(fail_at)(3)])
    assert "aioparallel: raised by task 0 (fail_at)" in info.value.__notes__
    [error] = await Parallel(n_jobs=2, return_exceptions=True)([delayed(fail_at)(3)])
    assert isinstance(error, ValueError)
    assert "aioparallel: raised by task 0 (fail_at)" in error.__notes__


async def test_a_stop_iteration_is_wrapped_as_a_run_wraps_it(no_run: None) -> None:
    with pytest.raises(RuntimeError, match="task 0 \\(stopper\\) raised StopIteration") as info:
        await Parallel(n_jobs=2)([delayed(stopper)(1)])
    assert type(info.value.__cause__) is StopIteration


async def test_a_coroutine_item_is_refused_and_closed(no_run: None) -> None:
    async def job() -> int:
        return 1

    coroutine = job()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "never awaited" would be a RuntimeWarning
        with pytest.raises(TypeError, match="input item 0 is not a delayed call"):
            await Parallel(n_jobs=2)([coroutine])
    assert coroutine.cr_frame is None  # closed


async def test_an_input_that_fails_while_read_raises_its_error(no_run: None) -> None:
    def calls() -> Iterator[Any]:
        yield delayed(square)(1)
        raise KeyError("the input broke")

    with pytest.raises(KeyError, match="the input broke"):
        await Parallel(n_jobs=2)(calls())


async def test_a_longer_input_reaches_the_run_whole() -> None:
    pulled: list[int] = []

    def calls(n: int) -> Iterator[Any]:
        for x in range(n):
            pulled.append(x)
            yield delayed(square)(x)

    for n in (0, 2, 3, 40):
        pulled.clear()
        assert await Parallel(n_jobs=2)(calls(n)) == [x * x for x in range(n)]
        assert pulled == list(range(n))


async def test_pre_dispatch_of_one_is_not_read_ahead() -> None:
    pulled: list[int] = []

    def calls() -> Iterator[Any]:
        for x in range(3):
            pulled.append(x)
            yield delayed(len)(pulled)  # in a thread: how many calls were read as it runs

    # a run of pre_dispatch=1 reads no call ahead of the one running
    p = Parallel(n_jobs=2, backend="threads", pre_dispatch=1)
    assert await p(calls()) == [1, 2, 3]


async def test_auto_batching_learns_from_it_as_from_a_run_of_one_batch(no_run: None) -> None:
    func = cube
    assert type(func) is types.FunctionType
    batching._learned.pop(func, None)
    batching._lengths.pop(func, None)
    assert await Parallel(n_jobs=2)([delayed(func)(2)]) == [8]
    size, seconds, _cap = batching._learned[func]
    assert size >= 1
    assert seconds > 0.0
    assert batching.last_length(func) == 1
    assert batching.latest_call_seconds(func) is not None
    # an explicit batch_size learns nothing, as a run's does not
    batching._learned.pop(func, None)
    assert await Parallel(n_jobs=2, batch_size=1)([delayed(func)(2)]) == [8]
    assert func not in batching._learned


class _GroupRaisingBackend:
    """A custom backend whose batch fails inside a task group of its own."""

    name = "group-raising"
    n_workers = 2

    async def __aenter__(self) -> _GroupRaisingBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    @contextlib.asynccontextmanager
    async def open_run(self, options: Any) -> AsyncIterator[Any]:
        async def run_batch(batch: Any) -> list[Any]:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_broken)
            return []

        yield run_batch


async def _broken() -> None:
    raise LookupError("the backend broke")


async def test_a_backend_error_in_a_task_group_is_raised_as_itself() -> None:
    p = Parallel(backend=_GroupRaisingBackend(), n_jobs=2)
    with pytest.raises(LookupError, match="the backend broke"):
        await p([delayed(square)(1)])  # one call (run.single)
    with pytest.raises(LookupError, match="the backend broke"):
        await p([delayed(square)(1), delayed(square)(2)])  # a Run, for comparison
