"""Train and evaluate a recommender: ``python -m mmrec.train model=lightgcn dataset=demo``.

``train(cfg)`` is a plain function (tests call it with a composed config); ``main()`` is the
thin Hydra wrapper that returns the validation metric sweepers optimise.

Protocol: early stopping and checkpoint selection watch ``cfg.optimized_metric`` (a
validation metric); after training the best checkpoint is evaluated once on validation
(for the record) and once on test. ``metrics.json`` and the resolved ``config.yaml`` land
in the run folder.

Resume (``ckpt_path=<run>/checkpoints/last.ckpt``) continues the same run: same folder, the
best checkpoint and its score carried in ``last.ckpt``, so selection covers every epoch of
the run. An interrupted run (Ctrl-C, SIGTERM) evaluates and records the best checkpoint so
far, marked ``"interrupted": true`` in ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import resource
import shlex
import signal
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

# torch, Lightning and the model code are imported where a run is built, not here: a mistake on
# the command line is reported before they load (seconds, on a busy machine tens of seconds)
from mmrec.config_check import ConfigError, check_config
from mmrec.runs import (RunFolderError, RunLock, config_resume_problem, folder_problem, load_checkpoint,
                        resume_problem, secondary_process)
from mmrec.utils import cli
from mmrec.utils.config import command_line
from mmrec.utils.errors import MmrecError, hydra_user_errors
from mmrec.utils.logging import finish_wandb, metrics_table, quiet_lightning
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
    return {**build_module(cfg), **build_loop(cfg)}


def build_loop(cfg: DictConfig) -> dict[str, Any]:
    """Callbacks, loggers and the trainer of a run (what writes into its folder)."""
    from lightning.pytorch.callbacks import ProgressBar

    callbacks = _instantiate_dict(cfg.get("callbacks"))
    if cfg.trainer.get("enable_progress_bar") is False:  # asked for no bar: Lightning refuses one in the list
        callbacks = [cb for cb in callbacks if not isinstance(cb, ProgressBar)]
    loggers = _instantiate_dict(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return {"callbacks": callbacks, "loggers": loggers, "trainer": trainer}


def build_module(cfg: DictConfig) -> dict[str, Any]:
    """The assembled run (:func:`mmrec.run.assemble`), its LightningModule and DataModule: what the
    training loop drives. ``{"run", "module", "datamodule", "encoder", "cfg"}``."""
    from mmrec.run import assemble

    run = assemble(cfg)  # before Lightning is imported: a data problem is reported without its import time
    from mmrec.lit.datamodule import RecDataModule
    from mmrec.lit.module import RecModule

    model = run.model
    # a history model's batch is users (model.users_per_batch); every other model's, training pairs
    per_batch = cfg.model.get("users_per_batch") if model.train_unit == "users" else run.spec.pairs_per_batch
    datamodule = RecDataModule(run.data, train_unit=model.train_unit, per_batch=int(per_batch),
                               eval_users_per_batch=run.spec.eval_users_per_batch, min_history=model.min_history,
                               num_workers=run.spec.num_workers)
    module = RecModule.from_run(run, monitor=cfg.optimized_metric)
    return {"cfg": cfg, "run": run, "datamodule": datamodule, "encoder": model, "module": module}


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit with validation-based selection, then test the selected checkpoint once.

    Returns ``(metrics, objects)``: ``metrics`` holds ``val/...`` and ``test/...`` figures of
    the selected checkpoint plus bookkeeping; ``objects`` the built components.

    Nothing is written into the run folder before the run is known to be this folder's: a
    folder holding another run, a folder another process trains into (``.run.lock``) and a
    checkpoint of another run, model or dataset are refused first (:mod:`mmrec.runs`).
    """
    check_config(cfg)  # a bad value fails here, before the run folder is written
    quiet_lightning()
    first = not secondary_process()
    if not first:  # a DDP process other than the first: its lines would repeat rank 0's
        for name in ("mmrec", log.name):  # log.name is "__main__" under `python -m mmrec.train`
            logging.getLogger(name).setLevel(logging.ERROR)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # one writer per run folder (under DDP the first process holds it for all)
    with RunLock(out_dir) if first else contextlib.nullcontext():
        if first and (problem := folder_problem(out_dir, cfg.get("ckpt_path"))):
            raise RunFolderError(problem)
        return _train(cfg, out_dir)


def _train(cfg: DictConfig, out_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    torch.set_float32_matmul_precision("high")  # TF32 matrix products on GPUs that have them
    if cfg.get("keep_freed_memory"):
        keep_freed_memory()
    set_threads(cfg.get("threads"))
    ckpt = cfg.get("ckpt_path")
    # a checkpoint that cannot continue this run is refused before anything is written or built
    state = load_checkpoint(ckpt) if ckpt and Path(str(ckpt)).is_file() else None
    if state is not None:
        _check_resume(cfg, state)
    objects = build_module(cfg)
    if cfg.get("test") and objects["run"].data.splits["test"].nnz == 0:
        raise ConfigError(f"test=true, but {objects['run'].data.root} has no test interactions (split 2): set "
                          f"test=false, or prepare the dataset with a test split")
    if state is not None and (problem := resume_problem(ckpt, state, objects["module"].identity,
                                                        objects["module"].state_dict())):
        raise RunFolderError(problem)  # another dataset, other shapes
    del state
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from mmrec.lit.callbacks import EpochStats

    tmp = out_dir / f".config.yaml.tmp-{os.getpid()}"
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(tmp, out_dir / "config.yaml")
    objects.update(build_loop(cfg))
    trainer, module, datamodule = objects["trainer"], objects["module"], objects["datamodule"]

    start = time.time()
    trainable = module.encoder.trainable
    interrupted: str | None = None
    if trainable:
        log.info("Training budget: up to %d epochs (trainer.max_epochs), early stopping after %s validations "
                 "without improvement of %s.", cfg.trainer.max_epochs,
                 OmegaConf.select(cfg, "callbacks.early_stopping.patience", default="(off)"), cfg.optimized_metric)
        # a small dataset has fewer steps per epoch than the logging interval: log once an epoch
        # then (Lightning would warn on every run that it logs nothing)
        trainer.log_every_n_steps = max(1, min(trainer.log_every_n_steps, datamodule.train_batches()))
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        except (SystemExit, SIGTERMException) as stop:  # Lightning's answer to Ctrl-C / SIGTERM
            if not trainer.interrupted:
                raise
            interrupted = "SIGTERM" if isinstance(stop, SIGTERMException) else "Ctrl-C"
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores Ctrl-C from here on
            log.warning("Interrupted (%s) at epoch %d: evaluating the best checkpoint so far.", interrupted,
                        trainer.current_epoch)
    else:
        log.info("%s learns nothing: evaluating it without fitting.", type(module.encoder).__name__)
    fit_seconds = time.time() - start
    objects["interrupted"] = interrupted

    ckpt = next((cb for cb in trainer.checkpoint_callbacks
                 if isinstance(cb, ModelCheckpoint) and cb.monitor == cfg.optimized_metric), None)
    best_path = ckpt.best_model_path if trainable and ckpt is not None and ckpt.best_model_path else None
    if interrupted and best_path is None:
        raise TrainingInterrupted(f"interrupted ({interrupted}) before the first validation: nothing to record in "
                                  f"{out_dir}; run the same command again.")
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
        "trained": bool(trainable),  # False: fitted in closed form or not at all (pop, random, iALS): no sampler
        "fit_seconds": round(fit_seconds, 3),
        "seed": cfg.get("seed"),
        "optimized_metric": cfg.optimized_metric,
        "dataset": str(objects["run"].data.root),
        "model": cfg.model.encoder._target_,
    }
    if interrupted:
        record["interrupted"] = interrupted
    if cfg.get("ckpt_path"):
        record["resumed_from"] = str(cfg.ckpt_path)
    stats = [cb for cb in objects["callbacks"] if isinstance(cb, EpochStats)]
    record["perf"] = stats[0].summary() if stats else {}
    # Peak resident memory of this process so far (Linux reports KiB).
    record["perf"]["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if trainer.is_global_zero:  # under DDP every process has the same record: one writes it, one table
        # atomically: a resumed run replaces the record of its first leg only with a whole new one
        tmp = out_dir / f".metrics.json.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, out_dir / "metrics.json")
        for logger in objects["loggers"]:
            if hasattr(logger, "log_run_record"):  # MLflow: final metrics + metrics.json as an artifact
                logger.log_run_record(out_dir / "metrics.json")
        table = metrics_table(metrics, list(cfg.evaluation.ks))
        log.info("Results of the checkpoint selected on %s (run folder %s):\n%s",
                 cfg.optimized_metric, out_dir, table)
    if interrupted:
        command = command_line("mmrec.train", drop=("ckpt_path", "hydra.run.dir", "paths.output_dir")) \
            or "python -m mmrec.train <the overrides of this run>"
        log.warning("Training was interrupted: metrics.json holds the best checkpoint so far (epoch %s), marked "
                    "\"interrupted\". Continue with: %s ckpt_path=%s", record["best_epoch"], command,
                    shlex.quote(str(out_dir / "checkpoints" / "last.ckpt")))
    return metrics, objects


def set_threads(threads: int | None) -> int:
    """Set torch's CPU threads: ``threads``; or (None) ``OMP_NUM_THREADS`` when the launcher set
    it, else the cores this process may use (its CPU affinity: a container's or a cluster
    job's share) divided among the jobs a joblib sweep runs at once. Oversubscribed threads
    spin on a busy machine (see RESULTS.md)."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = _parallel_jobs(cores)
    if threads is not None:
        chosen, why = int(threads), "threads"
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit():  # set by whoever launched this process
        chosen, why = max(1, int(os.environ["OMP_NUM_THREADS"])), "OMP_NUM_THREADS"
    else:
        chosen, why = max(1, cores // jobs), "the cores available" + (f" / {jobs} parallel jobs" if jobs > 1 else "")
    torch.set_num_threads(chosen)
    log.info("CPU threads: %d (from %s; %d cores available to this process).", chosen, why, cores)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if threads is None and chosen > 1 and load > cores:
        # not adapted automatically: the thread count is part of what makes a run reproducible
        log.warning("The machine is busy (load average %.1f on %d cores): threads=1 is usually several times "
                    "faster then (experiments/RESULTS.md, threads_busy).", load, cores)
    return chosen


def _parallel_jobs(cores: int) -> int:
    """Jobs a Hydra joblib launcher runs at once (1 outside such a sweep)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return 1
    n_jobs = HydraConfig.get().launcher.get("n_jobs")
    if n_jobs is None:
        return 1
    n_jobs = int(n_jobs)
    return cores if n_jobs < 0 else max(1, min(n_jobs, cores))


class TrainingInterrupted(MmrecError, RuntimeError):
    """Training stopped by the user before anything could be evaluated."""


def _check_resume(cfg: DictConfig, state: dict) -> None:
    """Refuse a resume from the checkpoint ``state`` of another model class, or one that would
    train nothing (what the configuration alone tells; the dataset and shapes are checked once
    the module is built: :func:`mmrec.runs.resume_problem`)."""
    path = cfg.get("ckpt_path")
    if problem := config_resume_problem(path, cfg.model.encoder._target_, state):
        raise RunFolderError(problem)
    done = int(state.get("epoch", -1)) + 1  # epochs finished when the checkpoint was written
    if done >= int(cfg.trainer.max_epochs):
        raise ConfigError(f"ckpt_path={path}: that run has finished {done} epochs and trainer.max_epochs="
                          f"{cfg.trainer.max_epochs}, so resuming would train nothing; raise trainer.max_epochs "
                          f"(e.g. trainer.max_epochs={done + int(cfg.trainer.max_epochs)}).")
    stopped = [v for k, v in state.get("callbacks", {}).items() if k.startswith("EarlyStopping")]
    patience = OmegaConf.select(cfg, "callbacks.early_stopping.patience", default=None)
    if stopped and patience is not None and int(stopped[0].get("wait_count", 0)) >= int(patience):
        raise ConfigError(f"ckpt_path={path}: that run stopped early ({stopped[0]['wait_count']} validations "
                          f"without improvement, patience {patience}); resuming would stop again at once: raise "
                          f"callbacks.early_stopping.patience to train on.")


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
        metrics, objects = train(cfg)
    finally:
        finish_wandb()
    if objects.get("interrupted"):
        raise SystemExit(130)  # the shell's code for an interrupted command; metrics.json is written
    value = metrics.get(cfg.optimized_metric)
    return None if value is None else float(value)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point (thin wrapper around :func:`run`); a user error ends in one line."""
    with hydra_user_errors():
        return run(cfg)


if __name__ == "__main__":
    cli.run(main, "train")  # a mistyped key or choice: one error line (mmrec.utils.cli)
