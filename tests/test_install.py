"""Every import of the package is declared in pyproject.toml (a static check: the modules are
parsed, not imported, so an optional path that a test never reaches is checked too)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(*extras: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    return {_canonical(re.split(r"[\s<>=!~\[;]", spec, maxsplit=1)[0]) for spec in specs}


def _imported(folder: Path) -> dict[str, str]:
    """Top-level module -> first file:line importing it (absolute imports only)."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                found.setdefault(name.split(".")[0], f"{where}:{node.lineno}")
    return found


def _undeclared(folder: Path, declared: set[str], local: set[str]) -> list[str]:
    owners = importlib.metadata.packages_distributions()
    problems = []
    for module, where in sorted(_imported(folder).items()):
        if module in sys.stdlib_module_names or module in local:
            continue
        dists = owners.get(module)
        if not dists:
            problems.append(f"{where}: imports {module!r}, which no installed distribution provides")
        elif not any(_canonical(d) in declared for d in dists):
            problems.append(f"{where}: imports {module!r} from {dists}, not declared in pyproject.toml")
    return problems


def test_package_imports_are_declared_dependencies():
    assert _undeclared(ROOT / "mmrec", _declared(), {"mmrec"}) == []


def test_test_imports_are_declared_with_the_dev_extra():
    local = {"mmrec", "conftest", "httpserver"} | {p.stem for p in (ROOT / "tests").glob("*.py")}
    assert _undeclared(ROOT / "tests", _declared("dev"), local) == []


def test_the_check_finds_an_undeclared_import(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    import yaml\n")
    problems = _undeclared(tmp_path, {"torch"}, set())
    assert len(problems) == 1 and "imports 'yaml' from ['PyYAML']" in problems[0]


@pytest.mark.parametrize("command", [["jupyter", "nbconvert", "--version"]])
def test_the_readme_notebook_command_is_installed(command):
    """README: `jupyter nbconvert --to notebook --execute notebooks/results.ipynb`."""
    import subprocess

    exe = Path(sys.executable).parent / command[0]
    proc = subprocess.run([str(exe), *command[1:]], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_the_wheel_holds_the_configs_and_trains_from_any_folder(tmp_path):
    """``pip install <wheel>`` (not ``-e``) into a fresh venv, then ``python -m mmrec.train`` from
    an empty folder: the configs come from the installed package, data/ and logs/ go into the
    working directory. The venv reaches the dependencies already installed for the tests through
    a path file (so no download); mmrec itself is only the wheel's copy (checked)."""
    import subprocess
    import sysconfig
    import zipfile

    import shutil

    source = tmp_path / "source"  # a copy: the build writes build/ and *.egg-info next to the sources
    shutil.copytree(ROOT / "mmrec", source / "mmrec", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("mmrec-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {p.relative_to(ROOT / "mmrec").as_posix() for p in (ROOT / "mmrec" / "conf").rglob("*.yaml")}
    assert shipped and shipped <= {n.removeprefix("mmrec/") for n in names}  # every config is package data
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("PYTHONPATH", "MMREC_HOME")}
    where = subprocess.run([str(python), "-c", "import mmrec; print(mmrec.__file__)"], cwd=work, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert where.startswith(purelib), where  # the wheel's copy, not the checkout
    proc = subprocess.run([str(python), "-m", "mmrec.train", "trainer.max_epochs=1", "logger=none",
                           "dataset.source.num_users=200", "dataset.source.num_items=150"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "data" / "demo-s0" / "manifest.json").is_file()
    (run,) = (work / "logs" / "train" / "runs").iterdir()
    assert (run / "metrics.json").is_file()
