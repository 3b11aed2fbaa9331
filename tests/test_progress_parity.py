"""Progress parity (issue 16 §5): one rule for progress events on every backend, and joblib's
"every task" reporting above ``verbose=10`` whatever the batching.

The event rule (docs/progress.md, "The rule for events"):

- every event brings news: ``done`` grew, or ``total`` became known;
- ``done`` never decreases; ``total`` is None until the end of the input is known (from the
  first event for an input with a length), then the input's length, and never changes;
- the last event is ``(n, n)``, exactly once, and nothing follows it; an empty input gets one
  event, ``(0, 0)``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

import anyio
import joblib
import pytest

from aioparallel import Parallel, ProgressEvent, delayed
from tests.conftest import choice_fixture
from tests.helpers import async_calls, square

pytestmark = pytest.mark.anyio

BACKENDS = ["sequential", "threads", "processes"]

INPUTS: dict[str, Callable[[int], Any]] = {
    "list": lambda n: [delayed(square)(i) for i in range(n)],
    "generator": lambda n: (delayed(square)(i) for i in range(n)),
    "async_generator": lambda n: async_calls(square, range(n)),
}


backend = choice_fixture(BACKENDS)


def n_jobs_for(backend: str) -> int:
    return 1 if backend == "sequential" else 2


def check_rule(events: list[tuple[int, int | None]], n: int, sized: bool) -> None:
    """The documented rule, checked on the (done, total) of every event of one run."""
    assert events, "no progress event"
    assert events[-1] == (n, n), events
    assert events.count((n, n)) == 1, events
    for before, after in itertools.pairwise(events):
        assert after != before, f"an event without news: {events}"
        assert after[0] >= before[0], f"done decreased: {events}"
        if before[1] is not None:
            assert after[1] == before[1], f"total changed once known: {events}"
    assert all(total in (None, n) for _, total in events), events
    if sized:
        assert all(total == n for _, total in events), events


async def test_progress_events_follow_one_rule(backend: str) -> None:
    """Sized and generator inputs (sync and async), batches of one and auto, list and stream
    results: the same rule on every backend."""
    for kind, make in INPUTS.items():
        for n in (0, 1, 7, 40):
            for batch_size in (1, "auto"):
                for return_as in ("list", "generator"):
                    seen: list[ProgressEvent] = []
                    p = Parallel(  # type: ignore[call-overload]
                        n_jobs=n_jobs_for(backend),
                        backend=backend,
                        batch_size=batch_size,
                        return_as=return_as,
                        progress=seen.append,
                    )
                    if return_as == "list":
                        results = await p(make(n))
                    else:
                        results = [r async for r in p(make(n))]
                    assert results == [i * i for i in range(n)]
                    where = f"{kind=} {n=} {batch_size=} {return_as=}"
                    events = [(e.done, e.total) for e in seen]
                    try:
                        check_rule(events, n, sized=kind == "list")
                    except AssertionError as exc:
                        raise AssertionError(f"{where}: {exc}") from None


async def test_async_callback_gets_the_same_rule(backend: str) -> None:
    seen: list[tuple[int, int | None]] = []

    async def record(event: ProgressEvent) -> None:
        seen.append((event.done, event.total))
        await anyio.lowlevel.checkpoint()

    p = Parallel(n_jobs=n_jobs_for(backend), backend=backend, batch_size=1, progress=record)
    await p(INPUTS["generator"](12))
    check_rule(seen, 12, sized=False)


# -- verbose above 10: every task -----------------------------------------------------------

DONE = re.compile(r"^\[Parallel\(n_jobs=\d+\)\]: Done +(\d+) (?:tasks|out of)")


def reported(text: str) -> list[int]:
    """The ``done`` count of every "Done" line, in order."""
    return [int(m[1]) for line in text.splitlines() if (m := DONE.match(line))]


def check_every_task(counts: list[int], n: int) -> None:
    """joblib's verbose > 10 rule: every completion is reported, except the second-to-last
    once dispatch is done (joblib's ``is_last_item``), then ``finished``."""
    assert counts == sorted(counts), counts
    assert set(range(1, n + 1)) - {n - 1} <= set(counts), counts
    assert counts[-1] == n


def test_joblib_reports_every_task_above_10(capsys: pytest.CaptureFixture[str]) -> None:
    """The reference: joblib's own output satisfies ``check_every_task``."""
    joblib.Parallel(n_jobs=2, backend="threading", verbose=11)(
        joblib.delayed(square)(i) for i in range(10)
    )
    check_every_task(reported(capsys.readouterr().err), 10)


@pytest.mark.parametrize("kind", list(INPUTS))
@pytest.mark.parametrize("batch_size", [1, 4, "auto"])
@pytest.mark.parametrize("verbose", [11, 50])
async def test_verbose_above_10_reports_every_task(
    backend: str,
    kind: str,
    batch_size: int | str,
    verbose: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    n = 10
    jobs = n_jobs_for(backend)
    p = Parallel(n_jobs=jobs, backend=backend, batch_size=batch_size, verbose=verbose)  # type: ignore[call-overload]
    await p(INPUTS[kind](n))
    out, err = capsys.readouterr()
    shown, silent = (err, out) if verbose < 50 else (out, err)
    assert silent == ""
    check_every_task(reported(shown), n)
    assert shown.splitlines()[-1].endswith("finished"), shown


async def test_verbose_10_still_follows_batches(capsys: pytest.CaptureFixture[str]) -> None:
    """At 10 and below, joblib's filters still thin the messages out: no line per task."""
    p = Parallel(backend="sequential", batch_size=20, verbose=10)
    await p(INPUTS["list"](40))
    counts = reported(capsys.readouterr().err)
    assert counts[-1] == 40 and len(counts) <= 3, counts
