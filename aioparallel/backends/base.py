"""The Backend protocol: the one plug-in point between a run and its workers.

A backend is an async context manager that starts (or borrows) its workers, plus
``open_run``, which gives a run a ``run_batch`` callable for the run's lifetime (per-run
resources such as the memmap folder live in that context). ``run_batch`` executes one batch
on one worker and returns one result per call, in order; a call that raised is a
`Failure` in its slot. These names are public (``from aioparallel import Backend,
Batch, Failure, RunBatch, RunOptions``) so that users can write their own backend; the docs'
"Writing a backend" page shows one, and tests/test_custom_backend.py runs the contract suite
on it.

The registry at the end is where every backend ``Parallel(backend=name)`` can pick declares
itself, once (as anyio looks its backends up by name): a `BackendEntry` gives its names, the
``parallel_config`` options it takes, its nesting rule and a ``build`` that imports its module
only when it is used, so ``import aioparallel`` never imports dask or ray.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from .._call import Call

if TYPE_CHECKING:
    from .setup import Initializer

__all__ = [
    "BACKEND_NAMES",
    "STEADY_PLATFORM_CHECKS",
    "Backend",
    "BackendArgs",
    "BackendEntry",
    "Batch",
    "Failure",
    "RunBatch",
    "RunOptions",
    "lookup_backend",
    "register_backend",
    "registered_backend",
    "registered_backends",
    "registry_generation",
    "unregister_backend",
]


class Failure:
    """A task's exception standing in its result slot.

    A backend's ``run_batch`` puts ``Failure(exc)`` where a call raised ``exc`` (of any
    type, ``BaseException`` included), so that a task that *returns* an exception is never
    mistaken for one that raised it. The run re-raises ``exc`` (or, with
    ``return_exceptions=True``, makes it the task's result) and adds a note naming the task.

    Parameters
    ----------
    exc
        What the call raised.
    """

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc

    def __repr__(self) -> str:
        return f"Failure({self.exc!r})"


@dataclass(slots=True)
class Batch:
    """Consecutive calls of a run, for one worker.

    Parameters
    ----------
    start
        Position in the input of ``calls[0]`` (so ``calls[i]`` is task ``start + i``).
    calls
        The calls, in input order: run each as ``call.func(*call.args, **call.kwargs)``. A
        sequence, not always a list: one function's calls are held as their argument
        tuples, and each is made a ``Call`` as it is indexed or iterated.
    nbytes
        Pickled size of the calls, set by backends that pickle them; ``batch_size="auto"``
        keeps batches under a size with it. Leave it at 0 otherwise.
    started
        ``time.perf_counter()`` when the batch began to run, set by backends that may first
        wait for a worker: ``batch_size="auto"`` sizes batches on how long the work took,
        not on how long the batch queued. Leave it at None otherwise.
    budget
        Seconds the batch is expected to take at most, or None. Set on a batch sized from
        what earlier runs learned (a crowded backend's whole small run): a backend may
        start no further call past it and return the values of the calls it ran, a prefix
        (the run sends the rest again, spread over its workers). Others may ignore it.
    last
        True when the run has no other call to send after this batch (unless a budgeted
        batch returns some): a backend that keeps a worker for the run's next batch may
        give it back at once.
    on_sent
        Set by the run, called by backends that send a batch away to be run (to a worker
        process) once it has gone: the run takes its next batch meanwhile, so the worker
        finds it ready. Others may ignore it.
    """

    start: int
    calls: Sequence[Call[Any]]
    nbytes: int = 0
    started: float | None = None
    budget: float | None = None
    last: bool = False
    on_sent: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What a backend needs to know about a run, from ``Parallel``'s parameters.

    A backend that cannot honour an option it is given (a ``timeout`` it cannot enforce)
    raises ``ValueError`` from ``open_run``, rather than ignoring it. The array options only
    concern backends that send arrays to other processes.

    Parameters
    ----------
    timeout
        Seconds one task may run, from its start on the worker (not while queued); a task
        past it is a ``Failure(TimeoutError(...))``. None: no limit.
    stop_on_error
        True (``return_exceptions=False``): ``run_batch`` may stop at the first ``Failure``
        and return the results up to and including it.
    max_nbytes
        numpy arrays above this many bytes reach process workers as memmaps; None disables.
    mmap_mode
        How workers open those memmaps: ``"r"``, ``"r+"`` or ``"c"``.
    temp_folder
        Folder for the memmap files; None picks the default.
    expected_work
        Called any time, from any thread: the worker seconds the run's calls need in all,
        as the run estimates them now (None: it cannot tell yet). A backend whose workers
        several runs share may serve a much smaller run first.
    """

    timeout: float | None = None
    stop_on_error: bool = True
    max_nbytes: int | None = 1024**2
    mmap_mode: str = "r"
    temp_folder: str | None = None
    #: Async tasks one worker keeps in flight at once.
    worker_concurrency: int = 16
    expected_work: Callable[[], float | None] | None = field(default=None, compare=False)

    def with_expected_work(self, expected_work: Callable[[], float | None]) -> RunOptions:
        """These options with ``expected_work`` set: what ``dataclasses.replace`` makes, at
        half its cost (every run makes one)."""
        if type(self) is not RunOptions:  # a subclass may have fields of its own
            return replace(self, expected_work=expected_work)
        new = object.__new__(RunOptions)
        for name in _RUN_OPTIONS_FIELDS:
            object.__setattr__(new, name, getattr(self, name))
        object.__setattr__(new, "expected_work", expected_work)
        return new


_RUN_OPTIONS_FIELDS = tuple(f.name for f in fields(RunOptions) if f.name != "expected_work")


RunBatch = Callable[[Batch], Awaitable[list[Any]]]
"""Type of ``run_batch``: runs one batch on one worker and returns one result (or
`Failure`) per call, in order. With ``stop_on_error`` the list may end at the first
Failure."""


@runtime_checkable
class Backend(Protocol):
    """Workers that run batches of calls: the protocol a custom backend implements.

    Pass an object with these members as ``Parallel(backend=obj)`` or
    ``parallel_config(backend=obj)``; no base class is needed (it is a
    `typing.Protocol`, checked with ``isinstance``).

    - ``async with backend`` starts (or borrows) the workers and releases them on exit.
      ``Parallel`` enters the object for each call (once for all calls inside
      ``async with Parallel(...)``), and concurrent calls may enter it concurrently: keep
      per-entry state out of ``self``, or count entries.
    - ``open_run(options)`` holds one run's resources; the context yields that run's
      ``run_batch`` and closes the resources on every path, cancellation included.
    - ``run_batch(batch)`` runs ``batch.calls`` in order on one worker and returns one value
      per call; a call that raised is ``Failure(exc)`` in its slot. The run calls it from
      ``n_workers`` tasks at once, at most. When the run is cancelled, ``run_batch`` is
      cancelled too and must return promptly (a call that cannot be interrupted may be
      abandoned, as threads are, but must not be waited for).

    Attributes
    ----------
    name
        Shown in messages (``verbose``, errors): one word.
    n_workers
        How many batches it runs at once; ``Parallel``'s ``n_jobs``, when given, must equal
        it.
    batches_per_worker
        Optional (default 1): batches the run keeps in flight per worker, its lanes being
        ``n_workers * batches_per_worker``. A backend whose round trip is long next to a
        batch (a remote cluster) asks for 2, so that a worker has its next batch before it
        finishes the one it runs; ``pre_dispatch`` still bounds the calls in flight.
    batch_seconds
        Optional (default ``run.batching.MIN_BATCH_SECONDS``, 0.02): the least work auto
        batching aims to put in one batch. A backend whose every batch costs a scheduler's
        bookkeeping (a cluster) asks for more, so that cost is paid less often.
    crowded
        Optional (default False): True while every worker is busy, so a new run would wait
        for one. Auto batching then sends a run of a few milliseconds of work (by what its
        function's calls took before) in one batch instead of spreading it over workers
        that are taken anyway. A hint, read without a lock. The callable ``open_run``
        gives may have its own ``crowded``, which its run reads instead: busy with this
        run's own batches, every worker is not crowded for it.

    The callable ``open_run`` gives may also have, optionally (a pool shared by runs has):
    ``await wait_for_worker()``, which returns once a worker is ready for the run's next
    batch, so that the run cuts it then, on the pool as it is; and ``keep_idle(lanes)``,
    which keeps idle workers for the run's lanes about to ask, before newer runs.
    """

    name: str
    n_workers: int

    async def __aenter__(self) -> Backend: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    def open_run(self, options: RunOptions) -> AbstractAsyncContextManager[RunBatch]:
        """Per-run resources; the context yields the run's ``run_batch``."""
        ...


def batch_seconds(backend: Backend, default: float) -> float:
    """The backend's optional ``batch_seconds`` (``default`` when it has none)."""
    return float(getattr(backend, "batch_seconds", default))


def crowded(backend: object) -> bool:
    """The optional ``crowded`` of a backend, or of the callable its ``open_run`` gives
    (False when it has none)."""
    return bool(getattr(backend, "crowded", False))


def batches_per_worker(backend: Backend) -> int:
    """The backend's optional ``batches_per_worker`` (at least 1; 1 when it has none)."""
    return max(1, int(getattr(backend, "batches_per_worker", 1)))


# -- the registry: every backend Parallel can pick by name declares itself here, once -------


@dataclass(frozen=True, slots=True)
class BackendArgs:
    """What ``Parallel``'s settings give a registered backend's ``build``.

    Parameters
    ----------
    n_workers
        Workers to run (at least 1), from ``n_jobs``.
    n_jobs
        ``n_jobs`` as given (or configured), None when neither: a backend sized by its
        cluster reads -1 as all of the cluster's workers, not this machine's CPUs.
    initializer
        ``initializer(*initargs)`` to run once in each worker, or None.
    options
        The ``parallel_config`` backend options, all of them declared by this backend.
    private
        True for ``async with Parallel(...)``: workers of its own, not shared ones.
    """

    n_workers: int
    n_jobs: int | None
    initializer: Initializer | None
    options: Mapping[str, Any]
    private: bool


#: How a backend nests (see ``_nesting``): ``"processes"`` starts processes, so a call made
#: inside a worker runs sequentially; ``"threads"`` runs sequentially two thread-worker
#: levels deep unless named; None is honoured at any depth.
Nesting = Literal["processes", "threads"] | None


@dataclass(frozen=True, slots=True)
class BackendEntry:
    """One backend, as ``Parallel(backend=name)`` and ``parallel_config`` know it."""

    #: Canonical name, shown in messages and taken by ``Parallel._backend_name``.
    name: str
    #: Builds the backend for one ``Parallel`` (import the module here: lazily).
    build: Callable[[BackendArgs], Backend]
    #: Other names meaning this backend (joblib's).
    aliases: tuple[str, ...] = ()
    #: ``parallel_config`` backend options it takes; others are a ``ValueError``.
    options: frozenset[str] = frozenset()
    nesting: Nesting = None
    #: It runs on this machine: with one worker the calls run in the caller instead.
    local: bool = False
    #: Its calls share the caller's memory (``require="sharedmem"`` keeps it).
    shares_memory: bool = False
    #: Its size is its cluster's, known once entered: ``n_jobs`` is passed on as given, and a
    #: backend object of this name is not held to ``n_jobs``.
    sized_by_cluster: bool = False
    #: Raises when the name is looked up and the backend cannot be imported.
    check_installed: Callable[[], None] | None = None
    #: Raises when a ``Parallel`` picks it and it cannot run on this platform.
    check_platform: Callable[[], None] | None = None


_ENTRIES: dict[str, BackendEntry] = {}
_NAMES: dict[str, str] = {}
#: Changes with every (un)registration: what was looked up before may differ now.
_generation = 0
#: Every name and alias -> canonical name, in registration order (a live, read-only view).
BACKEND_NAMES: Mapping[str, str] = MappingProxyType(_NAMES)


def register_backend(entry: BackendEntry) -> None:
    """Make ``entry`` a backend ``Parallel(backend=...)`` and ``parallel_config`` accept."""
    for name in (entry.name, *entry.aliases):
        if _NAMES.get(name, entry.name) != entry.name:
            raise ValueError(f"backend name {name!r} is already taken by {_NAMES[name]!r}")
    global _generation
    _generation += 1
    _ENTRIES[entry.name] = entry
    for name in (entry.name, *entry.aliases):
        _NAMES[name] = entry.name


def unregister_backend(name: str) -> None:
    """Forget the backend ``name`` (a canonical name) and its aliases."""
    global _generation
    _generation += 1
    del _ENTRIES[name]
    for alias in [a for a, canonical in _NAMES.items() if canonical == name]:
        del _NAMES[alias]


def lookup_backend(name: str) -> BackendEntry:
    """The backend registered as ``name`` (or an alias), checked to be installed; else
    ``ValueError`` listing the valid names."""
    try:
        entry = _ENTRIES[_NAMES[name]]
    except KeyError:
        valid = ", ".join(repr(n) for n in _NAMES)
        raise ValueError(f"Invalid backend: {name!r}; valid backends: {valid}") from None
    if entry.check_installed is not None:
        entry.check_installed()
    return entry


def registry_generation() -> int:
    """A number that changes whenever a backend is registered or unregistered (a plan made
    from the registry holds while it is the same)."""
    return _generation


def registered_backend(name: str) -> BackendEntry | None:
    """The entry of canonical ``name`` (a backend object's ``name``), if one is registered."""
    return _ENTRIES.get(name)


def registered_backends() -> tuple[BackendEntry, ...]:
    """Every registered backend, in registration order."""
    return tuple(_ENTRIES.values())


def _build_processes(args: BackendArgs) -> Backend:
    from .processes.backend import build

    return build(args)


def _build_threads(args: BackendArgs) -> Backend:
    from .threads import build

    return build(args)


def _build_sequential(args: BackendArgs) -> Backend:
    from .sequential import build

    return build(args)


def _build_dask(args: BackendArgs) -> Backend:
    from .dask.client import build

    return build(args)


def _build_ray(args: BackendArgs) -> Backend:
    from .ray.client import build

    return build(args)


def _check_process_platform() -> None:
    from .._system import check_process_backend

    check_process_backend()


#: Platform checks whose answer is the same for the whole process (the process backend's:
#: ``FEATURES``, found at import), so a plan that passed one may be reused without it.
STEADY_PLATFORM_CHECKS = frozenset({_check_process_platform})


def _check_installed(module: str, missing: str) -> Callable[[], None]:
    """A check that a backend without ``module`` fails, saying ``missing``, when the backend
    is chosen, not at the first call; ``module`` is found without importing it (~1 s)."""

    def check() -> None:
        from importlib.util import find_spec

        try:
            installed = find_spec(module) is not None
        except (ImportError, ValueError):  # a finder refusing it; a broken sys.modules entry
            installed = False
        if not installed:
            raise ValueError(missing)

    return check


_check_distributed = _check_installed(
    "distributed",
    "backend='dask' runs the calls on a dask.distributed cluster, but distributed is not "
    "installed. Please install dask: pip install 'aioparallel[dask]'",
)
_check_ray = _check_installed(
    "ray",
    "backend='ray' runs the calls as Ray tasks, but ray is not installed. "
    "Please install it: pip install 'aioparallel[ray]'",
)


for _entry in (
    BackendEntry(
        "processes",
        _build_processes,
        aliases=("loky", "multiprocessing"),
        options=frozenset(
            {"idle_timeout", "inner_max_num_threads", "max_tasks_per_worker", "max_worker_memory"}
        ),
        nesting="processes",
        local=True,
        check_platform=_check_process_platform,
    ),
    BackendEntry(
        "threads",
        _build_threads,
        aliases=("threading",),
        nesting="threads",
        local=True,
        shares_memory=True,
    ),
    BackendEntry("sequential", _build_sequential, local=True, shares_memory=True),
    BackendEntry(
        "dask",
        _build_dask,
        options=frozenset({"client", "address"}),
        sized_by_cluster=True,
        check_installed=_check_distributed,
    ),
    BackendEntry(
        "ray",
        _build_ray,
        options=frozenset({"address"}),
        sized_by_cluster=True,
        check_installed=_check_ray,
    ),
):
    register_backend(_entry)
