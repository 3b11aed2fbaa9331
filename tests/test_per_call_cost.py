"""The per-call fast paths of the parent (issue 18, W1/W6): they must keep every behaviour.

- results of consecutive positions travel as a range (a few bytes, not 4 per call), and any
  other order still travels position by position;
- the input is pulled in chunks, never past what was asked, and a bad item is still named
  by its own index;
- ``delayed(f)(x)`` builds the same ``Call`` as ``Call(f, (x,), {})``;
- a batch of one function that mixes plain results, failures and returned exceptions still
  puts each outcome in its own slot;
- the worker reads a frame in one read per part when it can, and still joins a body the
  pipe delivers in pieces.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from aioparallel import Call, Parallel, delayed
from aioparallel.child.protocol import (
    RESULTS,
    read_frame,
    results_header,
    split_results,
    write_frame,
)
from aioparallel.run.source import NotACallError, Source
from tests.helpers import square


@pytest.mark.parametrize(
    "positions",
    [[], [7], list(range(4096)), list(range(5, 9)), [1, 3, 2, 4], [0, 2, 3], [3, 2, 1, 0]],
)
@pytest.mark.parametrize("done", [False, True])
def test_results_header_round_trips(positions: list[int], done: bool) -> None:
    got, got_done, rest = split_results(results_header(positions, done) + b"body")
    assert list(got) == positions
    assert got_done is done
    assert rest == b"body"


def test_consecutive_positions_cost_a_few_bytes() -> None:
    assert len(results_header(list(range(4096)), True)) <= 16


@pytest.mark.parametrize("size", [0, 1, 100, 512 * 1024])
def test_a_frame_arrives_whole_through_a_pipe(size: int) -> None:
    """512 KiB is past a pipe's buffer: its body's first read returns only part of it."""
    body = bytes(i % 251 for i in range(size))
    read_fd, write_fd = os.pipe()

    def write() -> None:
        try:
            write_frame(write_fd, RESULTS, body)
        except BrokenPipeError:  # the reader failed and closed its end
            pass

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert read_frame(read_fd) == (RESULTS, body)
    finally:
        os.close(read_fd)
        writer.join()
        os.close(write_fd)


def _counting(items: list[Any], pulled: list[int]) -> Iterator[Any]:
    for item in items:
        pulled[0] += 1
        yield item


@pytest.mark.anyio
async def test_take_pulls_no_more_than_asked() -> None:
    pulled = [0]
    source = Source(_counting([delayed(square)(i) for i in range(1000)], pulled))
    for want in (1, 63, 64, 65, 200):
        before, got = pulled[0], 0
        while got < want:  # a take may return fewer (it yields to the loop after 1 ms)
            calls = await source.take(want - got)
            assert 0 < len(calls) <= want - got
            got += len(calls)
            assert pulled[0] - before == got  # nothing pulled past what was taken
    assert not source.exhausted
    rest = 0
    while not source.exhausted:
        rest += len(await source.take(10_000))
    assert rest == 1000 - (1 + 63 + 64 + 65 + 200)
    assert source.taken == 1000


@pytest.mark.anyio
async def test_take_accepts_tuples_and_names_a_bad_item_by_its_index() -> None:
    items: list[Any] = [delayed(square)(i) for i in range(70)]
    items[3] = (square, [3], {})  # a joblib-style triple, args as a list
    items.append(42)  # item 70: not a call
    source = Source(iter(items))
    calls = await source.take(65)
    assert calls[3] == Call(square, (3,), {}) and type(calls[3]) is Call
    with pytest.raises(NotACallError, match="input item 70 "):
        await source.take(100)


def test_delayed_builds_the_same_call() -> None:
    call = delayed(square)(3, k=1)
    assert type(call) is Call
    assert (call.func, call.args, call.kwargs) == (square, (3,), {"k": 1})
    assert call == Call(square, (3,), {"k": 1})
    assert delayed(square)(4)() == 16


def fail_on_odd(x: int) -> Any:
    if x % 2:
        raise ValueError(x)
    return ValueError(-x) if x % 4 == 0 else x


@pytest.mark.anyio
async def test_mixed_outcomes_of_one_function_land_in_their_slots() -> None:
    async with Parallel(n_jobs=2, return_exceptions=True, batch_size=50) as parallel:
        out = await parallel(delayed(fail_on_odd)(i) for i in range(200))
    for i, value in enumerate(out):
        assert isinstance(value, ValueError) if i % 2 or i % 4 == 0 else value == i
        if i % 2:
            assert value.args == (i,)
        elif i % 4 == 0:
            assert value.args == (-i,)


@pytest.mark.anyio
async def test_only_an_unfinished_async_generator_needs_closing() -> None:
    async def agen() -> Any:
        for i in range(3):
            yield delayed(square)(i)

    assert not Source(iter([delayed(square)(1)])).closable
    unfinished = Source(agen())
    await unfinished.take(1)
    assert unfinished.closable
    await unfinished.aclose()
    finished = Source(agen())
    await finished.take(10)
    assert finished.exhausted and not finished.closable
