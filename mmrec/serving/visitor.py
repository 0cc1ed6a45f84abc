"""New visitors: a user vector from a few liked items and/or words, at request time.

A visitor the model was not trained on gets a vector folded in from the vectors of the items
they liked (:func:`fold_in`), or, for a two-tower bundle, the trained user tower run over those
items (:func:`tower_fold_in`). A text query is encoded by the bundle's own text modality
encoder (rebuilt once from the id the bundle records); its nearest items in text space stand in
for liked items. :meth:`VisitorEncoder.profile` does all of it in one pass, so a request's text
is encoded once, and returns what the pipeline needs: the vector (or ``None`` when the model can
score none of the visitor's items), the liked rows and the query's matched rows.
"""

from __future__ import annotations

import re

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Sequence

import numpy as np
import torch

from mmrec.core.sequences import pool_history
from mmrec.serving.bundle import Bundle
from mmrec.serving.catalogue import bundle_tensor
from mmrec.serving.limits import RecommendError

FOLD_IN_RULES = ("mean", "ridge")
#: what the Recommender's ``fold_in`` accepts: a rule, ``tower`` (the bundle's user tower) or
#: ``auto`` (the tower when the bundle has one, else ``mean``)
VISITOR_RULES = (*FOLD_IN_RULES, "tower", "auto")


_WORD = re.compile(r"\w+")


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` scaled to unit length (a zero row stays zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def fold_in(item_vectors: torch.Tensor, liked: torch.Tensor, rule: str = "mean", reg: float = 1.0) -> torch.Tensor:
    r"""A user vector ``[d]`` for a visitor who liked ``liked`` (item rows ``[n]``).

    * ``mean``: :math:`\mathbf u = \frac1n \sum_{i} \mathbf v_i` - for the propagation models
      (LightGCN, FREEDOM, LATTICE, MMGCN, GRCN) a user's representation is a normalised
      aggregation of its items' representations (one LightGCN hop), and the mean is that
      aggregation for a user the graph has not seen; for popularity it keeps the popularity
      order.
    * ``ridge``: :math:`\mathbf u = (V^\top V + \lambda I)^{-1} V^\top \mathbf 1`, the user
      vector of least squares with the item vectors fixed (the fold-in of matrix
      factorisation and iALS, Hu et al. 2008): for MF-like models (VBPR) whose user vectors
      were fitted against fixed-scale item vectors.
    """
    v = item_vectors[liked].to(torch.float64)  # [n, d]
    if rule == "mean":
        u = v.mean(0)
    elif rule == "ridge":
        gram = v.T @ v + reg * torch.eye(v.shape[1], dtype=v.dtype)  # [d, d]
        u = torch.linalg.solve(gram, v.sum(0))
    else:
        raise ValueError(f"fold_in rule must be one of {FOLD_IN_RULES}, got {rule!r}")
    return u.to(item_vectors.dtype)


def tower_fold_in(item_vectors: torch.Tensor, liked: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  pooling: str = "mean", query: torch.Tensor | None = None) -> torch.Tensor:
    r"""A two-tower model's user tower over item rows ``liked [n]`` (oldest first): ``[d]``.

    :math:`\mathbf u = \mathrm{normalise}(W\,\mathrm{pool}(\{\mathbf v_i\}) + \mathbf b)`
    with the pooling of training (:func:`mmrec.core.sequences.pool_history`) over the bundle's
    item vectors, which are the item tower's outputs: the vector a new visitor gets is the one
    the trained user tower computes for a user with that history (no user ID embedding).
    """
    pooled = pool_history(liked.reshape(1, -1), item_vectors.float(), pooling,
                          None if query is None else query.float())  # [1, d]
    u = pooled @ weight.float().T + bias.float()  # [1, d]
    return unit(u)[0].to(item_vectors.dtype)


@dataclass(frozen=True)
class VisitorProfile:
    """A new visitor as the pipeline sees them."""

    vector: torch.Tensor | None  # [d] the visitor's user vector; None: the model can score none of their items
    liked: np.ndarray  # item rows the visitor liked (never recommended back to them)
    matched: np.ndarray  # item rows nearest to the text query (stand in for liked items; may be recommended)
    notice: str | None = None  # what the visitor should know about the query (none of its words is known)

    @property
    def basis(self) -> np.ndarray:
        """The items the vector comes from, oldest first: liked, then matched (what "because" points at)."""
        return np.concatenate([self.liked, self.matched])


class VisitorEncoder:
    """Turns a visitor's liked items and words into a :class:`VisitorProfile`.

    Args:
        bundle: the loaded bundle (its item vectors, text features, user tower, text encoder id).
        item_vectors: ``[I, d]`` the model's item vectors.
        rankable: ``[I]`` bool: items the model can score (only those enter the fold-in).
        fold_in: ``auto`` (the bundle's user tower when it has one, else ``mean``), ``tower``
            or a :func:`fold_in` rule; ``fold_in_reg`` the ridge lambda.
        query_items: items nearest to a text query that stand in for liked items.
    """

    def __init__(self, bundle: Bundle, item_vectors: torch.Tensor, rankable: torch.Tensor, fold_in: str = "auto",
                 fold_in_reg: float = 1.0, query_items: int = 5):
        if fold_in not in VISITOR_RULES:
            raise ValueError(f"fold_in must be one of {VISITOR_RULES}, got {fold_in!r}")
        a = bundle.arrays
        has_tower = "tower_weight" in a
        if fold_in == "tower" and not has_tower:
            raise ValueError(f"fold_in=tower: the bundle {bundle.root} has no user tower (only a two-tower model's "
                             f"export has one); use mean or ridge")
        if query_items < 1:
            raise ValueError(f"query_items must be >= 1, got {query_items}")
        if fold_in == "auto":
            fold_in = "tower" if has_tower else "mean"
        self.fold_in_rule = fold_in
        self.fold_in_reg, self.query_items = fold_in_reg, query_items
        self.item_vectors, self.rankable = item_vectors, rankable
        # the user tower's arrays, resolved once (not per visitor request)
        tower = bundle.manifest.get("user_tower") if has_tower else None
        self.tower: dict[str, Any] | None = None if tower is None else {
            "weight": bundle_tensor(a["tower_weight"]), "bias": bundle_tensor(a["tower_bias"]),
            "pooling": tower["pooling"], "query": bundle_tensor(a["tower_query"]) if "tower_query" in a else None,
            "max_history": int(tower["max_history"])}
        self.text_vectors = unit(bundle_tensor(a["text_vectors"]).float()) if "text_vectors" in a else None  # [I, D_t]
        self._has_text = None if self.text_vectors is None else self.text_vectors.abs().sum(1) > 0  # [I]
        self._encoder_id = bundle.manifest.get("text_encoder")
        self._item_texts = bundle.items.get("text")  # the catalogue's words: whether a query's are known

    @cached_property
    def vocabulary(self) -> frozenset[str]:
        """The lower-case words of every item's text (built on the first text query)."""
        words: set[str] = set()
        for text in self._item_texts if self._item_texts is not None else ():
            words.update(_WORD.findall(str(text).lower()))
        return frozenset(words)

    def unknown_query_notice(self, query: str) -> str | None:
        """A notice when no word of ``query`` occurs in any item's text: its matches are then
        only the nearest in the encoder's space (chance, for a bag-of-words encoder)."""
        words = _WORD.findall(query.lower())
        if words and self._item_texts is not None and not any(w in self.vocabulary for w in words):
            return (f"no item's text contains any word of {query[:80]!r}: the matches are only the nearest in "
                    "text space; try other words")
        return None

    @property
    def text_queries(self) -> bool:
        """Whether this bundle can answer text queries at all (item text features and their encoder's id)."""
        return self.text_vectors is not None and bool(self._encoder_id)

    @cached_property
    def text_encoder(self):
        """The bundle's text modality encoder, rebuilt on first use from its recorded id."""
        from mmrec.serving.text import TextEncoderUnavailable, text_encoder_for

        if not self.text_queries:
            raise RecommendError("this bundle has no item text features, so it cannot answer text queries; "
                                 "recommend from liked items instead", "query")
        try:
            return text_encoder_for(self._encoder_id)
        except TextEncoderUnavailable as err:
            raise RecommendError(f"text queries are not available for this bundle: {err}", "query") from err

    def user_vector(self, liked: Sequence[int]) -> torch.Tensor:
        """The vector ``[d]`` of a visitor who liked item rows ``liked`` (oldest first): the
        bundle's user tower (``tower``), or folded in from the liked items' vectors."""
        if self.fold_in_rule == "tower":
            t = self.tower
            rows = torch.as_tensor(np.asarray(liked, dtype=np.int64))[-t["max_history"]:]
            return tower_fold_in(self.item_vectors, rows, t["weight"], t["bias"], t["pooling"], t["query"])
        return fold_in(self.item_vectors.float(), torch.as_tensor(np.asarray(liked)), self.fold_in_rule,
                       self.fold_in_reg)

    def items_for_text(self, query: str, n: int) -> list[tuple[int, float]]:
        """The ``n`` items whose text is nearest to ``query`` (cosine in text space): ``(row, cosine)``."""
        if not isinstance(query, str) or not query.strip():
            raise RecommendError("the text query is empty: type a few words about what you look for", "query")
        vector = unit(self.text_encoder([query]).float())  # [1, D_t]
        sims = (self.text_vectors @ vector[0]).masked_fill(~self._has_text, -float("inf"))  # [I]
        values, ids = torch.topk(sims, min(n, len(sims)))
        return [(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist()) if v > -float("inf")]

    def profile(self, liked: np.ndarray, query: str | None = None) -> VisitorProfile:
        """The profile of a visitor who liked item rows ``liked`` and/or typed ``query`` (encoded
        once, here): its ``query_items`` nearest items join the liked ones, and the vector comes
        from those of them the model can score."""
        matched = np.zeros(0, dtype=np.int64)
        if query is not None:
            matched = np.array([i for i, _ in self.items_for_text(query, self.query_items)], dtype=np.int64)
            if not len(liked) and not len(matched):
                raise RecommendError("no item has text to match the query against", "query")
        basis = np.concatenate([liked, matched])
        known = basis[self.rankable[torch.as_tensor(basis)].numpy()]
        notice = self.unknown_query_notice(query) if query is not None else None
        return VisitorProfile(self.user_vector(known) if len(known) else None, liked, matched, notice)
