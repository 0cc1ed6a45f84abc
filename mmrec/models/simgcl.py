"""SimGCL and XSimGCL: graph contrastive learning with noise-perturbed LightGCN views."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmrec.graph.bipartite import BipartiteGraph
from mmrec.graph.views import noisy_layers
from mmrec.losses import info_nce
from mmrec.models.base import GraphRecommender, TrainingStep

Layers = list[tuple[torch.Tensor, torch.Tensor]]


def batch_contrast(step: TrainingStep, view_a: tuple[torch.Tensor, torch.Tensor],
                   view_b: tuple[torch.Tensor, torch.Tensor], temperature: float) -> torch.Tensor:
    r"""InfoNCE between two views for the batch's distinct users plus the same for its distinct
    positive items (SELFRec's ``cal_cl_loss``):

    .. math:: \mathcal L_{cl} = \mathrm{InfoNCE}_\tau(Z'_{\mathcal B_u}, Z''_{\mathcal B_u})
              + \mathrm{InfoNCE}_\tau(Z'_{\mathcal B_i}, Z''_{\mathcal B_i})

    Distinct rows only: a user drawn twice would otherwise be its own negative.

    Args:
        step: the training step (its ``users [B]`` and positives ``items[:, 0]``).
        view_a, view_b: ``(users [U, d], items [I, d])`` tables of the two views.
        temperature: :math:`\tau` of :func:`mmrec.losses.info_nce`.
    """
    users = torch.unique(step.users)  # [B_u]
    items = torch.unique(step.items[:, 0])  # [B_i] positives only; never cold (sampler)
    return (info_nce(view_a[0][users], view_b[0][users], temperature)
            + info_nce(view_a[1][items], view_b[1][items], temperature))


def mean_of_layers(layers: Layers) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of the given ``(users [U, d], items [I, d])`` layers, users and items apart."""
    scale = 1.0 / len(layers)
    return sum(u for u, _ in layers) * scale, sum(i for _, i in layers) * scale


class _NoisyLightGCN(GraphRecommender):
    """What SimGCL and XSimGCL share: free ID embeddings, LightGCN propagation with optional
    uniform noise after every hop, the final representation the mean of layers ``1..L`` (the
    ego layer 0 left out, as both papers and SELFRec do), and one contrastive term ``cl``."""

    def __init__(self, num_users: int, num_items: int, embedding_dim: int, num_layers: int, eps: float,
                 temperature: float, cl_weight: float):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1 (the ego layer is not part of the output), got {num_layers}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if cl_weight < 0:
            raise ValueError(f"cl_weight must be >= 0, got {cl_weight}")
        self.num_layers = num_layers
        self.eps = eps
        self.temperature = temperature
        self.loss_terms = ("cl",)
        self.loss_weights = {"cl": cl_weight}
        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(num_items, embedding_dim)
        # Xavier-uniform per table, as SELFRec initialises its two tables
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)

    def _ego(self, graph: BipartiteGraph) -> tuple[torch.Tensor, torch.Tensor]:
        # a cold item's ID is never trained: 0 ("unknown"); the noise keeps it 0 (sign(0) = 0)
        return self.user_embedding.weight, self.known_item_ids(self.item_embedding.weight, graph)

    def layers(self, graph: BipartiteGraph, eps: float) -> Layers:
        """Layers ``1..L`` ``[(users [U, d], items [I, d]), ...]`` with noise of length ``eps``
        added after every hop (``eps = 0``: plain LightGCN propagation)."""
        return noisy_layers(*self._ego(graph), self.num_layers, graph.propagate_pair, eps)

    def forward(self, graph: BipartiteGraph, features=None) -> tuple[torch.Tensor, torch.Tensor]:
        # the clean encoder, in evaluation and wherever a plain forward is asked for
        return mean_of_layers(self.layers(graph, 0.0))

    def ego_embeddings(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        return (self.user_embedding.weight,), (self.item_embedding.weight,)


class SimGCL(_NoisyLightGCN):
    r"""SimGCL from `"Are Graph Augmentations Necessary? Simple Graph Contrastive Learning for
    Recommendation" <https://arxiv.org/abs/2112.08679>`_ (Yu et al., SIGIR 2022).

    A LightGCN encoder without the ego layer in its output,

    .. math:: \mathbf E = \frac1L \sum_{l=1}^{L} \mathbf E^{(l)}, \qquad
              \mathbf E^{(l)} = \hat{\mathbf A}\,\mathbf E^{(l-1)},

    scored by dot product and trained with BPR on this clean :math:`\mathbf E`. Each training
    step also encodes two noisy views, with random noise of length :math:`\epsilon` in the
    embedding's own orthant added after every hop (Eq. 7,
    :func:`mmrec.graph.views.embedding_noise`):

    .. math:: \mathbf E'^{(l)} = \hat{\mathbf A}\,\mathbf E'^{(l-1)} + \Delta'^{(l)}, \qquad
              \Delta = \epsilon\,\mathrm{sign}(\mathbf e) \odot \frac{\bar\Delta}{\lVert\bar\Delta\rVert_2},
              \ \bar\Delta \sim U(0, 1)^d

    and contrasts them (:func:`batch_contrast`, term ``cl``, weight :math:`\lambda`):

    .. math:: \mathcal L = \mathcal L_{BPR}(\mathbf E) + \lambda \left(
              \mathrm{InfoNCE}_\tau(\mathbf Z'_{u}, \mathbf Z''_{u}) + \mathrm{InfoNCE}_\tau(\mathbf Z'_{i}, \mathbf Z''_{i})
              \right) + \lambda_{L2} \lVert \mathbf E^{(0)}_{batch} \rVert^2

    over the batch's distinct users and distinct positive items. Evaluation uses the clean
    encoder (no noise).

    Deviations from SELFRec's SimGCL: the L2 term is the framework's, on the batch's layer-0
    embeddings (SELFRec regularises the propagated batch rows); the temperature is an argument
    (SELFRec's TensorFlow version fixes it at 0.2). Cold items (no training interaction) have a
    zero ID and no edges: every view gives them 0, as every ID-only model here does.

    Args:
        num_users: number of users :math:`U`.
        num_items: number of items :math:`I`.
        embedding_dim: size :math:`d` of the ID embeddings.
        num_layers: propagation hops :math:`L` (at least 1).
        eps: noise length :math:`\epsilon` of the two contrastive views.
        temperature: :math:`\tau` of the InfoNCE term.
        cl_weight: :math:`\lambda`, the weight of the contrastive term ``cl``.
    """

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64, num_layers: int = 2,
                 eps: float = 0.1, temperature: float = 0.2, cl_weight: float = 0.5):
        super().__init__(num_users, num_items, embedding_dim, num_layers, eps, temperature, cl_weight)

    def training_forward(self, graph: BipartiteGraph, features=None
                         ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        user_emb, item_emb = self(graph, features)  # clean: what BPR scores
        views = {"view_a": mean_of_layers(self.layers(graph, self.eps)),
                 "view_b": mean_of_layers(self.layers(graph, self.eps))}  # two independent noise draws
        return user_emb, item_emb, views

    def extra_losses(self, step: TrainingStep) -> dict[str, torch.Tensor]:
        return {"cl": batch_contrast(step, step.views["view_a"], step.views["view_b"], self.temperature)}


class XSimGCL(_NoisyLightGCN):
    r"""XSimGCL from `"XSimGCL: Towards Extremely Simple Graph Contrastive Learning for
    Recommendation" <https://arxiv.org/abs/2209.02544>`_ (Yu et al., TKDE 2023).

    One noisy forward per step serves both tasks. With noise of length :math:`\epsilon` after
    every hop (as in :class:`SimGCL`),

    .. math:: \mathbf E'^{(l)} = \hat{\mathbf A}\,\mathbf E'^{(l-1)} + \Delta^{(l)}, \qquad
              \mathbf E' = \frac1L \sum_{l=1}^{L} \mathbf E'^{(l)}

    BPR scores the final noisy :math:`\mathbf E'`, and a cross-layer InfoNCE contrasts it with
    the noisy layer :math:`l^*` (:math:`\mathbf E'^{(0)} = \mathbf E^{(0)}` for
    :math:`l^* = 0`) for the batch's distinct users and positive items:

    .. math:: \mathcal L = \mathcal L_{BPR}(\mathbf E') + \lambda \left(
              \mathrm{InfoNCE}_\tau(\mathbf Z'_u, \mathbf Z'^{(l^*)}_u) + \mathrm{InfoNCE}_\tau(\mathbf Z'_i, \mathbf Z'^{(l^*)}_i)
              \right) + \lambda_{L2} \lVert \mathbf E^{(0)}_{batch} \rVert^2

    Evaluation uses the clean encoder :math:`\frac1L\sum_{l=1}^L \hat{\mathbf A}^l \mathbf E^{(0)}`.
    The layer mean leaves out layer 0, as SELFRec's ``XSimGCL_Encoder`` does (it averages the
    outputs of the ``n_layer`` hops only); its ``l_star`` counts hops the same way (``l_star = 1``:
    the first propagated layer).

    Deviations from SELFRec's XSimGCL: the L2 term is the framework's, on the batch's layer-0
    embeddings of users, positives and negatives (SELFRec: unsquared norms of the propagated
    user and positive rows). Cold items: zero ID, no edges, 0 in every view.

    Args:
        num_users: number of users :math:`U`.
        num_items: number of items :math:`I`.
        embedding_dim: size :math:`d` of the ID embeddings.
        num_layers: propagation hops :math:`L` (at least 1).
        eps: noise length :math:`\epsilon` of the training forward.
        temperature: :math:`\tau` of the InfoNCE term.
        cl_weight: :math:`\lambda`, the weight of the contrastive term ``cl``.
        cl_layer: :math:`l^*`, the layer contrasted with the final embeddings (``0..L``).
    """

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64, num_layers: int = 2,
                 eps: float = 0.2, temperature: float = 0.15, cl_weight: float = 0.2, cl_layer: int = 1):
        super().__init__(num_users, num_items, embedding_dim, num_layers, eps, temperature, cl_weight)
        if not 0 <= cl_layer <= num_layers:
            raise ValueError(f"cl_layer must lie in [0, num_layers={num_layers}], got {cl_layer}")
        self.cl_layer = cl_layer

    def training_forward(self, graph: BipartiteGraph, features=None
                         ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        ego = self._ego(graph)
        layers = noisy_layers(*ego, self.num_layers, graph.propagate_pair, self.eps)
        user_emb, item_emb = mean_of_layers(layers)  # noisy: what BPR scores
        return user_emb, item_emb, {"cl_view": layers[self.cl_layer - 1] if self.cl_layer else ego}

    def extra_losses(self, step: TrainingStep) -> dict[str, torch.Tensor]:
        return {"cl": batch_contrast(step, (step.user_emb, step.item_emb), step.views["cl_view"], self.temperature)}
