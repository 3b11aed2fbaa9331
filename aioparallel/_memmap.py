"""Large numpy arguments, memmapped: the run's private folder and the pickler that uses it.

An array above ``max_nbytes`` in a job is written to a 0700 folder and replaced in the pickle
by a reference that the worker opens as a read-only ``numpy.memmap``. A file lives while a
dispatched and unfinished batch uses its array (each batch holds a :class:`Lease` on the
arrays it sent); a released file is kept, for reuse, while its array is alive and it is among
the ``KEEP_RELEASED`` most recently released, so the same array passed to many calls is
written once while memory and tmpfs stay bounded by ``pre_dispatch``. The folder is removed
when the run ends, on every path; folders still present at interpreter exit are removed then.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import io
import os
import secrets
import shutil
import sys
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, BinaryIO

import cloudpickle

from ._backends._wire import (
    FOLDER_PREFIX,
    TempFolderError,
    ensure_private_dir,
    load_memmap,
    memmap_reference,
)

__all__ = ["JobWriter", "Lease", "RunFolder", "remove_folders"]

TEMP_FOLDER_ENV = "AIOPARALLEL_TEMP_FOLDER"
#: The RAM-backed default base; a run falls back to the system temp dir when it is full.
SHM_FOLDER = "/dev/shm"
#: Released array files kept for reuse (while their arrays live), per run.
KEEP_RELEASED = 2

_live_folders: set[str] = set()


@atexit.register
def _remove_leftovers() -> None:
    remove_folders(list(_live_folders))


def remove_folders(paths: list[str]) -> None:
    """Remove run folders (blocking). Only a real directory of ours is emptied: something
    planted at its name (a symlink, another user's folder) is unlinked, never followed."""
    for path in paths:
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if os.path.isdir(path) and not os.path.islink(path) and st.st_uid == os.getuid():
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
        _live_folders.discard(path)


@functools.lru_cache(maxsize=4)
def _default_base(shm: str) -> str:
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return tempfile.gettempdir()


def _no_room(exc: OSError, folder: str) -> bool:
    """ENOSPC, or a short write (numpy's ``tofile`` reports one without an errno) on a file
    system that is now full."""
    if exc.errno == errno.ENOSPC:
        return True
    if exc.errno is not None:
        return False
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


class _Closed(Exception):
    """The run has ended: no new file (a pickling thread abandoned by a cancellation)."""


class Lease:
    """The arrays one batch sent, held until the batch is over."""

    __slots__ = ("done", "keys")

    def __init__(self) -> None:
        self.keys: set[int] = set()
        self.done = False


class _File:
    __slots__ = ("array", "path", "ref", "users")

    def __init__(self, path: str, ref: weakref.ref[Any]):
        self.path = path
        self.ref = ref
        self.array: Any = None  # held while batches use it
        self.users = 0


class RunFolder:
    """A run's private folder, named up front (workers write large results there too) and
    created, in the base chosen when it is first needed, on first use by either side."""

    def __init__(self, temp_folder: str | os.PathLike[str] | None):
        self._temp_folder = os.fspath(temp_folder) if temp_folder is not None else None
        self._lock = threading.RLock()  # a weakref callback may run while we hold it
        self._base: tuple[str, str] | None = None
        self._path: str | None = None
        self._paths: list[str] = []  # every name used (a fallback adds one)
        self._closed = False
        self._files: dict[int, _File] = {}
        self._released: OrderedDict[int, None] = OrderedDict()

    def _choose(self) -> tuple[str, str]:
        """(base folder, where that choice came from): checked only when a file is made."""
        if self._base is None:
            from_env = os.environ.get(TEMP_FOLDER_ENV)
            if self._temp_folder:
                self._base = (self._temp_folder, "the temp_folder argument")
            elif from_env:
                self._base = (from_env, f"${TEMP_FOLDER_ENV}")
            else:
                self._base = (_default_base(SHM_FOLDER), "the default")
        return self._base

    @property
    def path(self) -> str:
        """The folder's name (no file system access: a run without files never touches it)."""
        if self._path is None:
            base = self._choose()[0]
            self._path = os.path.join(base, f"{FOLDER_PREFIX}{os.getpid()}-{secrets.token_hex(8)}")
            self._paths.append(self._path)
            _live_folders.add(self._path)
        return self._path

    def _ensure(self) -> str:
        if self._closed:
            raise _Closed
        path = self.path
        try:
            return ensure_private_dir(path)
        except TempFolderError as exc:
            base, source = self._choose()
            if not os.path.isdir(base) or not os.access(base, os.W_OK | os.X_OK):
                message = f"temp folder {base!r} (from {source}) is not a writable directory"
                raise TempFolderError(message) from exc
            raise TempFolderError(f"{exc} (in temp folder {base!r}, from {source})") from exc

    def _fall_back(self) -> bool:
        """Out of room in the default /dev/shm: use the system temp dir, as joblib does."""
        base, source = self._choose()
        fallback = tempfile.gettempdir()
        if source != "the default" or base == fallback:
            return False
        self._base, self._path = (fallback, f"the default ({base} is full)"), None
        return True

    def write_file(self, prefix: str, suffix: str, write: Callable[[BinaryIO], object]) -> str:
        """A new private file in the folder, filled by ``write`` (thread-safe)."""
        with self._lock:
            while True:
                folder = self._ensure()
                try:
                    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
                except OSError as exc:
                    if _no_room(exc, folder) and self._fall_back():
                        continue
                    raise self._error(folder, exc) from exc
                try:
                    with os.fdopen(fd, "wb") as f:
                        write(f)
                    return path
                except OSError as exc:
                    full = _no_room(exc, folder)  # before the partial file goes
                    os.unlink(path)
                    if full and self._fall_back():
                        continue
                    raise self._error(folder, exc) from exc
                except BaseException:
                    os.unlink(path)
                    raise

    def _error(self, folder: str, exc: OSError) -> TempFolderError:
        base, source = self._choose()
        return TempFolderError(
            f"cannot write to temp folder {folder!r} ({exc.strerror or exc}; "
            f"base {base!r} from {source})"
        )

    def array_path(self, array: Any, lease: Lease) -> str:
        """The file holding ``array``, written on first request; ``lease`` holds it."""
        with self._lock:
            if lease.done:
                raise _Closed
            key = id(array)
            entry = self._files.get(key)
            if entry is None or entry.ref() is not array:
                import numpy as np

                path = self.write_file(
                    "array-", ".npy", lambda f: np.save(f, array, allow_pickle=False)
                )
                entry = _File(path, weakref.ref(array, functools.partial(self._collected, key)))
                self._files[key] = entry
            if key not in lease.keys:
                lease.keys.add(key)
                if not entry.users:
                    entry.array = array  # holding it keeps its id unique
                    self._released.pop(key, None)
                entry.users += 1
            return entry.path

    def release(self, lease: Lease) -> list[str]:
        """The batch is over: drop its hold; the files now unused beyond the few kept for
        reuse are returned, for the caller to remove (off the event loop)."""
        doomed: list[str] = []
        with self._lock:
            lease.done = True
            for key in lease.keys:
                entry = self._files.get(key)
                if entry is None:
                    continue
                entry.users -= 1
                if entry.users:
                    continue
                self._released[key] = None
                entry.array = None  # may collect the array: _collected then removes it
            while len(self._released) > KEEP_RELEASED:
                key, _ = self._released.popitem(last=False)
                doomed.append(self._files.pop(key).path)
            lease.keys.clear()
        return doomed

    def _collected(self, key: int, _ref: object) -> None:
        """A released array was garbage collected: its file can go (no one can reuse it)."""
        with self._lock:
            entry = self._files.get(key)
            if entry is None or entry.ref is not _ref:
                return
            del self._files[key]
            self._released.pop(key, None)
        with contextlib.suppress(OSError):
            os.unlink(entry.path)

    def close(self) -> list[str]:
        """No new file from now on; the folders to remove (see :func:`remove_folders`)."""
        with self._lock:
            self._closed = True
            self._files.clear()
            self._released.clear()
            return [path for path in self._paths if os.path.lexists(path)]

    def cleanup(self) -> None:
        """Close and remove the folder and everything in it (blocking)."""
        remove_folders(self.close())


class _JobPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, plus large arrays sent by file and our memmaps sent by reference."""

    def __init__(
        self, file: Any, folder: RunFolder, max_nbytes: int | None, mmap_mode: str, lease: Lease
    ):
        super().__init__(file, protocol=5)
        self.folder = folder
        self.max_nbytes = max_nbytes
        self.mmap_mode = mmap_mode
        self.lease = lease

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
                return (load_memmap, (self.folder.array_path(obj, self.lease), self.mmap_mode))
        return super().reducer_override(obj)


class _Buffer:
    """An in-memory file whose ``write`` is Python code. The C pickler writes a frame at a
    time (64 KB) and pickles ``bytes``/``str`` without running any bytecode, so with a C
    ``write`` a thread pickling a large payload would hold the GIL, and stall the event
    loop, from start to end; a Python call per frame lets the GIL switch."""

    def __init__(self) -> None:
        self._io = io.BytesIO()

    def write(self, data: Any) -> int:
        return self._io.write(data)

    def getvalue(self) -> bytes:
        return self._io.getvalue()


class JobWriter:
    """Pickles a job as consecutive pickles that share one memo (a function used by every
    call is written once), so the caller can yield to the event loop between chunks."""

    def __init__(self, folder: RunFolder, max_nbytes: int | None, mmap_mode: str, lease: Lease):
        self.buffer = _Buffer()
        if "numpy" in sys.modules:
            self._pickler: Any = _JobPickler(self.buffer, folder, max_nbytes, mmap_mode, lease)
        else:
            self._pickler = cloudpickle.Pickler(self.buffer, protocol=5)

    def dump(self, obj: object) -> None:
        self._pickler.dump(obj)

    def getvalue(self) -> bytes:
        return self.buffer.getvalue()
