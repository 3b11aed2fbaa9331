"""The half of ``backend="dask"`` that runs inside a dask worker's thread.

Kept apart so a worker imports only what it runs: the standard library, dask's pickle
(already loaded there) and aioparallel's errors.
"""

from __future__ import annotations

import pickle
import threading
import traceback
from collections.abc import Callable
from typing import Any

from distributed.protocol import pickle as dask_pickle

from .._call import function_name
from .._errors import AioParallelError, PicklingError, TaskTimeoutError

__all__ = ["RAISED", "VALUE", "Outcome", "WireCall", "run_calls"]

#: (function, args, kwargs) as submitted: builtin containers, so dask finds the Futures in them.
WireCall = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
#: One call's outcome from the worker: (VALUE, pickled value) or (RAISED, pickled (exc, tb)).
Outcome = tuple[int, bytes]

VALUE, RAISED = 0, 1
#: pickle, falling back to cloudpickle for lambdas and closures (as dask itself does).
_dumps: Callable[..., bytes] = dask_pickle.dumps


def run_calls(
    calls: list[WireCall], start: int, stop_on_error: bool, timeout: float | None
) -> list[Outcome]:
    """Run a batch's calls in order on the worker; never raises.

    Each value and exception is pickled here, one by one, rather than by dask for the whole
    list: an unpicklable result then fails its own task, not the batch.
    """
    outcomes: list[Outcome] = []
    for offset, (func, args, kwargs) in enumerate(calls):
        index = start + offset
        try:
            if timeout is None:
                value = func(*args, **kwargs)
            else:
                value = _call_with_timeout(func, args, kwargs, timeout, index)
        except _Overran as overran:
            outcomes.append(_pack_error(overran.error, None))
        except BaseException as exc:
            outcomes.append(_pack_error(exc, "".join(traceback.format_exception(exc))))
        else:
            try:
                outcomes.append((VALUE, _dumps(value, protocol=pickle.HIGHEST_PROTOCOL)))
                continue
            except Exception as exc:
                error = PicklingError(
                    f"the result of task {index} ({function_name(func)}), "
                    f"a {type(value).__qualname__}, could not be pickled: {exc!r}"
                )
                outcomes.append(_pack_error(error, "".join(traceback.format_exception(exc))))
        if stop_on_error:
            break
    return outcomes


class _Overran(Exception):
    """A call ran past its timeout (wraps the TaskTimeoutError the caller will see)."""

    def __init__(self, error: TaskTimeoutError) -> None:
        super().__init__(str(error))
        self.error = error


def _call_with_timeout(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float,
    index: int,
) -> Any:
    """Run a call in a helper thread, so the worker can give up on it after ``timeout``.

    A thread cannot be stopped: the overrunning call goes on in the background and its
    result is dropped, as with the threads backend.
    """
    box: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            box.append((True, func(*args, **kwargs)))
        except BaseException as exc:
            box.append((False, exc))

    thread = threading.Thread(target=target, name=f"aioparallel-task-{index}", daemon=True)
    thread.start()
    thread.join(timeout)
    if not box:
        raise _Overran(
            TaskTimeoutError(
                f"task {index} ({function_name(func)}) ran longer than timeout={timeout}s "
                "on its dask worker"
            )
        )
    ok, value = box[0]
    if ok:
        return value
    raise value


def _pack_error(exc: BaseException, tb: str | None) -> Outcome:
    """Pickle a task's exception with its traceback text, whatever the exception holds."""
    if not isinstance(exc, Exception):  # SystemExit, KeyboardInterrupt: not the worker's end
        exc = AioParallelError(f"the task raised {exc!r}, which does not stop a dask worker")
    try:
        blob = _dumps((exc, tb), protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt (extra __init__ args)
    except Exception as err:
        stand_in = PicklingError(
            f"the task raised {type(exc).__qualname__}: {exc}, which could not be pickled ({err!r})"
        )
        blob = pickle.dumps((stand_in, tb), protocol=pickle.HIGHEST_PROTOCOL)
    return (RAISED, blob)
