"""FREEDOM: frozen item-item content graphs + a degree-pruned user-item graph."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from mmrec.fusion import GraphSumFusion, ModalityProjector
from mmrec.graph.bipartite import BipartiteGraph, block_spmm, layer_mean
from mmrec.graph.knn import fused_knn_graph
from mmrec.losses import bpr_loss
from mmrec.models.base import ColdItemNeighbours, GraphRecommender


class FREEDOM(GraphRecommender):
    r"""FREEDOM from `"A Tale of Two Graphs: Freezing and Denoising Graph Structures for
    Multimodal Recommendation" <https://arxiv.org/abs/2211.06924>`_ (Zhou & Shen, MM 2023).

    Two graphs:

    * **item-item** (frozen): per modality, each item links to its ``knn_k`` most
      cosine-similar items, :math:`S^m = D^{-1/2}A^mD^{-1/2}`, fused by the ``graph_sum``
      fusion :math:`S = \sum_m w_m S^m`; built once from the features at construction.
      Items whose modality is missing get no edges in that modality's graph.
    * **user-item** (denoised): at every training step, degree-sensitive edge pruning keeps
      a share ``1 - edge_dropout`` of the edges, drawn with probability
      :math:`\propto 1/\sqrt{d_u d_i}`, re-normalised; evaluation uses the full graph.

    .. math::
        \tilde{\mathbf h}_i = (S^{L_{ii}} \mathbf{E}_{item})_i, \qquad
        (\bar{\mathbf e}_u, \bar{\mathbf e}_i) = \frac{1}{L+1}\sum_{l=0}^{L} \hat A_{pruned}^l
        \mathbf{E}, \qquad \mathbf{u} = \bar{\mathbf e}_u, \quad
        \mathbf{i} = \bar{\mathbf e}_i + \tilde{\mathbf h}_i

    Loss: BPR on :math:`\langle\mathbf u, \mathbf i\rangle` plus ``modality_loss_weight``
    :math:`\times \sum_m \mathrm{BPR}(\mathbf u, T_m f^m_{i^+}, T_m f^m_{i^-})` with linear
    projections :math:`T_m` (:meth:`auxiliary_loss`).

    Cold items (no training interaction) have no user-item edges and an untrained ID
    embedding, so their user-item part :math:`\bar{\mathbf e}_i` is set to 0 and only
    :math:`\tilde{\mathbf h}_i` is left, on a scale unlike any warm item's score. At
    evaluation their :math:`\bar{\mathbf e}_i` is estimated from their warm content
    neighbours' (:class:`~mmrec.models.base.ColdItemNeighbours`; an extension, not in the
    paper; ``cold_neighbours=0``: 0).

    Deviations from the reference code (MMRec / the authors' repository): pruning is
    re-sampled every step instead of every epoch (no state kept between steps); a missing
    modality's projection is a learned vector, not zeros; each item's ``knn_k`` neighbours
    exclude the item itself (the reference's top-k includes it, so it links to itself and
    ``k - 1`` others); the raw features are constants, while the reference fine-tunes them
    through the per-modality BPR terms. As in the reference, the graphs are weighted
    image 0.1, text 0.9 (``model.graph_weights``, the default of ``fusion.weights``), there is
    no L2 term (``l2_weight: 0``), and the learning rate is constant.

    Args:
        num_users, num_items: numbers of users and items.
        features: item features (used once, to build the kNN graph, and in the auxiliary loss).
        fusion: fusion factory; only ``graph_sum`` is accepted (its weights weight the graphs).
        embedding_dim: size of the ID embeddings.
        num_ui_layers: LightGCN layers on the user-item graph.
        num_ii_layers: propagation hops on the item-item graph.
        knn_k: neighbours per item in each modality graph.
        edge_dropout: share of user-item edges pruned at each training step.
        modality_loss_weight: weight of the per-modality BPR terms.
        cold_neighbours: content neighbours per modality that estimate a cold item's
            user-item part (0: off).
    """

    uses_content = True
    supported_fusions = ("graph_sum",)

    def __init__(self, num_users: int, num_items: int, features, fusion: Callable[..., nn.Module],
                 embedding_dim: int = 64, num_ui_layers: int = 2, num_ii_layers: int = 1,
                 knn_k: int = 10, edge_dropout: float = 0.8, modality_loss_weight: float = 1e-4,
                 cold_neighbours: int = 10):
        super().__init__()
        if not 0.0 <= edge_dropout < 1.0:
            raise ValueError(f"edge_dropout must lie in [0, 1), got {edge_dropout}")
        self.num_ui_layers = num_ui_layers
        self.num_ii_layers = num_ii_layers
        self.edge_dropout = edge_dropout
        self.modality_loss_weight = modality_loss_weight
        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(num_items, embedding_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        graph_fusion: GraphSumFusion = fusion(feature_dims=features.dims, dim=embedding_dim)
        weights = dict(zip(graph_fusion.names, graph_fusion.weights.tolist()))
        ii, ii_t = fused_knn_graph(features, weights, knn_k)
        self.register_buffer("ii_adj", ii, persistent=False)  # [I, I] CSR, constant
        self.register_buffer("ii_adj_t", ii_t, persistent=False)
        self.projector = ModalityProjector(features.dims, embedding_dim)  # T_m
        self.cold = ColdItemNeighbours(features, cold_neighbours)  # 0: off

    def forward(self, graph: BipartiteGraph, features=None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.item_embedding.weight  # [I, d]
        for _ in range(self.num_ii_layers):
            h = block_spmm(self.ii_adj, self.ii_adj_t, h)
        blocks = graph.degree_pruned_blocks(1.0 - self.edge_dropout) if self.training and self.edge_dropout > 0 else None
        # a cold item's own ID is untrained: 0 in the user-item part, which is then estimated
        # from its warm content neighbours (evaluation); its item-item part h is its neighbours'
        user, item = layer_mean(self.user_embedding.weight, self.known_item_ids(self.item_embedding.weight, graph),
                                self.num_ui_layers, lambda u, i: graph.propagate_pair(u, i, blocks))
        item = self.cold(item, graph.item_sets)  # cold items: their warm neighbours' user-item part
        return user, item + h

    def ego_embeddings(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        return (self.user_embedding.weight,), (self.item_embedding.weight,)

    def auxiliary_loss(self, user_emb, item_emb, users, items, features=None):
        if self.modality_loss_weight == 0:
            return None
        projected, _ = self.projector(features)  # [M, I, d]
        u = user_emb[users].unsqueeze(1)  # [B, 1, d]
        loss = user_emb.new_zeros(())
        for part in projected:
            scores = (u * part[items]).sum(-1)  # [B, 1 + K]
            loss = loss + bpr_loss(scores[:, 0], scores[:, 1:])
        return self.modality_loss_weight * loss
