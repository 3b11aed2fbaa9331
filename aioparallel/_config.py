"""parallel_config (context-local defaults) and the parsing of Parallel's parameters.

Nothing here evaluates a user string: ``pre_dispatch`` and ``max_nbytes`` are parsed with
regular expressions.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable
from contextvars import ContextVar, Token
from fractions import Fraction
from types import MappingProxyType, TracebackType
from typing import Any

from ._system import cpu_count, in_worker
from .backends.base import Backend
from .backends.setup import Initializer

__all__ = [
    "BACKEND_ALIASES",
    "RETURN_MODES",
    "coerce_n_jobs",
    "current_config",
    "make_initializer",
    "effective_n_jobs",
    "parallel_backend",
    "parallel_config",
    "parse_max_nbytes",
    "parse_mmap_mode",
    "parse_n_jobs",
    "parse_pre_dispatch",
    "parse_worker_concurrency",
]

BACKEND_ALIASES: dict[str, str] = {
    "processes": "processes",
    "loky": "processes",
    "multiprocessing": "processes",
    "threads": "threads",
    "threading": "threads",
    "sequential": "sequential",
    "dask": "dask",
}
RETURN_MODES = ("list", "generator", "generator_unordered")
MMAP_MODES = ("r", "r+", "c")
#: Options each backend takes from ``parallel_config(**backend_options)``.
BACKEND_OPTIONS: dict[str, frozenset[str]] = {
    "processes": frozenset({"idle_timeout", "inner_max_num_threads"}),
    "threads": frozenset(),
    "sequential": frozenset(),
    "dask": frozenset({"client", "address"}),
}
PREFER = ("processes", "threads")
REQUIRE = ("sharedmem",)

_config: ContextVar[MappingProxyType[str, Any]] = ContextVar(
    "aioparallel_config", default=MappingProxyType({})
)


def current_config() -> MappingProxyType[str, Any]:
    """The settings of the innermost active ``parallel_config``."""
    return _config.get()


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
    **backend_options
        Passed to the backend: ``client=`` or ``address=`` for ``"dask"``, ``idle_timeout=``
        for ``"processes"``.
    """

    def __init__(
        self,
        backend: Any = None,
        n_jobs: int | None = None,
        *,
        verbose: int | None = None,
        temp_folder: str | None = None,
        max_nbytes: int | str | None = "unset",
        mmap_mode: str | None = None,
        worker_concurrency: int | None = None,
        prefer: str | None = None,
        require: str | None = None,
        inner_max_num_threads: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        **backend_options: Any,
    ) -> None:
        settings: dict[str, Any] = {}
        if initializer is not None or initargs != ():
            settings["initializer"] = make_initializer(initializer, initargs)
        if inner_max_num_threads is not None:
            backend_options["inner_max_num_threads"] = check_thread_cap(inner_max_num_threads)
        known = frozenset().union(*BACKEND_OPTIONS.values())
        unknown = sorted(set(backend_options) - known)
        if unknown:
            raise ValueError(
                f"unknown backend option(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        if prefer is not None:
            settings["prefer"] = check_choice("prefer", prefer, PREFER)
        if require is not None:
            settings["require"] = check_choice("require", require, REQUIRE)
        check_consistent(prefer, require)
        if backend is not None:
            if isinstance(backend, str):
                check_backend_name(backend)
            settings["backend"] = backend
        if n_jobs is not None:
            settings["n_jobs"] = coerce_n_jobs(n_jobs)
        if verbose is not None:
            settings["verbose"] = verbose
        if temp_folder is not None:
            settings["temp_folder"] = temp_folder
        if max_nbytes != "unset":
            parse_max_nbytes(max_nbytes)
            settings["max_nbytes"] = max_nbytes
        if mmap_mode is not None:
            parse_mmap_mode(mmap_mode)
            settings["mmap_mode"] = mmap_mode
        if worker_concurrency is not None:
            settings["worker_concurrency"] = parse_worker_concurrency(worker_concurrency)
        if backend_options:
            outer = dict(_config.get().get("backend_options", {}))
            settings["backend_options"] = {**outer, **backend_options}
        self._settings = settings
        self._tokens: list[Token[MappingProxyType[str, Any]]] = []

    def __enter__(self) -> parallel_config:
        merged = {**_config.get(), **self._settings}
        self._tokens.append(_config.set(MappingProxyType(merged)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _config.reset(self._tokens.pop())

    async def __aenter__(self) -> parallel_config:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


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


def resolve_backend(
    backend: object, prefer: str | None, require: str | None
) -> tuple[str, Backend | None]:
    """(canonical name, backend object or None) from the parameters and the active config.

    ``require="sharedmem"`` turns a configured process (or dask) backend into threads, as in
    joblib; with such a backend passed explicitly it is a ``ValueError``, never a silent switch.
    """
    config = current_config()
    prefer = check_choice("prefer", prefer, PREFER) if prefer else config.get("prefer")
    require = check_choice("require", require, REQUIRE) if require else config.get("require")
    check_consistent(prefer, require)
    explicit = backend is not None
    backend = backend if explicit else config.get("backend")
    obj: Backend | None = None
    if isinstance(backend, str):
        name = check_backend_name(backend)
    elif backend is None:
        name = "sequential" if in_worker() else (prefer or "processes")
    elif isinstance(backend, Backend):
        name, obj = backend.name, backend
    elif is_mp_context(backend):
        name = "processes"
    else:
        raise ValueError(
            f"Invalid backend: {backend!r}; expected a backend name or a Backend object"
        )
    if require == "sharedmem" and name not in ("threads", "sequential"):
        if explicit:
            raise ValueError(
                f"require='sharedmem' needs calls that share the caller's memory: backend "
                f"{backend!r} does not support shared memory; pass backend='threads' (or "
                "'sequential'), or no backend to let require pick threads"
            )
        return "threads", None
    return name, obj


def is_mp_context(backend: object) -> bool:
    """A ``multiprocessing`` context (or the module itself), which joblib accepts as a backend
    (recognised as joblib does, by its ``Pool`` and ``Lock``). It means the process backend:
    our workers are fresh interpreters whatever the start method, so none has to be chosen."""
    return hasattr(backend, "Pool") and hasattr(backend, "Lock")


def backend_options(name: str) -> dict[str, Any]:
    """The active ``parallel_config`` backend options, all of which backend ``name`` must
    take: an option for another backend is a ``ValueError``, never silently dropped."""
    options: dict[str, Any] = dict(current_config().get("backend_options", {}))
    foreign = sorted(set(options) - BACKEND_OPTIONS.get(name, frozenset()))
    if foreign:
        takers = {
            option: [b for b, known in BACKEND_OPTIONS.items() if option in known]
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
    return options


def check_backend_name(name: str) -> str:
    """The canonical backend name for ``name``, or ``ValueError`` listing the valid ones.

    ``"dask"`` without ``distributed`` installed fails here, when the backend is chosen,
    rather than at the first call."""
    try:
        canonical = BACKEND_ALIASES[name]
    except KeyError:
        valid = ", ".join(repr(n) for n in BACKEND_ALIASES)
        raise ValueError(f"Invalid backend: {name!r}; valid backends: {valid}") from None
    if canonical == "dask" and not _distributed_installed():
        raise ValueError(
            "backend='dask' runs the calls on a dask.distributed cluster, but distributed "
            "is not installed. Please install dask: pip install 'aioparallel[dask]'"
        )
    return canonical


def _distributed_installed() -> bool:
    """Whether ``import distributed`` can find the package (without importing it: ~1 s)."""
    from importlib.util import find_spec

    try:
        return find_spec("distributed") is not None
    except (ImportError, ValueError):  # a finder refusing it; a broken sys.modules entry
        return False


def check_consistent(prefer: str | None, require: str | None) -> None:
    """``prefer="processes"`` with ``require="sharedmem"`` is a contradiction (as in joblib)."""
    if prefer == "processes" and require == "sharedmem":
        raise ValueError(
            "prefer='processes' and require='sharedmem' are inconsistent settings: process "
            "workers do not share the caller's memory; drop one of them"
        )


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


#: Async tasks one worker keeps in flight by default; see docs/async-tasks.md for
#: the measurement behind it.
DEFAULT_WORKER_CONCURRENCY = 16


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
    from ._nesting import cap_nesting

    if n_jobs is None:
        n_jobs = current_config().get("n_jobs")
        if n_jobs is None:
            return 1
    count = parse_n_jobs(n_jobs)
    name, obj = resolve_backend(None, None, None)
    if obj is not None:
        return max(1, obj.n_workers)
    if cap_nesting(name, explicit=False, n_jobs=count) == "sequential":
        return 1
    return count
