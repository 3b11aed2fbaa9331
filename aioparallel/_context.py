"""``propagate``: context variables whose values follow each call into process workers.

::

    propagate(request_id)        finds it by module and attribute name (a ContextVar does
                                 not pickle: the worker imports its module and takes the
                                 same object)
    await parallel(calls)        each batch, as it is pickled (in the caller's context,
                                 which the run's tasks inherit): capture() -> the values set
                                 there, pickled, in the job (nothing when none is set)
    worker                       sets them around each call, resets them after
                                 (``child.context``)

Threads and the sequential backend need none of this: their calls run in a copy of the
caller's context already.
"""

from __future__ import annotations

import contextvars
import sys
from typing import Any

from .child.protocol import dumps

__all__ = ["capture", "propagate"]

#: Registered variables -> (module, attribute): the worker finds them there.
_registered: dict[contextvars.ContextVar[Any], tuple[str, str]] = {}
_UNSET: Any = object()


def propagate(*variables: contextvars.ContextVar[Any]) -> None:
    """Set these context variables in process workers while each call runs, to the values
    they have in the caller when the call is dispatched: a request id, a tenant, a trace's
    ``traceparent``.

    A variable not set in the caller stays unset in the worker; whatever a task sets is
    reset after its call. Registration lasts as long as the process (registering again
    does nothing); a registered variable costs nothing while it is unset. Threads and the
    sequential backend need no registration: their calls see the caller's whole context.

    Parameters
    ----------
    *variables
        ``contextvars.ContextVar`` objects defined at module level (``request_id =
        ContextVar("request_id")`` in an importable module, not ``__main__``): the worker
        imports that module to find the same variable. Their values must pickle: a call
        dispatched while one holds a value that does not fails with a ``PicklingError``
        naming the variable.

    Raises
    ------
    TypeError
        If an argument is not a ``ContextVar``.
    ValueError
        If a variable is not a module-level attribute of an importable module.
    """
    for variable in variables:
        if not isinstance(variable, contextvars.ContextVar):
            raise TypeError(
                f"propagate() takes contextvars.ContextVar objects, not {type(variable).__name__}"
            )
        if variable not in _registered:
            _registered[variable] = _locate(variable, sys._getframe(1).f_globals)


def _locate(variable: contextvars.ContextVar[Any], caller: dict[str, Any]) -> tuple[str, str]:
    """(module, attribute) where ``variable`` lives: the caller's module first, then every
    module imported (once, at registration)."""
    modules = [sys.modules.get(caller.get("__name__", ""))]
    modules += [m for m in list(sys.modules.values()) if m is not modules[0]]
    in_main = False
    for module in modules:
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            if value is variable:
                if module.__name__ == "__main__":  # type: ignore[union-attr]
                    in_main = True
                    break
                return module.__name__, name  # type: ignore[union-attr]
    where = (
        "is defined in __main__, which a worker process does not import"
        if in_main
        else "is not a module-level attribute of any imported module"
    )
    raise ValueError(
        f"cannot propagate context variable {variable.name!r}: it {where}; define it at "
        "module level in an importable module (e.g. myapp/context.py: request_id = "
        "ContextVar('request_id')), so the worker can import it and find the same variable"
    )


def capture() -> tuple[tuple[str, str, bytes], ...] | None:
    """The registered variables set in the current context, as a job carries them: empty if
    none is set (the worker still runs each call in a context of its own, so what a task
    sets ends with its call); None if none is registered (the common case: one dict check,
    and the worker runs calls as they are). A value that does not pickle raises TypeError
    naming the variable."""
    if not _registered:
        return None
    carried = []
    for variable, (module, name) in list(_registered.items()):
        value = variable.get(_UNSET)
        if value is _UNSET:
            continue
        try:
            data = dumps(value)
        except Exception as exc:  # any __reduce__ may raise anything
            raise TypeError(
                f"the value of context variable {variable.name!r} ({module}.{name}, "
                f"propagated with aioparallel.propagate) could not be pickled: "
                f"{type(value).__name__}: {exc}; set a picklable value in the caller (an id, "
                "a string) or do not propagate this variable"
            ) from exc
        carried.append((module, name, data))
    return tuple(carried)


def forget(*variables: contextvars.ContextVar[Any]) -> None:
    """Stop propagating ``variables`` (for tests)."""
    for variable in variables:
        _registered.pop(variable, None)
