"""VBPR: the classic content-aware matrix factorisation baseline."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from mmrec.fusion import EarlyFusion, LateFusion
from mmrec.graph.bipartite import BipartiteGraph
from mmrec.models.base import ColdItemNeighbours, GraphRecommender


class VBPR(GraphRecommender):
    r"""VBPR from `"VBPR: Visual Bayesian Personalized Ranking from Implicit Feedback"
    <https://arxiv.org/abs/1510.01784>`_ (He & McAuley, AAAI 2016).

    Matrix factorisation with a content term (no graph: kept as the classic reference):

    .. math::
        \hat y_{ui} = \gamma_u^\top \gamma_i + \theta_u^\top \mathbf{c}_i

    where :math:`\mathbf{c}_i` is the item's fused content vector. With early fusion
    (``concat``, ``attention``, ``gated``) :math:`\mathbf{c}_i` is the fusion of the projected
    modalities (the paper's :math:`E f_i` for a single visual modality); with ``late``
    fusion each modality has its own :math:`\theta_u^m` and
    :math:`\hat y_{ui} = \gamma_u^\top\gamma_i + \sum_m w_m \theta_u^{m\top} E_m f^m_i`.

    Deviations: the item bias and the visual bias term :math:`\beta'^\top f_i` are omitted
    (as in the MMRec toolbox); features are projected by the fusion's projector instead of
    one matrix :math:`E` over concatenated raw features; the L2 term covers
    :math:`\gamma_u, \theta_u, \gamma_i` (MMRec: unsquared norms of the whole user and item
    vectors, projection output included).

    Cold items (no training interaction; an extension, not in the paper) have a real content
    vector but no trained :math:`\gamma_i`. Their :math:`\gamma_i` is estimated from those of
    their warm content neighbours (:class:`~mmrec.models.base.ColdItemNeighbours`, in evaluation
    only), or set to 0 with ``cold_neighbours=0`` (:meth:`known_item_ids`), so that they are
    ranked by content alone.

    Args:
        num_users, num_items: numbers of users and items.
        features: item features (dimensions are read from it).
        fusion: fusion factory from ``conf/fusion``.
        embedding_dim: size of :math:`\gamma` and of each content part.
        cold_neighbours: content neighbours per modality that estimate a cold item's
            :math:`\gamma_i` (0: it is 0).
    """

    uses_content = True
    supported_fusions = ("concat", "attention", "gated", "late")
    item_local = True  # no propagation: a step projects only the items it scores

    def __init__(self, num_users: int, num_items: int, features, fusion: Callable[..., nn.Module],
                 embedding_dim: int = 64, cold_neighbours: int = 10):
        super().__init__()
        self.user_gamma = nn.Embedding(num_users, embedding_dim)
        self.item_gamma = nn.Embedding(num_items, embedding_dim)
        self.fusion = fusion(feature_dims=features.dims, dim=embedding_dim)
        num_parts = len(features.dims) if isinstance(self.fusion, LateFusion) else 1
        self.user_theta = nn.Embedding(num_users, embedding_dim * num_parts)
        for emb in (self.user_gamma, self.item_gamma, self.user_theta):
            nn.init.xavier_uniform_(emb.weight)
        self.cold = ColdItemNeighbours(features, cold_neighbours)  # 0: off

    def forward(self, graph: BipartiteGraph, features=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._represent(self.user_gamma.weight, self.user_theta.weight, self._item_ids(graph), features)

    def forward_rows(self, graph: BipartiteGraph, features, users: torch.Tensor, items: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        # Only the step's items are projected: the [I, D] x [D, d] product over the whole
        # catalogue (and its backward) is most of an epoch with 4096-d image features.
        if self.training:  # cold items never occur in training: no estimate to make
            gamma_i = self.known_item_ids(self.item_gamma(items), graph, items)
        else:
            gamma_i = self._item_ids(graph)[items]
        return self._represent(self.user_gamma(users), self.user_theta(users), gamma_i, features.rows(items))

    def _item_ids(self, graph: BipartiteGraph) -> torch.Tensor:
        r"""``[I, d]`` item :math:`\gamma`: 0 for cold items, or estimated from their warm
        content neighbours (evaluation only, :class:`ColdItemNeighbours`)."""
        gamma = self.known_item_ids(self.item_gamma.weight, graph)
        return self.cold(gamma, graph.item_sets)

    def _represent(self, gamma_u: torch.Tensor, theta_u: torch.Tensor, gamma_i: torch.Tensor, features
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """``([U', 2d], [I', 2d])`` from user rows ``gamma_u``, ``theta_u`` ``[U', d]`` (late
        fusion: ``[U', M*d]``), item ID rows ``gamma_i`` ``[I', d]`` and those items' features."""
        if isinstance(self.fusion, EarlyFusion):
            content = self.fusion(features)  # [I', d]
            theta = theta_u
        else:
            h, _ = self.fusion.projector(features)  # [M, I', d]
            thetas = theta_u.chunk(h.shape[0], dim=1)  # M x [U', d]
            theta, content = self.fusion.combine(thetas, list(h))  # [U', M*d], [I', M*d]
        return torch.cat([gamma_u, theta], dim=1), torch.cat([gamma_i, content], dim=1)

    def ego_embeddings(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        return (self.user_gamma.weight, self.user_theta.weight), (self.item_gamma.weight,)
