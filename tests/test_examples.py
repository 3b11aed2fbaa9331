"""The examples in examples/ run for real: the FastAPI app under uvicorn, the notebook in a
Jupyter kernel."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.proc_helpers import wait_gone

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
#: Seconds uvicorn (and later the kernel) may take to start.
STARTUP_DEADLINE = 30.0
#: /ping under load may take this many times the slowest idle /ping of the same test...
PING_FACTOR = 25
#: ...or this share of the work's duration: one chunk run on the loop would take longer.
WORK_SHARE = 8


def primes_below(n: int) -> int:
    """Reference answer for /compute: a sieve of Eratosthenes."""
    if n < 3:
        return 0
    sieve = bytearray([1]) * n
    sieve[0:2] = b"\x00\x00"
    for i in range(2, int(n**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, n, i)))
    return sum(sieve)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def descendants(pid: int) -> list[psutil.Process]:
    """The worker processes under ``pid`` (not a helper process that comes and goes, such as
    the folder tracker's launcher)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [child for child in children if _is_worker(child)]


def _is_worker(proc: psutil.Process) -> bool:
    try:
        return any("aioparallel.child.main" in part for part in proc.cmdline())
    except psutil.Error:
        return False


@dataclass
class Server:
    """uvicorn serving examples/fastapi_app.py, in a subprocess."""

    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, grace: float = 15.0) -> int:
        """SIGINT (uvicorn's graceful shutdown), then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=grace)
        return self.proc.returncode


@pytest.fixture
def uvicorn_server(tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    log_path = tmp_path / "uvicorn.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", "examples.fastapi_app:app",
                "--host", "127.0.0.1", "--port", str(port),
                "--no-access-log", "--log-level", "info",
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = Server(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        # Ready once /ping answers (bounded; fail early if uvicorn died).
        deadline = time.monotonic() + STARTUP_DEADLINE
        with httpx.Client(base_url=server.base_url, timeout=1) as client:
            while True:
                assert proc.poll() is None, f"uvicorn exited:\n{server.log()}"
                try:
                    if client.get("/ping").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"uvicorn not ready:\n{server.log()}"
                time.sleep(0.05)
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(120)
@pytest.mark.asyncio
async def test_fastapi_app_under_uvicorn_keeps_ping_fast(uvicorn_server: Server) -> None:
    server = uvicorn_server
    sizes = [1_500_000, 400_000, 10, 0]
    pings: list[float] = []
    workers: list[psutil.Process] = []
    computing = True

    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        # The baseline: the same pings while nothing computes (the machine is shared).
        idle: list[float] = []
        for _ in range(20):
            began = time.perf_counter()
            assert (await client.get("/ping")).json() == {"status": "ok"}
            idle.append(time.perf_counter() - began)
            await asyncio.sleep(0.02)

        async def pinger() -> None:
            while computing:
                began = time.perf_counter()
                response = await client.get("/ping")
                pings.append(time.perf_counter() - began)
                assert response.json() == {"status": "ok"}
                await asyncio.sleep(0.02)

        async def computes() -> list[dict[str, int]]:
            nonlocal computing
            try:
                responses = await asyncio.gather(
                    *(client.get("/compute", params={"n": n}) for n in sizes)
                )
                workers.extend(descendants(server.proc.pid))  # started by the first request
            finally:
                computing = False
            for response in responses:
                assert response.status_code == 200, response.text
            return [response.json() for response in responses]

        started = descendants(server.proc.pid)  # by the lifespan, before any request
        # The pings time the server's loop, not this process's: in the whole suite a full
        # collection of the test runner's heap took 0.28 s in the middle of the window.
        gc.collect()
        gc.disable()
        try:
            began = time.perf_counter()
            results, _ = await asyncio.gather(computes(), pinger())
            elapsed = time.perf_counter() - began
        finally:
            gc.enable()
        metrics = (await client.get("/metrics")).json()

    assert results == [{"n": n, "primes": primes_below(n)} for n in sizes]
    # The loop stayed free: /ping was answered throughout, and quickly: within a wide margin
    # of the idle pings, or of a small share of the work (two busy workers share two cores
    # with both event loops, and other test suites; a chunk run on the loop would hold a
    # ping for longer than that share).
    assert len(pings) >= 5, (len(pings), elapsed)
    bound = max(max(idle) * PING_FACTOR, elapsed / WORK_SHARE)
    assert max(pings) < bound, (
        f"slowest /ping {max(pings):.3f}s; bound {bound:.3f}s from the idle pings "
        f"(slowest {max(idle):.3f}s) and the {elapsed:.2f}s of work; all: {pings}"
    )
    assert len(workers) == 2, [w.cmdline() for w in workers]
    assert {w.pid for w in started} == {w.pid for w in workers}
    # /metrics: the shared pool the requests used, with its recycling limits and counts
    [pool] = metrics["pools"]
    assert pool["n_jobs"] == 2 and pool["shared"] and pool["max_tasks_per_worker"] == 10_000
    assert pool["workers"] == pool["idle"] == 2 and pool["busy"] == pool["waiting"] == 0
    chunks = sum(len(range(0, n, max(1, -(-n // 4)))) for n in sizes)
    assert pool["tasks_done"] == chunks + 2  # and the two calls that started the workers
    assert pool["spawned"] == 2 and pool["crashed"] == pool["recycled"] == 0

    # A clean shutdown: exit code 0, no traceback, no worker left behind.
    assert server.stop() == 0, server.log()
    assert wait_gone([w.pid for w in workers], 5) == [], "worker processes outlived uvicorn"
    assert "Traceback" not in server.log(), server.log()


@pytest.mark.timeout(120)
@pytest.mark.asyncio
async def test_fastapi_request_id_reaches_the_workers_log_lines(uvicorn_server: Server) -> None:
    """The middleware's request id is set in the workers (``propagate``), and their log
    records are handled by the server's logging, with the worker's pid."""
    server = uvicorn_server
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        response = await client.get(
            "/compute", params={"n": 1000}, headers={"x-request-id": "req-7f3a"}
        )
    assert response.status_code == 200 and response.headers["x-request-id"] == "req-7f3a"
    workers = {w.pid for w in descendants(server.proc.pid)}
    pattern = re.compile(r"pid=(\d+): request req-7f3a: \d+ primes in \[")
    deadline = time.monotonic() + 10
    while not (pids := {int(p) for p in pattern.findall(server.log())}):
        assert time.monotonic() < deadline, server.log()
        await asyncio.sleep(0.05)
    assert pids and pids <= workers, (pids, workers, server.log())


def _kernel_manager(kernel_dir: Path):  # type: ignore[no-untyped-def]
    """A kernel manager whose only "python3" kernel is this interpreter's ipykernel."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    spec_dir = kernel_dir / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (aioparallel tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(kernel_dir)], ensure_native_kernel=False)
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=specs)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.timeout(120)
@pytest.mark.asyncio
async def test_notebook_runs_in_a_real_kernel(tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(EXAMPLES / "notebook.ipynb", as_version=4)
    nbformat.validate(notebook)
    km = _kernel_manager(tmp_path / "kernels")
    client = NotebookClient(
        notebook,
        km=km,
        kernel_name="python3",
        timeout=60,
        startup_timeout=STARTUP_DEADLINE,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    kernel: list[psutil.Process] = []
    kernel_cmdline: list[str] = []
    workers: set[psutil.Process] = set()

    def remember_kernel(**_: object) -> None:
        kernel.append(psutil.Process(km.provisioner.process.pid))  # type: ignore[union-attr]
        kernel_cmdline.extend(kernel[0].cmdline())

    def remember_workers(**_: object) -> None:
        workers.update(descendants(kernel[0].pid))

    client.on_notebook_start = remember_kernel
    client.on_cell_executed = remember_workers
    # cleanup_kc: shut the kernel down and release its sockets although we own the manager.
    await client.async_execute(cleanup_kc=True)

    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    errors = [o for cell in code_cells for o in cell.outputs if o.output_type == "error"]
    assert errors == []
    printed = [
        "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")
        for cell in code_cells
    ]
    # The lambda defined in the notebook ran on the workers.
    assert str([i * i for i in range(10)]) + "\n" in printed, printed
    streamed = next(text for text in printed if text.startswith("finished:"))
    assert sorted(streamed.splitlines()) == sorted(f"finished: {x**3}" for x in range(4))
    assert (
        "caught: division by zero ['aioparallel: raised by task 1 (<genexpr>.<lambda>)']\n"
        in printed
    )

    # progress=True without ipywidgets: the text bar, and no warning about the widgets
    stderr = "".join(
        o.text for cell in code_cells for o in cell.outputs if o.get("name") == "stderr"
    )
    assert "20/20" in stderr, stderr
    assert "IProgress" not in stderr and "Warning" not in stderr, stderr

    assert kernel_cmdline[:3] == [sys.executable, "-m", "ipykernel_launcher"], kernel_cmdline
    assert len(workers) == 2, workers
    assert wait_gone([p.pid for p in (*kernel, *workers)], 10) == []


def test_notebook_is_clean() -> None:
    """The committed notebook has no outputs (they would go stale)."""
    import nbformat

    notebook = nbformat.read(EXAMPLES / "notebook.ipynb", as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_fastapi_example_module_imports_without_side_effects() -> None:
    """Importing the app (as uvicorn and the workers do) starts nothing."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = (
        "import examples.fastapi_app as m, sys; "
        "assert m.count_primes(0, 100) == 25; "
        "assert 'aioparallel.backends.processes.pool.pool' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=60)
