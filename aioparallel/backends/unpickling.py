"""Unpickling a large results body in a thread without starving the event loop's thread.

``pickle.loads`` is one C call that holds the GIL from start to end, so even in a worker
thread it stalls the loop for as long as it runs: 0.25-0.5 s for a million small tuples,
whose unpickling is all object creation. :func:`loads_yielding` has the C unpickler read
the body through a Python-level file object instead. Pickles of protocol 4 and up come in
frames of about 64 KiB (about 1 ms of object creation), each read by one call of that
object's ``read``: running its bytecode is where the interpreter can hand the GIL to the
loop's thread once it has waited a switch interval (5 ms), and a ``time.sleep(0)`` every
``HAND_OVER`` seconds hands it over sooner. A large ``bytes`` or array, which the pickler
writes outside the frames, is copied ``PIECE`` bytes at a time. Measured on a million
``(int, str)`` tuples: the loop's worst lag went from 0.25-0.7 s to 10-30 ms, its median
from the whole unpickling to 1.5 ms, at the same unpickling time.
"""

from __future__ import annotations

import pickle
import time
from typing import Any

import anyio.to_thread

__all__ = ["THREAD_UNPICKLE_BYTES", "loads", "loads_yielding"]

#: Pickled bodies above this are unpickled in a thread, off the event loop.
THREAD_UNPICKLE_BYTES = 256 * 1024

#: Most bytes copied in one go (about 0.1 ms) between two chances to hand the GIL over.
PIECE = 1024 * 1024
#: Seconds of unpickling between two hand-overs of the GIL: each costs a ``sleep(0)``
#: system call (about 0.1 ms, the kernel's timer slack), too much to pay at every frame.
HAND_OVER = 0.002


class _Pieces:
    """A read-only file over ``data`` whose every read lets other threads run first."""

    __slots__ = ("_data", "_next", "_pos", "_view")

    def __init__(self, data: bytes):
        self._data = data
        self._view = memoryview(data)
        self._pos = 0
        self._next = time.perf_counter() + HAND_OVER

    def _hand_over(self) -> None:
        """Every ``HAND_OVER`` seconds, release the GIL: a thread waiting for it (the
        loop's) takes it now, not at the end of the switch interval."""
        if time.perf_counter() >= self._next:
            time.sleep(0)
            self._next = time.perf_counter() + HAND_OVER

    def read(self, n: int = -1) -> bytes:
        self._hand_over()
        start = self._pos
        end = len(self._data) if n < 0 else min(start + n, len(self._data))
        self._pos = end
        return self._data[start:end]

    def readinto(self, buffer: memoryview) -> int:
        """Large ``bytes``/``bytearray`` objects (arrays' data): a piece at a time."""
        target = memoryview(buffer).cast("B")
        n = min(len(target), len(self._data) - self._pos)
        for at in range(0, n, PIECE):
            self._hand_over()
            size = min(PIECE, n - at)
            target[at : at + size] = self._view[self._pos + at : self._pos + at + size]
        self._pos += n
        return n

    def readline(self) -> bytes:
        """Protocol 0 pickles' text opcodes (our own pickles never use them)."""
        start = self._pos
        end = self._data.find(b"\n", start)
        self._pos = len(self._data) if end < 0 else end + 1
        return self._data[start : self._pos]


def loads_yielding(body: bytes) -> Any:
    """``pickle.loads(body)``, giving other threads the GIL at every frame; run it in a
    thread (on the loop itself it only adds the hand-overs' cost)."""
    return _Unpickler(_Pieces(body)).load()


#: How a pickle within the pickle is loaded: a worker sends a result it had already pickled
#: (for the crash slot's journal) as ``pickle.loads(<its bytes>)``.
_NESTED_LOADS = frozenset({("_pickle", "loads"), ("pickle", "loads")})


class _Unpickler(pickle.Unpickler):
    """Loads the pickles nested in the body the same way, yielding: a plain
    ``pickle.loads`` of a 16 MB result held the GIL for 250 ms in one C call."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NESTED_LOADS:
            return loads_yielding
        return super().find_class(module, name)


async def loads(body: bytes) -> Any:
    """``pickle.loads`` for the event loop: a large body (results, log records) is unpickled
    in a thread that hands the GIL to the loop at every frame (``loads_yielding``)."""
    if len(body) > THREAD_UNPICKLE_BYTES:
        return await anyio.to_thread.run_sync(loads_yielding, body)
    return pickle.loads(body)
