"""Imports run one way (DESIGN.md, "Rooms"): checked on the source, not by importing it.

* ``mmrec.data`` (sources, preparation stages, the prepared-dataset format) may import
  ``mmrec.features``; ``mmrec.features`` (modality encoders, batched extraction, the LMDB
  feature store) must not import ``mmrec.data``.
* The model side (``mmrec.graph``, ``mmrec.sampling``, ``mmrec.evaluation``, ``mmrec.models``)
  uses the core types (``mmrec.core``), never ``mmrec.data``.

Every import statement counts, also one inside a function, and mmrec-internal imports are
followed transitively, so a detour through a third module is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mmrec

PACKAGE = Path(mmrec.__file__).resolve().parent
FORBIDDEN = "mmrec.data"
# layer -> files whose imports are checked (a package folder or one module)
MUST_NOT_IMPORT_DATA = ["features", "graph", "sampling.py", "evaluation", "models"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _with_parents(name: str) -> set[str]:
    """``a.b.c`` -> the modules that importing it executes: ``a``, ``a.b``, ``a.b.c`` (those that exist)."""
    parts = name.split(".")
    return {".".join(parts[:k]) for k in range(1, len(parts) + 1)} & MODULES.keys()


def direct_imports(name: str) -> set[str]:
    """The mmrec modules that module ``name`` imports itself (relative imports resolved)."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return set().union(*(_with_parents(m) for m in found)) - {name}


def import_chain(start: str, forbidden: str) -> list[str] | None:
    """Shortest chain of mmrec imports from ``start`` to ``forbidden`` (or a module inside it)."""
    seen, queue = {start: [start]}, [start]
    while queue:
        current = queue.pop(0)
        for nxt in sorted(direct_imports(current)):
            if nxt in seen:
                continue
            seen[nxt] = seen[current] + [nxt]
            if nxt == forbidden or nxt.startswith(forbidden + "."):
                return seen[nxt]
            queue.append(nxt)
    return None


def _layer_modules(layer: str) -> list[str]:
    root = PACKAGE / layer
    files = [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))
    return [_module_name(p) for p in files]


@pytest.mark.parametrize("layer", MUST_NOT_IMPORT_DATA)
def test_layer_does_not_import_the_data_layer(layer):
    modules = _layer_modules(layer)
    assert modules, f"no modules under mmrec/{layer}"
    direct = {m: sorted(i for i in direct_imports(m) if i == FORBIDDEN or i.startswith(FORBIDDEN + "."))
              for m in modules}
    assert not any(direct.values()), f"mmrec/{layer} imports {FORBIDDEN}: { {m: d for m, d in direct.items() if d} }"
    chains = {m: import_chain(m, FORBIDDEN) for m in modules}
    bad = {m: " -> ".join(c) for m, c in chains.items() if c}
    assert not bad, f"mmrec/{layer} reaches {FORBIDDEN} through other modules: {bad}"


def test_the_checker_sees_the_allowed_direction():
    """The data layer's feature stage imports features (the allowed arrow), lazily or not."""
    assert "mmrec.features.extract" in direct_imports("mmrec.data.features_stage")
    assert import_chain("mmrec.data.demo", "mmrec.features") is not None
    assert import_chain("mmrec.prepare", "mmrec.data.features_stage") is not None  # import inside a function
