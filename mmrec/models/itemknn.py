"""ItemKNNCBF: the content-based item-kNN baseline, as one dot product (nothing is trained)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mmrec.fusion import GraphSumFusion
from mmrec.graph.bipartite import BipartiteGraph
from mmrec.graph.cooccurrence import interaction_sum
from mmrec.models.base import GraphRecommender


class ItemKNNCBF(GraphRecommender):
    r"""Content-based item kNN (ItemKNNCBF of the MMRec toolbox; the content baseline of Dacrema
    et al., `"Are We Really Making Much Progress?" <https://arxiv.org/abs/1907.06902>`_, RecSys 2019):
    an item's score for a user is its total content similarity to the user's training items,

    .. math::
        \hat y_{ui} = \sum_{j \in N_u} s(i, j), \qquad
        s(i, j) = \sum_m w_m\, [m_i]\,[m_j]\, \cos(x^m_i, x^m_j)

    with :math:`[m_i]` whether item :math:`i` has modality :math:`m` and :math:`w` the normalised
    weights of the ``graph_sum`` fusion (equal by default): a modality that either item lacks
    adds nothing to their similarity (it is masked, never compared as a zero vector).

    **As a dot product.** With the item vector :math:`\mathbf v_i = \Vert_m \sqrt{w_m}\,[m_i]\,
    x^m_i / \lVert x^m_i\rVert` (dimension :math:`\sum_m d_m`), :math:`s(i, j) = \mathbf v_i^\top
    \mathbf v_j`, so the user vector :math:`\mathbf u = \sum_{j\in N_u}\mathbf v_j` gives exactly
    :math:`\hat y_{ui} = \mathbf u^\top \mathbf v_i`: the one evaluator and serving rank it as
    every other model. Nothing is learned (``trainable = False``): ``train`` evaluates it as built.

    **Cold items** (no training interaction) are scored by their content like every item: that
    is the point of this baseline.

    Deviations from MMRec's ItemKNNCBF: the similarity is not truncated to each item's top-``k``
    neighbours and has no shrink term (:math:`x_i^\top x_j / (\lVert x_i\rVert\lVert x_j\rVert + h)`):
    neither has a factorised form short of an ``I``-dimensional one (user vector = its row of the
    interaction matrix, item vector = its column of the truncated similarity, i.e. dense ``[U, I]``
    and ``[I, I]`` tables), so this is the exact full-similarity kNN (:math:`k` = all items,
    :math:`h = 0`). MMRec concatenates the raw features, so the modality with the larger norms
    dominates the cosine; here each modality is normalised and weighted by :math:`w_m`.

    Args:
        num_users, num_items: numbers of users and items.
        features: item features (dimensions).
        fusion: fusion factory; only ``graph_sum`` is accepted (its weights are :math:`w_m`).
    """

    uses_content = True
    trainable = False
    supported_fusions = ("graph_sum",)

    def __init__(self, num_users: int, num_items: int, features, fusion: Callable[..., nn.Module]):
        super().__init__()
        self.num_users, self.num_items = num_users, num_items
        graph_fusion: GraphSumFusion = fusion(feature_dims=features.dims)
        self.names = list(graph_fusion.names)
        self.register_buffer("scale", graph_fusion.weights.sqrt(), persistent=False)  # [M] sqrt(w_m)

    def item_vectors(self, features) -> torch.Tensor:
        """``[I, sum_m d_m]`` the item vectors :math:`\\mathbf v_i` (a missing modality's block is 0)."""
        parts = []
        for scale, m in zip(self.scale, self.names):
            values, mask = features[m]  # [I, d_m], [I]
            unit = values / values.norm(dim=1, keepdim=True).clamp_min(1e-12)
            parts.append(unit * (mask.unsqueeze(1).to(unit.dtype) * scale))
        return torch.cat(parts, dim=1)

    def forward(self, graph: BipartiteGraph, features=None) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.item_vectors(features)  # [I, D]
        return interaction_sum(graph, item), item  # [U, D]: the sum over each user's training items

    def ego_embeddings(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        return (), ()
