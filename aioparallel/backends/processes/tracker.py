"""The folder tracker: a small process that removes this program's run folders once the
program is gone, however it ended: a normal exit, SIGTERM, SIGKILL, a crash.

A program's run folders are all named ``aioparallel-<its pid>-<token>`` (the workers write
their large results into the same folder), so the tracker needs to know only the base
folders they are made in. It reads them from a pipe whose write end only this program holds
(close on exec, and closed in a forked child). End of file on that pipe means every copy is
closed: the program has exited or been killed. The tracker then waits until the program is
gone (it is no longer its parent), removes the program's folders in those bases, and once
more half a second later, for a file a dying worker was writing at that moment. A program
that closed the pipe and still runs (an ``exec``, a daemon closing every descriptor) keeps
its folders: the tracker exits without touching them.

Both sides are in this file. The parent side starts the tracker lazily, once per process,
when a run first names a folder (``watch``): one process spawn, the first time only; a
later base is one write to the pipe. The tracker side is standard library only and runs as
a script (``python -I -S``), without the package, its dependencies or the user's site.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

__all__ = ["pid", "start", "watch"]

#: After end of file, how long the tracker waits for the program to be gone.
EXIT_WAIT = 10.0
#: The second sweep, after this many seconds (a dying worker's last file).
SECOND_SWEEP = 0.5

_lock = threading.Lock()
_fd = -1  # the pipe's write end, or -1 before start (or after a fork)
_tracker: subprocess.Popen[bytes] | None = None  # kept while it runs
_watched: set[str] = set()
_failed = False  # it could not be started here: do not try on every run


def watch(base: str) -> None:
    """Have the tracker remove this process's run folders in ``base`` once it is gone."""
    if base in _watched:
        return
    with _lock:
        if base in _watched or _failed:
            return
        _watched.add(base)
        _send([base])


def start() -> None:
    """Start the tracker now if it is not running (a test session does, up front, so that
    its process and pipe are in every leak-check snapshot)."""
    with _lock:
        if _fd < 0 and not _failed:
            _send([])


def pid() -> int | None:
    """The tracker's pid while it runs (tests tell it from the workers by this)."""
    tracker = _tracker
    return tracker.pid if tracker is not None and _fd >= 0 else None


def _send(bases: list[str]) -> None:
    """Write ``bases`` to the tracker, starting it (again, with every base) if needed."""
    global _failed
    message = b"".join(os.fsencode(base) + b"\0" for base in bases)
    for _attempt in range(2):
        try:
            if _fd < 0:
                _spawn()
                message = b"".join(os.fsencode(base) + b"\0" for base in _watched)
            view = memoryview(message)
            while view:
                view = view[os.write(_fd, view) :]
            return
        except OSError:  # it died (EPIPE), or cannot be started: once more, then give up
            _close()
    _failed = True  # interpreter exit still removes the folders (atexit)


def _spawn() -> None:
    global _fd, _tracker
    import subprocess

    from ...child.protocol import FOLDER_PREFIX

    read, write = os.pipe()
    try:
        _tracker = subprocess.Popen(
            [sys.executable, "-I", "-S", __file__, str(os.getpid()), FOLDER_PREFIX],
            stdin=read,
            stdout=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,  # Ctrl-C or a kill of our process group spares it
        )
    except BaseException:
        os.close(write)
        raise
    finally:
        os.close(read)
    _fd = write


def _close() -> None:
    global _fd, _tracker
    if _fd >= 0:
        os.close(_fd)
    _fd, _tracker = -1, None


def _forget_after_fork() -> None:
    """A forked child neither holds the parent's pipe open (the parent's end of file would
    wait for the child) nor tells the parent's tracker anything: its folders, named with
    its own pid, get a tracker of their own when it first needs one."""
    global _lock, _watched, _failed
    _lock = threading.Lock()
    _close()
    _watched = set()
    _failed = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


# -- the tracker process ----------------------------------------------------------------------


def _sweep(bases: set[bytes], prefix: bytes) -> None:
    """Remove the program's folders: real directories of ours only, never a link followed."""
    import shutil
    import stat

    for base in bases:
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            if not name.startswith(prefix):
                continue
            path = os.path.join(base, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
                shutil.rmtree(path, ignore_errors=True)


def _main(pid: int, prefix: str) -> None:
    import signal
    import time

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # outlive the program
        signal.signal(signum, signal.SIG_IGN)
    bases: set[bytes] = set()
    pending = b""
    while chunk := os.read(0, 65536):
        *names, pending = (pending + chunk).split(b"\0")
        bases.update(names)
    deadline = time.monotonic() + EXIT_WAIT
    while os.getppid() == pid:
        if time.monotonic() > deadline:
            return  # the program lives on: its folders are its own
        time.sleep(0.01)
    folder_prefix = os.fsencode(f"{prefix}{pid}-")
    _sweep(bases, folder_prefix)
    time.sleep(SECOND_SWEEP)
    _sweep(bases, folder_prefix)


if __name__ == "__main__":
    _main(int(sys.argv[1]), sys.argv[2])
