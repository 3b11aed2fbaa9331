"""Large numpy arguments, memmapped: the run's private folder and the pickler that uses it.

An array above ``max_nbytes`` in a job is written once per run (the same object passed to
many calls is written once) to a 0700 folder and replaced in the pickle by a reference that
the worker opens as a read-only ``numpy.memmap``. The folder is removed when the run ends,
on every path; folders still present at interpreter exit are removed then.
"""

from __future__ import annotations

import atexit
import functools
import io
import os
import secrets
import shutil
import sys
import tempfile
import threading
from typing import Any

import cloudpickle

from ._backends._wire import FOLDER_PREFIX, load_memmap, memmap_reference

__all__ = ["JobWriter", "RunFolder", "resolve_temp_base"]

TEMP_FOLDER_ENV = "AIOPARALLEL_TEMP_FOLDER"

_live_folders: set[str] = set()


@atexit.register
def _remove_leftovers() -> None:
    for path in list(_live_folders):
        shutil.rmtree(path, ignore_errors=True)


def resolve_temp_base(temp_folder: str | None) -> str:
    """``temp_folder``, else ``$AIOPARALLEL_TEMP_FOLDER``, else /dev/shm, else the temp dir."""
    return _resolve(temp_folder, os.environ.get(TEMP_FOLDER_ENV))


@functools.lru_cache(maxsize=16)
def _resolve(temp_folder: str | None, from_env: str | None) -> str:
    chosen = temp_folder or from_env
    if chosen:
        if not os.path.isdir(chosen) or not os.access(chosen, os.W_OK | os.X_OK):
            source = "temp_folder" if temp_folder else f"${TEMP_FOLDER_ENV}"
            raise OSError(f"{source} {chosen!r} is not a writable directory")
        return chosen
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


class RunFolder:
    """A run's private folder, named up front, created on first use (by us or a worker)."""

    def __init__(self, temp_folder: str | None):
        self._temp_folder = temp_folder
        self._path: str | None = None
        self._lock = threading.Lock()
        self._arrays: dict[int, tuple[Any, str]] = {}

    @property
    def path(self) -> str:
        """The folder's name (workers create it too, to hand back large results)."""
        if self._path is None:
            base = resolve_temp_base(self._temp_folder)
            self._path = os.path.join(base, f"{FOLDER_PREFIX}{os.getpid()}-{secrets.token_hex(8)}")
            _live_folders.add(self._path)
        return self._path

    def ensure(self) -> str:
        path = self.path
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            st = os.stat(path)
            if st.st_uid != os.getuid() or st.st_mode & 0o077:
                raise OSError(
                    f"temp folder {path!r} exists and is not private to this user"
                ) from None
        return path

    def array_path(self, array: Any) -> str:
        """The file holding ``array``, written on first request (thread-safe)."""
        with self._lock:
            entry = self._arrays.get(id(array))
            if entry is not None and entry[0] is array:
                return entry[1]
            import numpy as np

            fd, path = tempfile.mkstemp(prefix="array-", suffix=".npy", dir=self.ensure())
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, array, allow_pickle=False)
            except BaseException:
                os.unlink(path)
                raise
            self._arrays[id(array)] = (array, path)  # holding the array keeps its id unique
            return path

    def cleanup(self) -> None:
        """Remove the folder and everything in it (blocking: call it off the event loop)."""
        self._arrays.clear()
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            _live_folders.discard(self._path)

    @property
    def exists(self) -> bool:
        return self._path is not None and os.path.lexists(self._path)


class _JobPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, plus large arrays sent by file and our memmaps sent by reference."""

    def __init__(self, file: Any, folder: RunFolder, max_nbytes: int | None, mmap_mode: str):
        super().__init__(file, protocol=5)
        self.folder = folder
        self.max_nbytes = max_nbytes
        self.mmap_mode = mmap_mode

    def reducer_override(self, obj: Any) -> Any:
        np = sys.modules.get("numpy")
        if np is not None and isinstance(obj, np.ndarray):
            reference = memmap_reference(obj)
            if reference is not None:
                return reference
            if (
                self.max_nbytes is not None
                and obj.nbytes > self.max_nbytes
                and not obj.dtype.hasobject
            ):
                return (load_memmap, (self.folder.array_path(obj), self.mmap_mode))
        return super().reducer_override(obj)


class JobWriter:
    """Pickles a job as consecutive pickles that share one memo (a function used by every
    call is written once), so the caller can yield to the event loop between chunks."""

    def __init__(self, folder: RunFolder, max_nbytes: int | None, mmap_mode: str):
        self.buffer = io.BytesIO()
        if "numpy" in sys.modules:
            self._pickler: Any = _JobPickler(self.buffer, folder, max_nbytes, mmap_mode)
        else:
            self._pickler = cloudpickle.Pickler(self.buffer, protocol=5)

    def dump(self, obj: object) -> None:
        self._pickler.dump(obj)

    def getvalue(self) -> bytes:
        return self.buffer.getvalue()
