"""The crash matrix (after loky's): where a task misbehaves, by how it misbehaves, gives the error.

where: pickling the call in the parent, unpickling it in the worker, the call itself, pickling
its result in the worker, unpickling the result in the parent. how: an exception, SystemExit,
``os._exit(3)``, a segfault. The last two cannot be survived in the parent (no library could:
they end the caller's own process), so the parent-side rows stop at SystemExit.

Each case runs in two layouts: ``single`` (the culprit is call 5, after five innocent calls,
``return_exceptions=False``: the error is raised) and ``batch`` (the culprit is call 5 of one
batch of 10, ``return_exceptions=True``: the error lands in slot 5 and the 9 innocent calls get
their results; those before it had finished and are never run twice). In every case: no
hang, the error names the culprit, and the pool is usable afterwards. The cases with
SystemExit in the parent run in a fresh interpreter, so that a regression cannot take the
test process's event loop down with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioparallel import Parallel, PicklingError, UnpicklingError, WorkerCrashedError, delayed
from tests import proc_helpers as h

WHERE = ["parent_pickle", "worker_unpickle", "call", "result_pickle", "parent_unpickle"]
HOW = ["exception", "systemexit", "os_exit", "segfault"]
PARENT_SIDE = {"parent_pickle", "parent_unpickle"}
#: A case still running after this long is a hang (a healthy one takes well under a second).
HANG_LIMIT = 8.0
CULPRIT = 5
ROOT = Path(__file__).resolve().parent.parent


def culprit_call(where: str, how: str) -> Any:
    if where == "parent_pickle":
        return delayed(h.take_arg)(h.BadAtPickle(how))
    if where == "worker_unpickle":
        return delayed(h.take_arg)(h.BadAtUnpickleInWorker(how))
    if where == "call":
        return delayed(h.misbehave_call)(how)
    if where == "result_pickle":
        return delayed(h.return_instance)(h.BadAtPickle, how)
    return delayed(h.return_instance)(h.BadAtUnpickleInParent, how)


def expected(where: str, how: str) -> tuple[type[BaseException], int | None]:
    """The error type, and the exit code a WorkerCrashedError must report."""
    if how == "os_exit":
        return WorkerCrashedError, 3
    if how == "segfault":
        return WorkerCrashedError, -11
    if where == "call":  # the task's own exception, with its own type (as in loky)
        return (RuntimeError if how == "exception" else SystemExit), None
    if where in ("parent_pickle", "result_pickle"):
        return PicklingError, None  # both also SerializationError and pickle.PicklingError
    return UnpicklingError, None


def _cases(*, isolated: bool) -> list[Any]:
    """The matrix; ``isolated`` picks the cases run in a fresh interpreter (SystemExit in the
    parent)."""
    cases = []
    for layout in ("single", "batch"):
        for where in WHERE:
            for how in HOW:
                if where in PARENT_SIDE and how in ("os_exit", "segfault"):
                    continue  # would end the test process itself
                if (where in PARENT_SIDE and how == "systemexit") != isolated:
                    continue
                cases.append(pytest.param(layout, where, how, id=f"{layout}-{where}-{how}"))
    return cases


def judge_error(error: object, kind: type[BaseException], code: int | None) -> list[str]:
    """What is wrong with ``error`` as the culprit's error (nothing: an empty list)."""
    if type(error) is not kind:
        return [f"expected {kind.__name__}, got {error!r}"]
    assert isinstance(error, BaseException)
    problems = []
    notes = getattr(error, "__notes__", [])
    if not any(f"task {CULPRIT}" in note for note in notes):
        problems.append(f"the error does not name task {CULPRIT}: notes {notes}")
    if isinstance(error, WorkerCrashedError):
        if error.task_index != CULPRIT:
            problems.append(f"task_index {error.task_index}, expected {CULPRIT}")
        if error.exitcode != code:
            problems.append(f"exitcode {error.exitcode}, expected {code}")
    return problems


async def run_case(layout: str, where: str, how: str) -> list[str]:
    """Run one case; the list of what went wrong (empty when all is as the contract says)."""
    if layout == "single":
        # the culprit after innocent calls (so its index is not 0), the error raised
        calls = [delayed(h.tagged)(x) for x in range(CULPRIT)] + [culprit_call(where, how)]
        parallel = Parallel(n_jobs=2)
    else:
        calls = [
            culprit_call(where, how) if x == CULPRIT else delayed(h.tagged)(x) for x in range(10)
        ]
        parallel = Parallel(n_jobs=2, batch_size=10, pre_dispatch="all", return_exceptions=True)
    outcome: Any
    started = time.monotonic()
    try:
        with anyio.fail_after(HANG_LIMIT):
            outcome = await parallel(calls)
    except (Exception, SystemExit) as exc:
        outcome = exc
    if time.monotonic() - started >= HANG_LIMIT:
        return [f"hung for {HANG_LIMIT:g}s"]

    problems = []
    again = await Parallel(n_jobs=2)(delayed(h.square_and_pid)(x) for x in range(6))
    if [v for v, _ in again] != [x * x for x in range(6)]:
        problems.append(f"the pool is broken afterwards: {again}")
    kind, code = expected(where, how)
    if layout == "single":
        problems += judge_error(outcome, kind, code)
    elif not isinstance(outcome, list):
        problems.append(f"raised instead of filling slot {CULPRIT}: {outcome!r}")
    else:
        problems += judge_error(outcome[CULPRIT], kind, code)
        innocent = {x: v for x, v in enumerate(outcome) if x != CULPRIT and v != (x, x * x)}
        if innocent:
            problems.append(f"innocent calls got: {innocent}")
    return problems


@pytest.mark.asyncio
@pytest.mark.parametrize(("layout", "where", "how"), _cases(isolated=False))
async def test_crash_matrix(layout: str, where: str, how: str) -> None:
    assert await run_case(layout, where, how) == []


ISOLATED_SCRIPT = """
import asyncio, json, sys
sys.path.insert(0, {root!r})
from tests.proc_helpers import child_pids, pid_gone
from tests.test_crash_matrix import run_case

try:
    problems = asyncio.run(run_case({layout!r}, {where!r}, {how!r}))
except BaseException as exc:
    problems = [f"asyncio.run() raised {{exc!r}}: it escaped the event loop"]
import aioparallel
aioparallel.shutdown_workers()  # idle ones stay warm after the loop (docs/workers.md): not leaks
alive = [pid for pid in child_pids() if not pid_gone(pid)]
if alive:
    problems.append(f"worker processes still running after asyncio.run(): {{alive}}")
print(json.dumps(problems))
"""


@pytest.mark.parametrize(("layout", "where", "how"), _cases(isolated=True))
def test_crash_matrix_isolated(layout: str, where: str, how: str, tmp_path: Path) -> None:
    """SystemExit raised in the parent: run in a fresh interpreter, where the damage it may
    do to the event loop stays contained."""
    script = ISOLATED_SCRIPT.format(root=str(ROOT), layout=layout, where=where, how=how)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=HANG_LIMIT * 3,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, done.stderr[-2000:]
    assert json.loads(lines[-1]) == []
