"""OmegaConf resolvers used by ``conf/`` (registered on import of ``mmrec``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "conf"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("mmrec_root"):
        OmegaConf.register_new_resolver("mmrec_root", lambda: str(REPO_ROOT))
