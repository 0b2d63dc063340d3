"""Imports point down only: training and defence code never import trio or libp2p; network code never
imports torch or peft. Checked on the source (AST), so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "p2pfed/learn": {"trio", "libp2p", "p2pfed.net", "p2pfed.peer", "p2pfed.wire", "p2pfed.robust", "p2pfed.attacks"},
    "p2pfed/robust": {"trio", "libp2p", "torch", "peft", "p2pfed.net", "p2pfed.peer", "p2pfed.learn"},
    "p2pfed/attacks": {"trio", "libp2p", "torch", "peft", "p2pfed.net", "p2pfed.peer", "p2pfed.learn"},
    "p2pfed/wire": {"trio", "libp2p", "torch", "peft", "p2pfed.net", "p2pfed.peer", "p2pfed.learn"},
    "p2pfed/net": {"torch", "peft", "transformers", "p2pfed.learn", "p2pfed.peer", "p2pfed.robust"},
    "p2pfed/peer": {"libp2p", "p2pfed.cli", "p2pfed.sims"},
}
BOTTOM = ["p2pfed/config.py", "p2pfed/errors.py", "p2pfed/seeds.py", "p2pfed/types.py"]


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def violations(files: list[Path], forbidden: set[str]) -> list[str]:
    found = []
    for path in files:
        for name in imported_modules(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                found.append(f"{shown} imports {name}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_point_down(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package} has no modules"
    assert violations(files, FORBIDDEN[package]) == []


def test_bottom_layer_imports_nothing_above_it() -> None:
    above = {"trio", "libp2p", "torch", "peft", "p2pfed.net", "p2pfed.peer", "p2pfed.learn", "p2pfed.robust"}
    assert violations([ROOT / f for f in BOTTOM], above) == []


def test_only_the_net_package_imports_libp2p() -> None:
    outside = [p for p in (ROOT / "p2pfed").rglob("*.py") if "p2pfed/net" not in p.as_posix()]
    outside += list((ROOT / "sims").rglob("*.py"))
    assert violations(outside, {"libp2p"}) == []


def test_the_checker_sees_a_lazy_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import trio.lowlevel\n    from torch import nn\n")
    assert len(violations([bad], {"trio", "torch"})) == 2
