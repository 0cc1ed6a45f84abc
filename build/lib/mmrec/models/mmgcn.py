"""MMGCN: one graph convolution network per modality."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mmrec.fusion import LateFusion
from mmrec.graph.bipartite import BipartiteGraph
from mmrec.models.base import ColdItemNeighbours, GraphRecommender
from mmrec.models.ops import normalize_rows


class _ModalityGCN(nn.Module):
    """The per-modality tower: user preference vectors + item content, ``num_layers`` hops."""

    def __init__(self, num_users: int, dim: int, num_layers: int, concat: bool):
        super().__init__()
        self.preference = nn.Embedding(num_users, dim)  # modality-specific user preferences
        nn.init.xavier_uniform_(self.preference.weight)
        self.conv = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))  # W_l (aggregation)
        self.self_ = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))  # W'_l (own features)
        self.combine = nn.ModuleList(nn.Linear(2 * dim, dim) for _ in range(num_layers)) if concat else None

    def forward(self, graph: BipartiteGraph, item_x: torch.Tensor, id_user: torch.Tensor,
                id_item: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_u = normalize_rows(self.preference.weight)  # [U, d]
        x_i = normalize_rows(item_x)  # [I, d]
        for layer in range(len(self.conv)):
            # Aggregation: messages W_l x_j + b_l from neighbours over the normalised graph.
            # Items receive R~^T (x_u W^T + 1 b^T) = (R~^T x_u) W^T + (R~^T 1) b^T: the same
            # value with the linear map applied to I aggregated rows instead of U user rows.
            conv = self.conv[layer]
            h_u, agg_i = graph.propagate_pair(x_u, conv(x_i))  # [U, d], [I, d]
            h_i = F.linear(agg_i, conv.weight) + graph.item_weight_sum.unsqueeze(1) * conv.bias  # [I, d]
            h_u, h_i = F.leaky_relu(h_u), F.leaky_relu(h_i)
            # Own representation plus the (shared) ID embedding.
            s_u = F.leaky_relu(self.self_[layer](x_u)) + id_user
            s_i = F.leaky_relu(self.self_[layer](x_i)) + id_item
            if self.combine is not None:
                x_u = F.leaky_relu(self.combine[layer](torch.cat([h_u, s_u], dim=1)))
                x_i = F.leaky_relu(self.combine[layer](torch.cat([h_i, s_i], dim=1)))
            else:
                x_u, x_i = F.leaky_relu(h_u + s_u), F.leaky_relu(h_i + s_i)
        return x_u, x_i


class MMGCN(GraphRecommender):
    r"""MMGCN from `"MMGCN: Multi-modal Graph Convolution Network for Personalized
    Recommendation of Micro-video" <https://arxiv.org/abs/1908.03536>`_ (Wei et al., MM 2019).

    For every modality :math:`m` a separate GCN runs over the user-item graph. Users start
    from modality-specific preference vectors :math:`\mathbf{p}^m_u`, items from their
    projected content :math:`E_m f^m_i`; layer :math:`l` computes

    .. math::
        \mathbf{h}^{l}_v = \mathrm{LeakyReLU}\Big(\sum_{j \in N(v)} \hat A_{vj} W^m_l \mathbf{x}^{l-1}_j\Big),
        \quad
        \mathbf{s}^{l}_v = \mathrm{LeakyReLU}(W'^m_l \mathbf{x}^{l-1}_v) + \mathbf{e}_v,
        \quad
        \mathbf{x}^{l}_v = \mathrm{LeakyReLU}(\mathbf{h}^l_v + \mathbf{s}^l_v)
        \;\text{or}\; \mathrm{LeakyReLU}(W^c_l[\mathbf{h}^l_v; \mathbf{s}^l_v])\ (\texttt{concat})

    with :math:`\mathbf{e}_v` a learned ID embedding shared by the modalities, and the
    modalities are combined at the score level (``fusion=late``):
    :math:`\hat y_{ui} = \sum_m w_m \langle \mathbf{x}^{L,m}_u, \mathbf{x}^{L,m}_i\rangle`.

    Fixes against a popular reimplementation (MMRec's, like the authors'): the ID embedding
    and the user preferences are trained parameters (there they were plain tensors, never
    trained, so that their L2 term did nothing) and ``concat`` is a typed bool (a ``'False'``
    string flag was always true, so the concat variant always ran, with 3 layers whatever
    ``n_layers`` said). Deviations: aggregation uses the symmetric normalisation of LightGCN
    (the references average over neighbours); the modality representations are combined by
    late fusion of scores rather than averaged, which removes the cross-modality terms
    :math:`\langle x^m_u, x^{m'}_i\rangle`; every modality is projected to the same ``d``
    (the references: image through an MLP to 256, text kept at 384); the sum variant adds
    :math:`\mathbf h` directly (the references map it by a linear layer first); the
    aggregation maps :math:`W_l` have a bias (not in the references); 2 layers by default.

    Cold items (no training interaction; an extension, not in the paper): a cold item has no
    neighbours to aggregate and an untrained ID embedding (set to 0), so its tower outputs
    are unlike any item seen in training; its final representation is estimated from
    those of its warm content neighbours
    (:class:`~mmrec.models.base.ColdItemNeighbours`; ``cold_neighbours=0``: its own tower
    outputs).

    Args:
        num_users, num_items: numbers of users and items.
        features: item features (dimensions are read from it).
        fusion: fusion factory; only ``late`` is accepted.
        embedding_dim: size :math:`d` of every representation.
        num_layers: GCN layers per modality.
        concat: combine aggregation and own representation by concatenation + linear map
            instead of a sum.
        cold_neighbours: content neighbours per modality that estimate a cold item's
            representation (0: off).
    """

    uses_content = True
    supported_fusions = ("late",)

    def __init__(self, num_users: int, num_items: int, features, fusion: Callable[..., nn.Module],
                 embedding_dim: int = 64, num_layers: int = 2, concat: bool = False, cold_neighbours: int = 10):
        super().__init__()
        self.num_users = num_users
        self.fusion: LateFusion = fusion(feature_dims=features.dims, dim=embedding_dim)
        self.id_user = nn.Embedding(num_users, embedding_dim)
        self.id_item = nn.Embedding(num_items, embedding_dim)
        nn.init.xavier_uniform_(self.id_user.weight)
        nn.init.xavier_uniform_(self.id_item.weight)
        self.towers = nn.ModuleList(_ModalityGCN(num_users, embedding_dim, num_layers, concat)
                                    for _ in features.dims)
        self.cold = ColdItemNeighbours(features, cold_neighbours)  # 0: off

    def forward(self, graph: BipartiteGraph, features=None) -> tuple[torch.Tensor, torch.Tensor]:
        item_x, _ = self.fusion.projector(features)  # [M, I, d] (missing -> learned vector)
        id_item = self.known_item_ids(self.id_item.weight, graph)  # cold items: content only
        parts = [tower(graph, item_x[m], self.id_user.weight, id_item)
                 for m, tower in enumerate(self.towers)]
        user, item = self.fusion.combine([p[0] for p in parts], [p[1] for p in parts])
        item = self.cold(item, graph.item_sets)  # cold items: their warm neighbours' representation
        return user, item

    def ego_embeddings(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        return (self.id_user.weight, *(t.preference.weight for t in self.towers)), (self.id_item.weight,)
