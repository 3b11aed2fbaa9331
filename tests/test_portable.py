"""AIOPARALLEL_PORTABLE=1 really switches off the Linux-only facilities (docs/platforms.md).

The ``portable`` nox session (and a step of ``.ci/run``) runs the process-backend tests with
the switch set, so the paths macOS takes are exercised here. These tests check, from /proc,
that the switch took effect: the worker's slot is a deleted temp file, not a memfd; the
parent holds no pidfd; the worker asked for no parent-death signal; its pipes keep the
kernel's default size; large arrays go to the system temp dir, not /dev/shm. And that the
lifeline alone (no kernel parent-death signal) ends a worker and its tasks' processes when
the parent dies. Without the switch (or off Linux, where /proc is missing) they are skipped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from aioparallel import Parallel, delayed
from tests import proc_helpers as h
from tests.reliability.test_parent_death import SURVIVAL_LIMIT

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("AIOPARALLEL_PORTABLE") != "1",
        reason="checks the portable paths: run with AIOPARALLEL_PORTABLE=1 (nox -s portable)",
    ),
    pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to see the facilities used"),
]

ROOT = Path(__file__).resolve().parents[1]
_F_GETPIPE_SZ = 1032
_PR_GET_PDEATHSIG = 2


def _links(pid: int | str) -> dict[int, str]:
    links: dict[int, str] = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            links[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return links


def _slot_mappings(pid: int | str) -> list[str]:
    """The process's mappings of a worker slot (the parent maps each worker's)."""
    with open(f"/proc/{pid}/maps") as f:
        return [line.strip() for line in f if "aioparallel" in line]


def probe(_x: int) -> dict[str, Any]:
    """In a worker: its pid, slot mapping, parent-death signal and pipe sizes."""
    import fcntl

    signum = ctypes.c_int(-1)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_GET_PDEATHSIG, ctypes.byref(signum), 0, 0, 0)
    r, w = os.pipe()
    default = fcntl.fcntl(r, _F_GETPIPE_SZ)
    os.close(r)
    os.close(w)
    pipes = [fd for fd, link in _links("self").items() if fd > 2 and link.startswith("pipe:")]
    return {
        "pid": os.getpid(),
        "slot": _slot_mappings("self"),
        "death_signal": signum.value,
        "default_pipe": default,
        "pipe_sizes": [fcntl.fcntl(fd, _F_GETPIPE_SZ) for fd in pipes],
    }


def filename_of(arr: Any) -> str:
    return str(arr.filename)


@pytest.mark.asyncio
async def test_the_switch_turns_off_every_linux_only_facility() -> None:
    async with Parallel(n_jobs=2, batch_size=1) as p:
        seen = await p(delayed(probe)(x) for x in range(2))
        parent_fds = _links("self")
        parent_slots = _slot_mappings("self")
    for worker in seen:
        assert worker["death_signal"] == 0, worker
        assert worker["slot"], worker
        for line in worker["slot"]:
            assert "memfd:" not in line, line
            assert line.endswith("(deleted)"), line  # a temp file, unlinked at once
        assert len(worker["pipe_sizes"]) >= 3, worker  # request, response, lifeline
        assert set(worker["pipe_sizes"]) == {worker["default_pipe"]}, worker
    assert not any("pidfd" in link for link in parent_fds.values()), parent_fds
    assert parent_slots and not any("memfd:" in line for line in parent_slots), parent_slots


@pytest.mark.asyncio
async def test_large_arrays_go_to_the_system_temp_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    np = pytest.importorskip("numpy")
    monkeypatch.delenv("AIOPARALLEL_TEMP_FOLDER", raising=False)
    arr = np.ones(300_000)  # 2.4 MB: above the default max_nbytes
    [name] = await Parallel(n_jobs=2)([delayed(filename_of)(arr)])
    assert name.startswith(tempfile.gettempdir() + os.sep), name
    assert not name.startswith("/dev/shm"), name


PARENT_SCRIPT = """
import asyncio, sys
sys.path.insert(0, {root!r})
from aioparallel import Parallel, delayed
from tests.reliability.test_worker_world import start_sleeper_then

async def main():
    await Parallel(n_jobs=2, batch_size=1)(
        delayed(start_sleeper_then)({folder!r}, x, "block") for x in range(2)
    )

asyncio.run(main())
"""


def test_the_lifeline_ends_the_worker_and_its_tasks_processes(tmp_path: Path) -> None:
    """No kernel parent-death signal here: the worker's lifeline thread sees the end of
    file and kills its process group, so the task's ``sleep`` goes with it."""
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT.format(root=str(ROOT), folder=str(tmp_path)))
    parent = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path)
    pid_file = tmp_path / "sleeper.pid"
    sleeper = worker = -1
    try:
        deadline = time.monotonic() + h.POLL_LIMIT
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pid_file.exists(), "the task never started its subprocess"
        sleeper = int(pid_file.read_text())
        worker = os.getpgid(sleeper)  # the worker leads the group its tasks' processes join
        assert worker != os.getpgid(0)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
    killed = time.monotonic()
    try:
        assert h.wait_gone([worker, sleeper], SURVIVAL_LIMIT) == []
        assert time.monotonic() - killed < SURVIVAL_LIMIT
    finally:
        for pid in (sleeper, worker):  # never leave one behind, even when the test fails
            if pid > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
