"""The encoder contract shared by every recommender in ``mmrec.models``.

An encoder maps the training graph (and item content, for multimodal models) to user and
item representations; the one :class:`mmrec.lit.module.RecModule` owns loss, sampling,
logging and evaluation for all of them. Encoders do no file I/O and read no config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmrec.graph.bipartite import BipartiteGraph, block_spmm
from mmrec.graph.knn import fused_knn_graph


@dataclass
class TrainingStep:
    """One training step of a graph model, as its own loss terms (:meth:`GraphRecommender.extra_losses`)
    see it; built by the training module.

    Attributes:
        users: ``[B]`` the batch's users.
        items: ``[B, 1 + K]`` each row's positive item, then its ``K`` negatives (``K = 0`` for a
            model whose :attr:`~GraphRecommender.main_loss` is ``none``: no negatives are drawn).
        user_emb, item_emb: ``[U, d]``, ``[I, d]`` the tables of this step's
            :meth:`~GraphRecommender.training_forward` (what the main loss scores).
        views: what :meth:`~GraphRecommender.training_forward` returned besides the tables (perturbed
            views, layer outputs, side representations): read by the model's own terms only.
        graph: the training graph.
        features: item features (empty for ID-only models).
    """

    users: torch.Tensor
    items: torch.Tensor
    user_emb: torch.Tensor
    item_emb: torch.Tensor
    views: dict[str, Any]
    graph: BipartiteGraph
    features: Any


class GraphRecommender(nn.Module):
    r"""Base class: ``forward(graph, features) -> (user_emb [U, d], item_emb [I, d])``.

    The objective of a training step (:class:`mmrec.lit.module.RecModule`, one place) is

    .. math:: \mathcal L = \mathcal L_{main} + \lambda_{L2}\,\mathcal L_{L2}
              + \sum_{t \in \text{loss\_terms}} w_t\, \mathcal L_t

    with :math:`\mathcal L_{main}` BPR on the tables of :meth:`training_forward` (or nothing,
    ``main_loss = "none"``), the L2 term on the batch's :meth:`ego_embeddings`, and the model's
    own terms :meth:`extra_losses` (contrastive, alignment, per-modality BPR, ...) weighted by
    :attr:`loss_weights`; every term is logged as ``train/<name>`` before its weight.

    Class attributes:
        uses_content: whether the model reads item features. Content models take
            ``features`` (a :class:`mmrec.features.featureset.FeatureSet`, for dimensions and
            for constant structures such as kNN graphs) and ``fusion`` (a factory
            ``fusion(feature_dims, dim)`` from ``conf/fusion``) in their constructor.
        supported_fusions: names of the fusion configs (``conf/fusion``) the model accepts.
        item_local: an item's representation depends only on its own parameters and
            features (no propagation over the graph), so a training step may compute just
            the rows it scores (:meth:`forward_rows`). Such a model defines no
            :meth:`auxiliary_loss` (it would need the full tables).
        trainable: the model learns from the training interactions by gradient steps; the
            reference baselines (popularity, random) do not, and are evaluated without fitting.
        fitted: the model is fitted in closed form by :meth:`fit` when the run is assembled
            (iALS), for training and export alike.
        content_optional: a content model that also runs ID-only, when the fusion is ``none``
            (the sequential models): it then gets no features.
        main_loss: ``bpr`` (BPR on sampled negatives) or ``none`` (no negatives are drawn: the
            model's own :attr:`loss_terms` are its whole objective, e.g. BM3's bootstrapping).
        loss_terms: names of the terms :meth:`extra_losses` returns (logged as ``train/<name>``).
        loss_weights: ``{term: weight}`` of those terms (instance attribute; 1 where absent).
        train_unit: what a training batch holds: ``pairs`` (``(users [B], items [B])``) or
            ``users`` (``users [B]``; a history model reads their sequences).
        min_history: with ``users`` batches, the fewest training items a drawn user has.
    """

    uses_content: ClassVar[bool] = False
    trainable: ClassVar[bool] = True
    fitted: ClassVar[bool] = False
    content_optional: ClassVar[bool] = False
    main_loss: ClassVar[str] = "bpr"
    loss_terms: tuple[str, ...] = ()
    loss_weights: dict[str, float] = {}
    train_unit: ClassVar[str] = "pairs"
    min_history: ClassVar[int] = 1
    #: the user representation is computed from a batch of histories (:class:`HistoryRecommender`)
    user_from_history: ClassVar[bool] = False
    supported_fusions: ClassVar[tuple[str, ...]] = ("none",)
    item_local: ClassVar[bool] = False

    def forward(self, graph: BipartiteGraph, features=None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward_rows(self, graph: BipartiteGraph, features, users: torch.Tensor, items: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of ``forward`` for ``users`` ``[B]`` and ``items`` ``[n]``: ``([B, d], [n, d])``.

        By default the full forward, then the rows. An :attr:`item_local` model overrides it
        to compute only these rows (equal to the full forward's, tested).
        """
        user_emb, item_emb = self(graph, features)
        return user_emb[users], item_emb[items]

    def refresh(self, features=None) -> None:
        """Recompute structure that depends on learned weights but is too costly for every
        step (e.g. LATTICE's learned kNN neighbours). The training module calls it at the
        start of every training epoch; nothing by default. It is the only place such state
        changes: ``forward`` never fills a cache."""

    @staticmethod
    def known_item_ids(item_ids: torch.Tensor, graph: BipartiteGraph, items: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """Item ID embeddings ``[I, d]`` (or the rows ``[n, d]`` of ``items [n]``) with the rows
        of cold items (:attr:`graph.item_sets <mmrec.core.items.ItemSets>`) set to zero.

        A cold item's ID embedding is never trained (it is neither a positive nor, by the
        sampling protocol, a negative): left at its random initial value it would add noise
        to the item's score as if the item were known. Zeroing it makes the ID part of a cold
        item's score exactly 0, so cold items are ranked by whatever the model derives from
        content (an ID-only model then gives every cold item the score 0: "unknown"). It
        changes nothing for warm items and nothing in training, where cold items never occur
        as the scored item.
        """
        return graph.item_sets.zero_cold(item_ids, items)

    def ego_embeddings(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Layer-0 (free) user and item parameters that the L2 term regularises: for each side,
        its tables as column blocks (``[U, d_k]`` / ``[I, d_k]``), regularised as if they were
        concatenated; a side without free parameters gives ``()`` (DRAGON's items). The caller
        gathers the batch's rows of each block, so no full-size concatenation is built every step."""
        raise NotImplementedError

    def score_pairs(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """Scores of aligned rows: ``[..., d] x [..., d] -> [...]`` (dot product)."""
        return (user_emb * item_emb).sum(dim=-1)

    def score_all(self, user_emb: torch.Tensor, item_emb: torch.Tensor,
                  out: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of every item for each user row: ``[B, d] x [I, d] -> [B, I]``, written into
        ``out`` (``[B, I]``) when given, so that evaluation can reuse one buffer."""
        return torch.mm(user_emb, item_emb.T, out=out)

    def training_forward(self, graph: BipartiteGraph, features=None
                         ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """``(user_emb [U, d], item_emb [I, d], views)`` of a training step: the tables the main loss
        scores and whatever the model's own terms need besides them (perturbed views, layer
        outputs); by default ``forward`` and no views. Evaluation always uses ``forward``."""
        user_emb, item_emb = self(graph, features)
        return user_emb, item_emb, {}

    def extra_losses(self, step: TrainingStep) -> dict[str, torch.Tensor]:
        """The model's own loss terms ``{name: scalar}`` for :attr:`loss_terms`, before their
        :attr:`loss_weights`; none by default."""
        return {}

    def prepare(self, graph: BipartiteGraph) -> None:
        """Build constant structure from the training graph (DRAGON's user-user graph), once, when
        the run is assembled (training and export alike), before any forward; nothing by default.
        Constructors receive features, not the graph: a model needing the graph's structure builds
        it here, and ``forward`` never fills a cache."""

    def fit(self, graph: BipartiteGraph) -> None:
        """Closed-form fit on the training graph (models with :attr:`fitted`)."""
        raise NotImplementedError(f"{type(self).__name__} is not fitted in closed form")

    def serving_user_tower(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """``(arrays, manifest entry)`` of a user tower that serving runs for new visitors, or
        ``None`` (new visitors are folded in from the item vectors)."""
        return None


class ColdItemNeighbours(nn.Module):
    r"""The collaborative representation of a cold item estimated from its content neighbours.

    An item without training interactions has no trained ID embedding and no graph
    neighbours. This module gives it the direction of the similarity-weighted mean of the
    representations of its content neighbours that *do* have training interactions, at their
    weighted mean length:

    .. math::
        \bar{\mathbf e}_i = \frac{\sum_j S_{ij}\,k_j\,\mathbf e_j}{\sum_j S_{ij}\,k_j}, \qquad
        \mathbf e_i \leftarrow \frac{\bar{\mathbf e}_i}{\lVert\bar{\mathbf e}_i\rVert}\,
        \frac{\sum_j S_{ij}\,k_j\,\lVert\mathbf e_j\rVert}{\sum_j S_{ij}\,k_j}
        \quad \text{for cold } i, \qquad k_j = [\,j \text{ has a training interaction}\,]

    where :math:`S = \frac{1}{M}\sum_m S^m` is the fused cosine kNN graph of the raw
    features (``k`` neighbours per modality, :math:`D^{-1/2}AD^{-1/2}`; built once from the
    features and frozen, as in FREEDOM). The length is restored because a mean of
    dissimilar vectors shrinks towards the origin and a dot-product score shrinks with it:
    a plain mean ranks a cold item below all its neighbours (MMGCN on ml100k_cold, one
    checkpoint: cold test Recall@20 0.004 with the plain mean, 0.019 at the neighbours'
    length). Rows of warm items are returned unchanged, and a cold item none of whose
    neighbours is warm keeps 0. Since cold items are never scored in training, this only
    changes how they are ranked: by the collaborative signal of the items their content
    resembles.

    Args:
        features: item features (the kNN graph is built from them).
        k: neighbours per item and modality; 0 turns the estimate off (rows pass unchanged).
    """

    def __init__(self, features, k: int = 10):
        super().__init__()
        if k < 0:
            raise ValueError(f"k must be >= 0 (0: off), got {k}")
        self.k = k
        if k:
            names = list(features.dims)
            adj, adj_t = fused_knn_graph(features, {m: 1.0 / len(names) for m in names}, k)
            self.register_buffer("adj", adj, persistent=False)  # [I, I] CSR, constant
            self.register_buffer("adj_t", adj_t, persistent=False)

    def forward(self, emb: torch.Tensor, item_sets) -> torch.Tensor:
        """``emb [I, d]`` with the rows of the cold items of ``item_sets``
        (:class:`~mmrec.core.items.ItemSets`) replaced (in evaluation only: in training cold
        items are never scored, so the step skips it)."""
        if self.training or not self.k:
            return emb
        known = item_sets.warm  # [I]
        k = known.to(emb.dtype).unsqueeze(1)  # [I, 1]
        # one product for the weighted sums of the rows, their lengths and the weights
        stacked = torch.cat([emb * k, emb.norm(dim=1, keepdim=True) * k, k], dim=1)  # [I, d + 2]
        sums = block_spmm(self.adj, self.adj_t, stacked)  # [I, d + 2]
        direction = F.normalize(sums[:, :-2], dim=1)  # [I, d]
        length = sums[:, -2:-1] / sums[:, -1:].clamp_min(1e-12)  # [I, 1] weighted mean length
        return torch.where(known.unsqueeze(1), emb, direction * length)



@dataclass
class TrainingContext:
    """What a :class:`HistoryRecommender`'s own objective may read in a training step; built
    once by the training module (constants only).

    Attributes:
        graph: the training graph (its ``item_sets`` say which items are cold).
        features: item features (empty for ID-only models).
        train_matrix: training interactions (positives; exact negatives via ``nth_negative``).
        sequences: users' time-ordered histories (:class:`~mmrec.core.sequences.UserSequences`).
        sampler: the run's negative sampler (for objectives with sampled negatives).
        item_log_prob: ``[I]`` log of each item's share of the training pairs (the
            probability that a uniformly drawn training pair has this item): the logQ
            correction of in-batch negatives; ``-inf`` for cold items.
    """

    graph: BipartiteGraph
    features: Any
    train_matrix: Any
    sequences: Any
    sampler: Any
    item_log_prob: torch.Tensor


class HistoryRecommender(GraphRecommender):
    """The extended contract: a user's representation is computed from a batch of histories.

    A sequential model's user vector depends on the history up to the evaluation point, and a
    two-tower model's user tower reads the items a user interacted with, so such a model
    cannot return a fixed ``[U, d]`` table from ``forward``. Instead it provides:

    * :meth:`item_representations` ``(graph, features) -> [I, d]``, computed once per
      evaluation pass as for every model;
    * :meth:`user_representations` ``(histories [B, W], item_emb, users [B]) -> [B, d]``
      where ``histories`` are the users' items in time order, left-padded with ``-1``
      (:meth:`~mmrec.core.sequences.UserSequences.batch`): at validation the training
      history, at test and in serving the training and validation history;
    * :meth:`training_loss` ``(batch, context) -> {"loss": ..., <term>: ...}``: the model's
      own objective (sampled softmax, masked items, ...), since its training examples are
      histories rather than (user, item) pairs alone.

    Scores are ``score_all(user_rows, item_emb)`` (a dot product) as for every model, so the
    one :class:`~mmrec.evaluation.evaluator.Evaluator` ranks, masks and counts them exactly
    as it does for the graph models.

    Attributes (besides those of :class:`GraphRecommender`):
        loss_terms: names of the terms :meth:`training_loss` returns besides ``loss``
            (logged as ``train/<term>``).
        max_len: histories are capped to the latest ``max_len`` items (instance attribute).
    """

    user_from_history: ClassVar[bool] = True
    main_loss: ClassVar[str] = "none"  # the model's own objective (training_loss)
    max_len: int

    def forward(self, graph: BipartiteGraph, features=None) -> tuple[torch.Tensor, torch.Tensor]:
        raise TypeError(f"{type(self).__name__} represents users from their histories: use item_representations() "
                        f"and user_representations() (RecModule.user_item_vectors() builds both tables)")

    def item_representations(self, graph: BipartiteGraph, features=None) -> torch.Tensor:
        raise NotImplementedError

    def user_representations(self, histories: torch.Tensor, item_emb: torch.Tensor, users: torch.Tensor
                             ) -> torch.Tensor:
        raise NotImplementedError

    def training_loss(self, batch, context: TrainingContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def ego_embeddings(self):
        return (), ()  # regularised by the optimiser's weight decay, not the BPR L2 term


def history_sampler_problem(encoder_cls: type, sampler_cls: type) -> str | None:
    """Why ``sampler_cls`` cannot serve ``encoder_cls`` (a :class:`HistoryRecommender` draws its
    negatives without scores: no step-wide score table exists), or ``None``. The one rule that
    the config check and the training module both apply."""
    if encoder_cls.user_from_history and (getattr(sampler_cls, "needs_scores", False)
                                          or getattr(sampler_cls, "synthesizes", False)):
        return (f"sampler={sampler_cls.__name__}: {encoder_cls.__name__} draws negatives without scores; "
                f"use sampler=uniform or sampler=popularity")
    return None
