"""Recommenders: each a plain ``nn.Module`` with ``forward(graph, features) -> (user_emb, item_emb)``,
or, for those that represent users from their histories (two-tower, SASRec, BERT4Rec), the
:class:`~mmrec.models.base.HistoryRecommender` contract."""

from mmrec.models.base import GraphRecommender, HistoryRecommender
from mmrec.models.baselines import Popularity, RandomRanker
from mmrec.models.bm3 import BM3
from mmrec.models.dragon import DRAGON
from mmrec.models.freedom import FREEDOM
from mmrec.models.grcn import GRCN
from mmrec.models.ials import IALS
from mmrec.models.itemknn import ItemKNNCBF
from mmrec.models.lattice import LATTICE
from mmrec.models.layergcn import LayerGCN
from mmrec.models.lgmrec import LGMRec
from mmrec.models.lightgcn import LightGCN
from mmrec.models.mgcn import MGCN
from mmrec.models.mmgcn import MMGCN
from mmrec.models.sequential import BERT4Rec, SASRec
from mmrec.models.simgcl import SimGCL, XSimGCL
from mmrec.models.two_tower import TwoTower
from mmrec.models.vbpr import VBPR

__all__ = ["BERT4Rec", "BM3", "DRAGON", "FREEDOM", "GRCN", "GraphRecommender", "HistoryRecommender", "IALS",
           "ItemKNNCBF", "LATTICE", "LayerGCN", "LGMRec", "LightGCN", "MGCN", "MMGCN", "Popularity",
           "RandomRanker", "SASRec", "SimGCL", "TwoTower", "VBPR", "XSimGCL"]
