"""A result stream collected by the garbage collector in another thread (issue 22).

An unclosed stream's finalizer cancels its run; the collector may run it in any thread. The
cancellation must reach the run's own loop through that loop's thread-safe entry (asyncio's
``call_soon_threadsafe``, trio's token ``run_sync_soon``): trio's cancel scopes are not
thread-safe, and on trio a cancel called from another thread never stopped the run.
"""

from __future__ import annotations

import gc
import threading
from typing import Any

import anyio
import pytest

from aioparallel import Parallel
from tests.helpers import endless_calls

pytestmark = pytest.mark.anyio

#: How long the run may take to stop once its stream is collected (a garbage collection and
#: the loop's finalizer hook in between: not the contract's "promptly").
STOP_LIMIT = 10.0


def _collect_in_a_thread() -> None:
    thread = threading.Thread(target=gc.collect, name="test-collector")
    thread.start()
    thread.join(STOP_LIMIT)
    assert not thread.is_alive()


@pytest.mark.parametrize("mode", ["generator", "generator_unordered"])
async def test_a_stream_collected_in_another_thread_stops_its_run(mode: str) -> None:
    closed = anyio.Event()
    stream: Any = Parallel(n_jobs=2, backend="threads", return_as=mode)(endless_calls(closed))  # type: ignore[call-overload]
    async for _ in stream:
        break
    stream.cycle = stream  # only the collector frees it, in the thread that runs it
    del stream
    with pytest.warns(ResourceWarning, match="not closed while its run was still going"):
        _collect_in_a_thread()
    with anyio.fail_after(STOP_LIMIT):
        await closed.wait()  # the run stopped, in its own loop
