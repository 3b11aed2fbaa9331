"""The crash slot: a few bytes of memory a worker process shares with its parent, where the
worker notes what it is doing, so that when it dies (or is killed for a timeout) the parent
knows which call to blame, which calls had finished, and which never started.

Standard library only: the worker imports it at start. This module is the protocol's one
owner: the layout, the worker's writes (``CrashSlot``'s worker side), the parent's reads
(``snapshot``) and what a snapshot taken after the death means (``blame``, a pure function).

Layout (native byte order, ``SIZE`` bytes)::

    0   <q  current   job base | phase | position of the sync call the main thread runs
                      (phase: LOADING the job, RUNNING, SENDING = pickling its result), or -1
    8   <d  started   when the current call's timeout clock started (``time.monotonic()``)
    16  <q  handed    job base | position of the last call handed to the event loop, or -1
    24  <q  kept      job base | bytes of the journal in use
    32  <q  finished  job base | n: the main thread is done with the job's calls before n
                      (a sync call returned; an async one was handed to the loop)
    40  <q  begun     job base | position of the last call started on the event loop, or -1
                      (written by the loop's thread, its one writer; the loop starts its
                      calls in the order they were handed)
    48  the journal   records ``<I position, <I length, pickled outcome``: the outcomes of
                      the job's sync calls that returned since its last results frame; an
                      int or float outcome is kept as itself (length ``INT`` or ``FLOAT``,
                      then its 8 bytes), and None as no bytes (length ``NONE``), which
                      spares the hot loop a pickling per call

The journal is why a worker that dies loses no finished call's result, whatever the flush
policy: a sync call's outcome is kept there (``returned``) before the call counts as finished,
and dropped (``sent``) once a results frame carried it into the pipe, where it outlives the
worker too. After a death the parent reads what is kept (``kept``): a finished call is
neither run again nor reported lost.

A job's base is ``seq << BATCH_SHIFT``: numbers of an earlier job of the same worker never
pass for this job's. A worker moves through a sync call as::

    running(i) ──► the call ──► [sending(i): pickling its result] ──► returned(i): kept,
    then finished up to i + 1 ──► running(i + 1) ... ──► idle at the job's end

so a death anywhere leaves a snapshot that says exactly whether call ``i`` had returned: a
call before ``finished`` returned, whatever phase the slot still names it in (the worker
does not write ``idle`` between two sync calls; ``Snapshot.timed`` reads it so).
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from typing import Any

__all__ = ["JOURNAL", "SIZE", "CrashSlot", "Kill", "Snapshot", "Verdict", "blame"]

HEADER = 48
#: Bytes of outcomes kept between two results frames; a larger one is sent at once.
JOURNAL = 256 * 1024
SIZE = HEADER + JOURNAL
BATCH_SHIFT = 24
LOADING = 1 << 23
SENDING = 1 << 22
RUNNING = 0
POSITION_MASK = SENDING - 1
# Native formats: an aligned field is packed and unpacked with one 8-byte store or load
# (``"<q"`` would copy it byte by byte, and the parent could read half a number).
_Q = struct.Struct("q")
_D = struct.Struct("d")
_ALL = struct.Struct("qdqqq")
#: kept, then finished, in one call: the record counts before the call does
_KEPT_FINISHED = struct.Struct("qq")
_RECORD = struct.Struct("<II")
_INT_RECORD = struct.Struct("<IIq")
_FLOAT_RECORD = struct.Struct("<IId")
#: A record's length field for an outcome kept as itself (a real length is < JOURNAL).
INT, FLOAT, NONE = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD
_CURRENT, _STARTED, _HANDED, _KEPT, _FINISHED, _BEGUN = 0, 8, 16, 24, 32, 40
_PICKLED_NONE = pickle.dumps(None, protocol=5)


class CrashSlot:
    """Both sides' view of one worker's slot (``buffer``: an ``mmap`` of ``SIZE`` bytes).

    The worker's main thread is the only writer, but for ``begun``, which its event loop's
    thread alone writes. Each write is one aligned 8-byte store, so
    the parent never reads half a number; the parent reads the final state after the
    worker died, when nothing can change it any more."""

    __slots__ = ("_end", "buffer")

    def __init__(self, buffer: Any):
        self.buffer = buffer
        self._end = HEADER  # the worker's: where the next kept outcome goes

    # -- the worker's side -------------------------------------------------------------------

    def loading(self, base: int, at: float) -> None:
        """A job arrived: its first call's clock starts now (it includes the unpickling)."""
        buffer = self.buffer
        _Q.pack_into(buffer, _HANDED, -1)
        _Q.pack_into(buffer, _BEGUN, -1)
        self.sent(base)
        _Q.pack_into(buffer, _FINISHED, base)
        _D.pack_into(buffer, _STARTED, at)
        _Q.pack_into(buffer, _CURRENT, base | LOADING)

    def running(self, base: int, position: int, started: float) -> None:
        _D.pack_into(self.buffer, _STARTED, started)
        _Q.pack_into(self.buffer, _CURRENT, base | position)

    def finished(self, base: int, upto: int) -> None:
        """Calls before ``upto`` are done on the main thread: never run them again."""
        _Q.pack_into(self.buffer, _FINISHED, base | upto)

    def sending(self, base: int, position: int) -> None:
        """Pickling call ``position``'s result (its clock keeps running)."""
        _Q.pack_into(self.buffer, _CURRENT, base | SENDING | position)

    def returned(self, base: int, position: int, outcome: bytes | float | None) -> bool:
        """Sync call ``position`` returned: its outcome (pickled, or an int, float or None
        as itself) is kept, then it counts as finished (``keep`` and ``finished`` in one, for
        the worker's hot loop); False, and neither written, if the journal has no room (send
        what is kept, then call again)."""
        buffer, at, kind = self.buffer, self._end, type(outcome)
        if kind is bytes:
            end = at + _RECORD.size + len(outcome)  # type: ignore[arg-type]
            if end > SIZE:
                return False
            _RECORD.pack_into(buffer, at, position, end - at - _RECORD.size)
            buffer[at + _RECORD.size : end] = outcome
        elif outcome is None:
            end = at + _RECORD.size
            if end > SIZE:
                return False
            _RECORD.pack_into(buffer, at, position, NONE)
        else:
            end = at + _INT_RECORD.size
            if end > SIZE:
                return False
            try:
                if kind is int:
                    _INT_RECORD.pack_into(buffer, at, position, INT, outcome)
                else:
                    _FLOAT_RECORD.pack_into(buffer, at, position, FLOAT, outcome)
            except struct.error:  # an int past 64 bits: kept pickled
                return self.returned(base, position, pickle.dumps(outcome, protocol=5))
        self._end = end
        _KEPT_FINISHED.pack_into(buffer, _KEPT, base | (end - HEADER), base | (position + 1))
        return True

    def sent(self, base: int) -> None:
        """What was kept is in the pipe now (a results frame was written)."""
        self._end = HEADER
        _Q.pack_into(self.buffer, _KEPT, base)

    def handed(self, base: int, position: int) -> None:
        """Call ``position`` goes to the event loop (written before it can start there)."""
        _Q.pack_into(self.buffer, _HANDED, base | position)

    def begun(self, base: int, position: int) -> None:
        """Call ``position`` starts on the event loop now (by the loop's thread, before the
        call's first step): a call handed but not begun never ran, and may run again."""
        _Q.pack_into(self.buffer, _BEGUN, base | position)

    def idle(self) -> None:
        _Q.pack_into(self.buffer, _CURRENT, -1)

    # -- the parent's side -------------------------------------------------------------------

    def kept(self, seq: int) -> list[tuple[int, bytes]]:
        """The outcomes job ``seq``'s worker kept and had not sent: (job position, pickled
        outcome). Read after the worker died, when the journal can no longer change."""
        word = _Q.unpack_from(self.buffer, _KEPT)[0]
        if word < 0 or word >> BATCH_SHIFT != seq:
            return []
        end = HEADER + (word & POSITION_MASK)
        records, at = [], HEADER
        while at < end:
            position, size = _RECORD.unpack_from(self.buffer, at)
            if size in (INT, FLOAT):
                form = _INT_RECORD if size == INT else _FLOAT_RECORD
                data = pickle.dumps(form.unpack_from(self.buffer, at)[2], protocol=5)
                at += form.size
            elif size == NONE:
                data = _PICKLED_NONE
                at += _RECORD.size
            else:
                at += _RECORD.size
                data = bytes(self.buffer[at : at + size])
                at += size
            records.append((position, data))
        return records

    def snapshot(self, seq: int) -> Snapshot:
        """What the worker says about job ``seq`` right now."""
        current, started, handed, _kept, finished = _ALL.unpack_from(self.buffer)
        phase = position = -1
        if current >= 0 and current >> BATCH_SHIFT == seq:
            phase = current & (LOADING | SENDING)
            position = current & POSITION_MASK
        mine = finished >= 0 and finished >> BATCH_SHIFT == seq
        return Snapshot(
            phase=phase,
            position=position,
            started=started,
            handed=_position_in(handed, seq),
            finished=finished & POSITION_MASK if mine else 0,
            begun=_position_in(_Q.unpack_from(self.buffer, _BEGUN)[0], seq),
        )


def _position_in(word: int, seq: int) -> int:
    """The position a ``base | position`` word names in job ``seq``; -1 if it is unset or
    an earlier job's."""
    return word & POSITION_MASK if word >= 0 and word >> BATCH_SHIFT == seq else -1


@dataclass(frozen=True)
class Snapshot:
    """The slot as seen for one job. ``phase``/``position``: the sync call on the main
    thread (-1: none); ``handed``: last call handed to the loop (-1: none); ``finished``:
    calls before it are done; ``begun``: last call started on the loop (-1: none). The loop
    keeps a few handed calls ready beside those in flight: an async call after ``begun``
    never started."""

    phase: int = -1
    position: int = -1
    started: float = 0.0
    handed: int = -1
    finished: int = 0
    begun: int = -1

    @property
    def timed(self) -> tuple[int, int, float] | None:
        """(phase, position, clock start) of the call whose time runs, or None: loading the
        job, running a call, or pickling the result of the call that just returned."""
        if self.phase < 0 or self.position < self.finished:
            return None  # a call that returned (its outcome kept), before the next one starts
        return self.phase, self.position, self.started


@dataclass(frozen=True)
class Kill:
    """The parent killed the worker on purpose: the call it killed for (its job position and
    phase, from the snapshot it decided on), and why (``"timeout"``: a sync call ran past its
    timeout; ``"stuck"``: an async call did not finish cancelling)."""

    position: int
    phase: int = RUNNING
    why: str = "timeout"
    #: when the killed call's clock started (for the message)
    started: float = 0.0


@dataclass(frozen=True)
class Verdict:
    """One call's fate after its worker died.

    kind: ``"crashed"`` (it was running, unpickling its arguments or pickling its result:
    ``phase``), ``"timeout"`` (ran past its timeout), ``"in_flight"`` (an async call in flight
    or done on the loop with its outcome unsent), ``"lost"`` (it had finished; its result
    was not sent yet)."""

    kind: str
    phase: int = RUNNING


@dataclass(frozen=True)
class Blame:
    #: job position -> what it fails with
    failed: dict[int, Verdict]
    #: job positions to run again (they had not started, or we killed them for another call)
    rerun: list[int]
    #: the call the worker died on (-1: none, or one we killed for another call's sake)
    culprit: int = -1
    #: the job died unpickling: run its calls one by one to find the culprit
    split: bool = False


def _never_begun(snap: Snapshot, flags: bytes | None, j: int) -> bool:
    """An async call handed to the loop but not started there: it never ran (runs again).
    Not a coroutine a sync call returned: the call itself ran."""
    return flags is not None and bool(flags[j]) and j > snap.begun


def blame(
    snap: Snapshot,
    n: int,
    got: set[int] | frozenset[int],
    flags: bytes | None,
    killed: Kill | None = None,
) -> Blame:
    """Who failed and who runs again, from the slot after the death (``snap``), the job's
    size ``n``, the positions whose outcome arrived (``got``), the async flags and the kill
    the parent made (if it did). A call the slot proves finished is never run again."""
    if snap.phase == LOADING:  # nothing ran yet
        rest = [j for j in range(n) if j not in got]
        if len(rest) > 1:
            return Blame({}, rest, split=True)
        verdicts = {j: Verdict(_killed_kind(killed, j), LOADING) for j in rest}
        return Blame(verdicts, [], culprit=rest[0] if rest else -1)
    failed: dict[int, Verdict] = {}
    for j in range(min(snap.finished, n)):
        if j not in got and not _never_begun(snap, flags, j):
            async_call = (flags is not None and flags[j]) or j == snap.handed
            failed[j] = Verdict("in_flight" if async_call else "lost")
    handing = snap.finished <= snap.handed < n and snap.handed not in got  # died handing it
    if handing and not _never_begun(snap, flags, snap.handed):  # over, after it began
        failed[snap.handed] = Verdict("in_flight")
    culprit = -1
    if snap.timed is not None and snap.position < n and snap.position not in got:
        culprit = snap.position
    rerun: list[int] = []
    if killed is not None and killed.why == "timeout" and killed.position != culprit:
        # the call we timed returned before the kill landed: it did run past its timeout,
        # and is not run again; the call the kill hit instead had just started: run it again
        if killed.position not in got:
            failed[killed.position] = Verdict("timeout", killed.phase)
        if culprit >= 0 and snap.phase == RUNNING:
            rerun.append(culprit)
            failed.pop(culprit, None)
            culprit = -1
    elif killed is not None and killed.why == "stuck" and culprit >= 0 and snap.phase == RUNNING:
        rerun.append(culprit)  # a sync call killed for an async call that would not stop
        culprit = -1
    if culprit >= 0:
        failed[culprit] = Verdict(_killed_kind(killed, culprit), snap.phase)
    rerun += [j for j in range(n) if j not in got and j not in failed and j not in rerun]
    return Blame(failed, sorted(rerun), culprit=culprit)


def _killed_kind(killed: Kill | None, position: int) -> str:
    if killed is not None and killed.why == "timeout" and killed.position == position:
        return "timeout"
    return "crashed"
