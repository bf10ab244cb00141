"""The package's import graph, read from the source with ``ast``: imports run one way (from the
command line down to cameras), and no module imports another module's private name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "radfield"

LAYERS = {
    "errors": 0, "io": 0, "rotations": 0,  # rotations: quaternion maths, imports nothing of radfield
    "native": 0,  # compiling and loading the C kernels
    "lens": 0,  # lens distortion: pure tensor maths
    "cameras": 1, "poses": 1,  # poses: SE(3) maths, corrections, pose distributions (on cameras)
    "geometry": 2, "data": 2,  # data readers sit beside the pipeline: they need cameras only
    "samplers": 3,
    "fields": 4,
    "rendering": 5,
    "losses": 6,
    "config": 7,
    "models": 8,
    "training": 9, "evaluation": 9,
    "export": 10, "viewer": 10,
    "cli": 11, "__main__": 11, "__init__": 11,
}
"""Rank of each top-level module or sub-package of ``radfield``: a module may import from its own
rank or below. Training and evaluation are peers (training logs PSNR with evaluation.metrics)."""

KNOWN_UPWARD: set[tuple[str, str]] = set()
"""(module, imported module) pairs allowed to go up a layer: none."""


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
        out.append((".".join(parts), ast.parse(file.read_text(encoding="utf-8"))))
    return out


def _imports(tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """``(module, imported names, line)`` of every radfield import, lazy ones included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "radfield":
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names
                      if a.name.split(".")[0] == "radfield"]
    return found


def _rank(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else LAYERS["__init__"]


def test_every_module_has_a_layer():
    for module, _ in _modules():
        parts = module.split(".")
        assert len(parts) == 1 or parts[1] in LAYERS, f"{module}: add it to LAYERS"


def test_no_module_imports_a_private_name():
    bad = [f"{module}:{line}: from {source} import {name}"
           for module, tree in _modules() for source, names, line in _imports(tree)
           for name in names if name.startswith("_")]
    assert bad == []


def test_imports_run_one_way():
    bad = [f"{module}:{line} (layer {_rank(module)}) imports {source} (layer {_rank(source)})"
           for module, tree in _modules() for source, _, line in _imports(tree)
           if _rank(source) > _rank(module) and (module, source) not in KNOWN_UPWARD]
    assert bad == []


@pytest.mark.parametrize("lower", ["cameras", "geometry", "data", "samplers", "fields",
                                   "rendering", "losses"])
def test_lower_layers_never_import_training_or_evaluation(lower):
    for module, tree in _modules():
        if module.split(".")[1:2] == [lower]:
            for source, _, line in _imports(tree):
                assert source.split(".")[1:2] not in (["training"], ["evaluation"], ["export"],
                                                      ["models"], ["cli"]), \
                    f"{module}:{line} imports {source}"


def test_the_checks_see_a_violation():
    """The parser finds both kinds of bad import in a hand-written module."""
    tree = ast.parse("def f():\n    from radfield.evaluation.metrics import _filter_valid\n")
    [(source, names, line)] = _imports(tree)
    assert (source, names, line) == ("radfield.evaluation.metrics", ["_filter_valid"], 2)
    assert _rank(source) > _rank("radfield.losses.photometric")
