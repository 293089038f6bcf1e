"""The shape of common/: imports run one way, from the adapter down to the ground.

A newcomer reads common/ as layers (docs: README "Layout"): the ground (errors, wire),
crypto, accounts, the sans-IO protocol, the channel kinds over it, and the asyncio adapter
on top. A module may import only from its own layer or the ones below; a back-reference
is a parameter, a callback or a ``typing.Protocol`` instead. This test keeps it so.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

COMMON = Path(__file__).resolve().parents[1] / "common"
#: Lowest first. A module's layer is its first component under common/.
LAYERS = ("value_record", "errors", "cli", "wire", "crypto", "accounts", "protocol", "channels",
          "aio", "forward", "transfer", "client")


def _layer(module: str) -> int:
    parts = module.split(".")
    assert parts[0] == "common", module
    if len(parts) == 1:
        return -1  # "from common import x": judged by x below
    return LAYERS.index(parts[1])


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "common":
                found.extend(f"common.{alias.name}" for alias in node.names)
            elif node.module.startswith("common."):
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(a.name for a in node.names if a.name.startswith("common."))
    return found


MODULES = sorted(p for p in COMMON.rglob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(COMMON)))
def test_imports_run_one_way(path: Path) -> None:
    relative = path.relative_to(COMMON).with_suffix("")
    own = LAYERS.index(relative.parts[0])
    upward = [name for name in _imports(path) if _layer(name) > own]
    assert not upward, f"{relative} (layer {LAYERS[own]}) imports from above: {upward}"


def test_no_relative_imports_hide_the_layers() -> None:
    relative = [str(p.relative_to(COMMON)) for p in MODULES
                if any(isinstance(n, ast.ImportFrom) and n.level
                       for n in ast.walk(ast.parse(p.read_text())))]
    assert not relative, f"use absolute common.* imports in {relative}"
