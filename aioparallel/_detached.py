"""Tasks that outlive the caller's scope but not its event loop.

The run behind a streamed result needs one (the consumer's ``async for`` gives us no task
group). On asyncio the task is a plain task, cancelled by ``asyncio.run`` at the end; on
trio it is a system task, cancelled when the main task exits.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["spawn_detached"]

# asyncio keeps only weak references to tasks: hold ours until they finish.
_hosts: set[Any] = set()


def _in_trio() -> bool:
    """True inside trio (not via sniffio: anyio no longer installs it; trio does)."""
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


def spawn_detached(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Start ``fn()`` outside the caller's scope; return a sync function that cancels it.

    Cancellation goes through an anyio scope, not ``task.cancel()``: anyio's shielded cleanup
    scopes hold against the former only. The function may be called from any thread (a
    stream's finalizer runs wherever the garbage collector does): the scope is cancelled in
    its loop's own thread, as loops and cancel scopes are not thread-safe. Once the loop is
    gone it raises ``RuntimeError`` or does nothing.
    """
    import anyio

    scope = anyio.CancelScope()

    async def host() -> None:
        with scope:
            try:
                await fn()
            except Exception:  # a detached task has no caller to raise to: never crash the loop
                logging.getLogger("aioparallel").exception("aioparallel background task failed")

    if _in_trio():
        import trio

        token = trio.lowlevel.current_trio_token()
        trio.lowlevel.spawn_system_task(host, context=contextvars.copy_context())

        def cancel_trio() -> None:
            if _in_trio() and trio.lowlevel.current_trio_token() is token:
                scope.cancel()
            else:  # raises RunFinishedError (a RuntimeError) once the run has ended
                token.run_sync_soon(scope.cancel)

        return cancel_trio

    import asyncio

    loop = asyncio.get_running_loop()
    task = loop.create_task(host())
    _hosts.add(task)
    task.add_done_callback(_hosts.discard)

    def cancel() -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(scope.cancel)

    return cancel
