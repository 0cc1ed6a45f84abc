"""Reference rows every comparison table needs: the most-popular and the random recommender.

Neither learns anything (``trainable = False``): ``python -m mmrec.train model=pop`` skips
fitting and sends them through the same evaluation as every other model, beyond-accuracy
metrics included, so a table always says how far a model is above popularity and chance and
how much more (or less) of the catalogue it shows.
"""

from __future__ import annotations

import torch

from mmrec.graph.bipartite import BipartiteGraph
from mmrec.models.base import GraphRecommender


class Popularity(GraphRecommender):
    r"""Most popular first: :math:`\hat y_{ui} = |U_i|`, the number of training users of item
    :math:`i`, the same for every user (ties broken by item id, as everywhere in ranking).

    As a dot product: :math:`\mathbf e_u = (1)`, :math:`\mathbf e_i = (|U_i|)`. Cold items
    (no training user) cannot be ranked and are never shown (it uses no content).

    Args:
        num_users, num_items: numbers of users and items.
    """

    trainable = False

    def __init__(self, num_users: int, num_items: int):
        super().__init__()
        self.num_users = num_users
        self.num_items = num_items

    def forward(self, graph: BipartiteGraph, features=None) -> tuple[torch.Tensor, torch.Tensor]:
        degree = torch.bincount(graph.edge_index[1], minlength=self.num_items)  # [I]
        user = torch.ones(self.num_users, 1, device=degree.device)  # [U, 1]
        return user, degree.to(user.dtype).unsqueeze(1)  # [U, 1], [I, 1]

    def ego_embeddings(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        return (), ()


class RandomRanker(GraphRecommender):
    r"""Chance: each user ranks the items in a random order.

    Scores are dot products of fixed random vectors, :math:`\mathbf e_u \sim \mathcal N(0, I_d)`
    and :math:`\mathbf e_i` uniform on the unit sphere (drawn once, from the run's seed), so
    the ranking is a dot product like every other model's (it exports and serves the same
    way). Given the item vectors, every item is equally likely to be ranked first for a
    random user, by rotational symmetry; with ``d`` large the orders of different users are
    nearly independent. Cold items are never shown (it uses no content), as for every ID-only
    model.

    Args:
        num_users, num_items: numbers of users and items.
        embedding_dim: ``d``.
    """

    trainable = False

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64):
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        item = torch.randn(num_items, embedding_dim)
        self.register_buffer("user", torch.randn(num_users, embedding_dim), persistent=False)  # [U, d]
        self.register_buffer("item", item / item.norm(dim=1, keepdim=True).clamp_min(1e-12), persistent=False)  # [I, d]

    def forward(self, graph: BipartiteGraph, features=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user, self.item

    def ego_embeddings(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        return (), ()
