"""The layers import downwards only: ``models`` and ``data`` know nothing of training or
inference, inference nothing of training, and the run folder module sits below both.

Every import statement counts, module level or inside a function: a deferred import is still
a dependency (the cycle this test was written against hid inside functions)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import samtune

PACKAGE = Path(samtune.__file__).parent

#: importer -> the parts of samtune it must never import
FORBIDDEN = {
    "samtune.models": {"samtune.train", "samtune.infer", "samtune.data", "samtune.runs",
                       "samtune.config", "samtune.cli", "samtune.demo", "samtune.metrics"},
    "samtune.data": {"samtune.train", "samtune.infer", "samtune.runs", "samtune.cli",
                     "samtune.demo"},
    "samtune.infer": {"samtune.train", "samtune.cli", "samtune.demo"},
    "samtune.runs": {"samtune.train", "samtune.infer", "samtune.cli", "samtune.demo"},
    "samtune.metrics": {"samtune.train", "samtune.infer", "samtune.runs", "samtune.models"},
    "samtune.config": {"samtune.models", "samtune.data", "samtune.train", "samtune.infer",
                       "samtune.runs", "samtune.prompts"},
    "samtune.schedules": {"samtune.models", "samtune.data", "samtune.train", "samtune.infer",
                          "samtune.runs", "samtune.config", "samtune.prompts"},
    "samtune.prompts": {"samtune.models", "samtune.data", "samtune.train", "samtune.infer",
                        "samtune.runs", "samtune.cli", "samtune.demo"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every samtune module an import statement in ``path`` names (absolute or relative)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "samtune" or m.startswith("samtune.")}


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        for layer, banned in FORBIDDEN.items():
            if not within(name, layer):
                continue
            for target in sorted(imported(path)):
                hit = next((b for b in banned if within(target, b)), None)
                if hit is not None:
                    out.append(f"{name} imports {target} ({layer} must not import {hit})")
    return out


def test_layers_import_downwards_only():
    assert violations() == []


def test_the_scan_sees_deferred_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself: an import inside a function and a relative import are found."""
    fake = tmp_path / "samtune"
    (fake / "models").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "models" / "__init__.py").write_text("")
    (fake / "models" / "bad.py").write_text(
        "def f():\n    from samtune.train.export import x\n\nfrom ..infer import predictor\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    found = violations()
    assert any("samtune.models.bad imports samtune.train.export" in v for v in found)
    assert any("samtune.models.bad imports samtune.infer" in v for v in found)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_every_layer_exists(layer):
    """A renamed package would make its rule vacuous."""
    assert (PACKAGE / layer.split(".")[1]).exists() or (PACKAGE / f"{layer.split('.')[1]}.py").exists()
