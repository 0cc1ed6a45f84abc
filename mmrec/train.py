"""Train and evaluate a recommender: ``python -m mmrec.train model=lightgcn dataset=demo``.

``train(cfg)`` is a plain function (tests call it with a composed config); ``main()`` is the
thin Hydra wrapper that returns the validation metric sweepers optimise.

Protocol: early stopping and checkpoint selection watch ``cfg.optimized_metric`` (a
validation metric); after training the best checkpoint is evaluated once on validation
(for the record) and once on test. ``metrics.json`` and the resolved ``config.yaml`` land
in the run folder.
"""

from __future__ import annotations

import json
import logging
import re
import resource
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from mmrec.evaluation.evaluator import Evaluator
from mmrec.lit.callbacks import EpochStats
from mmrec.lit.datamodule import RecDataModule
from mmrec.lit.module import RecModule
from mmrec.utils.config_check import ConfigError, check_config
from mmrec.utils.logging import finish_wandb, metrics_table
from mmrec.utils.memory import keep_freed_memory

log = logging.getLogger(__name__)


def _instantiate_dict(node: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a dict-of-configs group (callbacks, logger)."""
    if not node:
        return []
    return [instantiate(conf) for _, conf in node.items() if isinstance(conf, DictConfig) and "_target_" in conf]


def build(cfg: DictConfig) -> dict[str, Any]:
    """Datamodule (prepared and set up), encoder, module, callbacks, loggers and trainer."""
    check_config(cfg)  # value ranges, monitored metric, model/fusion pair: before any data work
    objects = build_module(cfg)
    callbacks = _instantiate_dict(cfg.get("callbacks"))
    loggers = _instantiate_dict(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return {**objects, "callbacks": callbacks, "loggers": loggers, "trainer": trainer}


def build_module(cfg: DictConfig) -> dict[str, Any]:
    """Datamodule (prepared and set up), encoder and module of a run configuration, seeded:
    what training needs, and what export rebuilds to load a checkpoint into."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule: RecDataModule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup()

    fusion = instantiate(cfg.fusion)
    encoder_cls = get_class(cfg.model.encoder._target_)
    kwargs: dict[str, Any] = {"num_users": datamodule.num_users, "num_items": datamodule.num_items}
    if encoder_cls.uses_content:
        if len(datamodule.features) == 0:
            raise ConfigError(f"model {encoder_cls.__name__} needs item features but dataset "
                              f"{datamodule.root} has none; extract features or pick an ID model.")
        kwargs.update(features=datamodule.features, fusion=fusion)
    encoder = instantiate(cfg.model.encoder, **kwargs)

    evaluator = Evaluator(
        datamodule.splits, datamodule.item_sets, ks=list(cfg.evaluation.ks),
        block=cfg.evaluation.get("rank_block"), lists=cfg.evaluation.get("lists", "final"),
        # intra-list diversity in the dataset's content space, the same for every model
        content=datamodule.features.content_vectors())
    module = RecModule(
        encoder=encoder,
        sampler=instantiate(cfg.sampler),
        graph=datamodule.graph,
        train_matrix=datamodule.train_matrix,
        evaluator=evaluator,
        features=datamodule.features if encoder_cls.uses_content else None,
        optimizer=instantiate(cfg.model.optimizer) if cfg.model.get("optimizer") else None,
        scheduler=instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
        l2_weight=cfg.model.l2_weight,
        monitor=cfg.optimized_metric,
    )
    return {"cfg": cfg, "datamodule": datamodule, "encoder": encoder, "module": module}


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit with validation-based selection, then test the selected checkpoint once.

    Returns ``(metrics, objects)``: ``metrics`` holds ``val/...`` and ``test/...`` figures of
    the selected checkpoint plus bookkeeping; ``objects`` the built components.
    """
    check_config(cfg)  # a bad value fails here, before the run folder is written
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.get("keep_freed_memory"):
        keep_freed_memory()
    objects = build(cfg)
    trainer: L.Trainer = objects["trainer"]
    module: RecModule = objects["module"]
    datamodule: RecDataModule = objects["datamodule"]

    start = time.time()
    trainable = module.encoder.trainable
    if trainable:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    else:
        log.info("%s learns nothing: evaluating it without fitting.", type(module.encoder).__name__)
    fit_seconds = time.time() - start

    ckpt = trainer.checkpoint_callback
    best_path = ckpt.best_model_path if trainable and ckpt is not None and ckpt.best_model_path else None
    if best_path is None and trainable:
        log.warning("No best checkpoint (no ModelCheckpoint callback or fast_dev_run): "
                    "evaluating the last weights.")
    metrics: dict[str, Any] = {}
    (val,) = trainer.validate(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)
    metrics.update({k: float(v) for k, v in val.items() if k.startswith("val/")})
    if cfg.get("test"):
        (test,) = trainer.test(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)
        metrics.update({k: float(v) for k, v in test.items() if k.startswith("test/")})

    record = {
        "metrics": metrics,
        "best_checkpoint": best_path,
        "best_epoch": _epoch_of(best_path),
        "epochs_trained": trainer.current_epoch,
        "fit_seconds": round(fit_seconds, 3),
        "seed": cfg.get("seed"),
        "optimized_metric": cfg.optimized_metric,
        "dataset": str(datamodule.root),
        "model": cfg.model.encoder._target_,
    }
    stats = [cb for cb in objects["callbacks"] if isinstance(cb, EpochStats)]
    record["perf"] = stats[0].summary() if stats else {}
    # Peak resident memory of this process so far (Linux reports KiB).
    record["perf"]["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if trainer.is_global_zero:  # under DDP every process has the same record: one writes it
        (out_dir / "metrics.json").write_text(json.dumps(record, indent=2))
    table = metrics_table(metrics, list(cfg.evaluation.ks))
    log.info("Results of the checkpoint selected on %s (run folder %s):\n%s",
             cfg.optimized_metric, out_dir, table)
    return metrics, objects


def _epoch_of(path: str | None) -> int | None:
    if not path:
        return None
    # "epoch_044.ckpt", or "epoch_044-v1.ckpt" when Lightning versions a reused name.
    match = re.match(r"epoch_(\d+)", Path(path).stem)
    return int(match.group(1)) if match else None


def run(cfg: DictConfig) -> float | None:
    """``train(cfg)`` that always closes W&B (so one crashed sweep job does not poison the
    next) and returns ``cfg.optimized_metric`` for sweepers."""
    try:
        metrics, _ = train(cfg)
    finally:
        finish_wandb()
    value = metrics.get(cfg.optimized_metric)
    return None if value is None else float(value)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point (thin wrapper around :func:`run`)."""
    return run(cfg)


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    main()
