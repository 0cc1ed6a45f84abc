"""Export a finished run as a serving bundle: ``python -m mmrec.export run=<run folder>``.

Prints where the bundle was written. The logic is :func:`mmrec.serving.export.export_run`;
this is the thin Hydra wrapper.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from mmrec.serving.bundle import BundleError

log = logging.getLogger(__name__)


def export(cfg: DictConfig):
    from mmrec.serving.export import export_run

    index = OmegaConf.to_container(cfg.index, resolve=True) if cfg.get("index") else None
    return export_run(cfg.run, cfg.out, force=cfg.force, index=index, group_column=cfg.group_column,
                      verify=cfg.verify)


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        out = export(cfg)
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"bundle written to {out}")


if __name__ == "__main__":
    main()
