"""The worker's logging, installed once ``logging`` is imported (``observe.watch_logging``):
one handler on the root logger, which ships records to the parent, and the parent's levels
mirrored on the worker's loggers.

The root logger keeps no other handler, so a record is printed once, by the parent's
handlers, never also on the worker's stderr (``logging.lastResort`` is not used either: the
root has a handler). A task that adds handlers of its own in the worker gets them too.
"""

from __future__ import annotations

import logging
from typing import Any

from .observe import Logs

#: Attribute types that cross as they are; containers are copied, anything else is repr().
_PLAIN = frozenset({str, int, float, bool, type(None)})
_DEPTH = 4
_FORMATTER = logging.Formatter()

#: The parent's levels, as its SETUP frame carries them: ``logging.disable``'s level, and
#: ``(logger name, level, disabled)`` of the root logger ("") and each logger whose level
#: was set or which was disabled.
Levels = tuple[int, tuple[tuple[str, int, bool], ...]]


class ShipHandler(logging.Handler):
    """Ships each record the parent's levels let through (``Logs.add``); the parent handles
    it with its logger of the same name."""

    def __init__(self, logs: Logs):
        super().__init__()
        self.logs = logs
        self._explicit: dict[str, int] = {"": logging.WARNING}
        self._off: frozenset[str] = frozenset()
        self._disable = logging.NOTSET
        self._thresholds: dict[str, int] = {}
        self._mirrored: set[str] = set()

    def set_levels(self, levels: Levels) -> None:
        disable, entries = levels
        self._disable = disable
        self._explicit = {"": logging.WARNING, **{name: level for name, level, _ in entries}}
        self._off = frozenset(name for name, _, off in entries if off)
        self._thresholds = {}
        self._mirrored = _mirror(disable, entries, self._mirrored)

    def threshold(self, name: str) -> int:
        """The lowest level the parent's logger ``name`` handles (its effective level, above
        ``logging.disable``'s)."""
        level = self._thresholds.get(name)
        if level is None:
            probe = name
            while probe not in self._explicit:
                probe = probe.rpartition(".")[0]
            level = max(self._explicit[probe], self._disable + 1)
            self._thresholds[name] = level
        return level

    def emit(self, record: logging.LogRecord) -> None:
        # the worker's own levels may differ (a task set them): the parent's decide
        if record.levelno < self.threshold(record.name) or record.name in self._off:
            return
        try:
            attrs = plain_attributes(record)
        except Exception:  # a message that does not format: as any handler would
            self.handleError(record)
            return
        self.logs.add(attrs)


def install(logs: Logs) -> None:
    handler = ShipHandler(logs)
    if logs.levels is not None:
        handler.set_levels(logs.levels)
    logs.handler = handler
    logging.root.handlers[:] = [handler]


def plain_attributes(record: logging.LogRecord) -> dict[str, Any]:
    """The record's attributes as plain values that unpickle anywhere: the message formatted
    (its arguments may not pickle), the traceback as text (``exc_info`` holds a traceback,
    which does not pickle), extra attributes copied if plain, else their repr()."""
    attrs = record.__dict__.copy()
    attrs["msg"] = record.getMessage()
    attrs["args"] = None
    if record.exc_info:
        if not record.exc_text:
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        attrs["exc_text"] = record.exc_text
    attrs["exc_info"] = None
    for key, value in attrs.items():
        if type(value) not in _PLAIN:
            attrs[key] = _plain(value, _DEPTH)
    return attrs


def _plain(value: Any, depth: int) -> Any:
    kind = type(value)
    if kind in _PLAIN:
        return value
    if depth and (kind is list or kind is tuple):
        return kind(_plain(v, depth - 1) for v in value)
    if depth and kind is dict:
        return {str(k): _plain(v, depth - 1) for k, v in value.items()}
    return repr(value)


def _mirror(disable: int, entries: Any, before: set[str]) -> set[str]:
    """Set the worker's loggers as the parent's are, so a record the parent would drop is
    not even created here; loggers set before but not now go back to their defaults."""
    logging.disable(disable)
    now = set()
    for name, level, off in entries:
        logger = logging.getLogger(name or None)
        logger.setLevel(level)
        logger.disabled = off
        now.add(name)
    for name in before - now:
        logger = logging.getLogger(name or None)
        logger.setLevel(logging.NOTSET if name else logging.WARNING)
        logger.disabled = False
    return now
