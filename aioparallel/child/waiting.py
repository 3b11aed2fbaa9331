"""How a worker waits for the parent's next frame: watching the request pipe for a moment,
or asleep in ``read``.

Waking a sleeping process costs tens of microseconds (on a virtual machine, an interrupt
through the host), as much as a one-call job's whole work; watching costs a CPU. So a
worker watches only after a job that says a core is to spare (``protocol.SPIN``), while its
jobs come back to back, and while watching has made its waits shorter than sleeping did,
measured on waits one after the other (``NextFrame._count``).
"""

from __future__ import annotations

import os
import select
import time

from . import protocol

#: After a job, a worker watches for the next frame for up to twice its last wait (at most
#: this), if that was under this, before it sleeps in ``read``: waking a sleeping process
#: costs ~30-50 µs (on a VM, an interrupt to another virtual CPU), as much as a one-call
#: job's whole work. Only if the job said a core is to spare (``protocol.SPIN``: nobody
#: waits for a worker, and the pool's other busy ones and the parent leave it one).
SPIN_SECONDS = 0.0005
#: One wait in this many goes the way the worker does not prefer (``NextFrame._watching``).
SPIN_PROBE = 16
#: A pair of waits counts for at most this much either way (``NextFrame._count``): a wake
#: costs tens of microseconds; a pair that differs by more differed in what the parent did.
GAIN_LIMIT = 0.00005
#: While it watches, it yields its CPU this often: the parent, woken by its results, may have
#: been put on this CPU (the other idle), and would otherwise wait for this one's time slice.
SPIN_YIELD = 0.00002


class NextFrame:
    """The waits of one worker for its next frame, and what it learned from them."""

    def __init__(self, req_fd: int):
        self.req_fd = req_fd
        #: Seconds to watch for the next frame before sleeping (``SPIN_SECONDS``), if the
        #: last job allowed it and a CPU is to spare now (``_cpu_to_spare``).
        self.spin = 0.0
        self.may_spin = False
        #: The last wait was longer than SPIN_SECONDS: jobs may have stopped coming.
        self._paused = False
        #: What watching saved on the wait for the next frame, on average: the sleeping
        #: wait minus the watching one, of two waits one after the other (``_watching``).
        self._gain: float | None = None
        #: The last wait counted: whether it was watched, and how long it was.
        self._last: tuple[bool, float] | None = None
        self._probes = 0
        self._poll = select.poll()
        self._poll.register(req_fd, select.POLLIN)
        self._loadavg = _open_loadavg()
        self._cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1

    def next(self, since: float) -> tuple[int, bytes] | None:
        """The next frame from the parent, or None at end of file. ``since``: when this
        worker last sent a job's results; the wait since then sets the next spin."""
        spin = self.spin
        could = bool(spin and self.may_spin and self._cpu_to_spare())
        watched = could and self._watching()
        if watched:
            deadline = since + spin
            poll, clock = self._poll.poll, time.perf_counter
            yield_at = since + SPIN_YIELD
            while not poll(0):
                now = clock()
                if now > deadline:
                    break
                if now > yield_at:  # a process woken on this CPU (the parent) goes first
                    os.sched_yield()
                    yield_at = now + SPIN_YIELD
        frame = protocol.read_frame(self.req_fd)
        waited = time.perf_counter() - since
        # what this way of waiting took, waking included; but a frame that came long after
        # the watch would have ended finds the worker asleep either way: its wait (the
        # parent had no job for it, as between two workloads) says nothing about how to
        # wait, and counted in, it held a worker asleep for a hundred short waits after
        if could and waited <= spin + SPIN_SECONDS:
            self._count(watched, waited)
        if waited < SPIN_SECONDS:
            self.spin, self._paused = min(2 * waited, SPIN_SECONDS), False
        else:  # the first job after a pause: the run's next may follow at once (a caller's
            # calls one after another), so watch once more; after a second such wait, sleep
            self.spin, self._paused = (0.0 if self._paused else SPIN_SECONDS), True
        return frame

    def _count(self, watched: bool, waited: float) -> None:
        """Count a wait: where the way of waiting changed from the last one (a probe, or
        back from one), the difference of the two is a sample of what watching saves.
        Waits one after the other are compared, not averages of each way: how long the
        parent takes to send the next job changes with the work (jobs of many calls, then
        single calls), and averages taken under different work compared the work (a
        worker that had watched through W1's big jobs slept through W3's single calls)."""
        last = self._last
        if last is not None and last[0] != watched:
            gain = waited - last[1] if last[0] else last[1] - waited  # slept minus watched
            gain = max(-GAIN_LIMIT, min(gain, GAIN_LIMIT))  # one odd pair moves it a little
            self._gain = gain if self._gain is None else (self._gain + gain) / 2
        self._last = (watched, waited)

    def _watching(self) -> bool:
        """Whether to watch for this frame: while watching has made the wait shorter than
        sleeping did (it costs the parent a CPU where the machine has fewer than it seems,
        as a virtual machine on a busy host), except one wait in ``SPIN_PROBE``, which goes
        the other way to keep measuring both."""
        self._probes += 1
        better = self._gain is None or self._gain >= 0
        return better != (self._probes % SPIN_PROBE == 0)

    def _cpu_to_spare(self) -> bool:
        """Linux: the processes runnable now, this one and the parent its results just woke
        among them, are no more than this process's CPUs: watching takes a CPU nobody
        wants (another worker still computing would share one with the parent). Elsewhere
        the job's word (``may_spin``) is taken."""
        if self._loadavg is None:
            return True
        try:  # "0.52 0.58 0.59 2/189 12345": running / all
            running = int(os.pread(self._loadavg, 64, 0).split()[3].split(b"/")[0])
        except (OSError, IndexError, ValueError):
            return False
        return running <= self._cpus


def _open_loadavg() -> int | None:
    """``/proc/loadavg``, held open for ``NextFrame._cpu_to_spare`` (Linux); None elsewhere."""
    try:
        return os.open("/proc/loadavg", os.O_RDONLY)
    except OSError:
        return None
