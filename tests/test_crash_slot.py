"""The crash slot end to end: a finished call is never run again, whatever the flush policy;
the culprit of a blocked event loop is named; ``worker_concurrency`` bounds coroutines that
sync calls return.

Tasks leave marker files (one line per run) so a test counts how often each ran, without
trusting the worker to report it.
"""

from __future__ import annotations

import asyncio
import math
import os
import pickle
import time
from pathlib import Path
from typing import Any

import pytest

from aioparallel import Parallel, WorkerCrashedError, delayed
from aioparallel.child.slot import (
    BATCH_SHIFT,
    JOURNAL,
    LOADING,
    RUNNING,
    SENDING,
    CrashSlot,
    Kill,
    Snapshot,
    Verdict,
    blame,
)
from aioparallel.child.slot import SIZE as SLOT_SIZE
from tests import async_helpers as ah


def _ran(folder: str, x: int) -> None:
    with open(os.path.join(folder, f"ran-{x}"), "a") as f:
        f.write(f"{os.getpid()}\n")


def runs(folder: Path, x: int) -> int:
    path = folder / f"ran-{x}"
    return len(path.read_text().splitlines()) if path.exists() else 0


def work(folder: str, x: int, seconds: float, die: bool) -> int:
    """Works ``seconds``, then has its side effect (the marker), or kills its worker."""
    time.sleep(seconds)
    if die:
        os._exit(3)
    _ran(folder, x)
    return x


async def nap_marked(folder: str, x: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    _ran(folder, x)
    return x


async def nap_begun(folder: str, x: int, seconds: float) -> int:
    """``nap_marked``, noting its start in ``begun-<x>`` first."""
    Path(folder, f"begun-{x}").write_text("")  # noqa: ASYNC240  (a tiny marker file)
    return await nap_marked(folder, x, seconds)


def returns_nap(folder: str, x: int, seconds: float) -> Any:
    """A sync call that hands back a coroutine (a sync decorator around async code)."""
    _ran(folder, x)
    return nap_marked(folder, 1000 + x, seconds)


def wait_file_then_die(folder: str, name: str) -> None:
    deadline = time.monotonic() + 10
    while not os.path.exists(os.path.join(folder, name)) and time.monotonic() < deadline:
        time.sleep(0.005)
    os._exit(3)


async def count_in_flight(folder: str, x: int) -> int:
    """How many of these coroutines run in this worker right now (itself included)."""
    me = Path(folder, f"run-{os.getpid()}-{x}")
    me.write_text("")  # noqa: ASYNC240  (a tiny marker file)
    try:
        mine = f"run-{os.getpid()}-"
        seen = sum(1 for p in os.listdir(folder) if p.startswith(mine))
        await asyncio.sleep(0.05)
        return seen
    finally:
        me.unlink()  # noqa: ASYNC240


def sync_returning_counter(folder: str, x: int) -> Any:
    return count_in_flight(folder, x)


@pytest.mark.asyncio
@pytest.mark.parametrize("seconds", [0.3, 0.0], ids=["slow", "fast"])
async def test_a_finished_call_never_runs_again(tmp_path: Path, seconds: float) -> None:
    """Slow calls: the first result is sent before the second call starts. Fast calls: it is
    still unsent when the worker dies, kept in the slot's journal. Either way it arrives, and
    the call ran once."""
    folder = str(tmp_path)
    calls = [delayed(work)(folder, x, seconds, x == 1) for x in range(3)]
    results = await Parallel(n_jobs=2, batch_size=3, return_exceptions=True)(calls)
    assert [runs(tmp_path, x) for x in (0, 2)] == [1, 1]
    assert isinstance(results[1], WorkerCrashedError) and "task 1 (work)" in str(results[1])
    assert results[0] == 0 and results[2] == 2


def return_value(folder: str, x: int, value: Any, die: bool) -> Any:
    work(folder, x, 0.0, die)
    return value


#: Results the journal keeps as themselves (None, int, float) beside look-alikes it must
#: keep pickled (a bool is an int to ``isinstance``; an int past 64 bits does not fit).
KEPT_VALUES = [None, 0, -1, 2**63 - 1, -(2**63), 2**63, -(2**100), 1.5, -0.0, math.inf, True, False]


@pytest.mark.asyncio
async def test_kept_results_arrive_as_they_were_returned(tmp_path: Path) -> None:
    """The outcomes of calls that returned before their worker died come back from the
    slot's journal with their value and their type."""
    folder, n = str(tmp_path), len(KEPT_VALUES)
    calls = [delayed(return_value)(folder, x, v, False) for x, v in enumerate(KEPT_VALUES)]
    calls.append(delayed(return_value)(folder, n, None, True))
    results = await Parallel(n_jobs=2, batch_size=n + 1, return_exceptions=True)(calls)
    assert [runs(tmp_path, x) for x in range(n)] == [1] * n  # none ran twice
    assert [(type(v), v) for v in results[:n]] == [(type(v), v) for v in KEPT_VALUES]
    assert math.copysign(1.0, results[8]) == -1.0  # -0.0 kept its sign
    assert isinstance(results[n], WorkerCrashedError)


@pytest.mark.asyncio
async def test_mixed_job_sync_calls_before_a_crash_never_run_again(tmp_path: Path) -> None:
    """Sync calls of a job with async calls, and a sync call that returned a coroutine."""
    folder = str(tmp_path)
    calls: list[Any] = [
        delayed(work)(folder, 0, 0.0, False),
        delayed(nap_begun)(folder, 1, 30.0),  # in flight when the worker dies
        delayed(returns_nap)(folder, 2, 30.0),  # its coroutine in flight too
        delayed(work)(folder, 3, 0.0, False),
        delayed(wait_file_then_die)(folder, "begun-1"),  # once call 1 began on the loop
        delayed(work)(folder, 5, 0.0, False),
    ]
    results = await Parallel(n_jobs=2, batch_size=6, return_exceptions=True)(calls)
    assert [runs(tmp_path, x) for x in (0, 2, 3, 5)] == [1, 1, 1, 1]
    for x in (1, 2, 4):
        assert isinstance(results[x], WorkerCrashedError), (x, results[x])
    assert results[5] == 5
    assert (results[0], results[3]) == (0, 3)  # sent, or kept in the journal


@pytest.mark.asyncio
async def test_blocking_coroutine_is_named_and_the_others_crash(tmp_path: Path) -> None:
    """The calls that had started beside the one blocking the loop fail with its worker."""
    folder = str(tmp_path)
    calls = [delayed(ah.guarded)(folder, x) for x in (0, 1)] + [
        delayed(ah.block_the_loop)(folder, 2)
    ]
    results = await Parallel(n_jobs=2, batch_size=3, timeout=0.5, return_exceptions=True)(calls)
    assert isinstance(results[2], TimeoutError), results[2]
    assert "task 2 (block_the_loop)" in str(results[2]) and "was killed" in str(results[2])
    for x in (0, 1):
        assert type(results[x]) is WorkerCrashedError, (x, results[x])
        assert f"task {x} (guarded)" in str(results[x])
        assert "task 2 (block_the_loop)" in str(results[x])


async def nap_counted(folder: str, x: int) -> int:
    """Notes each start (a line in ``ran-<x>``), then waits long."""
    _ran(folder, x)
    await asyncio.sleep(ah.LONG)
    return x


@pytest.mark.asyncio
async def test_calls_handed_to_a_blocked_loop_that_never_began_run_again(tmp_path: Path) -> None:
    """One call in flight per worker: the calls handed to its loop to start next (it keeps
    some ready, to start each from the task that ends) never began while the first blocked
    the loop. They run again, once, after the parent killed the worker."""
    folder = str(tmp_path)
    calls = [delayed(ah.block_the_loop)(folder, 0)] + [
        delayed(nap_counted)(folder, x) for x in (1, 2)
    ]
    results = await Parallel(
        n_jobs=2, batch_size=3, timeout=0.5, worker_concurrency=1, return_exceptions=True
    )(calls)
    assert isinstance(results[0], TimeoutError) and "was killed" in str(results[0]), results[0]
    for x in (1, 2):
        assert type(results[x]) is TimeoutError, (x, results[x])  # ran, and timed out as usual
        assert "was cancelled in its worker" in str(results[x]), results[x]
        assert runs(tmp_path, x) == 1, x


@pytest.mark.asyncio
@pytest.mark.parametrize("func", [count_in_flight, sync_returning_counter])
async def test_worker_concurrency_bounds_returned_coroutines(tmp_path: Path, func: Any) -> None:
    folder = str(tmp_path)
    calls = [delayed(func)(folder, x) for x in range(16)]
    results = await Parallel(n_jobs=2, batch_size=16, worker_concurrency=2)(calls)
    assert max(results) <= 2, results


# -- the blame, as a table ----------------------------------------------------------------------

R, L, S = RUNNING, LOADING, SENDING
SEQ = 7
BASE = SEQ << BATCH_SHIFT


def snap(
    phase: int = -1,
    position: int = -1,
    handed: int = -1,
    finished: int = 0,
    begun: int | None = None,
) -> Snapshot:
    """``begun`` defaults to ``handed``: every call handed to the loop had started there."""
    begun = handed if begun is None else begun
    return Snapshot(phase, position, 1.0, handed=handed, finished=finished, begun=begun)


def crashed(phase: int = R) -> Verdict:
    return Verdict("crashed", phase)


LOST, IN_FLIGHT, TIMEOUT = Verdict("lost"), Verdict("in_flight"), Verdict("timeout")
ASYNC3 = b"\x01\x01\x01"

BLAME_CASES = [
    # (snapshot, n, got, flags, kill) -> (failed, rerun, culprit, split)
    pytest.param(
        snap(R, 1, finished=1),
        3,
        set(),
        None,
        None,
        ({0: LOST, 1: crashed()}, [2], 1, False),
        id="sync-unsent-before-crash-lost",
    ),
    pytest.param(
        snap(R, 1, finished=1),
        3,
        {0},
        None,
        None,
        ({1: crashed()}, [2], 1, False),
        id="sync-sent-before-crash-kept",
    ),
    pytest.param(
        snap(R, 1, finished=2),
        3,
        set(),
        None,
        None,
        ({0: LOST, 1: LOST}, [2], -1, False),
        id="died-after-a-call-returned",
    ),
    pytest.param(
        snap(S, 1, finished=1),
        3,
        {0},
        None,
        None,
        ({1: crashed(S)}, [2], 1, False),
        id="died-pickling-its-result",
    ),
    pytest.param(  # its result pickled and kept (recovered into got), before the next call
        snap(S, 1, finished=2),
        3,
        {0, 1},
        None,
        None,
        ({}, [2], -1, False),
        id="died-after-its-result-was-kept",
    ),
    pytest.param(
        snap(L, 0), 3, set(), None, None, ({}, [0, 1, 2], -1, True), id="died-loading-a-job-split"
    ),
    pytest.param(
        snap(L, 0),
        1,
        set(),
        None,
        None,
        ({0: crashed(L)}, [], 0, False),
        id="died-loading-one-call",
    ),
    pytest.param(
        snap(),
        3,
        set(),
        None,
        None,
        ({}, [0, 1, 2], -1, False),
        id="died-before-any-call-blameless",
    ),
    pytest.param(
        snap(handed=1, finished=2),
        3,
        {0},
        ASYNC3,
        None,
        ({1: IN_FLIGHT}, [2], -1, False),
        id="async-in-flight-fail-not-rerun",
    ),
    pytest.param(
        snap(handed=2, finished=2),
        3,
        set(),
        ASYNC3,
        None,
        ({0: IN_FLIGHT, 1: IN_FLIGHT, 2: IN_FLIGHT}, [], -1, False),
        id="async-handed-before-finished-counted",
    ),
    pytest.param(
        snap(handed=3, finished=4, begun=1),
        5,
        {0},
        ASYNC3 + ASYNC3[:2],
        None,
        ({1: IN_FLIGHT}, [2, 3, 4], -1, False),
        id="async-handed-not-begun-reruns",
    ),
    pytest.param(
        snap(handed=2, finished=2, begun=1),
        3,
        set(),
        ASYNC3,
        None,
        ({0: IN_FLIGHT, 1: IN_FLIGHT}, [2], -1, False),
        id="async-died-handing-over-before-it-began-reruns",
    ),
    pytest.param(
        snap(R, 2, handed=1, finished=2),
        4,
        set(),
        b"\x00\x00\x00\x00",
        None,
        ({0: LOST, 1: IN_FLIGHT, 2: crashed()}, [3], 2, False),
        id="returned-coroutine-in-flight",
    ),
    pytest.param(
        snap(R, 2, handed=1, finished=2, begun=-1),
        4,
        set(),
        b"\x00\x00\x00\x00",
        None,
        ({0: LOST, 1: IN_FLIGHT, 2: crashed()}, [3], 2, False),
        id="returned-coroutine-not-begun-still-in-flight",
    ),
    pytest.param(
        snap(R, 1, finished=1),
        3,
        set(),
        None,
        Kill(1),
        ({0: LOST, 1: TIMEOUT}, [2], 1, False),
        id="timeout-hits-its-call",
    ),
    pytest.param(
        snap(S, 1, finished=1),
        3,
        set(),
        None,
        Kill(1),
        ({0: LOST, 1: Verdict("timeout", S)}, [2], 1, False),
        id="timeout-while-pickling-its-result",
    ),
    pytest.param(
        snap(R, 2, finished=2),
        4,
        {0, 1},
        None,
        Kill(1),
        ({}, [2, 3], -1, False),
        id="race-timed-call-returned-and-sent-next-reruns",
    ),
    pytest.param(
        snap(R, 2, finished=2),
        4,
        {0},
        None,
        Kill(1),
        ({1: TIMEOUT}, [2, 3], -1, False),
        id="race-timed-call-returned-unsent",
    ),
    pytest.param(
        snap(R, 1, handed=0, finished=1),
        3,
        set(),
        ASYNC3[:1] + b"\x00\x00",
        Kill(0, why="stuck"),
        ({0: IN_FLIGHT}, [1, 2], -1, False),
        id="stuck-async-kill-reruns-the-sync-call",
    ),
]


@pytest.mark.parametrize(("snapshot", "n", "got", "flags", "kill", "expected"), BLAME_CASES)
def test_blame_table(
    snapshot: Snapshot,
    n: int,
    got: set[int],
    flags: bytes | None,
    kill: Kill | None,
    expected: tuple[dict[int, Verdict], list[int], int, bool],
) -> None:
    verdicts = blame(snapshot, n, got, flags, kill)
    assert (verdicts.failed, verdicts.rerun, verdicts.culprit, verdicts.split) == expected
    # every call is accounted for exactly once: arrived, failed or run again
    accounted = sorted([*got, *verdicts.failed, *verdicts.rerun])
    assert accounted == list(range(n)) or verdicts.split


def test_slot_worker_writes_read_back_by_the_parent() -> None:
    slot = CrashSlot(bytearray(SLOT_SIZE))
    slot.loading(BASE, 5.0)
    assert slot.snapshot(SEQ).timed == (LOADING, 0, 5.0)
    assert slot.snapshot(SEQ - 1) == Snapshot(started=5.0)  # another job's numbers: not ours
    slot.running(BASE, 3, 6.0)
    assert slot.snapshot(SEQ).timed == (RUNNING, 3, 6.0)
    slot.sending(BASE, 3)
    assert slot.snapshot(SEQ).timed == (SENDING, 3, 6.0)  # its result's pickling: still its
    assert slot.returned(BASE, 3, b"three")
    # returned: its clock no longer runs, though the slot still names it (no idle between
    # two sync calls)
    assert slot.snapshot(SEQ).timed is None
    assert slot.snapshot(SEQ).finished == 4
    slot.finished(BASE, 4)
    slot.running(BASE, 4, 7.0)
    assert slot.snapshot(SEQ).timed == (RUNNING, 4, 7.0)
    slot.handed(BASE, 4)
    slot.finished(BASE, 5)
    slot.idle()
    assert slot.snapshot(SEQ) == Snapshot(started=7.0, handed=4, finished=5)


def test_journal_keeps_outcomes_until_sent() -> None:
    """What the worker keeps between frames is what the parent reads after a death: for this
    job only, up to the last record written, nothing once a frame carried it."""
    slot = CrashSlot(bytearray(SLOT_SIZE))
    slot.loading(BASE, 5.0)
    assert slot.kept(SEQ) == []
    assert slot.returned(BASE, 0, b"zero") and slot.returned(BASE, 2, b"two")
    assert slot.kept(SEQ) == [(0, b"zero"), (2, b"two")]
    assert slot.snapshot(SEQ).finished == 3  # kept, then finished: never run again
    assert slot.kept(SEQ - 1) == []  # another job's journal is not this one's
    slot.sent(BASE)
    assert slot.kept(SEQ) == []
    assert slot.returned(BASE, 3, b"x" * (JOURNAL - 8))  # exactly full
    assert not slot.returned(BASE, 4, b"")  # no room: the caller sends what is kept first
    assert slot.kept(SEQ) == [(3, b"x" * (JOURNAL - 8))]
    assert slot.snapshot(SEQ).finished == 4  # nor counted finished before it is sent
    slot.sent(BASE)
    assert not slot.returned(BASE, 5, b"x" * JOURNAL)  # larger than the journal: sent at once
    slot.loading(BASE + (1 << BATCH_SHIFT), 6.0)  # the next job starts with an empty journal
    assert slot.kept(SEQ + 1) == []


def test_journal_keeps_numbers_and_none_as_themselves() -> None:
    """An int or float outcome takes 16 bytes of the journal and None 8, with no pickling in
    the worker; the parent reads them back pickled, like any other; an int past 64 bits is
    kept pickled."""
    slot = CrashSlot(bytearray(SLOT_SIZE))
    slot.loading(BASE, 5.0)
    outcomes = [7, -(2**63), 2.5, math.nan, None, 2**64, pickle.dumps("pickled")]
    for position, outcome in enumerate(outcomes):
        assert slot.returned(BASE, position, outcome)
    kept = [(position, pickle.loads(data)) for position, data in slot.kept(SEQ)]
    assert [p for p, _ in kept] == list(range(len(outcomes)))
    assert [v for _, v in kept][:3] == [7, -(2**63), 2.5] and math.isnan(kept[3][1])
    assert [v for _, v in kept][4:] == [None, 2**64, "pickled"]
    assert slot.snapshot(SEQ).finished == len(outcomes)
    slot.sent(BASE)
    assert slot.returned(BASE, 0, b"x" * (JOURNAL - 8 - 16))  # room for one number left
    assert slot.returned(BASE, 1, 1.0)
    assert not slot.returned(BASE, 2, 1) and not slot.returned(BASE, 2, None)  # full
    assert slot.snapshot(SEQ).finished == 2


async def fail_after_nap(x: int) -> int:
    await asyncio.sleep(0.05)
    raise ValueError(f"task input {x} failed")


@pytest.mark.asyncio
async def test_a_failed_call_starts_no_next_one_when_the_run_stops_at_the_first(
    tmp_path: Path,
) -> None:
    """The next call waiting on the worker's loop is not started by the task that failed
    (it is started from the task that ends): the run stops at its first failure."""
    folder = str(tmp_path)
    calls = [delayed(fail_after_nap)(0), delayed(nap_counted)(folder, 1)]
    with pytest.raises(ValueError, match="task input 0 failed"):
        await Parallel(n_jobs=2, batch_size=2, worker_concurrency=1)(calls)
    assert runs(tmp_path, 1) == 0
