"""Without Ray installed, ``backend="ray"`` is a ValueError naming the extra to install, when
the backend is picked (not at the first call)."""

from __future__ import annotations

import subprocess
import sys


def test_without_ray_the_error_names_the_extra() -> None:
    script = (
        "import sys; sys.modules['ray'] = None  # as if it were not installed\n"
        "from aioparallel import Parallel, parallel_config\n"
        "for pick in (lambda: Parallel(backend='ray'), lambda: parallel_config(backend='ray')):\n"
        "    try:\n"
        "        pick()\n"
        "    except ValueError as exc:\n"
        "        print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout + done.stderr
    for line in lines:
        assert "ray is not installed" in line
        assert "pip install 'aioparallel[ray]'" in line


def test_importing_aioparallel_does_not_import_ray() -> None:
    script = "import aioparallel, sys; aioparallel.Parallel; print('ray' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"
