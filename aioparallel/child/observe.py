"""What a worker tells its parent besides results: the log records its tasks emit. Standard
library only, and no ``logging`` until a task (or a module a job imports) imports it: a
worker whose tasks never touch logging pays nothing for it (``watch_logging``).

::

    task: log.info(...) ─► the worker's loggers: levels mirror the parent's (SETUP frame),
                           so a record the parent would drop is not even created
        ─► the root logger's only handler (``child.logs.ShipHandler``): the message
           formatted, the traceback as text, every attribute a plain value
        ─► Logs.add: buffered with (job, position) of the task that emitted it: the
           sync call running (``Logs.task``) or the async task (``TASK``, set in its context)
        ─► one LOG frame for many records, written under the frames' lock:
             before every RESULTS frame (a task's records arrive before its result),
             at the end of a sync call that logged, once MAX_RECORDS wait,
             at once for the first record of a sync call, and for any record when no LOG
             frame left for EAGER_SECONDS (a task's last words before it kills its worker
             reach the parent, unless it logs many in a burst)

On a hard crash (``os._exit``, a segfault, a kill) the records that the crashing call emitted
after its first, in its last ``EAGER_SECONDS``, are lost (at most ``MAX_RECORDS``); for an
async task, those of its last ``EAGER_SECONDS``. The records of calls that ended before it
are not lost.
"""

from __future__ import annotations

import contextvars
import pickle
import sys
import threading
import time
from typing import Any

from . import protocol

#: ``(job base, position)`` of the async task running in this context: set in each task on
#: the worker's loop (``async_loop``), read by the log handler.
TASK: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "aioparallel_task", default=None
)

#: Records of one LOG frame at most (about 0.3 MB of typical records).
MAX_RECORDS = 1000
#: A record emitted this long after the last LOG frame is sent at once, with those waiting.
EAGER_SECONDS = 0.01

#: A record as it crosses: (job base, position) of its task or None, its attributes.
Shipped = tuple[tuple[int, int] | None, dict[str, Any]]


class Logs:
    """The records waiting for a LOG frame, and the parent's levels for the handler.

    Records are appended from any thread (the handler's lock orders one handler's emits;
    ``_guard`` the swap); frames are written under the worker's ``write_lock``, which a
    record's handler only tries to take, so a record logged while a frame is written (by a
    finalizer, from another thread) waits for the next frame instead of a deadlock."""

    __slots__ = (
        "_guard",
        "_told",
        "_write_lock",
        "base",
        "fd",
        "handler",
        "last_sent",
        "levels",
        "records",
        "task",
    )

    def __init__(self, fd: int, write_lock: threading.Lock):
        self.fd = fd
        self._write_lock = write_lock
        self._guard = threading.Lock()
        self.records: list[Shipped] = []
        #: The job running (its slot base) and its sync call running, on the main thread.
        self.base = -1
        self.task: int | None = None
        self.last_sent = 0.0
        #: The sync call whose first record was sent at once.
        self._told: tuple[int, int] | None = None
        #: The parent's levels (SETUP), applied by the handler once logging is imported.
        self.levels: Any = None
        self.handler: Any = None

    def add(self, attrs: dict[str, Any]) -> None:
        """Buffer one record (from the handler); send the buffer now if this is the first
        record of a sync call, if it is full, or if no LOG frame left for ``EAGER_SECONDS``."""
        task = TASK.get()
        first = False
        if task is None and self.task is not None:
            task = (self.base, self.task)
            first = task != self._told
        with self._guard:
            self.records.append((task, attrs))
            full = len(self.records) >= MAX_RECORDS
        due = first or full or time.monotonic() - self.last_sent > EAGER_SECONDS
        if due and self._write_lock.acquire(blocking=False):
            try:
                self.send_locked()
            finally:
                self._write_lock.release()
            if first:
                self._told = task

    def send(self) -> None:
        """The records waiting, in one frame (at the end of a sync call that logged)."""
        with self._write_lock:
            self.send_locked()

    def send_locked(self) -> None:
        """As ``send``, the caller holding ``write_lock``. The attributes are plain values:
        pickling them runs no code of the task's."""
        if not self.records:  # the common case; one appended after this waits for the next
            return
        with self._guard:
            records, self.records = self.records, []
        if records:
            protocol.write_frame(self.fd, protocol.LOG, pickle.dumps(records, protocol=5))
            self.last_sent = time.monotonic()

    def set_levels(self, levels: Any) -> None:
        """The parent's levels, from a SETUP frame (sent when they changed)."""
        self.levels = levels
        if self.handler is not None:
            self.handler.set_levels(levels)


def watch_logging(logs: Logs) -> None:
    """Ship log records from the moment ``logging`` is imported: now if it is, else right
    after a task or a module it needs imports it (a finder that finds nothing, only notices
    that import and wraps its loader)."""
    if "logging" in sys.modules:
        _install(logs)
    else:
        sys.meta_path.insert(0, _LoggingWatcher(logs))


def _install(logs: Logs) -> None:
    from . import logs as worker_logs

    worker_logs.install(logs)


class _LoggingWatcher:
    """On ``sys.meta_path`` until ``logging`` is imported: returns the real finder's spec for
    it, with a loader that installs the handler once the module has run."""

    def __init__(self, logs: Logs):
        self.logs = logs

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "logging":
            return None
        sys.meta_path.remove(self)  # we return a spec: the import machinery stops here
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None and spec.loader is not None:
                spec.loader = _ThenInstall(spec.loader, self.logs)
                return spec
        return None  # pragma: no cover - a Python without logging


class _ThenInstall:
    """The real loader of ``logging``, then ``_install``."""

    def __init__(self, loader: Any, logs: Logs):
        self.loader = loader
        self.logs = logs

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        _install(self.logs)

    def __getattr__(self, name: str) -> Any:  # get_source, is_package, ...: the real one's
        return getattr(self.loader, name)
