"""One parser per parameter value: each checks a value and returns it parsed, or raises the
``ValueError`` that names the parameter, the value and what it accepts.

Nothing here evaluates a user string: ``pre_dispatch`` and ``max_nbytes`` are parsed with
regular expressions.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from ._system import cpu_count
from .backends.setup import Initializer

if TYPE_CHECKING:
    from .run.progress import ProgressCallback

__all__ = [
    "DEFAULT_WORKER_CONCURRENCY",
    "MMAP_MODES",
    "PREFER",
    "REQUIRE",
    "RETURN_MODES",
    "check_choice",
    "check_consistent",
    "check_pre_dispatch",
    "check_thread_cap",
    "check_max_tasks",
    "coerce_n_jobs",
    "is_mp_context",
    "make_initializer",
    "parse_batch_size",
    "parse_max_nbytes",
    "parse_max_worker_memory",
    "parse_mmap_mode",
    "parse_n_jobs",
    "parse_pre_dispatch",
    "parse_progress",
    "parse_return_as",
    "parse_timeout",
    "parse_verbose",
    "parse_worker_concurrency",
]

RETURN_MODES = ("list", "generator", "generator_unordered")
MMAP_MODES = ("r", "r+", "c")
PREFER = ("processes", "threads")
REQUIRE = ("sharedmem",)
#: Async tasks one worker keeps in flight by default; see docs/async-tasks.md for
#: the measurement behind it.
DEFAULT_WORKER_CONCURRENCY = 16


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


def check_max_tasks(value: object) -> int:
    """``max_tasks_per_worker``: an int >= 1 (not a bool), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"invalid max_tasks_per_worker {value!r:.60}: expected an int >= 1 (calls a process "
            "worker runs before it is replaced) or None"
        )
    return value


def parse_max_worker_memory(value: object) -> int:
    """``max_worker_memory``: bytes > 0, as an int or a size such as ``'512M'``, ``'2G'``."""
    size = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str):
        size = _parse_text(_size_in_bytes, value)
    if size is None or size <= 0:
        raise ValueError(
            f"invalid max_worker_memory {value!r:.60}: expected None, an int of bytes > 0, "
            "or a size such as '512M', '2G'"
        )
    return int(size)


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


def is_mp_context(backend: object) -> bool:
    """A ``multiprocessing`` context (or the module itself), which joblib accepts as a backend
    (recognised as joblib does, by its ``Pool`` and ``Lock``). It means the process backend:
    our workers are fresh interpreters whatever the start method, so none has to be chosen."""
    return hasattr(backend, "Pool") and hasattr(backend, "Lock")


def parse_batch_size(batch_size: object) -> int | None:
    """``"auto"`` (None: tuned from measured durations) or an int >= 1."""
    if batch_size == "auto":
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"invalid batch_size {batch_size!r}: expected 'auto' or an int >= 1")
    return int(batch_size)
