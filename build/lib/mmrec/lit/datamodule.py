"""The DataModule: prepares a dataset once, then serves batches, graph, masks and features."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mmrec.core.interactions import InteractionMatrix
from mmrec.core.items import ItemSets
from mmrec.core.sequences import UserSequences
from mmrec.data.prepared import (DatasetError, PreparedDataset, damaged_features, is_prepared,
                                 load_prepared, modality_order, read_manifest, repair_command, source_mismatch, unfinished_features,
                                 unregister_feature)
from mmrec.features.featureset import FeatureSet
from mmrec.graph.bipartite import BipartiteGraph
from mmrec.utils.files import write_failure

log = logging.getLogger(__name__)


def _identity(batch):
    return batch


class _PairDataset(Dataset):
    """Training (user, item) pairs; ``__getitems__`` slices a whole batch with one index op."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor):
        self.users, self.items = users, items

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, index: int):
        return self.users[index], self.items[index]

    def __getitems__(self, indices: list[int]):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.users[idx], self.items[idx]


class _UserDataset(Dataset):
    """Users (evaluation, or a sequence model's training); a batch is a ``[B]`` tensor of user ids."""

    def __init__(self, users: torch.Tensor):
        self.users = users

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, index: int):
        return self.users[index]

    def __getitems__(self, indices: list[int]):
        return self.users[torch.as_tensor(indices, dtype=torch.long)]


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


class RecDataModule(L.LightningDataModule):
    """Serves one prepared dataset.

    Args:
        source: object with ``prepare(root)`` that writes the prepared dataset (demo
            generator, MMRec importer, ...); used only when ``root`` is not prepared yet.
        root: folder of the prepared dataset.
        batch_size: training (user, positive) pairs per step.
        eval_batch_size: users per full-ranking chunk.
        features: modalities to load (``None``: all in the manifest; ``[]``: none).
        num_workers: DataLoader workers for training batches (batches are index slices:
            0 is fastest).
        verify: check the prepared files against their manifest checksums.
        budget: the dataset's training budget (``max_epochs``, ``patience``), kept in its config
            so that the trainer and early-stopping configs read it; not used here.
    """

    def __init__(self, source, root: str, batch_size: int = 2048, eval_batch_size: int = 1024,
                 features: Sequence[str] | None = None, num_workers: int = 0, verify: bool = True,
                 budget: dict | None = None):
        super().__init__()
        self.source = source
        self.root = Path(root)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.feature_names = None if features is None else list(features)
        self.num_workers = num_workers
        self.verify = verify
        self.budget = dict(budget or {})
        self.dataset: PreparedDataset | None = None
        self.train_unit = "pairs"  # what a training batch holds: set by the model (train.build_module)
        self.min_history = 1  # with "users" batches: the fewest training items a drawn user has (set by the model)

    # -- preparation ----------------------------------------------------------------
    def prepare_data(self) -> None:
        if is_prepared(self.root):
            self._check_source_matches()
            manifest = read_manifest(self.root)
            # a source this module prepares itself is repaired here: every kind of damage is looked for
            # (checksum, header, dims, count, NaN: a full read); a staged source's stores by their size
            repairable = self.source is not None and not hasattr(self.source, "stages")
            unfinished, damaged = unfinished_features(manifest), damaged_features(self.root, deep=repairable)
            if not unfinished and not damaged:  # complete
                return
            detail = "; ".join([f"feature stores {unfinished} never finished"] * bool(unfinished)
                               + [f"features/{name}: {why}" for name, why in sorted(damaged.items())])
            if self.source is None or hasattr(self.source, "stages"):
                raise DatasetError(f"{self.root}: the dataset is incomplete ({detail}); run "
                                   f"`{repair_command(manifest, self.root)}` (it resumes), then train.")
            log.warning("%s: the dataset is incomplete (%s); preparing it again (it resumes)", self.root, detail)
            for name in damaged:
                unregister_feature(self.root, name)
        elif self.source is None:
            raise DatasetError(f"{self.root}: not a prepared dataset and no source configured to "
                               f"prepare it.")
        if hasattr(self.source, "stages"):  # real sources: tables, images and features, offline
            raise DatasetError(f"{self.root}: not prepared yet. Real datasets are prepared once, "
                               f"features included, by `python -m mmrec.prepare dataset=<this dataset> "
                               f"modality_encoder=<choice>` (e.g. modality_encoder=offline here); then train.")
        start = time.time()
        log.info("Preparing dataset into %s from %s", self.root, self.source.describe())
        try:
            self.source.prepare(self.root)
        except OSError as err:  # a read-only or full data folder: what failed, where, and the next step
            where = err.filename or self.root
            raise DatasetError(f"preparing {self.root}: {write_failure(where, err)}; or set paths.data_dir "
                               f"(or dataset.root) to a writable folder") from err
        log.info("Prepared %s in %.1fs", self.root, time.time() - start)

    def _check_source_matches(self) -> None:
        """Refuse a prepared folder made from another source configuration (it would be
        used silently otherwise)."""
        if self.source is not None and (problem := source_mismatch(self.root, self.source)):
            raise DatasetError(problem)

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        start = time.time()
        ds = load_prepared(self.root, verify=self.verify)
        unfinished = unfinished_features(ds.manifest)
        if unfinished and self.feature_names is None:
            raise DatasetError(f"{self.root}: feature extraction of {unfinished} did not finish; run "
                               f"`{repair_command(ds.manifest, self.root)}` (it resumes), or pass "
                               f"dataset.features=[...] with the modalities you want.")
        self.dataset = ds
        u, i = ds.num_users, ds.num_items
        train_u, train_i = ds.split("train")
        self.item_sets = ItemSets.from_training(train_i, i)
        # negatives come from warm items only (cold items stay unseen in training)
        self.train_matrix = InteractionMatrix(train_u, train_i, u, i, catalogue=self.item_sets.warm_ids)
        self.valid_matrix = InteractionMatrix(*ds.split("valid"), u, i)
        self.test_matrix = InteractionMatrix(*ds.split("test"), u, i)
        if self.valid_matrix.nnz == 0:  # found now, not after a whole epoch by early stopping
            raise DatasetError(f"{self.root}: the dataset has no validation interactions (split 1 in "
                               f"interactions.parquet), and model selection and early stopping need them; prepare it "
                               f"with a split that holds some out (e.g. 8:1:1 per user)")
        self.graph = BipartiteGraph(self.train_matrix, self.item_sets)
        inter = ds.interactions
        # every user's interactions in time order (the input of history models; cheap to build)
        self.sequences = UserSequences(inter["user"].to_numpy(), inter["item"].to_numpy(),
                                       inter["timestamp"].to_numpy(), inter["split"].to_numpy(), u, i)
        names = modality_order(ds.manifest, self.feature_names)
        self.features = FeatureSet({name: _usable(ds, name) for name in names})
        train_users, train_items = ds.split("train")
        self._train_pairs = _PairDataset(torch.as_tensor(train_users), torch.as_tensor(train_items))
        log.info("Loaded %s: %d users, %d items, %d/%d/%d train/valid/test interactions, "
                 "%d cold items, features %s (%.1fs)", ds.name, u, i, self.train_matrix.nnz,
                 self.valid_matrix.nnz, self.test_matrix.nnz, self.item_sets.num_cold,
                 self.features.dims or "none", time.time() - start)

    # -- facts for building models --------------------------------------------------
    @property
    def num_users(self) -> int:
        return self._require().num_users

    @property
    def num_items(self) -> int:
        return self._require().num_items

    @property
    def splits(self) -> dict[str, InteractionMatrix]:
        """``{"train": ..., "valid": ..., "test": ...}`` interaction sets."""
        self._require()
        return {"train": self.train_matrix, "valid": self.valid_matrix, "test": self.test_matrix}

    def _require(self) -> PreparedDataset:
        if self.dataset is None:
            raise RuntimeError("call prepare_data() and setup() first")
        return self.dataset

    # -- loaders --------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        self._require()
        if self.train_unit == "users":  # sequence models: a batch is users [B], each with its whole history
            # on the CPU: the matrix may already sit on the GPU with the module, loader workers index on the CPU
            users = torch.nonzero(self.train_matrix.counts().cpu() >= self.min_history).squeeze(1)
            return DataLoader(_UserDataset(users), batch_size=self.batch_size,
                              shuffle=True, collate_fn=_identity, num_workers=self.num_workers,
                              persistent_workers=self.num_workers > 0)
        if self.train_unit != "pairs":
            raise ValueError(f"train_unit must be 'pairs' or 'users', got {self.train_unit!r}")
        return DataLoader(self._train_pairs, batch_size=self.batch_size, shuffle=True,
                          collate_fn=_identity, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def _users_loader(self, matrix: InteractionMatrix) -> DataLoader:
        return DataLoader(_UserDataset(matrix.users_with_items()), batch_size=self.eval_batch_size,
                          shuffle=False, collate_fn=_identity)

    def val_dataloader(self) -> DataLoader:
        self._require()
        return self._users_loader(self.valid_matrix)

    def test_dataloader(self) -> DataLoader:
        self._require()
        return self._users_loader(self.test_matrix)
