"""Serve a bundle over HTTP: ``python -m mmrec.serve bundle=<dir> port=8000``.

Checks the bundle once before starting (a missing, incomplete or tampered bundle: one line
saying so, exit status 2), then runs the FastAPI app (:mod:`mmrec.serving.app`) under
uvicorn; with ``workers`` > 1, that many worker processes forked after the imports
(:func:`prefork`), each loading the bundle memory-mapped. The page is at
``http://<host>:<port>/``, the API documentation at ``/docs``.
"""

from __future__ import annotations

import gc
import json
import logging
import os

import hydra
from omegaconf import DictConfig, OmegaConf

from mmrec.serving.bundle import load_bundle
from mmrec.config_check import check_config
from mmrec.utils import cli
from mmrec.utils.errors import hydra_user_errors

log = logging.getLogger(__name__)
ENV = "MMREC_SERVE_CONFIG"


_PRELOADED = None  # the Recommender loaded by the parent before forking workers (shared copy-on-write)


def app_from_env():
    """The app of the config in ``$MMREC_SERVE_CONFIG`` (how each uvicorn worker builds it)."""
    import torch
    from hydra.utils import instantiate

    from mmrec.serving.app import create_app
    from mmrec.serving.recommender import recommender_from_config

    cfg = OmegaConf.create(json.loads(os.environ[ENV]))
    torch.set_num_threads(int(cfg.threads))
    worker_cfg = OmegaConf.merge(cfg, {"verify": False})  # the parent verified every checksum
    load = (lambda: _PRELOADED) if _PRELOADED is not None else (lambda: recommender_from_config(worker_cfg))
    # the recommender's own limits node: the app bounds bodies by it before the bundle is loaded
    return create_app(load, instantiate(cfg.recommender.limits))


def serve(cfg: DictConfig) -> None:
    load_bundle(cfg.bundle, verify=cfg.verify)  # fail here, with a message, not in every worker
    os.environ[ENV] = json.dumps(OmegaConf.to_container(cfg, resolve=True))
    print(f"serving {cfg.bundle} on http://{cfg.host}:{cfg.port}/ ({cfg.workers} worker(s); API docs at /docs)",
          flush=True)
    if int(cfg.workers) <= 1:
        import uvicorn

        uvicorn.run(app_from_env, factory=True, host=cfg.host, port=int(cfg.port), log_level=str(cfg.log_level))
    else:
        prefork(cfg)


def prefork(cfg: DictConfig) -> None:
    """Run ``cfg.workers`` uvicorn servers on one listening socket, forked after the imports.

    uvicorn's own ``workers`` spawns fresh interpreters, each importing torch, FastAPI and
    mmrec again (~350 MB of private memory each here); forked from a parent that has imported
    them and built the recommender (id maps, titles, index), the workers share those pages
    copy-on-write, and the bundle's vectors through the page cache (memory-mapped). The parent
    runs torch with ``threads`` threads (1 by default), so no thread pool is forked. The parent forwards SIGINT / SIGTERM and exits when
    the workers have.
    """
    import signal
    import socket

    import uvicorn

    import torch

    import mmrec.serving.app  # noqa: F401  (imported once, shared by the forked workers)
    from mmrec.serving.recommender import recommender_from_config

    global _PRELOADED
    # The recommender (id maps, titles, index) is built once here and inherited by the workers;
    # with one torch thread no thread pool exists yet, so forking is safe.
    torch.set_num_threads(int(cfg.threads))
    _PRELOADED = recommender_from_config(OmegaConf.merge(cfg, {"verify": False}))
    # Objects alive now are never collected in the workers: their collections would write to
    # every object's header and copy the shared pages into each worker.
    gc.collect()
    gc.freeze()

    sock = socket.socket(socket.AF_INET6 if ":" in str(cfg.host) else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((str(cfg.host), int(cfg.port)))
    sock.listen(2048)
    sock.set_inheritable(True)
    children = []
    for _ in range(int(cfg.workers)):
        pid = os.fork()
        if pid == 0:  # a worker
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            config = uvicorn.Config(app_from_env, factory=True, log_level=str(cfg.log_level))
            uvicorn.Server(config).run(sockets=[sock])
            os._exit(0)
        children.append(pid)

    def stop(signum, frame):
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        while True:
            try:
                os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
    sock.close()


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    with hydra_user_errors():
        check_config(cfg)  # value ranges (recommender settings, limits): one line, before the bundle loads
        serve(cfg)


if __name__ == "__main__":
    cli.run(main, "serve")  # a mistyped key or choice: one error line (mmrec.utils.cli)
