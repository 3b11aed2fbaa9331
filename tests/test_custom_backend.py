"""The Backend protocol is a public extension point: the example backend of docs/backends.md
passes the backend contract.

The example's class is taken from the page itself (so the documented code is what is
tested), and every contract test parametrized by backend (tests/test_contract.py) runs here
again with a fresh instance of it in place of a backend name.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

import aioparallel
from aioparallel import Parallel, delayed
from tests import test_contract
from tests.helpers import square
from tests.test_docs_examples import extract_blocks

pytestmark = pytest.mark.anyio

PAGE = Path(__file__).resolve().parent.parent / "docs" / "backends.md"


def documented_backend() -> type[Any]:
    """``InlineBackend`` as defined by the page's example block (without its demo lines)."""
    (block,) = [b for b in extract_blocks(PAGE) if "class InlineBackend" in b.source]
    definitions = block.source.split("\n\ndef square", 1)[0]
    namespace: dict[str, Any] = {"__name__": "docs_backends_example"}
    exec(compile(definitions, str(PAGE), "exec"), namespace)
    return namespace["InlineBackend"]  # type: ignore[no-any-return]


InlineBackend = documented_backend()

# Every contract test that takes the `backend` fixture, collected again in this module, where
# the fixture below gives it the documented backend object.
for _name, _test in vars(test_contract).items():
    if _name.startswith("test_") and "backend" in inspect.signature(_test).parameters:
        globals()[_name] = _test


@pytest.fixture
def backend() -> Any:
    return InlineBackend(2)  # the contract's tests all use n_jobs=2


def test_the_example_is_a_backend() -> None:
    assert isinstance(InlineBackend(), aioparallel.Backend)


def test_every_type_of_the_protocol_is_public() -> None:
    hints = inspect.get_annotations(aioparallel.Backend.open_run, eval_str=True)
    assert hints["options"] is aioparallel.RunOptions
    for name in ("Backend", "Batch", "Failure", "RunBatch", "RunOptions"):
        assert name in aioparallel.__all__


async def test_a_timeout_it_cannot_enforce_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot interrupt"):
        await Parallel(backend=InlineBackend(), timeout=1)([delayed(square)(1)])


async def test_n_jobs_must_match_its_workers() -> None:
    with pytest.raises(ValueError, match="contradicts the backend object"):
        Parallel(n_jobs=3, backend=InlineBackend(2))
