"""A process worker imports nothing of the parent's side: only ``aioparallel`` (whose
``__init__`` imports nothing at start) and ``aioparallel.child``, no anyio, no numpy."""

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
