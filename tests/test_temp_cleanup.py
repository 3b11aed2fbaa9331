"""Who removes a run's folder, and when: never a forked child (it owns none of its parent's
folders), always the program that made it, even when it ends by a signal (the folder
tracker), and without blocking the event loop while a large array is being written."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np
import psutil
import pytest

from aioparallel import Parallel, delayed
from aioparallel.backends.processes import tempfiles
from tests.helpers import LAG_ATTEMPTS, square

ROOT = Path(__file__).resolve().parents[1]
BIG = 200_000  # float64 elements: 1.6 MB, above the default max_nbytes of 1M
LIMIT = 30.0


def run_folders(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.name.startswith("aioparallel-"))


def wait_until(condition: Any, limit: float = LIMIT) -> bool:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# -- a forked child owns none of its parent's folders ------------------------------------------


def test_forked_child_exit_leaves_the_parents_run_alone(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.temp_cleanup_script", "fork", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        timeout=LIMIT * 2,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout.decode().splitlines()[-1])
    expected = float(np.arange(BIG, dtype=np.float64).sum())
    assert report == {"child_status": 0, "results": [expected, expected]}, report
    assert run_folders(tmp_path / "base") == []  # the parent removed it at the run's end


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_runs_without_files_leave_no_name_in_the_registry() -> None:
    before = set(tempfiles._live_folders)
    p = Parallel(n_jobs=2)
    for _ in range(200):
        assert await p(delayed(square)(i) for i in range(2)) == [0, 1]
    assert len(tempfiles._live_folders - before) == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_registry_forgets_a_removed_folder(tmp_path: Path) -> None:
    before = set(tempfiles._live_folders)
    await Parallel(n_jobs=2, temp_folder=tmp_path)([delayed(sum)(np.ones(BIG))])
    assert not tempfiles._live_folders - before
    assert run_folders(tmp_path) == []


def test_a_folder_name_nobody_wrote_under_goes_to_the_next_run_and_no_other(
    tmp_path: Path,
) -> None:
    first = tempfiles.RunFolder(tmp_path)
    name = first.path
    assert first.close() == []
    second = tempfiles.RunFolder(tmp_path)
    assert second.path == name  # never made: the next run may use it
    third = tempfiles.RunFolder(tmp_path)
    assert third.path != name  # while the second has it, nobody else does
    second.may_exist()  # a worker may have written under it
    second.close()
    third.close()
    later = [tempfiles.RunFolder(tmp_path) for _ in range(2 * tempfiles.SPARE_NAMES)]
    assert name not in {folder.path for folder in later}
    for folder in later:
        folder.close()


def big_result(n: int) -> Any:
    return np.ones(n)


def big_then_hang(i: int) -> Any:
    """Call 0 returns an array its worker writes to the run's folder; call 1 hangs."""
    if i == 0:
        return np.ones(BIG)
    time.sleep(LIMIT)
    return None


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_a_folder_only_a_worker_wrote_into_goes_with_the_run(tmp_path: Path) -> None:
    # the parent writes nothing: only the worker's results frame says the folder exists
    results = await Parallel(n_jobs=2, temp_folder=tmp_path)([delayed(big_result)(BIG)])
    assert results[0].shape == (BIG,)
    assert run_folders(tmp_path) == []


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_a_folder_a_killed_worker_wrote_into_unannounced_goes_with_the_run(
    tmp_path: Path,
) -> None:
    # call 0's array is written, and kept in the crash slot for the next frame; call 1 runs
    # past its timeout and the worker is killed before any frame said it wrote a file
    p = Parallel(n_jobs=2, temp_folder=tmp_path, timeout=1.0, batch_size=2, return_exceptions=True)
    first, second = await p(delayed(big_then_hang)(i) for i in range(2))
    assert first.shape == (BIG,)
    assert isinstance(second, TimeoutError)
    assert run_folders(tmp_path) == []


# -- a program killed by a signal leaves no folder ---------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_program_leaves_no_folder(tmp_path: Path, signum: int) -> None:
    log = (tmp_path / "stderr.txt").open("wb")
    program = subprocess.Popen(
        [sys.executable, "-m", "tests.temp_cleanup_script", "sigterm", str(tmp_path)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    procs: list[psutil.Process] = []
    try:
        ready = wait_until((tmp_path / "ready").exists)
        assert ready, (tmp_path / "stderr.txt").read_text()
        assert len(run_folders(tmp_path / "base")) == 1
        procs = psutil.Process(program.pid).children(recursive=True)
        program.send_signal(signum)
        assert program.wait(LIMIT) == -signum  # the signal's own exit status, kept
        gone = wait_until(lambda: not run_folders(tmp_path / "base"))
        assert gone, f"{run_folders(tmp_path / 'base')} left behind"
        _, alive = psutil.wait_procs(procs, timeout=LIMIT)
        assert not alive, f"{alive} outlived the program"
    finally:
        if program.poll() is None:
            program.kill()
            program.wait(LIMIT)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        log.close()


# -- the event loop never waits for a file write -----------------------------------------------


def wait_for_another_file(arr: Any) -> int:
    """In the worker: return once another array file is being written in the run's folder."""
    folder, mine = os.path.split(arr.filename)
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline:
        names = os.listdir(folder)
        if any(n.startswith("array-") and n != mine for n in names):
            return 0
        time.sleep(0.001)
    raise TimeoutError("no other array file appeared")


def first(arr: Any) -> float:
    return float(arr[0])


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_loop_runs_while_a_large_array_is_written(tmp_path: Path) -> None:
    """The loop sees the array's file half-written: it ran while the write went on. Written
    on the loop, the file is whole before the loop looks again, however fast the disk (a
    warm page cache writes 400 MB in 70 ms, a cold one in 1 s: a stall's length tells
    nothing). Up to three attempts: a loaded 2-core machine can keep the loop's thread off a
    core for ~0.1 s, as long as a fast write."""
    seen: list[bool] = []
    while len(seen) < LAG_ATTEMPTS and not any(seen):
        seen.append(await _loop_sees_a_partial_write(tmp_path))
    assert any(seen), "the loop never ran while the array was written"


async def _loop_sees_a_partial_write(tmp_path: Path) -> bool:
    """Whether a task that looks at the run's folder at every loop turn sees the large
    array's file longer than the small one's yet shorter than the array, while a run
    writes it."""
    small = np.ones(BIG)
    large = np.ones(50_000_000)  # 400 MB: a fresh array, so a file of its own each attempt
    partial = False
    done = False

    async def watch() -> None:
        nonlocal partial
        while not done:
            # on the loop's thread by design: it is the loop that must see the write
            with contextlib.suppress(FileNotFoundError):  # a folder or file just removed
                for path in tmp_path.glob("*/array-*.npy"):  # noqa: ASYNC240
                    partial |= 2 * small.nbytes < path.stat().st_size < large.nbytes
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        # the first call's batch ends (and releases its file) while the second's array is
        # being written
        results = await Parallel(n_jobs=2, batch_size=1, temp_folder=tmp_path)(
            [delayed(wait_for_another_file)(small), delayed(first)(large)]
        )
        done = True
    assert results == [0, 1.0]
    return partial


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/<pid>/fd")
def test_the_folder_tracker_holds_none_of_the_programs_output() -> None:
    """The tracker outlives the program by design (it removes the folders once the program
    is gone), so it must not hold the program's stdout or stderr: a caller reading them to
    the end (``subprocess.run(capture_output=True)``, a CI step, a shell pipe) would wait
    for the tracker too, half a second or more after the program exited."""
    from aioparallel.backends.processes import tracker

    tracker.start()
    me = str(os.getpid())
    found = [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(a.endswith("tracker.py") for a in p.info["cmdline"] or ())
        and me in (p.info["cmdline"] or ())
    ]
    assert found, "no folder tracker of this process"
    for fd in (1, 2):
        target = os.readlink(f"/proc/{found[0].pid}/fd/{fd}")
        assert target == os.devnull, f"the tracker's fd {fd} is {target}"
