"""Graph recommenders: each a plain ``nn.Module`` with ``forward(graph, features) -> (user_emb, item_emb)``."""

from mmrec.models.base import GraphRecommender
from mmrec.models.baselines import Popularity, RandomRanker
from mmrec.models.freedom import FREEDOM
from mmrec.models.grcn import GRCN
from mmrec.models.ials import IALS
from mmrec.models.lattice import LATTICE
from mmrec.models.lightgcn import LightGCN
from mmrec.models.mmgcn import MMGCN
from mmrec.models.vbpr import VBPR

__all__ = ["FREEDOM", "GRCN", "GraphRecommender", "IALS", "LATTICE", "LightGCN", "MMGCN", "Popularity", "RandomRanker",
           "VBPR"]
