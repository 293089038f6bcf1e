"""docs/PROTOCOL.md cites code by module and name, never by line number.

Line numbers rot with every edit (the last split of the big modules made most of them wrong
without anyone noticing); a name either still exists where the doc says or this test says
which one moved. The doc writes a reference as a backticked path followed by backticked
names of the same module: "`common/protocol/connection.py` `Connection._dispatch`", or a
list, "`common/protocol/auth.py` `METHODS`, `ServerAuth.reject`".
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "PROTOCOL.md"

#: ``name.py:123`` or ``name.py:12-34`` (or a man page's ``qshd.8:88``), and the bare
#: continuation ``:123`` written after one.
LINE_REFERENCE = re.compile(r"[\w/.-]*[A-Za-z_]\.(?:py|[1-8]):\d+|`:\d+(?:-\d+)?`")
#: A backticked file name or repository path ending in .py.
PATH = re.compile(r"`((?:[\w.-]+/)*[\w-]+\.py)`")
#: A repository path followed by one name, or a comma-separated list of names, of that module.
_NAME = r"`[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*`"
REFERENCE = re.compile(rf"`((?:[\w.-]+/)+[\w-]+\.py)`\s+({_NAME}(?:,\s+{_NAME})*)")


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _references(text: str) -> list[tuple[int, str, str]]:
    """(line, path, name) for every name the doc places in a module."""
    found = []
    for m in REFERENCE.finditer(text):  # a reference may wrap onto the next line
        number = text.count("\n", 0, m.start()) + 1
        for name in re.findall(r"`([^`]+)`", m.group(2)):
            found.append((number, m.group(1), name))
    return found


@functools.cache
def _tree(path: str) -> ast.Module:
    return ast.parse((ROOT / path).read_text(encoding="utf-8"), path)


def _names(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    """What a module or class body defines: def, class, ``NAME = ...`` and ``NAME: ...``."""
    names: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


def _defined(path: str, name: str) -> bool:
    """``name`` (``function``, ``CONSTANT``, ``Class`` or ``Class.method``) is defined in the
    module at ``path``, each part at its own level (a method inside its class)."""
    body: list[ast.stmt] = _tree(path).body
    for part in name.split("."):
        node = _names(body).get(part)
        if node is None:
            return False
        body = node.body if isinstance(node, ast.ClassDef) else []
    return True


def test_no_line_number_references() -> None:
    stale = [f"line {n}: {m.group(0)}"
             for n, line in enumerate(_doc().splitlines(), 1)
             for m in LINE_REFERENCE.finditer(line)]
    assert not stale, f"{len(stale)} file:line references, first: {stale[:5]}"


def test_cited_paths_exist() -> None:
    tracked = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py")
               if ".git" not in p.parts}
    basenames = {p.rsplit("/", 1)[-1] for p in tracked}
    cited = {m.group(1) for m in PATH.finditer(_doc())}
    assert len(cited) > 30  # the pattern still finds the doc's paths
    missing = sorted(p for p in cited
                     if (p not in tracked if "/" in p else p not in basenames))
    assert not missing, f"the doc cites .py files that do not exist: {missing}"


def test_cited_names_are_defined_where_cited() -> None:
    references = _references(_doc())
    assert len(references) > 150  # the pattern still finds the doc's references
    wrong = [f"line {n}: `{path}` `{name}`" for n, path, name in references
             if not (ROOT / path).is_file() or not _defined(path, name)]
    assert not wrong, f"names not defined in the module the doc names: {wrong}"


def test_reference_checker_checks() -> None:
    """The two checks above can fail: a moved name and a method of the wrong class."""
    assert _defined("common/protocol/connection.py", "Connection._dispatch")
    assert _defined("common/protocol/auth.py", "METHODS")
    assert not _defined("common/protocol/handshake.py", "ConnectRequest.decode")
    assert not _defined("common/protocol/connection.py", "Connection.note_time_")
    assert not _defined("common/protocol/auth.py", "ClientAuth.reject")
    text = "see `common/protocol/auth.py` `METHODS`,\n`ServerAuth.reject` and `x.py:12`"
    assert _references(text) == [(1, "common/protocol/auth.py", "METHODS"),
                                 (1, "common/protocol/auth.py", "ServerAuth.reject")]
    assert LINE_REFERENCE.search(text)
    assert LINE_REFERENCE.search("(`man/qshd.8:88-89`)")
    assert not LINE_REFERENCE.search("127.0.0.2:80")
