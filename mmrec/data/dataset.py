"""A run's dataset: which prepared folder, the source that makes it, which modalities, how it is
checked, and the batch sizes of its loaders (``conf/dataset``, the ``dataset`` group).

:meth:`DatasetSpec.load` is the one place a training run (and export, which rebuilds one) gets
its data: a single-step source's folder (demo, MMRec import) is prepared on first use and
repaired when any store is damaged (checksum, header, dims, count, NaN values: a full read);
a staged source's folder must have been prepared by ``python -m mmrec.prepare``, whose command
an error names. Nothing here knows Lightning.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import torch

from mmrec.data.prepared import (DatasetError, PreparedDataset, damaged_features, is_prepared, load_prepared,
                                 modality_order, read_manifest, repair_command, source_mismatch, unfinished_features,
                                 unregister_feature)
from mmrec.data.source import DatasetSource
from mmrec.features.featureset import FeatureSet
from mmrec.utils.files import write_failure

log = logging.getLogger(__name__)


class DatasetSpec:
    """One prepared dataset and how a run reads it.

    Args:
        root: folder of the prepared dataset.
        source: the :class:`~mmrec.data.source.DatasetSource` that prepares it (``None``: the folder
            must exist already).
        features: modalities to load (``None``: every registered one; ``[]``: none).
        verify: check the tables' and stores' SHA-256 against the manifest on load.
        budget: the dataset's training budget (``max_epochs``, ``patience``), read by the trainer
            and early-stopping configs.
        pairs_per_batch: training (user, positive item) pairs per step of a pair-trained model.
        eval_users_per_batch: users per full-ranking chunk in evaluation.
        num_workers: DataLoader workers for training batches (batches are index slices: 0 is fastest).
    """

    def __init__(self, root: str, source: DatasetSource | None = None, features: Sequence[str] | None = None,
                 verify: bool = True, budget: dict | None = None, pairs_per_batch: int = 2048,
                 eval_users_per_batch: int = 1024, num_workers: int = 0):
        self.root = Path(root)
        self.source = source
        self.features = None if features is None else list(features)
        self.verify = verify
        self.budget = dict(budget or {})
        self.pairs_per_batch = pairs_per_batch
        self.eval_users_per_batch = eval_users_per_batch
        self.num_workers = num_workers

    def load(self) -> tuple[PreparedDataset, FeatureSet]:
        """The prepared dataset (ready, verified) and its features."""
        self.ready()
        start = time.time()
        ds = load_prepared(self.root, verify=self.verify)
        unfinished = unfinished_features(ds.manifest)
        if unfinished and self.features is None:
            raise DatasetError(f"{self.root}: feature extraction of {unfinished} did not finish; run "
                               f"`{repair_command(ds.manifest, self.root)}` (it resumes), or pass "
                               f"dataset.features=[...] with the modalities you want.")
        features = FeatureSet({name: _usable(ds, name) for name in modality_order(ds.manifest, self.features)})
        log.debug("Loaded the tables and features of %s in %.1fs", self.root, time.time() - start)
        return ds, features

    def ready(self) -> None:
        """Make sure ``root`` holds a complete, undamaged dataset of this source: prepare or
        repair a single-step source's folder; for a staged source, refuse with the command
        that prepares it."""
        source = self.source
        if is_prepared(self.root):
            if source is not None and (problem := source_mismatch(self.root, source)):
                raise DatasetError(problem)
            manifest = read_manifest(self.root)
            # a source prepared here is repaired here: every kind of damage is looked for; a staged
            # source's stores by their size (a full check happens as they are opened)
            repairable = source is not None and not source.staged
            unfinished, damaged = unfinished_features(manifest), damaged_features(self.root, deep=repairable)
            if not unfinished and not damaged:
                return
            detail = "; ".join([f"feature stores {unfinished} never finished"] * bool(unfinished)
                               + [f"features/{name}: {why}" for name, why in sorted(damaged.items())])
            if not repairable:
                raise DatasetError(f"{self.root}: the dataset is incomplete ({detail}); run "
                                   f"`{repair_command(manifest, self.root)}` (it resumes), then train.")
            log.warning("%s: the dataset is incomplete (%s); preparing it again (it resumes)", self.root, detail)
            for name in damaged:
                unregister_feature(self.root, name)
        elif source is None:
            raise DatasetError(f"{self.root}: not a prepared dataset and no source configured to prepare it.")
        if source.staged:
            raise DatasetError(f"{self.root}: not prepared yet. Real datasets are prepared once, features "
                               f"included, by `python -m mmrec.prepare dataset=<this dataset> "
                               f"modality_encoder=<choice>` (e.g. modality_encoder=offline here); then train.")
        start = time.time()
        log.info("Preparing dataset into %s from %s", self.root, source.describe())
        # the global generators are left as they were: preparing must not change what a seed gives
        with torch.random.fork_rng(devices=[]):
            try:
                source.prepare(self.root)
            except OSError as err:  # a read-only or full data folder: what failed, where, and the next step
                raise DatasetError(f"preparing {self.root}: {write_failure(err.filename or self.root, err)}; or set "
                                   f"paths.data_dir (or dataset.root) to a writable folder") from err
        log.info("Prepared %s in %.1fs", self.root, time.time() - start)


def _usable(ds: PreparedDataset, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``bulk()`` of feature store ``name``, refused when no item has a vector (every input
    failed, e.g. an image server that was down): content from it would be zeros."""
    store = ds.feature_store(name)
    try:
        values, mask = store.bulk()
    finally:
        store.close()
    if not bool(mask.any()):
        raise DatasetError(f"{store.path}: no item has a '{name}' vector (all {len(mask)} missing); fix its "
                           f"inputs and run `{repair_command(ds.manifest, ds.root)}` again (it redoes changed items), "
                           f"or train without it: dataset.features=[...].")
    return values, mask
