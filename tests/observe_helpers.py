"""Tasks that log, and context variables, for ``test_worker_logs`` and ``test_context``: worker
processes import them by name (``tests.observe_helpers``)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
from typing import Any

#: The parent's tests attach their handlers here (propagate=False: nothing reaches stderr).
LOGGER = "tests.observe"
log = logging.getLogger(LOGGER)

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("tenant")
#: A lock does not pickle: the value a test sets to fail a call.
UNPICKLABLE = threading.Lock()


def say(x: int, level: int = logging.WARNING) -> int:
    log.log(level, "sync %d", x)
    return os.getpid()


async def say_async(x: int, wait: float = 0.0) -> int:
    await asyncio.sleep(wait)
    log.warning("async %d", x)
    await asyncio.sleep(0)
    return os.getpid()


def fail_loudly(x: int) -> int:
    try:
        raise ValueError(f"bad input {x}")
    except ValueError:
        log.exception("failed on %d", x)
    return x


def say_then_exit(x: int) -> int:
    log.warning("last words %d", x)
    os._exit(3)


def say_many(n: int) -> int:
    for i in range(n):
        log.warning("record %d of %d", i, n)
    return n


def _buffered() -> int:
    """Records the worker holds for its next LOG frame."""
    handler = logging.getLogger().handlers[0]
    assert type(handler).__name__ == "ShipHandler", handler
    return len(handler.logs.records)  # type: ignore[attr-defined]


def say_below_the_parents_level() -> tuple[bool, int, int]:
    """Log DEBUG, as the worker's levels (mirroring the parent's) allow, then after lowering
    them here: (DEBUG enabled at first, records buffered by each attempt)."""
    enabled = log.isEnabledFor(logging.DEBUG)
    before = _buffered()
    log.debug("dropped in the worker's logger")
    first = _buffered() - before
    log.setLevel(logging.DEBUG)  # this worker only: the parent's levels still decide
    try:
        log.debug("dropped by the shipping handler")
    finally:
        log.setLevel(logging.NOTSET)
    return enabled, first, _buffered() - before - first


def stderr_handlers() -> list[str]:
    return [type(h).__name__ for h in logging.getLogger().handlers]


# -- context ------------------------------------------------------------------------------------


def read(_: int = 0) -> tuple[str, str, int]:
    return REQUEST_ID.get("<unset>"), TENANT.get("<unset>"), os.getpid()


def read_then_set(_: int = 0) -> tuple[str, str, int]:
    seen = read()
    REQUEST_ID.set("set by a task")
    TENANT.set("set by a task")
    return seen


async def read_async(_: int = 0) -> tuple[str, str, int]:
    await asyncio.sleep(0)
    seen = read()
    REQUEST_ID.set("set by an async task")
    return seen


def identity(x: Any) -> Any:
    return x
