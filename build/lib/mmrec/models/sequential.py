"""Sequential recommenders: SASRec (causal) and BERT4Rec (bidirectional, masked items), on one
small Transformer encoder written out so that its masks are explicit and tested."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mmrec.graph.bipartite import BipartiteGraph
from mmrec.losses import bce_loss, full_softmax_loss
from mmrec.models.base import HistoryRecommender, TrainingContext


def attention_mask(valid: torch.Tensor, causal: bool) -> torch.Tensor:
    """``[B, 1, W, W]`` bool: may position ``i`` attend to position ``j``.

    ``j`` must hold an item (``valid [B, W]``) and, when ``causal``, not lie in the future
    (``j <= i``). Every position may attend to itself, so that padded positions (whose output
    is never used) do not produce NaN rows."""
    width = valid.shape[1]
    allowed = valid.unsqueeze(1).expand(-1, width, -1)  # [B, W(i), W(j)]
    if causal:
        allowed = allowed & torch.ones(width, width, dtype=torch.bool, device=valid.device).tril()
    return (allowed | torch.eye(width, dtype=torch.bool, device=valid.device)).unsqueeze(1)


class TransformerBlock(nn.Module):
    """Pre-norm Transformer block: ``x + MHA(LN(x))``, then ``x + FFN(LN(x))`` (GELU); dropout on
    the residual branches and inside the FFN, not on the attention probabilities (a ``[B, H, W, W]``
    Bernoulli draw per layer that cost a third of a CPU step at W = 200)."""

    def __init__(self, dim: int, heads: int, dropout: float, ffn_factor: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding_dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_factor * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_factor * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, w, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)  # 3 x [B, W, d]
        q, k, v = (t.reshape(b, w, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))  # [B, H, W, d/H]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.dropout(self.out(a.transpose(1, 2).reshape(b, w, d)))  # [B, H, W, d/H] -> [B, W, d]
        return x + self.dropout(self.ffn(self.norm2(x)))


class SequenceEncoder(nn.Module):
    """Item rows + position embeddings -> ``layers`` blocks -> final LayerNorm.

    Positions count from the end of the sequence (0: the latest column), so a left-padded
    batch of any width gives each item the position of its recency, as the fixed-length
    padded input of the papers does."""

    def __init__(self, dim: int, heads: int, layers: int, dropout: float, max_len: int, causal: bool):
        super().__init__()
        self.causal = causal
        self.position = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, dropout) for _ in range(layers))
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.scale = math.sqrt(dim)

    def forward(self, rows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``rows [B, W, d]`` item inputs (padding rows anything), ``valid [B, W]`` -> ``[B, W, d]``."""
        width = rows.shape[1]
        recency = torch.arange(width - 1, -1, -1, device=rows.device)  # [W]
        x = self.dropout(rows * self.scale + self.position(recency)) * valid.unsqueeze(-1)
        mask = attention_mask(valid, self.causal)
        for block in self.blocks:
            x = block(x, mask) * valid.unsqueeze(-1)  # padding stays 0
        return self.norm(x)


class _SequentialBase(HistoryRecommender):
    """Shared item side: an ID embedding (0 for cold items) plus, with a fusion other than
    ``none``, the item's fused content (a multimodal sequential model in which cold items
    are rankable), tied between input and output; special tokens after the ``I`` items."""

    uses_content = True  # may read content; with fusion ``none`` the instance is ID-only
    content_optional = True
    supported_fusions = ("none", "concat", "attention", "gated")
    train_unit = "users"
    num_special = 1  # padding

    def __init__(self, num_users: int, num_items: int, features=None, fusion: Callable[..., nn.Module] | None = None,
                 embedding_dim: int = 64, heads: int = 2, layers: int = 2, dropout: float = 0.2,
                 max_len: int = 200, causal: bool = True):
        super().__init__()
        self.num_items, self.max_len = int(num_items), int(max_len)
        self.item_id = nn.Embedding(num_items, embedding_dim)
        nn.init.normal_(self.item_id.weight, std=0.02)
        self.special = nn.Parameter(torch.randn(self.num_special, embedding_dim) * 0.02)  # [S, d]
        self.fusion = fusion(feature_dims=features.dims, dim=embedding_dim) \
            if fusion is not None and features is not None and len(features) else None
        self.uses_content = self.fusion is not None  # instance value: ID-only with fusion none
        self.encoder = SequenceEncoder(embedding_dim, heads, layers, dropout, self.max_len, causal)

    def item_representations(self, graph: BipartiteGraph, features=None) -> torch.Tensor:
        rows = self.known_item_ids(self.item_id.weight, graph)  # [I, d], cold rows 0
        if self.fusion is not None:
            rows = rows + self.fusion(features)
        return rows

    def _inputs(self, tokens: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """``[B, W, d]`` rows of ``tokens`` (items ``0..I-1``, special token ``s`` as ``I + s``;
        padding ``-1`` gets special 0, zeroed by the encoder)."""
        table = torch.cat([item_emb, self.special])  # [I + S, d]
        return table[torch.where(tokens < 0, self.num_items, tokens)]


class SASRec(_SequentialBase):
    r"""SASRec from `"Self-Attentive Sequential Recommendation" <https://arxiv.org/abs/1808.09781>`_
    (Kang & McAuley, ICDM 2018).

    Causal self-attention over the user's items in time order; the output at position
    :math:`t` predicts the item at :math:`t+1`:

    .. math:: \hat y_{t,i} = \mathbf h_t^\top \mathbf e_i, \qquad
              \mathbf h_t = \mathrm{Transformer}(\mathbf e_{s_1} + \mathbf p_1, \ldots,
              \mathbf e_{s_t} + \mathbf p_t)_t

    (position :math:`t` attends to positions :math:`\le t` only: :func:`attention_mask`). The
    user's representation is the output at the latest item. Trained with the full
    cross-entropy over the catalogue at every position (SASRec+, Klenitskiy & Vasilev,
    RecSys 2023; default) or, as published, binary cross-entropy with one uniformly drawn
    negative per position (``loss: bce``). Deviations: pre-norm blocks with GELU, positions
    counted from the latest item.

    Args:
        embedding_dim, heads, layers, dropout: Transformer size.
        max_len: the latest ``max_len`` items of a history are read (the sequence cap).
        loss: ``ce`` (full softmax) or ``bce`` (sampled negatives).
        negatives: negatives per position for ``bce``.
    """

    losses = ("ce", "bce")
    min_history = 2  # a training example is a (history, next item) pair: one item teaches nothing

    def __init__(self, num_users: int, num_items: int, features=None, fusion=None, embedding_dim: int = 64,
                 heads: int = 2, layers: int = 2, dropout: float = 0.2, max_len: int = 200, loss: str = "ce",
                 negatives: int = 1):
        super().__init__(num_users, num_items, features, fusion, embedding_dim, heads, layers, dropout, max_len,
                         causal=True)
        if loss not in self.losses:
            raise ValueError(f"loss must be one of {self.losses}, got {loss!r}")
        self.loss, self.negatives = loss, int(negatives)
        self.loss_terms = (loss,)

    def hidden(self, tokens: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """``[B, W, d]`` outputs for ``tokens [B, W]``."""
        return self.encoder(self._inputs(tokens, item_emb), tokens >= 0)

    def user_representations(self, histories, item_emb, users):
        return self.hidden(histories, item_emb)[:, -1]  # the latest position

    def training_loss(self, batch, context: TrainingContext) -> dict[str, torch.Tensor]:
        users = batch  # [B]
        seq = context.sequences.batch(users, ("train",), self.max_len + 1)  # [B, W + 1]
        inputs, targets = seq[:, :-1], seq[:, 1:]  # [B, W]: the item at t + 1 is the target of t
        item_emb = self.item_representations(context.graph, context.features)  # [I, d]
        h = self.hidden(inputs, item_emb)  # [B, W, d]
        use = (inputs >= 0) & (targets >= 0)  # [B, W]
        if not bool(use.any()):  # no user of the batch has a (history, next item) pair
            zero = h.sum() * 0.0
            return {"loss": zero, self.loss: zero}
        h, t = h[use], targets[use]  # [N, d], [N]
        if self.loss == "ce":
            term = full_softmax_loss(h, item_emb, t, context.graph.item_sets.warm)
        else:
            row = users.unsqueeze(1).expand_as(use)[use]  # [N]
            count = context.train_matrix.num_negatives(row)  # [N]
            ranks = (torch.rand(len(row), self.negatives, device=row.device) * count.unsqueeze(1)).long()
            neg = context.train_matrix.nth_negative(row.unsqueeze(1), ranks)  # [N, K] never a training item
            term = bce_loss((h * item_emb[t]).sum(-1), torch.einsum("nd,nkd->nk", h, item_emb[neg]))
        return {"loss": term, self.loss: term}


def mask_positions(valid: torch.Tensor, prob: float) -> torch.Tensor:
    """``[B, W]`` bool: the positions BERT4Rec hides, each item with probability ``prob``; a
    row with items but none drawn hides its latest one (the last column), so that every
    sequence teaches something, and that position is also the one predicted at inference."""
    masked = (torch.rand(valid.shape, device=valid.device) < prob) & valid
    none = ~masked.any(dim=1) & valid[:, -1]
    masked[:, -1] |= none
    return masked


class BERT4Rec(_SequentialBase):
    r"""BERT4Rec from `"BERT4Rec: Sequential Recommendation with Bidirectional Encoder
    Representations from Transformer" <https://arxiv.org/abs/1904.06690>`_ (Sun et al., CIKM 2019).

    Bidirectional self-attention over the user's items; trained by the Cloze task: a share
    ``mask_prob`` of the items is replaced by a ``[mask]`` token and predicted from both
    sides with the full cross-entropy over the catalogue (:func:`mask_positions`):

    .. math:: \mathcal L = -\frac{1}{|\mathcal M|}\sum_{t\in\mathcal M} \log
              \frac{e^{g(\mathbf h_t)^\top \mathbf e_{s_t}}}{\sum_i e^{g(\mathbf h_t)^\top \mathbf e_i}}

    with :math:`g` the output head (linear, GELU, LayerNorm) and tied item embeddings. At
    inference ``[mask]`` is appended after the latest item and its output is the user's
    representation. Petrov & Macdonald (RecSys 2022) find that it needs far longer training
    than its defaults: its dataset budget says how long (``RESULTS.md`` reports the epochs).
    Deviations: no item output bias (scores stay a dot product); masked tokens are always
    ``[mask]`` (no random-item replacement).

    Args:
        embedding_dim, heads, layers, dropout: Transformer size.
        max_len: the sequence cap (the appended ``[mask]`` included at inference).
        mask_prob: share of the items hidden in training.
    """

    num_special = 2  # padding, [mask]

    def __init__(self, num_users: int, num_items: int, features=None, fusion=None, embedding_dim: int = 64,
                 heads: int = 2, layers: int = 2, dropout: float = 0.1, max_len: int = 200, mask_prob: float = 0.2):
        super().__init__(num_users, num_items, features, fusion, embedding_dim, heads, layers, dropout, max_len,
                         causal=False)
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
        if max_len < 2:
            raise ValueError(f"BERT4Rec's max_len must be >= 2 (at inference [mask] takes one position), got {max_len}")
        self.mask_prob = float(mask_prob)
        self.head = nn.Sequential(nn.Linear(embedding_dim, embedding_dim), nn.GELU(), nn.LayerNorm(embedding_dim))
        self.loss_terms = ("masked_ce",)

    @property
    def mask_token(self) -> int:
        return self.num_items + 1  # after the items and the padding token

    def hidden(self, tokens: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """``[B, W, d]`` head outputs for ``tokens [B, W]`` (items, ``-1`` padding, :attr:`mask_token`)."""
        return self.head(self.encoder(self._inputs(tokens, item_emb), tokens >= 0))

    def user_representations(self, histories, item_emb, users):
        tokens = torch.cat([histories[:, -(self.max_len - 1):], histories.new_full((len(histories), 1), self.mask_token)], dim=1)  # [B, W' + 1]
        return self.hidden(tokens, item_emb)[:, -1]

    def training_loss(self, batch, context: TrainingContext) -> dict[str, torch.Tensor]:
        users = batch  # [B]
        seq = context.sequences.batch(users, ("train",), self.max_len)  # [B, W]
        masked = mask_positions(seq >= 0, self.mask_prob)  # [B, W]
        tokens = seq.masked_fill(masked, self.mask_token)
        item_emb = self.item_representations(context.graph, context.features)  # [I, d]
        h = self.hidden(tokens, item_emb)[masked]  # [N, d]
        term = full_softmax_loss(h, item_emb, seq[masked], context.graph.item_sets.warm)
        return {"loss": term, "masked_ce": term}
