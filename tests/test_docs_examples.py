"""Every ```python block of README.md and docs/*.md runs, so the documentation cannot rot.

Each block runs on its own in a fresh interpreter (``sys.executable -c``) whose working
directory is an empty temp folder, the way a reader would paste it into a file. Top-level
``await`` is allowed (compiled with ``PyCF_ALLOW_TOP_LEVEL_AWAIT`` and run under
``asyncio.run``), as in a notebook. The block is compiled with the Markdown file as its file
name and padded so that line numbers in a traceback are the Markdown file's own lines.

A block preceded by a ``<!-- skip -->`` comment is not run (for code that needs something
the test machine does not have, such as a cluster address). Use it sparingly.

The few tests at the bottom pin claims the prose makes that a run of the examples alone
would not catch.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Seconds one block may take, start-up of its workers included.
BLOCK_TIMEOUT = 60
SKIP_MARK = "<!-- skip -->"
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\s`]*)")

# Runs in the child: argv[1] is the block's source, argv[2] the Markdown file it came from.
_RUNNER = """\
import ast, asyncio, inspect, sys
source, filename = sys.argv[1], sys.argv[2]
del sys.argv[1:]
code = compile(source, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
namespace = sys.modules["__main__"].__dict__
if code.co_flags & inspect.CO_COROUTINE:
    asyncio.run(eval(code, namespace))
else:
    exec(code, namespace)
"""


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the block's first code line
    source: str
    skip: bool

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def extract_blocks(path: Path) -> list[Block]:
    """The ```python fenced blocks of a Markdown file (indented ones too, e.g. in admonitions)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    previous = ""  # the last non-blank line before the current one
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        indent, fence, info = match["indent"], match["fence"], match["info"].lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            line = lines[j]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            j += 1
        if info in ("python", "py"):
            blocks.append(Block(path, i + 2, "\n".join(body) + "\n", skip=previous == SKIP_MARK))
        previous = ""
        i = j + 1
    return blocks


def documentation_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [f for f in files if f.is_file()]


ALL_BLOCKS = [block for path in documentation_files() for block in extract_blocks(path)]


def run_block(block: Block, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Pad so that line N of the compiled code is line N of the Markdown file.
    source = "\n" * (block.line - 1) + block.source
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.pop("AIOPARALLEL_TEMP_FOLDER", None)
    return subprocess.run(
        [sys.executable, "-c", _RUNNER, source, str(block.path)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
    )


def test_the_docs_have_examples() -> None:
    """Guards the extraction itself: a broken parser would make every example "pass"."""
    by_file = {block.path.name for block in ALL_BLOCKS}
    pages = ("index.md", "joblib.md", "web.md", "notebooks.md", "cancellation.md")
    for page in (*pages, "large-data.md", "progress.md"):
        assert page in by_file, f"no python example found in docs/{page}"


@pytest.mark.timeout(BLOCK_TIMEOUT + 15)
@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.id for b in ALL_BLOCKS])
def test_docs_example(block: Block, tmp_path: Path) -> None:
    if block.skip:
        pytest.skip(f"marked {SKIP_MARK}")
    result = run_block(block, tmp_path)
    if result.returncode != 0:
        pytest.fail(
            f"the example at {block.id} failed (exit code {result.returncode})\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
            pytrace=False,
        )


def test_extraction(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```python\nx = 1\n```\n\n<!-- skip -->\n```python\ncluster()\n```\n"
        "```text\nnot code\n```\n\n!!! note\n    ```python\n    y = 2\n    ```\n"
    )
    blocks = extract_blocks(page)
    assert [(b.line, b.source, b.skip) for b in blocks] == [
        (4, "x = 1\n", False),
        (9, "cluster()\n", True),
        (17, "y = 2\n", False),
    ]


# -- claims of the prose -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_progress_callback_sees_every_batch_in_turn() -> None:
    """progress.md: the callback is awaited after each finished batch."""
    import asyncio

    from aioparallel import Parallel, ProgressEvent, delayed

    seen: list[tuple[str, int]] = []

    async def slow(event: ProgressEvent) -> None:
        seen.append(("start", event.done))
        await asyncio.sleep(0.05)
        seen.append(("end", event.done))

    calls = [delayed(abs)(i) for i in range(6)]
    await Parallel(n_jobs=2, backend="threads", batch_size=2, progress=slow)(calls)
    assert seen[-1] == ("end", 6), seen
    assert all(
        seen[i][0] == "start" and seen[i + 1] == ("end", seen[i][1]) for i in range(0, len(seen), 2)
    ), seen


@pytest.mark.asyncio
async def test_explicit_batch_size_keeps_every_worker_busy() -> None:
    """joblib.md: batch_size sets the calls per round trip, n_jobs the workers."""
    import threading
    import time

    from aioparallel import Parallel, delayed

    lock = threading.Lock()
    active = peak = 0

    def work(x: int) -> int:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.01)
        with lock:
            active -= 1
        return x

    calls = [delayed(work)(i) for i in range(16)]
    assert await Parallel(n_jobs=2, backend="threads", batch_size=4)(calls) == list(range(16))
    assert peak == 2
