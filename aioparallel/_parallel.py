"""Parallel: validates its parameters once, then runs each input on a backend."""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, Literal, NoReturn, TypeVar, overload

from ._call import Call
from ._config import (
    DEFAULT_WORKER_CONCURRENCY,
    RETURN_MODES,
    backend_options,
    coerce_n_jobs,
    current_config,
    make_initializer,
    parse_max_nbytes,
    parse_mmap_mode,
    parse_n_jobs,
    parse_pre_dispatch,
    parse_worker_concurrency,
    resolve_backend,
)
from ._nesting import cap_nesting
from ._pending import PendingResults
from ._system import check_process_backend
from .backends.base import Backend, RunOptions
from .run.budget import Budget
from .run.progress import ProgressCallback, ProgressReporter
from .run.results import SINKS, ListSink, Sink
from .run.run import Run
from .run.stream import ResultStream

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext
    from types import TracebackType

__all__ = ["Parallel"]

R = TypeVar("R")
M = TypeVar("M", bound=str)
ListMode = Literal["list"]
StreamMode = Literal["generator", "generator_unordered"]


class Default(str):
    """A default value that tells "not given" from an explicit equal value: an active
    ``parallel_config`` fills in only what the caller left out, and only the default
    ``pre_dispatch`` widens with the batch size."""

    __slots__ = ()


class Parallel(Generic[M]):
    """Run delayed calls on workers, from async code.

    ``await Parallel(n_jobs=2)(delayed(f)(x) for x in xs)`` returns the results in input
    order; with ``return_as="generator"`` (input order) or ``"generator_unordered"``
    (completion order) the call is an async iterator instead. Parameters keep joblib's names
    and meanings; see the docs' "Migrating from joblib" page for each one.

    Parameters
    ----------
    n_jobs
        Workers. None: the active ``parallel_config`` value, else 1. -1: all CPUs. 1 runs
        the calls one after another in the caller's thread (see ``timeout``). With a backend
        object it must match the object's worker count (``ValueError`` otherwise).
    backend
        ``"processes"`` (default), ``"threads"``, ``"sequential"``, ``"dask"`` or a backend
        object. A ``multiprocessing`` context (``multiprocessing.get_context("spawn")``, as
        joblib accepts) means ``"processes"``: the workers are always fresh interpreters
        (never forks of the caller), so every start method gets the same workers.
        ``parallel_config`` backend options (``idle_timeout=``, ``client=``...) that this
        backend does not take are a ``ValueError``, never silently dropped. Where the
        process backend cannot run (Windows), ``"processes"`` raises ``NotImplementedError``
        here, naming the alternatives.
    return_as
        ``"list"``, ``"generator"`` or ``"generator_unordered"``.
    verbose
        joblib's progress messages: stderr below 50, stdout from 50.
    pre_dispatch
        Most calls taken from the input ahead of completion: ``"all"``, an int, or
        ``"k*n_jobs"``.
    batch_size
        Calls sent to a worker at once; ``"auto"`` tunes it from measured durations,
        starting from the size the last call of the same function reached.
    timeout
        Seconds one task may run on its worker before it fails with ``TimeoutError``. With
        ``n_jobs=1`` or ``"sequential"``, the calls then run on one thread worker (still no
        pickling), since nothing can interrupt a call running on the event loop.
    temp_folder
        Folder for memmapped arrays: else ``$AIOPARALLEL_TEMP_FOLDER``, else ``/dev/shm``
        (Linux), else the system temp dir.
    max_nbytes
        numpy arguments above this size (``"1M"``, ``"10K"``, an int; None disables) reach
        process workers as memmaps, written once per run.
    mmap_mode
        How workers open memmapped arrays: ``"r"``, ``"r+"`` or ``"c"``.
    return_exceptions
        Like ``asyncio.gather``: a task's exception becomes its result.
    progress
        True for a tqdm bar on stderr, or a (sync or async) callable receiving
        `ProgressEvent` objects.
    worker_concurrency
        Async tasks (``delayed(async_fn)``) one worker keeps in flight at once, so the
        waits of one overlap the others (default 16, or the active ``parallel_config``
        value); sync calls always run one at a time per worker. Auto batching sends a
        worker at least this many async calls at a time. See the docs' "Async tasks" page.
    prefer
        joblib's hint: ``"threads"`` picks threads when no backend is named.
    require
        joblib's constraint: ``"sharedmem"`` picks threads over a configured or default
        backend; with a process or dask backend passed here it is a ``ValueError``.
    initializer
        ``initializer(*initargs)`` runs once in each worker before its first task (joblib
        >= 1.5), e.g. to load a model once per worker rather than per call; a process worker
        that replaces a crashed one runs it again. Threads: once in each thread that runs a
        batch (anyio's threads are shared and come and go, so possibly on more than
        ``n_jobs`` threads). ``n_jobs=1`` / ``"sequential"``: once in the caller, before
        the first call. ``"dask"``: once in each dask worker process (those joining later
        too), through a worker plugin registered once per cluster and pair. Warm process
        workers are kept per (initializer, initargs), compared pickled: equal ones reuse the
        workers without running it again; other ones get workers of their own. If it raises
        (or its worker dies running it), the run stops with `InitializerError`, even with
        ``return_exceptions=True``. Not with a backend object (``ValueError``).
    initargs
        The positional arguments ``initializer`` is called with (default: none).
    """

    @overload
    def __init__(
        self: Parallel[ListMode],
        n_jobs: int | None = None,
        backend: str | Backend | BaseContext | None = None,
        *,
        return_as: ListMode = "list",
        verbose: int | None = None,
        pre_dispatch: int | str = Default("2*n_jobs"),
        batch_size: int | Literal["auto"] = "auto",
        timeout: float | None = None,
        temp_folder: str | os.PathLike[str] | None = None,
        max_nbytes: int | str | None = Default("1M"),
        mmap_mode: str = Default("r"),
        return_exceptions: bool = False,
        progress: bool | ProgressCallback = False,
        worker_concurrency: int | None = None,
        prefer: str | None = None,
        require: str | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
    ) -> None: ...

    @overload
    def __init__(
        self: Parallel[StreamMode],
        n_jobs: int | None = None,
        backend: str | Backend | BaseContext | None = None,
        *,
        return_as: StreamMode,
        verbose: int | None = None,
        pre_dispatch: int | str = Default("2*n_jobs"),
        batch_size: int | Literal["auto"] = "auto",
        timeout: float | None = None,
        temp_folder: str | os.PathLike[str] | None = None,
        max_nbytes: int | str | None = Default("1M"),
        mmap_mode: str = Default("r"),
        return_exceptions: bool = False,
        progress: bool | ProgressCallback = False,
        worker_concurrency: int | None = None,
        prefer: str | None = None,
        require: str | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
    ) -> None: ...

    def __init__(
        self,
        n_jobs: int | None = None,
        backend: str | Backend | BaseContext | None = None,
        *,
        return_as: str = "list",
        verbose: int | None = None,
        pre_dispatch: int | str = Default("2*n_jobs"),
        batch_size: int | Literal["auto"] = "auto",
        timeout: float | None = None,
        temp_folder: str | os.PathLike[str] | None = None,
        max_nbytes: int | str | None = Default("1M"),
        mmap_mode: str = Default("r"),
        return_exceptions: bool = False,
        progress: bool | ProgressCallback = False,
        worker_concurrency: int | None = None,
        prefer: str | None = None,
        require: str | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
    ) -> None:
        config = current_config()
        self._n_jobs_arg = n_jobs if n_jobs is not None else config.get("n_jobs")
        if self._n_jobs_arg is not None:  # joblib's int(n_jobs): "2" and 2.3 mean 2
            self._n_jobs_arg = coerce_n_jobs(self._n_jobs_arg)
        self._backend_name, self._backend_object = resolve_backend(backend, prefer, require)
        if self._backend_name == "processes":  # even for n_jobs=1: fail alike at any size
            check_process_backend()
        self._initializer = (
            make_initializer(initializer, initargs)
            if initializer is not None or initargs != ()
            else config.get("initializer")
        )
        if self._initializer is not None and self._backend_object is not None:
            raise ValueError(
                f"initializer= cannot be given to the backend object {self._backend_object!r}, "
                "which starts its own workers: give it a backend name instead"
            )
        self._backend_options = backend_options(self._backend_name)  # before any n_jobs=1 path
        if self._backend_object is None:  # joblib's cap on nesting in thread workers
            self._backend_name = cap_nesting(
                self._backend_name, explicit=backend is not None, n_jobs=self._n_jobs_arg
            )

        obj = self._backend_object
        if (
            obj is not None
            and n_jobs is not None
            and obj.name != "dask"
            and parse_n_jobs(n_jobs) != obj.n_workers
        ):
            raise ValueError(
                f"n_jobs={n_jobs!r} contradicts the backend object {obj!r}, which has "
                f"{obj.n_workers} workers: drop n_jobs or make them agree"
            )
        if obj is not None and obj.name != "dask":
            self.n_jobs = obj.n_workers  # the object decides; a configured n_jobs is a default
        elif self._n_jobs_arg is None:
            self.n_jobs = 0 if self._backend_name == "dask" else 1  # dask: the cluster's size
        else:
            self.n_jobs = parse_n_jobs(self._n_jobs_arg)

        if return_as not in RETURN_MODES:
            valid = ", ".join(repr(m) for m in RETURN_MODES)
            raise ValueError(f"invalid return_as {return_as!r}: expected one of {valid}")
        self.return_as = return_as
        if batch_size != "auto" and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0
        ):
            raise ValueError(f"invalid batch_size {batch_size!r}: expected 'auto' or an int >= 1")
        self._batch_size = None if batch_size == "auto" else int(batch_size)
        self._pre_dispatch_arg = pre_dispatch
        # The default bound counts batches (as joblib's does) so batching never starves a
        # worker; an explicit pre_dispatch is a hard bound on calls.
        self._widen_bound = isinstance(pre_dispatch, Default)
        parse_pre_dispatch(pre_dispatch, max(1, self.n_jobs))  # validate now
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not 0 < timeout < math.inf  # also rejects nan
        ):
            raise ValueError(
                f"invalid timeout {timeout!r}: expected None (no timeout) or finite seconds > 0"
            )
        self.timeout = None if timeout is None else float(timeout)
        # One worker, or "sequential": the calls run one after another in the caller's thread;
        # a timeout needs a worker that can be abandoned, so then on one thread worker.
        self._one_thread = False
        if (
            obj is None
            and self._backend_name in ("processes", "threads", "sequential")
            and (self.n_jobs == 1 or self._backend_name == "sequential")
        ):
            self._backend_name = "sequential" if self.timeout is None else "threads"
            self._one_thread = self.timeout is not None
            if self._batch_size is None:  # take one item, run it, take the next (as joblib)
                self._batch_size = 1
        verbose = verbose if verbose is not None else config.get("verbose", 0)
        if not isinstance(verbose, int) or verbose < 0:  # True counts as 1, as in joblib
            raise ValueError(f"invalid verbose {verbose!r}: expected an int >= 0")
        self.verbose = verbose
        if not (isinstance(progress, bool) or callable(progress)):
            raise ValueError(f"invalid progress {progress!r}: expected a bool or a callable")
        if progress is True:
            try:
                import tqdm  # noqa: F401
            except ImportError:
                raise ImportError(
                    "progress=True draws a tqdm bar: pip install 'aioparallel[progress]'"
                ) from None
        self.progress = progress
        self.return_exceptions = bool(return_exceptions)
        if isinstance(max_nbytes, Default):
            max_nbytes = config.get("max_nbytes", str(max_nbytes))
        if isinstance(mmap_mode, Default):
            mmap_mode = config.get("mmap_mode", str(mmap_mode))
        temp_folder = temp_folder if temp_folder is not None else config.get("temp_folder")
        if worker_concurrency is None:
            worker_concurrency = config.get("worker_concurrency", DEFAULT_WORKER_CONCURRENCY)
        self.worker_concurrency = parse_worker_concurrency(worker_concurrency)
        self._options = RunOptions(
            timeout=self.timeout,
            stop_on_error=not self.return_exceptions,
            max_nbytes=parse_max_nbytes(max_nbytes),
            mmap_mode=parse_mmap_mode(mmap_mode),
            temp_folder=None if temp_folder is None else os.fspath(temp_folder),
            worker_concurrency=self.worker_concurrency,
        )
        self._warm: Backend | None = None

    def __repr__(self) -> str:
        shown = self._n_jobs_arg if self._n_jobs_arg is not None else self.n_jobs
        return f"Parallel(n_jobs={shown})"

    # -- backends ----------------------------------------------------------------------------

    def _make_backend(self, private: bool) -> Backend:
        if self._backend_object is not None:
            return self._backend_object
        name = self._backend_name
        if name == "sequential":
            from .backends.sequential import SequentialBackend

            return SequentialBackend(self._initializer)
        if name == "threads":
            from .backends.threads import ThreadBackend

            return ThreadBackend(1 if self._one_thread else self.n_jobs, self._initializer)
        if name == "processes":
            from .backends.processes.backend import ProcessBackend

            return ProcessBackend(
                self.n_jobs, private=private, initializer=self._initializer, **self._backend_options
            )
        from .backends.dask.client import DaskBackend

        # the raw n_jobs: -1 means all of the cluster's threads, not this machine's CPUs
        return DaskBackend(self._n_jobs_arg, initializer=self._initializer, **self._backend_options)

    @asynccontextmanager
    async def _backend(self) -> AsyncIterator[Backend]:
        if self._warm is not None:
            yield self._warm
            return
        async with self._make_backend(private=False) as backend:
            yield backend

    def __enter__(self) -> NoReturn:
        raise TypeError(
            f"use 'async with {self!r} as parallel:' (in async code): it keeps the workers "
            "warm across the calls made inside; a plain 'with' cannot await their start"
        )

    def __exit__(self, *exc_info: object) -> None:  # pragma: no cover - __enter__ raises
        return None

    async def __aenter__(self) -> Parallel[M]:
        """Keep workers warm across calls on this object; release them on exit."""
        if self._warm is not None:
            raise RuntimeError(f"{self!r} is already entered")
        backend = self._make_backend(private=True)
        self._warm = await backend.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        backend, self._warm = self._warm, None
        if backend is not None:
            await backend.__aexit__(exc_type, exc, tb)

    # -- calls -------------------------------------------------------------------------------

    def _new_run(self, iterable: object, backend: Backend, sink: Sink[Any]) -> Run:
        n_workers = max(1, backend.n_workers)
        pre_dispatch = parse_pre_dispatch(self._pre_dispatch_arg, n_workers)  # cached
        shown_jobs = self._n_jobs_arg if self._n_jobs_arg is not None else n_workers
        reporter = ProgressReporter(
            name=f"Parallel(n_jobs={shown_jobs})",
            label=f"{backend.name} with {n_workers}",
            verbose=self.verbose,
            progress=self.progress,
            pre_dispatch=pre_dispatch,
        )
        return Run(
            iterable=iterable,
            backend=backend,
            options=self._options,
            batch_size=self._batch_size,
            pre_dispatch=pre_dispatch,
            widen_bound=self._widen_bound,
            return_exceptions=self.return_exceptions,
            sink=sink,
            reporter=reporter,
        )

    async def _gather(self, iterable: object) -> list[Any]:
        async with self._backend() as backend:
            sink: ListSink[Any] = ListSink(Budget(None))
            await self._new_run(iterable, backend, sink).execute()
            return sink.result()

    def _stream(self, iterable: object) -> ResultStream[Any]:
        def make_run() -> tuple[Sink[Any], Callable[[], Coroutine[Any, Any, None]]]:
            sink = SINKS[self.return_as](Budget(None))

            async def execute() -> None:
                async with self._backend() as backend:
                    await self._new_run(iterable, backend, sink).execute()

            return sink, execute

        return ResultStream(make_run, f"{self!r}(…)")

    @overload
    def __call__(
        self: Parallel[ListMode], iterable: Iterable[Call[R]] | AsyncIterable[Call[R]]
    ) -> Coroutine[Any, Any, list[R]]: ...

    @overload
    def __call__(
        self: Parallel[ListMode], iterable: Iterable[Any] | AsyncIterable[Any]
    ) -> Coroutine[Any, Any, list[Any]]: ...

    @overload
    def __call__(
        self: Parallel[StreamMode], iterable: Iterable[Call[R]] | AsyncIterable[Call[R]]
    ) -> ResultStream[R]: ...

    @overload
    def __call__(
        self: Parallel[StreamMode], iterable: Iterable[Any] | AsyncIterable[Any]
    ) -> ResultStream[Any]: ...

    def __call__(self, iterable: Any) -> Any:
        """Run the calls: a coroutine of the result list, or an async iterator of results."""
        if not (hasattr(iterable, "__iter__") or hasattr(iterable, "__aiter__")):
            got = f"{type(iterable).__name__} {iterable!r:.60}"
            if callable(iterable):
                got = f"{iterable!r:.60}; for one function over many inputs write "
                got += "(delayed(f)(x) for x in xs)"
            raise TypeError(
                f"{self!r} needs an iterable or async iterable of delayed calls, got {got}"
            )
        if self.return_as == "list":
            return PendingResults(self._gather(iterable), f"{self!r}(…)")
        return self._stream(iterable)
