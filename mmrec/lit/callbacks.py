"""Callbacks that measure the run: time per training epoch and validation pass, and RSS."""

from __future__ import annotations

import time

import lightning as L
import psutil


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
        pl_module.log("perf/train_epoch_s", elapsed)
        pl_module.log("perf/rss_mb", self.rss_mb[-1])

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._t_val = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        elapsed = time.perf_counter() - self._t_val
        self._val_in_epoch = elapsed
        self.val_s.append(elapsed)
        pl_module.log("perf/val_s", elapsed)

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
