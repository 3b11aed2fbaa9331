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
    """(module, attribute) where ``variable`` lives, searched once, at registration, in every
    imported module but ``__main__`` (which a worker does not import, whatever its alias).
    Where several hold it, an attribute named as the variable wins, then a module other than
    the caller's (which most often imported it from the module that defines it)."""
    caller_name = caller.get("__name__")
    main = sys.modules.get("__main__")
    found: list[tuple[bool, bool, str, str]] = []
    in_main = False
    for module_name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            if value is variable:
                if module is main or module_name in ("__main__", "__mp_main__"):
                    in_main = True
                else:
                    found.append(
                        (name != variable.name, module_name == caller_name, module_name, name)
                    )
    if found:
        _, _, module_name, name = min(found)
        return module_name, name
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
