"""GRCN: graph-refined convolution that prunes noisy user-item edges by content affinity."""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mmrec.fusion import LateFusion
from mmrec.graph.bipartite import BipartiteGraph, layer_mean
from mmrec.models.base import ColdItemNeighbours, GraphRecommender
from mmrec.models.ops import normalize_rows


class GRCN(GraphRecommender):
    r"""GRCN from `"Graph-Refined Convolutional Network for Multimedia Recommendation with
    Implicit Feedback" <https://arxiv.org/abs/2008.01310>`_ (Wei et al., MM 2020).

    **Graph refining.** Per modality :math:`m`, items have normalised projected content
    :math:`\mathbf h^m_i` and users a preference prototype :math:`\mathbf p^m_u`, obtained by
    ``routing_iters`` rounds of routing from a learned initial vector:

    .. math::
        a^m_{ui} = \mathrm{softmax}_{i \in N(u)} \langle \mathbf p^m_u, \mathbf h^m_i\rangle,
        \qquad \mathbf p^m_u \leftarrow \mathrm{normalize}\big(\mathbf q^m_u + \sum_{i \in N(u)}
        a^m_{ui}\mathbf h^m_i\big).

    The affinity of a training edge is its cosine in the best-agreeing modality,
    :math:`s_{ui} = \max_m \langle \mathbf p^m_u, \mathbf h^m_i \rangle \in [-1, 1]`, and its
    refined weight is :math:`w_{ui} = \max(0, s_{ui})`. **Pruning:** an edge whose content
    disagrees with the user's preference in every modality (:math:`s_{ui} \le 0`) gets weight
    exactly 0 and carries no message; the others are down-weighted in proportion to their
    affinity. Weights are then normalised with weighted degrees,
    :math:`\tilde w_{ui} = w_{ui}/\sqrt{d^w_u d^w_i}`, :math:`d^w_v = \sum_{e \ni v} w_e`.
    The refining is learned end to end: gradients reach the prototypes and projections
    through the edge weights.

    **Graph convolution.** ID embeddings are propagated ``num_layers`` hops over the refined
    graph and averaged (LightGCN style). Representations are the ID part concatenated with
    the modality parts (users :math:`\mathbf p^m_u`, items :math:`\mathbf h^m_i`) combined by
    late fusion, so :math:`\hat y_{ui} = \langle \mathbf e_u, \mathbf e_i\rangle + \sum_m w_m
    \langle \mathbf p^m_u, \mathbf h^m_i\rangle`.

    Cold items (no training interaction) have no edges and an untrained ID embedding: their
    content part :math:`\mathbf h^m_i` is scored against every user's prototypes, and their
    ID part is estimated from the ID parts of their warm content neighbours
    (:class:`~mmrec.models.base.ColdItemNeighbours`; an extension, not in the paper; with
    ``cold_neighbours=0`` it is 0).

    Deviations: the refined weight uses ``max`` over modalities (one of the paper's options)
    and a single ``relu`` pruning rule; the modality towers are not propagated again after
    refining (the prototypes already aggregate the user's items); gradients flow through the
    last routing round only (the earlier rounds choose the routing weights under a
    stop-gradient, as capsule-routing implementations do), which halves the step's sparse
    work at ``routing_iters=3``. Against the MMRec / authors' code: there an edge's weight is
    a softmax attention over the node's edges times a learned per-node confidence (here the
    prototype-content cosine; pruning is the same ``relu``); ID embeddings are
    L2-normalised, summed over neighbours with the refined weights and over layers (here
    normalised by weighted degrees and averaged over layers, LightGCN style); an item's
    content part also adds one attention hop over its users' preferences, a collaborative
    term this content part has not; the L2 term there covers the modality preferences too
    (here the ID embeddings only). Their routing step is in effect a no-op (its messages are
    sent from users to items, so users receive nothing); here routing runs as the paper says.

    Args:
        num_users, num_items: numbers of users and items.
        features: item features (dimensions are read from it).
        fusion: fusion factory; only ``late`` is accepted.
        embedding_dim: size of the ID embeddings and of each modality part.
        num_layers: hops on the refined graph.
        routing_iters: rounds of prototype routing.
        cold_neighbours: content neighbours per modality that estimate a cold item's ID part
            (0: the ID part of a cold item is 0).
    """

    uses_content = True
    supported_fusions = ("late",)

    def __init__(self, num_users: int, num_items: int, features, fusion: Callable[..., nn.Module],
                 embedding_dim: int = 64, num_layers: int = 2, routing_iters: int = 3, cold_neighbours: int = 10):
        super().__init__()
        self.num_layers = num_layers
        self.routing_iters = routing_iters
        self.fusion: LateFusion = fusion(feature_dims=features.dims, dim=embedding_dim)
        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(num_items, embedding_dim)
        self.prototype_init = nn.Parameter(torch.empty(len(features.dims), num_users, embedding_dim))
        for w in (self.user_embedding.weight, self.item_embedding.weight):
            nn.init.xavier_uniform_(w)
        nn.init.xavier_uniform_(self.prototype_init)
        self.cold = ColdItemNeighbours(features, cold_neighbours)  # 0: off

    def prototypes_and_content(self, graph: BipartiteGraph, features) -> tuple[torch.Tensor, torch.Tensor]:
        """``(p [M, U, d], h [M, I, d])``, both row-normalised."""
        h, _ = self.fusion.projector(features)  # [M, I, d]
        h = normalize_rows(h)
        protos = []
        # per modality (unbind: one cheap backward, unlike repeated indexing); edge-level work
        # is sparse, so no [E, d] tensor is ever built
        for init, h_m in zip(self.prototype_init.unbind(0), h.unbind(0)):
            # rounds 1..T-1 only choose the routing weights: run without gradient (the
            # stop-gradient of capsule routing); round T is differentiable in init and h
            with torch.no_grad():
                p = normalize_rows(init)  # [U, d]
                for _ in range(self.routing_iters - 1):
                    p = self._route(graph, init, p, h_m)
            protos.append(self._route(graph, init, p, h_m) if self.routing_iters else normalize_rows(init))
        return torch.stack(protos), h

    @staticmethod
    def _route(graph: BipartiteGraph, init: torch.Tensor, p: torch.Tensor, h_m: torch.Tensor) -> torch.Tensor:
        """One routing round: ``normalize(init + sum_i softmax_i(<p_u, h_i>) h_i)`` ``[U, d]``.

        ``p`` and ``h_m`` have unit rows, so the logits are cosines in ``[-1, 1]`` and the
        softmax needs no max shift: the round aggregates ``exp(<p_u, h_i>) h_i`` in one
        sparse product and divides each user's row by its sum of weights.
        """
        weight = graph.edge_dot(p, h_m).exp()  # [E], in [1/e, e]
        total = graph.edge_sums(weight, "user")  # [U]
        # a user without training edges has total 0 and an aggregate of 0: dividing by 1 keeps
        # its init (any user with edges has total >= 1/e)
        aggregate = graph.spmm_values(weight, h_m, "ui") / total.masked_fill(total == 0, 1.0).unsqueeze(1)  # [U, d]
        return normalize_rows(init + aggregate)

    def edge_weights(self, graph: BipartiteGraph, features) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(p, h, w)``: prototypes, content and the refined weight of every training edge,
        ``w_ui = max(0, max_m <p_u^m, h_i^m>)`` ``[E]``."""
        p, h = self.prototypes_and_content(graph, features)
        affinity = torch.stack([graph.edge_dot(p_m, h_m) for p_m, h_m in zip(p.unbind(0), h.unbind(0))])  # [M, E]
        return p, h, F.relu(affinity.max(dim=0).values)

    def forward(self, graph: BipartiteGraph, features=None) -> tuple[torch.Tensor, torch.Tensor]:
        p, h, weights = self.edge_weights(graph, features)
        values = graph.normalized_edge_values(weights)
        id_u, id_i = layer_mean(self.user_embedding.weight,
                                self.known_item_ids(self.item_embedding.weight, graph), self.num_layers,
                                partial(graph.propagate_weighted, values))
        id_i = self.cold(id_i, graph.item_sets)  # cold items: their warm neighbours' ID part
        content_u, content_i = self.fusion.combine(list(p), list(h))
        return torch.cat([id_u, content_u], dim=1), torch.cat([id_i, content_i], dim=1)

    def ego_embeddings(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        return (self.user_embedding.weight,), (self.item_embedding.weight,)
