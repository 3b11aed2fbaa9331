"""A backend declares itself once, in the registry, and is then known by name everywhere:
``Parallel(backend=name)``, its aliases, ``parallel_config`` and its backend options, the
list of valid names in errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import anyio.lowlevel
import pytest

from aioparallel import Batch, Failure, Parallel, RunBatch, RunOptions, delayed, parallel_config
from aioparallel.backends.base import (
    BackendArgs,
    BackendEntry,
    register_backend,
    unregister_backend,
)
from tests.helpers import square


class ToyBackend:
    """Runs calls on the loop; remembers how it was built."""

    name = "toy"
    built: ClassVar[list[ToyBackend]] = []

    def __init__(self, n_workers: int, flavour: str = "plain") -> None:
        self.n_workers = n_workers
        self.flavour = flavour
        ToyBackend.built.append(self)

    async def __aenter__(self) -> ToyBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    @asynccontextmanager
    async def open_run(self, options: RunOptions) -> AsyncIterator[RunBatch]:
        async def run_batch(batch: Batch) -> list[Any]:
            results: list[Any] = []
            for call in batch.calls:
                await anyio.lowlevel.checkpoint()
                try:
                    results.append(call.func(*call.args, **call.kwargs))
                except BaseException as exc:
                    results.append(Failure(exc))
            return results

        yield run_batch


def build_toy(args: BackendArgs) -> ToyBackend:
    return ToyBackend(args.n_workers, **args.options)


@pytest.fixture
def toy() -> Iterator[None]:
    """The one place the toy backend is declared: name, alias, option, constructor."""
    ToyBackend.built.clear()
    register_backend(
        BackendEntry("toy", build_toy, aliases=("plaything",), options=frozenset({"flavour"}))
    )
    yield
    unregister_backend("toy")


@pytest.mark.anyio
@pytest.mark.usefixtures("toy")
async def test_a_registered_backend_runs_by_name() -> None:
    results = await Parallel(n_jobs=2, backend="toy")(delayed(square)(x) for x in range(5))
    assert results == [0, 1, 4, 9, 16]
    (built,) = ToyBackend.built
    assert (built.n_workers, built.flavour) == (2, "plain")
    assert Parallel(n_jobs=3, backend="plaything")._backend_name == "toy"


@pytest.mark.anyio
@pytest.mark.usefixtures("toy")
async def test_parallel_config_names_it_and_passes_its_options() -> None:
    with parallel_config(backend="toy", n_jobs=3, flavour="salty"):
        assert await Parallel()(delayed(square)(x) for x in range(3)) == [0, 1, 4]
    (built,) = ToyBackend.built
    assert (built.n_workers, built.flavour) == (3, "salty")


@pytest.mark.usefixtures("toy")
def test_its_options_are_refused_by_other_backends() -> None:
    with (
        parallel_config(flavour="salty"),
        pytest.raises(ValueError, match=r"'flavour'.*flavour= is an option of 'toy'"),
    ):
        Parallel(n_jobs=2, backend="threads")


@pytest.mark.usefixtures("toy")
def test_unknown_names_list_every_registered_one() -> None:
    with pytest.raises(ValueError) as info:
        Parallel(backend="gpu")
    assert str(info.value) == (
        "Invalid backend: 'gpu'; valid backends: 'processes', 'loky', 'multiprocessing', "
        "'threads', 'threading', 'sequential', 'dask', 'ray', 'toy', 'plaything'"
    )


def test_unregistered_it_is_unknown_again() -> None:
    for make in (lambda: Parallel(backend="toy"), lambda: parallel_config(backend="toy")):
        with pytest.raises(ValueError, match="Invalid backend: 'toy'; valid backends: 'proc"):
            make()
    with pytest.raises(ValueError, match="unknown backend option"):
        parallel_config(flavour="salty")


@pytest.mark.usefixtures("toy")
def test_a_taken_name_cannot_be_registered_again() -> None:
    with pytest.raises(ValueError, match="'threading' is already taken by 'threads'"):
        register_backend(BackendEntry("other", build_toy, aliases=("threading",)))
