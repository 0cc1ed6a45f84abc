"""The encoder contract shared by every recommender in ``mmrec.models``.

An encoder maps the training graph (and item content, for multimodal models) to user and
item representations; the one :class:`mmrec.lit.module.RecModule` owns loss, sampling,
logging and evaluation for all of them. Encoders do no file I/O and read no config.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from mmrec.graph.bipartite import BipartiteGraph


class GraphRecommender(nn.Module):
    """Base class: ``forward(graph, features) -> (user_emb [U, d], item_emb [I, d])``.

    Class attributes:
        uses_content: whether the model reads item features. Content models take
            ``features`` (a :class:`mmrec.features.featureset.FeatureSet`, for dimensions and
            for constant structures such as kNN graphs) and ``fusion`` (a factory
            ``fusion(feature_dims, dim)`` from ``conf/fusion``) in their constructor.
        supported_fusions: names of the fusion configs (``conf/fusion``) the model accepts.
    """

    uses_content: ClassVar[bool] = False
    supported_fusions: ClassVar[tuple[str, ...]] = ("none",)

    def forward(self, graph: BipartiteGraph, features=None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def refresh(self, features=None) -> None:
        """Recompute structure that depends on learned weights but is too costly for every
        step (e.g. LATTICE's learned kNN neighbours). The training module calls it at the
        start of every training epoch; nothing by default. It is the only place such state
        changes: ``forward`` never fills a cache."""

    @staticmethod
    def known_item_ids(item_ids: torch.Tensor, graph: BipartiteGraph) -> torch.Tensor:
        """Item ID embeddings ``[I, d]`` with the rows of items that have no training
        interaction set to zero.

        A cold item's ID embedding is never trained (it is neither a positive nor, by the
        sampling protocol, a negative): left at its random initial value it would add noise
        to the item's score as if the item were known. Zeroing it makes the ID part of a cold
        item's score exactly 0, so cold items are ranked by whatever the model derives from
        content (an ID-only model then gives every cold item the score 0: "unknown"). It
        changes nothing for warm items and nothing in training, where cold items never occur
        as the scored item.
        """
        return item_ids * graph.item_known.unsqueeze(1).to(item_ids.dtype)

    def ego_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer-0 (free) user and item parameters that the L2 term regularises."""
        raise NotImplementedError

    def score_pairs(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """Scores of aligned rows: ``[..., d] x [..., d] -> [...]`` (dot product)."""
        return (user_emb * item_emb).sum(dim=-1)

    def score_all(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """Scores of every item for each user row: ``[B, d] x [I, d] -> [B, I]``."""
        return user_emb @ item_emb.T

    def auxiliary_loss(self, user_emb: torch.Tensor, item_emb: torch.Tensor, users: torch.Tensor,
                       items: torch.Tensor, features=None) -> torch.Tensor | None:
        """Extra loss term a model defines, given the step's embeddings, the batch users ``[B]``
        and items ``[B, 1 + K]`` (positive first, then negatives); none by default."""
        return None
