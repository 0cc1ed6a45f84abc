"""OmegaConf resolvers used by ``conf/`` (registered on import of ``mmrec``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

#: the configs shipped inside the package (package data): the primary config folder of every entry point
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
#: environment variable naming the folder data/ and logs/ default to (else the working directory)
HOME_ENV = "MMREC_HOME"


def home() -> str:
    """Where ``data/`` and ``logs/`` go by default: ``$MMREC_HOME``, else the working directory
    (absolute: a run's recorded config stays valid from any other directory)."""
    return os.path.abspath(os.environ.get(HOME_ENV) or os.getcwd())


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become their string form (they are values)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: str(node) if isinstance(node, list) else node}


def command_line(module: str, drop: tuple[str, ...] = ()) -> str | None:
    """``python -m <module> <overrides>`` of the running Hydra command (its task overrides, those
    whose key is in ``drop`` left out), or None when not run through Hydra (e.g. from Python)."""
    import shlex

    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    overrides = [o for o in HydraConfig.get().overrides.task if o.split("=", 1)[0].lstrip("+~") not in drop]
    return " ".join([f"python -m {module}", *map(shlex.quote, overrides)])


def resumed_run(ckpt_path: str | None) -> Path | None:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/<name>.ckpt`` of an mmrec
    run, which has ``config.yaml``), or None: a resume continues in that folder, so its curves,
    checkpoints and the best score so far stay one run."""
    if not ckpt_path:
        return None
    path = Path(str(ckpt_path)).expanduser()
    run = path.parent.parent
    return run.resolve() if path.parent.name == "checkpoints" and (run / "config.yaml").is_file() else None


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("mmrec_home"):
        OmegaConf.register_new_resolver("mmrec_home", home)
    if not OmegaConf.has_resolver("mmrec_run_dir"):
        # hydra.run.dir: the resumed run's folder when ckpt_path is one of its checkpoints
        OmegaConf.register_new_resolver(
            "mmrec_run_dir", lambda ckpt_path, default: str(resumed_run(ckpt_path) or default))
