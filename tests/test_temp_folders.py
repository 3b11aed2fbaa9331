"""The run's temp folder (docs/large-data.md): array files live only while a dispatched call uses
them, the folder is created and checked the same way on both sides, and an unusable folder is
reported as what it is, only when a file is needed."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aioparallel import Parallel, SerializationError, delayed
from aioparallel.backends.processes import tempfiles
from aioparallel.child.protocol import TempFolderError, ensure_private_dir
from tests.helpers import square

pytestmark = pytest.mark.anyio

BIG = 200_000  # float64 elements: 1.6 MB, above the default max_nbytes of 1M


def array_files(arr: Any) -> int:
    """In the worker: how many array files the run's folder holds now."""
    folder = os.path.dirname(arr.filename)
    return sum(name.startswith("array-") for name in os.listdir(folder))


def filename_of(arr: Any) -> str:
    return str(arr.filename)


# -- B6: array files are released with the calls that use them --------------------------------


async def test_distinct_arrays_do_not_pile_up_in_the_folder(tmp_path: Path) -> None:
    arrays = [np.full(BIG, i, dtype=np.float64) for i in range(12)]  # all alive throughout
    counts = await Parallel(n_jobs=2, pre_dispatch=2, batch_size=1, temp_folder=tmp_path)(
        delayed(array_files)(a) for a in arrays
    )
    # in flight (2) plus the few released files kept for reuse; 12 before the fix
    assert max(counts) <= 2 + tempfiles.KEEP_RELEASED, counts


async def test_parent_drops_arrays_of_finished_calls(tmp_path: Path) -> None:
    alive: list[weakref.ref[Any]] = []
    peak = 0

    def calls() -> Iterator[Any]:
        nonlocal peak
        for i in range(12):
            peak = max(peak, sum(r() is not None for r in alive))
            arr = np.full(BIG, i, dtype=np.float64)
            alive.append(weakref.ref(arr))
            yield delayed(array_files)(arr)
            del arr

    counts = await Parallel(n_jobs=2, pre_dispatch=2, batch_size=1, temp_folder=tmp_path)(calls())
    assert max(counts) <= 3, counts  # a collected array's file goes at once
    assert peak <= 3, peak  # dispatched-and-unfinished ones, plus the one being taken


async def test_same_array_in_many_calls_is_written_once(tmp_path: Path) -> None:
    arr = np.ones(BIG)
    # pre_dispatch=1: each call finishes before the next is sent, so the array is released
    # (no call uses it) 49 times
    names = await Parallel(n_jobs=2, pre_dispatch=1, batch_size=1, temp_folder=tmp_path)(
        delayed(filename_of)(arr) for _ in range(50)
    )
    assert len(set(names)) == 1, sorted(set(names))


# -- D16: one creates-or-verifies function, both sides -----------------------------------------


def test_private_dir_is_created_0700(tmp_path: Path) -> None:
    path = str(tmp_path / "run")
    assert ensure_private_dir(path) == path
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o700
    assert ensure_private_dir(path) == path  # ours already: fine


def test_a_removed_folders_large_files_are_freed_after_it_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's end waits for its folder to go, not for the pages of its large files to be
    freed (~50 ms for a 400 MB array): they are unlinked while held open, and closed later."""
    handed: list[int] = []
    monkeypatch.setattr(tempfiles, "_close_later", handed.extend)
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    (folder / "array-big.npy").write_bytes(b"\0" * tempfiles.FREE_LATER_BYTES)
    (folder / "job-small").write_bytes(b"\0" * 100)
    (folder / "planted").symlink_to(folder / "array-big.npy")  # never followed
    tempfiles.remove_folders([str(folder)])
    assert not folder.exists()
    try:
        [fd] = handed  # the large file only, held open...
        st = os.fstat(fd)
        assert (st.st_nlink, st.st_size) == (0, tempfiles.FREE_LATER_BYTES)  # ...unlinked
    finally:
        for fd in handed:
            os.close(fd)


def test_a_removed_folders_held_files_are_closed(tmp_path: Path) -> None:
    """The descriptors held go in a thread of their own; the leak check sees none left."""
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    (folder / "array-big.npy").write_bytes(b"\0" * tempfiles.FREE_LATER_BYTES)
    tempfiles.remove_folders([str(folder)])
    assert not folder.exists()


@pytest.mark.parametrize("plant", ["symlink", "open dir"])
def test_planted_run_folder_is_refused(tmp_path: Path, plant: str) -> None:
    path = tmp_path / "run"
    target = tmp_path / "elsewhere"
    target.mkdir()
    if plant == "symlink":
        path.symlink_to(target)
    else:
        path.mkdir()
        path.chmod(0o777)
    with pytest.raises(TempFolderError, match=str(path)):
        ensure_private_dir(str(path))


def plant_then_return_big(arr: Any, plant: str, target: str) -> Any:
    """In the worker: replace the run's folder (where it will write its large result) by a
    symlink to ``target``, or open it to everyone; then return a large array."""
    folder = os.path.dirname(arr.filename)
    if plant == "symlink":
        os.rename(folder, target + "-moved")
        os.symlink(target, folder)
    else:
        os.chmod(folder, 0o777)
    return np.ones(BIG)


@pytest.mark.parametrize("plant", ["symlink", "open dir"])
async def test_worker_refuses_a_planted_run_folder(tmp_path: Path, plant: str) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    base = tmp_path / "base"
    base.mkdir()
    with pytest.raises(TempFolderError, match="aioparallel-") as info:
        await Parallel(n_jobs=2, temp_folder=base)(
            [delayed(plant_then_return_big)(np.zeros(BIG), plant, str(target))]
        )
    assert "task 0 (plant_then_return_big)" in "".join(getattr(info.value, "__notes__", []))
    assert list(target.iterdir()) == []  # nothing written through the planted link
    assert [p.name for p in base.iterdir() if p.name.startswith("aioparallel-")] == []


# -- E18: the folder is resolved when a file is needed, and its problems named ----------------


async def test_bad_env_folder_does_not_break_runs_without_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(tempfiles.TEMP_FOLDER_ENV, str(tmp_path / "missing"))
    assert await Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(5)) == [0, 1, 2, 3, 4]


async def test_bad_env_folder_is_reported_as_a_folder_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing"
    monkeypatch.setenv(tempfiles.TEMP_FOLDER_ENV, str(missing))
    with pytest.raises(TempFolderError) as info:
        await Parallel(n_jobs=2)([delayed(filename_of)(np.ones(BIG))])
    assert not isinstance(info.value, SerializationError)
    assert str(missing) in str(info.value) and "$AIOPARALLEL_TEMP_FOLDER" in str(info.value)


async def test_bad_temp_folder_argument_names_the_argument(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert await Parallel(n_jobs=2, temp_folder=missing)([delayed(square)(3)]) == [9]
    with pytest.raises(TempFolderError, match="temp_folder argument"):
        await Parallel(n_jobs=2, temp_folder=missing)([delayed(filename_of)(np.ones(BIG))])


@pytest.fixture
def small_shm(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs standing in for /dev/shm (needs root and a kernel that lets us mount)."""
    mount = tmp_path / "shm"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=1777", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


async def test_full_shm_falls_back_to_the_temp_dir(
    small_shm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(tempfiles.TEMP_FOLDER_ENV, raising=False)
    monkeypatch.setattr(tempfiles, "SHM_FOLDER", str(small_shm))
    arr = np.arange(BIG, dtype=np.float64)  # 1.6 MB: does not fit in 1 MB
    names = await Parallel(n_jobs=2)(delayed(filename_of)(arr) for _ in range(3))
    assert len(set(names)) == 1
    assert names[0].startswith(tempfile.gettempdir() + os.sep), names[0]
    assert not any(small_shm.iterdir())  # noqa: ASYNC240  the partial file and the folder are gone
