"""A program the parent-death tests start and then SIGKILL.

``python -m tests.reliability.orphan_script FOLDER LOOP STATE``

It runs two tasks on two process workers; each writes its pid to ``FOLDER/<i>.pid``.

- ``busy``: the tasks then sleep for a long time, so the workers are busy when it is killed;
- ``idle``: the tasks return at once; the program writes ``FOLDER/idle`` and waits, so its
  warm workers are idle when it is killed.
"""

from __future__ import annotations

import sys

import anyio

from aioparallel import Parallel, delayed
from tests.proc_helpers import LONG_SLEEP, pid_then_sleep

LOOPS = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}


async def main(folder: str, state: str) -> None:
    p = Parallel(n_jobs=2, batch_size=1)
    if state == "busy":
        await p(delayed(pid_then_sleep)(folder, i) for i in range(2))
        return
    # Both workers must run one task: the first sleeps until the second has started.
    await p(delayed(pid_then_sleep)(folder, i, 0.5 * (1 - i)) for i in range(2))
    await anyio.Path(folder, "idle").touch()
    await anyio.sleep(LONG_SLEEP)


if __name__ == "__main__":
    folder, loop, state = sys.argv[1:4]
    name, options = LOOPS[loop]
    anyio.run(main, folder, state, backend=name, backend_options=options)
