"""The process backend: batches run on warm worker processes, with crashes and timeouts
isolated to the one task they hit.

``ProcessBackend`` holds the pool (the shared one of its settings, or a private one) and, for
each run, the run's workers (``pool.run_workers.RunWorkers``) and temp folder; each batch is
a ``batch.BatchRun``: take a worker from the pool, send the job, read results as the worker
streams them, and when the worker dies, fail the call the slot blames and re-run the calls
it had not started on a fresh worker. A run's leftover array files go when the run ends.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import anyio
import anyio.to_thread

from ..._errors import SerializationError
from ..base import BackendArgs, Batch, RunBatch, RunOptions
from ..setup import Initializer, WorkerSetup
from .batch import BatchRun
from .pool.pool import Pool
from .pool.recycling import Limits
from .pool.run_workers import RunWorkers
from .pool.shared import shared_pool
from .tempfiles import RunFolder, remove_folders

__all__ = ["ProcessBackend", "build"]


def build(args: BackendArgs) -> ProcessBackend:
    """How the registry (``backends.base``) builds this backend from ``Parallel``'s settings."""
    return ProcessBackend(
        args.n_workers, private=args.private, initializer=args.initializer, **args.options
    )


def _cloudpickle_dumps(obj: object) -> bytes:
    """As jobs are pickled: by value for what lives in ``__main__`` (a script, a notebook),
    which a worker could not import by name."""
    import cloudpickle

    return bytes(cloudpickle.dumps(obj, protocol=5))


async def _with_initializer(setup: WorkerSetup, initializer: Initializer) -> WorkerSetup:
    """``setup`` with the initializer pickled once (in a thread: initargs may be large),
    for every worker of the pool; equal pickles share a warm pool."""
    name = initializer.name
    try:
        pickled = await anyio.to_thread.run_sync(
            _cloudpickle_dumps, (initializer.func, initializer.args), abandon_on_cancel=True
        )
    except anyio.get_cancelled_exc_class():
        raise
    except BaseException as exc:  # a __reduce__ may raise anything
        error = SerializationError(
            f"the initializer {name} or its initargs could not be pickled for the worker "
            f"processes: {type(exc).__name__}: {exc}"
        )
        raise error from exc
    return replace(setup, initializer=pickled, initializer_name=name)


class ProcessBackend:
    """Warm worker processes: the process-wide shared pool of its settings, or a private one
    for ``async with``."""

    name = "processes"

    def __init__(
        self,
        n_jobs: int,
        *,
        private: bool = False,
        idle_timeout: float = 300.0,
        inner_max_num_threads: int | None = None,
        initializer: Initializer | None = None,
        max_tasks_per_worker: int | None = None,
        max_worker_memory: int | None = None,
    ):
        if idle_timeout <= 0:
            raise ValueError(f"invalid idle_timeout {idle_timeout!r}: expected seconds > 0")
        self.n_workers = n_jobs
        self._private = private
        self._idle_timeout = idle_timeout
        self._setup = WorkerSetup(inner_max_num_threads=inner_max_num_threads)
        self._initializer = initializer
        self._limits = Limits(max_tasks_per_worker, max_worker_memory)
        self._pool: Pool | None = None

    async def __aenter__(self) -> ProcessBackend:
        if self._initializer is not None:
            self._setup = await _with_initializer(self._setup, self._initializer)
        if self._private:
            self._pool = Pool(self.n_workers, self._idle_timeout, self._setup, limits=self._limits)
        else:
            self._pool = shared_pool(self.n_workers, self._idle_timeout, self._setup, self._limits)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pool, self._pool = self._pool, None
        if self._private and pool is not None:
            with anyio.CancelScope(shield=True):
                await pool.close()

    def open_run(self, options: RunOptions) -> _RunScope:
        if self._pool is None:
            raise RuntimeError("ProcessBackend used outside 'async with'")
        return _RunScope(self._pool, options)


class _RunScope:
    """One run of a ``ProcessBackend`` (``open_run``): its place in line and kept workers
    (``RunWorkers``), and its temp folder, named when a file is first needed. A class, not
    an ``@asynccontextmanager``: its generator cost a small run ~10 µs."""

    __slots__ = ("folder", "options", "workers")

    def __init__(self, pool: Pool, options: RunOptions):
        self.options = options
        self.folder = RunFolder(options.temp_folder)  # checked when a file is first needed
        self.workers = RunWorkers(pool, options.expected_work)

    async def __aenter__(self) -> RunBatch:
        return self

    @property
    def crowded(self) -> bool:
        """The pool is crowded for this run (``RunWorkers.crowded``): a small run goes in
        one batch (``Backend``)."""
        return self.workers.crowded

    def keep_idle(self, lanes: int) -> None:
        """``RunWorkers.keep_idle``: idle workers kept for this run's lanes about to ask."""
        self.workers.keep_idle(lanes)

    async def wait_for_worker(self) -> None:
        """``RunWorkers.wait_for_worker``: the run's next batch is cut once a worker is
        ready for it."""
        await self.workers.wait_for_worker()

    async def __call__(self, batch: Batch) -> list[Any]:
        run = BatchRun(self.workers, self.folder, self.options, batch)
        try:
            return await run.run()
        finally:
            if run.lease.keys:  # its arrays' files go once no other batch uses them
                doomed = self.folder.release(run.lease)
                if doomed:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(remove_folders, doomed)

    async def __aexit__(self, *exc_info: object) -> None:
        if not self.workers.end():  # workers to stop (the common case has none: no shield)
            with anyio.CancelScope(shield=True):
                await self.workers.close()
        leftovers = self.folder.close()  # a pickling thread abandoned by a cancel writes nothing
        if leftovers:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(remove_folders, leftovers)
