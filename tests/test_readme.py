"""The README's set-up commands are the ones CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    test_command = ci[-1].strip()
    assert "pytest" in test_command
    assert test_command in readme


def test_readme_install_command_is_the_ci_install() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "bash .ci/install && .venv/bin/p2pfed sim" in readme
    assert "bash .ci/install" in (ROOT / ".ci" / "run").read_text()
