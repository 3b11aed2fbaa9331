"""Large numpy arguments, memmapped: the run's private folder and the pickler that uses it.

An array above ``max_nbytes`` in a job is written to a 0700 folder and replaced in the pickle
by a reference that the worker opens as a read-only ``numpy.memmap``. A file lives while a
dispatched and unfinished batch uses its array (each batch holds a :class:`Lease` on the
arrays it sent); a released file is kept, for reuse, while its array is alive and it is among
the ``KEEP_RELEASED`` most recently released, so the same array passed to many calls is
written once while memory and tmpfs stay bounded by ``pre_dispatch``. The folder is removed
when the run ends, on every path; folders still present at interpreter exit are removed then,
and those of a program killed by a signal by the folder tracker (``tracker``).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import io
import os
import shutil
import sys
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, BinaryIO

import cloudpickle

from ..._system import FEATURES
from ...child.protocol import (
    FOLDER_PREFIX,
    TempFolderError,
    ensure_private_dir,
    load_memmap,
    memmap_reference,
)
from . import tracker

__all__ = ["JobWriter", "Lease", "RunFolder", "remove_folders"]

TEMP_FOLDER_ENV = "AIOPARALLEL_TEMP_FOLDER"
#: The RAM-backed default base (where ``FEATURES.dev_shm`` says it is used); a run falls back
#: to the system temp dir when it is full, or without it (macOS).
SHM_FOLDER = "/dev/shm"
#: Released array files kept for reuse (while their arrays live), per run.
KEEP_RELEASED = 2

#: This process's run folders that may exist: named by a live run, or left by an ended one
#: and not yet removed. A name leaves it when its folder is removed, or at the run's end if
#: nothing made it. A forked child starts with none: it owns none of its parent's folders.
_live_folders: set[str] = set()


@atexit.register
def _remove_leftovers() -> None:
    remove_folders(list(_live_folders))


#: Names of ended runs' folders that nobody made, by base: the next runs take them (naming a
#: folder is a tenth of a one-call run). A name is given to one run at a time, and never again
#: once anything may have been written under it.
_spare_names: dict[str, list[str]] = {}
SPARE_NAMES = 8


def _forget_after_fork() -> None:
    """The child's exit must not remove the folders of its parent's runs, nor its runs use
    their names."""
    _live_folders.clear()
    _spare_names.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


#: Files at least this large are unlinked while this process holds them open, and closed in
#: a thread of their own, which frees their pages: a 400 MB file's took ~50 ms to free, which
#: the end of the run would otherwise wait for. The files are gone from the folder at once;
#: if this process dies first, the kernel frees their pages as it closes its files.
FREE_LATER_BYTES = 8 * 1024**2


def remove_folders(paths: list[str]) -> None:
    """Remove run folders (blocking). Only a real directory of ours is emptied: something
    planted at its name (a symlink, another user's folder) is unlinked, never followed."""
    held: list[int] = []
    for path in paths:
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if os.path.isdir(path) and not os.path.islink(path) and st.st_uid == os.getuid():
                held += _hold_large_files(path)
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
        _live_folders.discard(path)
    if held:
        _close_later(held)


def _hold_large_files(folder: str) -> list[int]:
    """Descriptors of the large regular files in ``folder`` (``FREE_LATER_BYTES``)."""
    fds: list[int] = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if (
                    entry.is_file(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_size >= FREE_LATER_BYTES
                ):
                    fds.append(os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)))
    return fds


def _close_later(fds: list[int]) -> None:
    """Close ``fds`` (their unlinked files' pages are freed then) in a thread of their own;
    at once if no thread can start (the interpreter is exiting)."""

    def close() -> None:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    try:
        threading.Thread(target=close, name="aioparallel-free-pages", daemon=True).start()
    except RuntimeError:
        close()


@functools.lru_cache(maxsize=4)
def _default_base(shm: str) -> str:
    if FEATURES.dev_shm and os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
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
    __slots__ = ("array", "path", "ref", "users", "written")

    def __init__(self, ref: weakref.ref[Any]):
        self.path: str | None = None  # None while it is being written
        self.ref = ref
        self.array: Any = None  # held while batches use it
        self.users = 0
        self.written = threading.Event()  # written, or given up: look again


class RunFolder:
    """A run's private folder, named up front (workers write large results there too) and
    created, in the base chosen when it is first needed, on first use by either side.

    The lock guards the bookkeeping only, never a file system call: a thread writing a
    large array holds no lock, so ``release`` and the weakref callbacks, which run on the
    event loop, never wait for a write. A write under way when the run closes removes the
    folder itself when it ends (``close`` counts on it). Only the process that made the run
    removes anything: a forked child that inherits it owns none of its files.
    """

    def __init__(self, temp_folder: str | os.PathLike[str] | None):
        self._temp_folder = os.fspath(temp_folder) if temp_folder is not None else None
        self._owner = os.getpid()
        self._lock = threading.RLock()  # a weakref callback may run while we hold it
        self._base: tuple[str, str] | None = None
        self._path: str | None = None
        self._paths: list[str] = []  # every name used (a fallback adds one)
        self._closed = False
        self._writing = 0  # files being written now (outside the lock)
        #: Whether a file may have been made in the folder: by this process (``_ensure``),
        #: or by a worker (``may_exist``). Until then ``close`` need not look for it.
        self._wrote = False
        self._files: dict[int, _File] = {}
        self._released: OrderedDict[int, None] = OrderedDict()

    def _owned(self) -> bool:
        return os.getpid() == self._owner

    def _choose(self) -> tuple[str, str]:
        """(base folder, where that choice came from): checked only when a file is made."""
        if self._base is None:
            if self._temp_folder:
                self._base = (self._temp_folder, "the temp_folder argument")
            elif from_env := os.environ.get(TEMP_FOLDER_ENV):
                self._base = (from_env, f"${TEMP_FOLDER_ENV}")
            else:
                self._base = (_default_base(SHM_FOLDER), "the default")
        return self._base

    @property
    def path(self) -> str:
        """The folder's name (no file system access: a run without files never touches it).
        Naming it registers it, and has the folder tracker watch its base."""
        path = self._path  # named already: the common case, without the lock
        return path if path is not None else self._name()

    def _name(self) -> str:
        base = None
        with self._lock:
            if self._path is None:
                base = self._choose()[0]
                try:
                    self._path = _spare_names[base].pop()
                except (KeyError, IndexError):
                    name = f"{FOLDER_PREFIX}{self._owner}-{os.urandom(8).hex()}"
                    self._path = os.path.join(base, name)
                self._paths.append(self._path)
                _live_folders.add(self._path)
            path = self._path
        if base is not None:
            tracker.watch(base)  # the first time in this process: starts the tracker
        return path

    def may_exist(self) -> None:
        """A worker may have written into the folder (its results frame said so, or its batch
        ended before its last frame: a crash, a kill, a cancellation)."""
        self._wrote = True

    def _ensure(self, folder: str) -> None:
        self._wrote = True  # first: a failed attempt may leave the folder
        try:
            ensure_private_dir(folder)
        except TempFolderError as exc:
            base, source = self._choose()
            if not os.path.isdir(base) or not os.access(base, os.W_OK | os.X_OK):
                message = f"temp folder {base!r} (from {source}) is not a writable directory"
                raise TempFolderError(message) from exc
            raise TempFolderError(f"{exc} (in temp folder {base!r}, from {source})") from exc

    def _fall_back(self, folder: str) -> bool:
        """Out of room in the default /dev/shm: use the system temp dir, as joblib does.
        True: try again (also when another write has moved the run already)."""
        with self._lock:
            if folder != self._path:
                return True
            base, source = self._choose()
            fallback = tempfile.gettempdir()
            if source != "the default" or base == fallback:
                return False
            self._base, self._path = (fallback, f"the default ({base} is full)"), None
            return True

    def write_file(self, prefix: str, suffix: str, write: Callable[[BinaryIO], object]) -> str:
        """A new private file in the folder, filled by ``write`` (thread-safe)."""
        while True:
            folder = self.path
            with self._lock:
                if self._closed or not self._owned():
                    raise _Closed
                if folder != self._path:
                    continue  # a write out of room has just moved the run
                self._writing += 1
            try:
                path = self._write(folder, prefix, suffix, write)
            finally:
                self._done_writing()
            if path is not None:
                return path

    def _write(
        self, folder: str, prefix: str, suffix: str, write: Callable[[BinaryIO], object]
    ) -> str | None:
        """One attempt, holding no lock; None: out of room, the run has moved (try again)."""
        self._ensure(folder)
        try:
            fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
        except OSError as exc:
            if _no_room(exc, folder) and self._fall_back(folder):
                return None
            raise self._error(folder, exc) from exc
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            return path
        except OSError as exc:
            full = _no_room(exc, folder)  # before the partial file goes
            os.unlink(path)
            if full and self._fall_back(folder):
                return None
            raise self._error(folder, exc) from exc
        except BaseException:
            os.unlink(path)
            raise

    def _done_writing(self) -> None:
        with self._lock:
            self._writing -= 1
            orphaned = self._closed and not self._writing
        if orphaned:  # the run ended while we wrote: its folder is ours to remove
            remove_folders(self._leftovers())

    def _error(self, folder: str, exc: OSError) -> TempFolderError:
        base, source = self._choose()
        return TempFolderError(
            f"cannot write to temp folder {folder!r} ({exc.strerror or exc}; "
            f"base {base!r} from {source})"
        )

    def array_path(self, array: Any, lease: Lease) -> str:
        """The file holding ``array``, written on first request; ``lease`` holds it. A
        second request while it is being written waits for that write (in its own pickling
        thread: large arrays are never pickled on the event loop)."""
        key = id(array)
        while True:
            with self._lock:
                if lease.done or self._closed:
                    raise _Closed
                entry = self._files.get(key)
                if entry is not None and entry.ref() is array:
                    if entry.path is not None:
                        self._take(key, entry, array, lease)
                        return entry.path
                    writer = False
                else:
                    entry = _File(weakref.ref(array, functools.partial(self._collected, key)))
                    self._files[key] = entry
                    writer = True
            if writer:
                return self._write_array(key, entry, array, lease)
            entry.written.wait()  # then look again: written, or given up (write it here)

    def _write_array(self, key: int, entry: _File, array: Any, lease: Lease) -> str:
        import numpy as np

        try:
            path = self.write_file(
                "array-", ".npy", lambda f: np.save(f, array, allow_pickle=False)
            )
        except BaseException:
            with self._lock:
                if self._files.get(key) is entry:
                    del self._files[key]
            entry.written.set()
            raise
        with self._lock:
            keep = self._files.get(key) is entry and not self._closed and not lease.done
            if keep:
                entry.path = path
                self._take(key, entry, array, lease)
        entry.written.set()
        if not keep:  # the run ended meanwhile: nobody will read it
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise _Closed
        return path

    def _take(self, key: int, entry: _File, array: Any, lease: Lease) -> None:
        """``lease`` holds ``entry`` (under the lock)."""
        if key not in lease.keys:
            lease.keys.add(key)
            if not entry.users:
                entry.array = array  # holding it keeps its id unique
                self._released.pop(key, None)
            entry.users += 1

    def release(self, lease: Lease) -> list[str]:
        """The batch is over: drop its hold; the files now unused beyond the few kept for
        reuse are returned, for the caller to remove (off the event loop)."""
        doomed: list[str] = []
        dropped: list[Any] = []
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
                dropped.append(entry.array)
                entry.array = None
            while len(self._released) > KEEP_RELEASED:
                key, _ = self._released.popitem(last=False)
                path = self._files.pop(key).path
                if path is not None:
                    doomed.append(path)
            lease.keys.clear()
        dropped.clear()  # may collect the arrays, outside the lock: _collected removes them
        return doomed if self._owned() else []

    def _collected(self, key: int, _ref: object) -> None:
        """A released array was garbage collected: its file can go (no one can reuse it)."""
        with self._lock:
            entry = self._files.get(key)
            if entry is None or entry.ref is not _ref:
                return
            del self._files[key]
            self._released.pop(key, None)
        if entry.path is not None and self._owned():
            with contextlib.suppress(OSError):
                os.unlink(entry.path)

    def close(self) -> list[str]:
        """No new file from now on; the folders to remove now (see :func:`remove_folders`).
        A write still under way removes them itself when it ends; a forked child, none."""
        with self._lock:
            self._closed = True
            self._files.clear()
            self._released.clear()
            if self._writing or not self._paths or not self._owned():
                return []  # (no name given out: nothing can have made a folder)
            if not self._wrote:  # named, never written into: nothing to look for
                _live_folders.difference_update(self._paths)
                if len(self._paths) == 1 and self._base is not None:  # for the next run
                    spare = _spare_names.setdefault(self._base[0], [])
                    if len(spare) < SPARE_NAMES:
                        spare.append(self._paths[0])
                return []
        return self._leftovers()

    def _leftovers(self) -> list[str]:
        """The run's folders that exist; the names of the others leave the registry."""
        with self._lock:
            paths = list(self._paths)
        existing = []
        for path in paths:
            if os.path.lexists(path):
                existing.append(path)
            else:
                _live_folders.discard(path)
        return existing


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
