"""A run of one call: a web request's single task, or an interactive one. It goes straight to
the backend's ``run_batch``, without the lanes, batch sizing, pre_dispatch budget and sink a
run of many calls needs (together a third of a one-call run's time on a warm pool).

The guarantees are the backend's batch's, as for any run: a crash or a timeout names the
call, a cancellation stops its worker, the run's temp files go with it. Its outcome is
delivered as ``Run`` delivers one (``settle``), and auto batching learns from it as from a
run of one batch, so the next run of its function is sized the same either way.
"""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Iterator
from itertools import chain, islice
from typing import Any, cast

from .._call import Call
from ..backends.base import Backend, Batch, RunOptions, batch_seconds
from .batching import (
    MIN_BATCH_SECONDS,
    AutoBatcher,
    latest_call_seconds,
    note_call_seconds,
    note_length,
)
from .outcomes import raise_unwrapped, settle
from .source import as_call, close_coroutines

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["one_call", "run_single"]


def one_call(iterable: object, peek: bool) -> tuple[Call[Any] | None, object]:
    """``(call, iterable)``: the input's only call, or None and the input to run as usual.

    A list or tuple tells its length. An iterator with none is read two items ahead if
    ``peek`` (pre_dispatch lets a run take two calls; a run reads one ahead to find the
    input's end): if it has more, the run gets them back in front of the rest, so it sees
    the same input. An input that raises while read raises here, as the run would."""
    if type(iterable) is list or type(iterable) is tuple:
        if len(iterable) != 1:
            return None, iterable
        item = iterable[0]
    elif peek and hasattr(iterable, "__next__") and not hasattr(iterable, "__len__"):
        rest = cast("Iterator[Any]", iterable)
        head = list(islice(rest, 2))
        if len(head) != 1:
            return None, _put_back(head, rest) if head else head
        item = head[0]
    else:
        return None, iterable
    if type(item) is Call:
        return item, iterable
    try:
        return as_call(item, 0), iterable
    except Exception:
        close_coroutines([item])
        raise


def _put_back(head: list[Any], rest: Iterator[Any]) -> Iterator[Any]:
    """``head``, then ``rest``: an item read ahead is held by no one here once the run has
    taken it (an array argument's file goes as soon as its call is done). ``rest`` goes
    through ``chain`` at C speed: a generator frame here would cost every item ~5% of what
    the parent spends on a call of ``x * 2``."""
    return chain(_pop_each(head), rest)


def _pop_each(head: list[Any]) -> Iterator[Any]:
    while head:
        yield head.pop(0)


async def run_single(
    backend: Backend,
    options: RunOptions,
    call: Call[Any],
    return_exceptions: bool,
    learn: bool,
) -> list[Any]:
    """Run ``call`` alone on ``backend``; its result in a list, or raise its failure as
    ``Run`` would. ``learn``: auto batching (``batch_size="auto"``) learns from it."""
    func = call.func
    # the pool's view of its size, as a run's (``Run.expected_work``): one call, of the time
    # its function's calls took last
    options = options.with_expected_work(lambda: latest_call_seconds(func))
    batch = Batch(0, [call], last=True)
    try:
        async with backend.open_run(options) as run_batch:
            began = time.perf_counter()
            values = await run_batch(batch)
            ran = time.perf_counter() - (began if batch.started is None else batch.started)
    except BaseExceptionGroup as group:  # as Run.execute raises it
        raise_unwrapped(group)
    if len(values) != 1:
        raise RuntimeError(f"backend returned {len(values)} results for 1 calls")
    note_call_seconds(func, ran)
    error = settle(values, 0, batch.calls, return_exceptions)
    if error is not None:
        raise error
    if learn and type(func) is types.FunctionType:  # as Run learns from one batch
        batcher = AutoBatcher(batch_seconds(backend, MIN_BATCH_SECONDS))
        batcher.start_from(func)
        batcher.record(1, ran, batch.nbytes)
        batcher.remember(func)
    note_length(func, 1)
    return values
