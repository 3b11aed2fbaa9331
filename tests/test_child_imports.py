"""A process worker imports nothing of the parent's side: only ``aioparallel`` (whose
``__init__`` imports nothing at start) and ``aioparallel.child``, no anyio, and no numpy
until it is sent arrays."""

from __future__ import annotations

import pytest

from aioparallel import Parallel, delayed

#: Evaluated in the worker: a builtin and a string pickle by reference, so neither this test
#: module nor cloudpickle is imported there to run it.
_OUR_MODULES = (
    "sorted(name for name in __import__('sys').modules"
    " if name.startswith(('aioparallel', 'anyio', 'numpy')))"
)


def _child_side(name: str) -> bool:
    return name in ("aioparallel", "aioparallel.child") or name.startswith("aioparallel.child.")


@pytest.mark.anyio
async def test_a_worker_imports_only_the_child_package() -> None:
    # One batch, so one worker (n_jobs=1 would run in this process): a plain call, then the
    # probe. The Parallel has fresh workers of its own.
    async with Parallel(n_jobs=2, batch_size=2) as parallel:
        first, loaded = await parallel([delayed(abs)(-1), delayed(eval)(_OUR_MODULES)])
    assert first == 1
    assert "aioparallel.child.main" in loaded
    parent_side = [name for name in loaded if not _child_side(name)]
    assert parent_side == [], f"the worker imported the parent's side: {parent_side}"


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_worker_is_told_to_import_numpy_once_before_its_first_array_job() -> None:
    """``protocol.NUMPY`` goes before the first job whose arguments hold numpy arrays (the
    worker imports numpy while the parent still pickles and writes them), never before a
    job without arrays, and once per worker."""
    import numpy as np

    from aioparallel.backends.processes.worker import WorkerProcess
    from aioparallel.child import protocol

    frames: list[int] = []
    worker = WorkerProcess.__new__(WorkerProcess)
    worker._numpy = False

    async def record(kind: int, body: bytes) -> None:
        frames.append(kind)

    async def synced() -> None:
        frames.append(protocol.SETUP)

    worker.write_frame = record  # type: ignore[method-assign]
    worker.sync_env = synced  # type: ignore[method-assign]
    await worker.expect_arrays([delayed(abs)(-1), delayed(sorted)([3, 1], reverse=True)])
    assert frames == []
    await worker.expect_arrays([delayed(abs)(-1), delayed(np.sum)(a=np.ones(3))])
    assert frames == [protocol.SETUP, protocol.NUMPY]  # numpy as the job's sys.path finds it
    await worker.expect_arrays([delayed(np.sum)(np.ones(3))])
    assert frames == [protocol.SETUP, protocol.NUMPY]
