"""A pytest plugin that runs joblib's own tests against aioparallel (the nox session ``compat``).

joblib's names (``Parallel``, ``delayed``, ``parallel_config``, ``parallel_backend``,
``effective_n_jobs``, ``cpu_count``) are replaced, before joblib's test module is imported,
by aioparallel's. ``Parallel`` gets a sync face only: a call runs aioparallel's coroutine to
completion on an event loop (a generator mode is driven one item at a time), every argument
passes straight through, nothing is re-implemented. Tests that do not apply are skipped with
their reason (``not_applicable.py``); the summary prints "N of M applicable passed".
"""

from __future__ import annotations

import asyncio
import asyncio.events
import fnmatch
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest

import aioparallel

from .not_applicable import NOT_APPLICABLE

_NA_PREFIX = "not applicable: "


def run(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop | None = None) -> Any:
    """Run ``coro`` to completion, from sync code.

    A sequential (``n_jobs=1``) call runs its tasks on the caller's event loop thread; a task
    that calls ``Parallel`` again then needs a loop of its own there: the running one is set
    aside for the time of the inner call.
    """
    outer = asyncio.events._get_running_loop()
    asyncio.events._set_running_loop(None)
    try:
        if loop is not None:
            return loop.run_until_complete(coro)
        return asyncio.run(coro)
    finally:
        asyncio.events._set_running_loop(outer)


class Parallel:
    """``joblib.Parallel``'s sync call shape over ``aioparallel.Parallel``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._parallel = aioparallel.Parallel(*args, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parallel, name)

    def __enter__(self) -> Parallel:
        # ``with Parallel() as p``: one loop for the block, so the warm workers serve each call
        self._loop = asyncio.new_event_loop()
        run(self._parallel.__aenter__(), self._loop)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        loop, self._loop = self._loop, None
        assert loop is not None
        try:
            run(self._parallel.__aexit__(*exc_info), loop)
        finally:
            loop.close()

    def __call__(self, iterable: Any) -> Any:
        if self._parallel.return_as == "list":
            return run(self._parallel(iterable), self._loop)
        return self._iterate(self._parallel(iterable))

    def _iterate(self, stream: Any) -> Iterator[Any]:
        loop = self._loop or asyncio.new_event_loop()
        try:
            while True:
                try:
                    yield run(stream.__anext__(), loop)
                except StopAsyncIteration:
                    return
        finally:
            run(stream.aclose(), loop)
            if loop is not self._loop:
                run(loop.shutdown_asyncgens(), loop)
                loop.close()

    def __repr__(self) -> str:
        return repr(self._parallel)


def pytest_configure(config: pytest.Config) -> None:
    import joblib
    import joblib.parallel

    names = {
        "Parallel": Parallel,
        "delayed": aioparallel.delayed,
        "parallel_config": aioparallel.parallel_config,
        "parallel_backend": aioparallel.parallel_backend,
        "effective_n_jobs": aioparallel.effective_n_jobs,
        "cpu_count": aioparallel.cpu_count,
    }
    for module in (joblib, joblib.parallel):
        for name, value in names.items():
            setattr(module, name, value)


def _reason(nodeid: str) -> str | None:
    name = nodeid.split("::", 1)[-1]
    for pattern, reason in NOT_APPLICABLE.items():
        # "[" starts a character class in fnmatch: the keys use it literally (parameters)
        if fnmatch.fnmatchcase(name, pattern.replace("[", "[[]")):
            return reason
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        reason = _reason(item.nodeid)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=_NA_PREFIX + reason))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    stats = terminalreporter.stats
    passed = len(stats.get("passed", []))
    failed = len(stats.get("failed", [])) + len(stats.get("error", []))
    xfailed = len(stats.get("xfailed", [])) + len(stats.get("xpassed", []))
    skipped = stats.get("skipped", [])
    na = sum(1 for r in skipped if _NA_PREFIX in str(r.longrepr))
    own = len(skipped) - na
    applicable = passed + failed + xfailed
    terminalreporter.write_line(
        f"{passed} of {applicable} applicable passed ({failed} failed, {xfailed} xfailed; "
        f"{na} not applicable, see compat/not_applicable.py; {own} skipped by joblib's own "
        "conditions)"
    )
