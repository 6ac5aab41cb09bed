"""The layers of docs/ARCHITECTURE.md, checked: imports point down, and no module imports itself back.

Every ``import`` in the package's source is read (also those inside functions, which
would otherwise hide an upward dependency until the line runs).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Folder -> (installed name, rank). A module may import its own layer and any lower rank;
#: layers of equal rank (indexer, query) may not import each other.
LAYERS: dict[str, tuple[str, int]] = {
    "core": ("glueloc.core", 0),
    "vision": ("glueloc.vision", 1),
    "storage": ("glueloc.storage", 2),
    "migrations": ("glueloc.migrations", 3),
    "indexer": ("glueloc.indexer", 4),
    "query": ("glueloc.query", 4),
    "synthetic": ("glueloc.synthetic", 5),
    "glueloc": ("glueloc", 6),
}


def modules() -> dict[str, Path]:
    found = {}
    for folder, (package, _) in LAYERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def layer_of(module: str) -> str:
    """The folder a glueloc module comes from (the longest installed-name prefix)."""
    best = max((f for f, (p, _) in LAYERS.items() if module == p or module.startswith(p + ".")),
               key=lambda f: len(LAYERS[f][0]))
    return best


def imports(path: Path, known: set[str]) -> set[str]:
    """The glueloc modules ``path`` imports (``from a import b`` counts b when b is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "glueloc")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "glueloc":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {m: imports(p, set(found)) - {m} for m, p in found.items()}


def test_no_bare_top_level_imports_in_the_source() -> None:
    """Nothing imports ``query``, ``storage``, ... by their folder names."""
    bare = {"core", "vision", "storage", "migrations", "indexer", "query", "synthetic"}
    offenders = []
    for path in [*modules().values(), *ROOT.joinpath("tests").rglob("*.py"), *ROOT.joinpath("bench").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in bare]
    assert offenders == []


def test_imports_point_down() -> None:
    upward = []
    for module, targets in graph().items():
        source = layer_of(module)
        for target in targets:
            if target == "glueloc":  # the package itself: only its version, which lives in core
                continue
            dest = layer_of(target)
            if dest != source and LAYERS[dest][1] >= LAYERS[source][1]:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_import_cycles() -> None:
    edges = graph()
    cycles = []
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt in edges and nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_a_folder_name_is_not_a_package(tmp_path: Path) -> None:
    """``import query`` from the repository root fails with a message naming the real one."""
    beside = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}  # the checkout first on sys.path
    done = subprocess.run([sys.executable, "-c", "import query"], cwd=ROOT, env=beside, capture_output=True, text=True)
    assert done.returncode != 0 and "import glueloc.query, not query" in done.stderr
    done = subprocess.run([sys.executable, "-c", "import glueloc.query, glueloc.cli"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_package_folder_is_listed_for_the_wheel() -> None:
    """pyproject lists the packages by name; a folder missing there installs without its code."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert found == listed, f"missing from pyproject: {sorted(found - listed)}; listed but absent: {sorted(listed - found)}"
