"""Callbacks: per-epoch time and RSS, the progress display, DDP support with exact
evaluation, and a W&B table of sample recommendations."""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, Callable

import lightning as L
import psutil
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from torch.utils.data import DataLoader, DistributedSampler

from mmrec.lit.module import RecModule

log = logging.getLogger(__name__)


class RunProgress(TQDMProgressBar):
    """Lightning's progress bar, cleaned: epochs as ``Epoch 3/999`` (0-based, like the
    checkpoint names and ``best_epoch``, against the last epoch of the budget), no ``v_num``.

    When stderr is not a terminal (output piped to a file, ``nohup``, a cluster job) a bar
    would print nothing useful for minutes: the bars are off and one plain line per epoch is
    logged instead (epoch, training loss, the monitored validation metric with the best so
    far, seconds).

    Args:
        refresh_rate: batches between bar updates.
        plain: one line per epoch instead of bars (None: when stderr is not a terminal).
    """

    def __init__(self, refresh_rate: int = 1, plain: bool | None = None) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.plain = (not sys.stderr.isatty()) if plain is None else bool(plain)
        if self.plain:
            self.disable()
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._start = time.perf_counter()
        if self.plain:
            return
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch}/{trainer.max_epochs - 1}")

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the logger's version number, not a metric
        return items

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.plain:
            super().on_train_epoch_end(trainer, pl_module)
            return
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch}/{trainer.max_epochs - 1}"]
        # the module logs its epoch loss after the callbacks' hook: ask it directly
        losses = pl_module.epoch_losses() if isinstance(pl_module, RecModule) else {}
        if "train/loss" in losses:
            parts.append(f"train/loss {losses['train/loss']:.4f}")
        best = next((cb for cb in trainer.checkpoint_callbacks
                     if isinstance(cb, ModelCheckpoint) and cb.monitor), None)
        if best is not None and best.monitor in metrics:
            value = float(metrics[best.monitor])
            text = f"{best.monitor} {value:.4f}"
            # the checkpoint callback takes this epoch into account after this hook: do it here
            previous = float(best.best_model_score) if best.best_model_score is not None else math.nan
            if math.isfinite(previous):
                value = max(value, previous) if best.mode == "max" else min(value, previous)
            text += f" (best {value:.4f})"
            parts.append(text)
        parts.append(f"{time.perf_counter() - self._start:.1f} s")
        log.info("  ".join(parts))


class EpochStats(L.Callback):
    """Logs ``perf/train_epoch_s``, ``perf/val_s`` and ``perf/rss_mb`` every epoch.

    The per-epoch lists are kept on the callback (``train_epoch_s``, ``val_s``, ``rss_mb``)
    so that ``train()`` can summarise them in ``metrics.json``. RSS is sampled at the end
    of each training epoch; a loader or cache that leaks shows as a rising series.
    """

    def __init__(self) -> None:
        self.train_epoch_s: list[float] = []
        self.val_s: list[float] = []
        self.rss_mb: list[float] = []
        self._proc = psutil.Process()
        self._t_train = self._t_val = 0.0
        self._val_in_epoch: float | None = None  # validation time inside the current epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t_train = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Lightning runs validation inside the epoch before this hook: subtract it.
        elapsed = time.perf_counter() - self._t_train
        if self._val_in_epoch is not None:
            elapsed -= self._val_in_epoch
        self._val_in_epoch = None
        self.train_epoch_s.append(elapsed)
        self.rss_mb.append(self._proc.memory_info().rss / 2**20)
        pl_module.log("perf/train_epoch_s", elapsed, sync_dist=True)
        pl_module.log("perf/rss_mb", self.rss_mb[-1], sync_dist=True)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._t_val = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        elapsed = time.perf_counter() - self._t_val
        self._val_in_epoch = elapsed
        self.val_s.append(elapsed)
        pl_module.log("perf/val_s", elapsed, sync_dist=True)

    def summary(self) -> dict[str, float | None]:
        def median(xs: list[float]) -> float | None:
            return float(sorted(xs)[len(xs) // 2]) if xs else None

        return {
            "train_epoch_s_median": median(self.train_epoch_s),
            "val_s_median": median(self.val_s),
            "rss_mb_first": self.rss_mb[0] if self.rss_mb else None,
            "rss_mb_last": self.rss_mb[-1] if self.rss_mb else None,
            "rss_mb_max": max(self.rss_mb) if self.rss_mb else None,
            "train_epoch_s": [round(x, 4) for x in self.train_epoch_s],
            "val_s": [round(x, 4) for x in self.val_s],
            "rss_mb": [round(x, 1) for x in self.rss_mb],
        }


class DistributedEvaluation(L.Callback):
    """Makes Lightning's DDP strategy (``trainer=ddp``) work with mmrec's modules, and keeps
    evaluation exact.

    * The graph, features and interaction sets are buffers built identically by every process
      from the same prepared dataset: all of them are excluded from DDP's synchronisation
      (sparse CSR/COO buffers cannot be broadcast at all, and syncing the dense ones, item
      features among them, before every forward would copy them for nothing). This replaces
      DDP's deprecated ``broadcast_buffers=False``.
    * Lightning would shard the evaluation users over the processes and every process would
      log the mean over its own share. Instead every process ranks **all** evaluation users
      (the loaders get a one-replica ``DistributedSampler``, which Lightning leaves alone), so
      the validation metric that drives checkpointing and early stopping, and the numbers in
      ``metrics.json``, are exactly those of a single-device run of the same weights. Only
      training batches are split across processes.

    Does nothing in a single-process run.
    """

    _EVAL_LOADERS = ("val_dataloader", "test_dataloader")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size <= 1:
            return
        from torch.nn.parallel import DistributedDataParallel

        buffers = [name for name, _ in pl_module.named_buffers()]
        ignored = set(getattr(pl_module, "_ddp_params_and_buffers_to_ignore", [])) | set(buffers)
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(pl_module, sorted(ignored))
        datamodule = trainer.datamodule
        if datamodule is None:
            return
        for name in self._EVAL_LOADERS:
            if name in vars(datamodule):  # already wrapped (validate/test after fit)
                continue
            setattr(datamodule, name, self._unsharded(getattr(datamodule, name)))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        for name in self._EVAL_LOADERS:
            if datamodule is not None and name in vars(datamodule):
                delattr(datamodule, name)  # back to the class's method

    @staticmethod
    def _unsharded(make_loader: Callable[[], DataLoader]) -> Callable[[], DataLoader]:
        def loader() -> DataLoader:
            original = make_loader()
            sampler = DistributedSampler(original.dataset, num_replicas=1, rank=0, shuffle=False)
            return DataLoader(original.dataset, batch_size=original.batch_size, sampler=sampler,
                              collate_fn=original.collate_fn, num_workers=original.num_workers)

        return loader


class WandbRecommendations(L.Callback):
    """A W&B table of top-k recommendations for a few validation users: item, title, image
    path, score, and whether the item is one of the user's validation items (a hit); the
    images themselves are logged beside it as media (``<key>_images``, captioned with user,
    rank and title), so an offline run folder holds them and travels whole.

    Logged when the model selected on validation is evaluated after fitting (``train()``
    validates the best checkpoint once), so the table shows the model whose metrics are
    reported. Scores and ranking come from the module itself (``module.recommend``, with the user's training items masked), exactly as in evaluation. Images are the
    prepared dataset's ``items.image`` paths (relative to the dataset root, or absolute);
    URLs and missing files are left empty. Does nothing without a ``WandbLogger``.

    Args:
        num_users: validation users shown (evenly spaced over the user ids, deterministic).
        k: recommendations per user.
        key: W&B key of the table.
    """

    def __init__(self, num_users: int = 4, k: int = 10, key: str = "val/recommendations") -> None:
        if num_users < 1 or k < 1:
            raise ValueError(f"num_users and k must be >= 1, got {num_users} and {k}")
        self.num_users = num_users
        self.k = k
        self.key = key
        self.logged = 0

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "validate" or not trainer.is_global_zero:
            return
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        import wandb

        rows = recommendation_rows(pl_module, trainer.datamodule, self.num_users, self.k)
        columns = ["user", "rank", "item", "title", "image", "hit", "score"]
        root = trainer.datamodule.data.root
        data = [[r["user"], r["rank"], r["item"], r["title"], _shown_path(r["image"], root), r["hit"], r["score"]]
                for r in rows]
        # Images go in as media (files/media/images/ of the run folder), not as table cells: a
        # table's images are staged outside the run folder, so a copied offline run lost them.
        images = [wandb.Image(r["image"], caption=f"user {r['user']} #{r['rank']}: {r['title']}"
                              + (" (hit)" if r["hit"] else "")) for r in rows if r["image"]]
        for logger in loggers:
            logger.experiment.log({self.key: wandb.Table(columns=columns, data=data),
                                   **({f"{self.key}_images": images} if images else {})})
        self.logged += 1


def _shown_path(image: str | None, root) -> str:
    """An image path for the table: relative to the dataset root when inside it ("" = none)."""
    if not image:
        return ""
    from pathlib import Path

    try:
        return str(Path(image).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(image)


def recommendation_rows(module: L.LightningModule, datamodule, num_users: int = 4, k: int = 10
                        ) -> list[dict]:
    """Top-``k`` items of ``num_users`` validation users, one dict per (user, rank).

    Uses the module's own representations and the evaluation's ranking
    (:meth:`RecModule.recommend`: training items removed), so the list is the one the
    validation metrics judge.

    Returns dicts with ``user``, ``rank`` (1-based), ``item``, ``title``, ``image`` (local
    file path or ``None``), ``hit`` (the item is one of the user's validation items) and
    ``score``.
    """
    from mmrec.evaluation.ranking import hits_of

    valid = module.evaluator.splits["valid"]
    candidates = valid.users_with_items()
    if len(candidates) == 0:
        return []
    pick = torch.linspace(0, len(candidates) - 1, min(num_users, len(candidates))).round().long()
    users = candidates[pick].to(module.device)  # [n]
    top, top_scores = module.recommend(users, k, split="valid")  # [n, k], [n, k]: training items masked
    hits, _ = hits_of(top, users, valid)[""]  # [n, k]
    dataset = datamodule.dataset if datamodule is not None else None
    items = dataset.items.set_index("item") if dataset is not None else None
    rows = []
    for u in range(len(users)):
        for r in range(top.shape[1]):
            item = int(top[u, r])
            title, image = "", None
            if items is not None and item in items.index:
                title = str(items.at[item, "title"]) if "title" in items.columns else ""
                path = dataset.local_image(items.at[item, "image"]) if "image" in items.columns else None
                image = None if path is None else str(path)
            rows.append({"user": int(users[u]), "rank": r + 1, "item": item, "title": title, "image": image,
                         "hit": bool(hits[u, r]), "score": float(top_scores[u, r])})
    return rows
