"""LayerGCN: layer-refined propagation on a degree-sensitively pruned user-item graph."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmrec.graph.bipartite import BipartiteGraph
from mmrec.graph.views import dropped_edge_blocks
from mmrec.models.base import GraphRecommender


class LayerGCN(GraphRecommender):
    r"""LayerGCN from `"Layer-refined Graph Convolutional Networks for Recommendation"
    <https://arxiv.org/abs/2207.11088>`_ (Zhou, Lin, Liu & Miao, ICDE 2023).

    Each propagated layer is re-weighted, node by node, by its cosine similarity to the node's
    ego (layer-0) embedding, and the refined layer is what the next hop propagates:

    .. math::
        \tilde{\mathbf E}^{(l)} = \hat{\mathbf A}\,\mathbf E^{(l-1)}, \qquad
        \alpha^{(l)}_v = \cos\big(\tilde{\mathbf e}^{(l)}_v, \mathbf e^{(0)}_v\big), \qquad
        \mathbf e^{(l)}_v = \alpha^{(l)}_v\, \tilde{\mathbf e}^{(l)}_v, \qquad
        \mathbf E = \sum_{l=1}^{L} \mathbf E^{(l)}

    (a sum without the ego layer, as in the reference code), scored by dot product, trained
    with BPR plus :math:`\lambda_{L2}\lVert \mathbf E^{(0)}_{batch}\rVert^2`. In training,
    :math:`\hat{\mathbf A}` is the graph after edge dropout: a share ``edge_dropout`` of the
    edges is removed and the rest re-normalised. The pruning is degree-sensitive (edges kept
    with probability :math:`\propto 1/\sqrt{d_u d_i}`,
    :meth:`~mmrec.graph.bipartite.BipartiteGraph.degree_pruned_blocks`: edges between popular
    nodes go first) or, with probability ``random_prune_share``, uniform
    (:func:`~mmrec.graph.views.dropped_edge_blocks`). Evaluation uses the full graph.

    Deviations from the reference (enoche/MMRec ``layergcn.py``): the pruned graph is drawn
    anew at every step (the reference draws it once per epoch) and the kind of pruning is drawn
    per step with probability ``random_prune_share`` (the reference alternates epochs:
    degree-sensitive, uniform, degree-sensitive, ...; ``0.5`` gives the same mixture in
    expectation, ``0`` the paper's degree-sensitive pruning alone); uniform pruning drops each
    edge independently (the reference keeps exactly ``(1 - dropout) E`` edges, a difference of
    :math:`O(\sqrt E)` edges). Scales match: the reference sums BPR and the half squared L2
    over the batch, this framework averages both, so ``reg_weight`` carries over as
    ``l2_weight``. Cold items have a zero ID and no edges: 0 ("unknown").

    Args:
        num_users: number of users :math:`U`.
        num_items: number of items :math:`I`.
        embedding_dim: size :math:`d` of the ID embeddings.
        num_layers: propagation hops :math:`L` (at least 1).
        edge_dropout: share of the edges removed at each training step (0: none).
        random_prune_share: probability that a step's pruning is uniform rather than
            degree-sensitive.
    """

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64, num_layers: int = 4,
                 edge_dropout: float = 0.1, random_prune_share: float = 0.5):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1 (the ego layer is not part of the output), got {num_layers}")
        if not 0.0 <= edge_dropout < 1.0:
            raise ValueError(f"edge_dropout must lie in [0, 1), got {edge_dropout}")
        if not 0.0 <= random_prune_share <= 1.0:
            raise ValueError(f"random_prune_share must lie in [0, 1], got {random_prune_share}")
        self.num_layers = num_layers
        self.edge_dropout = edge_dropout
        self.random_prune_share = random_prune_share
        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(num_items, embedding_dim)
        # Xavier-uniform per table, as the reference initialises its two tables
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)

    def pruned_blocks(self, graph: BipartiteGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step's pruned, re-normalised graph ``(R~ [U, I], R~^T [I, U])``."""
        if float(torch.rand(())) < self.random_prune_share:
            return dropped_edge_blocks(graph, self.edge_dropout)
        return graph.degree_pruned_blocks(1.0 - self.edge_dropout)

    def propagate(self, graph: BipartiteGraph, blocks: tuple[torch.Tensor, torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer-refined propagation over ``blocks`` (``None``: the full graph):
        ``(users [U, d], items [I, d])``, the sum of the refined layers ``1..L``."""
        ego_user = self.user_embedding.weight
        ego_item = self.known_item_ids(self.item_embedding.weight, graph)  # cold items: 0 ("unknown")
        h_user, h_item = ego_user, ego_item
        sum_user, sum_item = torch.zeros_like(ego_user), torch.zeros_like(ego_item)
        for _ in range(self.num_layers):
            h_user, h_item = graph.propagate_pair(h_user, h_item, blocks)
            # alpha_v [N, 1]: similarity to the ego layer (0 for a zero row: cosine_similarity's eps)
            h_user = h_user * F.cosine_similarity(h_user, ego_user, dim=-1).unsqueeze(1)
            h_item = h_item * F.cosine_similarity(h_item, ego_item, dim=-1).unsqueeze(1)
            sum_user, sum_item = sum_user + h_user, sum_item + h_item
        return sum_user, sum_item

    def forward(self, graph: BipartiteGraph, features=None) -> tuple[torch.Tensor, torch.Tensor]:
        pruned = self.training and self.edge_dropout > 0
        return self.propagate(graph, self.pruned_blocks(graph) if pruned else None)

    def ego_embeddings(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        return (self.user_embedding.weight,), (self.item_embedding.weight,)
