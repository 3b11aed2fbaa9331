"""Task functions shared by every peer.

They live at module level in an importable module (not ``__main__``) so that every
peer can pickle them by reference, including the ones that use the stdlib pickle
(``ProcessPoolExecutor``, ``anyio.to_process``) and spawn-started workers
(``aiomultiprocess``). This module imports only the stdlib: a worker that unpickles
``double`` should not pay for numpy or a peer library, or W4 would measure us, not them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

#: Environment variable carrying the calibrated loop length from the parent to every
#: worker, so all peers spin exactly the same number of iterations.
SPIN_ENV = "AIOPARALLEL_BENCH_SPIN_ITERS"
SPIN_SECONDS = 0.025

_spin_iters: int | None = None


def double(x: int) -> int:
    """W1/W6: the smallest useful task, so overhead is all that is measured."""
    return x * 2


def noop() -> None:
    """W3/W4: a call that does nothing, so latency is pure round trip."""
    return None


def length(b: bytes) -> int:
    """W7: returns a small result for a large argument, so memory is all input."""
    return len(b)


def sum_slice(arr: Any, start: int, stop: int) -> float:
    """W5: touches only its slice although the whole array is passed.

    The method call keeps this module free of a numpy import; ``arr`` is a numpy
    array or memmap.
    """
    return float(arr[start:stop].sum())


def _spin(i: int, iters: int) -> int:
    """XOR of ``i .. i + iters - 1``: every value stays a one-digit int, so the cost per
    iteration is the same for 1 ms as for 25 ms and one calibration scales linearly."""
    acc = 0
    for k in range(i, i + iters):
        acc ^= k
    return acc


def calibrate(seconds: float = SPIN_SECONDS) -> int:
    """Measure how many loop iterations take ``seconds`` of CPU here; best of five.

    CPU time, not wall time: on a busy machine the wall clock also counts the time other
    processes had the core, and the spins would come out shorter than their name.
    Called once by the parent; the result is exported in ``SPIN_ENV`` before any
    pool starts, so workers inherit it instead of each calibrating differently.
    """
    probe = 200_000
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        _spin(0, probe)
        best = min(best, time.process_time() - t0)
    iters = max(1, int(probe * seconds / best))
    os.environ[SPIN_ENV] = str(iters)
    global _spin_iters
    _spin_iters = iters
    return iters


def spin_iterations() -> int:
    """The calibrated loop length: from the parent's environment, else measured here."""
    global _spin_iters
    if _spin_iters is None:
        env = os.environ.get(SPIN_ENV)
        _spin_iters = int(env) if env else calibrate()
    return _spin_iters


def iterations_for(seconds: float) -> int:
    """Loop length for ``seconds`` of spinning, scaled from ``spin_25ms``'s calibration."""
    return max(1, int(spin_iterations() * seconds / SPIN_SECONDS))


def spin_25ms(i: int) -> int:
    """W2: about 25 ms of pure-Python work holding the GIL (threads can't help)."""
    return _spin(i, spin_iterations())


#: W9: the CPU time of one ``spin_1ms`` call, as calibrated (the ideal is computed from it).
SPIN_1MS_SECONDS = 0.001


def spin_1ms(i: int) -> int:
    """W9: about 1 ms of pure-Python work, the per-call CPU of a web request's map."""
    return _spin(i, iterations_for(SPIN_1MS_SECONDS))


def _xor_upto(m: int) -> int:
    """XOR of ``0 .. m`` (0 for m < 0): it cycles with period 4."""
    return 0 if m < 0 else (m, 1, m + 1, 0)[m % 4]


def spin_expected(i: int, iters: int) -> int:
    """``_spin(i, iters)`` in O(1): W9 checks its 10,000 results without redoing the work."""
    return _xor_upto(i + iters - 1) ^ _xor_upto(i - 1)


async def acall(func: Callable[..., Any], *args: Any) -> Any:
    """Run a sync task inside aiomultiprocess, whose workers only await coroutines."""
    return func(*args)


#: W8: each async task waits this long, then computes for about ``W8_CPU_SECONDS``.
W8_WAIT_SECONDS = 0.02
W8_CPU_SECONDS = 0.0005


async def nap_then_spin(i: int) -> int:
    """W8: an I/O wait, then a little CPU, as a fetch-then-parse task does."""
    import asyncio

    await asyncio.sleep(W8_WAIT_SECONDS)
    return _spin(i, iterations_for(W8_CPU_SECONDS))


def run_coroutine(func: Callable[..., Any], *args: Any) -> Any:
    """W8 for peers that only run sync functions: one event loop per call, in the worker
    (what wrapping an async function for ``run_in_executor`` or ``to_process`` gives)."""
    import asyncio

    return asyncio.run(func(*args))
