"""LGMRec: local (user-item graph) and global (hypergraph) embeddings of IDs and modalities."""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmrec.fusion import GraphSumFusion, ModalityProjector
from mmrec.graph.bipartite import BipartiteGraph, layer_mean
from mmrec.graph.cooccurrence import interaction_sum
from mmrec.losses import info_nce
from mmrec.models.base import ColdItemNeighbours, GraphRecommender, TrainingStep
from mmrec.models.ops import normalize_rows


class LGMRec(GraphRecommender):
    r"""LGMRec from `"LGMRec: Local and Global Graph Learning for Multimodal Recommendation"
    <https://arxiv.org/abs/2312.16400>`_ (Guo et al., AAAI 2024).

    **Local graph embeddings.** Collaborative (CGE): LightGCN on the user-item graph,
    :math:`(\bar{\mathbf e}_u, \bar{\mathbf e}_i) = \frac{1}{L+1}\sum_{l=0}^{L}\hat A^l\mathbf E`.
    Modality-specific (MGE), per modality :math:`m`: item features projected,
    :math:`\mathbf f^m_i = W_m x^m_i`, users initialised with the mean of their items',
    :math:`\mathbf f^m_u = \frac{1}{|N_u|}\sum_{i\in N_u}\mathbf f^m_i`, then :math:`L_m` hops on
    the same graph (the last hop kept): :math:`\tilde{\mathbf f}^m = \hat A^{L_m}\mathbf f^m`.

    .. math::
        \mathbf e^{loc} = \bar{\mathbf e} + \sum_m s_m \frac{\tilde{\mathbf f}^m}{\lVert\tilde{\mathbf f}^m\rVert}

    **Global hypergraph embeddings.** Per modality, ``num_hyperedges`` (:math:`A`) learnable
    hyperedges: items' memberships from their features, users' from the sum over their items,

    .. math::
        H^m_I = \mathrm{softmax}_\tau\big(x^m V_m\big) \in \mathbb R^{I\times A}, \qquad
        H^m_U = \mathrm{softmax}_\tau\big(R\, x^m V_m\big) \in \mathbb R^{U\times A}

    (Gumbel-softmax with temperature :math:`\tau` in training, the plain softmax of the logits
    over :math:`\tau` in evaluation; dropout with keep rate ``keep_rate`` on both in training),
    then ``num_hyper_layers`` rounds of message passing through the hyperedges starting from
    the items' CGE:

    .. math::
        \Lambda^m = {H^m_I}^\top \mathbf g^m_I, \quad \mathbf g^m_I \leftarrow H^m_I \Lambda^m,
        \quad \mathbf g^m_U = H^m_U \Lambda^m, \qquad \mathbf g^m_I{}^{(0)} = \bar{\mathbf e}_I

    .. math::
        \mathbf e = \mathbf e^{loc} + \alpha\,\frac{\mathbf g}{\lVert\mathbf g\rVert}, \qquad
        \mathbf g = \sum_m s_m \mathbf g^m, \qquad \hat y_{ui} = \mathbf e_u^\top\mathbf e_i

    **Loss.** BPR on :math:`\hat y` + ``cl_weight`` :math:`\times` the hypergraph contrastive term
    ``hyper_cl`` (:meth:`extra_losses`): for every pair of modalities :math:`m < m'`,
    :math:`\mathrm{InfoNCE}_\tau(\mathbf g^m_{\mathcal B_u}, \mathbf g^{m'}_{\mathcal B_u}) +
    \mathrm{InfoNCE}_\tau(\mathbf g^m_{\mathcal B_i}, \mathbf g^{m'}_{\mathcal B_i})` over the
    batch's distinct users and distinct positive items (:func:`mmrec.losses.info_nce`), + the
    framework's L2 term on the ID embeddings.

    **Fusion.** Internal: the modalities' graph embeddings are summed (locally normalised MGEs,
    then the hypergraph embeddings). The ``graph_sum`` fusion only weights those sums:
    :math:`s_m = M w_m` for its normalised weights :math:`w` (equal weights, the default:
    :math:`s_m = 1`, the reference); other fusions are refused.

    **Missing modalities.** :math:`W_m` is a :class:`~mmrec.fusion.ModalityProjector` (a learned
    vector for a missing modality); an item that lacks modality :math:`m` belongs to none of its
    hyperedges (its row of :math:`H^m_I` is 0 and its logits do not enter :math:`R\,x^m V_m`).

    **Cold items** (no training interaction). Their ID is set to 0 and they have no edges, so
    their local embedding is 0 in training; at evaluation it is estimated from their warm content
    neighbours' (:class:`~mmrec.models.base.ColdItemNeighbours`; an extension, not in the paper;
    ``cold_neighbours=0``: off). Their global embedding comes from their own content (their
    hyperedge memberships), so the score of a cold item follows its features.

    Deviations from the reference code (georgeguo-cn/LGMRec, MMRec ``lgmrec.py``): the
    contrastive negatives are the batch's other distinct users / items, not all of them, and the
    term is a batch mean, not a sum (hence the default ``cl_weight`` is the reference's 1e-4
    times its 2048-pair batch, about 0.2); evaluation uses the softmax, not a Gumbel draw, so that
    rankings are deterministic; :math:`W_m` has a bias and a learned missing vector; the L2 term
    is the framework's on the batch's ID embeddings (the reference: unsquared norms of the final
    batch embeddings, weight 1e-6); more than two modalities contrast every pair.

    Args:
        num_users, num_items: numbers of users and items.
        features: item features (dimensions; the cold-item kNN graph is built from them).
        fusion: fusion factory; only ``graph_sum`` is accepted (it weights the modality sums).
        embedding_dim: size :math:`d` of the ID embeddings and of the projected features.
        num_ui_layers: LightGCN layers :math:`L` of the CGE.
        num_mm_layers: hops :math:`L_m` of the MGE (0: the projected features themselves).
        num_hyper_layers: rounds of hypergraph message passing (>= 1).
        num_hyperedges: hyperedges :math:`A` per modality.
        keep_rate: keep probability of the dropout on the hyperedge memberships (1: none).
        alpha: weight :math:`\alpha` of the global embeddings.
        temperature: :math:`\tau` of the (Gumbel-)softmax and of the InfoNCE term.
        cl_weight: weight of the ``hyper_cl`` term.
        cold_neighbours: content neighbours per modality that estimate a cold item's local
            embedding (0: off).
    """

    uses_content = True
    supported_fusions = ("graph_sum",)

    def __init__(self, num_users: int, num_items: int, features, fusion: Callable[..., nn.Module],
                 embedding_dim: int = 64, num_ui_layers: int = 2, num_mm_layers: int = 2, num_hyper_layers: int = 1,
                 num_hyperedges: int = 4, keep_rate: float = 0.5, alpha: float = 0.3, temperature: float = 0.2,
                 cl_weight: float = 0.2, cold_neighbours: int = 10):
        super().__init__()
        if num_ui_layers < 0 or num_mm_layers < 0:
            raise ValueError(f"num_ui_layers and num_mm_layers must be >= 0, got {num_ui_layers}, {num_mm_layers}")
        if num_hyper_layers < 1 or num_hyperedges < 1:
            raise ValueError(f"num_hyper_layers and num_hyperedges must be >= 1, got {num_hyper_layers}, "
                             f"{num_hyperedges}")
        if not 0.0 < keep_rate <= 1.0:
            raise ValueError(f"keep_rate must lie in (0, 1], got {keep_rate}")
        if temperature <= 0 or cl_weight < 0 or alpha < 0:
            raise ValueError(f"temperature must be > 0, cl_weight and alpha >= 0; got {temperature}, {cl_weight}, "
                             f"{alpha}")
        self.num_ui_layers, self.num_mm_layers, self.num_hyper_layers = num_ui_layers, num_mm_layers, num_hyper_layers
        self.keep_rate, self.alpha, self.temperature = keep_rate, alpha, temperature
        self.loss_terms = ("hyper_cl",)
        self.loss_weights = {"hyper_cl": cl_weight}
        graph_fusion: GraphSumFusion = fusion(feature_dims=features.dims, dim=embedding_dim)
        self.names = list(graph_fusion.names)
        # s_m = M w_m: 1 per modality for equal weights (the reference's plain sums)
        self.register_buffer("modality_scale", graph_fusion.weights * len(self.names), persistent=False)  # [M]
        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(num_items, embedding_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.projector = ModalityProjector(features.dims, embedding_dim)  # W_m
        for layer in self.projector.proj.values():
            nn.init.xavier_uniform_(layer.weight)  # as the reference's item_*_trs
            nn.init.zeros_(layer.bias)
        self.hyperedges = nn.ModuleDict({m: nn.Linear(features.dims[m], num_hyperedges, bias=False)
                                         for m in self.names})  # V_m
        for layer in self.hyperedges.values():
            nn.init.xavier_uniform_(layer.weight)
        self.dropout = nn.Dropout(1.0 - keep_rate)
        self.cold = ColdItemNeighbours(features, cold_neighbours)  # 0: off

    # -- the three parts -------------------------------------------------------------
    def collaborative(self, graph: BipartiteGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """CGE ``(users [U, d], items [I, d])``: LightGCN layer mean; cold items' IDs are 0."""
        return layer_mean(self.user_embedding.weight, self.known_item_ids(self.item_embedding.weight, graph),
                          self.num_ui_layers, graph.propagate_pair)

    def modality_local(self, graph: BipartiteGraph, features) -> tuple[torch.Tensor, torch.Tensor]:
        """MGE ``(users [U, d], items [I, d])``: :math:`\\sum_m s_m` of the row-normalised last hops."""
        projected, _ = self.projector(features)  # [M, I, d]
        users, items = 0.0, 0.0
        for scale, part in zip(self.modality_scale, projected):
            h_user, h_item = interaction_sum(graph, part, mean=True), part  # [U, d], [I, d]
            for _ in range(self.num_mm_layers):
                h_user, h_item = graph.propagate_pair(h_user, h_item)
            users = users + scale * normalize_rows(h_user)
            items = items + scale * normalize_rows(h_item)
        return users, items

    def memberships(self, graph: BipartiteGraph, features, m: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Hyperedge memberships ``(H_U [U, A], H_I [I, A])`` of modality ``m`` (rows of items
        without it are 0)."""
        values, mask = features[m]
        present = mask.unsqueeze(1).to(values.dtype)  # [I, 1]
        item_logits = self.hyperedges[m](values) * present  # [I, A]; missing: no logits
        user_logits = interaction_sum(graph, item_logits)  # [U, A]: R x V
        if self.training:
            h_item = F.gumbel_softmax(item_logits, tau=self.temperature, dim=1)
            h_user = F.gumbel_softmax(user_logits, tau=self.temperature, dim=1)
        else:  # the expected assignment, no noise: evaluation is deterministic
            h_item = torch.softmax(item_logits / self.temperature, dim=1)
            h_user = torch.softmax(user_logits / self.temperature, dim=1)
        return self.dropout(h_user), self.dropout(h_item * present)

    def hypergraph(self, graph: BipartiteGraph, features, cge_items: torch.Tensor
                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per modality, the global embeddings ``(g_U [U, d], g_I [I, d])``."""
        out = []
        for m in self.names:
            h_user, h_item = self.memberships(graph, features, m)
            g_item = cge_items
            for _ in range(self.num_hyper_layers):
                hub = h_item.T @ g_item  # [A, d]: the hyperedges' messages
                g_item, g_user = h_item @ hub, h_user @ hub  # [I, d], [U, d]
            out.append((g_user, g_item))
        return out

    # -- the contract ----------------------------------------------------------------
    def _represent(self, graph: BipartiteGraph, features
                   ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        cge_user, cge_item = self.collaborative(graph)
        mge_user, mge_item = self.modality_local(graph, features)
        # cold items: 0 in both local parts (no ID, no edges); estimated at evaluation from warm
        # content neighbours (with num_mm_layers = 0 their MGE is their own content, kept)
        local_item = self.cold(cge_item, graph.item_sets) + (
            self.cold(mge_item, graph.item_sets) if self.num_mm_layers else mge_item)
        hyper = self.hypergraph(graph, features, cge_item)
        g_user = sum(s * g for s, (g, _) in zip(self.modality_scale, hyper))  # [U, d]
        g_item = sum(s * g for s, (_, g) in zip(self.modality_scale, hyper))  # [I, d]
        user = cge_user + mge_user + self.alpha * normalize_rows(g_user)
        item = local_item + self.alpha * normalize_rows(g_item)
        return user, item, hyper

    def forward(self, graph: BipartiteGraph, features=None) -> tuple[torch.Tensor, torch.Tensor]:
        user, item, _ = self._represent(graph, features)
        return user, item

    def training_forward(self, graph: BipartiteGraph, features=None
                         ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        user, item, hyper = self._represent(graph, features)
        return user, item, {"hyper": hyper}

    def ego_embeddings(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        return (self.user_embedding.weight,), (self.item_embedding.weight,)

    def extra_losses(self, step: TrainingStep) -> dict[str, torch.Tensor]:
        hyper = step.views["hyper"]
        users = torch.unique(step.users)  # [B_u]: a repeated user would be its own negative
        items = torch.unique(step.items[:, 0])  # [B_i]: positives only (never cold)
        loss = step.user_emb.new_zeros(())
        for (gu_a, gi_a), (gu_b, gi_b) in combinations(hyper, 2):  # every pair of modalities
            loss = loss + info_nce(gu_a[users], gu_b[users], self.temperature) \
                + info_nce(gi_a[items], gi_b[items], self.temperature)
        return {"hyper_cl": loss}
