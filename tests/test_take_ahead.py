"""A lane takes its next batch while its batch runs on a worker process (W1: 100,000 tiny
calls from a generator; each worker idled while the parent read the next batch from it).

The input is read ahead only within ``pre_dispatch``, and a failure still stops the run
before the batch read ahead runs. The generators here produce an item per millisecond, so a
take lasts long enough for a lane to take ahead (``run.TAKE_AHEAD_SECONDS``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aioparallel import Parallel, delayed
from tests import proc_helpers as h

pytestmark = pytest.mark.anyio

N_CALLS = 16
BATCH = 4


def slow_calls(folder: Path, n: int, make: Any) -> Iterator[Any]:
    """``make(i)`` for each item, one per millisecond; item ``i`` leaves ``taken-<i>`` in
    ``folder`` as it is produced."""
    for i in range(n):
        time.sleep(0.001)
        (folder / f"taken-{i}").touch()
        yield make(i)


def _ran(folder: Path) -> list[int]:
    """The calls that started (``<i>.ran``), in order."""
    return sorted(int(p.stem) for p in folder.glob("*.ran"))


async def test_the_next_batch_is_taken_while_a_batch_runs(tmp_path: Path) -> None:
    """The last call of each of the first two batches (one per worker) waits for the item two
    batches on to be produced: read only once a batch returned, it never would be."""

    def make(i: int) -> Any:
        release = str(tmp_path / f"taken-{i + 2 * BATCH}")
        waits = i in (BATCH - 1, 2 * BATCH - 1)
        return delayed(h.mark_then_wait_file)(str(tmp_path), i, waits, release)

    results = await Parallel(n_jobs=2, batch_size=BATCH)(slow_calls(tmp_path, N_CALLS, make))
    assert results == [True] * N_CALLS


async def test_a_failure_stops_the_run_before_the_batches_taken_ahead_run(
    tmp_path: Path,
) -> None:
    """Call 3 fails once three batches were taken; the first call of every other batch
    blocks, so each batch that starts is seen (``<i>.ran``): besides the failing batch, at
    most the one the other worker started runs, never a batch taken ahead."""
    bad, never = BATCH - 1, str(tmp_path / "never")

    def make(i: int) -> Any:
        release = str(tmp_path / f"taken-{3 * BATCH - 1}") if i == bad else never
        waits = i == bad or (i >= BATCH and i % BATCH == 0)
        return delayed(h.mark_then_wait_file)(str(tmp_path), i, waits, release, bad)

    with pytest.raises(KeyError, match="task input 3 is bad"):
        await Parallel(n_jobs=2, batch_size=BATCH)(slow_calls(tmp_path, N_CALLS, make))
    assert (tmp_path / f"taken-{3 * BATCH - 1}").exists()  # taken ahead...
    ran = _ran(tmp_path)
    assert ran[:BATCH] == list(range(BATCH)), ran
    assert len(ran) <= BATCH + 1, ran  # ...never run: the run stopped at its failure


async def test_the_input_is_read_ahead_only_within_pre_dispatch(tmp_path: Path) -> None:
    """With ``pre_dispatch`` of one batch, the next is taken once results are back: when an
    item is produced, the calls before it not yet done fit in the bound."""
    taken_while: dict[int, int] = {}

    def make(i: int) -> Any:
        taken_while[i] = len(list(tmp_path.glob("*.done")))  # calls done as it is taken
        return delayed(h.sleep_then_mark)(str(tmp_path), i, 0.05)

    results = await Parallel(n_jobs=2, batch_size=BATCH, pre_dispatch=BATCH)(
        slow_calls(tmp_path, N_CALLS, make)
    )
    assert results == list(range(N_CALLS))
    assert all(i + 1 - done <= BATCH for i, done in taken_while.items()), taken_while
