"""The pool's places and who holds each (``Roster``): the one owner of "live worker processes
<= n_jobs". Split out of ``pool`` so the invariant and the code that may change it are read
(and tested, by a hypothesis state machine) on their own.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ...crossloop import LoopRef, Signal
from ..worker import WorkerProcess

__all__ = ["PLACE", "PoolClosedError", "Roster", "Standing"]


class PoolClosedError(RuntimeError):
    """The pool was shut down: no worker to be had."""


#: What a waiter may be handed: a worker, or this, a place to spawn one in.
PLACE: Any = object()
#: A run's estimate of the worker seconds it needs in all (None: it cannot tell).
Need = Callable[[], "float | None"]


@dataclass(slots=True)
class Standing:
    """A run's standing in the pool's line: when it started (``ticket``: the earlier, the
    sooner served), the worker seconds it has ``used`` so far, and what it needs in all
    (``need``; see ``Roster.yield_to``)."""

    ticket: int = 0
    used: float = 0.0
    need: Need | None = None


#: A run never yields a worker before it has used this many worker seconds: below it,
#: first come, first served (a web backend's burst of small equal requests, ~20 ms each),
#: and the waiters are not even looked at.
YIELD_AFTER = 0.1
#: A run is served before an earlier one whose size (what it needs, or has used if more) is
#: more than this many times what it needs: runs of similar size keep their order.
SMALLER = 1.5


class Waiter:
    """A task waiting for a worker or a place; woken in its own event loop, from any
    thread."""

    __slots__ = ("handed", "holder", "run", "signal")

    def __init__(self, holder: LoopRef, run: Standing) -> None:
        self.signal = Signal()
        self.holder = holder  # the loop the waiting task runs in
        self.handed: Any = None  # a WorkerProcess, PLACE, or None (nothing, or closed)
        self.run = run  # the waiting task's run


class Roster:
    """The pool's ``size`` places and who holds each: the one owner of "live worker
    processes <= size". Its methods are the only way to change its state; none awaits, and
    each holds the roster's lock, so no task of any loop, in any thread, ever sees a half-made
    change.

    A place is the permission to have one worker process; it counts from the moment a
    spawn is allowed until the process is reaped (``count`` is the places in all four
    states)::

                  claim()               spawned(w)              release(w)
          free ───────────> spawning ─────────────> busy <──────────────────> idle
           ^ ^                 │                    │  │       take()          │
           │ └─── abandon() ───┘                    │  └── (release: handed to a waiter)
           │                           retire(w)    │                          │
           └─ free_place(w) ─── retiring <──────────┴───────── retire_idle() ──┘
                                   ^     reclaim()  │
                                   └────────────────┘ (busy, held by a loop that is gone)

    A spawning place and a busy worker are held by a loop (``LoopRef``): the waiting or
    taking task's. A loop closed while its tasks held them never runs their cleanup, so
    ``reclaim()`` takes them back: such busy workers go to ``retiring`` (the caller stops
    them, then frees their places), such spawning places are freed, such waiters dropped.
    A late cleanup of the closed loop's task (its coroutine closed when collected) then finds
    nothing: ``release``, ``retire``, ``free_place`` and ``abandon`` ignore what they do not
    hold.

    ``abandon()``, ``free_place()`` and ``release()`` hand the place (to spawn in) or the
    worker straight to the first waiter, if any: it then stays counted. Waiters are served
    by their run's ticket, then in arrival order: the run that started first gets every worker
    it asks for before later runs, so under load runs finish in the order they came (a web
    backend answers its first requests first) instead of all at the end. But no run keeps
    every worker for long: a newer run that needs less than 1/``SMALLER`` of the worker time
    an earlier one needs (or has used, if more) goes before it once that one has used
    ``YIELD_AFTER``, both in line and when the earlier run gives a worker back
    (``yield_to``): a multi-level feedback queue, as operating systems schedule, with the
    levels read off the runs' sizes (``Standing``), so runs of similar size keep their order
    and a small request passes a huge one. A waiter whose loop is stopped is passed over (it
    stays in line: nothing handed to it could be used until its loop runs again, maybe
    never); one whose loop is gone is dropped. ``offer()`` serves the
    line again from what is free (a stopped loop's waiter, running again, asks for it).
    ``close()`` wakes every waiter empty-handed and sends every idle worker to ``retiring``;
    busy ones stay with their holders, which retire them when they give them back
    (``release`` refuses them).

    ``tally`` counts, under the same lock, what happened over the pool's life (workers
    spawned, recycled, crashed; calls done); ``stats()`` reads the counts and the states at
    once, from any thread (``aioparallel.pool_stats``).
    """

    def __init__(self, size: int):
        self.size = size
        self.idle: list[WorkerProcess] = []
        self.busy: set[WorkerProcess] = set()
        #: The loop each busy worker is held in.
        self.holders: dict[WorkerProcess, LoopRef] = {}
        #: The loop of each place being spawned in (one entry per place).
        self.spawning: list[LoopRef] = []
        self.retiring: set[WorkerProcess] = set()
        #: (run ticket, arrival, waiter), a heap: the first is served first.
        self.waiters: list[tuple[int, int, Waiter]] = []
        self._arrivals = itertools.count()
        self.closed = False
        self._emptied = Signal()
        self._lock = threading.Lock()
        #: Over the pool's life: workers started, replaced by a limit, died on their own.
        self.spawned_count = self.recycled = self.crashed = 0
        #: Calls completed on its workers, whatever their outcome.
        self.tasks_done = 0

    @property
    def count(self) -> int:
        """The places taken, in any state."""
        return len(self.idle) + len(self.busy) + len(self.spawning) + len(self.retiring)

    @property
    def crowded(self) -> bool:
        """Every place is taken and no worker is idle: a new run would wait. Read without
        the lock: a hint (auto batching's), stale by the time it is used anyway."""
        return not self.idle and self.count >= self.size

    def take(self, holder: LoopRef) -> WorkerProcess | None:
        """idle -> busy: the most recently used idle worker (alive or not), if any."""
        with self._lock:
            if not self.idle:
                return None
            worker = self.idle.pop()
            self._hold(worker, holder)
            return worker

    def claim(self, holder: LoopRef, run: Standing) -> Waiter | None:
        """free -> spawning if a place is free (None); else a waiter queued, by its run's
        ticket, for the next worker or place given back (handed one at once if a live worker
        is idle: given back since the caller looked)."""
        with self._lock:
            if self.closed:
                raise PoolClosedError("the worker pool is shut down")
            if self.count < self.size:
                self.spawning.append(holder)
                return None
            waiter = Waiter(holder, run)
            heapq.heappush(self.waiters, (run.ticket, next(self._arrivals), waiter))
            self._offer_idle()
            return waiter

    def withdraw(self, waiter: Waiter) -> Any:
        """A waiter stops waiting: what it was handed (None if nothing)."""
        with self._lock:
            if waiter.handed is None:  # still queued, unless close() woke it
                kept = [entry for entry in self.waiters if entry[2] is not waiter]
                if len(kept) != len(self.waiters):
                    heapq.heapify(kept)
                    self.waiters[:] = kept
            return waiter.handed

    def claim_free(self, holder: LoopRef) -> bool:
        """free -> spawning, if a place is free and nobody waits (a successor started ahead
        of need, ``recycling``); False otherwise."""
        with self._lock:
            if self.closed or self.waiters or self.count >= self.size:
                return False
            self.spawning.append(holder)
            return True

    def spawned(self, worker: WorkerProcess, holder: LoopRef) -> None:
        """spawning -> busy."""
        with self._lock:
            self.spawning.remove(holder)
            self._hold(worker, holder)
            self.spawned_count += 1

    def release(self, worker: WorkerProcess) -> Literal["handed", "idle", "refused"]:
        """busy -> idle, or to the first waiter (still busy). A closed roster takes no worker
        back: busy -> retiring ("refused"; the holder stops it, then frees its place); nor one
        it no longer counts (reclaimed: "refused", and the holder's stop finds it stopped)."""
        with self._lock:
            if worker not in self.busy:
                return "refused"
            self._unhold(worker)
            if self.closed:
                self.retiring.add(worker)
                return "refused"
            if self._hand(worker):
                return "handed"
            self.idle.append(worker)
            return "idle"

    def yield_to(self, worker: WorkerProcess, run: Standing) -> bool:
        """busy -> busy, held by a newer run: ``run``, giving ``worker`` back, yields it to
        the first waiter (by ticket) of a newer run that needs less than 1/``SMALLER`` of
        the worker time ``run`` has used or says it needs (True); False if there is none:
        the giver may keep it. So a small run that arrives while a huge one is under way
        waits about a batch, not the huge run's end, while among runs of similar size the
        first stays first (none needs less than 1/``SMALLER`` of what another needs)."""
        if run.used < YIELD_AFTER:  # the common case, decided without the lock
            return False
        with self._lock:
            if self.closed or worker not in self.busy:
                return False
            entry = self._smaller_than(run)
            if entry is None:
                return False
            self.waiters.remove(entry)
            heapq.heapify(self.waiters)
            giver = self.holders[worker]
            self._unhold(worker)
            if self._give(worker, entry[2]):
                return True
            self._hold(worker, giver)  # its loop ended just now: the giver keeps it
            return False

    def _smaller_than(self, run: Standing) -> tuple[int, int, Waiter] | None:
        """The first waiter (by ticket) whose loop runs, of a run newer than ``run`` that needs
        less than 1/``SMALLER`` of what ``run`` used, or needs if it knows; None if none (or
        ``run`` used little so far)."""
        if run.used < YIELD_AFTER:
            return None
        size = run.used  # what it has used, or what it says it needs, if more
        need = run.need() if run.need is not None else None
        if need is not None and need > size:
            size = need
        best: tuple[int, int, Waiter] | None = None
        small: dict[int, bool] = {}  # per waiting run: small enough to go first
        for entry in self.waiters:
            ticket, other = entry[0], entry[2].run
            if ticket <= run.ticket or other.need is None or (best and entry > best):
                continue
            if ticket not in small:
                need = other.need()
                small[ticket] = need is not None and SMALLER * need < size
            if small[ticket] and entry[2].holder.state() == "running":
                best = entry
        return best

    def retire(self, worker: WorkerProcess, why: str = "") -> None:
        """busy -> retiring: its holder now stops and reaps it, then calls free_place().
        ``why``: "recycled" or "crashed", counted."""
        with self._lock:
            if worker in self.busy:
                self._unhold(worker)
                self.retiring.add(worker)
                if why == "recycled":
                    self.recycled += 1
                elif why == "crashed":
                    self.crashed += 1

    def tally(self, calls: int) -> None:
        """``calls`` more calls completed on the pool's workers."""
        with self._lock:
            self.tasks_done += calls

    def stats(self) -> dict[str, int]:
        """The places' states and the counts, read at once."""
        with self._lock:
            busy, idle = len(self.busy), len(self.idle)
            return {
                "workers": busy + idle + len(self.retiring),
                "busy": busy,
                "idle": idle,
                "starting": len(self.spawning),
                "waiting": len({ticket for ticket, _, _ in self.waiters}),
                "spawned": self.spawned_count,
                "recycled": self.recycled,
                "crashed": self.crashed,
                "tasks_done": self.tasks_done,
            }

    def retire_idle(self, expired: Callable[[WorkerProcess], bool]) -> list[WorkerProcess]:
        """idle -> retiring, for each idle worker that ``expired`` says must go."""
        with self._lock:
            going: list[WorkerProcess] = []
            keep: list[WorkerProcess] = []
            for worker in self.idle:
                (going if expired(worker) else keep).append(worker)
            self.idle[:] = keep
            self.retiring.update(going)
            return going

    def reclaim(self, waiters: bool = True) -> list[WorkerProcess]:
        """What loops that are gone held: their busy workers -> retiring (returned: the caller
        stops them, then calls free_place()); their spawning places -> free, or to the first
        waiter; their waiters dropped (unless not ``waiters``: a gone loop's waiter is only
        dead weight in line, as ``_hand`` passes it over, and looking at every waiter each
        time a task queues costs a web backend's 1,000 waiters a millisecond per batch).
        Then what is free goes to the waiters (``offer``)."""
        with self._lock:
            gone = [w for w in self.busy if self.holders[w].state() == "gone"]
            for worker in gone:
                self._unhold(worker)
                self.retiring.add(worker)
            self.spawning[:] = [h for h in self.spawning if h.state() != "gone"]
            if waiters:
                kept = [entry for entry in self.waiters if entry[2].holder.state() != "gone"]
                if len(kept) != len(self.waiters):
                    heapq.heapify(kept)
                    self.waiters[:] = kept
            self._offer()
            return gone

    def offer(self) -> None:
        """Free places and live idle workers to the waiters whose loops run."""
        with self._lock:
            self._offer()

    def oldest_idle(self) -> float | None:
        """When the least recently used idle worker was last used; None if none is idle."""
        with self._lock:
            return min((w.last_used for w in self.idle), default=None)

    def abandon(self, holder: LoopRef) -> None:
        """spawning -> free, or to the first waiter: the place was not spawned in."""
        with self._lock:
            if holder in self.spawning:
                self.spawning.remove(holder)
                self._offer()

    def free_place(self, worker: WorkerProcess) -> None:
        """retiring -> free, or to the first waiter: ``worker`` is reaped."""
        with self._lock:
            if worker in self.retiring:
                self.retiring.discard(worker)
                self._offer()

    def close(self) -> tuple[list[WorkerProcess], list[WorkerProcess]]:
        """Refuse new claims, wake every waiter empty-handed; the idle workers, now retiring,
        and the busy ones (still their holders')."""
        with self._lock:
            self.closed = True
            while self.waiters:
                heapq.heappop(self.waiters)[2].signal.set()
            idle, self.idle = self.idle, []
            self.retiring.update(idle)
            self._offer()
            return idle, list(self.busy)

    async def emptied(self) -> None:
        """Wait until every place is free again (after ``close``)."""
        await self._emptied.wait()

    def _hold(self, given: Any, holder: LoopRef) -> None:
        if given is PLACE:
            self.spawning.append(holder)
        else:
            self.busy.add(given)
            self.holders[given] = holder

    def _unhold(self, given: Any) -> None:
        self.busy.discard(given)
        self.holders.pop(given, None)

    def _offer(self) -> None:
        """Free places, then live idle workers, to the waiters; once closed, see whether the
        last place is free."""
        if self.closed:
            if self.count == 0:
                self._emptied.set()
            return
        while self.waiters and self.count < self.size:
            if not self._hand(PLACE):
                break
        self._offer_idle()

    def _offer_idle(self) -> None:
        while self.waiters and self.idle:
            live = [w for w in self.idle if w.alive]
            if not live:
                return
            worker = live[-1]
            self.idle.remove(worker)
            if not self._hand(worker):
                self.idle.append(worker)
                return

    def _hand(self, given: Any) -> bool:
        """Give ``given`` to the first waiter whose loop runs (True); False if none. Waiters
        whose loop is stopped keep their place in line; those whose loop is gone leave it."""
        passed: list[tuple[int, int, Waiter]] = []
        try:
            while self.waiters:
                entry = heapq.heappop(self.waiters)
                smaller = self._smaller_than(entry[2].run)  # it would yield to it at once
                if smaller is not None:
                    passed.append(entry)
                    self.waiters.remove(smaller)
                    heapq.heapify(self.waiters)
                    entry = smaller
                waiter = entry[2]
                state = waiter.holder.state()
                if state == "stopped":
                    passed.append(entry)
                    continue
                if state == "gone":
                    continue
                if self._give(given, waiter):
                    return True
            return False
        finally:
            for entry in passed:
                heapq.heappush(self.waiters, entry)

    def _give(self, given: Any, waiter: Waiter) -> bool:
        """Hand ``given`` to ``waiter`` (out of line already); False if its loop ended just
        now, and the task with it."""
        waiter.handed = given
        self._hold(given, waiter.holder)
        if waiter.signal.set():
            return True
        waiter.handed = None
        self._unhold_any(given, waiter.holder)
        return False

    def _unhold_any(self, given: Any, holder: LoopRef) -> None:
        if given is PLACE:
            self.spawning.remove(holder)
        else:
            self._unhold(given)
