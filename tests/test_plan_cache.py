"""A ``Parallel`` reuses the plan of an earlier one with the same plain arguments, and never a
stale one: whatever else the plan was made from (the active ``parallel_config``, the
environment, the registry, the CPUs, the nesting depth) changing between two ``Parallel``
objects with the same arguments gives the second its own plan."""

from __future__ import annotations

import warnings

import pytest

import aioparallel._parsing
from aioparallel import Parallel, parallel_config
from aioparallel._nesting import deeper
from aioparallel.backends.base import (
    BackendArgs,
    BackendEntry,
    register_backend,
    unregister_backend,
)
from aioparallel.backends.sequential import SequentialBackend


def test_same_plain_arguments_share_one_plan() -> None:
    assert Parallel(n_jobs=2)._plan is Parallel(n_jobs=2)._plan
    assert Parallel(n_jobs=2)._plan is not Parallel(n_jobs=3)._plan


def test_a_value_is_told_from_an_equal_one_of_another_type() -> None:
    # the default pre_dispatch widens with the batch size; the same string given does not
    assert Parallel(n_jobs=2)._plan.widen_bound
    assert not Parallel(n_jobs=2, pre_dispatch="2*n_jobs")._plan.widen_bound
    assert Parallel(n_jobs=2, verbose=True).verbose is True
    assert Parallel(n_jobs=2, verbose=1).verbose == 1
    assert type(Parallel(n_jobs=2, verbose=1).verbose) is int


def test_a_config_change_is_seen() -> None:
    assert Parallel(n_jobs=2)._backend_name == "processes"
    with parallel_config(backend="threads"):
        assert Parallel(n_jobs=2)._backend_name == "threads"
        with parallel_config(backend="sequential"):
            assert Parallel(n_jobs=2)._backend_name == "sequential"
        assert Parallel(n_jobs=2)._backend_name == "threads"
    with parallel_config(verbose=5):
        assert Parallel(n_jobs=2).verbose == 5
    with parallel_config(verbose=7):
        assert Parallel(n_jobs=2).verbose == 7
    assert Parallel(n_jobs=2)._backend_name == "processes"


def test_the_worker_environment_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Parallel(n_jobs=2)._backend_name == "processes"
    monkeypatch.setenv("AIOPARALLEL_IN_WORKER", "1")
    assert Parallel(n_jobs=2)._backend_name == "sequential"
    monkeypatch.delenv("AIOPARALLEL_IN_WORKER")
    assert Parallel(n_jobs=2)._backend_name == "processes"


def test_the_cpus_are_counted_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioparallel._parsing, "cpu_count", lambda: 8)
    assert Parallel(n_jobs=-1).n_jobs == 8
    monkeypatch.setattr(aioparallel._parsing, "cpu_count", lambda: 3)
    assert Parallel(n_jobs=-1).n_jobs == 3


def test_a_registry_change_is_seen() -> None:
    def build(args: BackendArgs) -> SequentialBackend:
        return SequentialBackend()

    first = BackendEntry("cached-toy", build)
    second = BackendEntry("cached-toy", build, local=True)
    register_backend(first)
    try:
        assert Parallel(n_jobs=2, backend="cached-toy")._plan.entry is first
    finally:
        unregister_backend("cached-toy")
    register_backend(second)
    try:
        assert Parallel(n_jobs=2, backend="cached-toy")._plan.entry is second
    finally:
        unregister_backend("cached-toy")
    with pytest.raises(ValueError, match="Invalid backend: 'cached-toy'"):
        Parallel(n_jobs=2, backend="cached-toy")


def test_nesting_is_decided_and_warned_each_time() -> None:
    assert Parallel(n_jobs=2)._backend_name == "processes"
    below_threads = deeper(lambda: Parallel(n_jobs=2)._backend_name)
    assert below_threads() == "threads"
    assert Parallel(n_jobs=2)._backend_name == "processes"
    for _ in range(2):
        with pytest.warns(UserWarning, match="cannot be nested"):
            deeper(lambda: Parallel(n_jobs=2, backend="processes"))()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Parallel(n_jobs=2, backend="processes")._backend_name == "processes"


def test_unhashable_or_stateful_arguments_are_planned_each_time() -> None:
    calls: list[object] = []
    assert Parallel(n_jobs=2, progress=calls.append)._plan.progress == calls.append
    # a list initargs (not hashable) and an initializer object: parsed as ever
    parallel = Parallel(n_jobs=2, initializer=print, initargs=[1, [2]])
    assert parallel._plan.backend_args.initializer is not None
    assert parallel._plan.backend_args.initializer.args == (1, [2])
    with pytest.raises(ValueError, match="initargs"):
        Parallel(n_jobs=2, initargs=(1,))


@pytest.mark.parametrize("n_jobs", [1, 2])
@pytest.mark.parametrize("which", ["check_platform", "check_installed"])
def test_a_backend_check_is_made_each_time(n_jobs: int, which: str) -> None:
    """A registered backend's own checks may answer otherwise later (with one worker, the
    calls then run in the caller, yet the backend picked is still checked)."""
    broken: list[str] = []

    def check() -> None:
        if broken:
            raise NotImplementedError(broken[0])

    def build(args: BackendArgs) -> SequentialBackend:
        return SequentialBackend()

    if which == "check_platform":
        entry = BackendEntry("checked-toy", build, local=True, check_platform=check)
    else:
        entry = BackendEntry("checked-toy", build, local=True, check_installed=check)
    register_backend(entry)
    try:
        Parallel(n_jobs=n_jobs, backend="checked-toy")
        broken.append("not here any more")
        with pytest.raises(NotImplementedError, match="not here any more"):
            Parallel(n_jobs=n_jobs, backend="checked-toy")
    finally:
        unregister_backend("checked-toy")
