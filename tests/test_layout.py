"""The layering the README's Layout promises: configs/, optim/, model/, data/ and study/ import
nothing from training/ (which composes them), and study/'s analysis stays free of torch: it reads
run records on any machine (study/noise_scale.py, which measures gradients, is the one module
that needs it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

LOWER_LAYERS = ("configs", "optim", "model", "data", "study")


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("package", LOWER_LAYERS)
def test_lower_layers_import_nothing_from_training(package):
    offenders = {
        str(path.relative_to(REPO)): sorted(
            m for m in imported_modules(path) if m.split(".")[0] == "training"
        )
        for path in sorted((REPO / package).rglob("*.py"))
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_study_never_imports_torch():
    offenders = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "study").rglob("*.py"))
        if path.name != "noise_scale.py"
        and any(m.split(".")[0] == "torch" for m in imported_modules(path))
    ]
    assert not offenders
