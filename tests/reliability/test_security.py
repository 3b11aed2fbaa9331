"""Security properties of the process backend.

- The worker protocol uses pipes only: while a run is going, neither the parent nor any
  worker has a listening socket or an internet socket (nothing another user or host could
  connect to), and a worker holds no socket beyond the stdio it may inherit.
- Temp folders are private (0700, ours), even under a permissive umask, and removed after.
- ``pre_dispatch`` is parsed, never evaluated.
- What a task does to its worker's environment does not reach the parent.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
import psutil
import pytest

from aioparallel import Parallel, delayed
from aioparallel.backends.processes import tracker as _tracker
from tests.reliability.helpers import (
    get_env,
    memmap_folder,
    parent_folders,
    pid_then_wait_file,
    set_env,
    wait_stamp_sync,
)

pytestmark = pytest.mark.anyio

RUN_LIMIT = 30.0


def _sockets(proc: psutil.Process) -> list[Any]:
    return list(proc.net_connections(kind="all"))


def _fd_targets(pid: int) -> dict[int, str]:
    targets = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:  # closed meanwhile
            continue
    return targets


def _inet(conns: list[Any]) -> list[Any]:
    import socket

    return [c for c in conns if c.family in (socket.AF_INET, socket.AF_INET6)]


async def test_protocol_uses_pipes_only(tmp_path: Path) -> None:
    me = psutil.Process()
    before = {(c.fd, c.family, c.laddr) for c in _inet(_sockets(me))}
    go = tmp_path / "go"
    seen: dict[str, Any] = {}

    async def inspect() -> None:
        try:
            for i in range(2):  # both workers are running a task
                await anyio.to_thread.run_sync(wait_stamp_sync, tmp_path, f"{i}.started")
            tracker = _tracker.pid()  # the folder tracker is no worker
            workers = [w for w in me.children(recursive=True) if w.pid != tracker]
            seen["workers"] = [w.pid for w in workers]
            seen["parent"] = _sockets(me)
            seen["children"] = {w.pid: _sockets(w) for w in workers}
            seen["child_fds"] = {w.pid: _fd_targets(w.pid) for w in workers}
        finally:
            go.touch()

    with anyio.fail_after(RUN_LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(inspect)
            results = await Parallel(n_jobs=2, batch_size=1)(
                delayed(pid_then_wait_file)(str(tmp_path), i, str(go)) for i in range(2)
            )
    assert results == [0, 1]
    assert len(seen["workers"]) == 2

    parent = seen["parent"]
    assert not [c for c in parent if c.status == psutil.CONN_LISTEN], parent
    new_inet = [c for c in _inet(parent) if (c.fd, c.family, c.laddr) not in before]
    assert not new_inet, f"the run opened internet sockets in the parent: {new_inet}"
    for pid, conns in seen["children"].items():
        assert not [c for c in conns if c.status == psutil.CONN_LISTEN], (pid, conns)
        assert not _inet(conns), f"worker {pid} has internet sockets: {conns}"
        # Unix sockets only where the worker inherits our stdio (fds 0-2), none of its own.
        assert all(c.fd in (0, 1, 2) for c in conns), (pid, conns)
        own = {fd: target for fd, target in seen["child_fds"][pid].items() if fd > 2}
        assert not [t for t in own.values() if t.startswith("socket:")], (pid, own)
        assert any(t.startswith("pipe:") for t in own.values()), (pid, own)


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask-022", "umask-000"])
async def test_temp_folders_are_private_and_removed(tmp_path: Path, umask: int) -> None:
    base = tmp_path / "base"
    base.mkdir(mode=0o777)
    base.chmod(0o777)
    array = np.arange(300_000, dtype=np.float64)  # 2.4 MB: above max_nbytes="1M"
    blob = b"x" * (3 * 1024**2)  # a payload above the pipe limit: spilled to a file
    old = os.umask(umask)  # the workers spawned in this test inherit it too
    try:
        p = Parallel(n_jobs=2, temp_folder=str(base))
        with anyio.fail_after(RUN_LIMIT):
            memmapped = await p([delayed(memmap_folder)(array), delayed(memmap_folder)(array)])
            spilled = await p([delayed(parent_folders)(blob, str(base), array)])
    finally:
        os.umask(old)
    for folder, mode, uid, is_memmap in memmapped:
        assert is_memmap
        assert Path(folder).parent == base
        assert Path(folder).name.startswith(f"aioparallel-{os.getpid()}-")
        assert mode == 0o700, oct(mode)
        assert uid == os.getuid()
    assert memmapped[0][0] == memmapped[1][0], "one folder per run"
    [found] = spilled
    assert found, "the spilled payload's folder was not found"
    for _, mode, uid, files in found:
        assert mode == 0o700, oct(mode)
        assert uid == os.getuid()
        assert files, "the memmapped array's file was not found"
        assert all(m & 0o077 == 0 for m in files), [oct(m) for m in files]
    assert not list(base.iterdir()), "temp folders were left behind"
    assert stat.S_IMODE(base.stat().st_mode) == 0o777  # the base itself is not touched


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('x')",
        "__import__('os').system('touch {marker}')",
        "open('{marker}', 'w') and n_jobs",
        "n_jobs if open('{marker}', 'w') else 2",
        "(lambda: open('{marker}', 'w'))() or 2*n_jobs",
        "2*n_jobs; open('{marker}', 'w')",
        "2*n_jobs\nopen('{marker}', 'w')",
    ],
)
def test_pre_dispatch_is_never_evaluated(tmp_path: Path, expression: str) -> None:
    marker = tmp_path / "evaluated"
    with pytest.raises(ValueError, match="pre_dispatch"):
        Parallel(n_jobs=2, pre_dispatch=expression.format(marker=marker))
    assert not marker.exists()


async def test_worker_environment_does_not_reach_the_parent(tmp_path: Path) -> None:
    name = "AIOPARALLEL_RELIABILITY_LEAK"
    env_before = dict(os.environ)
    cwd_before = os.getcwd()
    with anyio.fail_after(RUN_LIMIT):
        results = await Parallel(n_jobs=2, batch_size=1)(
            delayed(set_env)(name, f"worker-{i}") for i in range(4)
        )
        # The variable does live on in the worker that set it (the same warm process) ...
        seen = await Parallel(n_jobs=2, batch_size=1)(delayed(get_env)(name) for i in range(4))
    assert {flag for _, flag in results} == {"1"}  # they ran in workers
    assert {pid for pid, _ in results} != {os.getpid()}
    assert set(seen) <= {f"worker-{i}" for i in range(4)}
    # ... but never in the parent, whose environment the pool did not touch either.
    assert name not in os.environ
    assert "AIOPARALLEL_IN_WORKER" not in os.environ
    assert dict(os.environ) == env_before
    assert os.getcwd() == cwd_before
