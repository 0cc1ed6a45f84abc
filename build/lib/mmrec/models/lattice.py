"""LATTICE: learned item-item structure from content + LightGCN on the user-item graph."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mmrec.fusion import GraphSumFusion
from mmrec.graph.bipartite import BipartiteGraph, layer_mean
from mmrec.graph.knn import cosine_knn
from mmrec.models.base import ColdItemNeighbours, GraphRecommender
from mmrec.models.ops import normalize_rows


def _knn_edges(nbr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[I, k]`` neighbour ids (``-1`` = none) -> flat ``(rows, cols)`` edge lists."""
    rows = torch.arange(nbr.shape[0], device=nbr.device).unsqueeze(1).expand_as(nbr)  # [I, k]
    keep = nbr >= 0
    return rows[keep], nbr[keep]


def _sym_norm(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """Edge values of ``D^-1/2 A D^-1/2`` with ``D`` the row sums of ``A`` (differentiable)."""
    deg = torch.zeros(n, device=values.device, dtype=values.dtype).index_add(0, rows, values)
    inv = torch.where(deg > 0, deg.clamp_min(1e-12).rsqrt(), torch.zeros_like(deg))
    return inv[rows] * values * inv[cols]


class LATTICE(GraphRecommender):
    r"""LATTICE from `"Mining Latent Structures for Multimedia Recommendation"
    <https://arxiv.org/abs/2104.09036>`_ (Zhang et al., MM 2021).

    Per modality ``m`` two item-item graphs over the ``knn_k`` nearest neighbours:

    * the **initial** graph :math:`\tilde S^m` from the raw features
      (:math:`\cos(f_i^m, f_j^m)` kNN, binary, :math:`D^{-1/2}AD^{-1/2}`), frozen;
    * the **learned** graph :math:`\hat S^m` from projected features
      :math:`h_i^m = W_m f_i^m`: edge values :math:`\mathrm{relu}(\cos(h_i^m, h_j^m))` on the kNN
      pairs, normalised :math:`D^{-1/2}\hat A D^{-1/2}` (row-sum degrees), differentiable in
      :math:`W_m`;

    combined :math:`S^m = \lambda \tilde S^m + (1-\lambda)\hat S^m` and fused across
    modalities with learned weights :math:`S = \sum_m \mathrm{softmax}(\alpha)_m S^m`.
    Items are convolved on :math:`S`, users and items by LightGCN on the user-item graph:

    .. math::
        \tilde{\mathbf h}_i = (S^{L_{ii}} \mathbf{E}_{item})_i, \qquad
        (\bar{\mathbf e}_u, \bar{\mathbf e}_i) = \frac{1}{L+1}\sum_{l=0}^{L}\hat A^l\mathbf E,
        \qquad \mathbf u = \bar{\mathbf e}_u, \quad
        \mathbf i = \bar{\mathbf e}_i + \frac{\tilde{\mathbf h}_i}{\lVert\tilde{\mathbf h}_i\rVert}

    Cold items (no training interaction) have no user-item edges and an untrained ID
    embedding: their user-item part :math:`\bar{\mathbf e}_i` is set to 0 in training and, at
    evaluation, to an estimate from their warm content neighbours'
    (:class:`~mmrec.models.base.ColdItemNeighbours`; an extension, not in the paper;
    ``cold_neighbours=0``: 0). Their item-item part comes from both graphs as for any item.

    Deviations from the paper: the *choice* of the learned graph's neighbours (a full
    ``I x I`` similarity and top-k) is recomputed by :meth:`refresh` at the start of every
    training epoch (the reference code also rebuilds it once per epoch), while the edge
    *values* are recomputed from the current :math:`W_m` in every forward, so gradients reach
    :math:`W_m` at every step; items missing a modality get no edges in that modality's
    graphs (they are not compared by cosine). Against the MMRec reference code: the
    user-item graph is LightGCN's :math:`D^{-1/2}AD^{-1/2}` (MMRec: :math:`D^{-1}(A+I)`); the
    initial graph is binary without self loops (MMRec: cosine values, the item itself among
    its top-k); the learned graph's values are :math:`\mathrm{relu}(\cos)` and each modality is
    normalised before the weighted sum (MMRec: fused, then normalised once); the L2 term is
    on the batch's ego embeddings (MMRec: on the final ones); the learning rate is constant
    (MMRec: :math:`\times 0.96` every 50 epochs); the raw features are constants (MMRec
    fine-tunes them).

    Args:
        num_users, num_items: numbers of users and items.
        features: item features (raw kNN graph, projections).
        fusion: fusion factory; only ``graph_sum`` is accepted (its weights initialise
            :math:`\mathrm{softmax}(\alpha)`).
        embedding_dim: ID embedding size (also the projected feature size).
        num_ui_layers: LightGCN layers on the user-item graph.
        num_ii_layers: hops on the item-item graph.
        knn_k: neighbours per item in each modality graph.
        lambda_coeff: weight :math:`\lambda` of the initial (raw-feature) graph.
        learn_modality_weights: learn :math:`\alpha` (else the fusion weights stay fixed).
        cold_neighbours: content neighbours per modality that estimate a cold item's
            user-item part (0: off).
    """

    uses_content = True
    supported_fusions = ("graph_sum",)

    def __init__(self, num_users: int, num_items: int, features, fusion: Callable[..., nn.Module],
                 embedding_dim: int = 64, num_ui_layers: int = 2, num_ii_layers: int = 1, knn_k: int = 10,
                 lambda_coeff: float = 0.9, learn_modality_weights: bool = True,
                 cold_neighbours: int = 10):
        super().__init__()
        if not 0.0 <= lambda_coeff <= 1.0:
            raise ValueError(f"lambda_coeff must lie in [0, 1], got {lambda_coeff}")
        self.num_items = num_items
        self.num_ui_layers, self.num_ii_layers = num_ui_layers, num_ii_layers
        self.knn_k, self.lambda_coeff = knn_k, lambda_coeff
        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(num_items, embedding_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        graph_fusion: GraphSumFusion = fusion(feature_dims=features.dims, dim=embedding_dim)
        self.names = list(graph_fusion.names)
        logits = graph_fusion.weights.clamp_min(1e-6).log()
        if learn_modality_weights:
            self.modality_logits = nn.Parameter(logits)
        else:
            self.register_buffer("modality_logits", logits)
        self.proj = nn.ModuleDict({m: nn.Linear(features.dims[m], embedding_dim) for m in self.names})  # W_m
        for m in self.names:
            values, mask = features[m]
            rows, cols = _knn_edges(cosine_knn(values, mask, knn_k))
            init = _sym_norm(rows, cols, torch.ones(rows.numel()), num_items)
            # the frozen initial graph, and the learned graph's neighbour choice (see refresh)
            self.register_buffer(f"init_edges_{m}", torch.stack([rows, cols]), persistent=False)
            self.register_buffer(f"init_values_{m}", init, persistent=False)
            self.register_buffer(f"learned_nbr_{m}", torch.empty(0, knn_k, dtype=torch.long))
        self.cold = ColdItemNeighbours(features, cold_neighbours)  # 0: off
        self.refresh(features)

    def _projected(self, m: str, features) -> tuple[torch.Tensor, torch.Tensor]:
        values, mask = features[m]
        return normalize_rows(self.proj[m](values.float())), mask  # [I, d], [I]

    @torch.no_grad()
    def refresh(self, features) -> None:
        """Re-choose the learned graphs' neighbours from the current projections (once per
        training epoch; called by the training module and at construction)."""
        for m in self.names:
            h, mask = self._projected(m, features)
            setattr(self, f"learned_nbr_{m}", cosine_knn(h, mask, self.knn_k))

    def item_graph(self, features) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fused item-item graph as an edge list ``(rows, cols, values)``; values carry
        gradients to :math:`W_m` and :math:`\\alpha`."""
        weights = torch.softmax(self.modality_logits, dim=0)  # [M]
        rows, cols, vals = [], [], []
        for w, m in zip(weights, self.names):
            h, _ = self._projected(m, features)
            r, c = _knn_edges(getattr(self, f"learned_nbr_{m}"))
            sim = F.relu((h[r] * h[c]).sum(1))  # [E] cos of the chosen pairs
            learned = _sym_norm(r, c, sim, self.num_items)
            init_edges = getattr(self, f"init_edges_{m}")
            rows += [init_edges[0], r]
            cols += [init_edges[1], c]
            vals += [w * self.lambda_coeff * getattr(self, f"init_values_{m}"), w * (1 - self.lambda_coeff) * learned]
        return torch.cat(rows), torch.cat(cols), torch.cat(vals)

    def forward(self, graph: BipartiteGraph, features=None) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols, vals = self.item_graph(features)
        h = self.item_embedding.weight  # [I, d]
        for _ in range(self.num_ii_layers):
            h = torch.zeros_like(h).index_add(0, rows, vals.unsqueeze(1) * h[cols])  # S h
        # a cold item's user-item part is 0 (see known_item_ids); the item-item part carries it
        user, item = layer_mean(self.user_embedding.weight, self.known_item_ids(self.item_embedding.weight, graph),
                                self.num_ui_layers, graph.propagate_pair)
        item = self.cold(item, graph.item_sets)  # cold items: their warm neighbours' user-item part
        return user, item + normalize_rows(h)

    def ego_embeddings(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        return (self.user_embedding.weight,), (self.item_embedding.weight,)
