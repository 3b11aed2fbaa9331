"""The caller's context variables in a worker (``aioparallel.propagate``): the job carries
the values they had where its calls were dispatched, as ``(module, attribute, pickled
value)``; the worker finds the same variables by importing their module, and runs each call
with them set: a sync call in a copy of a context holding them, an async task setting them
in its own context (``async_loop``). Nothing outlives the call: the next one, or a job that
carries no value for a variable, finds it as it was (unset; unless a task set it while the
parent propagated nothing, or an initializer did: a context variable cannot be unset).
"""

from __future__ import annotations

import contextvars
import pickle
from typing import Any

from .observe import TASK

#: What a job carries: ``((module, attribute, pickled value), ...)``, or None (nothing set).
Carried = tuple[tuple[str, str, bytes], ...] | None
#: The variables and their values, resolved in this worker.
Values = list[tuple["contextvars.ContextVar[Any]", Any]]

_found: dict[tuple[str, str], contextvars.ContextVar[Any]] = {}


def load(carried: Carried) -> tuple[contextvars.Context, Values] | None:
    """The job's values, and a context holding them that each sync call runs in a copy of;
    None if the parent propagates no variable (calls run as they are). Called while the job
    loads: a variable that cannot be found here fails the job's loading, with its traceback
    (LOAD_ERROR)."""
    if carried is None:
        return None
    values: Values = [
        (_variable(module, name), pickle.loads(data)) for module, name, data in carried
    ]
    context = contextvars.copy_context()
    context.run(set_values, values)
    return context, values


def set_values(values: Values) -> None:
    for variable, value in values:
        variable.set(value)


async def in_task(task: tuple[int, int], values: Values, coro: Any) -> Any:
    """A process worker's async task, in its own context: which task it is (its log records
    say so: ``observe.TASK``) and the caller's context variables."""
    TASK.set(task)
    if values:
        set_values(values)
    return await coro


def _variable(module: str, name: str) -> contextvars.ContextVar[Any]:
    variable = _found.get((module, name))
    if variable is None:
        import importlib

        found: Any = importlib.import_module(module)
        for part in name.split("."):
            found = getattr(found, part)
        if not isinstance(found, contextvars.ContextVar):
            raise TypeError(
                f"{module}.{name} is not a contextvars.ContextVar in the worker process "
                f"({type(found).__name__}): aioparallel.propagate found one there in the parent"
            )
        variable = _found[(module, name)] = found
    return variable
