"""docs/api.md and docs/cancellation.md, bad data: each is a clear error naming what went wrong, and
never a hang.

Every run here is bounded by ``fail_after(RUN_LIMIT)``: a hang fails the test with
``TimeoutError`` instead of blocking the session. Cases run on the process and the thread
backend; where a case cannot apply to threads (nothing is pickled), the thread backend must
simply run the calls.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from aioparallel import Parallel, SerializationError, delayed
from aioparallel._errors import RemoteTraceback
from tests.conftest import choice_fixture
from tests.helpers import collect
from tests.reliability.helpers import (
    HoldsLockError,
    LockedCallable,
    NeedsArgError,
    bad_in_parent_at,
    identity,
    lock_at,
    raise_at,
    square,
)

pytestmark = pytest.mark.anyio

BACKENDS = ["processes", "threads"]
RUN_LIMIT = 15.0
AT = 5
N = 12


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """This module's loops (the fault and load tests run the full matrix)."""
    return request.param


backend = choice_fixture(BACKENDS)  # and ``mode``: each return_as, from conftest.py


def _note(index: int, name: str) -> str:
    return f"aioparallel: raised by task {index} ({name})"


# -- unpicklable function, argument, result ---------------------------------------------------


async def test_unpicklable_function(backend: str) -> None:
    func = LockedCallable()
    p = Parallel(n_jobs=2, backend=backend)
    if backend == "threads":
        assert await collect(p, (delayed(func)(i) for i in range(N)), RUN_LIMIT) == [
            i * i for i in range(N)
        ]
        return
    with pytest.raises(SerializationError) as info:
        await collect(p, (delayed(func)(i) for i in range(N)), RUN_LIMIT)
    message = str(info.value)
    # Two lanes pickle their first batch (tasks 0 and 1) at once: the first error wins.
    assert re.search(r"task [01] \(LockedCallable\) could not be pickled", message), message
    assert "_thread.lock" in message
    assert isinstance(info.value.__cause__, TypeError)


async def test_unpicklable_argument_names_its_task(backend: str) -> None:
    import threading

    args: list[Any] = list(range(N))
    args[AT] = threading.Lock()
    p = Parallel(n_jobs=2, backend=backend)
    if backend == "threads":
        assert await collect(p, (delayed(identity)(a) for a in args), RUN_LIMIT) == args
        return
    with pytest.raises(SerializationError) as info:
        await collect(p, (delayed(identity)(a) for a in args), RUN_LIMIT)
    message = str(info.value)
    assert f"task {AT} (identity) could not be pickled" in message
    assert "_thread.lock" in message
    assert _note(AT, "identity") in info.value.__notes__


async def test_unpicklable_result_names_its_task(backend: str) -> None:
    p = Parallel(n_jobs=2, backend=backend)
    calls = [delayed(lock_at)(i, AT) for i in range(N)]
    if backend == "threads":
        results = await collect(p, calls, RUN_LIMIT)
        assert type(results[AT]).__name__ == "lock"
        return
    with pytest.raises(SerializationError) as info:
        await collect(p, calls, RUN_LIMIT)
    message = str(info.value)
    assert f"task {AT} (lock_at)" in message
    assert "result could not be pickled" in message
    assert "_thread.lock" in message
    assert _note(AT, "lock_at") in info.value.__notes__


async def test_unpicklable_result_with_return_exceptions(backend: str) -> None:
    p = Parallel(n_jobs=2, backend=backend, return_exceptions=True, batch_size=4)
    results = await collect(p, [delayed(lock_at)(i, AT) for i in range(N)], RUN_LIMIT)
    assert [r for i, r in enumerate(results) if i != AT] == [i for i in range(N) if i != AT]
    if backend == "processes":
        assert isinstance(results[AT], SerializationError)
        assert f"task {AT} (lock_at)" in str(results[AT])


async def test_result_unpicklable_in_parent_names_its_task() -> None:
    """A result that pickles in the worker but cannot be rebuilt in the parent.

    One results frame carries several calls and fails to unpickle as a whole: the error must
    still name the culprit (task 5), not the frame's first call (task 4, as it once did).
    """
    p = Parallel(n_jobs=2, batch_size=4)
    with pytest.raises(SerializationError) as info:
        await collect(p, [delayed(bad_in_parent_at)(i, AT) for i in range(N)], RUN_LIMIT)
    assert "could not be unpickled in the parent" in str(info.value)
    assert f"task {AT} (bad_in_parent_at)" in str(info.value)


async def test_result_unpicklable_in_parent_with_return_exceptions_does_not_hang() -> None:
    """The frame that failed to unpickle was the worker's last (``done``): the run must not
    wait for another one (it once hung here), and the other calls keep their results."""
    p = Parallel(n_jobs=2, batch_size=4, return_exceptions=True)
    calls = [delayed(bad_in_parent_at)(i, AT) for i in range(N)]
    results = await collect(p, calls, limit=5.0)  # it takes ~0.1 s
    assert isinstance(results[AT], SerializationError)
    assert f"task {AT} (bad_in_parent_at)" in str(results[AT])
    assert [r for i, r in enumerate(results) if i != AT] == [i for i in range(N) if i != AT]


# -- exceptions that cannot travel -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "exc_type", "marker"),
    [
        ("needs_arg", NeedsArgError, "NEEDS-ARG-MARKER"),
        ("holds_lock", HoldsLockError, "HOLDS-LOCK-MARKER"),
    ],
)
async def test_exception_that_cannot_be_pickled(
    backend: str, kind: str, exc_type: type[Exception], marker: str
) -> None:
    p = Parallel(n_jobs=2, backend=backend)
    calls = (delayed(raise_at)(i, AT, kind) for i in range(N))
    if backend == "threads":  # nothing is pickled: the task's own exception object
        with pytest.raises(exc_type) as info:
            await collect(p, calls, RUN_LIMIT)
        assert f"task input {AT}" in str(info.value)
        assert _note(AT, "raise_at") in info.value.__notes__
        return
    # A process worker cannot send it back: a SerializationError that still says which task
    # raised what, with the worker's traceback (and its failing line) chained as the cause.
    with pytest.raises(SerializationError) as serr:
        await collect(p, calls, RUN_LIMIT)
    message = str(serr.value)
    assert f"task {AT} (raise_at) raised {exc_type.__qualname__}" in message
    assert f"task input {AT}" in message
    assert "could not be pickled back to the parent" in message
    assert _note(AT, "raise_at") in serr.value.__notes__
    assert isinstance(serr.value.__cause__, RemoteTraceback)
    assert marker in str(serr.value.__cause__)


# -- the producer fails ------------------------------------------------------------------------


class ProducerBoom(Exception):
    pass


def _failing_gen(error: BaseException, after: int) -> Iterator[Any]:
    for i in range(after):
        yield delayed(square)(i)
    raise error


async def _failing_agen(error: BaseException, after: int) -> AsyncIterator[Any]:
    for i in range(after):
        yield delayed(square)(i)
        await anyio.lowlevel.checkpoint()
    raise error


@pytest.mark.parametrize("kind", ["generator", "async_generator"])
async def test_producer_error_is_reraised_as_the_same_object(
    backend: str, mode: str, kind: str
) -> None:
    error = ProducerBoom("the producer broke at item 7")
    source = _failing_gen(error, 7) if kind == "generator" else _failing_agen(error, 7)
    p = Parallel(n_jobs=2, backend=backend, return_as=mode)  # type: ignore[call-overload]
    with pytest.raises(ProducerBoom) as info:
        await collect(p, source, RUN_LIMIT)
    assert info.value is error


@pytest.mark.parametrize("value", [42, None, object(), 3.5], ids=["int", "None", "object", "float"])
def test_non_iterable_input_is_a_type_error_at_once(backend: str, mode: str, value: Any) -> None:
    """Raised by the call itself, before anything runs: no loop, no workers needed."""
    p = Parallel(n_jobs=2, backend=backend, return_as=mode)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="iterable"):
        p(value)


async def test_bad_data_leaves_the_pool_usable(backend: str) -> None:
    """After each kind of bad data on one loop, the same warm pool still computes correctly."""
    import threading

    p = Parallel(n_jobs=2, backend=backend)
    bad_runs: list[Any] = [
        [delayed(identity)(threading.Lock())],
        [delayed(lock_at)(i, 1) for i in range(4)],
        [delayed(raise_at)(i, 1, "holds_lock") for i in range(4)],
        _failing_gen(ProducerBoom(), 3),
    ]
    for calls in bad_runs:
        try:
            await collect(p, calls, RUN_LIMIT)
        except (SerializationError, HoldsLockError, ProducerBoom):
            pass
    assert await collect(p, [delayed(square)(i) for i in range(100)], RUN_LIMIT) == [
        i * i for i in range(100)
    ]
