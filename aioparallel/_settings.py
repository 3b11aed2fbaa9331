"""``Parallel``'s and ``parallel_config``'s parameters, parsed and checked once, in one object.

::

    Parallel(...), parallel_config(...)     the documented signatures
          │ Settings.parse: each value given is checked and parsed; the rest are UNSET
          ▼
       Settings ── over(the active config) ──▶ Settings   (what parallel_config stores)
          │ Plan.make (``_plan``): defaults filled in, the backend picked from the
          │            registry (prefer / require, its nesting rule, one worker), n_jobs
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

from ._parsing import (
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
    parse_progress,
    parse_return_as,
    parse_timeout,
    parse_verbose,
    parse_worker_concurrency,
)
from .backends.base import (
    Backend,
    BackendEntry,
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
    "Settings",
    "parse_backend",
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
