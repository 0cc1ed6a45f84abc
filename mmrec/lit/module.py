"""The one LightningModule: loss, negative sampling, optimisation and logging for every
encoder in ``mmrec.models``; evaluation is delegated to the
:class:`~mmrec.evaluation.evaluator.Evaluator`. It contains no model-specific branches."""

from __future__ import annotations

import logging
from functools import partial
from typing import Callable

import lightning as L
import torch

from mmrec.core.interactions import InteractionMatrix
from mmrec.core.sequences import UserSequences
from mmrec.evaluation.evaluator import EvaluationPass, Evaluator, ScoreFn
from mmrec.features.featureset import FeatureSet
from mmrec.graph.bipartite import BipartiteGraph
from mmrec.losses import bpr_loss, l2_batch
from mmrec.models.base import GraphRecommender, TrainingContext, TrainingStep, history_sampler_problem
from mmrec.run import scorer, unrankable_items, vectors
from mmrec.runs import IDENTITY_KEY
from mmrec.sampling import NegativeSampler

log = logging.getLogger(__name__)


class RecModule(L.LightningModule):
    """Trains an encoder with BPR + L2 (or, for a
    :class:`~mmrec.models.base.HistoryRecommender`, with the model's own objective); evaluates
    it by full ranking through ``evaluator``.

    Args:
        encoder: the graph recommender (``forward(graph, features) -> (user_emb, item_emb)``).
        sampler: negative sampler (uniform, DNS, ...).
        graph: normalised training graph (constant); its ``item_sets`` say which items are cold.
        train_matrix: training interactions (positives and the negatives' catalogue).
        evaluator: full-ranking evaluation of the splits (``None``: the module only trains).
        features: item features with masks (empty for ID-only models).
        optimizer: ``partial`` that takes the parameters (Hydra ``_partial_: true``); ``None`` only
            for a model that is not trained (``encoder.trainable`` false).
        scheduler: optional ``partial`` that takes the optimizer.
        l2_weight: :math:`\\lambda` of the L2 term on the batch's layer-0 embeddings.
        monitor: the validation metric used for model selection (``val/recall@20``).
        sequences: users' time-ordered histories; required by a model that represents users
            from their history (``encoder.user_from_history``).
        identity: the run's model and dataset (:func:`mmrec.runs.run_identity`), written into
            every checkpoint so that a resume can check it continues this run.
    """

    def __init__(
        self,
        encoder: GraphRecommender,
        sampler: NegativeSampler,
        graph: BipartiteGraph,
        train_matrix: InteractionMatrix,
        evaluator: Evaluator | None = None,
        features: FeatureSet | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = partial(torch.optim.Adam, lr=1e-3),
        scheduler: Callable[..., object] | None = None,
        l2_weight: float = 1e-4,
        monitor: str = "val/recall@20",
        sequences: UserSequences | None = None,
        identity: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["encoder", "sampler", "graph", "train_matrix", "evaluator",
                                          "features", "optimizer", "scheduler", "sequences", "identity"])
        self.encoder = encoder
        if optimizer is None and encoder.trainable:
            raise ValueError(f"{type(encoder).__name__} is trained by gradient steps: it needs an optimizer")
        if encoder.item_local and encoder.loss_terms:
            raise TypeError(f"{type(encoder).__name__} is item_local but has its own loss terms, which need "
                            f"the full tables that its row-only training steps do not compute")
        self.sampler = sampler
        self.graph = graph
        self.train_matrix = train_matrix
        self.evaluator = evaluator
        self.features = features if features is not None else FeatureSet()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.l2_weight = l2_weight
        self.monitor = monitor
        self._pass: EvaluationPass | None = None  # the evaluation in progress
        self._warned_cold = False
        self.test_runs = 0  # the test split is meant to be evaluated once per run
        if encoder.user_from_history:
            problem = history_sampler_problem(type(encoder), type(sampler))
            if problem:
                raise ValueError(problem)
            if sequences is None:
                raise ValueError(f"{type(encoder).__name__} represents users from their histories: it needs sequences")
            degree = train_matrix.item_degree().to(torch.float64)
            # [I] log share of the training pairs per item (logQ of in-batch negatives); cold items -inf
            self.register_buffer("item_log_prob", (degree / degree.sum()).log().float(), persistent=False)
        self.sequences = sequences
        self.identity = identity or {}
        # the epoch means logged as train/<term>: the total, the main loss and L2, the model's own terms
        self._terms = (("loss", "bpr", "reg", *encoder.loss_terms) if not encoder.user_from_history
                       else ("loss", *encoder.loss_terms))
        self._epoch_sums = torch.zeros(len(self._terms))
        self._epoch_count = 0

    def _context(self) -> TrainingContext:
        """What a history model's objective reads (references to constants: cheap per step)."""
        return TrainingContext(self.graph, self.features, self.train_matrix, self.sequences, self.sampler,
                               self.item_log_prob)

    def _accumulate(self, terms: torch.Tensor, count: int) -> None:
        """Add a step's loss terms (``[len(self._terms)]``, in that order) for ``count`` examples to
        the epoch sums: a per-step ``self.log()`` costs ~1 ms of Lightning bookkeeping, so epoch
        means are logged once in ``on_train_epoch_end``."""
        self._epoch_sums = self._epoch_sums + terms.detach() * count
        self._epoch_count += count

    @classmethod
    def from_run(cls, run, monitor: str = "val/recall@20") -> "RecModule":
        """The module of an assembled run (:func:`mmrec.run.assemble`): its model, data, sampler and
        evaluator, with the optimiser, scheduler and L2 weight of ``run.cfg.model``."""
        model_cfg = run.cfg.model
        from hydra.utils import instantiate

        return cls(encoder=run.model, sampler=run.sampler, graph=run.data.graph, train_matrix=run.data.train_matrix,
                   evaluator=run.evaluator, features=run.data.features if run.model.uses_content else None,
                   optimizer=instantiate(model_cfg.optimizer) if model_cfg.get("optimizer") else None,
                   scheduler=instantiate(model_cfg.scheduler) if model_cfg.get("scheduler") else None,
                   l2_weight=model_cfg.l2_weight, monitor=monitor, sequences=run.data.sequences,
                   identity=run.identity)

    # -- representations (mmrec.run's functions, on this module's device) ---------------
    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_item_vectors()

    def user_item_vectors(self, split: str = "known") -> tuple[torch.Tensor, torch.Tensor]:
        """``(user_emb [U, d], item_emb [I, d])`` in the current mode (:func:`mmrec.run.vectors`)."""
        return vectors(self.encoder, self.graph, self.features, self.sequences, split)

    def scorer(self, split: str) -> tuple[ScoreFn, torch.Tensor]:
        """``(score_fn, item_emb)`` of one evaluation of ``split`` (:func:`mmrec.run.scorer`)."""
        return scorer(self.encoder, self.graph, self.features, self.sequences, split)

    # -- training -------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.encoder.user_from_history:  # the model's own objective over histories
            terms = self.encoder.training_loss(batch, self._context())
            users = batch[0] if isinstance(batch, (tuple, list)) else batch
            self._accumulate(torch.stack([terms[name] for name in self._terms]), len(users))
            return terms["loss"]
        users, pos = batch  # [B], [B]
        if self.encoder.item_local and not (self.sampler.needs_scores or self.sampler.synthesizes):
            # Item-local encoder (no propagation) and negatives drawn without scores: compute
            # only the rows this step scores, each distinct item once.
            neg = self.sampler.sample(users, pos, self.train_matrix, None)  # [B, K]
            items = torch.cat([pos.unsqueeze(1), neg], dim=1)  # [B, 1 + K]
            distinct, where = torch.unique(items, return_inverse=True)  # [n], [B, 1 + K]
            u, distinct_rows = self.encoder.forward_rows(self.graph, self.features, users, distinct)  # [B, d], [n, d]
            return self._step_loss(users, items, u, distinct_rows[where])
        user_emb, item_emb, views = self.encoder.training_forward(self.graph, self.features)  # [U, d], [I, d]
        u = user_emb[users]  # [B, d]

        def score_fn(us: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
            return self.encoder.score_pairs(user_emb[us].detach().unsqueeze(1), item_emb[items].detach())

        if self.encoder.main_loss == "none":  # no negatives: the model's own terms are its objective
            items = pos.unsqueeze(1)  # [B, 1]
            item_rows = item_emb[items]  # [B, 1, d]
        elif self.sampler.synthesizes:
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
        extra = self.encoder.extra_losses(TrainingStep(users, items, user_emb, item_emb, views, self.graph,
                                                       self.features)) if self.encoder.loss_terms else {}
        if set(extra) != set(self.encoder.loss_terms):
            raise RuntimeError(f"{type(self.encoder).__name__}.extra_losses returned {sorted(extra)}, but its "
                               f"loss_terms are {list(self.encoder.loss_terms)}")
        return self._step_loss(users, items, u, item_rows, extra)

    def _step_loss(self, users: torch.Tensor, items: torch.Tensor, u: torch.Tensor, item_rows: torch.Tensor,
                   extra: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        r"""The objective of a graph model's step, in one place:

        .. math:: \mathcal L = \mathrm{BPR} + \lambda_{L2}\,\mathrm{L2} + \sum_t w_t \mathcal L_t

        for users ``[B]``, items ``[B, 1 + K]`` (positive first), their representations ``u``
        ``[B, d]`` and ``item_rows`` ``[B, 1 + K, d]``, and the model's own terms ``extra``
        (:meth:`~mmrec.models.base.GraphRecommender.extra_losses`, weighted by its ``loss_weights``).
        BPR is 0 for a model whose ``main_loss`` is ``none``."""
        if self.encoder.main_loss == "bpr":
            scores = self.encoder.score_pairs(u.unsqueeze(1), item_rows)  # [B, 1 + K]
            loss_bpr = bpr_loss(scores[:, 0], scores[:, 1:])
        else:
            loss_bpr = u.new_zeros(())
        # the batch's rows of each layer-0 block, side by side (never a full-size concatenation)
        user_blocks, item_blocks = self.encoder.ego_embeddings()
        # (a side without free parameters has no blocks: zero-width rows, an L2 part of 0)
        user_ego = torch.cat([b.index_select(0, users) for b in user_blocks], dim=1) if user_blocks \
            else u.new_zeros(len(users), 0)  # [B, d_u]
        item_ego_rows = torch.cat([b[items] for b in item_blocks], dim=-1) if item_blocks \
            else u.new_zeros(*items.shape, 0)  # [B, 1 + K, d_i]
        loss_reg = l2_batch(user_ego, item_ego_rows[:, 0], item_ego_rows[:, 1:])
        zero = loss_reg.new_zeros(())  # a term not computed (direct calls in tests) counts 0
        terms = [(extra or {}).get(name, zero) for name in self.encoder.loss_terms]
        weights = self.encoder.loss_weights
        loss = loss_bpr + self.l2_weight * loss_reg
        for name, term in zip(self.encoder.loss_terms, terms):
            loss = loss + weights.get(name, 1.0) * term
        self._accumulate(torch.stack([loss, loss_bpr, loss_reg, *terms]), len(users))
        return loss

    def on_train_epoch_start(self) -> None:
        self.encoder.refresh(self.features)
        self._epoch_sums = torch.zeros(len(self._terms), device=self.device)
        self._epoch_count = 0

    def epoch_losses(self) -> dict[str, float]:
        """Means over the current training epoch so far: ``train/loss`` (what is minimised),
        ``train/bpr``, ``train/reg`` (the L2 term before its weight) and each of the model's own
        terms before its weight; for a history model ``train/loss`` and its own terms."""
        if self._epoch_count == 0:
            return {}
        means = (self._epoch_sums / self._epoch_count).tolist()
        return {f"train/{name}": value for name, value in zip(self._terms, means)}

    def on_train_epoch_end(self) -> None:
        for name, value in self.epoch_losses().items():
            # sync_dist: under DDP the logged value is the mean over the processes' batches
            self.log(name, value, prog_bar=name == "train/loss", sync_dist=True)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer),
                                 "monitor": self.monitor, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.identity:  # what a resume checks the checkpoint against (mmrec.runs.resume_problem)
            checkpoint[IDENTITY_KEY] = self.identity

    # -- evaluation -----------------------------------------------------------------
    def unrankable_items(self) -> torch.Tensor | None:
        """``[I]`` bool mask of the items the encoder cannot score (:func:`mmrec.run.unrankable_items`)."""
        return unrankable_items(self.encoder, self.graph)

    def recommend(self, users: torch.Tensor, k: int, split: str = "known") -> tuple[torch.Tensor, torch.Tensor]:
        """``(item ids [B, k], scores [B, k])`` of ``users`` ``[B]``: the evaluation's ranking
        (:meth:`Evaluator.top_items`) with the history of ``split`` removed (``valid``: training
        items; ``known``: training and validation items), on fresh representations."""
        if self.evaluator is None:
            raise RuntimeError("this module has no evaluator")
        was_training = self.training
        self.eval()  # as in evaluation: no edge dropout, cold items estimated
        try:
            with torch.no_grad():
                score_fn, _ = self.scorer(split)
                return self.evaluator.top_items(score_fn, users, k, split, self.unrankable_items())
        finally:
            self.train(was_training)

    def _collect_lists(self) -> bool:
        """Whether this evaluation collects top-k lists (beyond-accuracy metrics): on every one,
        or only on those of the selected checkpoint after fitting (``trainer.validate`` / ``test``)."""
        mode = self.evaluator.lists
        if mode != "final":
            return mode == "every"
        trainer = self._trainer
        return trainer is not None and trainer.state.fn != "fit"

    def _start_pass(self, split: str) -> None:
        if self.evaluator is None:
            raise RuntimeError("this module has no evaluator")
        # Representations are computed once per evaluation pass, explicitly, and dropped at
        # its end: no cache survives into training or is filled by forward().
        with torch.no_grad():
            score_fn, item_emb = self.scorer(split)
        unrankable = self.unrankable_items()
        if unrankable is not None and not self._warned_cold:
            log.warning("%s uses no content: it cannot score the %d cold items (no training "
                        "interaction), so they are ranked last; see the */cold/* metrics.",
                        type(self.encoder).__name__, int(unrankable.sum()))
            self._warned_cold = True
        self._pass = self.evaluator.start(split, score_fn, unrankable, self._collect_lists(), item_emb,
                                          item_emb.device)

    def _end_pass(self, prefix: str) -> dict[str, float]:
        assert self._pass is not None
        metrics = {f"{prefix}/{name}": v for name, v in self._pass.compute().items()}
        self._pass = None
        for key, value in metrics.items():
            # identical on every DDP process (each ranks all users): the sync is a no-op mean
            self.log(key, value, prog_bar=key == self.monitor, sync_dist=True)
        return metrics

    def on_validation_epoch_start(self) -> None:
        self._start_pass("valid")

    def validation_step(self, users: torch.Tensor, batch_idx: int) -> None:
        self._pass.update(users)

    def on_validation_epoch_end(self) -> None:
        self._end_pass("val")

    def on_test_epoch_start(self) -> None:
        self.test_runs += 1
        self._start_pass("test")

    def test_step(self, users: torch.Tensor, batch_idx: int) -> None:
        # Test ranking removes training and validation items: both are known history.
        self._pass.update(users)

    def on_test_epoch_end(self) -> None:
        self._end_pass("test")
