"""Arrays across the worker boundary: a large array the parent wrote to a file arrives as a
``numpy.memmap`` of it, and a memmap whose file is still there travels by file name and
offset instead of by content. Pickles made on either side name these functions, so the
worker imports them by name: numpy is imported only when one is called (a worker that
never receives an array never imports it).
"""

from __future__ import annotations

import os
import sys
from typing import Any


def load_memmap(path: str, mmap_mode: str) -> Any:
    """Rebuild an array written by the parent (``numpy.save``) as a ``numpy.memmap``."""
    import numpy as np

    return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)  # type: ignore[arg-type]


def open_memmap(path: str, dtype: Any, shape: Any, order: str, offset: int, mode: str) -> Any:
    """Open (a view of) a file the caller had memory-mapped, as a ``numpy.memmap``."""
    import numpy as np

    return np.memmap(path, dtype=dtype, mode=mode, offset=offset, shape=shape, order=order)  # type: ignore[call-overload]


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
