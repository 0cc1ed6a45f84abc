"""BM3: bootstrapped latent views of a LightGCN encoder and of the item modalities, no negatives."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from mmrec.fusion import AlignedFusion
from mmrec.graph.bipartite import BipartiteGraph, layer_mean
from mmrec.losses import cosine_alignment, table_norm_loss
from mmrec.models.base import ColdItemNeighbours, GraphRecommender, TrainingStep


class BM3(GraphRecommender):
    r"""BM3 from `"Bootstrap Latent Representations for Multi-modal Recommendation"
    <https://arxiv.org/abs/2207.05969>`_ (Zhou et al., WWW 2023).

    **Online encoder.** LightGCN over the user-item graph, the item's ID embedding added
    again to its layer mean (as the reference code does), and one linear projection per
    modality:

    .. math::
        (\bar{\mathbf e}_u, \bar{\mathbf e}_i) = \frac{1}{L+1}\sum_{l=0}^{L} \hat A^l \mathbf E, \qquad
        \mathbf h_u = \bar{\mathbf e}_u, \quad \mathbf h_i = \bar{\mathbf e}_i + \mathbf e_i, \qquad
        \mathbf h^m_i = T_m \mathbf f^m_i

    **Views.** A shared predictor :math:`p(\mathbf x) = W_p \mathbf x + \mathbf b_p` gives the
    online view; the target view is the stop-gradient of the encoder output under dropout
    (:math:`\tilde{\mathbf x} = \mathrm{Dropout}_\rho(\mathrm{sg}(\mathbf x))`), so no negatives
    are sampled (``main_loss = "none"``). For a batch of training pairs :math:`(u, i)`:

    .. math::
        \mathcal L_{rec} &= \big(1 - \cos(p(\mathbf h_u), \tilde{\mathbf h}_i)\big)
                          + \big(1 - \cos(p(\mathbf h_i), \tilde{\mathbf h}_u)\big) \\
        \mathcal L_{align} &= \textstyle\sum_m 1 - \cos(p(\mathbf h^m_i), \tilde{\mathbf h}_i) \\
        \mathcal L_{mask} &= \textstyle\sum_m 1 - \cos(p(\mathbf h^m_i), \tilde{\mathbf h}^m_i) \\
        \mathcal L_{reg} &= \big(\lVert \mathbf H_U \rVert_F + \lVert \mathbf H_I \rVert_F\big) / I \\
        \mathcal L &= \mathcal L_{rec} + \lambda_{c}\,(\mathcal L_{align} + \mathcal L_{mask})
                      + \lambda_{r}\,\mathcal L_{reg}

    each cosine averaged over the batch (:func:`mmrec.losses.cosine_alignment`), the norm
    term over the whole online tables (MMRec's ``EmbLoss``, :func:`mmrec.losses.table_norm_loss`).
    Terms (:attr:`loss_terms`, logged as ``train/<name>``): ``reconstruction``
    (:math:`\mathcal L_{rec}`, weight 1), ``alignment`` and ``masked`` (weight
    ``cl_weight``), ``emb_reg`` (weight ``reg_weight``). Scores are those of the predictor
    outputs, :math:`\hat y_{ui} = p(\mathbf h_u)^\top p(\mathbf h_i)`, as in the reference.

    **Fusion:** ``aligned`` (:class:`~mmrec.fusion.AlignedFusion`, the only one accepted). The
    modalities are never combined: each is projected by :math:`T_m` into the ID space and aligned
    with the item's ID view on its own; scores use no content.

    **Missing modalities.** :math:`T_m` is a :class:`~mmrec.fusion.ModalityProjector`, which
    gives a missing modality a learned vector, and the per-modality terms skip the batch rows
    whose item lacks that modality (a shared "missing" vector is no view of the item).

    **Cold items** (no training interaction; an extension, not in the paper). Content enters
    BM3 only through its training terms, so a cold item, whose ID is set to 0 and which has no
    edges, would get :math:`\mathbf h_i = 0`: the same score for all cold items. At evaluation
    its :math:`\mathbf h_i` is estimated from its warm content neighbours'
    (:class:`~mmrec.models.base.ColdItemNeighbours`, before the predictor;
    ``cold_neighbours=0``: off).

    Deviations from the reference code (enoche/BM3, MMRec ``bm3.py``): the raw features are
    constants (the reference fine-tunes them as embedding tables); a missing modality has a
    learned projection instead of none, and is left out of the per-modality terms; the
    target dropout is drawn on the batch's rows (the reference drops whole tables, then
    gathers rows: the same distribution, except that a row repeated in a batch gets
    independent masks); the projections are computed for the batch's items only.

    Args:
        num_users, num_items: numbers of users and items.
        features: item features (dimensions; the cold-item kNN graph is built from them).
        fusion: fusion factory from ``conf/fusion``; only ``aligned`` is accepted (its projector
            is :math:`T_m`).
        embedding_dim: size :math:`d` of the ID embeddings, the projected features and the
            predictor.
        num_layers: LightGCN layers :math:`L` on the user-item graph.
        dropout: :math:`\rho`, the dropout rate that perturbs the target view.
        cl_weight: :math:`\lambda_c`, the weight of the ``alignment`` and ``masked`` terms.
        reg_weight: :math:`\lambda_r`, the weight of the ``emb_reg`` term.
        cold_neighbours: content neighbours per modality that estimate a cold item's
            :math:`\mathbf h_i` (0: off).
    """

    uses_content = True
    supported_fusions = ("aligned",)
    main_loss = "none"

    def __init__(self, num_users: int, num_items: int, features, fusion: Callable[..., nn.Module],
                 embedding_dim: int = 64, num_layers: int = 1, dropout: float = 0.5, cl_weight: float = 2.0,
                 reg_weight: float = 0.1, cold_neighbours: int = 10):
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if cl_weight < 0 or reg_weight < 0:
            raise ValueError(f"cl_weight and reg_weight must be >= 0, got {cl_weight}, {reg_weight}")
        self.num_layers = num_layers
        self.dropout = dropout
        self.loss_terms = ("reconstruction", "alignment", "masked", "emb_reg")
        self.loss_weights = {"reconstruction": 1.0, "alignment": cl_weight, "masked": cl_weight,
                             "emb_reg": reg_weight}
        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(num_items, embedding_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.predictor = nn.Linear(embedding_dim, embedding_dim)
        nn.init.xavier_normal_(self.predictor.weight)
        self.aligned: AlignedFusion = fusion(feature_dims=features.dims, dim=embedding_dim)  # T_m per modality
        for layer in self.aligned.projector.proj.values():
            nn.init.xavier_normal_(layer.weight)  # as the reference initialises image_trs / text_trs
        self.cold = ColdItemNeighbours(features, cold_neighbours)  # 0: off

    def online(self, graph: BipartiteGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder outputs ``(h_users [U, d], h_items [I, d])`` before the predictor; cold
        items' IDs are 0 (and in evaluation their rows are estimated from content neighbours)."""
        ids = self.known_item_ids(self.item_embedding.weight, graph)  # [I, d]
        user, item = layer_mean(self.user_embedding.weight, ids, self.num_layers, graph.propagate_pair)
        item = self.cold(item + ids, graph.item_sets)  # cold items: their warm neighbours' h (evaluation)
        return user, item

    def forward(self, graph: BipartiteGraph, features=None) -> tuple[torch.Tensor, torch.Tensor]:
        user, item = self.online(graph)
        return self.predictor(user), self.predictor(item)

    def training_forward(self, graph: BipartiteGraph, features=None
                         ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        user, item = self.online(graph)
        # the predicted tables are what evaluation scores; the encoder outputs give the targets
        return self.predictor(user), self.predictor(item), {"online": (user, item)}

    def ego_embeddings(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        return (self.user_embedding.weight,), (self.item_embedding.weight,)

    def _target(self, x: torch.Tensor) -> torch.Tensor:
        """The target view of rows ``x``: stop-gradient, then dropout (always on: it is the
        perturbation that makes the view, drawn in training steps only)."""
        return F.dropout(x.detach(), self.dropout, training=True)

    def extra_losses(self, step: TrainingStep) -> dict[str, torch.Tensor]:
        users, items = step.users, step.items[:, 0]  # [B], [B]: positives (never cold)
        h_user, h_item = step.views["online"] if "online" in step.views else self.online(step.graph)
        target_user, target_item = self._target(h_user[users]), self._target(h_item[items])  # [B, d]
        reconstruction = (cosine_alignment(step.user_emb[users], target_item)
                          + cosine_alignment(step.item_emb[items], target_user))
        projected, mask = self.aligned(step.features.rows(items))  # [M, B, d], [M, B]
        alignment = masked = reconstruction.new_zeros(())
        for part, present in zip(projected, mask):
            if not bool(present.any()):
                continue  # no item of the batch has this modality
            online = self.predictor(part[present])  # [n, d]
            alignment = alignment + cosine_alignment(online, target_item[present])
            masked = masked + cosine_alignment(online, self._target(part[present]))
        return {"reconstruction": reconstruction, "alignment": alignment, "masked": masked,
                "emb_reg": table_norm_loss(h_user, h_item)}
