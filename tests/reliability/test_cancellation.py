"""docs/cancellation.md, cancellation at random points: hypothesis picks when, how, and on what.

Each example is a whole program: its own ``anyio.run`` (so the warm pool, which legitimately
lives as long as its loop, is shut down before the checks), a run of 200 calls of 50 ms on
two workers (about five seconds of work) in one of the three modes, on processes or threads,
on asyncio, uvloop or trio, from a cold or a warm pool, cancelled after 0-300 ms by
``move_on_after``, by ``CancelScope.cancel()`` from another task, or by ``asyncio.timeout``
(native asyncio cancellation). Streams are closed with ``async with`` or dropped bare.
Checked:

- the cancelled code gets control back within 0.5 s of the cancellation, plus ten times
  what the same loop took, just before, to get control back from a cancelled wait on a
  child process it kills (the machine is shared with other test suites: that baseline
  grows with its load, where a fixed bound would flake);
- process workers that were running a cancelled call are dead by then, and no call starts
  after it (threads cannot be killed: their running calls finish, no new one starts);
- the loop reports nothing (no ResourceWarning, no asyncio error log);
- once the loop has closed: no child process (zombies included), no extra thread, no
  ``aioparallel-*`` temp folder, every file descriptor as it was before the example.

The tests at the end pin two cases the random examples hit only by chance: a cancel
landing in a worker spawn, and a bare stream's cleanup cut short by the end of the loop.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import psutil
import pytest
from hypothesis import HealthCheck, assume, event, given, note, seed, settings
from hypothesis import strategies as st

from aioparallel import Parallel, delayed
from aioparallel.backends.processes import process as _process
from tests.conftest import Snapshot, leaks_after
from tests.proc_helpers import wait_gone
from tests.reliability.conftest import SEED, Report
from tests.reliability.helpers import nap, read_stamp, square, timed_nap

N_CALLS = 200
CALL_SECONDS = 0.05
N_JOBS = 2
LOOPS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}


#: Control must come back this soon after a cancellation on an idle machine...
BOUND = 0.5
#: ...plus this many times the loop's baseline latency measured in the same example.
BASELINE_FACTOR = 10


async def _baseline_latency() -> float:
    """The same measurement without aioparallel: seconds from a cancellation to control
    back, for a wait on a child process that the cancelled code kills and reaps (what a
    cancelled run does with its workers). It grows with the machine's load."""
    with anyio.move_on_after(0.05) as scope:
        async with await anyio.open_process(["sleep", "30"]) as process:
            _BASELINE_PIDS.add(process.pid)
            await process.wait()
    return anyio.current_time() - scope.deadline


#: The baseline's own child processes: on a loaded machine asyncio's child watcher may see
#: one exit after its loop closed, and say so ("Loop ... that handles pid N is closed");
#: aioparallel itself never hands a process to asyncio's watcher.
_BASELINE_PIDS: set[int] = set()
_WATCHER_LATE = re.compile(r"that handles pid (\d+) is closed")


def _about_the_baseline(message: str) -> bool:
    match = _WATCHER_LATE.search(message)
    return match is not None and int(match[1]) in _BASELINE_PIDS


def _stamps(folder: Path, suffix: str) -> dict[int, tuple[int, float]]:
    found = {}
    for path in folder.glob(f"*.{suffix}"):
        value = read_stamp(folder, path.name)
        if value is not None:
            found[int(path.name.split(".")[0])] = value
    return found


@dataclass
class Outcome:
    latency: float
    cancelled: bool
    results: int
    #: time.monotonic() when the cancelled code got control back
    back: float
    #: calls started and not finished at that moment: (pid of their worker)
    running_pids: set[int]
    #: what :func:`_baseline_latency` measured just before the run
    baseline: float

    @property
    def slack(self) -> float:
        return BASELINE_FACTOR * self.baseline


async def _cancel_once(
    folder: Path, delay: float, mode: str, backend: str, how: str, close: bool, warm: bool
) -> Outcome:
    if warm:  # both workers already running: the cancel cannot land in a spawn
        await Parallel(n_jobs=N_JOBS, backend=backend, batch_size=1)(
            delayed(nap)(i, 0.02) for i in range(2 * N_JOBS)
        )
    baseline = await _baseline_latency()
    p = Parallel(n_jobs=N_JOBS, backend=backend, return_as=mode)  # type: ignore[call-overload]
    calls = (delayed(timed_nap)(i, CALL_SECONDS, str(folder)) for i in range(N_CALLS))
    got: list[Any] = []

    async def consume() -> None:
        if mode == "list":
            got.extend(await p(calls))
        elif close:  # the documented way: the stream is closed (and cleaned up) on exit
            async with p(calls) as stream:
                async for r in stream:
                    got.append(r)
        else:  # a bare loop: the iterator is dropped when this frame ends
            async for r in p(calls):
                got.append(r)

    cancelled_at: list[float] = []
    cancelled = False
    if how == "move_on_after":
        with anyio.move_on_after(delay) as scope:
            await consume()
        cancelled_at.append(scope.deadline)
        cancelled = scope.cancelled_caught
    elif how == "asyncio.timeout":  # native asyncio cancellation (asyncio loops only)
        import asyncio

        try:
            async with asyncio.timeout(delay) as timeout:
                await consume()
        except TimeoutError:
            cancelled = True
        when = timeout.when()
        assert when is not None
        cancelled_at.append(when)
    else:
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as scope:

                async def canceller() -> None:
                    await anyio.sleep(delay)
                    cancelled_at.append(anyio.current_time())
                    scope.cancel()

                tg.start_soon(canceller)
                await consume()
        cancelled = scope.cancelled_caught
    regained = anyio.current_time()
    back = time.monotonic()
    starts, ends = _stamps(folder, "start"), _stamps(folder, "end")
    running = {starts[i][0] for i in set(starts) - set(ends)}
    return Outcome(
        latency=regained - cancelled_at[0],
        cancelled=cancelled,
        results=len(got),
        back=back,
        running_pids=running,
        baseline=baseline,
    )


@contextlib.contextmanager
def loop_complaints() -> Iterator[list[str]]:
    """Collect, instead of raising, what the loop complains about while it runs and closes:
    warnings (unclosed transports, running subprocesses) and errors logged by asyncio."""
    complaints: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if not _about_the_baseline(record.getMessage()):
                complaints.append(f"asyncio logged: {record.getMessage()}")

    handler = Handler(logging.WARNING)
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # a bare stream dropped while running says so by design (issue 13, E21)
            warnings.filterwarnings("ignore", "a result stream was not closed", ResourceWarning)
            yield complaints
            gc.collect()
    finally:
        logger.removeHandler(handler)
    complaints.extend(f"{w.category.__name__}: {w.message}" for w in caught)


_examples = itertools.count()
_latencies: list[tuple[float, str]] = []


EXAMPLE_STRATEGIES = {
    "delay": st.floats(min_value=0.0, max_value=0.3),
    "mode": st.sampled_from(["list", "generator", "generator_unordered"]),
    "backend": st.sampled_from(["processes", "threads"]),
    "how": st.sampled_from(["move_on_after", "cancel_from_task", "asyncio.timeout"]),
    "close": st.booleans(),
    "loop": st.sampled_from(list(LOOPS)),
    "warm": st.booleans(),
}
SETTINGS = {
    "deadline": None,
    "database": None,  # no .hypothesis/ folder in the repository: the seed replays instead
    "print_blob": True,  # the failing example itself, as @reproduce_failure(...)
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}


@pytest.mark.timeout(300)
@seed(SEED)
@settings(max_examples=25, **SETTINGS)  # type: ignore[arg-type]
@given(**EXAMPLE_STRATEGIES)
def test_cancellation_at_a_random_point(tmp_path: Path, report: Report, **example: Any) -> None:
    _check_one_cancellation(tmp_path, report, **example)


@pytest.mark.heavy
@pytest.mark.timeout(1800)
@seed(SEED)
@settings(max_examples=500, **SETTINGS)  # type: ignore[arg-type]
@given(**EXAMPLE_STRATEGIES)
def test_cancellation_at_a_random_point_many(
    tmp_path: Path, report: Report, **example: Any
) -> None:
    _check_one_cancellation(tmp_path, report, **example)


def _check_one_cancellation(
    tmp_path: Path,
    report: Report,
    delay: float,
    mode: str,
    backend: str,
    how: str,
    close: bool,
    loop: str,
    warm: bool,
) -> None:
    # asyncio.timeout: asyncio loops only, Python 3.11+
    assume(not (how == "asyncio.timeout" and (loop == "trio" or sys.version_info < (3, 11))))
    folder = tmp_path / f"example-{next(_examples)}"
    folder.mkdir()
    label = (
        f"{backend}/{mode}{'' if mode == 'list' or close else '(bare)'}/{how}/"
        f"{'warm' if warm else 'cold'}/{loop}"
    )
    note(f"example: {label}, delay={delay:.3f}s; rerun with AIOPARALLEL_TEST_SEED={SEED}")
    event(label.split("/")[0] + "/" + label.split("/")[-1])
    before = Snapshot.take()
    name, options = LOOPS[loop]
    with loop_complaints() as complaints:
        outcome = anyio.run(
            _cancel_once,
            folder,
            delay,
            mode,
            backend,
            how,
            close,
            warm,
            backend=name,
            backend_options=options,
        )
    bound = BOUND + outcome.slack
    _latencies.append((outcome.latency, label))
    note(
        f"latency {outcome.latency:.3f}s (bound {bound:.3f}s, baseline "
        f"{outcome.baseline:.3f}s), {outcome.results} results"
    )
    assert outcome.cancelled, "the run ended before the cancellation"
    assert outcome.results < N_CALLS
    assert outcome.latency < bound, f"control came back {outcome.latency:.3f}s after the cancel"

    cleaned_up = mode == "list" or close  # a bare, dropped stream is cleaned up later
    if backend == "processes" and cleaned_up:
        alive = wait_gone(outcome.running_pids, 0)
        assert not alive, f"workers {alive} still run cancelled calls after control came back"

    assert not complaints, "\n".join(complaints)
    leaks = leaks_after(before)  # after the loop closed: bounded poll, then the leftovers
    assert not leaks, "\n".join(leaks)

    if cleaned_up:  # no call started after the cancelled code got control back
        late = {i: t for i, (_, t) in _stamps(folder, "start").items() if t > outcome.back}
        if backend == "processes":
            assert not late, f"calls {sorted(late)} started after the cancellation"
        else:  # a thread that took its call just before the cancel may stamp it just after
            assert len(late) <= N_JOBS
            assert all(t < outcome.back + 0.25 + outcome.slack for t in late.values())

    worst, worst_label = max(_latencies)
    report.figures[:] = [f for f in report.figures if f[0] != "cancellation: worst latency"]
    report.figure(
        "cancellation: worst latency",
        f"{worst:.3f} s over {len(_latencies)} examples ({worst_label}; "
        f"bound {BOUND} s + {BASELINE_FACTOR} x the loop's baseline)",
    )


# -- a known bug: cleanup interrupted by the end of an asyncio loop ---------------------------


async def _drop_stream(delay: float) -> None:
    """Consume a stream without closing it, cancel the consumer, and end the program."""
    p = Parallel(n_jobs=N_JOBS, return_as="generator")
    with anyio.move_on_after(delay):
        async for _ in p(delayed(nap)(i, CALL_SECONDS) for i in range(N_CALLS)):
            pass


def _scrub(before: Snapshot) -> None:
    """Reap zombie children and close pipes leaked since ``before`` (after a gc, so objects
    that own descriptors close them first), so the leak of this known bug is not blamed on
    the tests that follow."""
    gc.collect()
    for proc in psutil.Process().children():
        if proc.pid not in before.children:
            with contextlib.suppress(psutil.Error):
                proc.kill()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.pid, 0)
    for fd, target in Snapshot.take().fds.items():
        if before.fds.get(fd) != target and target.startswith(("pipe:", "/memfd:aioparallel")):
            with contextlib.suppress(OSError):
                os.close(fd)
    leaks_after(before, wait=2.0)  # asyncio's waitpid threads end once their child is reaped
    gc.collect()


def _dropped_stream_leftovers(delay: float, attempts: int) -> list[str]:
    """uvloop programs whose consumer of a bare stream is cancelled after ``delay`` seconds
    and which then end at once; what the first one that leaves something behind left."""
    for _ in range(attempts):
        before = Snapshot.take()
        with loop_complaints() as complaints:
            anyio.run(_drop_stream, delay, backend="asyncio", backend_options={"use_uvloop": True})
            leaks = leaks_after(before, wait=2.0)
            _scrub(before)
        if leaks + complaints:
            return leaks + complaints
    return []


def test_dropped_stream_cleanup_closes_worker_pipes() -> None:
    """docs/cancellation.md: a stream dropped mid-run is cleaned up, even when the program ends at
    once (the end of the loop cuts the cleanup's awaits short: what it must still do, it does
    synchronously)."""
    leftovers = _dropped_stream_leftovers(0.02, attempts=6)
    assert not leftovers, "\n".join(leftovers)


def test_loop_end_during_worker_spawn_leaves_no_zombie() -> None:
    """The consumer is cancelled at once, so the program ends while its first worker spawns:
    no zombie, no unreaped child."""
    leftovers = _dropped_stream_leftovers(0.0, attempts=6)
    assert not leftovers, "\n".join(leftovers)


async def _cancel_right_after_spawn(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cold run whose cancellation lands just after a worker process was created, at the
    first await of its start-up (where a cold start is most often cut short by chance)."""
    real_init = _process.ChildProcess.__init__

    def init(self: Any, popen: Any) -> None:
        real_init(self, popen)
        scope.cancel()  # delivered at the next await: waiting for the worker's READY

    monkeypatch.setattr(_process.ChildProcess, "__init__", init)
    with anyio.CancelScope() as scope:
        await Parallel(n_jobs=N_JOBS)(delayed(square)(i) for i in range(200))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_cancel_during_worker_spawn_leaves_nothing(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/cancellation.md: a cancellation leaves no child process behind, whenever it lands, even
    while a worker is starting (workers are spawned synchronously, then killed if cancelled)."""
    name, options = LOOPS[loop]
    before = Snapshot.take()
    with loop_complaints() as complaints:
        anyio.run(_cancel_right_after_spawn, monkeypatch, backend=name, backend_options=options)
        monkeypatch.undo()
        found = leaks_after(before, wait=2.0)
        _scrub(before)  # inside: what the leaked objects say when collected is recorded too
    assert not found + complaints, "\n".join(found + complaints)
