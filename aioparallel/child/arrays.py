"""Arrays across the worker boundary: a large array the parent wrote to a file arrives as a
``numpy.memmap`` of it, and a memmap whose file is still there travels by file name and
offset instead of by content. Pickles made on either side name these functions, so the
worker imports them by name: numpy is imported only when one is called (a worker that
never receives an array never imports it).

A job's calls share each memmap it carries (one object through the pickle's memo), so the
worker hands the pages a call read back to the file when the call returns (``drop_pages``):
else a batch of calls that each read a slice of one large array would keep the whole
array resident until the batch ends.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
import weakref
from typing import Any

#: ``madvise`` advice that unmaps pages from this process only (None where unavailable).
_DONTNEED: int | None = getattr(mmap, "MADV_DONTNEED", None)
#: Modes whose mapping is shared with the file: a dropped page comes back from it as it was.
#: Not "c": its pages are the call's private copies, which dropping would lose.
_SHARED_MODES = frozenset({"r", "r+", "w+"})


def load_memmap(path: str, mmap_mode: str) -> Any:
    """Rebuild an array written by the parent (``numpy.save``) as a ``numpy.memmap``."""
    import numpy as np

    return _note(np.load(path, mmap_mode=mmap_mode, allow_pickle=False))  # type: ignore[arg-type]


def open_memmap(path: str, dtype: Any, shape: Any, order: str, offset: int, mode: str) -> Any:
    """Open (a view of) a file the caller had memory-mapped, as a ``numpy.memmap``."""
    import numpy as np

    array = np.memmap(path, dtype=dtype, mode=mode, offset=offset, shape=shape, order=order)  # type: ignore[call-overload]
    return _note(array)


def memmap_reference(obj: Any) -> tuple[Any, ...] | None:
    """Send a contiguous memmap (or contiguous view of one) by file name and offset instead
    of by content, if its file is still there. Else None."""
    np = sys.modules.get("numpy")
    if np is None or not isinstance(obj, np.memmap) or not obj.size:
        return None
    mapped, filename = getattr(obj, "_mmap", None), getattr(obj, "filename", None)
    if mapped is None or not filename or not (obj.flags.c_contiguous or obj.flags.f_contiguous):
        return None
    if not os.path.exists(filename):  # e.g. a result of a run whose folder is gone
        return None
    address = obj.__array_interface__["data"][0]
    try:
        start = np.frombuffer(mapped, dtype=np.uint8).__array_interface__["data"][0]
    except (ValueError, TypeError):  # a closed mapping
        return None
    import mmap

    mapped_from = obj.offset - obj.offset % mmap.ALLOCATIONGRANULARITY
    order = "C" if obj.flags.c_contiguous else "F"
    mode = "r+" if obj.mode == "w+" else obj.mode
    return (
        open_memmap,
        (filename, obj.dtype, obj.shape, order, mapped_from + address - start, mode),
    )


#: While a job unpickles (``noting``): the thread unpickling it, and the list the file
#: mappings of its memmaps are noted in. A module variable, not an ``Unpickler`` subclass
#: whose ``find_class`` watches for these functions: that Python method would run for every
#: class and function of every job, memmaps or not.
_noting: tuple[int, list[weakref.ref[mmap.mmap]]] | None = None


def noting(mapped: list[weakref.ref[mmap.mmap]] | None) -> None:
    """Note in ``mapped`` the shared mappings of the memmaps this thread unpickles from now
    on (None: stop)."""
    global _noting
    _noting = None if mapped is None or _DONTNEED is None else (threading.get_ident(), mapped)


def _note(array: Any) -> Any:
    noting = _noting
    if noting is not None and noting[0] == threading.get_ident():
        mapping = getattr(array, "_mmap", None)
        if isinstance(mapping, mmap.mmap) and getattr(array, "mode", None) in _SHARED_MODES:
            noting[1].append(weakref.ref(mapping))
    return array


def drop_pages(mapped: list[weakref.ref[mmap.mmap]]) -> None:
    """Unmap the pages of the job's shared memmaps from this process (between calls): a
    later read maps them again from the file, and writes are already in it (``r+``)."""
    for ref in mapped:
        mapping = ref()
        if mapping is not None:
            try:
                mapping.madvise(_DONTNEED)  # type: ignore[arg-type]
            except (ValueError, OSError):  # closed by a task, or refused: keep the pages
                pass
