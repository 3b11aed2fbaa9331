"""The worker protocol's frames and (un)pickling, shared by the parent and the worker.

A frame is a 5-byte header (kind, body length) and a body. Bodies above ``INLINE_LIMIT``
do not cross the pipe: they are written to a file in the run's private folder and the frame
carries the file name. This module imports only the standard library, so a worker starts
fast; numpy and cloudpickle are imported on demand.

Frames, parent -> worker: SETUP (sys.path, cwd, multiprocessing authkey or None, the parent's
logging levels: ``child.observe``), INIT
(a pickled ``(initializer, initargs)``, once, right after SETUP), BATCH / BATCH_FILE (a
pickled job), CANCEL (empty: cancel the job's async tasks; read by the worker's
event loop while a job runs, ignored between jobs).
Worker -> parent: READY (pid), INIT_DONE / INIT_ERROR (a pickled TaskError), LOG (a pickled
list of ``(job position or None, log record attributes)``: what tasks logged, sent before the
results frame of their calls; see ``child.observe``), RESULTS /
RESULTS_FILE (``RESULT_HEADER``, then the job positions of the values as ``count`` ``<I``
numbers, or only the first of them when they are consecutive (flag ``RANGE``), then the
pickled list of values, or the name of the file holding it), LOAD_ERROR (a job could not
be unpickled: traceback text). Positions are explicit because async tasks
finish out of order; the last frame of a job has the done flag set.
"""

from __future__ import annotations

import os
import pickle
import stat
import struct
from typing import Any

# The parent names these in its pickles; it imports them from here, with the frames.
from .arrays import load_memmap as load_memmap
from .arrays import memmap_reference as memmap_reference
from .arrays import open_memmap as open_memmap

HEADER = struct.Struct("<BI")
#: Prefix of a RESULTS / RESULTS_FILE body: number of values, flags (done, RANGE, WROTE);
#: then the positions, or with RANGE the first of ``count`` consecutive ones.
RESULT_HEADER = struct.Struct("<IB")
RANGE = 2
#: Flag: the worker wrote files into the run's folder since its last results frame (so the
#: parent looks for the folder at the run's end; a run whose frames never say so, and whose
#: batches all ended well, wrote none).
WROTE = 4
#: The run folders this worker wrote into since its last results frame (``WROTE``).
wrote_into: set[str] = set()
_POSITION = struct.Struct("<I")
#: A BATCH body starts with the job's slot base (``slot``), so the worker can mark it while
#: loading, and flags: ``SPIN``.
JOB_HEADER = struct.Struct("<qB")
#: Job flag: the machine has a core to spare after this job (nobody waits for a worker, and
#: the pool's busy ones are fewer than its CPUs: ``Pool.spare_core``), so the worker may
#: watch for its next job instead of sleeping.
SPIN = 1

SETUP, BATCH, BATCH_FILE, READY, RESULTS, RESULTS_FILE, LOAD_ERROR, CANCEL = range(1, 9)
INIT, INIT_DONE, INIT_ERROR = range(9, 12)
LOG = 12
INLINE_LIMIT = 1024**2

#: Folder name prefix of every temp folder we create (memmaps, large payloads).
FOLDER_PREFIX = "aioparallel-"


class TempFolderError(OSError):
    """A temp folder we cannot use: missing, not writable, full, or not private to us."""


def ensure_private_dir(path: str) -> str:
    """Create the run's folder (mode 0700), or check that the one there is ours: a real
    directory, not a symlink, owned by this user, closed to everyone else. Both the parent
    and the workers go through here before writing a file into it, so a folder planted at
    that path (by another user, in a shared /dev/shm) is never written into."""
    try:
        os.mkdir(path, 0o700)
        return path
    except FileExistsError:
        pass
    except OSError as exc:
        raise TempFolderError(f"cannot create temp folder {path!r}: {exc.strerror}") from exc
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise TempFolderError(
            f"temp folder {path!r} exists and is not a private directory of this user "
            "(a symlink, another user's, or open to others): refusing to write there"
        )
    return path


class TaskError:
    """A task's exception as it crosses back to the parent, with the worker's traceback."""

    __slots__ = ("exc_bytes", "message", "tb", "type_name")

    def __init__(self, exc_bytes: bytes | None, tb: str, type_name: str, message: str):
        self.exc_bytes = exc_bytes
        self.tb = tb
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskError, (self.exc_bytes, self.tb, self.type_name, self.message))

    @classmethod
    def capture(cls, exc: BaseException) -> TaskError:
        """Called in the worker inside ``except``; pickles the exception if it can."""
        import traceback

        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        exc_bytes: bytes | None
        try:
            exc_bytes = dumps(exc)
            pickle.loads(exc_bytes)  # an exception that pickles but cannot be rebuilt
        except BaseException:
            exc_bytes = None
        return cls(exc_bytes, tb, type(exc).__qualname__, _safe_str(exc))


def _safe_str(obj: object) -> str:
    try:
        return str(obj)
    except BaseException:
        return f"<{type(obj).__name__} with a failing __str__>"


def dumps(obj: object) -> bytes:
    """stdlib pickle when it can (fast), cloudpickle when it must (lambdas, closures)."""
    try:
        return pickle.dumps(obj, protocol=5)
    except Exception:
        import cloudpickle

        return bytes(cloudpickle.dumps(obj, protocol=5))


def results_header(positions: list[int], done: bool, wrote: bool = False) -> bytes:
    """Consecutive ascending positions (a sync job's results: the common case) travel as
    their first one only, with the ``RANGE`` flag."""
    count = len(positions)
    flags = done | (WROTE if wrote else 0)
    if count == 1:  # a one-call job's, and a lone async outcome's: the same bytes as below
        return RESULT_HEADER.pack(1, flags) + _POSITION.pack(positions[0])
    if count > 1 and positions[-1] - positions[0] == count - 1:
        first = positions[0]
        if positions == list(range(first, first + count)):
            return RESULT_HEADER.pack(count, flags | RANGE) + _POSITION.pack(first)
    return RESULT_HEADER.pack(count, flags) + struct.pack(f"<{count}I", *positions)


def wrote_files(body: bytes) -> bool:
    """Whether a RESULTS / RESULTS_FILE body says its worker wrote into the run's folder."""
    return bool(body[RESULT_HEADER.size - 1] & WROTE)


def split_results(body: bytes) -> tuple[range | tuple[int, ...], bool, bytes]:
    """A RESULTS / RESULTS_FILE body as (job positions, done flag, the rest of the body)."""
    count, flags = RESULT_HEADER.unpack_from(body)
    at = RESULT_HEADER.size
    if flags & RANGE:
        first = _POSITION.unpack_from(body, at)[0]
        return range(first, first + count), bool(flags & 1), body[at + _POSITION.size :]
    positions = struct.unpack_from(f"<{count}I", body, at)
    return positions, bool(flags & 1), body[at + 4 * count :]


# -- async outcomes ------------------------------------------------------------------------

#: Seconds a cancelled coroutine may take to finish (its ``finally`` blocks) before its
#: worker is killed (processes) or given up on (threads).
CANCEL_GRACE = 1.0


class TimedOut:
    """An async task's outcome after it ran past its timeout and was cancelled. ``stuck``: it
    did not finish cancelling within ``CANCEL_GRACE`` (its worker must be killed)."""

    __slots__ = ("elapsed", "stuck")

    def __init__(self, elapsed: float, stuck: bool):
        self.elapsed = elapsed
        self.stuck = stuck

    def __reduce__(self) -> tuple[Any, ...]:
        return (TimedOut, (self.elapsed, self.stuck))


# -- blocking frame I/O (the worker's side) --------------------------------------------------


def write_frame(fd: int, kind: int, body: bytes) -> None:
    """One ``write`` for the whole frame, unless the pipe takes only part of it."""
    data = HEADER.pack(kind, len(body)) + body
    written = os.write(fd, data)
    if written < len(data):
        rest = memoryview(data)[written:]
        while rest:
            rest = rest[os.write(fd, rest) :]


def read_exact(fd: int, n: int) -> bytes | None:
    """``n`` bytes, or None at end of file."""
    chunk = os.read(fd, min(n, 1 << 20))
    if len(chunk) == n:  # a frame's header, and the body of all but a large one
        return chunk
    if not chunk:
        return None
    chunks = [chunk]
    n -= len(chunk)
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> tuple[int, bytes] | None:
    header = read_exact(fd, HEADER.size)
    if header is None:
        return None
    kind, length = HEADER.unpack(header)
    body = read_exact(fd, length) if length else b""
    if body is None:
        return None
    return kind, body


def writable_run_dir(run_dir: str) -> str:
    """The run's folder, for a file this worker is about to write there: created or checked
    (``ensure_private_dir``), and noted first in ``wrote_into`` (the next results frame says
    ``WROTE``), as the folder may exist even if the write fails."""
    wrote_into.add(run_dir)
    return ensure_private_dir(run_dir)


def spill(run_dir: str, body: bytes, prefix: str) -> bytes:
    """Write a large body to a private file in ``run_dir``; return its path as the new body."""
    import tempfile

    fd, path = tempfile.mkstemp(prefix=prefix, dir=writable_run_dir(run_dir))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
    except BaseException:
        os.unlink(path)
        raise
    return os.fsencode(path)


def unspill(body: bytes) -> bytes:
    """Read and remove a file written by :func:`spill`."""
    path = os.fsdecode(body)
    try:
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)
