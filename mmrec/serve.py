"""Serve a bundle over HTTP: ``python -m mmrec.serve bundle=<dir> port=8000``.

Checks the bundle once before starting (a missing, incomplete or tampered bundle: one line
saying so, exit status 2), then runs the FastAPI app (:mod:`mmrec.serving.app`) under
uvicorn with ``workers`` processes; each loads the bundle memory-mapped. The page is at
``http://<host>:<port>/``, the API documentation at ``/docs``.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from mmrec.serving.bundle import BundleError, load_bundle

log = logging.getLogger(__name__)
ENV = "MMREC_SERVE_CONFIG"


def app_from_env():
    """The app of the config in ``$MMREC_SERVE_CONFIG`` (how each uvicorn worker builds it)."""
    import torch

    from mmrec.serving.app import Limits, create_app
    from mmrec.serving.recommender import recommender_from_config

    cfg = OmegaConf.create(json.loads(os.environ[ENV]))
    torch.set_num_threads(int(cfg.threads))
    worker_cfg = OmegaConf.merge(cfg, {"verify": False})  # the parent verified every checksum
    return create_app(lambda: recommender_from_config(worker_cfg), Limits(**cfg.limits))


def serve(cfg: DictConfig) -> None:
    load_bundle(cfg.bundle, verify=cfg.verify)  # fail here, with a message, not in every worker
    import uvicorn

    os.environ[ENV] = json.dumps(OmegaConf.to_container(cfg, resolve=True))
    print(f"serving {cfg.bundle} on http://{cfg.host}:{cfg.port}/ ({cfg.workers} worker(s); API docs at /docs)",
          flush=True)
    uvicorn.run("mmrec.serve:app_from_env", factory=True, host=cfg.host, port=int(cfg.port),
                workers=int(cfg.workers), log_level=str(cfg.log_level))


@hydra.main(version_base="1.3", config_path="../conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    try:
        serve(cfg)
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
