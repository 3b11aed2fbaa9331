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
and ``Parallel`` spell each the same way. Nothing here
evaluates a user string: ``pre_dispatch`` and ``max_nbytes`` are parsed with regular
expressions.
"""

from __future__ import annotations

import enum
import functools
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, TypedDict

from ._backends._base import (
    Backend,
    BackendArgs,
    BackendEntry,
    RunOptions,
    lookup_backend,
    registered_backend,
    registered_backends,
)
from ._backends._setup import Initializer
from ._nesting import cap_nesting
from ._system import cpu_count, in_worker

if TYPE_CHECKING:
    from ._progress import ProgressCallback

__all__ = [
    "DEFAULT_WORKER_CONCURRENCY",
    "RETURN_MODES",
    "UNSET",
    "Default",
    "ParallelKeywords",
    "Plan",
    "Settings",
    "coerce_n_jobs",
    "parse_max_nbytes",
    "parse_mmap_mode",
    "parse_n_jobs",
    "parse_pre_dispatch",
    "parse_worker_concurrency",
]

RETURN_MODES = ("list", "generator", "generator_unordered")
MMAP_MODES = ("r", "r+", "c")
PREFER = ("processes", "threads")
REQUIRE = ("sharedmem",)
#: Async tasks one worker keeps in flight by default; see docs/async-tasks.md for
#: the measurement behind it.
DEFAULT_WORKER_CONCURRENCY = 16


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
    batch_size: int | _Unset = UNSET  # "auto" is UNSET
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
    backend_options: Mapping[str, Any] = field(default_factory=dict)

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
        if "inner_max_num_threads" in given:
            options["inner_max_num_threads"] = check_thread_cap(given.pop("inner_max_num_threads"))
        _check_known_options(options)
        for name in _PARSE_ORDER:
            if name in given:
                parsed[name] = _PARSERS[name](given.pop(name))
            if name == "require":
                check_consistent(parsed.get("prefer"), parsed.get("require"))
        assert not given, f"no parser for {sorted(given)}"
        return cls(**parsed, backend_options=options)

    def given(self) -> dict[str, Any]:
        """The settings given, by name (the backend options if any)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values = {k: v for k, v in values.items() if v is not UNSET}
        if not self.backend_options:
            del values["backend_options"]
        return values

    def over(self, outer: Settings) -> Settings:
        """These settings, with ``outer``'s where these were not given."""
        options = {**outer.backend_options, **self.backend_options}
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


# -- one parser per parameter -----------------------------------------------------------------


def coerce_n_jobs(n_jobs: object) -> int:
    """joblib's ``int(n_jobs)``: ``"2"`` and ``2.3`` mean 2; 0 (also ``0.5``) is a ValueError.

    ``True``/``False`` are refused rather than read as 1/0: they are always a mistake.
    """
    if isinstance(n_jobs, bool):
        raise ValueError(f"n_jobs could not be converted to int: got {n_jobs!r}")
    if isinstance(n_jobs, int):
        value = n_jobs
    else:
        try:
            value = int(n_jobs)  # type: ignore[call-overload]
        except (TypeError, ValueError, OverflowError):
            raise ValueError(
                f"n_jobs could not be converted to int: got {n_jobs!r}; expected an int "
                "such as 4 or -1 (or None for the default)"
            ) from None
    if value == 0:
        raise ValueError(
            f"n_jobs == 0 in Parallel has no meaning (got {n_jobs!r}); use a positive count, "
            "-1 for all CPUs, or -k for all CPUs but k-1"
        )
    return value


def parse_n_jobs(n_jobs: object) -> int:
    """Resolve joblib's ``n_jobs`` convention to a worker count >= 1."""
    n_jobs = coerce_n_jobs(n_jobs)
    if n_jobs < 0:
        return max(1, cpu_count() + 1 + n_jobs)
    return n_jobs


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


def is_mp_context(backend: object) -> bool:
    """A ``multiprocessing`` context (or the module itself), which joblib accepts as a backend
    (recognised as joblib does, by its ``Pool`` and ``Lock``). It means the process backend:
    our workers are fresh interpreters whatever the start method, so none has to be chosen."""
    return hasattr(backend, "Pool") and hasattr(backend, "Lock")


def make_initializer(initializer: object, initargs: Iterable[Any]) -> Initializer:
    """Check joblib's ``initializer`` / ``initargs`` pair; ``initargs`` may be any iterable."""
    if initializer is None:
        raise ValueError(f"initargs={initargs!r} without an initializer: pass initializer= too")
    if not callable(initializer):
        raise TypeError(
            f"initializer must be a callable (run once in each worker), got "
            f"{type(initializer).__name__} {initializer!r:.60}"
        )
    return Initializer(initializer, tuple(initargs))


def check_thread_cap(value: object) -> int:
    """``inner_max_num_threads``: an int >= 1 (not a bool), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"invalid inner_max_num_threads {value!r}: expected an int >= 1 (threads per "
            "worker) or None"
        )
    return value


def check_choice(what: str, value: object, valid: tuple[str, ...]) -> str:
    """``value`` if it is one of ``valid``, else ``ValueError`` listing them."""
    if value not in valid:
        raise ValueError(f"invalid {what} {value!r}: expected one of {', '.join(map(repr, valid))}")
    return str(value)


def check_consistent(prefer: str | None, require: str | None) -> None:
    """``prefer="processes"`` with ``require="sharedmem"`` is a contradiction (as in joblib)."""
    if prefer == "processes" and require == "sharedmem":
        raise ValueError(
            "prefer='processes' and require='sharedmem' are inconsistent settings: process "
            "workers do not share the caller's memory; drop one of them"
        )


def _check_known_options(options: Mapping[str, Any]) -> None:
    """Every ``parallel_config`` backend option is one some registered backend takes."""
    known = frozenset().union(*(entry.options for entry in registered_backends()))
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"unknown backend option(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )


def parse_batch_size(batch_size: object) -> int | _Unset:
    """``"auto"`` (UNSET: tuned from measured durations) or an int >= 1."""
    if batch_size == "auto":
        return UNSET
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"invalid batch_size {batch_size!r}: expected 'auto' or an int >= 1")
    return int(batch_size)


def parse_timeout(timeout: object) -> float:
    """Finite seconds > 0."""
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not 0 < timeout < math.inf  # also rejects nan
    ):
        raise ValueError(
            f"invalid timeout {timeout!r}: expected None (no timeout) or finite seconds > 0"
        )
    return float(timeout)


def parse_verbose(verbose: object) -> int:
    """An int >= 0 (True counts as 1, as in joblib)."""
    if not isinstance(verbose, int) or verbose < 0:
        raise ValueError(f"invalid verbose {verbose!r}: expected an int >= 0")
    return verbose


def parse_progress(progress: object) -> bool | ProgressCallback:
    """A bool or a callable; True needs tqdm."""
    if not (isinstance(progress, bool) or callable(progress)):
        raise ValueError(f"invalid progress {progress!r}: expected a bool or a callable")
    if progress is True:
        try:
            import tqdm  # noqa: F401
        except ImportError:
            raise ImportError(
                "progress=True draws a tqdm bar: pip install 'aioparallel[progress]'"
            ) from None
    return progress


def parse_return_as(return_as: object) -> str:
    """One of `RETURN_MODES`."""
    if return_as not in RETURN_MODES:
        valid = ", ".join(repr(m) for m in RETURN_MODES)
        raise ValueError(f"invalid return_as {return_as!r}: expected one of {valid}")
    return str(return_as)


def check_pre_dispatch(pre_dispatch: object) -> int | str:
    """``pre_dispatch`` as given, once checked (it is counted from each run's workers)."""
    parse_pre_dispatch(pre_dispatch, 1)
    return pre_dispatch  # type: ignore[return-value]


#: ASCII digits only: ``\d`` would also match other scripts' digits, which int() rejects.
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_PRE_DISPATCH = re.compile(
    rf"^\s*(?:(?P<k>{_NUMBER})\s*\*\s*n_jobs|n_jobs(?:\s*\*\s*(?P<k2>{_NUMBER}))?)\s*$"
)
_INT = re.compile(r"^[0-9]+$")


def _exact(number: str) -> Fraction | None:
    """A decimal literal matched by ``_NUMBER``, exactly (no float overflow or underflow);
    None if it has more digits than Python converts (``sys.get_int_max_str_digits``)."""
    try:
        return Fraction(number)
    except ValueError:
        return None


#: Option strings are parsed once per value (every ``Parallel()`` parses its defaults);
#: longer ones, which no one writes twice, are parsed each time and never fill the cache.
_CACHED_TEXT = 64
_INVALID: Any = object()


def _parse_text(parse: functools._lru_cache_wrapper[Any], text: str, *args: Any) -> Any:
    """``parse(text, *args)``, from its cache if ``text`` is short."""
    plain = str.__str__(text)  # the defaults are str subclasses: key the cache by plain str
    return (parse if len(plain) <= _CACHED_TEXT else parse.__wrapped__)(plain, *args)


def parse_pre_dispatch(pre_dispatch: object, n_jobs: int) -> int | None:
    """Tasks allowed in flight: ``None`` for ``"all"``; never ``eval``s the string."""
    if isinstance(pre_dispatch, bool):
        pass
    elif isinstance(pre_dispatch, int):
        if pre_dispatch >= 1:
            return pre_dispatch
    elif isinstance(pre_dispatch, str):
        limit = _parse_text(_pre_dispatch_text, pre_dispatch, n_jobs)
        if limit is not _INVALID:
            return limit  # type: ignore[no-any-return]
    raise ValueError(
        f"invalid pre_dispatch {pre_dispatch!r:.60}: expected 'all', a positive int, "
        "or 'k*n_jobs' with a positive number k (e.g. '2*n_jobs')"
    )


@functools.lru_cache(maxsize=32)
def _pre_dispatch_text(pre_dispatch: str, n_jobs: int) -> Any:
    """A pre_dispatch string's limit (None for ``"all"``), or ``_INVALID``."""
    text = pre_dispatch.strip()
    if text == "all":
        return None
    number, scale = text, 1
    match = _PRE_DISPATCH.match(text)
    if match:
        number, scale = match["k"] or match["k2"] or "1", n_jobs
    k = _exact(number) if match or _INT.match(text) else None
    return max(1, math.floor(k * scale)) if k is not None and k > 0 else _INVALID


_SIZE = re.compile(rf"^\s*({_NUMBER})\s*([KMG]?)B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_max_nbytes(max_nbytes: object) -> int | None:
    """Bytes above which arrays are memmapped: an int, ``'10K'``/``'1M'``/``'1G'``, or None."""
    if max_nbytes is None:
        return None
    if isinstance(max_nbytes, int) and not isinstance(max_nbytes, bool) and max_nbytes >= 0:
        return max_nbytes
    if isinstance(max_nbytes, str):
        size = _parse_text(_size_in_bytes, max_nbytes)
        if size is not None:
            return size  # type: ignore[no-any-return]
    raise ValueError(
        f"invalid max_nbytes {max_nbytes!r:.60}: expected None, a non-negative int, "
        "or a size such as '10K', '1M', '1G'"
    )


@functools.lru_cache(maxsize=32)
def _size_in_bytes(text: str) -> int | None:
    """A size string's bytes, or None if it is not one."""
    match = _SIZE.match(text)
    size = _exact(match[1]) if match else None
    return None if match is None or size is None else math.floor(size * _UNITS[match[2].upper()])


def parse_mmap_mode(mmap_mode: object) -> str:
    """Check ``mmap_mode`` against the numpy.memmap modes aioparallel honours."""
    if mmap_mode not in MMAP_MODES:
        valid = ", ".join(repr(m) for m in MMAP_MODES)
        raise ValueError(f"invalid mmap_mode {mmap_mode!r}: expected one of {valid}")
    return str(mmap_mode)


def parse_worker_concurrency(worker_concurrency: object) -> int:
    """How many async tasks one worker keeps in flight: an int >= 1."""
    if (
        isinstance(worker_concurrency, bool)
        or not isinstance(worker_concurrency, int)
        or worker_concurrency < 1
    ):
        raise ValueError(
            f"invalid worker_concurrency {worker_concurrency!r}: expected an int >= 1 "
            "(async tasks one worker keeps in flight at once)"
        )
    return worker_concurrency


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
        choice = pick_backend(merged, explicit=given.backend is not UNSET)
        entry = choice.entry
        if entry is not None and entry.check_platform is not None:
            entry.check_platform()  # even for n_jobs=1: fail alike at any size
        initializer = merged.get("initializer", None)
        if initializer is not None and choice.obj is not None:
            raise ValueError(
                f"initializer= cannot be given to the backend object {choice.obj!r}, "
                "which starts its own workers: give it a backend name instead"
            )
        options = backend_options(choice.name, merged.backend_options)
        n_jobs_arg = merged.get("n_jobs", None)
        if choice.obj is None:  # joblib's cap on nesting in thread workers
            assert entry is not None
            nested = cap_nesting(entry, explicit=given.backend is not UNSET, n_jobs=n_jobs_arg)
            entry = lookup_backend(nested) if nested != entry.name else entry
        n_jobs = count_workers(choice, entry, given.get("n_jobs", None), n_jobs_arg)
        timeout = merged.get("timeout", None)
        batch_size = merged.get("batch_size", None)
        n_workers = n_jobs
        # One worker, or "sequential": the calls run one after another in the caller's
        # thread; a timeout needs a worker that can be abandoned, so then one thread worker.
        if (
            choice.obj is None
            and entry is not None
            and entry.local
            and (n_jobs == 1 or entry.name == "sequential")
        ):
            entry = lookup_backend("sequential" if timeout is None else "threads")
            n_workers = 1
            if batch_size is None:  # take one item, run it, take the next (as joblib)
                batch_size = 1
        return cls(
            n_jobs_arg=n_jobs_arg,
            n_jobs=n_jobs,
            backend_object=choice.obj,
            entry=None if choice.obj is not None else entry,
            backend_args=BackendArgs(
                n_workers=n_workers,
                n_jobs=n_jobs_arg,
                initializer=initializer,
                options={k: v for k, v in options.items() if entry and k in entry.options},
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
            f"parallel_config option(s) {', '.join(map(repr, foreign))} do not apply to "
            f"backend {name!r} ({described}); drop them or use that backend"
        )
    return MappingProxyType(dict(options))


def count_workers(
    choice: BackendChoice, entry: BackendEntry | None, given: int | None, n_jobs: int | None
) -> int:
    """``Parallel.n_jobs``: a backend object decides (a given ``n_jobs`` must agree); a
    cluster's size is known once entered (0 until then); else ``n_jobs``, 1 by default."""
    obj = choice.obj
    if obj is not None and not (choice.entry is not None and choice.entry.sized_by_cluster):
        if given is not None and parse_n_jobs(given) != obj.n_workers:
            raise ValueError(
                f"n_jobs={given!r} contradicts the backend object {obj!r}, which has "
                f"{obj.n_workers} workers: drop n_jobs or make them agree"
            )
        return obj.n_workers  # a configured n_jobs is only a default
    if n_jobs is None:
        return 0 if entry is not None and entry.sized_by_cluster else 1
    return parse_n_jobs(n_jobs)
