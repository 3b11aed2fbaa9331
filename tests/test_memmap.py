"""Large numpy arguments reach process workers as memmaps written once per run (docs/large-data.md),
and the run's private folder is removed on every path."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import anyio
import numpy as np
import pytest

from aioparallel import Parallel, WorkerCrashedError, delayed
from tests import memmap_helpers as mh

pytestmark = pytest.mark.anyio

BIG = 200_000  # float64 elements: 1.6 MB, above the default max_nbytes of 1M


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith("aioparallel-")]


async def test_large_argument_arrives_as_read_only_memmap(tmp_path: Path) -> None:
    arr = np.arange(BIG, dtype=np.float64)
    small = np.arange(10, dtype=np.float64)
    parallel = Parallel(n_jobs=2, temp_folder=tmp_path)
    big_info, small_info = await parallel([delayed(mh.describe)(arr), delayed(mh.describe)(small)])
    assert big_info[0] == "memmap" and big_info[2] == "r"
    assert big_info[1] is not None and big_info[1].startswith(str(tmp_path))
    assert big_info[3] == float(arr.sum())
    assert small_info[0] == "ndarray"
    assert "read-only" in (await parallel([delayed(mh.try_write)(arr)]))[0]
    assert _leftovers(tmp_path) == []


async def test_same_array_written_once_per_run(tmp_path: Path) -> None:
    arr = np.ones(BIG)
    infos = await Parallel(n_jobs=2, temp_folder=tmp_path)(
        delayed(mh.describe)(arr) for _ in range(12)
    )
    assert {info[1] for info in infos} == {infos[0][1]}  # one file for 12 calls
    assert all(info[3] == BIG for info in infos)


async def test_nested_arrays_are_memmapped(tmp_path: Path) -> None:
    arr = np.zeros(BIG)
    payload = {"direct": arr, "inner": [arr, (np.ones(BIG),)[0]]}
    (names,) = await Parallel(n_jobs=2, temp_folder=tmp_path)(
        [delayed(mh.describe_nested)(payload)]
    )
    assert names == ["memmap", "memmap", "memmap"]


@pytest.mark.parametrize("mode", ["r+", "c"])
async def test_mmap_mode_is_honoured(tmp_path: Path, mode: str) -> None:
    arr = np.zeros(BIG)
    (info,) = await Parallel(n_jobs=2, temp_folder=tmp_path, mmap_mode=mode)(
        [delayed(mh.describe)(arr)]
    )
    assert info[0] == "memmap" and info[2] == mode
    (outcome,) = await Parallel(n_jobs=2, temp_folder=tmp_path, mmap_mode=mode)(
        [delayed(mh.try_write)(arr)]
    )
    assert outcome == "written"
    assert arr[0] == 0.0  # the parent's array is never written through


async def test_max_nbytes_none_disables_memmapping(tmp_path: Path) -> None:
    arr = np.ones(BIG)
    (info,) = await Parallel(n_jobs=2, temp_folder=tmp_path, max_nbytes=None)(
        [delayed(mh.describe)(arr)]
    )
    assert info[0] == "ndarray"


async def test_max_nbytes_accepts_sizes(tmp_path: Path) -> None:
    arr = np.ones(2000)  # 16 KB
    (low,) = await Parallel(n_jobs=2, temp_folder=tmp_path, max_nbytes="10K")(
        [delayed(mh.describe)(arr)]
    )
    (high,) = await Parallel(n_jobs=2, temp_folder=tmp_path, max_nbytes=20_000)(
        [delayed(mh.describe)(arr)]
    )
    assert (low[0], high[0]) == ("memmap", "ndarray")


async def test_run_folder_is_private(tmp_path: Path) -> None:
    (mode,) = await Parallel(n_jobs=2, temp_folder=tmp_path)(
        [delayed(mh.folder_mode)(np.ones(BIG))]
    )
    assert mode == 0o700


async def test_env_temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOPARALLEL_TEMP_FOLDER", str(tmp_path))
    (info,) = await Parallel(n_jobs=2)([delayed(mh.describe)(np.ones(BIG))])
    assert info[1].startswith(str(tmp_path))


async def test_large_result_comes_back_by_file(tmp_path: Path) -> None:
    """The worker writes a result above max_nbytes to a file in the run folder; the parent
    maps that file (copy-on-write) instead of reading the array through the pipe."""
    (result,) = await Parallel(n_jobs=2, temp_folder=tmp_path)([delayed(mh.make_array)(BIG)])
    assert isinstance(result, np.memmap), type(result)
    assert result.mode == "c"
    backing = Path(result.filename)
    assert backing.parent.parent == tmp_path and backing.parent.name.startswith("aioparallel-")
    assert result.shape == (BIG,)
    assert np.array_equal(result, np.arange(BIG, dtype=np.float64))
    result[0] = -1.0  # copy-on-write: the caller may modify it
    assert _leftovers(tmp_path) == []


async def test_received_memmap_passed_on_is_not_copied(tmp_path: Path) -> None:
    arr = np.arange(BIG, dtype=np.float64)
    (back,) = await Parallel(n_jobs=2, temp_folder=tmp_path)([delayed(mh.pass_on)(arr)])
    assert isinstance(back, np.memmap)  # a reference to the run's file, not pickled data
    assert str(back.filename).startswith(str(tmp_path))
    assert np.array_equal(back, arr)


async def test_cleanup_after_task_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="task saw"):
        await Parallel(n_jobs=2, temp_folder=tmp_path)([delayed(mh.fail_with_array)(np.ones(BIG))])
    assert _leftovers(tmp_path) == []


async def test_cleanup_after_worker_crash(tmp_path: Path) -> None:
    with pytest.raises(WorkerCrashedError):
        await Parallel(n_jobs=2, temp_folder=tmp_path)([delayed(mh.crash_with_array)(np.ones(BIG))])
    assert _leftovers(tmp_path) == []


async def test_cleanup_after_cancellation(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    folder = tmp_path / "tmp"
    folder.mkdir()

    async def wait_for_flag() -> None:
        while not flag.exists():  # noqa: ASYNC110  (a file written by another process)
            await anyio.sleep(0.01)

    with anyio.move_on_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                Parallel(n_jobs=2, temp_folder=folder),
                [delayed(mh.sleep_with_array)(np.ones(BIG), str(flag))],
            )
            await wait_for_flag()
            assert _leftovers(folder), "the run folder exists while the task runs"
            tg.cancel_scope.cancel()
    assert flag.exists()
    assert _leftovers(folder) == []


def test_cleanup_at_interpreter_exit(tmp_path: Path) -> None:
    """A script that leaves a streamed run unfinished and exits leaves no folder behind."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        import numpy as np
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from aioparallel import Parallel, delayed
        from tests.memmap_helpers import describe

        async def main():
            stream = Parallel(n_jobs=2, return_as="generator", temp_folder={str(tmp_path)!r})(
                delayed(describe)(np.ones(200_000)) for _ in range(100)
            )
            first = await stream.__anext__()
            print(first[0], flush=True)
            sys.exit(0)  # leave the stream unclosed

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "memmap"
    assert _leftovers(tmp_path) == []


def test_invalid_settings_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="max_nbytes"):
        Parallel(n_jobs=2, max_nbytes="lots")
    with pytest.raises(ValueError, match="max_nbytes"):
        Parallel(n_jobs=2, max_nbytes=-1)
    with pytest.raises(ValueError, match="mmap_mode"):
        Parallel(n_jobs=2, mmap_mode="w")


async def test_unwritable_temp_folder_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    with pytest.raises(OSError, match="not a writable directory"):
        await Parallel(n_jobs=2, temp_folder=missing)([delayed(mh.describe)(np.ones(BIG))])


async def test_large_job_is_pickled_off_the_event_loop_thread(tmp_path: Path) -> None:
    recorder = mh.RecordsPickling()
    (info,) = await Parallel(n_jobs=2, temp_folder=tmp_path)(
        [delayed(mh.describe)(np.ones(BIG), recorder)]
    )
    assert info[0] == "memmap"
    assert mh.PICKLED_IN, "the recorder was never pickled"
    assert threading.main_thread().name not in mh.PICKLED_IN


async def test_callers_memmap_is_passed_by_file_name(tmp_path: Path) -> None:
    """A memmap the caller opened (and contiguous views of it) travel as file name and
    offset: nothing is copied into the temp folder. A strided view is copied."""
    path = tmp_path / "data.npy"
    np.save(path, np.arange(2 * BIG, dtype=np.float64))
    opened = np.load(path, mmap_mode="r")
    folder = tmp_path / "tmp"
    folder.mkdir()
    whole, window, strided = await Parallel(n_jobs=2, temp_folder=folder)(
        [
            delayed(mh.describe)(opened),
            delayed(mh.describe)(opened[1000:3000]),
            delayed(mh.describe)(opened[::2]),
        ]
    )
    assert str(whole[1]) == str(window[1]) == str(path)
    assert window[3] == float(np.arange(1000, 3000).sum())
    assert str(strided[1]).startswith(str(folder))
    assert strided[3] == float(np.arange(0, 2 * BIG, 2).sum())


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps")
@pytest.mark.parametrize("mode", ["r", "r+"])
async def test_pages_a_call_read_leave_the_worker_when_it_returns(
    tmp_path: Path, mode: str
) -> None:
    """The calls of one batch share the array's one memmap; the pages each call touched
    must not stay resident in the worker for the rest of the batch (RSS of a batch of calls
    that each read a slice of one big array would grow to the whole array)."""
    arr = np.ones(BIG)
    parallel = Parallel(n_jobs=2, batch_size=4, temp_folder=tmp_path, mmap_mode=mode)
    resident = await parallel(delayed(mh.resident_kb_then_touch)(arr) for _ in range(8))
    later = resident[1:4] + resident[5:8]  # batches: calls 0-3 and 4-7
    assert later == [0] * 6, f"KB of the array resident as each call starts: {resident}"
