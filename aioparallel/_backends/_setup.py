"""What a worker process is started with, beyond its pool's size.

A worker's BLAS thread cap is fixed by its environment at spawn time, and its initializer
runs once when it starts: both belong to the worker for its whole life. So they are part of
the warm pool's key, and a worker started for one setup is never handed to a run that asked
for another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PLAIN", "WorkerSetup"]


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    """A process worker's setup; equal setups share a warm pool."""

    #: BLAS/OpenMP threads per worker (``parallel_config(inner_max_num_threads=)``); None:
    #: the CPUs shared out between the pool's workers, unless the user's environment says.
    inner_max_num_threads: int | None = None
    #: The pickled ``(initializer, initargs)``, run in each worker before its first task.
    initializer: bytes | None = None
    #: The initializer's name, for messages.
    initializer_name: str = field(default="", compare=False)


#: No initializer, the default thread cap.
PLAIN = WorkerSetup()
