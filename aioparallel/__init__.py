"""aioparallel: joblib's ``Parallel(...)(delayed(f)(x) for x in xs)``, awaitable.

::

    results = await Parallel(n_jobs=4)(delayed(f)(x) for x in xs)

The public API is the names exported here (``__all__``), and only those. Everything else,
the subpackages included, is private and may change in any release. A newcomer's path:

- ``_parallel`` (``Parallel``) and ``_config`` (``parallel_config``): the public face;
  ``_settings`` parses their parameters once, ``_plan`` picks the backend from them;
- ``run/``: one run of a ``Parallel`` (``run/run.py`` draws its data flow);
- ``backends/``: where batches run (``base``: the ``Backend`` protocol and the registry;
  ``processes/``, ``dask/``, ``ray/``, ``remote/``, ``threads``, ``sequential``);
- ``child/``: the code a worker process runs, standard library only (``child/slot.py``: how
  a dead worker's call is found).

Each package's docstring names the invariants its modules own.
"""

from __future__ import annotations

# Not `from typing import ...`: a worker process imports this package, and typing costs ~20 ms.
TYPE_CHECKING = False
__version__ = "0.1.0"

__all__ = [
    "AioParallelError",
    "Backend",
    "Batch",
    "Call",
    "Failure",
    "InitializerError",
    "NotACallError",
    "Parallel",
    "PicklingError",
    "ProgressEvent",
    "RemoteTraceback",
    "RunBatch",
    "RunOptions",
    "SerializationError",
    "TaskTimeoutError",
    "UnpicklingError",
    "WorkerCrashedError",
    "cpu_count",
    "delayed",
    "effective_n_jobs",
    "parallel_backend",
    "parallel_config",
    "pool_stats",
    "propagate",
    "shutdown_workers",
]

if TYPE_CHECKING:
    from typing import Any

    from ._call import Call as Call
    from ._call import delayed as delayed
    from ._config import effective_n_jobs as effective_n_jobs
    from ._config import parallel_backend as parallel_backend
    from ._config import parallel_config as parallel_config
    from ._context import propagate as propagate
    from ._errors import AioParallelError as AioParallelError
    from ._errors import InitializerError as InitializerError
    from ._errors import NotACallError as NotACallError
    from ._errors import PicklingError as PicklingError
    from ._errors import RemoteTraceback as RemoteTraceback
    from ._errors import SerializationError as SerializationError
    from ._errors import TaskTimeoutError as TaskTimeoutError
    from ._errors import UnpicklingError as UnpicklingError
    from ._errors import WorkerCrashedError as WorkerCrashedError
    from ._parallel import Parallel as Parallel
    from ._system import cpu_count as cpu_count
    from .backends.base import Backend as Backend
    from .backends.base import Batch as Batch
    from .backends.base import Failure as Failure
    from .backends.base import RunBatch as RunBatch
    from .backends.base import RunOptions as RunOptions
    from .backends.processes.pool.shared import shutdown_workers as shutdown_workers
    from .backends.processes.pool.stats import pool_stats as pool_stats
    from .run.progress import ProgressEvent as ProgressEvent

# Public name -> module that defines it; imported on first use (PEP 562) so that
# `import aioparallel` stays cheap for a cold start.
_LAZY = {
    "Backend": ".backends.base",
    "Batch": ".backends.base",
    "Failure": ".backends.base",
    "RunBatch": ".backends.base",
    "RunOptions": ".backends.base",
    "Call": "._call",
    "delayed": "._call",
    "effective_n_jobs": "._config",
    "parallel_backend": "._config",
    "parallel_config": "._config",
    "propagate": "._context",
    "AioParallelError": "._errors",
    "InitializerError": "._errors",
    "NotACallError": "._errors",
    "PicklingError": "._errors",
    "RemoteTraceback": "._errors",
    "SerializationError": "._errors",
    "TaskTimeoutError": "._errors",
    "UnpicklingError": "._errors",
    "WorkerCrashedError": "._errors",
    "Parallel": "._parallel",
    "ProgressEvent": ".run.progress",
    "cpu_count": "._system",
    "shutdown_workers": ".backends.processes.pool.shared",
    "pool_stats": ".backends.processes.pool.stats",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aioparallel' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
