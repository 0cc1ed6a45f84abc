"""Graph recommenders: each a plain ``nn.Module`` with ``forward(graph, features) -> (user_emb, item_emb)``."""

from mmrec.models.base import GraphRecommender
from mmrec.models.lightgcn import LightGCN

__all__ = ["GraphRecommender", "LightGCN"]
