"""parallel_config (context-local defaults), joblib's parallel_backend and effective_n_jobs.

The parameters are parsed and checked by ``_settings.Settings``; what is active is the
`Settings` of the innermost ``parallel_config``, in a context variable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Any

from ._nesting import cap_nesting
from ._parsing import parse_n_jobs
from ._plan import pick_backend
from ._settings import Default, Settings
from .backends.base import BACKEND_NAMES

__all__ = [
    "BACKEND_ALIASES",
    "active_settings",
    "current_config",
    "effective_n_jobs",
    "parallel_backend",
    "parallel_config",
]

#: Every backend name and alias -> its canonical name (the registry's, read-only).
BACKEND_ALIASES = BACKEND_NAMES

#: No parallel_config active (Settings are frozen: one object serves every context).
_NONE_ACTIVE = Settings()
_config: ContextVar[Settings] = ContextVar("aioparallel_config", default=_NONE_ACTIVE)


def active_settings() -> Settings:
    """The settings of the innermost active ``parallel_config``."""
    return _config.get()


def current_config() -> MappingProxyType[str, Any]:
    """The settings of the innermost active ``parallel_config``, by name."""
    return MappingProxyType(_config.get().given())


class parallel_config:
    """Set defaults for the ``Parallel`` objects created inside this block.

    Works as ``with`` and ``async with``. Settings live in a context variable, so concurrent
    tasks each see their own.

    Parameters
    ----------
    backend
        Default backend name (or object); a ``multiprocessing`` context means
        ``"processes"``, as in ``Parallel``.
    n_jobs
        Default worker count.
    verbose
        Default verbosity.
    temp_folder
        Default folder for memmapped arrays.
    max_nbytes
        Default size above which arrays are memmapped.
    mmap_mode
        Default mode workers open memmapped arrays with.
    worker_concurrency
        Default number of async tasks one worker keeps in flight.
    prefer
        joblib's hint: ``"threads"`` picks threads when no backend is named.
    require
        joblib's constraint: ``"sharedmem"`` picks threads (calls share the caller's memory).
    inner_max_num_threads
        BLAS/OpenMP threads each process worker may use (``OMP_NUM_THREADS``,
        ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``... set in its environment), even where
        the caller's environment sets them. Default: the CPUs divided by ``n_jobs``, except
        for variables the caller set. Only the process backend starts workers of its own:
        with ``"threads"`` or ``"dask"`` it is a ``ValueError``; with ``n_jobs=1`` the calls
        run in the caller, uncapped (as in joblib). Workers are started with their cap, so
        each cap has its own warm pool.
    initializer
        Default ``initializer(*initargs)``, run once in each worker before its first task;
        see ``Parallel``.
    initargs
        Default arguments of ``initializer``.
    max_tasks_per_worker
        Default number of calls after which a process worker is replaced; see ``Parallel``.
    max_worker_memory
        Default resident memory (bytes, ``"512M"``, ``"2G"``) past which a process worker
        is replaced; see ``Parallel``.
    **backend_options
        Passed to the backend: ``client=`` or ``address=`` for ``"dask"``, ``address=`` for
        ``"ray"``, ``idle_timeout=`` for ``"processes"``.
    """

    def __init__(
        self,
        backend: Any = None,
        n_jobs: int | None = None,
        *,
        verbose: int | None = None,
        temp_folder: str | None = None,
        max_nbytes: int | str | None = Default("1M"),
        mmap_mode: str = Default("r"),
        worker_concurrency: int | None = None,
        prefer: str | None = None,
        require: str | None = None,
        inner_max_num_threads: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        max_tasks_per_worker: int | None = None,
        max_worker_memory: int | str | None = None,
        **backend_options: Any,
    ) -> None:
        self._settings = Settings.parse({k: v for k, v in locals().items() if k != "self"})
        self._tokens: list[Token[Settings]] = []

    def __enter__(self) -> parallel_config:
        self._tokens.append(_config.set(self._settings.over(_config.get())))
        return self

    def __exit__(self, *exc_info: object) -> None:
        _config.reset(self._tokens.pop())

    async def __aenter__(self) -> parallel_config:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__(*exc_info)


class parallel_backend(parallel_config):
    """joblib's older name for `parallel_config`, kept for code written against it.

    As in joblib, ``n_jobs`` defaults to -1 (all CPUs) and ``with parallel_backend(...) as
    (backend, n_jobs):`` gives the pair passed in. Everything else is `parallel_config`.
    """

    def __init__(self, backend: Any, n_jobs: int | None = -1, **kwargs: Any) -> None:
        super().__init__(backend, n_jobs, **kwargs)
        self._pair = (backend, n_jobs)

    def __enter__(self) -> Any:  # joblib's (backend, n_jobs), not the config object
        super().__enter__()
        return self._pair

    async def __aenter__(self) -> Any:
        return self.__enter__()


def effective_n_jobs(n_jobs: int | str | float | None = -1) -> int:
    """Workers a ``Parallel(n_jobs=n_jobs)`` created here would run on (joblib's function).

    Follows the active `parallel_config` (``n_jobs=None`` takes its value, else 1) and the
    nesting rules: 1 where the calls would run sequentially (backend ``"sequential"``, inside
    a process worker, two thread-worker levels deep). With ``backend="dask"`` the cluster's
    size is known only during a call: a negative ``n_jobs`` then counts this machine's CPUs.
    """
    config = _config.get()
    if n_jobs is None:
        n_jobs = config.get("n_jobs", None)
        if n_jobs is None:
            return 1
    count = parse_n_jobs(n_jobs)
    choice = pick_backend(config, explicit=False)
    if choice.obj is not None:
        return max(1, choice.obj.n_workers)
    assert choice.entry is not None
    if cap_nesting(choice.entry, explicit=False, n_jobs=count) == "sequential":
        return 1
    return count
