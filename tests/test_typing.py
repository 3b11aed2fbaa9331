"""The public types hold under ``mypy --strict`` (the checks themselves are in typing_check.py)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("mypy")

ROOT = Path(__file__).resolve().parent.parent
#: Outside the checkout, and kept between runs so a warm check takes about a second.
CACHE = Path(tempfile.gettempdir()) / "mypy-cache-aioparallel-tests"


def mypy(*paths: Path) -> subprocess.CompletedProcess[str]:
    """mypy with the project's configuration (strict), reporting errors in ``paths`` only."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--cache-dir",
            str(CACHE),
            "--follow-imports=silent",  # aioparallel's own errors belong to `nox -s typecheck`
            *map(str, paths),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_public_types() -> None:
    result = mypy(ROOT / "tests" / "typing_check.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


def test_the_check_can_fail(tmp_path: Path) -> None:
    """A control: a wrong expected type and a needless ignore are both reported."""
    source = tmp_path / "wrong.py"
    source.write_text(
        "from typing_extensions import assert_type\n"
        "from aioparallel import Parallel, delayed\n"
        "def f(x: int) -> int:\n"
        "    return x\n"
        "async def main() -> None:\n"
        "    assert_type(await Parallel()(delayed(f)(x) for x in [1]), list[str])\n"
        "    delayed(f)(1)  # type: ignore[arg-type]\n"
    )
    result = mypy(source)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "wrong.py:6: error: Expression is of type" in result.stdout, result.stdout
    assert "wrong.py:7: error: Unused" in result.stdout, result.stdout


def test_overload_keywords_match_the_signature() -> None:
    """Parallel's overloads take its keywords as one TypedDict: it must list every keyword
    after ``return_as``, with the implementation's annotation, so a parameter added to one
    and not the other fails here (mypy alone would not see a keyword the TypedDict lacks)."""
    import inspect

    from aioparallel import Parallel
    from aioparallel._settings import ParallelKeywords

    signature = inspect.signature(Parallel.__init__)
    keywords = {
        name: param.annotation
        for name, param in signature.parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY and name != "return_as"
    }
    typed = {name: ref.__forward_arg__ for name, ref in ParallelKeywords.__annotations__.items()}
    assert typed == keywords
