"""Export a finished run as a serving bundle: ``python -m mmrec.export run=<run folder>``.

Prints where the bundle was written. The logic is :func:`mmrec.serving.export.export_run`;
this is the thin Hydra wrapper.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from mmrec.utils.errors import hydra_user_errors

log = logging.getLogger(__name__)


def export(cfg: DictConfig):
    from mmrec.serving.export import export_run

    index = OmegaConf.to_container(cfg.index, resolve=True) if cfg.get("index") else None
    return export_run(cfg.run, cfg.out, force=cfg.force, index=index, group_column=cfg.group_column,
                      verify=cfg.verify)


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    with hydra_user_errors():
        out = export(cfg)
    print(f"bundle written to {out}")


if __name__ == "__main__":
    main()
