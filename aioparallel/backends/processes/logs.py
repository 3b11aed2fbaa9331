"""Log records from process workers, handled in the parent (the worker's side is
``child.observe`` and ``child.logs``).

::

    levels() ──SETUP (when changed)──► worker: its loggers mirror ours, its handler drops
                                       what we would drop, before pickling
    worker ──LOG frames (before the RESULTS frame of the calls that logged)──► handle():
        unpickled off the loop when large, then on the loop, in order, a slice at a time:
        record.aioparallel_task = the task's index in its run
        logging.getLogger(record.name).handle(record)   (if that logger is enabled for it)

A record keeps the worker's pid (``record.process``), time and place; its message arrives
formatted and its traceback as text (``record.exc_text``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
import anyio.lowlevel
import anyio.to_thread

from ..unpickling import loads

__all__ = ["handle", "levels"]

#: Records handled on the loop between two turns of it, at most.
SLICE_SECONDS = 0.005

#: Set in the root logger's level cache, which ``setLevel`` and ``logging.disable`` clear:
#: while it is there, the levels have not changed since ``levels()`` last looked.
_SEEN = "aioparallel levels"
_levels: tuple[int, tuple[tuple[str, int, bool], ...]] | None = None

#: Maps a record's (job base, position) to its task's index in the run, or None.
TaskIndex = Callable[[tuple[int, int] | None], int | None]


def levels() -> tuple[int, tuple[tuple[str, int, bool], ...]]:
    """The parent's levels as a worker mirrors them: ``logging.disable``'s level, then the
    root logger's level and disabled flag (name "") and those of every logger whose level
    was set or which was disabled. Recomputed only after a level changed: a dict look-up
    per job otherwise."""
    global _levels
    root = logging.root
    cache: dict[object, object] = getattr(root, "_cache", {})
    if _levels is not None and _SEEN in cache:
        return _levels
    manager = root.manager
    loggers = [
        (name, logger.level, logger.disabled)
        for name, logger in list(manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and (logger.level or logger.disabled)
    ]
    _levels = (manager.disable, (("", root.level, root.disabled), *sorted(loggers)))
    cache[_SEEN] = True
    return _levels


async def handle(body: bytes, task_index: TaskIndex) -> None:
    """Handle the records of one LOG frame, in order, yielding to the loop every
    ``SLICE_SECONDS`` (10,000 records take tens of ms to handle)."""
    records = await loads(body)
    until = time.monotonic() + SLICE_SECONDS
    for n, (task, attrs) in enumerate(records):
        record = logging.makeLogRecord(attrs)
        index = task_index(task)
        if index is not None:
            record.aioparallel_task = index
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):  # the worker's own levels may have differed
            logger.handle(record)
        if n & 63 == 63 and time.monotonic() > until:
            await anyio.lowlevel.checkpoint()
            until = time.monotonic() + SLICE_SECONDS


def untold(task: tuple[int, int] | None) -> None:
    """A ``TaskIndex`` for records outside any job (the initializer's)."""
    return None
