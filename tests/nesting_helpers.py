"""Tasks that call ``Parallel`` again from inside a worker (the nesting cap), importable by
process workers."""

from __future__ import annotations

import asyncio
import os
import warnings
from typing import Any

from aioparallel import Parallel, delayed, parallel_config

#: What an inner call reports: the pids its calls ran in, and the warnings it gave.
Seen = tuple[set[int], list[str]]


async def inner_pids(n_jobs: int, backend: str | None, configured: str | None = None) -> Seen:
    """Run ``Parallel(n_jobs, backend)`` of ``os.getpid`` calls here; with ``configured``,
    under ``parallel_config(backend=configured)`` (the backend is then not named)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if configured is not None:
            with parallel_config(backend=configured):
                pids = await Parallel(n_jobs=n_jobs)(delayed(os.getpid)() for _ in range(3))
        else:
            pids = await Parallel(n_jobs=n_jobs, backend=backend)(
                delayed(os.getpid)() for _ in range(3)
            )
    return set(pids), [str(w.message) for w in caught]


def inner_pids_sync(n_jobs: int, backend: str | None, configured: str | None = None) -> Seen:
    """The same from a sync task: its own event loop."""
    return asyncio.run(inner_pids(n_jobs, backend, configured))


def here(_: Any = None) -> int:
    return os.getpid()
