"""Sessions: tests, versions (the version-sensitive tests on every CPython we claim), portable
(the macOS paths), heavy (load/soak), ray (the Ray backend, with Ray installed), lint,
typecheck, docs, bench, compat (joblib's own tests)."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "portable", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *session.posargs)


#: The tests where Python versions differ (exception groups, ``Task.cancelling``,
#: ``asyncio.timeout``, the process protocol): .ci/run runs them on every other CPython.
VERSION_TESTS = Path("tests/version_tests.txt").read_text().split()


@nox.session(python=["3.10", "3.11", "3.12", "3.13"])
def versions(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("mypy", "--python-version", str(session.python))
    session.run("pytest", "-q", *VERSION_TESTS, *session.posargs)


#: The tests of the process backend's workers, pipes, slot, crashes, cancellation, parent
#: death and temp folders: what the Linux-only facilities change (.ci/run runs the same list).
PORTABLE_TESTS = Path("tests/portable_tests.txt").read_text().split()


@nox.session
def portable(session: nox.Session) -> None:
    """The process backend on the paths macOS takes: AIOPARALLEL_PORTABLE=1 switches off
    memfd, pidfd, waitid, the parent-death signal, /dev/shm and pipe resizing
    (docs/platforms.md)."""
    session.install("-e", ".[test]")
    session.run(
        "pytest", "-q", *PORTABLE_TESTS, *session.posargs, env={"AIOPARALLEL_PORTABLE": "1"}
    )


@nox.session
def heavy(session: nox.Session) -> None:
    """The reliability suite's long variants (load, soak)."""
    session.install("-e", ".[test]")
    session.run(
        "pytest", "-q", "-m", "heavy", "--timeout=1800", "tests/reliability", *session.posargs
    )


#: The Ray backend's tests: the only place Ray (a large wheel) is installed.
RAY_TESTS = ("tests/test_ray.py", "tests/test_ray_missing.py")


@nox.session
def ray(session: nox.Session) -> None:
    """backend="ray" on a real local Ray (started once for the session, ~4 s)."""
    session.install("-e", ".[test,ray]")
    session.run("pytest", "-q", *RAY_TESTS, *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    paths = ("aioparallel", "tests", "benchmarks", "examples", "compat")
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against peers; pass --quick for a one-minute run."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "aioparallel", "bench", *session.posargs)


@nox.session
def compat(session: nox.Session) -> None:
    """joblib 1.6.0's own test_parallel.py (the installed copy) run against aioparallel
    through compat/shim.py; prints "N of M applicable passed"."""
    session.install(".[test]", "joblib==1.6.0")
    session.run(
        "python", "-m", "pytest", "-c", "compat/pytest.ini", "--rootdir=compat", "-q",
        "--pyargs", "joblib.test.test_parallel", "--tb=line", "-rfE", "-p", "no:warnings",
        *session.posargs,
    )  # fmt: skip
