"""LightGCN: the ID-only graph reference model."""

from __future__ import annotations

import torch
from torch import nn

from mmrec.graph.bipartite import BipartiteGraph, layer_mean
from mmrec.models.base import GraphRecommender


class LightGCN(GraphRecommender):
    r"""LightGCN from `"LightGCN: Simplifying and Powering Graph Convolution Network for
    Recommendation" <https://arxiv.org/abs/2002.02126>`_ (He et al., SIGIR 2020).

    Free ID embeddings :math:`\mathbf{E}^{(0)}` are propagated over the normalised
    user-item graph without transformations or non-linearities, and the layers are averaged:

    .. math::
        \mathbf{E}^{(k+1)} = \hat{\mathbf{A}} \mathbf{E}^{(k)}, \qquad
        \hat{\mathbf{A}} = \mathbf{D}^{-1/2}\mathbf{A}\mathbf{D}^{-1/2}, \qquad
        \mathbf{E} = \sum_{k=0}^{K} \alpha_k \mathbf{E}^{(k)}, \quad \alpha_k = \frac{1}{K+1}

    and a user-item score is :math:`\hat y_{ui} = \mathbf{e}_u^\top \mathbf{e}_i`. Trained
    with BPR plus :math:`\lambda \lVert \mathbf{E}^{(0)}_{batch} \rVert^2` by
    :class:`mmrec.lit.module.RecModule`.

    It uses no content: an item without training interactions (cold) has an untrained ID
    embedding, which :meth:`~mmrec.models.base.GraphRecommender.known_item_ids` sets to 0, so
    every cold item scores 0 ("unknown"; the evaluation ranks such items last as unrankable).

    Args:
        num_users: number of users :math:`U`.
        num_items: number of items :math:`I`.
        embedding_dim: size :math:`d` of every embedding.
        num_layers: number of propagation hops :math:`K` (0 gives matrix factorisation).
    """

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64,
                 num_layers: int = 3):
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        self.num_users = num_users
        self.num_items = num_items
        self.num_layers = num_layers
        # Two tables rather than one split table: the backward of a split is a full copy.
        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(num_items, embedding_dim)
        # Xavier-uniform over the joint (U+I) x d table, as in the LightGCN and MMRec code.
        bound = (6.0 / (num_users + num_items + embedding_dim)) ** 0.5
        nn.init.uniform_(self.user_embedding.weight, -bound, bound)
        nn.init.uniform_(self.item_embedding.weight, -bound, bound)

    def forward(self, graph: BipartiteGraph, features=None) -> tuple[torch.Tensor, torch.Tensor]:
        # alpha_k = 1 / (K + 1) for every layer: the mean of the layers.
        items = self.known_item_ids(self.item_embedding.weight, graph)  # cold items: 0 ("unknown")
        return layer_mean(self.user_embedding.weight, items, self.num_layers, graph.propagate_pair)

    def ego_embeddings(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        return (self.user_embedding.weight,), (self.item_embedding.weight,)
