"""Parallel: validates its parameters once, then runs each input on a backend."""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Generic, Literal, NoReturn, TypeVar, overload

from ._call import Call
from ._config import active_settings
from ._parsing import parse_pre_dispatch
from ._pending import PendingResults
from ._plan import plan_for
from ._settings import Default
from .backends.base import Backend, RunOptions
from .run.budget import Budget
from .run.progress import ProgressCallback, ProgressReporter
from .run.results import SINKS, ListSink, Sink
from .run.run import Run
from .run.single import one_call, run_single
from .run.stream import ResultStream

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

    from typing_extensions import Unpack

    from ._settings import ParallelKeywords

__all__ = ["Parallel"]

R = TypeVar("R")
M = TypeVar("M", bound=str)
ListMode = Literal["list"]
StreamMode = Literal["generator", "generator_unordered"]


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
        ``"processes"`` (default), ``"threads"``, ``"sequential"``, ``"dask"``, ``"ray"`` or a
        backend object. A ``multiprocessing`` context (``multiprocessing.get_context("spawn")``, as
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
        too), through a worker plugin registered once per cluster and pair. ``"ray"``: once in
        each Ray worker process, before the first batch it runs. Warm process
        workers are kept per (initializer, initargs), compared pickled: equal ones reuse the
        workers without running it again; other ones get workers of their own. If it raises
        (or its worker dies running it), the run stops with `InitializerError`, even with
        ``return_exceptions=True``. Not with a backend object (``ValueError``).
    initargs
        The positional arguments ``initializer`` is called with (default: none).
    max_tasks_per_worker
        Process workers only: a worker that has run this many calls (whatever their
        outcome, counted across runs) is replaced by a fresh one, to bound what a leaky
        library accumulates. None (default): never. See the docs' "Workers" page.
    max_worker_memory
        Process workers only: a worker whose resident memory exceeds this after a call
        (bytes, or a size such as ``"512M"``, ``"2G"``) is replaced. None (default): never.
        Neither limit interrupts, fails or re-runs a call; each is part of the warm pool's
        identity (as ``initializer`` is); other backends raise ``ValueError``.
    """

    @overload
    def __init__(
        self: Parallel[ListMode],
        n_jobs: int | None = None,
        backend: str | Backend | BaseContext | None = None,
        *,
        return_as: ListMode = "list",
        **keywords: Unpack[ParallelKeywords],
    ) -> None: ...

    @overload
    def __init__(
        self: Parallel[StreamMode],
        n_jobs: int | None = None,
        backend: str | Backend | BaseContext | None = None,
        *,
        return_as: StreamMode,
        **keywords: Unpack[ParallelKeywords],
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
        max_tasks_per_worker: int | None = None,
        max_worker_memory: int | str | None = None,
    ) -> None:
        arguments = {k: v for k, v in locals().items() if k != "self"}
        plan = self._plan = plan_for(arguments, active_settings())
        self.n_jobs = plan.n_jobs
        self.return_as = plan.return_as
        self.timeout = plan.options.timeout
        self.verbose = plan.verbose
        self.progress = plan.progress
        self.return_exceptions = plan.return_exceptions
        self.worker_concurrency = plan.options.worker_concurrency
        self._warm: Backend | None = None
        #: A one-call input runs without a run's machinery (``run.single``), unless it
        #: reports progress. An iterator is read two calls ahead for it where a run would
        #: read one ahead to find the input's end: on several workers, if pre_dispatch lets
        #: two calls be taken (one worker takes a call, runs it, takes the next).
        self._single = not ProgressReporter.reports(self.verbose, self.progress)
        limit = parse_pre_dispatch(plan.pre_dispatch, max(1, plan.n_jobs))
        self._peek = plan.n_jobs > 1 and (limit is None or limit >= 2)

    @property
    def _backend_name(self) -> str:
        return self._plan.backend_name

    @property
    def _options(self) -> RunOptions:
        return self._plan.options

    def __repr__(self) -> str:
        shown = self._plan.n_jobs_arg if self._plan.n_jobs_arg is not None else self.n_jobs
        return f"Parallel(n_jobs={shown})"

    # -- backends ----------------------------------------------------------------------------

    def _make_backend(self, private: bool) -> Backend:
        return self._plan.build(private)

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

    async def __aexit__(self, *exc_info: object) -> None:
        backend, self._warm = self._warm, None
        if backend is not None:
            await backend.__aexit__(*exc_info)

    # -- calls -------------------------------------------------------------------------------

    def _new_run(self, iterable: object, backend: Backend, sink: Sink[Any]) -> Run:
        n_workers = max(1, backend.n_workers)
        plan = self._plan
        pre_dispatch = parse_pre_dispatch(plan.pre_dispatch, n_workers)  # cached
        name = label = ""  # shown only by a reporter that reports
        if ProgressReporter.reports(self.verbose, self.progress):
            shown_jobs = plan.n_jobs_arg if plan.n_jobs_arg is not None else n_workers
            name, label = f"Parallel(n_jobs={shown_jobs})", f"{backend.name} with {n_workers}"
        reporter = ProgressReporter(
            name=name,
            label=label,
            verbose=self.verbose,
            progress=self.progress,
            pre_dispatch=pre_dispatch,
        )
        return Run(
            iterable=iterable,
            backend=backend,
            options=plan.options,
            batch_size=plan.batch_size,
            pre_dispatch=pre_dispatch,
            widen_bound=plan.widen_bound,
            return_exceptions=self.return_exceptions,
            sink=sink,
            reporter=reporter,
        )

    async def _execute(self, iterable: object, sink: Sink[Any]) -> None:
        """Run ``iterable`` on the warm backend (``async with``), else on one entered for
        this call alone."""
        backend = self._warm
        if backend is not None:  # nothing to enter or exit (a generator-based context: ~5 µs)
            await self._new_run(iterable, backend, sink).execute()
            return
        async with self._make_backend(private=False) as backend:
            await self._new_run(iterable, backend, sink).execute()

    async def _gather(self, iterable: object) -> list[Any]:
        if self._single:
            call, iterable = one_call(iterable, self._peek)
            if call is not None:
                return await self._run_single(call)
        sink: ListSink[Any] = ListSink(Budget(None))
        await self._execute(iterable, sink)
        return sink.result()

    async def _run_single(self, call: Call[Any]) -> list[Any]:
        """``call``, the input's only one, on the warm backend, else one entered for it."""
        plan, backend = self._plan, self._warm
        learn = plan.batch_size is None
        if backend is not None:
            return await run_single(backend, plan.options, call, self.return_exceptions, learn)
        async with self._make_backend(private=False) as backend:
            return await run_single(backend, plan.options, call, self.return_exceptions, learn)

    def _stream(self, iterable: object) -> ResultStream[Any]:
        def make_run() -> tuple[Sink[Any], Callable[[], Coroutine[Any, Any, None]]]:
            sink = SINKS[self.return_as](Budget(None))
            return sink, lambda: self._execute(iterable, sink)

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
