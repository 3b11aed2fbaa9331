"""The parent watches for the reply to a run it expects back within microseconds (a web
request's one quick call) between the event loop's other work, instead of sleeping in the
loop's wait: waking a sleeping CPU can cost more than the whole round trip
(``batch._reply_watch``, ``WorkerProcess._watch``)."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from aioparallel import Parallel, delayed
from aioparallel.backends.base import RunOptions
from aioparallel.backends.processes import batch as _batch
from aioparallel.backends.processes.pool import shared as _shared
from tests import proc_helpers as h

N_JOBS = 2


def _options(expected: float | None) -> RunOptions:
    return RunOptions().with_expected_work(lambda: expected)


@pytest.mark.parametrize(
    ("spin", "options", "watch"),
    [
        (True, _options(50e-6), _batch.REPLY_WATCH_SECONDS),
        (False, _options(50e-6), 0.0),  # no CPU to spare: the parent's wait leaves it
        (True, _options(0.01), 0.0),  # a longer run: sleeping costs it nothing to speak of
        (True, _options(None), 0.0),  # nothing learned yet
        (True, RunOptions(), 0.0),
    ],
    ids=["quick", "no-spare-cpu", "long", "unknown", "no-estimate"],
)
def test_only_a_run_expected_back_at_once_is_watched_for(
    spin: bool, options: RunOptions, watch: float
) -> None:
    assert _batch._reply_watch(spin, options) == watch


def _workers() -> list[Any]:
    roster = _shared.shared_pool(N_JOBS, 300.0)._roster
    return [*roster.idle, *roster.busy]


@pytest.mark.anyio
async def test_the_loop_runs_on_while_the_parent_watches_for_a_reply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = _shared.shared_pool(N_JOBS, 300.0)
    monkeypatch.setattr(pool, "cpus", 8)  # a CPU to spare, whatever this machine has
    p = Parallel(n_jobs=N_JOBS)  # a web handler's: the shared pool serves it
    assert await p([delayed(h.slow_tagged)(1, 0.05)]) == [(1, 1)]  # learned: ~50 ms
    assert not any(w._poll for w in _workers())  # not expected back at once: slept
    monkeypatch.setattr(_batch, "REPLY_WATCH_SECONDS", 1.0)  # now it is
    ticks = 0
    done = False

    async def tick() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        assert await p([delayed(h.slow_tagged)(2, 0.05)]) == [(2, 4)]
        done = True
    assert any(w._poll for w in _workers())  # it watched
    assert ticks > 50  # the other task ran all along: one look per pass of the loop


@pytest.mark.anyio
async def test_a_watch_that_sees_no_reply_ends_and_leaves_the_pipe_as_it_was() -> None:
    p = Parallel(n_jobs=N_JOBS)
    assert await p([delayed(h.tagged)(3)]) == [(3, 9)]
    (worker,) = _workers()
    with anyio.fail_after(5):
        assert not await worker._watch(0.02)  # no job sent: no reply comes
    assert not worker._buffer
    assert await p([delayed(h.tagged)(4)]) == [(4, 16)]  # the worker serves on
