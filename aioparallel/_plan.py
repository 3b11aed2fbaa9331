"""From the settings to what a ``Parallel`` runs with: the ``Plan``.

``Plan.make`` merges a ``Parallel``'s settings (``_settings``) with the active
``parallel_config``, fills in the defaults and picks the backend from the registry: joblib's
``prefer`` / ``require``, the backend's nesting rule, and one worker (the calls then run in
the caller). Every backend option given must be one the picked backend takes.

``plan_for`` keeps the plans of recent plain arguments (~50 µs each to make, paid by every
``Parallel`` a web handler builds per request), for as long as what they were made from holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ._nesting import cap_nesting, thread_depth
from ._parsing import DEFAULT_WORKER_CONCURRENCY, check_consistent, parse_n_jobs
from ._settings import UNSET, BackendChoice, Default, Settings, parse_backend
from ._system import in_worker
from .backends.base import (
    STEADY_PLATFORM_CHECKS,
    Backend,
    BackendArgs,
    BackendEntry,
    RunOptions,
    lookup_backend,
    registered_backend,
    registered_backends,
    registry_generation,
)

if TYPE_CHECKING:
    from .run.progress import ProgressCallback

__all__ = ["Plan", "Runner", "backend_options", "object_workers", "pick_backend", "plan_for"]


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
    #: Made from the settings and the registry alone, so ``plan_for`` may hand it out again
    #: for the same ones: not from a backend object (its ``n_workers``), a negative
    #: ``n_jobs`` (the CPUs usable now) or a backend whose checks may answer otherwise later.
    reusable: bool = False

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
        args = self.backend_args
        if args.private is not private:
            args = replace(args, private=private)
        return self.entry.build(args)

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
        reusable = (
            choice.obj is None
            and _steady(choice.entry)
            and _steady(runner.entry)
            and (n_jobs_arg is None or n_jobs_arg > 0)
        )
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
            reusable=reusable,
        )


#: Argument types whose values alone (with their type: ``True`` is not ``1``, nor a `Default`
#: its plain string) decide what ``Settings.parse`` makes of them; ``tuple``: only ``()``
#: (no ``initargs``). Callables, backend objects, paths... are never cached.
_PLAIN = frozenset({int, float, str, bool, type(None), Default, tuple})
#: Plans kept (then all go: the arguments a program uses are few).
PLAN_CACHE_SIZE = 64
#: (argument names, values, types, id of the config, registry generation) -> (config, plan).
_plans: dict[tuple[Any, ...], tuple[Settings, Plan]] = {}


def plan_for(arguments: Mapping[str, Any], config: Settings) -> Plan:
    """``Plan.make(Settings.parse(arguments), config)``, the same plan again for the same plain
    arguments under the same active config (the object: a ``parallel_config`` block makes a
    new one), while the backend registry is unchanged. Skipped where the plan reads more than
    that: in a worker or below a thread worker (nesting, whose warning must repeat), and for a
    plan that is not ``reusable``. An error is never kept."""
    key = _cache_key(arguments, config)
    if key is not None:
        hit = _plans.get(key)
        if hit is not None and hit[0] is config:
            return hit[1]
    plan = Plan.make(Settings.parse(arguments), config)
    if key is not None and plan.reusable:
        if len(_plans) >= PLAN_CACHE_SIZE:
            _plans.clear()  # (one call, safe from any thread; they are soon made again)
        _plans[key] = (config, plan)
    return plan


def _cache_key(arguments: Mapping[str, Any], config: Settings) -> tuple[Any, ...] | None:
    values = tuple(arguments.values())
    kinds = tuple(map(type, values))
    if not _PLAIN.issuperset(kinds) or kinds.count(tuple) != values.count(()):
        return None
    if in_worker() or thread_depth():
        return None
    return (tuple(arguments), values, kinds, id(config), registry_generation())


def _steady(entry: BackendEntry | None) -> bool:
    """A registered backend whose checks, once passed, pass for the rest of the process: none
    (``check_installed`` asks the import system, which ``sys.path`` changes)."""
    return (
        entry is not None
        and entry.check_installed is None
        and (entry.check_platform is None or entry.check_platform in STEADY_PLATFORM_CHECKS)
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
