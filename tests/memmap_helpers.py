"""Task functions for the memmap tests (module level, so workers import them by name)."""

from __future__ import annotations

import os
import stat
import threading
import time
from typing import Any

import numpy as np

#: Names of the parent's threads that pickled a RecordsPickling object.
PICKLED_IN: list[str] = []


class RecordsPickling:
    """Notes which thread pickles it (in the parent process)."""

    def __reduce__(self) -> tuple[Any, ...]:
        PICKLED_IN.append(threading.current_thread().name)
        return (RecordsPickling, ())


def describe(arr: Any, *_: Any) -> tuple[str, str | None, str | None, float]:
    """What the worker received: type name, backing file, mmap mode, and a checksum."""
    filename = getattr(arr, "filename", None)
    return type(arr).__name__, filename, getattr(arr, "mode", None), float(np.asarray(arr).sum())


def describe_nested(payload: dict[str, Any]) -> list[str]:
    """Type names of the arrays inside a nested structure."""
    inner = payload["inner"]
    return [type(payload["direct"]).__name__, *(type(a).__name__ for a in inner)]


def folder_mode(arr: Any) -> int:
    """Permission bits of the folder holding ``arr``'s backing file."""
    return stat.S_IMODE(os.stat(os.path.dirname(arr.filename)).st_mode)


def try_write(arr: Any) -> str:
    try:
        arr[0] = 42.0
    except ValueError as exc:
        return f"read-only: {exc}"
    return "written"


def make_array(n: int) -> Any:
    return np.arange(n, dtype=np.float64)


def pass_on(arr: Any) -> Any:
    """Return the received memmap itself (it must come back without a copy through the pipe)."""
    return arr


def fail_with_array(arr: Any) -> None:
    raise ValueError(f"task saw {arr.shape}")


def crash_with_array(arr: Any) -> None:
    os._exit(7)


def sleep_with_array(arr: Any, flag: str) -> None:
    with open(flag, "w") as f:
        f.write(str(arr.filename))
    time.sleep(30)


def resident_kb_then_touch(arr: Any) -> int:
    """How much of ``arr``'s file this worker holds resident (``/proc/self/smaps``, KB) as
    the call starts; then every page of it is read, as a call that uses it all would."""
    resident, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and ":" not in fields[0]:  # a mapping's header line
                inside = fields[-1] == arr.filename
            elif inside and fields[0] == "Rss:":
                resident += int(fields[1])
    float(np.asarray(arr).sum())
    return resident
