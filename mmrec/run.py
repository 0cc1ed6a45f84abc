"""The composition root: ``assemble(cfg) -> Run``, the one function that turns a run
configuration into everything a run is made of - dataset, splits, item sets, graph, sequences,
features, model, sampler, evaluator - without Lightning.

Training (:mod:`mmrec.train`, where Lightning only drives the loop), export
(:mod:`mmrec.export`, which rebuilds a finished run to write its bundle) and tests all build a
run here, so they cannot disagree on how one is put together. The scoring functions below
(:func:`scorer`, :func:`vectors`, :func:`unrankable_items`) are the representations every
evaluation, recommendation table and bundle is computed from.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from mmrec.core.interactions import InteractionMatrix
from mmrec.core.items import ItemSets
from mmrec.core.sequences import UserSequences
from mmrec.data.dataset import DatasetSpec
from mmrec.data.prepared import DatasetError, PreparedDataset
from mmrec.evaluation.evaluator import HISTORY, Evaluator, ScoreFn, embedding_scorer
from mmrec.features.featureset import FeatureSet
from mmrec.fusion import NoFusion
from mmrec.graph.bipartite import BipartiteGraph
from mmrec.models.base import GraphRecommender
from mmrec.runs import run_identity
from mmrec.sampling import NegativeSampler
from mmrec.config_check import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@dataclass
class RunData:
    """The core types of one prepared dataset, built once per run.

    Attributes:
        dataset: the prepared dataset (tables, manifest).
        features: its item features with masks (empty for an ID-only run).
        item_sets: warm / cold items (cold: no training interaction).
        splits: ``{"train", "valid", "test"}`` interaction sets; negatives come from the warm
            items of ``train`` (cold items stay unseen in training).
        graph: the normalised training graph.
        sequences: every user's interactions in time order (the input of history models).
    """

    dataset: PreparedDataset
    features: FeatureSet
    item_sets: ItemSets
    splits: dict[str, InteractionMatrix]
    graph: BipartiteGraph
    sequences: UserSequences

    @classmethod
    def build(cls, ds: PreparedDataset, features: FeatureSet) -> "RunData":
        u, i = ds.num_users, ds.num_items
        train_users, train_items = ds.split("train")
        item_sets = ItemSets.from_training(train_items, i)
        splits = {"train": InteractionMatrix(train_users, train_items, u, i, catalogue=item_sets.warm_ids),
                  "valid": InteractionMatrix(*ds.split("valid"), u, i),
                  "test": InteractionMatrix(*ds.split("test"), u, i)}
        if splits["valid"].nnz == 0:  # found now, not after a whole epoch by early stopping
            raise DatasetError(f"{ds.root}: the dataset has no validation interactions (split 1 in "
                               f"interactions.parquet), and model selection and early stopping need them; prepare it "
                               f"with a split that holds some out (e.g. 8:1:1 per user)")
        inter = ds.interactions
        sequences = UserSequences(inter["user"].to_numpy(), inter["item"].to_numpy(), inter["timestamp"].to_numpy(),
                                  inter["split"].to_numpy(), u, i)
        data = cls(ds, features, item_sets, splits, BipartiteGraph(splits["train"], item_sets), sequences)
        log.info("Loaded %s: %d users, %d items, %d/%d/%d train/valid/test interactions, %d cold items, features %s",
                 ds.name, u, i, *(splits[s].nnz for s in SPLITS), item_sets.num_cold, features.dims or "none")
        return data

    @property
    def root(self):
        return self.dataset.root

    @property
    def num_users(self) -> int:
        return self.dataset.num_users

    @property
    def num_items(self) -> int:
        return self.dataset.num_items

    @property
    def train_matrix(self) -> InteractionMatrix:
        return self.splits["train"]


@dataclass
class Run:
    """Everything a run is made of, assembled by :func:`assemble`.

    Attributes:
        cfg: the composed configuration.
        spec: the dataset's settings (root, loaders' batch sizes, budget).
        data: the dataset's core types.
        model: the recommender (fitted already if it is fitted in closed form).
        sampler: the negative sampler of pair-trained models.
        evaluator: full-ranking evaluation of the splits.
        identity: what the run's checkpoints record of it (:func:`mmrec.runs.run_identity`).
    """

    cfg: DictConfig
    spec: DatasetSpec
    data: RunData
    model: GraphRecommender
    sampler: NegativeSampler
    evaluator: Evaluator
    identity: dict[str, Any] = field(default_factory=dict)

    def vectors(self, split: str = "known") -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`vectors` of this run's model (in its current mode)."""
        return vectors(self.model, self.data.graph, self.data.features, self.data.sequences, split)

    def unrankable_items(self) -> torch.Tensor | None:
        return unrankable_items(self.model, self.data.graph)


#: dataset keys of run configs written before the dataset became a DatasetSpec (old -> new)
_RENAMED_DATASET_KEYS = {"batch_size": "pairs_per_batch", "eval_batch_size": "eval_users_per_batch"}


def saved_config(path) -> DictConfig:
    """A finished run's resolved ``config.yaml``, readable by :func:`assemble` also when it was
    written by an earlier mmrec (whose ``dataset`` node built a DataModule with other key names)."""
    from omegaconf import OmegaConf, open_dict

    cfg = OmegaConf.load(path)
    dataset = cfg.get("dataset")
    if dataset is not None and dataset.get("_target_") == "mmrec.lit.datamodule.RecDataModule":
        with open_dict(cfg):
            dataset["_target_"] = "mmrec.data.dataset.DatasetSpec"
            for old, new in _RENAMED_DATASET_KEYS.items():
                if old in dataset:
                    dataset[new] = dataset.pop(old)
    return cfg


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (as Lightning's ``seed_everything(workers=True)`` does, whose
    environment variables DataLoader workers read)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device
    os.environ["PL_GLOBAL_SEED"], os.environ["PL_SEED_WORKERS"] = str(seed), "1"


def assemble(cfg: DictConfig) -> Run:
    """Build the run ``cfg`` describes: the dataset (prepared or repaired on first use for a
    single-step source), its core types, the seeded model (a closed-form model fitted), the
    sampler and the evaluator.

    Seeding happens after the data is ready, so whether the dataset was generated, found
    prepared or repaired in this process never changes what a seed gives.
    """
    spec: DatasetSpec = instantiate(cfg.dataset)
    ds, features = spec.load()
    data = RunData.build(ds, features)
    if cfg.get("seed") is not None:
        seed_all(int(cfg.seed))
    model_cls = get_class(cfg.model.encoder._target_)
    fusion = instantiate(cfg.fusion)  # a factory: fusion(feature_dims, dim)
    kwargs: dict[str, Any] = {"num_users": data.num_users, "num_items": data.num_items}
    # a model whose content is optional (the sequential ones) reads it unless the fusion is `none`
    if model_cls.uses_content and not (model_cls.content_optional and issubclass(get_class(cfg.fusion._target_), NoFusion)):
        if len(features) == 0:
            raise ConfigError(f"model {model_cls.__name__} needs item features but dataset {data.root} has none; "
                              f"extract features or pick an ID model.")
        kwargs.update(features=features, fusion=fusion)
    model: GraphRecommender = instantiate(cfg.model.encoder, **kwargs)
    model.prepare(data.graph)  # constant structure from the training graph (e.g. DRAGON's user-user graph)
    if model.fitted:  # closed-form models (iALS), for training and export alike
        start = time.time()
        model.fit(data.graph)
        log.info("Fitted %s in %.1fs.", model_cls.__name__, time.time() - start)
    evaluation = cfg.evaluation
    evaluator = Evaluator(
        data.splits, data.item_sets, ks=list(evaluation.ks), block=evaluation.get("rank_block"),
        lists=evaluation.get("lists", "final"),
        # repeats allowed (mask_history false): nothing is removed from a ranking, a known item may be a hit
        history=None if evaluation.get("mask_history", True) else {split: () for split in HISTORY},
        # intra-list diversity in the dataset's content space, the same for every model
        content=features.content_vectors())
    return Run(cfg=cfg, spec=spec, data=data, model=model, sampler=instantiate(cfg.sampler), evaluator=evaluator,
               identity=run_identity(cfg.model.encoder._target_, ds.manifest, ds.root))


# -- the representations every evaluation, table and bundle is computed from -------------------------

def unrankable_items(model: GraphRecommender, graph: BipartiteGraph) -> torch.Tensor | None:
    """``[I]`` bool mask of the items ``model`` cannot score, or ``None``
    (:meth:`~mmrec.core.items.ItemSets.unrankable`: cold items, for a model without content)."""
    return graph.item_sets.unrankable(model.uses_content)


def _history_users(model: GraphRecommender, sequences: UserSequences, users: torch.Tensor, item_emb: torch.Tensor,
                   split: str) -> torch.Tensor:
    """``[B, d]`` representations of ``users`` from their histories before ``split``: a history
    model's input is always everything known before the ranked split (:data:`HISTORY`),
    whatever the evaluator masks."""
    histories = sequences.batch(users, HISTORY[split], model.max_len)  # [B, W]
    return model.user_representations(histories, item_emb, users)


def scorer(model: GraphRecommender, graph: BipartiteGraph, features: FeatureSet, sequences: UserSequences,
           split: str) -> tuple[ScoreFn, torch.Tensor]:
    """``(score_fn, item_emb)`` of one evaluation of ``split`` in the model's current mode: the
    representations are computed here, once; a history model's user rows per scored batch."""
    if not model.user_from_history:
        user_emb, item_emb = model(graph, features)
        return embedding_scorer(user_emb, item_emb, model.score_all), item_emb
    item_emb = model.item_representations(graph, features)

    def score(users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return model.score_all(_history_users(model, sequences, users, item_emb, split), item_emb, out=out)

    return score, item_emb


def vectors(model: GraphRecommender, graph: BipartiteGraph, features: FeatureSet, sequences: UserSequences,
            split: str = "known", batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """``(user_emb [U, d], item_emb [I, d])`` in the model's current mode: a graph model's tables
    from ``forward``; a history model's user rows from each user's history before ``split``
    (``known``: training and validation, what serving and the test ranking use), in batches."""
    if not model.user_from_history:
        return model(graph, features)
    item_emb = model.item_representations(graph, features)
    users = torch.arange(sequences.num_users, device=item_emb.device)
    rows = [_history_users(model, sequences, users[b:b + batch_size], item_emb, split)
            for b in range(0, len(users), batch_size)]
    return torch.cat(rows), item_emb
