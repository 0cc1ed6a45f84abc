"""The two-tower retrieval model: an item tower over content, a user tower over the history."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mmrec.core.sequences import POOLINGS, pool_history
from mmrec.graph.bipartite import BipartiteGraph
from mmrec.losses import bpr_loss, sampled_softmax_loss
from mmrec.models.base import HistoryRecommender, TrainingContext

LOSSES = ("softmax", "bpr")


def subsample(histories: torch.Tensor) -> torch.Tensor:
    """``histories [B, W]`` with each item kept with probability ``r_b ~ U(0, 1]`` drawn per row
    (so kept sizes range from one item to all), the latest (last column) always kept; dropped
    items become padding (``-1``). Mean and attention pooling ignore the positions."""
    rate = 1.0 - torch.rand(len(histories), 1, device=histories.device)  # [B, 1] in (0, 1]
    keep = torch.rand(histories.shape, device=histories.device) < rate  # [B, W]
    keep[:, -1] = True
    return histories.masked_fill(~keep, -1)


class TwoTower(HistoryRecommender):
    r"""Two-tower retrieval model after `"Sampling-Bias-Corrected Neural Modeling for Large
    Corpus Item Recommendations" <https://doi.org/10.1145/3298689.3346996>`_ (Yi et al., RecSys
    2019), with content item towers.

    Item tower: the item's content through the fusion (each modality projected into a shared
    space, then concat / attention / gate), plus an optional item ID embedding (zero for cold
    items), L2-normalised:

    .. math:: \mathbf v_i = \frac{f(\mathbf c_i) + \mathbf e_i}{\lVert f(\mathbf c_i) + \mathbf e_i\rVert}

    User tower: the user's training history pooled over the item tower's outputs (mean or
    attention, :func:`pool_history`), one linear map, plus an optional user ID embedding,
    L2-normalised: :math:`\mathbf u = \mathrm{normalise}(W\,\mathrm{pool}(\{\mathbf v_j\}) + \mathbf b
    + \mathbf e_u)`. The score is :math:`\mathbf u^\top \mathbf v_i / \tau`; ranking uses
    :math:`\mathbf u^\top\mathbf v_i` (the same order).

    Training pairs ``(u, i)`` are drawn uniformly from the training interactions; the user
    tower reads the user's training history without ``i``. Loss: the in-batch sampled softmax
    with the logQ correction (:func:`~mmrec.losses.sampled_softmax_loss`; the other rows'
    positives are the negatives, optionally mixed with ``uniform_negatives`` items drawn
    uniformly from the catalogue, Yang et al. 2020, with :math:`q_j` the expected count of item
    ``j`` among all candidates), or BPR against the run's sampler.

    A cold item goes through the item tower (content only); a new visitor's vector is the user
    tower over the items they liked (serving runs it at request time, without a user ID
    embedding: keep ``user_id`` off for that to match training).

    Args:
        num_users, num_items: numbers of users and items.
        features: item features (dimensions are read from them).
        fusion: early-fusion factory from ``conf/fusion``.
        embedding_dim: size of both towers' outputs.
        item_id / user_id: add an ID embedding to the item / user tower.
        pooling: ``mean`` or ``attention`` over the history's item vectors.
        max_len: the latest ``max_len`` history items feed the user tower.
        loss: ``softmax`` (in-batch sampled softmax) or ``bpr``.
        temperature: :math:`\tau` of the softmax (and of the BPR scores).
        logq: subtract the log sampling frequency of each candidate.
        uniform_negatives: extra uniformly drawn negatives shared by the batch (mixed
            negative sampling; 0: in-batch only).
        id_dropout: in training, the share of items whose ID embedding is left out of the item
            tower in a step (DropoutNet, Volkovs et al. 2017): the content part must then rank
            items on its own, as it must for cold items, whose ID embedding is always 0.
        subsample_history: train the user tower on a random subset of each history (every
            item kept with a probability drawn per row from U(0, 1], the latest always kept),
            so that it has also seen the short histories of new visitors (serving runs the
            tower over the few items a visitor liked).
    """

    uses_content = True
    supported_fusions = ("concat", "attention", "gated")
    train_unit = "pairs"
    losses = LOSSES

    def __init__(self, num_users: int, num_items: int, features, fusion: Callable[..., nn.Module],
                 embedding_dim: int = 64, item_id: bool = True, user_id: bool = False, pooling: str = "mean",
                 max_len: int = 50, loss: str = "softmax", temperature: float = 0.1, logq: bool = True,
                 uniform_negatives: int = 0, id_dropout: float = 0.0, subsample_history: bool = False):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if temperature <= 0 or max_len < 1 or uniform_negatives < 0:
            raise ValueError("temperature must be > 0, max_len >= 1 and uniform_negatives >= 0")
        self.fusion = fusion(feature_dims=features.dims, dim=embedding_dim)
        self.item_id = nn.Embedding(num_items, embedding_dim) if item_id else None
        self.user_id = nn.Embedding(num_users, embedding_dim) if user_id else None
        for emb in (self.item_id, self.user_id):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.01)
        self.query = nn.Parameter(torch.randn(embedding_dim) * 0.1) if pooling == "attention" else None
        self.user_proj = nn.Linear(embedding_dim, embedding_dim)
        self.pooling, self.max_len, self.loss = pooling, int(max_len), loss
        self.temperature, self.logq, self.uniform_negatives = float(temperature), bool(logq), int(uniform_negatives)
        self.subsample_history = bool(subsample_history)
        if not 0.0 <= id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {id_dropout}")
        self.id_dropout = float(id_dropout)
        self.loss_terms = (loss,)

    # -- towers -----------------------------------------------------------------------
    def item_representations(self, graph: BipartiteGraph, features=None) -> torch.Tensor:
        v = self.fusion(features)  # [I, d]
        if self.item_id is not None:
            ids = self.known_item_ids(self.item_id.weight, graph)  # [I, d]; cold items: content only
            if self.training and self.id_dropout:  # whole rows dropped (not rescaled): "this item is unknown"
                ids = ids * (torch.rand(len(ids), 1, device=ids.device) >= self.id_dropout).to(ids.dtype)
            v = v + ids
        return F.normalize(v, dim=1)

    def user_representations(self, histories: torch.Tensor, item_emb: torch.Tensor, users: torch.Tensor
                             ) -> torch.Tensor:
        h = self.user_proj(pool_history(histories, item_emb, self.pooling, self.query))  # [B, d]
        if self.user_id is not None:
            h = h + self.user_id(users)
        return F.normalize(h, dim=1)

    def serving_user_tower(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The user tower as arrays for a serving bundle:
        ``({"tower_weight": [d, d], "tower_bias": [d], "tower_query": [d]?}, spec)``; ``None``
        with ``user_id`` (the trained tower adds an embedding a new visitor does not have, so
        serving would run a tower other than the trained one: visitors are folded in instead)."""
        if self.user_id is not None:
            return None
        arrays = {"tower_weight": self.user_proj.weight.detach(), "tower_bias": self.user_proj.bias.detach()}
        if self.query is not None:
            arrays["tower_query"] = self.query.detach()
        return arrays, {"pooling": self.pooling, "max_history": self.max_len}

    # -- objective --------------------------------------------------------------------
    def training_loss(self, batch, context: TrainingContext) -> dict[str, torch.Tensor]:
        users, pos = batch  # [B], [B]
        item_emb = self.item_representations(context.graph, context.features)  # [I, d]
        histories = context.sequences.batch(users, ("train",), self.max_len, exclude=pos)  # [B, W]
        if self.subsample_history:
            histories = subsample(histories)
        u = self.user_representations(histories, item_emb, users)  # [B, d]
        if self.loss == "bpr":
            neg = context.sampler.sample(users, pos, context.train_matrix, None)  # [B, K]
            items = torch.cat([pos.unsqueeze(1), neg], dim=1)  # [B, 1 + K]
            scores = (u.unsqueeze(1) * item_emb[items]).sum(-1) / self.temperature  # [B, 1 + K]
            term = bpr_loss(scores[:, 0], scores[:, 1:])
        else:
            candidates = pos
            expected = len(pos) * context.item_log_prob.exp()  # [I] expected copies among the batch's positives
            if self.uniform_negatives:
                catalogue = context.train_matrix.catalogue
                draw = torch.randint(len(catalogue), (self.uniform_negatives,), device=pos.device)  # seeded run RNG
                candidates = torch.cat([pos, catalogue[draw]])  # [B + M]
                expected = expected + self.uniform_negatives / len(catalogue)
            scores = u @ item_emb[candidates].T / self.temperature  # [B, N]
            log_q = expected[candidates].log() if self.logq else None  # [N]
            term = sampled_softmax_loss(scores, log_q, candidates)
        return {"loss": term, self.loss: term}
