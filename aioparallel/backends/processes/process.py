"""One child process the event loop can wait on: its exit awaited without blocking the loop
(a pidfd, else a growing poll), its process group killed, reaped exactly once.

Owns the pids still ours to kill: a process is ours from its start until it is reaped;
what is left at interpreter exit is killed then (with its group), and a forked child
forgets them (they are its parent's).
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import time

import anyio

from ..._system import FEATURES

__all__ = ["ChildProcess", "forget_live_pids"]

#: Without a pidfd, a process's exit is polled this often, from the first to the last delay.
_POLL_FIRST, _POLL_LAST = 0.001, 0.05
_live_pids: set[int] = set()


@atexit.register
def _kill_leftovers() -> None:
    """What is still alive at exit (the shared pools first stop their idle workers gently,
    so these flush what they printed: their exit handler runs before this one)."""
    for pid in list(_live_pids):
        try:
            os.killpg(pid, signal.SIGKILL)  # its tasks' processes: it is their group leader
        except OSError:
            pass
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass


class ChildProcess:
    """A worker process started synchronously (so no cancellation can lose it half-spawned),
    awaited through a pidfd where the kernel has them, else polled with a growing delay
    (1 ms to 50 ms: a reader waiting for results learns of a death at once anyway, from the
    end of file on its pipe).

    The worker leads its own process group (it calls ``setpgid`` first thing), so ``kill()``
    takes the processes its tasks started with it. Its exit is observed without
    reaping it (``waitid(WNOWAIT)``) until ``reap()``: while the dead leader is unreaped, its
    pid and group id cannot be reused, so the group kill can never hit a stranger, even
    after a crash the parent noticed late. Without ``waitid`` (macOS before Python 3.13)
    the first look that finds the process ended reaps it, and kills its group at once, while
    no other group can have that number yet. (A task that moves its children into a session
    of their own, ``setsid()``, takes them out of our reach: we do not walk ``/proc``.)
    """

    def __init__(self, popen: subprocess.Popen[bytes]):
        self.popen = popen
        self.pid = popen.pid
        _live_pids.add(self.pid)
        self._waiting: anyio.Event | None = None
        self._pidfd = -1
        if FEATURES.pidfd:
            try:
                self._pidfd = os.pidfd_open(popen.pid)
            except OSError:  # pragma: no cover - a kernel or sandbox without them
                pass

    @property
    def returncode(self) -> int | None:
        """The exit code (negative: the signal) once the process has ended; None while it
        runs. Does not reap it, unless the system lacks ``waitid`` (see ``_poll``)."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        if not FEATURES.waitid:
            return self._poll()
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # pragma: no cover - reaped behind our back
            return self.popen.poll()
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def _poll(self) -> int | None:
        """The exit code if the process has ended, which reaps it: its group (the processes
        its tasks started) is killed then, as ``kill()`` can no longer reach it."""
        code = self.popen.poll()
        if code is not None:  # just reaped (``returncode`` does not come here again)
            _live_pids.discard(self.pid)  # the number is no longer ours to kill at exit
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return code

    def kill(self) -> None:
        """SIGKILL the process and its process group (until it is reaped: after that, the
        numbers may belong to others)."""
        if self.popen.returncode is not None:
            return
        for kill in (os.killpg, os.kill):  # the group is not there yet for a ms at start-up
            try:
                kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    async def wait(self) -> int:
        """The exit code, once the process ends (not reaped); several tasks may wait."""
        delay = _POLL_FIRST
        while (code := self.returncode) is None:
            if self._waiting is not None:  # one task watches the pidfd, the others its event
                await self._waiting.wait()
                continue
            self._waiting = anyio.Event()
            try:
                if self._pidfd >= 0:
                    await anyio.wait_readable(self._pidfd)
                else:
                    await anyio.sleep(delay)
                    delay = min(2 * delay, _POLL_LAST)
            finally:
                self._waiting.set()
                self._waiting = None
        return code

    def wait_blocking(self, timeout: float) -> None:
        """Wait synchronously for the end: only for cleanup that can no longer await."""
        deadline = time.monotonic() + timeout
        while self.returncode is None and time.monotonic() < deadline:
            time.sleep(0.001)

    def reap(self) -> None:
        """Collect the ended process's exit status (after which its pid may be reused)."""
        if self.returncode is not None:
            self.popen.wait()
            _live_pids.discard(self.pid)

    def close(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


def forget_live_pids() -> None:
    """In a forked child: the parent's workers are not ours to kill at exit."""
    _live_pids.clear()
