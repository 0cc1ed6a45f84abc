"""DRAGON: per-modality heterogeneous user-item graphs + homogeneous user-user and item-item graphs."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from mmrec.fusion import GraphSumFusion, ModalityProjector
from mmrec.graph.bipartite import BipartiteGraph, block_spmm
from mmrec.graph.cooccurrence import user_cooccurrence_topk
from mmrec.graph.knn import fused_knn_graph
from mmrec.models.base import ColdItemNeighbours, GraphRecommender
from mmrec.models.ops import normalize_rows


def softmax_rows_graph(neighbours: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W [U, U], W^T)`` as CSR: row ``u`` holds :math:`\\mathrm{softmax}` of the counts of its
    neighbours ``neighbours[u]`` (``-1`` entries are absent; a row without neighbours is empty)."""
    n = neighbours.shape[0]
    keep = neighbours >= 0  # [U, k]
    logits = counts.masked_fill(~keep, float("-inf"))
    weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # a row of -inf only (no neighbour): 0
    rows = torch.arange(n, device=neighbours.device).unsqueeze(1).expand_as(neighbours)[keep]
    cols, values = neighbours[keep], weights[keep]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        adj = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n), check_invariants=False).coalesce()
        return adj.to_sparse_csr(), adj.t().coalesce().to_sparse_csr()


class DRAGON(GraphRecommender):
    r"""DRAGON from `"Enhancing Dyadic Relations with Homogeneous Graphs for Multimodal
    Recommendation" <https://arxiv.org/abs/2301.12097>`_ (Zhou et al., ECAI 2023).

    **Heterogeneous graphs**, one per modality :math:`m`: users start from a free preference
    :math:`\mathbf p^m_u`, items from their projected features :math:`\mathbf f^m_i =
    \mathrm{MLP}_m(x^m_i)` (``d_m -> 4d -> d`` with a LeakyReLU), both row-normalised; ``L`` hops
    on the user-item graph :math:`\hat A` (LightGCN's normalisation) are *summed*:

    .. math::
        \mathbf h^m = \sum_{l=0}^{L} \hat A^l \mathbf x^m, \qquad
        \mathbf x^m = \Big(\frac{\mathbf p^m}{\lVert\mathbf p^m\rVert},
        \frac{\mathbf f^m}{\lVert\mathbf f^m\rVert}\Big)

    **Fusion** (internal, DRAGON's ``cat``): concatenation, the user's parts weighted by
    learned per-user modality weights :math:`a_{um}`:
    :math:`\mathbf h_u = \Vert_m\, a_{um}\mathbf h^m_u`, :math:`\mathbf h_i = \Vert_m\,\mathbf h^m_i`.

    **Homogeneous graphs.** Item-item: the frozen kNN graphs of the raw features,
    :math:`S = \sum_m w_m S^m` (``knn_k`` neighbours, :math:`D^{-1/2}AD^{-1/2}`, weights of the
    ``graph_sum`` fusion: the reference's image 0.1 / text 0.9). User-user: each user's
    ``user_knn_k`` users sharing the most training items, weighted by the softmax of the numbers
    of shared items :math:`c_{uv}` (:func:`mmrec.graph.cooccurrence.user_cooccurrence_topk`,
    built by :meth:`prepare` from the training graph when the run is assembled):

    .. math::
        \mathbf u = \mathbf h_u + \sum_{v} \beta_{uv}\mathbf h_v, \quad
        \beta_{uv} = \mathrm{softmax}_{v \in N^k_u}(c_{uv}), \qquad
        \mathbf i = \mathbf h_i + (S^{L_{ii}} \mathbf h)_i, \qquad \hat y_{ui} = \mathbf u^\top\mathbf i

    **Loss.** BPR + the framework's L2 term on the batch's users' free parameters
    (:math:`\mathbf p^m_u` and :math:`a_{u\cdot}`); items have no free parameters (their
    representation is content only).

    **The fusion** is internal and cannot be swapped: ``graph_sum`` is accepted only to weight
    the item-item graphs (as in FREEDOM).

    **Missing modalities.** :math:`\mathrm{MLP}_m` is a :class:`~mmrec.fusion.ModalityProjector`
    (a learned vector for a missing modality), and an item without modality :math:`m` has no
    edges in :math:`S^m`.

    **Cold items** (no training interaction) are represented by their content: their own
    :math:`\mathbf x^m_i` and their content neighbours in :math:`S`. Their user-item part
    :math:`\sum_{l\ge1}(\hat A^l\mathbf x^m)_i` is 0 (no edges); at evaluation it is estimated from
    their warm content neighbours' (:class:`~mmrec.models.base.ColdItemNeighbours`; an extension,
    not in the paper; ``cold_neighbours=0``: off). The item-item part always aggregates the
    unestimated representations, so warm items score the same in training and evaluation.

    Deviations from the reference code (MMRec ``dragon.py``, hongyurain/DRAGON): the raw
    features are constants (the reference fine-tunes them); a user with fewer than ``k``
    co-occurring users keeps those it has (the reference pads the list with random repeats,
    which changes the softmax weights); the user-user graph is built in memory from the training
    split (the reference reads a precomputed file); the loss is BPR with the natural log (the
    reference: :math:`\log_2`) and the L2 term is the framework's :math:`\frac{1}{2B}\sum\lVert\cdot\rVert^2`
    on the batch's rows (the reference: the mean of squares, the modality weights of all users;
    ``model.l2_weight`` = :math:`2/d` times the reference's ``reg_weight``); the preference
    weights :math:`a` are initialised at :math:`\approx 1/M` as in the reference but not
    re-normalised during training, as there. The reference's edge-dropped graphs are built but
    never used, so there is no edge dropout here either.

    Args:
        num_users, num_items: numbers of users and items.
        features: item features (kNN graphs, projections).
        fusion: fusion factory; only ``graph_sum`` is accepted (its weights weight the item-item
            graphs).
        embedding_dim: size :math:`d` of each modality's part (representations are ``M d``).
        num_ui_layers: hops :math:`L` on the user-item graph.
        num_ii_layers: hops :math:`L_{ii}` on the item-item graph.
        knn_k: neighbours per item in each modality's item-item graph.
        user_knn_k: co-occurring users kept per user.
        cold_neighbours: content neighbours per modality that estimate a cold item's user-item
            part (0: off).
    """

    uses_content = True
    supported_fusions = ("graph_sum",)

    def __init__(self, num_users: int, num_items: int, features, fusion: Callable[..., nn.Module],
                 embedding_dim: int = 64, num_ui_layers: int = 2, num_ii_layers: int = 1, knn_k: int = 10,
                 user_knn_k: int = 40, cold_neighbours: int = 10):
        super().__init__()
        if num_ui_layers < 0 or num_ii_layers < 0:
            raise ValueError(f"num_ui_layers and num_ii_layers must be >= 0, got {num_ui_layers}, {num_ii_layers}")
        if knn_k < 1 or user_knn_k < 1:
            raise ValueError(f"knn_k and user_knn_k must be >= 1, got {knn_k}, {user_knn_k}")
        self.num_users, self.num_items = num_users, num_items
        self.num_ui_layers, self.num_ii_layers, self.user_knn_k = num_ui_layers, num_ii_layers, user_knn_k
        graph_fusion: GraphSumFusion = fusion(feature_dims=features.dims, dim=embedding_dim)
        self.names = list(graph_fusion.names)
        ii, ii_t = fused_knn_graph(features, dict(zip(self.names, graph_fusion.weights.tolist())), knn_k)
        self.register_buffer("ii_adj", ii, persistent=False)  # [I, I] CSR, constant
        self.register_buffer("ii_adj_t", ii_t, persistent=False)
        # the user-user graph: built by prepare() from the training graph (constants, never saved)
        self.register_buffer("uu_adj", None, persistent=False)  # [U, U] CSR
        self.register_buffer("uu_adj_t", None, persistent=False)
        self.projector = ModalityProjector(features.dims, embedding_dim, hidden=4 * embedding_dim)  # MLP_m
        self.preference = nn.ParameterDict({  # p^m [U, d]
            m: nn.Parameter(nn.init.xavier_normal_(torch.empty(num_users, embedding_dim))) for m in self.names})
        # a_{um}: the reference's softmax of a small Xavier-normal draw, i.e. about 1/M each
        self.modality_weight = nn.Parameter(torch.softmax(nn.init.xavier_normal_(
            torch.empty(num_users, len(self.names))), dim=1))  # [U, M]
        self.cold = ColdItemNeighbours(features, cold_neighbours)  # 0: off

    def prepare(self, graph: BipartiteGraph) -> None:
        """Build the user-user co-occurrence graph from the training interactions of ``graph``
        (called when the run is assembled, for training and export alike)."""
        users, items = graph.edge_index
        neighbours, counts = user_cooccurrence_topk(users, items, graph.num_users, graph.num_items, self.user_knn_k)
        self.uu_adj, self.uu_adj_t = softmax_rows_graph(neighbours, counts)

    def forward(self, graph: BipartiteGraph, features=None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.uu_adj is None:
            raise RuntimeError("DRAGON.prepare(graph) builds the user-user graph: call it before the first forward "
                               "(mmrec.run.assemble does)")
        content, _ = self.projector(features)  # [M, I, d]
        users, items, propagated = [], [], []
        for k, m in enumerate(self.names):
            x_user, x_item = normalize_rows(self.preference[m]), normalize_rows(content[k])
            sum_user, sum_item = x_user, torch.zeros_like(x_item)
            h_user, h_item = x_user, x_item
            for _ in range(self.num_ui_layers):
                h_user, h_item = graph.propagate_pair(h_user, h_item)
                sum_user, sum_item = sum_user + h_user, sum_item + h_item
            users.append(self.modality_weight[:, k:k + 1] * sum_user)  # a_um h^m_u
            items.append(x_item)
            propagated.append(sum_item)  # the user-item part sum_{l>=1} (A^l x)_i
        user = torch.cat(users, dim=1)  # [U, M d]
        prop = torch.cat(propagated, dim=1)  # [I, M d]
        h_item = torch.cat(items, dim=1) + prop  # [I, M d]
        user = user + block_spmm(self.uu_adj, self.uu_adj_t, user)
        neighbours = h_item
        for _ in range(self.num_ii_layers):
            neighbours = block_spmm(self.ii_adj, self.ii_adj_t, neighbours)
        # cold items: their user-item part estimated from warm content neighbours (evaluation)
        item = h_item + neighbours + (self.cold(prop, graph.item_sets) - prop)
        return user, item

    def ego_embeddings(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        # items have no free parameters (no ID embedding): no item blocks, the L2 term's item part is 0
        return (*self.preference.values(), self.modality_weight), ()
