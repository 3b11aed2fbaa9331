"""Workloads that run in a fresh interpreter: W4 (cold start), W5 and W7 (memory).

``python -m benchmarks.child WORKLOAD PEER [JSON-PARAMS]`` runs one measurement for
one peer and prints one ``BENCH-RESULT {json}`` line. A fresh process per peer keeps
memory peaks from mixing (a peer's freed pages are not returned to the OS, and its
idle workers would inflate the next peer's baseline), and for W4 it is the point.

Imports are kept inside the functions: the cold-start path must load only the peer
adapter and the stdlib, so that W4 measures the peer, not us.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import mmap
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from benchmarks.peers import PEERS, Peer
from benchmarks.workloads import length, noop, sum_slice

RESULT_PREFIX = "BENCH-RESULT "


async def cold(peer_cls: type[Peer]) -> dict[str, Any]:
    """W4: import the peer and make 2 trivial calls on 2 workers, nothing warmed."""
    async with peer_cls(warm=False) as peer:
        results = await peer.map(noop, [(), ()])
    assert results == [None, None], results
    return {}


async def big_array(peer_cls: type[Peer], mb: float, calls: int) -> dict[str, Any]:
    """W5 (and W6's second half): one large array passed whole to every call.

    The pool is warmed before the array exists, so fork-started workers don't
    inherit it and the idle baseline has the array only in the parent, the way a
    user's program would.
    """
    import numpy as np

    from benchmarks.probes import Heartbeat, RssSampler

    async with peer_cls() as peer:
        arr = np.arange(int(mb * 1e6) // 8, dtype=np.float64)  # integers: exact sums
        edges = np.linspace(0, arr.size, calls + 1).astype(int).tolist()
        args = [(arr, a, b) for a, b in itertools.pairwise(edges)]
        gc.collect()
        with RssSampler(children=True) as mem:
            async with Heartbeat() as beat:
                t0 = time.perf_counter()
                results = await peer.map(sum_slice, args)
                seconds = time.perf_counter() - t0
    expected = [sum_slice(*a) for a in args]
    assert results == expected, f"wrong sums: {results[:3]}... != {expected[:3]}..."
    return {
        "seconds": seconds,
        "extra_mb": mem.extra_mb,
        "shm_mb": mem.shm_mb,
        "array_mb": arr.nbytes / 1e6,
        # what tmpfs allocates for a file that holds it: whole pages (the tmpfs bound)
        "array_pages_mb": -(-arr.nbytes // mmap.PAGESIZE) * mmap.PAGESIZE / 1e6,
        "lag_p99_ms": beat.p99_ms,
        "lag_max_ms": beat.max_ms,
        "rss_samples": mem.samples,
    }


async def generator(peer_cls: type[Peer], items: int, item_bytes: int) -> dict[str, Any]:
    """W7: a lazy generator of large items; how much of it does the parent hold?"""
    from benchmarks.probes import RssSampler

    async with peer_cls() as peer:
        gen = ((bytes(item_bytes),) for _ in range(items))  # a fresh object per item
        gc.collect()
        with RssSampler(children=False) as mem:
            t0 = time.perf_counter()
            results = await peer.map(length, gen, n=items)
            seconds = time.perf_counter() - t0
    assert len(results) == items, f"{len(results)} results for {items} items"
    assert all(r == item_bytes for r in results), "wrong lengths"
    return {
        "parent_mb": mem.extra_mb,
        "seconds": seconds,
        "input_mb": items * item_bytes / 1e6,
        "rss_samples": mem.samples,
    }


CHILDREN: dict[str, Callable[..., Coroutine[Any, Any, dict[str, Any]]]] = {
    "W4": cold,
    "W5": big_array,
    "W7": generator,
}


def main(argv: list[str]) -> int:
    workload, peer_name, *rest = argv
    params: dict[str, Any] = json.loads(rest[0]) if rest else {}
    result = asyncio.run(CHILDREN[workload](PEERS[peer_name], **params))
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
