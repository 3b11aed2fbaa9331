"""``Parallel``'s and ``parallel_config``'s parameters, parsed and checked once, in one object.

::

    Parallel(...), parallel_config(...)     the documented signatures
          │ Settings.parse: each value given is checked and parsed; the rest are UNSET
          ▼
       Settings ── over(the active config) ──▶ Settings   (what parallel_config stores)
          │ Plan.make: defaults filled in, the backend picked from the registry
          │            (prefer / require, its nesting rule, one worker), n_jobs counted
          ▼
         Plan      what a Parallel runs with: how to build its backend, RunOptions, ...

"Not given" is spelt one way here, ``UNSET``. At the signatures it is None, or a `Default`
where None (``max_nbytes=None`` disables memmapping) or the plain value (only the default
``pre_dispatch`` widens with the batch size) would mean something else; ``parallel_config``
and ``Parallel`` spell each the same way. Each value is checked by its parser in
``_parsing``.
"""

from __future__ import annotations

import enum
import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, TypedDict

from ._nesting import cap_nesting
from ._parsing import (
    DEFAULT_WORKER_CONCURRENCY,
    PREFER,
    REQUIRE,
    check_choice,
    check_consistent,
    check_max_tasks,
    check_pre_dispatch,
    check_thread_cap,
    coerce_n_jobs,
    is_mp_context,
    make_initializer,
    parse_batch_size,
    parse_max_nbytes,
    parse_max_worker_memory,
    parse_mmap_mode,
    parse_n_jobs,
    parse_progress,
    parse_return_as,
    parse_timeout,
    parse_verbose,
    parse_worker_concurrency,
)
from ._system import in_worker
from .backends.base import (
    Backend,
    BackendArgs,
    BackendEntry,
    RunOptions,
    lookup_backend,
    registered_backend,
    registered_backends,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .backends.setup import Initializer
    from .run.progress import ProgressCallback

__all__ = [
    "UNSET",
    "BackendChoice",
    "Default",
    "ParallelKeywords",
    "Plan",
    "Settings",
    "Runner",
    "backend_options",
    "object_workers",
    "parse_backend",
    "pick_backend",
]


class Default(str):
    """A default shown as its plain value in signatures, which still tells "not given" from
    an explicit equal value: an active ``parallel_config`` fills in only what the caller left
    out, and only the default ``pre_dispatch`` widens with the batch size."""

    __slots__ = ()


class _Unset(enum.Enum):
    UNSET = "UNSET"


#: A setting that was not given.
UNSET: Final = _Unset.UNSET


class ParallelKeywords(TypedDict, total=False):
    """``Parallel``'s keyword parameters after ``return_as``, typed once for its overloads."""

    verbose: int | None
    pre_dispatch: int | str
    batch_size: int | Literal["auto"]
    timeout: float | None
    temp_folder: str | os.PathLike[str] | None
    max_nbytes: int | str | None
    mmap_mode: str
    return_exceptions: bool
    progress: bool | ProgressCallback
    worker_concurrency: int | None
    prefer: str | None
    require: str | None
    initializer: Callable[..., object] | None
    initargs: Iterable[Any]
    max_tasks_per_worker: int | None
    max_worker_memory: int | str | None


@dataclass(frozen=True, slots=True)
class BackendChoice:
    """A backend as given: a registered name (or a ``multiprocessing`` context) or an object."""

    #: As the caller spelt it, for messages.
    given: object
    #: The registered backend: by name, or by a backend object's ``name`` (None: unknown).
    entry: BackendEntry | None
    obj: Backend | None = None

    @property
    def name(self) -> str:
        if self.obj is not None:
            return self.obj.name
        assert self.entry is not None
        return self.entry.name


@dataclass(frozen=True, slots=True)
class Settings:
    """Every parameter, checked and parsed; UNSET where not given."""

    n_jobs: int | _Unset = UNSET
    backend: BackendChoice | _Unset = UNSET
    return_as: str | _Unset = UNSET
    verbose: int | _Unset = UNSET
    pre_dispatch: int | str | _Unset = UNSET
    batch_size: int | _Unset | None = UNSET  # None: "auto"
    timeout: float | _Unset = UNSET
    temp_folder: str | _Unset = UNSET
    max_nbytes: int | _Unset | None = UNSET
    mmap_mode: str | _Unset = UNSET
    return_exceptions: bool | _Unset = UNSET
    progress: bool | ProgressCallback | _Unset = UNSET
    worker_concurrency: int | _Unset = UNSET
    prefer: str | _Unset = UNSET
    require: str | _Unset = UNSET
    initializer: Initializer | _Unset = UNSET
    #: ``parallel_config``'s options for the backend (``inner_max_num_threads`` included).
    backend_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def parse(cls, arguments: Mapping[str, Any]) -> Settings:
        """Settings from a signature's arguments (``locals()``), each checked in turn."""
        given = {k: v for k, v in arguments.items() if not _not_given(k, v)}
        parsed: dict[str, Any] = {}
        if "initializer" in given or "initargs" in given:
            parsed["initializer"] = make_initializer(
                given.pop("initializer", None), given.pop("initargs", ())
            )
        options = dict(given.pop("backend_options", {}))
        for name, check in _PROCESS_OPTIONS.items():  # the process backend's, if given
            if name in given:
                options[name] = check(given.pop(name))
        _check_known_options(options)
        for name in _PARSE_ORDER:
            if name in given:
                parsed[name] = _PARSERS[name](given.pop(name))
            if name == "require":  # the pair, before the backend it may pick
                check_consistent(parsed.get("prefer"), parsed.get("require"))
        assert not given, f"no parser for {sorted(given)}"
        return cls(**parsed, backend_options=MappingProxyType(options))

    def given(self) -> dict[str, Any]:
        """The settings given, by name (the backend options if any)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values = {k: v for k, v in values.items() if v is not UNSET}
        if not self.backend_options:
            del values["backend_options"]
        return values

    def over(self, outer: Settings) -> Settings:
        """These settings, with ``outer``'s where these were not given."""
        options = MappingProxyType({**outer.backend_options, **self.backend_options})
        return replace(outer, **{**self.given(), "backend_options": options})

    def get(self, name: str, default: Any) -> Any:
        """Setting ``name``, or ``default`` if it was not given."""
        value = getattr(self, name)
        return default if value is UNSET else value


#: Where None is a value: ``max_nbytes=None`` disables memmapping; ``mmap_mode=None`` is
#: refused (numpy's "no memmap" is not a mode workers can open arrays with).
_NONE_IS_A_VALUE = frozenset({"max_nbytes", "mmap_mode"})


def _not_given(name: str, value: object) -> bool:
    """A `Default`, None (where it is not a value), or no ``initargs``."""
    if name == "initargs":
        return value == ()
    return isinstance(value, Default) or (value is None and name not in _NONE_IS_A_VALUE)


def parse_backend(backend: object) -> BackendChoice:
    """A registered name (``ValueError`` listing them otherwise), a backend object, or a
    ``multiprocessing`` context."""
    if isinstance(backend, str):
        return BackendChoice(backend, lookup_backend(backend))
    if isinstance(backend, Backend):
        return BackendChoice(backend, registered_backend(backend.name), backend)
    if is_mp_context(backend):
        return BackendChoice(backend, lookup_backend("processes"))
    raise ValueError(f"Invalid backend: {backend!r}; expected a backend name or a Backend object")


def _check_known_options(options: Mapping[str, Any]) -> None:
    """Every ``parallel_config`` backend option is one some registered backend takes."""
    known = frozenset().union(*(entry.options for entry in registered_backends()))
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"unknown backend option(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )


#: Parameters that are options of the process backend (a ``ValueError`` on the others).
_PROCESS_OPTIONS: dict[str, Callable[[Any], Any]] = {
    "inner_max_num_threads": check_thread_cap,
    "max_tasks_per_worker": check_max_tasks,
    "max_worker_memory": parse_max_worker_memory,
}

#: Each parameter's parser, in the order they are checked (the first error wins).
_PARSERS: dict[str, Callable[[Any], Any]] = {
    "n_jobs": coerce_n_jobs,
    "prefer": functools.partial(check_choice, "prefer", valid=PREFER),
    "require": functools.partial(check_choice, "require", valid=REQUIRE),
    "backend": parse_backend,
    "return_as": parse_return_as,
    "batch_size": parse_batch_size,
    "pre_dispatch": check_pre_dispatch,
    "timeout": parse_timeout,
    "verbose": parse_verbose,
    "progress": parse_progress,
    "return_exceptions": bool,
    "max_nbytes": parse_max_nbytes,
    "mmap_mode": parse_mmap_mode,
    "temp_folder": os.fspath,
    "worker_concurrency": parse_worker_concurrency,
}
_PARSE_ORDER = tuple(_PARSERS)


# -- from the settings to what a Parallel runs with -------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What a ``Parallel`` runs with: its settings merged with the active config, defaults
    filled in and its backend picked."""

    #: ``n_jobs`` as given or configured (None: neither), for messages and cluster backends.
    n_jobs_arg: int | None
    #: Workers: a backend object's, 0 for a cluster's (known once entered), else from n_jobs.
    n_jobs: int
    #: The backend object given, if any (it is entered, never built).
    backend_object: Backend | None
    #: The registered backend to build, when no object was given.
    entry: BackendEntry | None
    backend_args: BackendArgs
    return_as: str
    verbose: int
    progress: bool | ProgressCallback
    return_exceptions: bool
    batch_size: int | None
    pre_dispatch: int | str
    #: The default bound counts batches (as joblib's does) so batching never starves a
    #: worker; an explicit pre_dispatch is a hard bound on calls.
    widen_bound: bool
    options: RunOptions

    @property
    def backend_name(self) -> str:
        if self.backend_object is not None:
            return self.backend_object.name
        assert self.entry is not None
        return self.entry.name

    def build(self, private: bool) -> Backend:
        """The backend for a call (``private``: for ``async with``, workers of its own)."""
        if self.backend_object is not None:
            return self.backend_object
        assert self.entry is not None
        return self.entry.build(replace(self.backend_args, private=private))

    @classmethod
    def make(cls, given: Settings, config: Settings) -> Plan:
        """The plan of a ``Parallel`` given ``given`` under the active ``config``."""
        merged = given.over(config)
        explicit = given.backend is not UNSET
        choice = pick_backend(merged, explicit)
        if choice.entry is not None and choice.entry.check_platform is not None:
            choice.entry.check_platform()  # even for n_jobs=1: fail alike at any size
        initializer = merged.get("initializer", None)
        if initializer is not None and choice.obj is not None:
            raise ValueError(
                f"initializer= cannot be given to the backend object {choice.obj!r}, "
                "which starts its own workers: give it a backend name instead"
            )
        options = backend_options(choice.name, merged.backend_options)
        n_jobs_arg = merged.get("n_jobs", None)
        timeout = merged.get("timeout", None)
        if choice.obj is not None:
            n_jobs = object_workers(choice, given.get("n_jobs", None), n_jobs_arg)
            runner = Runner(None, n_jobs, n_jobs, in_caller=False)
        else:
            assert choice.entry is not None
            runner = Runner.pick(choice.entry, explicit, n_jobs_arg, timeout)
        batch_size = merged.get("batch_size", None)
        if runner.in_caller and batch_size is None:  # take one, run it, take the next
            batch_size = 1
        return cls(
            n_jobs_arg=n_jobs_arg,
            n_jobs=runner.n_jobs,
            backend_object=choice.obj,
            entry=runner.entry,
            backend_args=BackendArgs(
                n_workers=runner.n_workers,
                n_jobs=n_jobs_arg,
                initializer=initializer,
                options=runner.options(options),
                private=False,
            ),
            return_as=merged.get("return_as", "list"),
            verbose=merged.get("verbose", 0),
            progress=merged.get("progress", False),
            return_exceptions=merged.get("return_exceptions", False),
            batch_size=batch_size,
            pre_dispatch=merged.get("pre_dispatch", "2*n_jobs"),
            widen_bound=merged.pre_dispatch is UNSET,
            options=run_options(merged, timeout),
        )


@dataclass(frozen=True, slots=True)
class Runner:
    """Which registered backend runs the calls of a ``Parallel`` with a backend name."""

    #: The backend to build (None for a backend object).
    entry: BackendEntry | None
    #: ``Parallel.n_jobs``.
    n_jobs: int
    #: Workers it is built with.
    n_workers: int
    #: The calls run one after another, in the caller's thread or one thread worker.
    in_caller: bool

    @classmethod
    def pick(
        cls, entry: BackendEntry, explicit: bool, n_jobs_arg: int | None, timeout: float | None
    ) -> Runner:
        """``entry``, or what its nesting rule or a single worker makes of it."""
        nested = cap_nesting(entry, explicit=explicit, n_jobs=n_jobs_arg)
        if nested != entry.name:
            entry = lookup_backend(nested)
        if n_jobs_arg is None:
            n_jobs = 0 if entry.sized_by_cluster else 1  # a cluster's: known once entered
        else:
            n_jobs = parse_n_jobs(n_jobs_arg)
        # One worker, or "sequential": the calls run one after another in the caller's
        # thread; a timeout needs a worker that can be abandoned, so then one thread worker.
        if entry.local and (n_jobs == 1 or entry.name == "sequential"):
            entry = lookup_backend("sequential" if timeout is None else "threads")
            return cls(entry, n_jobs, 1, in_caller=True)
        return cls(entry, n_jobs, n_jobs, in_caller=False)

    def options(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        """The backend options this runner takes (none once nesting or one worker picked
        another backend than the one they were checked for)."""
        taken = self.entry.options if self.entry is not None else frozenset()
        return MappingProxyType({k: v for k, v in options.items() if k in taken})


def run_options(merged: Settings, timeout: float | None) -> RunOptions:
    """What the backend needs to know about each run."""
    return RunOptions(
        timeout=timeout,
        stop_on_error=not merged.get("return_exceptions", False),
        max_nbytes=merged.get("max_nbytes", 1024**2),
        mmap_mode=merged.get("mmap_mode", "r"),
        temp_folder=merged.get("temp_folder", None),
        worker_concurrency=merged.get("worker_concurrency", DEFAULT_WORKER_CONCURRENCY),
    )


def pick_backend(merged: Settings, explicit: bool) -> BackendChoice:
    """The backend from the settings, the default, and joblib's ``prefer`` / ``require``.

    ``require="sharedmem"`` turns a configured process (or dask) backend into threads, as in
    joblib; with such a backend passed explicitly it is a ``ValueError``, never a silent switch.
    """
    prefer, require = merged.get("prefer", None), merged.get("require", None)
    check_consistent(prefer, require)
    choice = merged.backend
    if choice is UNSET:
        choice = parse_backend("sequential" if in_worker() else (prefer or "processes"))
    if require == "sharedmem" and not (choice.entry is not None and choice.entry.shares_memory):
        if explicit:
            raise ValueError(
                f"require='sharedmem' needs calls that share the caller's memory: backend "
                f"{choice.given!r} does not support shared memory; pass backend='threads' (or "
                "'sequential'), or no backend to let require pick threads"
            )
        return parse_backend("threads")
    return choice


def backend_options(name: str, options: Mapping[str, Any]) -> Mapping[str, Any]:
    """The active ``parallel_config`` backend options, all of which backend ``name`` must
    take: an option for another backend is a ``ValueError``, never silently dropped."""
    entry = registered_backend(name)
    foreign = sorted(set(options) - (entry.options if entry is not None else frozenset()))
    if foreign:
        takers = {
            option: [e.name for e in registered_backends() if option in e.options]
            for option in foreign
        }
        described = "; ".join(
            f"{option}= is an option of {' and '.join(map(repr, takers[option]))}"
            for option in foreign
        )
        raise ValueError(
            f"Parallel/parallel_config option(s) {', '.join(map(repr, foreign))} do not apply to "
            f"backend {name!r} ({described}); drop them or use that backend"
        )
    return MappingProxyType(dict(options))


def object_workers(choice: BackendChoice, given: int | None, n_jobs: int | None) -> int:
    """``Parallel.n_jobs`` with a backend object: the object decides (a given ``n_jobs`` must
    agree), unless its size is its cluster's, known once entered (0 until then)."""
    obj = choice.obj
    assert obj is not None
    if choice.entry is not None and choice.entry.sized_by_cluster:
        return 0 if n_jobs is None else parse_n_jobs(n_jobs)
    if given is not None and parse_n_jobs(given) != obj.n_workers:
        raise ValueError(
            f"n_jobs={given!r} contradicts the backend object {obj!r}, which has "
            f"{obj.n_workers} workers: drop n_jobs or make them agree"
        )
    return obj.n_workers  # a configured n_jobs is only a default
