"""One small adapter per peer, all driven the same way from async code.

Every adapter is an async context manager (warm setup on enter, teardown on exit)
with one method, ``map(func, args, n=None)``, that runs ``func(*a)`` for each tuple
``a`` in ``args`` on 2 workers and returns the results in input order. Each adapter
uses its library the way an async user would today:

- sync libraries (joblib, mpire) are called through ``anyio.to_thread.run_sync`` so
  the event loop stays free while they run;
- ``run_in_executor`` is the stdlib idiom: ``asyncio.gather`` over one future per call;
- ``anyio.to_process`` starts one task per call, at most ``_ANYIO_WINDOW`` ahead, with
  a ``CapacityLimiter`` bounding the workers;
- aiomultiprocess only runs coroutines, so tasks go through ``workloads.acall``.

``request_map`` is one web request's map (W9): many of them run at once in one event
loop, each the way a request handler would write it. By default it is ``map`` on the
peer's shared pool; aioparallel uses a fresh ``Parallel(n_jobs=2)`` per request (the
process-wide warm pool, as docs/web.md shows) and joblib a fresh ``joblib.Parallel`` in
anyio's worker thread. A peer that can't serve concurrent maps sanely sets
``web_skip`` to the reason, and W9 and W10 skip it with that note.

``amap`` runs an async function the same way (W8): natively where the library awaits
coroutines (aioparallel, aiomultiprocess at its default 16 per worker, sequential), else
through ``workloads.run_coroutine`` (an ``asyncio.run`` per call in the worker).

Peer libraries are imported inside ``_open``, never at module import: the W4
cold-start child imports this module and must pay only for the peer it measures.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from collections.abc import Callable, Iterable, Sized
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from benchmarks.workloads import acall, noop, run_coroutine

if TYPE_CHECKING:
    from typing_extensions import Self

Args = Iterable[tuple[Any, ...]]

#: anyio.to_process tasks started ahead of completion. Large enough that all 16 W5
#: calls are in flight at once (as with a task per call), small enough that a
#: 200,000-item generator is not read ahead.
_ANYIO_WINDOW = 32


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking call the way async users do: in anyio's worker thread."""
    import anyio.to_thread

    return await anyio.to_thread.run_sync(fn, *args)


class Peer:
    """Base adapter: subclasses set ``name``/``requires`` and implement ``_open``/``map``."""

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    #: Why W9 and W10 (concurrent maps, one per web request) don't run this peer, or None.
    web_skip: ClassVar[str | None] = None
    #: The only workloads this adapter runs (None: all), for a reference that is no peer.
    only: ClassVar[tuple[str, ...] | None] = None
    n_jobs: int

    def __init__(self, n_jobs: int = 2, *, warm: bool = True) -> None:
        self.n_jobs = n_jobs
        self._warm = warm
        self._stack = AsyncExitStack()

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this peer can't run here, or None: a missing peer is skipped, never faked."""
        for module in cls.requires:
            if importlib.util.find_spec(module) is None:
                return f"package {module!r} is not installed"
        return None

    async def __aenter__(self) -> Self:
        await self._stack.__aenter__()
        try:
            await self._open(self._stack)
            if self._warm:
                # 2 calls per worker so that pools which start workers on demand
                # have all of them running before anything is timed.
                await self.map(noop, [()] * (2 * self.n_jobs))
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    @classmethod
    def runs(cls, wid: str) -> bool:
        """Whether this adapter takes part in workload ``wid``."""
        if cls.only is not None and wid not in cls.only:
            return False
        return not (wid in ("W9", "W10") and cls.web_skip)

    async def _open(self, stack: AsyncExitStack) -> None:
        """Create the pool and register its teardown on ``stack``."""

    async def map(self, func: Callable[..., Any], args: Args, n: int | None = None) -> list[Any]:
        """Run ``func(*a)`` for each ``a`` in ``args``; ``n`` is the count when known."""
        raise NotImplementedError

    async def request_map(self, func: Callable[..., Any], args: Args) -> list[Any]:
        """One web request's map (W9), run concurrently with other requests' maps."""
        return await self.map(func, args)

    async def amap(self, afunc: Callable[..., Any], args: Args) -> list[Any]:
        """Await ``afunc(*a)`` for each ``a`` (W8); by default one event loop per call."""
        return await self.map(run_coroutine, [(afunc, *a) for a in args])


class Aioparallel(Peer):
    """The library under test, used exactly as its README says."""

    name = "aioparallel"
    requires = ("aioparallel",)

    @classmethod
    def unavailable(cls) -> str | None:
        reason = super().unavailable()
        if reason is None:
            try:
                from aioparallel import Parallel, delayed  # noqa: F401
            except Exception as exc:  # the lead may be mid-way through building it
                reason = f"aioparallel.Parallel is not importable yet ({exc!r})"
        return reason

    async def _open(self, stack: AsyncExitStack) -> None:
        from aioparallel import Parallel, delayed

        stack.push_async_callback(self._stop_shared_pool)
        self._used_shared_pool = False
        par = Parallel(n_jobs=self.n_jobs)
        entered = await stack.enter_async_context(par)
        self._p: Any = par if entered is None else entered
        self._parallel: Any = Parallel
        self._delayed: Any = delayed

    async def map(self, func: Callable[..., Any], args: Args, n: int | None = None) -> list[Any]:
        d = self._delayed
        return list(await self._p(d(func)(*a) for a in args))

    async def request_map(self, func: Callable[..., Any], args: Args) -> list[Any]:
        # docs/web.md: a handler calls a fresh Parallel, served by the shared warm pool.
        self._used_shared_pool = True
        d = self._delayed
        return list(await self._parallel(n_jobs=self.n_jobs)(d(func)(*a) for a in args))

    async def _stop_shared_pool(self) -> None:
        """After W9: stop the shared pool's workers with the session, as the private
        pool's are, so they don't idle through the other peers' runs. Only then: W4
        would otherwise time a thread hop it never needs."""
        if self._used_shared_pool:
            from aioparallel import shutdown_workers

            await _in_thread(shutdown_workers)

    async def amap(self, afunc: Callable[..., Any], args: Args) -> list[Any]:
        return await self.map(afunc, args)  # delayed(async_fn): awaited on the workers


class _Joblib(Peer):
    """joblib with a managed (``with Parallel(...)``) backend, so workers stay warm."""

    requires = ("joblib",)
    backend: ClassVar[str]

    async def _open(self, stack: AsyncExitStack) -> None:
        import joblib  # type: ignore[import-untyped]

        par = joblib.Parallel(n_jobs=self.n_jobs, backend=self.backend)
        await _in_thread(par.__enter__)
        stack.push_async_callback(_in_thread, par.__exit__, None, None, None)
        self._p = par
        self._joblib_parallel = joblib.Parallel
        self._delayed = joblib.delayed

    async def map(self, func: Callable[..., Any], args: Args, n: int | None = None) -> list[Any]:
        par, d = self._p, self._delayed
        # The generator is consumed in the thread, as joblib would consume it.
        return list(await _in_thread(lambda: par(d(func)(*a) for a in args)))

    async def request_map(self, func: Callable[..., Any], args: Args) -> list[Any]:
        # A handler's joblib call, in anyio's worker thread (40 threads by default, so at
        # most 40 requests are inside joblib at once; the rest wait for a thread). loky's
        # executor is reused across Parallel objects: the workers stay warm.
        make, d, n_jobs, backend = self._joblib_parallel, self._delayed, self.n_jobs, self.backend
        return list(
            await _in_thread(
                lambda: make(n_jobs=n_jobs, backend=backend)(d(func)(*a) for a in args)
            )
        )


class JoblibLoky(_Joblib):
    name = "joblib-loky"
    backend = "loky"


class JoblibThreading(_Joblib):
    name = "joblib-threading"
    backend = "threading"
    web_skip = (
        "threads run pure-Python CPU one at a time (see W2's speedup): not a way to serve"
        " CPU-bound requests"
    )


class RunInExecutor(Peer):
    """``loop.run_in_executor`` on a ``ProcessPoolExecutor``: the stdlib answer."""

    name = "run_in_executor"

    async def _open(self, stack: AsyncExitStack) -> None:
        from concurrent.futures import ProcessPoolExecutor

        ex = ProcessPoolExecutor(max_workers=self.n_jobs)
        stack.push_async_callback(asyncio.to_thread, ex.shutdown)
        self._ex = ex

    async def map(self, func: Callable[..., Any], args: Args, n: int | None = None) -> list[Any]:
        loop = asyncio.get_running_loop()
        futures = [loop.run_in_executor(self._ex, func, *a) for a in args]
        return list(await asyncio.gather(*futures))


class AnyioToProcess(Peer):
    """``anyio.to_process.run_sync`` in a task group, workers bounded by a limiter."""

    name = "anyio.to_process"
    requires = ("anyio",)

    async def _open(self, stack: AsyncExitStack) -> None:
        import anyio

        self._limiter = anyio.CapacityLimiter(self.n_jobs)

    async def map(self, func: Callable[..., Any], args: Args, n: int | None = None) -> list[Any]:
        import anyio
        from anyio import to_process

        results: dict[int, Any] = {}
        window = anyio.Semaphore(_ANYIO_WINDOW)

        async def one(i: int, a: tuple[Any, ...]) -> None:
            try:
                results[i] = await to_process.run_sync(func, *a, limiter=self._limiter)
            finally:
                window.release()

        count = 0
        async with anyio.create_task_group() as tg:
            for a in args:
                await window.acquire()
                tg.start_soon(one, count, a)
                count += 1
        return [results[i] for i in range(count)]


class Aiomultiprocess(Peer):
    """aiomultiprocess ``Pool.starmap`` (the tuple-argument form of ``Pool.map``).

    W9 runs it: its ``Pool`` is asyncio-native and made to be shared by concurrent
    coroutines, so a request's map is ``starmap`` on the shared pool.
    """

    name = "aiomultiprocess"
    requires = ("aiomultiprocess",)

    async def _open(self, stack: AsyncExitStack) -> None:
        from aiomultiprocess import Pool  # type: ignore[import-untyped, import-not-found, unused-ignore]

        self._pool = await stack.enter_async_context(Pool(processes=self.n_jobs))

    async def map(self, func: Callable[..., Any], args: Args, n: int | None = None) -> list[Any]:
        return list(await self._pool.starmap(acall, ((func, *a) for a in args)))

    async def amap(self, afunc: Callable[..., Any], args: Args) -> list[Any]:
        return list(await self._pool.starmap(afunc, args))  # childconcurrency=16 per worker


class Mpire(Peer):
    """mpire ``WorkerPool.map`` with ``keep_alive`` so workers are reused across calls."""

    name = "mpire"
    requires = ("mpire",)
    web_skip = (
        "a WorkerPool runs one map at a time (concurrent maps from several threads are not"
        " supported), and a pool per request would start 2 processes per request"
    )

    async def _open(self, stack: AsyncExitStack) -> None:
        from mpire.pool import WorkerPool  # type: ignore[import-not-found, unused-ignore]

        pool = WorkerPool(n_jobs=self.n_jobs, keep_alive=True)
        stack.push_async_callback(_in_thread, pool.terminate)
        self._pool = pool

    async def map(self, func: Callable[..., Any], args: Args, n: int | None = None) -> list[Any]:
        if n is None and isinstance(args, Sized):
            n = len(args)
        # mpire needs a length to pick its chunk size; a generator gets it from ``n``.
        return list(await _in_thread(lambda: self._pool.map(func, args, iterable_len=n)))


class Sequential(Peer):
    """A plain loop on the event-loop thread: the baseline for W2's speedup."""

    name = "sequential"
    web_skip = (
        "it computes on the event-loop thread: requests are served one after another and"
        " the loop serves nothing else meanwhile"
    )

    async def map(self, func: Callable[..., Any], args: Args, n: int | None = None) -> list[Any]:
        return [func(*a) for a in args]

    async def amap(self, afunc: Callable[..., Any], args: Args) -> list[Any]:
        return [await afunc(*a) for a in args]


class RawPipe(Peer):
    """W3's floor, not a peer: one warm Python process behind a pair of OS pipes.

    A call is ``pickle.dumps((func, args))`` written with a length prefix; the worker
    (``workloads.serve_pipe``) unpickles it, calls, and writes back its pickled result.
    The parent blocks in ``os.read`` for the reply (no event-loop wake-up, no task, no
    bookkeeping), so its round trip is what any process pool's single call must cost at
    least on this machine. Only W3 runs it; ``map`` runs the calls one after another.
    """

    name = "raw-pipe"
    only = ("W3",)

    async def _open(self, stack: AsyncExitStack) -> None:
        proc = await _in_thread(self._spawn)
        stack.push_async_callback(_in_thread, self._stop, proc)
        self._proc = proc
        self._w, self._r = proc.stdin.fileno(), proc.stdout.fileno()

    @staticmethod
    def _spawn() -> Any:
        import os
        import subprocess
        import sys
        from pathlib import Path

        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        code = "from benchmarks.workloads import serve_pipe; serve_pipe()"
        return subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            env=env,
        )

    @staticmethod
    def _stop(proc: Any) -> None:
        proc.stdin.close()  # end of file: serve_pipe returns
        try:
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()

    async def map(self, func: Callable[..., Any], args: Args, n: int | None = None) -> list[Any]:
        import pickle

        from benchmarks.workloads import recv_frame, send_frame

        out = []
        for a in args:
            send_frame(self._w, pickle.dumps((func, a), pickle.HIGHEST_PROTOCOL))
            reply = recv_frame(self._r)
            if not reply:
                raise RuntimeError(f"raw-pipe: the worker exited ({self._proc.poll()})")
            out.append(pickle.loads(reply))
        return out


#: Every peer, in table order; the keys are the names ``--peers`` accepts.
PEERS: dict[str, type[Peer]] = {
    cls.name: cls
    for cls in (
        Aioparallel,
        JoblibLoky,
        JoblibThreading,
        RunInExecutor,
        AnyioToProcess,
        Aiomultiprocess,
        Mpire,
        Sequential,
        RawPipe,
    )
}
