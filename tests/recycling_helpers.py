"""Tasks for the recycling and pool-stats tests: standard library only, so that a worker
that imports this module stays far below the memory limits the tests set."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

#: What ``grow`` keeps alive in its worker: resident memory that stays.
_KEPT: list[bytes] = []


def mark(folder: str, i: int) -> int:
    """Leave one file per run of call ``i`` (so a test sees no call ran twice); the pid."""
    with open(os.path.join(folder, f"call-{i}-{uuid.uuid4().hex}"), "w") as f:
        f.write(str(os.getpid()))
    return os.getpid()


async def mark_async(folder: str, i: int) -> int:
    """``mark``, with the call in flight for a while among the worker's async calls."""
    await asyncio.sleep(0.02)
    return mark(folder, i)


def grow(folder: str, i: int, megabytes: int) -> int:
    """Keep ``megabytes`` of written (so resident) memory in this worker; ``mark``."""
    _KEPT.append(b"x" * (megabytes << 20))
    return mark(folder, i)


def resident(_x: object = None) -> int:
    """This worker's resident bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def wait_for(path: str, i: int) -> int:
    """Block until ``path`` exists (bounded), then return the pid."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return os.getpid()


def die(_x: object = None) -> None:
    os._exit(3)


def runs_per_call(folder: str) -> dict[int, int]:
    """How many times each call ran, from ``mark``'s files."""
    counts: dict[int, int] = {}
    for name in os.listdir(folder):
        if name.startswith("call-"):
            i = int(name.split("-")[1])
            counts[i] = counts.get(i, 0) + 1
    return counts
