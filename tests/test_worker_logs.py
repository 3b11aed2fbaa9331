"""Log records that tasks emit in process workers are handled by the parent's loggers, with
the task's index and the worker's pid; threads and the sequential backend log in the parent
directly. Tasks live in ``tests.observe_helpers`` (the workers import them by name)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import anyio
import pytest

from aioparallel import Parallel, WorkerCrashedError, delayed
from tests import observe_helpers as oh

#: Seconds the parent's handler spends per record in the 10,000-record test: handled in one
#: go on the loop, they would stall it 0.5 s.
HANDLER_SECONDS = 50e-6
#: Loose: a test, not a benchmark (slices of 5 ms; a loaded 2-core machine adds scheduling
#: delays of tens of ms to a busy process).
MAX_LAG_MS = 300.0


class SlowHandler(logging.Handler):
    """Formats each record and spends ``HANDLER_SECONDS`` on it, as a real handler would."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(message)s"))
        self.lines = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)
        until = time.perf_counter() + HANDLER_SECONDS
        while time.perf_counter() < until:
            pass
        self.lines += 1


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """The parent's handler on the tasks' logger (which alone decides, propagate=False)."""
    logger = logging.getLogger(oh.LOGGER)
    handler = Recorder()
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


@pytest.mark.anyio
async def test_records_of_sync_and_async_tasks_name_their_task_and_worker(
    recorder: Recorder,
) -> None:
    sync_calls = [delayed(oh.say)(x) for x in range(6)]
    async_calls = [delayed(oh.say_async)(x, 0.01 * (3 - x % 3)) for x in range(6, 12)]
    async with Parallel(n_jobs=2, batch_size=3) as parallel:
        pids = await parallel(sync_calls + async_calls)
    got = {r.getMessage(): (r.aioparallel_task, r.process) for r in recorder.records}  # type: ignore[attr-defined]
    assert got == {
        **{f"sync {x}": (x, pids[x]) for x in range(6)},
        **{f"async {x}": (x, pids[x]) for x in range(6, 12)},
    }
    assert os.getpid() not in pids


@pytest.mark.anyio
async def test_a_record_the_parent_drops_is_not_shipped(recorder: Recorder) -> None:
    async with Parallel(n_jobs=2) as parallel:
        await parallel([delayed(oh.say)(0, logging.DEBUG), delayed(oh.say)(1, logging.INFO)])
        (seen,) = await parallel([delayed(oh.say_below_the_parents_level)()])
        logging.disable(logging.WARNING)
        try:
            await parallel([delayed(oh.say)(2, logging.WARNING), delayed(oh.say)(3, logging.ERROR)])
        finally:
            logging.disable(logging.NOTSET)
    assert recorder.messages() == ["sync 1", "sync 3"]
    # the worker knew: DEBUG was off there too, and a record let through by a level the
    # task lowered in the worker was dropped by the shipping handler, before pickling
    assert seen == (False, 0, 0)  # (DEBUG enabled, records buffered by each attempt)


@pytest.mark.anyio
async def test_exc_info_arrives_as_traceback_text(recorder: Recorder) -> None:
    async with Parallel(n_jobs=2) as parallel:
        await parallel([delayed(oh.fail_loudly)(7)])
    (record,) = recorder.records
    assert record.getMessage() == "failed on 7"
    assert record.exc_info is None
    assert record.exc_text is not None
    assert "ValueError: bad input 7" in record.exc_text
    assert "Traceback (most recent call last)" in record.exc_text


@pytest.mark.anyio
async def test_a_tasks_records_arrive_before_its_result(recorder: Recorder) -> None:
    calls = [delayed(oh.say)(x) for x in range(8)] + [
        delayed(oh.say_async)(x, 0.01 * (x % 3)) for x in range(8, 16)
    ]
    parallel = Parallel(n_jobs=2, batch_size=4, return_as="generator_unordered")
    async with parallel(calls) as stream:
        async for pid in stream:
            # the record of the task whose result this is has been handled already
            assert any(r.process == pid for r in recorder.records)
    logged = {r.aioparallel_task for r in recorder.records}  # type: ignore[attr-defined]
    assert logged == set(range(16))


@pytest.mark.anyio
async def test_ten_thousand_records_arrive_and_the_loop_keeps_turning(recorder: Recorder) -> None:
    n = 10_000
    lags: list[float] = []
    writer = SlowHandler()
    logging.getLogger(oh.LOGGER).addHandler(writer)

    async def tick() -> None:
        while True:
            start = time.perf_counter()
            await anyio.sleep(0.001)
            lags.append((time.perf_counter() - start - 0.001) * 1e3)

    try:
        async with Parallel(n_jobs=2) as parallel:
            await parallel([delayed(oh.say)(0)])  # a worker is warm
            async with anyio.create_task_group() as tg:
                tg.start_soon(tick)
                assert await parallel([delayed(oh.say_many)(n)]) == [n]
                tg.cancel_scope.cancel()
    finally:
        logging.getLogger(oh.LOGGER).removeHandler(writer)
    assert recorder.messages()[1:] == [f"record {i} of {n}" for i in range(n)]
    assert writer.lines == n + 1
    assert max(lags) < MAX_LAG_MS, max(lags)


@pytest.mark.anyio
async def test_records_reach_the_parent_when_the_task_then_kills_its_worker(
    recorder: Recorder,
) -> None:
    calls = [delayed(oh.say)(0), delayed(oh.say_then_exit)(1)]
    async with Parallel(n_jobs=2, batch_size=2) as parallel:
        with pytest.raises(WorkerCrashedError):
            await parallel(calls)
    assert recorder.messages() == ["sync 0", "last words 1"]


@pytest.mark.anyio
async def test_the_worker_prints_nothing_itself(
    recorder: Recorder, capfd: pytest.CaptureFixture[str]
) -> None:
    async with Parallel(n_jobs=2) as parallel:
        handlers = await parallel([delayed(oh.say)(5), delayed(oh.stderr_handlers)()])
    assert handlers[1] == ["ShipHandler"]
    assert recorder.messages() == ["sync 5"]
    assert "sync 5" not in capfd.readouterr().err  # once, by the parent's handlers


@pytest.mark.anyio
async def test_a_worker_whose_tasks_do_not_log_does_not_import_logging() -> None:
    probe = "'logging' in __import__('sys').modules"
    async with Parallel(n_jobs=2, batch_size=2) as parallel:
        first, loaded = await parallel([delayed(abs)(-1), delayed(eval)(probe)])
    assert (first, loaded) == (1, False)


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["threads", "sequential"])
async def test_threads_and_sequential_log_in_the_parent_directly(
    backend: str, recorder: Recorder
) -> None:
    await Parallel(n_jobs=2, backend=backend)(delayed(oh.say)(x) for x in range(3))
    assert sorted(recorder.messages()) == ["sync 0", "sync 1", "sync 2"]
    assert {r.process for r in recorder.records} == {os.getpid()}
    assert not any(hasattr(r, "aioparallel_task") for r in recorder.records)


@pytest.mark.anyio
async def test_an_initializers_records_arrive_before_its_answer(recorder: Recorder) -> None:
    async with Parallel(n_jobs=2, initializer=oh.say, initargs=(99,)) as parallel:
        await parallel([delayed(oh.say)(0)])
    assert recorder.messages()[-1] == "sync 0"
    first = recorder.records[0]
    assert first.getMessage() == "sync 99"
    assert not hasattr(first, "aioparallel_task")  # logged by no task
    assert first.process != os.getpid()
