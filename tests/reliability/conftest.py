"""Fixtures of the reliability suite: a session-wide report of timings and figures.

Tests record what they measured (each fault, the error it became and how long that took;
memory and soak figures); the report is printed when the session ends. Run with ``-s`` to
see it::

    python -m pytest tests/reliability -q -s
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

#: The seed of the suite's random examples: fresh each session (the runs explore), printed in
#: the session's header and in each failure message; AIOPARALLEL_TEST_SEED=N replays a run.
SEED = int(os.environ.get("AIOPARALLEL_TEST_SEED") or random.SystemRandom().randrange(2**32))


def pytest_report_header() -> str:
    return f"reliability: random examples seeded with AIOPARALLEL_TEST_SEED={SEED}"


@dataclass
class Report:
    """What the suite measured, printed as two tables at the end of the session."""

    faults: list[tuple[str, str, str, str, float, float]] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)

    def fault(
        self, fault: str, backend: str, loop: str, error: str, latency: float, total: float
    ) -> None:
        """``latency``: from the fault (or the kill, or the deadline) to the error raised."""
        self.faults.append((fault, backend, loop, error, latency, total))

    def figure(self, name: str, value: str) -> None:
        self.figures.append((name, value))

    def render(self) -> str:
        lines: list[str] = []
        if self.faults:
            header = ("fault", "backend", "loop", "error raised", "latency s", "total s")
            rows = [
                (f, b, lp, e, f"{lat:.3f}", f"{tot:.3f}")
                for f, b, lp, e, lat, tot in sorted(self.faults)
            ]
            widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
            lines.append("")
            lines.append("reliability: faults -> errors (latency: fault/kill/deadline -> error)")
            for row in [header, tuple("-" * w for w in widths), *rows]:
                lines.append(
                    "  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
                )
        if self.figures:
            width = max(len(name) for name, _ in self.figures)
            lines.append("")
            lines.append("reliability: figures")
            for name, value in self.figures:
                lines.append(f"  {name.ljust(width)}  {value}")
        if lines:
            load = os.getloadavg()
            lines.append(f"  (load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")
        return "\n".join(lines)


@pytest.fixture(scope="session")
def report() -> Iterator[Report]:
    """The session's report; printed at the end (visible with ``-s``)."""
    collected = Report()
    yield collected
    text = collected.render()
    if text:
        print(text)


@pytest.fixture
def loop_name(anyio_backend: Any) -> str:
    """``asyncio``, ``uvloop`` or ``trio``: the loop of an ``@pytest.mark.anyio`` test."""
    if isinstance(anyio_backend, tuple):
        name, options = anyio_backend
        return "uvloop" if options.get("use_uvloop") else str(name)
    return str(anyio_backend)
