"""The one LightningModule: loss, negative sampling, optimisation, logging and evaluation
for every encoder in ``mmrec.models``. It contains no model-specific branches."""

from __future__ import annotations

import logging
from functools import partial
from typing import Callable, Sequence

import lightning as L
import torch

from mmrec.data.interactions import InteractionMatrix
from mmrec.evaluation.ranking import MetricAccumulator, ranked_hits, top_items
from mmrec.features.featureset import FeatureSet
from mmrec.graph.bipartite import BipartiteGraph
from mmrec.losses import bpr_loss, l2_batch
from mmrec.models.base import GraphRecommender
from mmrec.sampling import NegativeSampler

log = logging.getLogger(__name__)


class RecModule(L.LightningModule):
    """Trains an encoder with BPR + L2 and evaluates it by full ranking.

    Args:
        encoder: the graph recommender (``forward(graph, features) -> (user_emb, item_emb)``).
        sampler: negative sampler (uniform, DNS, ...).
        graph: normalised training graph (constant).
        train_matrix / valid_matrix / test_matrix: interaction sets of each split.
        features: item features with masks (empty for ID-only models).
        optimizer: ``partial`` that takes the parameters (Hydra ``_partial_: true``).
        scheduler: optional ``partial`` that takes the optimizer.
        l2_weight: :math:`\\lambda` of the L2 term on the batch's layer-0 embeddings.
        eval_ks: cut-offs of the ranking metrics.
        monitor: the validation metric used for model selection (``val/recall@20``).
        rank_block: users scored at once inside an evaluation batch on a CPU, so that the
            ``[block, I]`` score matrix stays in cache (``None``: the whole batch; GPUs always
            score the whole batch). Results do not depend on it.
    """

    def __init__(
        self,
        encoder: GraphRecommender,
        sampler: NegativeSampler,
        graph: BipartiteGraph,
        train_matrix: InteractionMatrix,
        valid_matrix: InteractionMatrix,
        test_matrix: InteractionMatrix,
        features: FeatureSet | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] = partial(torch.optim.Adam, lr=1e-3),
        scheduler: Callable[..., object] | None = None,
        l2_weight: float = 1e-4,
        eval_ks: Sequence[int] = (10, 20, 50),
        monitor: str = "val/recall@20",
        rank_block: int | None = 128,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["encoder", "sampler", "graph", "train_matrix",
                                          "valid_matrix", "test_matrix", "features",
                                          "optimizer", "scheduler"])
        self.encoder = encoder
        if encoder.item_local and type(encoder).auxiliary_loss is not GraphRecommender.auxiliary_loss:
            raise TypeError(f"{type(encoder).__name__} is item_local but defines auxiliary_loss, which needs "
                            f"the full tables that its row-only training steps do not compute")
        self.sampler = sampler
        self.graph = graph
        self.train_matrix = train_matrix
        self.valid_matrix = valid_matrix
        self.test_matrix = test_matrix
        self.features = features if features is not None else FeatureSet()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.l2_weight = l2_weight
        self.eval_ks = list(eval_ks)
        self.monitor = monitor
        self.rank_block = rank_block
        self._eval_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None
        self._eval_scores: torch.Tensor | None = None
        self._groups: dict[str, torch.Tensor | None] = {}
        self._warned_cold = False
        self._unknown: torch.Tensor | None = None  # [I] bool: items an ID-only model cannot rank
        self._accumulators: dict[str, MetricAccumulator] = {}
        self.test_runs = 0  # the test split is meant to be evaluated once per run
        self._epoch_sums = torch.zeros(4)
        self._epoch_count = 0

    # -- representations ------------------------------------------------------------
    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(self.graph, self.features)

    # -- training -------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        users, pos = batch  # [B], [B]
        if self.encoder.item_local and not (self.sampler.needs_scores or self.sampler.synthesizes):
            # Item-local encoder (no propagation) and negatives drawn without scores: compute
            # only the rows this step scores, each distinct item once.
            neg = self.sampler.sample(users, pos, self.train_matrix, None)  # [B, K]
            items = torch.cat([pos.unsqueeze(1), neg], dim=1)  # [B, 1 + K]
            distinct, where = torch.unique(items, return_inverse=True)  # [n], [B, 1 + K]
            u, distinct_rows = self.encoder.forward_rows(self.graph, self.features, users, distinct)  # [B, d], [n, d]
            return self._step_loss(users, items, u, distinct_rows[where])
        user_emb, item_emb = self.encoder(self.graph, self.features)  # [U, d], [I, d]
        u = user_emb[users]  # [B, d]

        def score_fn(us: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
            return self.encoder.score_pairs(user_emb[us].detach().unsqueeze(1), item_emb[items].detach())

        if self.sampler.synthesizes:
            # Synthetic hard negatives built from this step's embeddings (MixGCF-style).
            neg_rows, neg = self.sampler.synthesize(users, pos, self.train_matrix, u, item_emb)  # [B, K, d], [B, K]
            items = torch.cat([pos.unsqueeze(1), neg], dim=1)  # [B, 1 + K]
            item_rows = torch.cat([item_emb[pos].unsqueeze(1), neg_rows], dim=1)  # [B, 1 + K, d]
        else:
            neg = self.sampler.sample(users, pos, self.train_matrix,
                                      score_fn if self.sampler.needs_scores else None)  # [B, K]
            # One gather for positives and negatives together: each gather's backward
            # zero-fills a full [I, d] gradient, which dominates on memory-bound CPUs.
            items = torch.cat([pos.unsqueeze(1), neg], dim=1)  # [B, 1 + K]
            item_rows = item_emb[items]  # [B, 1 + K, d]
        aux = self.encoder.auxiliary_loss(user_emb, item_emb, users, items, self.features)
        return self._step_loss(users, items, u, item_rows, aux)

    def _step_loss(self, users: torch.Tensor, items: torch.Tensor, u: torch.Tensor, item_rows: torch.Tensor,
                   aux: torch.Tensor | None = None) -> torch.Tensor:
        """BPR + L2 (+ the model's auxiliary term) of a step: users ``[B]``, items ``[B, 1 + K]``
        (positive first), their representations ``u`` ``[B, d]`` and ``item_rows`` ``[B, 1 + K, d]``."""
        scores = self.encoder.score_pairs(u.unsqueeze(1), item_rows)  # [B, 1 + K]
        loss_bpr = bpr_loss(scores[:, 0], scores[:, 1:])
        # the batch's rows of each layer-0 block, side by side (never a full-size concatenation)
        user_blocks, item_blocks = self.encoder.ego_embeddings()
        user_ego = torch.cat([b.index_select(0, users) for b in user_blocks], dim=1)  # [B, d_u]
        item_ego_rows = torch.cat([b[items] for b in item_blocks], dim=-1)  # [B, 1 + K, d_i]
        loss_reg = l2_batch(user_ego, item_ego_rows[:, 0], item_ego_rows[:, 1:])
        loss = loss_bpr + self.l2_weight * loss_reg
        if aux is not None:
            loss = loss + aux
        # Per-step self.log() costs ~1 ms of Lightning bookkeeping each; sum detached terms
        # here and log epoch means once in on_train_epoch_end.
        terms = torch.stack([loss, loss_bpr, loss_reg, aux if aux is not None else loss.new_zeros(())])
        self._epoch_sums = self._epoch_sums + terms.detach() * len(users)
        self._epoch_count += len(users)
        return loss

    def on_train_epoch_start(self) -> None:
        self.encoder.refresh(self.features)
        self._epoch_sums = torch.zeros(4, device=self.device)
        self._epoch_count = 0

    def on_train_epoch_end(self) -> None:
        if self._epoch_count == 0:
            return
        means = (self._epoch_sums / self._epoch_count).tolist()
        for name, value in zip(("train/loss", "train/bpr", "train/reg", "train/aux"), means):
            self.log(name, value, prog_bar=name == "train/loss")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer),
                                 "monitor": self.monitor, "interval": "epoch"}}

    # -- evaluation -----------------------------------------------------------------
    def unrankable_items(self) -> torch.Tensor | None:
        """``[I]`` bool mask of the items the encoder cannot score, or ``None``: an ID-only
        model knows nothing about an item without training interactions, so such items are
        ranked last, explicitly, rather than by an arbitrary (untrained) score."""
        if self.encoder.uses_content:
            return None
        cold = ~self.graph.item_known  # [I], built once with the training graph
        return cold if bool(cold.any()) else None

    def rank(self, user_emb: torch.Tensor, item_emb: torch.Tensor, users: torch.Tensor,
             exclude: Sequence[InteractionMatrix], k: int, unknown: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Full ranking of every item for ``users`` ``[B]``: ``(top-k item ids [B, k], their
        scores [B, k])``, with the ``exclude`` interactions removed and ``unknown`` items (see
        :meth:`unrankable_items`) ranked last, users scored ``rank_block`` at a time. The
        recommendation tables show these lists; evaluation counts the hits of the same ranking
        without building them (:func:`~mmrec.evaluation.ranking.ranked_hits`)."""
        return top_items(self._scorer(user_emb, item_emb), users, exclude, k, unknown,
                         self._block(user_emb))

    def _block(self, user_emb: torch.Tensor) -> int | None:
        return self.rank_block if user_emb.device.type == "cpu" else None

    def _scorer(self, user_emb: torch.Tensor, item_emb: torch.Tensor,
                workspace: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """``users [b] -> scores [b, I]``, written into ``workspace[:b]`` when given: each
        block's scores are consumed before the next block is scored, and reusing one buffer
        spares the allocator a fresh ``[b, I]`` tensor per block (~7% of a CPU pass)."""
        if workspace is None:
            return lambda us: self.encoder.score_all(user_emb[us], item_emb)
        return lambda us: self.encoder.score_all(user_emb[us], item_emb, out=workspace[:len(us)])

    def _start_eval(self) -> None:
        # Representations are computed once per evaluation pass, explicitly, and dropped
        # at its end: no cache survives into training or is filled by forward().
        with torch.no_grad():
            self._eval_embeddings = self.encoder(self.graph, self.features)
        user_emb, item_emb = self._eval_embeddings
        block = self._block(user_emb)
        # One [block, I] score buffer for the whole pass (CPU blocks), dropped at its end.
        self._eval_scores = (torch.empty(block, item_emb.shape[0], dtype=item_emb.dtype)
                             if block is not None else None)
        # Metrics over all relevant items, and separately over warm / cold items (cold =
        # no training interaction), so it shows whether content carries cold items.
        cold = ~self.graph.item_known  # [I]: no training interaction
        self._groups = {"": None, "warm/": ~cold, "cold/": cold}
        self._unknown = self.unrankable_items()
        if self._unknown is not None and not self._warned_cold:
            log.warning("%s uses no content: it cannot score the %d cold items (no training "
                        "interaction), so they are ranked last; see the */cold/* metrics.",
                        type(self.encoder).__name__, int(cold.sum()))
            self._warned_cold = True
        self._accumulators = {g: MetricAccumulator(self.eval_ks) for g in self._groups}

    def _eval_step(self, users: torch.Tensor, exclude: Sequence[InteractionMatrix],
                   truth: InteractionMatrix) -> None:
        assert self._eval_embeddings is not None
        user_emb, item_emb = self._eval_embeddings
        # The hits of the ranking that :meth:`rank` returns, without building its lists.
        groups = ranked_hits(self._scorer(user_emb, item_emb, self._eval_scores), users, exclude, truth,
                             max(self.eval_ks), self._unknown, self._block(user_emb), self._groups)
        for group, (hits, num_pos) in groups.items():  # hits [B, max_k], num_pos [B]
            self._accumulators[group].update(hits, num_pos)

    def _end_eval(self, prefix: str) -> dict[str, float]:
        metrics = {f"{prefix}/{group}{k}": v for group, acc in self._accumulators.items()
                   for k, v in acc.compute().items()}
        self._eval_embeddings = None
        self._eval_scores = None
        self._accumulators = {}
        for key, value in metrics.items():
            self.log(key, value, prog_bar=key == self.monitor)
        return metrics

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def validation_step(self, users: torch.Tensor, batch_idx: int) -> None:
        self._eval_step(users, [self.train_matrix], self.valid_matrix)

    def on_validation_epoch_end(self) -> None:
        self._end_eval("val")

    def on_test_epoch_start(self) -> None:
        self.test_runs += 1
        self._start_eval()

    def test_step(self, users: torch.Tensor, batch_idx: int) -> None:
        # Test ranking removes training and validation items: both are known history.
        self._eval_step(users, [self.train_matrix, self.valid_matrix], self.test_matrix)

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")
