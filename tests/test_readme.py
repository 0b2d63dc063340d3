"""The README's set-up commands are the ones CI runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from p2pfed.cli.main import main

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


def readme_commands() -> list[str]:
    """Every `p2pfed ...` command the README shows: lines of its code blocks and inline code spans."""
    readme = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():  # join continued lines
            line = line.split(" # ")[0].strip()
            for part in line.split("&&"):
                part = part.strip().removeprefix(".venv/bin/")
                if part.startswith("p2pfed "):
                    commands.append(part)
    for span in re.findall(r"`(?:\.venv/bin/)?(p2pfed [^`]+)`", readme):
        if len(span.split()) > 2:  # a bare `p2pfed join` in prose names the command, it is not one to run
            commands.append(" ".join(span.split()))
    # placeholders such as <your public IP> stand for an address
    return sorted({re.sub(r"<[^>]+>", "127.0.0.1", c) for c in commands})


def test_every_readme_command_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command's subcommand exists and its options and values are accepted (nothing is run). Files
    the commands name (mine.jsonl, grid.toml, ...) are created empty in a scratch directory."""
    monkeypatch.chdir(tmp_path)
    commands = readme_commands()
    assert len(commands) > 10
    failures = []
    for command in commands:
        args = shlex.split(command)[1:]
        if "--help" in args or "..." in args:
            continue
        for option, arg in zip(["", *args], args, strict=False):
            if option == "--adapter":  # an adapter directory a run wrote
                (tmp_path / arg).mkdir(parents=True, exist_ok=True)
            if arg.endswith((".toml", ".jsonl", ".json")) and "=" not in arg:
                (tmp_path / arg).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / arg).touch()
        ctx = main.make_context("p2pfed", list(args))
        name, sub, rest = main.resolve_command(ctx, ctx.protected_args + ctx.args)
        try:
            assert sub is not None
            sub.make_context(name or "", rest)
        except click.UsageError as exc:
            failures.append(f"{command}: {exc}")
    assert not failures, "README commands that do not parse:\n" + "\n".join(failures)
