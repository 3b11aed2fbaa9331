"""What the workloads measure with: memory peaks, event-loop lag, percentiles.

Memory is sampled by a background thread rather than read once at the end, because
the peaks we care about (a peer pickling a 400 MB array per call, a generator read
ahead) are transient: they are gone by the time the call returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from typing_extensions import Self

MB = 1e6  # decimal, so "400 MB" of float64 is exactly 50,000,000 elements


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a value that was actually observed."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def tmpfs_mounts() -> list[str]:
    """The writable tmpfs file systems (one mount point each), from ``/proc/mounts``: where
    the peers put their memmapped arrays. Empty where there is no such file (not Linux)."""
    points: list[str] = []
    devices: set[int] = set()
    try:
        with open("/proc/mounts") as mounts:
            lines = mounts.read().splitlines()
    except OSError:
        return points
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[2] != "tmpfs" or "ro" in fields[3].split(","):
            continue
        try:
            device = os.stat(fields[1]).st_dev
        except OSError:
            continue
        if device not in devices:
            devices.add(device)
            points.append(fields[1])
    return points


def tmpfs_used(points: list[str]) -> int:
    """Bytes used in the tmpfs file systems at ``points``: the files there, in whole pages.
    Not the kernel's ``Shmem`` count (psutil's ``shared``), which also holds every process's
    shared anonymous memory: a few pages of that come and go with whatever else runs (a
    peer's W5 read up to 27 pages *below* its start), at the W5 bound's own scale. Without
    ``points`` (not Linux), that count is all there is."""
    if not points:
        return int(psutil.virtual_memory().shared)
    used = 0
    for point in points:
        with contextlib.suppress(OSError):
            stat = os.statvfs(point)
            used += (stat.f_blocks - stat.f_bfree) * stat.f_frsize
    return used


class RssSampler:
    """Peak RSS above the level at entry, of this process and optionally its descendants.

    RSS of parent and children is summed, so pages a worker maps from a shared file
    (a memmap) count once per process that touched them: that is what ``top`` users
    see and what the W5 target is written against. ``shm_mb`` separately reports the
    growth of the space used in the machine's tmpfs file systems (such as ``/dev/shm``),
    which hold memmapped arrays but belong to no process's RSS (``tmpfs_used``).
    """

    def __init__(self, *, children: bool, interval: float = 0.003) -> None:
        self._children = children
        self._interval = interval
        self._me = psutil.Process()
        self._procs: list[psutil.Process] = [self._me]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self.baseline = self.peak = 0
        self.shm_baseline = self.shm_peak = 0
        self._tmpfs = tmpfs_mounts()
        self.samples = 0

    def _refresh(self) -> None:
        if self._children:
            self._procs = [self._me, *self._me.children(recursive=True)]

    def _total(self) -> int:
        total = 0
        for proc in self._procs:
            with contextlib.suppress(psutil.Error):  # a worker exited after listing
                total += proc.memory_info().rss
        return total

    def _sample(self) -> None:
        self.peak = max(self.peak, self._total())
        self.shm_peak = max(self.shm_peak, tmpfs_used(self._tmpfs))
        self.samples += 1

    def _loop(self) -> None:
        n = 0
        while not self._stop.wait(self._interval):
            n += 1
            if n % 10 == 0:  # new workers may appear (respawns); listing them costs more
                self._refresh()
            self._sample()

    def __enter__(self) -> Self:
        self._refresh()
        self.baseline = self.peak = self._total()
        self.shm_baseline = self.shm_peak = tmpfs_used(self._tmpfs)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.baseline) / MB

    @property
    def shm_mb(self) -> float:
        return (self.shm_peak - self.shm_baseline) / MB


class Heartbeat:
    """Event-loop lag: how late a task sleeping ``period`` in the same loop wakes up.

    This is what every other coroutine in a service feels while the peer runs: a lag
    of 600 ms means no request was answered for 600 ms.
    """

    def __init__(self, period: float = 0.001) -> None:
        self._period = period
        self.lags_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._t0 = 0.0

    async def _beat(self) -> None:
        while True:
            self._t0 = time.perf_counter()
            await asyncio.sleep(self._period)
            self.lags_ms.append((time.perf_counter() - self._t0 - self._period) * 1e3)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._beat())
        await asyncio.sleep(0)  # let the first beat start before the work does
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None
        # A loop blocked until now never woke the current beat: count that wait too.
        # (A run shorter than one period gets its one, on-time, beat.)
        late = time.perf_counter() - self._t0 - self._period
        if late > 0 or not self.lags_ms:
            self.lags_ms.append(max(late, 0.0) * 1e3)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    @property
    def p99_ms(self) -> float:
        return percentile(self.lags_ms, 99)

    @property
    def max_ms(self) -> float:
        return max(self.lags_ms, default=math.nan)
