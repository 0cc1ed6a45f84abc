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


def imported_names(name: str) -> set[str]:
    """Every module name that module ``name`` imports itself, third-party ones included
    (relative imports resolved; ``from pkg import x`` counts ``pkg`` and ``pkg.x``)."""
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
    return found


def direct_imports(name: str) -> set[str]:
    """The mmrec modules that module ``name`` imports itself (relative imports resolved)."""
    return set().union(*(_with_parents(m) for m in imported_names(name))) - {name}


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


# -- the bundle is the only contract between the halves: serving knows no training code ------------

TRAINING = ("mmrec.train", "mmrec.lit", "mmrec.run", "mmrec.export")
TRAINING_LIBRARIES = ("lightning", "pytorch_lightning")


def training_imports(start: str) -> list[str]:
    """Chains from ``start`` to training code: an mmrec training module, or Lightning imported by
    any mmrec module that ``start`` reaches."""
    found = [" -> ".join(chain) for forbidden in TRAINING if (chain := import_chain(start, forbidden))]
    seen, queue = {start: [start]}, [start]
    while queue:
        current = queue.pop(0)
        for lib in sorted(n for n in imported_names(current) if n.split(".")[0] in TRAINING_LIBRARIES):
            found.append(" -> ".join(seen[current] + [lib]))
        for nxt in sorted(direct_imports(current)):
            if nxt not in seen:
                seen[nxt] = seen[current] + [nxt]
                queue.append(nxt)
    return found


def test_serving_imports_no_training_code():
    modules = _layer_modules("serving")
    assert "mmrec.serving.app" in modules and "mmrec.serving.recommender" in modules
    bad = {m: chains for m in modules if (chains := training_imports(m))}
    assert not bad, f"serving reaches training code: {bad}"


def test_the_serving_check_catches_training_code(tmp_path, monkeypatch):
    """Positive control: a serving module that imports the training module, or Lightning, or a
    module that does, is caught (directly and through a detour)."""
    probe = tmp_path / "probe.py"
    probe.write_text("import numpy\n\ndef f():\n    from mmrec.lit.module import RecModule\n")
    detour = tmp_path / "detour.py"
    detour.write_text("from mmrec.serving import bundle\nimport lightning.pytorch as pl\n")
    monkeypatch.setitem(MODULES, "mmrec.serving._probe", probe)
    monkeypatch.setitem(MODULES, "mmrec.utils._detour", detour)
    assert any("mmrec.lit" in c for c in training_imports("mmrec.serving._probe"))
    relay = tmp_path / "relay.py"
    relay.write_text("from mmrec.utils import _detour\n")
    monkeypatch.setitem(MODULES, "mmrec.serving._relay", relay)
    assert training_imports("mmrec.serving._relay") == ["mmrec.serving._relay -> mmrec.utils._detour -> lightning.pytorch"]


def test_importing_the_service_loads_no_training_code():
    """What the service process really loads (the static check can miss dynamic imports)."""
    import subprocess
    import sys

    code = ("import sys, mmrec.serving.app, mmrec.serving.recommender, mmrec.serve; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning') "
            "or m.startswith(('mmrec.train', 'mmrec.lit', 'mmrec.run', 'mmrec.export'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_utils_import_nothing_above_them():
    """``mmrec.utils`` is the bottom layer: helpers every layer may use, importing no other part of mmrec."""
    modules = _layer_modules("utils")
    bad = {m: sorted(i for i in direct_imports(m) if not i.startswith("mmrec.utils") and i != "mmrec")
           for m in modules}
    assert not any(bad.values()), {m: b for m, b in bad.items() if b}
