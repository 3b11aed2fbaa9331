"""The folder tracker: a small process that removes this program's run folders once the
program is gone, however it ended: a normal exit, SIGTERM, SIGKILL, a crash.

A program's run folders are all named ``aioparallel-<its pid>-<token>`` (the workers write
their large results into the same folder), so the tracker needs to know only the base
folders they are made in. It reads them from a pipe whose write end only this program holds
(close on exec, and closed in a forked child). End of file on that pipe means every copy is
closed: the program has exited or been killed. The tracker then waits until the program is
gone (no such process, or a zombie), removes the program's folders in those bases, and once
more half a second later, for a file a dying worker was writing at that moment. A program
that closed the pipe and still runs (an ``exec``, a daemon closing every descriptor) keeps
its folders: the tracker exits without touching them.

The tracker detaches at once (it forks, and the process the program started exits): it is
nobody's child, so it never shows among the program's child processes (a supervisor, a test
or a user counting its workers would see one process too many) and never has to be reaped.

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

__all__ = ["start", "watch"]

#: After end of file, how long the tracker waits for the program to be gone.
EXIT_WAIT = 10.0
#: The second sweep, after this many seconds (a dying worker's last file).
SECOND_SWEEP = 0.5

_lock = threading.Lock()
_fd = -1  # the pipe's write end, or -1 before start (or after a fork)
_launcher: subprocess.Popen[bytes] | None = None  # exits at once; reaped when it has
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
    its pipe is in every leak-check snapshot), and wait for it to have detached."""
    with _lock:
        if _fd < 0 and not _failed:
            _send([])
        if _launcher is not None:
            _launcher.wait()


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
    """Start the tracker. The launcher exits as soon as the tracker has forked away from it;
    a thread reaps it (a run's first folder is named on the event loop, which must not wait
    for an interpreter to start)."""
    global _fd, _launcher
    import subprocess

    from ...child.protocol import FOLDER_PREFIX

    read, write = os.pipe()
    try:
        _launcher = subprocess.Popen(
            [sys.executable, "-I", "-S", __file__, str(os.getpid()), FOLDER_PREFIX],
            stdin=read,
            # nor the program's output: whoever reads it to its end would wait for us too
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,  # Ctrl-C or a kill of our process group spares it
        )
    except BaseException:
        os.close(write)
        raise
    finally:
        os.close(read)
    _fd = write
    threading.Thread(target=_launcher.wait, name="aioparallel-tracker-launch", daemon=True).start()


def _close() -> None:
    global _fd
    if _fd >= 0:
        os.close(_fd)
    _fd = -1


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


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie has ended: its parent has yet to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process has the pid now
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):  # no /proc (macOS): the signal test is all there is
        return True


def _main(pid: int, prefix: str) -> None:
    import signal
    import time

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # outlive the program
        signal.signal(signum, signal.SIG_IGN)
    if os.fork():  # detach: the program's child (the launcher) exits, the tracker lives on
        os._exit(0)
    bases: set[bytes] = set()
    pending = b""
    while chunk := os.read(0, 65536):
        *names, pending = (pending + chunk).split(b"\0")
        bases.update(names)
    deadline = time.monotonic() + EXIT_WAIT
    while _alive(pid):
        if time.monotonic() > deadline:
            return  # the program lives on: its folders are its own
        time.sleep(0.01)
    folder_prefix = os.fsencode(f"{prefix}{pid}-")
    _sweep(bases, folder_prefix)
    time.sleep(SECOND_SWEEP)
    _sweep(bases, folder_prefix)


if __name__ == "__main__":
    _main(int(sys.argv[1]), sys.argv[2])
