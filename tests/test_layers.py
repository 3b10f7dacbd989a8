"""The package layering of ``espnet_ext`` (its docstring lists the layers).

A package may import only packages that come before it in :data:`LAYERS`, so the
paper's maths (``importance``) never reaches up into model loading, batching or tasks.
Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import espnet_ext

LAYERS = ["utils", "data", "convert", "models", "importance", "optim", "train", "tasks",
          "inference", "warmup", "analysis", "eval", "bin"]
ROOT = Path(espnet_ext.__file__).parent


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name


def test_every_package_is_a_listed_layer():
    packages = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())
    assert packages == sorted(LAYERS)


def test_the_package_docstring_lists_the_layers_in_order():
    doc = espnet_ext.__doc__
    positions = [doc.index(f"``{name}``") for name in LAYERS]
    assert positions == sorted(positions)


@pytest.mark.parametrize("layer", LAYERS)
def test_no_layer_imports_a_higher_one(layer):
    rank = {name: i for i, name in enumerate(LAYERS)}
    bad = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for lineno, module in _imports(path):
            parts = module.split(".")
            if parts[0] != "espnet_ext" or len(parts) < 2 or parts[1] not in rank:
                continue
            if rank[parts[1]] > rank[layer]:
                bad.append(f"{path.relative_to(ROOT.parent)}:{lineno} imports {module}")
    assert not bad, "\n".join(bad)
