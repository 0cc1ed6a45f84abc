"""MGCN: purified modality features on item-item kNN views, fused by the user's behaviour."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from mmrec.fusion import AttentionFusion
from mmrec.graph.bipartite import BipartiteGraph, block_spmm, layer_mean
from mmrec.graph.knn import fused_knn_graph
from mmrec.losses import info_nce, l2_batch
from mmrec.models.base import ColdItemNeighbours, GraphRecommender, TrainingStep


class MGCN(GraphRecommender):
    r"""MGCN from `"Multi-View Graph Convolutional Network for Multimedia Recommendation"
    <https://arxiv.org/abs/2308.03588>`_ (Yu, Tan, Lu & Bao, ACM MM 2023).

    **Behaviour-guided purifier.** Each modality is projected (:math:`T_m`, the fusion's
    projector) and turned into a gate on the item's ID embedding, so that only the
    preference-related part of the content is kept:

    .. math:: \dot{\mathbf e}^m_i = \mathbf e_i \odot \sigma(W_m T_m \mathbf f^m_i + \mathbf b_m)

    **Views.** The user-item view is LightGCN on the IDs; the item-item view propagates the
    purified features over each modality's frozen cosine kNN graph
    :math:`S^m = D^{-1/2}A^mD^{-1/2}` (``knn_k`` neighbours, :mod:`mmrec.graph.knn`) and
    gives users the normalised sum of their items':

    .. math::
        (\bar{\mathbf e}_u, \bar{\mathbf e}_i) = \frac{1}{L+1}\sum_{l=0}^{L} \hat A^l \mathbf E, \qquad
        \ddot{\mathbf E}^m_I = (S^m)^{L_{ii}}\, \dot{\mathbf E}^m, \qquad
        \ddot{\mathbf e}^m_u = \textstyle\sum_i \tilde R_{ui}\, \ddot{\mathbf e}^m_i

    **Behaviour-aware fuser.** Attention over the modalities gives a common part; each
    modality's specific remainder is gated by the node's user-item view (its behaviour):

    .. math::
        \alpha^m = \mathrm{softmax}_m\big(\mathbf q^\top \tanh(W_a \ddot{\mathbf e}^m + \mathbf b_a)\big),
        \quad \mathbf e^{c} = \textstyle\sum_m \alpha^m \ddot{\mathbf e}^m, \quad
        \mathbf e^{s,m} = \sigma(P_m \bar{\mathbf e} + \mathbf c_m) \odot (\ddot{\mathbf e}^m - \mathbf e^c)

    .. math::
        \mathbf e^{side} = \frac{1}{M+1}\Big(\mathbf e^c + \textstyle\sum_m \mathbf e^{s,m}\Big), \qquad
        \mathbf e = \bar{\mathbf e} + \mathbf e^{side}

    **Loss.** BPR on :math:`\langle\mathbf e_u, \mathbf e_i\rangle`, plus (:attr:`loss_terms`)
    ``cl`` (weight ``cl_weight``): InfoNCE at temperature :math:`\tau`
    (:func:`mmrec.losses.info_nce`) between each batch node's side and user-item views,

    .. math:: \mathcal L_{cl} = \mathrm{InfoNCE}_\tau(\mathbf e^{side}_{\mathcal B_u}, \bar{\mathbf e}_{\mathcal B_u})
              + \mathrm{InfoNCE}_\tau(\mathbf e^{side}_{\mathcal B_i}, \bar{\mathbf e}_{\mathcal B_i})

    over the batch's distinct users and distinct positive items, and ``emb_reg`` (weight
    ``reg_weight``): MGCN's regulariser on the *final* representations of the batch,
    :math:`\frac{1}{2B}(\lVert\mathbf e_u\rVert^2 + \lVert\mathbf e_{i^+}\rVert^2 + \lVert\mathbf e_{i^-}\rVert^2)`
    (:func:`mmrec.losses.l2_batch`; the framework's L2 on layer-0 embeddings is off by default,
    ``l2_weight: 0``).

    **Fusion.** The fuser is MGCN's own and cannot be swapped; it is exactly the ``attention``
    fusion (:class:`~mmrec.fusion.AttentionFusion`: projector :math:`T_m`, masked
    coarse-grained attention :math:`\mathbf q^\top\tanh(W_a\cdot+\mathbf b_a)`), which is the
    only one accepted and supplies both.

    **Missing modalities.** The projector gives a missing modality a learned vector; the
    item then has no edges in that modality's kNN graph (its :math:`\ddot{\mathbf e}^m_i`
    is 0 after a hop), and the fuser masks it: it gets no attention and no specific part.

    **Cold items** (no training interaction). The ID of a cold item is set to 0, so its
    purified features and user-item view are 0, while its item-item view is its content
    neighbours' (through the kNN graph built from its features). As in FREEDOM, at evaluation
    its user-item view :math:`\bar{\mathbf e}_i` is estimated from its warm content
    neighbours' (:class:`~mmrec.models.base.ColdItemNeighbours`, an extension;
    ``cold_neighbours=0``: 0), before the fuser reads it.

    Deviations from the reference code (MMRec ``mgcn.py``, demonph10/MGCN): the attention
    softmax runs over the modalities, as in the paper and MMRec (the authors' repository
    normalises over all nodes instead); missing modalities are masked (the reference has
    none); each item's kNN neighbours exclude the item itself (the reference's top-k
    includes it); the raw features are constants (the reference fine-tunes them); the
    contrastive terms use the batch's distinct users / items (a repeated row would be its own
    negative); any number of modalities, the fused side divided by :math:`M + 1` (3 for two).

    Args:
        num_users, num_items: numbers of users and items.
        features: item features (dimensions; the kNN graphs are built from them once).
        fusion: fusion factory; only ``attention`` is accepted (its projector and attention
            are MGCN's :math:`T_m` and fuser).
        embedding_dim: size :math:`d` of every embedding.
        num_ui_layers: LightGCN layers :math:`L` of the user-item view.
        num_ii_layers: hops :math:`L_{ii}` on each modality's item-item graph.
        knn_k: neighbours per item in each modality's kNN graph.
        cl_weight: weight of the contrastive term ``cl``.
        temperature: :math:`\tau` of the InfoNCE term.
        reg_weight: weight of the ``emb_reg`` term on the batch's final representations.
        cold_neighbours: content neighbours per modality that estimate a cold item's
            user-item view (0: off).
    """

    uses_content = True
    supported_fusions = ("attention",)

    def __init__(self, num_users: int, num_items: int, features, fusion: Callable[..., nn.Module],
                 embedding_dim: int = 64, num_ui_layers: int = 2, num_ii_layers: int = 1, knn_k: int = 10,
                 cl_weight: float = 0.01, temperature: float = 0.2, reg_weight: float = 1e-4,
                 cold_neighbours: int = 10):
        super().__init__()
        if num_ui_layers < 0 or num_ii_layers < 0:
            raise ValueError(f"layer counts must be >= 0, got {num_ui_layers}, {num_ii_layers}")
        if knn_k < 1:
            raise ValueError(f"knn_k must be >= 1, got {knn_k}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if cl_weight < 0 or reg_weight < 0:
            raise ValueError(f"cl_weight and reg_weight must be >= 0, got {cl_weight}, {reg_weight}")
        self.num_users = num_users
        self.num_ui_layers = num_ui_layers
        self.num_ii_layers = num_ii_layers
        self.temperature = temperature
        self.loss_terms = ("cl", "emb_reg")
        self.loss_weights = {"cl": cl_weight, "emb_reg": reg_weight}
        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(num_items, embedding_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.fusion: AttentionFusion = fusion(feature_dims=features.dims, dim=embedding_dim)  # T_m, q, W_a
        self.names = list(self.fusion.names)
        self.purifier = nn.ModuleList(nn.Linear(embedding_dim, embedding_dim) for _ in self.names)  # W_m, b_m
        self.preference = nn.ModuleList(nn.Linear(embedding_dim, embedding_dim) for _ in self.names)  # P_m, c_m
        for k, name in enumerate(self.names):
            adj, adj_t = fused_knn_graph(features, {name: 1.0}, knn_k)
            self.register_buffer(f"ii_adj_{k}", adj, persistent=False)  # [I, I] CSR S^m, constant
            self.register_buffer(f"ii_adj_t_{k}", adj_t, persistent=False)
        self.cold = ColdItemNeighbours(features, cold_neighbours)  # 0: off

    def views(self, graph: BipartiteGraph, features) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ui [U + I, d], side [U + I, d])``: the user-item view :math:`\\bar{\\mathbf e}` and the
        fused item-item view :math:`\\mathbf e^{side}`, users first."""
        projected, mask = self.fusion.projector(features)  # [M, I, d], [M, I]
        ids = self.known_item_ids(self.item_embedding.weight, graph)  # [I, d]; cold items 0
        user, item = layer_mean(self.user_embedding.weight, ids, self.num_ui_layers, graph.propagate_pair)
        item = self.cold(item, graph.item_sets)  # cold items: their warm neighbours' view (evaluation)
        ui = torch.cat([user, item])  # [U + I, d]
        parts = []
        for k, purifier in enumerate(self.purifier):
            x = ids * torch.sigmoid(purifier(projected[k]))  # [I, d] purified
            adj, adj_t = getattr(self, f"ii_adj_{k}"), getattr(self, f"ii_adj_t_{k}")
            for _ in range(self.num_ii_layers):
                x = block_spmm(adj, adj_t, x)
            parts.append(torch.cat([block_spmm(graph.norm_ui, graph.norm_iu, x), x]))  # [U + I, d]
        side_views = torch.stack(parts)  # [M, U + I, d]
        # users have every modality (through their items); items' missing modalities are masked
        present = torch.cat([mask.new_ones(len(parts), self.num_users), mask], dim=1)  # [M, U + I]
        alpha = self.fusion.weights(side_views, present)  # [M, U + I], 0 where missing
        common = (alpha.unsqueeze(2) * side_views).sum(0)  # [U + I, d]
        side = common
        for k, preference in enumerate(self.preference):
            specific = torch.sigmoid(preference(ui)) * (side_views[k] - common)  # [U + I, d]
            side = side + specific * present[k].unsqueeze(1).to(specific.dtype)
        return ui, side / (len(parts) + 1)

    def forward(self, graph: BipartiteGraph, features=None) -> tuple[torch.Tensor, torch.Tensor]:
        ui, side = self.views(graph, features)
        return (ui + side).split([self.num_users, graph.num_items])

    def training_forward(self, graph: BipartiteGraph, features=None
                         ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        ui, side = self.views(graph, features)
        user, item = (ui + side).split([self.num_users, graph.num_items])
        return user, item, {"ui": ui.split([self.num_users, graph.num_items]),
                            "side": side.split([self.num_users, graph.num_items])}

    def ego_embeddings(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        return (self.user_embedding.weight,), (self.item_embedding.weight,)

    def extra_losses(self, step: TrainingStep) -> dict[str, torch.Tensor]:
        if "ui" in step.views:
            (ui_user, ui_item), (side_user, side_item) = step.views["ui"], step.views["side"]
        else:  # a direct call without the views of training_forward
            ui, side = self.views(step.graph, step.features)
            (ui_user, ui_item), (side_user, side_item) = (t.split([self.num_users, step.graph.num_items])
                                                          for t in (ui, side))
        users = torch.unique(step.users)  # [B_u]
        items = torch.unique(step.items[:, 0])  # [B_i] positives only; never cold (sampler)
        cl = (info_nce(side_item[items], ui_item[items], self.temperature)
              + info_nce(side_user[users], ui_user[users], self.temperature))
        rows = step.item_emb[step.items]  # [B, 1 + K, d]
        reg = l2_batch(step.user_emb[step.users], rows[:, 0], rows[:, 1:])
        return {"cl": cl, "emb_reg": reg}
