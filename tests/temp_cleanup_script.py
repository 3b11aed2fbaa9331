"""A program the temp-cleanup tests start: ``python -m tests.temp_cleanup_script MODE FOLDER``.

- ``fork``: a run (on a loop in a thread) whose first call waits for ``FOLDER/go``; meanwhile
  the main thread forks, and the child exits normally (``sys.exit``: atexit handlers, module
  teardown, which drops the large array). The run then goes on: its second call uses the
  same array file. Prints the child's exit status and the results as JSON.
- ``sigterm``: a run whose call writes ``FOLDER/ready`` (its pid) and sleeps; the test then
  sends the program SIGTERM.

Both put the run's folder in ``FOLDER/base``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from aioparallel import Parallel, delayed

BIG = 200_000  # float64 elements: 1.6 MB, above the default max_nbytes of 1M
#: The module holds the array: the forked child frees it when it tears its modules down.
ARRAY: Any = np.arange(BIG, dtype=np.float64)
LIMIT = 30.0


def wait_file(path: Path) -> None:
    deadline = time.monotonic() + LIMIT
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)


def started_then_wait(arr: Any, folder: str) -> float:
    """In the worker: say the run is under way, then wait for the go."""
    Path(folder, "started").touch()
    wait_file(Path(folder, "go"))
    return float(arr.sum())


def total(arr: Any) -> float:
    return float(arr.sum())


def ready_then_sleep(arr: Any, folder: str) -> float:
    Path(folder, "ready.tmp").write_text(str(os.getpid()))
    os.rename(Path(folder, "ready.tmp"), Path(folder, "ready"))
    time.sleep(LIMIT)
    return float(arr.sum())


def fork(folder: Path) -> None:
    results: list[Any] = []

    async def run() -> None:
        # pre_dispatch=1: the second call is sent once the first is over (after the fork)
        p = Parallel(n_jobs=2, batch_size=1, pre_dispatch=1, temp_folder=folder / "base")
        calls = [delayed(started_then_wait)(ARRAY, str(folder)), delayed(total)(ARRAY)]
        try:
            results.extend(await p(calls))
        except Exception as exc:
            results.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=anyio.run, args=(run,))
    thread.start()
    wait_file(folder / "started")
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # a normal exit of the child: atexit, then module teardown
    _, status = os.waitpid(pid, 0)
    (folder / "go").touch()
    thread.join()
    print(json.dumps({"child_status": status, "results": results}))


async def sigterm(folder: Path) -> None:
    p = Parallel(n_jobs=2, temp_folder=folder / "base")
    await p([delayed(ready_then_sleep)(ARRAY, str(folder))])


if __name__ == "__main__":
    mode, where = sys.argv[1], Path(sys.argv[2])
    (where / "base").mkdir(exist_ok=True)
    if mode == "fork":
        fork(where)
    else:
        anyio.run(sigterm, where)
