"""A griffe extension for the API page: show ``Default("2*n_jobs")`` as ``"2*n_jobs"``.

``Parallel`` and ``parallel_config`` mark some defaults with ``Default`` (a ``str``
subclass, in ``aioparallel._settings``) to tell "not given" from an explicit equal value;
that is an implementation detail. At runtime the repr is already the plain string; griffe
reads the source, so this rewrites the default it shows.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import griffe

_DEFAULT = re.compile(r"""^Default\((?P<value>(["']).*\2)\)$""")


class PlainDefaults(griffe.Extension):
    def on_function_instance(self, *, func: griffe.Function, **kwargs: Any) -> None:
        for parameter in func.parameters:
            match = _DEFAULT.match(str(parameter.default))
            if match:
                parameter.default = repr(ast.literal_eval(match["value"])).replace("'", '"')
