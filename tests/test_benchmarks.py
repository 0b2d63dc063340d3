"""Every benchmark command in benchmarks/ still starts: its `--help` runs (README figures come from them,
and a refactor that renames a config field must not leave one broken until someone measures again)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name != "__init__.py")


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_the_benchmark_shows_its_help(script: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # as their docstrings run them: PYTHONPATH=. python ...
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--help"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()
