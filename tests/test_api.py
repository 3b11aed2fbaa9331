"""The public surface: names, lazy import, delayed/Call, parameter validation, parallel_config."""

from __future__ import annotations

import asyncio
import collections.abc
import inspect
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

import aioparallel
from aioparallel import Call, Parallel, cpu_count, delayed, parallel_config
from tests.conftest import LeakCheck
from tests.helpers import add, square

ROOT = Path(__file__).resolve().parent.parent


# -- names and import ---------------------------------------------------------------------------


def test_all_is_pinned() -> None:
    assert aioparallel.__all__ == [
        "AioParallelError",
        "Backend",
        "Batch",
        "Call",
        "Failure",
        "InitializerError",
        "NotACallError",
        "Parallel",
        "PicklingError",
        "ProgressEvent",
        "RemoteTraceback",
        "RunBatch",
        "RunOptions",
        "SerializationError",
        "TaskTimeoutError",
        "UnpicklingError",
        "WorkerCrashedError",
        "cpu_count",
        "delayed",
        "effective_n_jobs",
        "parallel_backend",
        "parallel_config",
        "pool_stats",
        "propagate",
        "shutdown_workers",
    ]
    assert dir(aioparallel) == sorted(aioparallel.__all__)
    for name in aioparallel.__all__:
        assert getattr(aioparallel, name) is not None
    with pytest.raises(AttributeError, match="no_such_name"):
        aioparallel.no_such_name  # noqa: B018


def _modules_after(code: str) -> list[str]:
    """The aioparallel and heavy third-party modules loaded by ``code`` in a fresh python."""
    script = (
        f"{code}\nimport json, sys\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('aioparallel', 'anyio', 'numpy', 'cloudpickle', 'distributed', 'trio'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return list(json.loads(out.stdout))


def test_import_is_lazy() -> None:
    assert _modules_after("import aioparallel") == ["aioparallel"]
    # delayed() needs neither anyio nor the run machinery
    loaded = _modules_after("from aioparallel import delayed")
    assert "aioparallel._call" in loaded
    assert not any(m.startswith(("anyio", "numpy", "aioparallel._parallel")) for m in loaded)
    # Parallel pulls in the run machinery, but not the dask bridge until asked for
    loaded = _modules_after("from aioparallel import Parallel")
    assert "aioparallel._parallel" in loaded
    assert not any(
        m.startswith(("distributed", "trio", "aioparallel.backends.dask")) for m in loaded
    )


# -- delayed and Call ---------------------------------------------------------------------------


def documented(x: int, y: int = 1) -> int:
    """Documented function."""
    return x + y


def test_delayed_keeps_metadata() -> None:
    wrapped = delayed(documented)
    assert wrapped.__name__ == "documented"
    assert wrapped.__qualname__ == "documented"
    assert wrapped.__doc__ == "Documented function."
    assert wrapped.__wrapped__ is documented  # type: ignore[attr-defined]
    assert inspect.signature(wrapped) == inspect.signature(documented)


def test_call_unpacks_as_joblib_triple() -> None:
    call = delayed(documented)(1, y=2)
    assert isinstance(call, Call)
    func, args, kwargs = call
    assert (func, args, kwargs) == (documented, (1,), {"y": 2})
    assert len(call) == 3
    assert call[0] is documented
    assert call == (documented, (1,), {"y": 2})
    assert call() == 3
    assert "documented" in repr(call)


def test_delayed_rejects_non_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        delayed(42)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_joblib_style_tuples_are_accepted() -> None:
    import joblib

    calls: list[Any] = [
        (add, (1,), {"y": 2}),  # a hand-made (f, args, kwargs)
        (add, [3], {}),  # args as a list
        joblib.delayed(add)(4, y=5),  # joblib's own delayed
        delayed(add)(6),
    ]
    assert await Parallel(backend="sequential")(calls) == [3, 3, 9, 6]


def test_non_iterable_input_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="iterable"):
        Parallel()(42)  # type: ignore[call-overload]


# -- parameter validation -----------------------------------------------------------------------

_INVALID: list[tuple[dict[str, Any], list[str]]] = [
    ({"n_jobs": 0}, ["n_jobs", "0", "-1"]),
    ({"n_jobs": "2x"}, ["n_jobs could not be converted to int", "'2x'"]),
    ({"n_jobs": True}, ["n_jobs", "True"]),
    ({"backend": "gpu"}, ["'gpu'", "'processes'", "'threads'", "'sequential'", "'dask'"]),
    ({"backend": object()}, ["backend", "object"]),
    ({"pre_dispatch": "3*x"}, ["'3*x'", "'all'", "n_jobs"]),
    ({"pre_dispatch": "__import__('os').system('x')"}, ["__import__", "'all'", "n_jobs"]),
    ({"pre_dispatch": "2**n_jobs"}, ["2**n_jobs", "'all'"]),
    ({"pre_dispatch": "-2*n_jobs"}, ["-2*n_jobs", "'all'"]),
    ({"pre_dispatch": 0}, ["pre_dispatch 0", "'all'"]),
    ({"pre_dispatch": -1}, ["-1", "'all'"]),
    ({"pre_dispatch": 2.5}, ["2.5", "'all'"]),
    ({"return_as": "tuple"}, ["'tuple'", "'list'", "'generator'", "'generator_unordered'"]),
    ({"batch_size": 0}, ["batch_size 0", "'auto'"]),
    ({"batch_size": -1}, ["batch_size -1", "'auto'"]),
    ({"batch_size": "big"}, ["'big'", "'auto'"]),
    ({"batch_size": 1.5}, ["1.5", "'auto'"]),
    ({"timeout": 0}, ["timeout 0", "None"]),
    ({"timeout": -1}, ["timeout -1", "None"]),
    ({"timeout": "5"}, ["'5'", "None"]),
    ({"max_nbytes": "1X"}, ["'1X'", "None", "'1M'"]),
    ({"max_nbytes": -1}, ["max_nbytes -1", "None", "'1M'"]),
    ({"max_nbytes": "lots"}, ["'lots'", "'1M'"]),
    ({"mmap_mode": "w"}, ["'w'", "'r'", "'r+'", "'c'"]),
    ({"mmap_mode": None}, ["None", "'r'", "'r+'", "'c'"]),
    ({"verbose": -1}, ["verbose -1"]),
    ({"progress": "yes"}, ["'yes'", "bool", "callable"]),
]


@pytest.mark.parametrize(
    ("kwargs", "fragments"), _INVALID, ids=[repr(kw)[1:-1] for kw, _ in _INVALID]
)
def test_invalid_parameter_names_value_and_valid_ones(
    kwargs: dict[str, Any], fragments: list[str]
) -> None:
    params = {"backend": "threads", "n_jobs": 2, **kwargs}
    with pytest.raises(ValueError) as info:
        Parallel(**params)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from {message!r}"


def test_pre_dispatch_is_never_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "evaluated"
    with pytest.raises(ValueError):
        Parallel(pre_dispatch=f"open({str(marker)!r}, 'w') and n_jobs")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("pre_dispatch", "n_jobs", "expected"),
    [
        ("all", 2, None),
        (5, 2, 5),
        ("5", 2, 5),
        ("2*n_jobs", 3, 6),
        ("3 * n_jobs", 2, 6),
        (" n_jobs ", 4, 4),
        ("1.5*n_jobs", 4, 6),
        ("n_jobs*2", 3, 6),
        ("0.1*n_jobs", 2, 1),
    ],
)
def test_valid_pre_dispatch(pre_dispatch: Any, n_jobs: int, expected: int | None) -> None:
    from aioparallel._parsing import parse_pre_dispatch

    Parallel(n_jobs=n_jobs, backend="threads", pre_dispatch=pre_dispatch)
    assert parse_pre_dispatch(pre_dispatch, n_jobs) == expected


@pytest.mark.parametrize("pre_dispatch", ["2*n_jobs*3", "2*3*n_jobs", "n_jobs*2*n_jobs"])
def test_pre_dispatch_with_two_factors_is_not_misread(pre_dispatch: str) -> None:
    """docs/api.md: only ``k*n_jobs`` is parsed; a longer product is refused, not read as a part
    of it (``2*n_jobs`` or ``n_jobs*3``)."""
    from aioparallel._parsing import parse_pre_dispatch

    with pytest.raises(ValueError, match="invalid pre_dispatch"):
        parse_pre_dispatch(pre_dispatch, 2)
    with pytest.raises(ValueError, match="invalid pre_dispatch"):
        Parallel(n_jobs=2, backend="threads", pre_dispatch=pre_dispatch)


@pytest.mark.parametrize(
    ("max_nbytes", "expected"),
    [
        (None, None),
        (0, 0),
        (1000, 1000),
        ("100", 100),
        ("10K", 10 * 1024),
        ("1M", 1024**2),
        ("1G", 1024**3),
        ("2.5M", int(2.5 * 1024**2)),
        ("10k", 10 * 1024),
        ("1MB", 1024**2),
    ],
)
def test_valid_max_nbytes(max_nbytes: Any, expected: int | None) -> None:
    from aioparallel._parsing import parse_max_nbytes

    assert parse_max_nbytes(max_nbytes) == expected
    parallel = Parallel(n_jobs=2, backend="threads", max_nbytes=max_nbytes)
    assert parallel._options.max_nbytes == expected


@pytest.mark.parametrize(
    "backend", ["processes", "loky", "multiprocessing", "threads", "threading"]
)
def test_backend_aliases(backend: str) -> None:
    from aioparallel._config import BACKEND_ALIASES

    p = Parallel(n_jobs=2, backend=backend)
    assert p._backend_name == BACKEND_ALIASES[backend]


@pytest.mark.parametrize(
    ("n_jobs", "cpus", "expected"),
    [(-1, 8, 8), (-2, 8, 7), (-8, 8, 1), (-9, 8, 1), (-100, 8, 1), (3, 8, 3), (-1, 1, 1)],
)
def test_negative_n_jobs_counts_from_cpu_count(
    monkeypatch: pytest.MonkeyPatch, n_jobs: int, cpus: int, expected: int
) -> None:
    import aioparallel._parsing

    monkeypatch.setattr(aioparallel._parsing, "cpu_count", lambda: cpus)
    assert Parallel(n_jobs=n_jobs, backend="threads").n_jobs == expected


_N_JOBS_UNDER_AFFINITY = """
import os, sys
os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(",")})
from aioparallel import Parallel, cpu_count
print(cpu_count(), Parallel(n_jobs=-1, backend="threads").n_jobs,
      Parallel(n_jobs=-2, backend="threads").n_jobs)
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity")
def test_n_jobs_minus_one_is_the_real_cpu_count() -> None:
    """-1 means the CPUs this process may use: a process pinned to fewer CPUs than the
    machine has gets that many workers (as joblib/loky count), not ``os.cpu_count()``."""
    from aioparallel._system import _cgroup_cpu_limit

    allowed = sorted(os.sched_getaffinity(0))
    # with a cgroup CPU quota, two pinned CPUs may count as one: then only pin to one
    pins = [allowed[:1]] if _cgroup_cpu_limit() is not None else [allowed[:1], allowed[:2]]
    for cpus in pins:
        out = subprocess.run(
            [sys.executable, "-c", _N_JOBS_UNDER_AFFINITY, ",".join(map(str, cpus))],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
        n = len(cpus)
        assert list(map(int, out)) == [n, n, max(1, n - 1)], (cpus, out)
    assert 1 <= Parallel(n_jobs=-1, backend="threads").n_jobs == cpu_count() <= len(allowed)


def test_n_jobs_default_and_one_run_in_the_caller_thread() -> None:
    assert Parallel().n_jobs == 1
    for p in (Parallel(), Parallel(n_jobs=1, backend="threads")):
        ident = asyncio.run(p([delayed(threading.get_ident)()]))
        assert ident == [threading.get_ident()]


# -- coroutine and asyncio.run ------------------------------------------------------------------


def test_list_mode_returns_a_coroutine_for_asyncio_run() -> None:
    coro = Parallel(n_jobs=2, backend="threads")(delayed(square)(i) for i in range(5))
    # a Coroutine (what asyncio.run, create_task, trio and anyio accept), not a bare one
    assert isinstance(coro, collections.abc.Coroutine) and asyncio.iscoroutine(coro)
    assert asyncio.run(coro) == [0, 1, 4, 9, 16]
    # again, in a fresh loop, from the same object
    p = Parallel(n_jobs=2, backend="threads")
    for _ in range(3):
        assert asyncio.run(p([delayed(square)(3)])) == [9]


def test_repr() -> None:
    assert repr(Parallel(n_jobs=3, backend="threads")) == "Parallel(n_jobs=3)"
    assert repr(Parallel(n_jobs=-1, backend="threads")) == "Parallel(n_jobs=-1)"


# -- parallel_config ----------------------------------------------------------------------------


def test_parallel_config_sets_defaults_and_nests() -> None:
    with parallel_config(backend="threads", n_jobs=3, verbose=2):
        p = Parallel()
        assert (p._backend_name, p.n_jobs, p.verbose) == ("threads", 3, 2)
        with parallel_config(n_jobs=2):
            inner = Parallel()
            assert (inner._backend_name, inner.n_jobs, inner.verbose) == ("threads", 2, 2)
            # explicit arguments win over the config
            explicit = Parallel(n_jobs=4, backend="processes", verbose=0)
            assert (explicit._backend_name, explicit.n_jobs, explicit.verbose) == (
                "processes",
                4,
                0,
            )
        assert Parallel().n_jobs == 3
    p = Parallel()
    assert (p._backend_name, p.n_jobs, p.verbose) == ("sequential", 1, 0)


def test_parallel_config_data_settings() -> None:
    with parallel_config(max_nbytes=None, mmap_mode="c", temp_folder="/somewhere"):
        p = Parallel(n_jobs=2, backend="threads")
    assert (p._options.max_nbytes, p._options.mmap_mode) == (None, "c")
    assert p._options.temp_folder == "/somewhere"
    default = Parallel(n_jobs=2, backend="threads")
    assert (default._options.max_nbytes, default._options.mmap_mode) == (1024**2, "r")


def test_explicit_data_arguments_beat_the_config() -> None:
    with parallel_config(max_nbytes=None, mmap_mode="c"):
        p = Parallel(n_jobs=2, backend="threads", max_nbytes="1M", mmap_mode="r")
    assert (p._options.max_nbytes, p._options.mmap_mode) == (1024**2, "r")


def test_parallel_config_backend_options_merge() -> None:
    from aioparallel._config import current_config

    with parallel_config(idle_timeout=5, address="tcp://x:1"), parallel_config(idle_timeout=7):
        assert current_config()["backend_options"] == {"idle_timeout": 7, "address": "tcp://x:1"}
    assert "backend_options" not in current_config()


def test_parallel_config_validates() -> None:
    with pytest.raises(ValueError, match="'gpu'"):
        parallel_config(backend="gpu")
    with pytest.raises(ValueError, match="n_jobs"):
        parallel_config(n_jobs=0)
    with pytest.raises(ValueError, match="'r'"):
        parallel_config(mmap_mode="w")


def test_parallel_config_is_restored_after_an_error() -> None:
    with pytest.raises(KeyError), parallel_config(n_jobs=3, backend="threads"):
        raise KeyError("boom")
    assert Parallel().n_jobs == 1


@pytest.mark.anyio
async def test_parallel_config_async_with() -> None:
    async with parallel_config(backend="threads", n_jobs=2):
        p = Parallel()
        assert (p._backend_name, p.n_jobs) == ("threads", 2)
        assert await p(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
    assert Parallel().n_jobs == 1


@pytest.mark.anyio
async def test_parallel_config_is_local_to_concurrent_tasks() -> None:
    """Two tasks enter different configs and interleave; each sees only its own."""
    a_entered, b_entered, a_done = anyio.Event(), anyio.Event(), anyio.Event()
    seen: dict[str, tuple[str, int]] = {}

    async def task_a() -> None:
        with parallel_config(backend="threads", n_jobs=2):
            a_entered.set()
            await b_entered.wait()  # b is inside its own config now
            p = Parallel()
            seen["a"] = (p._backend_name, p.n_jobs)
            assert await p([delayed(square)(2)]) == [4]
        a_done.set()

    async def task_b() -> None:
        await a_entered.wait()
        async with parallel_config(backend="sequential", n_jobs=3):
            b_entered.set()
            await a_done.wait()  # a has left its config meanwhile
            p = Parallel()
            seen["b"] = (p._backend_name, p.n_jobs)

    async with anyio.create_task_group() as tg:
        tg.start_soon(task_a)
        tg.start_soon(task_b)
    assert seen == {"a": ("threads", 2), "b": ("sequential", 3)}
    assert Parallel().n_jobs == 1


# -- the fixtures themselves --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_leak_check_runs_after_the_asyncio_loop_closed(leak_check: LeakCheck) -> None:
    loop = asyncio.get_running_loop()

    def loop_is_closed() -> None:
        assert loop.is_closed(), "the leak check ran before pytest-asyncio closed the loop"

    leak_check.at_teardown.append(loop_is_closed)
    assert await Parallel(n_jobs=2, backend="threads")([delayed(square)(2)]) == [4]


@pytest.mark.anyio
async def test_leak_check_runs_after_the_anyio_loop_closed(
    leak_check: LeakCheck, anyio_backend: Any
) -> None:
    if anyio_backend == "trio":
        import trio

        def trio_run_is_over() -> None:
            with pytest.raises(RuntimeError):
                trio.lowlevel.current_root_task()

        leak_check.at_teardown.append(trio_run_is_over)
    else:
        loop = asyncio.get_running_loop()
        leak_check.at_teardown.append(lambda: _assert_closed(loop))
    assert await Parallel(n_jobs=2, backend="threads")([delayed(square)(2)]) == [4]


def _assert_closed(loop: asyncio.AbstractEventLoop) -> None:
    assert loop.is_closed(), "the leak check ran before the anyio runner closed the loop"


def test_leak_check_reports_leaks() -> None:
    from tests.conftest import Snapshot, leaks_after

    before = Snapshot.take()
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="leaky", daemon=True)
    thread.start()
    try:
        leaks = leaks_after(before, wait=0.05)
        assert any("'leaky'" in leak for leak in leaks), leaks
    finally:
        stop.set()
        thread.join()
    assert leaks_after(before) == []


def test_leak_check_reports_temp_folders_of_this_process() -> None:
    from tests.conftest import Snapshot, leaks_after

    before = Snapshot.take()
    ours = tempfile.mkdtemp(prefix=f"aioparallel-{os.getpid()}-")
    try:
        other = tempfile.mkdtemp(prefix="aioparallel-1-")  # pid 1's: never this test's
        try:
            leaks = leaks_after(before, wait=0.05)
        finally:
            os.rmdir(other)
    finally:
        os.rmdir(ours)
    assert leaks == [f"temp folder {ours}"]
