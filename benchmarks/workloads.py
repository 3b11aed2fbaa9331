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


#: W9: the nominal CPU time of one ``spin_1ms`` call (its ideal uses what calls report).
SPIN_1MS_SECONDS = 0.001
#: W10: the nominal CPU time of one ``spin_50ms`` call.
SPIN_50MS_SECONDS = 0.05


def _timed_spin(i: int, seconds: float) -> tuple[int, float]:
    """``_spin`` for about ``seconds``, and the CPU time it took on its worker's thread.

    The ideals of W9 and W10 are sums of these: measured in the run itself, on the
    workers, so a machine that is slower today (or a core shared with another process)
    moves the ideal with the figure instead of making a calibrated constant wrong.
    """
    t0 = time.thread_time()
    value = _spin(i, iterations_for(seconds))
    return value, time.thread_time() - t0


def spin_1ms(i: int) -> tuple[int, float]:
    """W9: about 1 ms of pure-Python work, the per-call CPU of a web request's map;
    returns ``(value, cpu_seconds)``."""
    return _timed_spin(i, SPIN_1MS_SECONDS)


def spin_50ms(i: int, scale: float = 1.0) -> tuple[int, float]:
    """W10: about 50 ms of pure-Python work, times ``scale`` (W10 sets it so that the calls
    take 50 ms of CPU on the workers as they run then); returns ``(value, cpu_seconds)``."""
    return _timed_spin(i, SPIN_50MS_SECONDS * scale)


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


def _read_exact(fd: int, n: int) -> bytes:
    """``n`` bytes from ``fd`` (b"" at end of file), however the pipe splits them."""
    chunks, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return b""
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def send_frame(fd: int, payload: bytes) -> None:
    """One length-prefixed message on a pipe (4-byte little-endian length, then bytes)."""
    data = len(payload).to_bytes(4, "little") + payload
    while data:
        data = data[os.write(fd, data) :]


def recv_frame(fd: int) -> bytes:
    """The next message ``send_frame`` wrote, or b"" when the writer closed the pipe."""
    header = _read_exact(fd, 4)
    return _read_exact(fd, int.from_bytes(header, "little")) if header else b""


def serve_pipe(rfd: int = 0, wfd: int = 1) -> None:
    """W3's raw-pipe floor, the worker side: unpickle ``(func, args)``, call, pickle the
    result back, until the parent closes the pipe. Nothing else: no framing beyond a
    length, no task ids, no error handling, so it is a floor, not a peer."""
    import pickle

    while msg := recv_frame(rfd):
        func, args = pickle.loads(msg)
        send_frame(wfd, pickle.dumps(func(*args), pickle.HIGHEST_PROTOCOL))
