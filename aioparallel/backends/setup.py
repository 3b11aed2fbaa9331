"""What a worker starts with: its BLAS thread cap and the user's ``initializer``.

A process worker's thread cap is fixed by its environment at spawn time, and its initializer
runs once when it starts: both belong to the worker for its whole life. So they are part of
the warm pool's key (``WorkerSetup``), and a worker started for one setup is never handed to
a run that asked for another. Thread workers and the caller (``n_jobs=1``) run the
initializer in-process, once per thread (``InitOnce``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._call import function_name
from .._errors import InitializerError

__all__ = ["PLAIN", "InitOnce", "Initializer", "WorkerSetup", "initializer_error"]


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    """A process worker's setup; equal setups share a warm pool."""

    #: BLAS/OpenMP threads per worker (``parallel_config(inner_max_num_threads=)``); None:
    #: the CPUs shared out between the pool's workers, unless the user's environment says.
    inner_max_num_threads: int | None = None
    #: The pickled ``(initializer, initargs)``, run in each worker before its first task.
    initializer: bytes | None = None
    #: The initializer's name, for messages.
    initializer_name: str = field(default="", compare=False)


#: No initializer, the default thread cap.
PLAIN = WorkerSetup()


@dataclass(frozen=True, slots=True)
class Initializer:
    """``initializer(*initargs)``, as given to ``Parallel`` or ``parallel_config``."""

    func: Callable[..., object]
    args: tuple[Any, ...] = ()

    @property
    def name(self) -> str:
        return function_name(self.func)

    def run(self, where: str) -> None:
        """Run it here (a thread worker, or the caller); its failure, whatever it raised,
        becomes the run's ``InitializerError``."""
        try:
            self.func(*self.args)
        except BaseException as exc:  # the initializer's own outcome, of any type
            raise initializer_error(self.name, where, exc) from exc


def initializer_error(
    name: str, where: str, cause: BaseException | None, died: str | None = None
) -> InitializerError:
    """The run's error when the initializer ``name`` failed ``where`` (raised ``cause``, or
    its process ``died``)."""
    if died is not None:
        what = f"{where} died ({died}) while running the initializer {name}"
    else:
        what = (
            f"the initializer {name} raised {type(cause).__name__}: {cause} in {where} "
            "(its traceback is chained below)"
        )
    error = InitializerError(
        f"{what}; no task can run there, so the run stops (even with "
        "return_exceptions=True). Fix the initializer or its initargs."
    )
    error.__cause__ = cause
    return error


class InitOnce:
    """Runs an initializer once in each thread that calls it (thread workers; the caller's
    thread for ``n_jobs=1``), before that thread's first call of the backend's runs."""

    def __init__(self, initializer: Initializer, where: str | None = None):
        self.initializer = initializer
        self._where = where
        self._local = threading.local()

    def __call__(self) -> None:
        if getattr(self._local, "done", False):
            return
        self.initializer.run(self._where or f"thread {threading.current_thread().name}")
        self._local.done = True
