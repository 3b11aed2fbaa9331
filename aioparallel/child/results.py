"""A worker's results as they cross back: large arrays by file, a result that runs code while
pickled pickled alone as its call returns (so the slot can blame that call), an unpicklable
result replaced by a TaskError saying why. Standard library only; numpy only if loaded."""

from __future__ import annotations

import io
import os
import pickle
import sys
from typing import Any

from . import arrays, protocol
from .slot import CrashSlot


class _ResultPickler(pickle.Pickler):
    """Sends large arrays and memmaps we received by file instead of through the pipe."""

    def __init__(self, file: Any, run_dir: str, max_nbytes: int | None):
        super().__init__(file, protocol=5)
        self.run_dir = run_dir
        self.max_nbytes = max_nbytes

    def reducer_override(self, obj: Any) -> Any:
        np = sys.modules.get("numpy")
        if np is None or not isinstance(obj, np.ndarray):
            return NotImplemented
        reference = arrays.memmap_reference(obj)
        if reference is not None:
            return reference
        if self.max_nbytes is not None and obj.nbytes > self.max_nbytes and not obj.dtype.hasobject:
            import tempfile

            run_dir = protocol.writable_run_dir(self.run_dir)
            fd, path = tempfile.mkstemp(prefix="result-", suffix=".npy", dir=run_dir)
            with os.fdopen(fd, "wb") as f:
                np.save(f, obj, allow_pickle=False)
            return (arrays.load_memmap, (path, "c"))
        return NotImplemented


def dump_results(payload: list[Any], run_dir: str, max_nbytes: int | None) -> bytes:
    if "numpy" not in sys.modules:
        return protocol.dumps(payload)
    buffer = io.BytesIO()
    try:
        _ResultPickler(buffer, run_dir, max_nbytes).dump(payload)
        return buffer.getvalue()
    except BaseException:  # a result's __reduce__ may raise anything: cloudpickle may cope
        return protocol.dumps(payload)


#: Result types whose pickling runs no code of the task's: the next frame pickles them with the
#: others, in one list (the journal keeps a copy pickled alone, or an int or float as itself).
#: Any other result is pickled once, as its call returns, with the slot naming the call.
_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})


class _Pickled:
    """A result pickled on its own as its call returned; unpickled with the frame."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (pickle.loads, (self.data,))


def outcome(
    value: Any, slot: CrashSlot, base: int, position: int, run_dir: str, max_nbytes: int | None
) -> tuple[Any, bytes | float | None]:
    """A sync call's result as its results frame carries it, and as the slot's journal keeps
    it: None, an int or a float as itself, anything else pickled alone. Unless plain (or a
    tuple, list or dict of plain values), it is pickled once, now, while the slot says whose
    result this is: if its ``__reduce__`` kills the worker, the parent blames this call (and
    recovers the kept results of the calls that returned before it)."""
    kind = type(value)
    if value is None or kind is int or kind is float:  # the journal stores these as they are
        return value, value
    if (
        kind in _PLAIN
        or ((kind is tuple or kind is list) and {*map(type, value)} <= _PLAIN)
        or (kind is dict and {*map(type, value), *map(type, value.values())} <= _PLAIN)
    ):
        return value, pickle.dumps(value, protocol=5)
    slot.sending(base, position)
    try:
        if "numpy" in sys.modules:
            buffer = io.BytesIO()
            _ResultPickler(buffer, run_dir, max_nbytes).dump(value)
            data = buffer.getvalue()
        else:
            data = protocol.dumps(value)
        return _Pickled(data), data
    except BaseException:  # a result's __reduce__ may raise anything: cloudpickle may cope
        value = picklable(value)
        data = protocol.dumps(value)
        return (_Pickled(data) if type(value) is not protocol.TaskError else value), data


def picklable(value: Any) -> Any:
    """A value as is if it pickles, else a TaskError saying why (unpicklable results)."""
    try:
        protocol.dumps(value)
        return value
    except BaseException as exc:
        returned = getattr(type(value), "returned_by_task", None)
        if returned is not None:  # an un-awaited Parallel(...)(calls): say how to await it
            return protocol.TaskError.capture(returned(value))
        error = TypeError(f"the result could not be pickled ({type(value).__name__}): {exc}")
        error.__cause__ = exc
        return protocol.TaskError(None, "".join(_format(exc)), "SerializationError", str(error))


def _format(exc: BaseException) -> list[str]:
    import traceback

    return traceback.format_exception(type(exc), exc, exc.__traceback__)
