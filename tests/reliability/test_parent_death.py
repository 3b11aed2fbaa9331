"""docs/cancellation.md: worker processes exit when the parent process dies, even by SIGKILL.

A separate program (``orphan_script``) starts two process workers whose tasks record their
pids; the test checks they are that program's children, SIGKILLs it, and polls (bounded)
until every worker is gone: no longer running, or a zombie waiting for a reaper that is not
ours. The time each took is added to the session report.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.proc_helpers import wait_for_pids_sync
from tests.reliability.conftest import Report
from tests.reliability.helpers import wait_file_sync

ROOT = Path(__file__).resolve().parents[2]
#: The bound docs/cancellation.md implies: no worker survives its parent by more than this.
SURVIVAL_LIMIT = 2.0
#: Starting the program and its workers (a cold interpreter, on a shared machine).
START_LIMIT = 30.0


def _gone(proc: psutil.Process) -> bool:
    """Not running any more (``is_running`` also guards against pid reuse), or a zombie."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_all_gone(procs: list[psutil.Process], limit: float) -> list[psutil.Process]:
    deadline = time.monotonic() + limit
    while True:
        alive = [p for p in procs if not _gone(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.005)


@pytest.mark.parametrize("state", ["busy", "idle"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop", "trio"])
def test_workers_exit_when_the_parent_is_sigkilled(
    tmp_path: Path, loop: str, state: str, report: Report
) -> None:
    log = (tmp_path / "stderr.txt").open("wb")
    parent = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.orphan_script", str(tmp_path), loop, state],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    workers: list[psutil.Process] = []
    try:
        try:
            pids = wait_for_pids_sync(tmp_path, 2, START_LIMIT)
            if state == "idle":
                assert wait_file_sync(tmp_path / "idle", START_LIMIT), "the runs never ended"
        except AssertionError:
            raise AssertionError((tmp_path / "stderr.txt").read_text()) from None
        workers = [psutil.Process(pid) for pid in pids.values()]
        assert len(set(pids.values())) == 2, "both tasks ran in one worker"
        for worker in workers:
            assert worker.ppid() == parent.pid, "not a worker of the program"
        killed = time.monotonic()
        parent.kill()
        parent.wait(10)
        survivors = _wait_all_gone(workers, SURVIVAL_LIMIT)
        took = time.monotonic() - killed
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        for worker in workers:  # never leave one behind, even when the test fails
            with contextlib.suppress(psutil.Error):
                worker.kill()
        log.close()
    report.figure(
        f"parent SIGKILLed ({state} workers, {loop})",
        f"{'all workers gone' if not survivors else 'SURVIVORS'} {took:.3f} s after the kill",
    )
    assert not survivors, f"workers {[w.pid for w in survivors]} outlived their parent"
