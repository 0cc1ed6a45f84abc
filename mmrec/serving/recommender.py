"""Recommendations from a bundle: retrieve -> rank -> re-rank, for known users, new visitors
(a few liked items, or a text query) and "more like this".

The stages:

1. **Retrieve** candidates: the index's highest inner products (``exact``: the evaluation's
   own ranking, :class:`~mmrec.serving.index.ExactIndex`; ``faiss``: approximate), with the
   request's excluded items (the user's history, explicit exclusions) and the items the model
   cannot rank masked; plus, where the bundle has content vectors, the items nearest in
   content space to the user's recent history, so that cold items can enter at all.
2. **Rank** the merged, de-duplicated candidates by the exact model score (user . item; ties
   by item id, as in evaluation).
3. **Re-rank** the best ``candidates`` of them for diversity (``mmr`` or ``dpp`` over content
   similarity, ``diversity`` in [0, 1]; 0 keeps the ranking) and apply business rules (an
   optional cap per item group).

With the exact index and ``diversity=0`` a known user's list is exactly the evaluation's
top-k of the same user (training and validation items excluded): what is shown is what was
counted (tested).

New visitors get a user vector folded in from the vectors of the items they liked
(:func:`fold_in`); a text query is encoded by the bundle's own text modality encoder, its
nearest items in text space stand in for liked items, and when the model has nothing to say
about those items (an ID-only model and only cold items) the answer is the content neighbours
themselves, marked ``source="content"``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mmrec.core.interactions import RowItems
from mmrec.core.sequences import pool_history
from mmrec.core.ranking import top_items
from mmrec.serving.bundle import Bundle, load_bundle
from mmrec.serving.index import INDEXES
from mmrec.serving.rerank import RERANKERS, cap_per_group
from mmrec.utils.errors import MmrecError

log = logging.getLogger(__name__)

FOLD_IN_RULES = ("mean", "ridge")
#: what the Recommender's ``fold_in`` accepts: a rule, ``tower`` (the bundle's user tower) or
#: ``auto`` (the tower when the bundle has one, else ``mean``)
VISITOR_RULES = (*FOLD_IN_RULES, "tower", "auto")


class RecommendError(MmrecError, ValueError):
    """A request that cannot be answered as asked (the message says what is wrong and what to do)."""


class UnknownIdError(RecommendError):
    """Ids that are not in the bundle; ``kind`` is ``"user"`` or ``"item"``, ``ids`` lists them."""

    def __init__(self, kind: str, ids: Sequence[str]):
        self.kind, self.ids = kind, list(ids)
        shown = ", ".join(repr(i) for i in self.ids[:10]) + (" ..." if len(self.ids) > 10 else "")
        hint = ("a new visitor is served from liked items or a text query instead" if kind == "user"
                else "search the catalogue for valid ids")
        super().__init__(f"unknown {kind} id{'s' if len(self.ids) > 1 else ''} {shown} ({len(self.ids)} in all): "
                         f"not in this bundle; {hint}")


@dataclass
class Recommendation:
    """One recommended item, as shown: raw id, title, score, and why."""

    rank: int
    item: str
    title: str
    score: float
    because: str | None = None  # the history / liked item most like this one (raw id)
    because_title: str | None = None
    source: str = "model"  # "model": ranked by the model's score; "content": by content similarity alone
    image: str | None = None  # path of the item's image inside the bundle, if any

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)  # flat fields: no deep copy (dataclasses.asdict costs ~1 ms for a list of 20)


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over a (read-only, memory-mapped) array without copying it: workers share the
    pages. Serving never writes into these tensors."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _unit(x: torch.Tensor) -> torch.Tensor:
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
    return _unit(u)[0].to(item_vectors.dtype)


class Recommender:
    """Recommendations from a loaded :class:`~mmrec.serving.bundle.Bundle`.

    Args:
        bundle: the bundle (see :meth:`load`).
        index: ``exact`` or ``faiss`` (with ``index_params``: ``factory``, ``ef_search``,
            ``nprobe``, ...), or a factory ``index(item_vectors=, rankable=, saved=)`` (a Hydra
            ``_partial_`` of :mod:`mmrec.serving.index`).
        rerank: ``mmr`` or ``dpp``, or a re-ranking function with their signature: used when a
            request asks for ``diversity > 0``.
        candidates: model candidates retrieved per request (and the re-ranking pool).
        content_candidates: extra candidates nearest in content space to the recent history
            (0: none; ignored without content vectors).
        recent: history items (the latest) that the content candidates are taken near.
        fold_in: how new visitors get a vector: ``auto`` (the bundle's user tower when it has
            one, :func:`tower_fold_in`; else ``mean``), ``tower``, or a :func:`fold_in` rule;
            ``fold_in_reg`` the ridge lambda.
        max_k: the largest ``k`` a request may ask for.
        max_per_group: business rule: at most this many items of one ``group`` (an items-table
            column, e.g. a category) in a list; ``None``: no cap.
        query_items: items nearest to a text query that stand in for liked items.
    """

    def __init__(self, bundle: Bundle, index: str | Callable = "exact", index_params: dict | None = None,
                 rerank: str | Callable = "mmr",
                 candidates: int = 200, content_candidates: int = 50, recent: int = 10, fold_in: str = "auto",
                 fold_in_reg: float = 1.0, max_k: int = 100, max_per_group: int | None = None, query_items: int = 5):
        if isinstance(rerank, str) and rerank not in RERANKERS:
            raise ValueError(f"rerank must be one of {sorted(RERANKERS)}, got {rerank!r}")
        if isinstance(index, str) and index not in INDEXES:
            raise ValueError(f"index must be one of {sorted(INDEXES)}, got {index!r}")
        if fold_in not in VISITOR_RULES:
            raise ValueError(f"fold_in must be one of {VISITOR_RULES}, got {fold_in!r}")
        has_tower = "tower_weight" in bundle.arrays
        if fold_in == "tower" and not has_tower:
            raise ValueError(f"fold_in=tower: the bundle {bundle.root} has no user tower (only a two-tower model's "
                             f"export has one); use mean or ridge")
        if fold_in == "auto":
            fold_in = "tower" if has_tower else "mean"
        for name, value in (("candidates", candidates), ("max_k", max_k), ("query_items", query_items)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if content_candidates < 0 or recent < 1:
            raise ValueError(f"content_candidates must be >= 0 and recent >= 1, got {content_candidates}, {recent}")
        if max_per_group is not None and max_per_group < 1:
            raise ValueError(f"max_per_group must be >= 1 or null, got {max_per_group}")
        self.bundle = bundle
        a = bundle.arrays
        self.user_vectors = _tensor(a["user_vectors"])  # [U, d]
        self.item_vectors = _tensor(a["item_vectors"])  # [I, d]
        self.rankable = torch.as_tensor(np.asarray(a["item_rankable"], dtype=bool))  # [I]
        self.unrankable = None if bool(self.rankable.all()) else ~self.rankable
        self.popularity = _tensor(a["item_popularity"])
        self.history_indptr = np.asarray(a["history_indptr"])
        self.history_indices = np.asarray(a["history_indices"])
        # similarity space: the fused content vectors where the bundle has them, else the model's own
        self.has_content = "content_vectors" in a
        self.similarity_vectors = _unit(_tensor(a["content_vectors"]).float() if self.has_content
                                        else self.item_vectors.float())  # [I, D]
        self.text_vectors = _unit(_tensor(a["text_vectors"]).float()) if "text_vectors" in a else None
        self.num_users, self.num_items = self.user_vectors.shape[0], self.item_vectors.shape[0]
        self.user_raw = bundle.users["raw_id"].astype(str).to_numpy()
        self.item_raw = bundle.items["raw_id"].astype(str).to_numpy()
        self.titles = bundle.items["title"].fillna("").astype(str).to_numpy()
        self.images = bundle.items["image"].fillna("").astype(str).to_numpy()
        self.user_index = {raw: i for i, raw in enumerate(self.user_raw)}
        self.item_index = {raw: i for i, raw in enumerate(self.item_raw)}
        groups = bundle.items["group"] if "group" in bundle.items.columns else None
        self.groups = None if groups is None else [None if (g is None or g == "") else str(g) for g in groups]
        self.rerank = RERANKERS[rerank] if isinstance(rerank, str) else rerank
        self.candidates, self.content_candidates, self.recent = candidates, content_candidates, recent
        self.fold_in_rule, self.fold_in_reg = fold_in, fold_in_reg
        # the user tower's arrays, resolved once (not per visitor request)
        tower = bundle.manifest.get("user_tower") if has_tower else None
        self.tower = None if tower is None else {
            "weight": _tensor(a["tower_weight"]), "bias": _tensor(a["tower_bias"]), "pooling": tower["pooling"],
            "query": _tensor(a["tower_query"]) if "tower_query" in a else None,
            "max_history": int(tower["max_history"])}
        self.max_k, self.max_per_group, self.query_items = max_k, max_per_group, query_items
        saved = (bundle.root / "index.faiss", bundle.manifest.get("index", {}).get("factory"))
        factory = INDEXES[index] if isinstance(index, str) else index
        self.index = factory(item_vectors=self.item_vectors, rankable=self.rankable, saved=saved, **(index_params or {}))
        self._text_encoder = None

    @classmethod
    def load(cls, path: str | Path, verify: bool = True, **kwargs) -> "Recommender":
        """Load and verify the bundle at ``path`` (:func:`~mmrec.serving.bundle.load_bundle`)."""
        return cls(load_bundle(path, verify=verify), **kwargs)

    # -- ids -------------------------------------------------------------------------
    def _users(self, raw: Sequence[str]) -> np.ndarray:
        missing = [u for u in raw if str(u) not in self.user_index]
        if missing:
            raise UnknownIdError("user", [str(u) for u in missing])
        return np.array([self.user_index[str(u)] for u in raw], dtype=np.int64)

    def _items(self, raw: Sequence[str] | None) -> np.ndarray:
        if not raw:
            return np.zeros(0, dtype=np.int64)
        missing = [i for i in raw if str(i) not in self.item_index]
        if missing:
            raise UnknownIdError("item", [str(i) for i in missing])
        return np.array([self.item_index[str(i)] for i in raw], dtype=np.int64)

    def _check_k(self, k: int) -> None:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise RecommendError(f"k must be a whole number >= 1, got {k!r}")
        if k > self.max_k:
            raise RecommendError(f"k={k} is above the limit of {self.max_k} for one request")

    @staticmethod
    def _check_diversity(diversity: float) -> None:
        if not 0.0 <= float(diversity) <= 1.0:
            raise RecommendError(f"diversity must be between 0 and 1, got {diversity!r}")

    def history(self, user: str) -> list[str]:
        """The known items (train + valid) of a user, oldest first (raw ids)."""
        u = int(self._users([user])[0])
        return self.item_raw[self.history_indices[self.history_indptr[u]:self.history_indptr[u + 1]]].tolist()

    def describe(self, item: str) -> dict[str, Any]:
        """The items-table row of ``item`` as a dict (raw id, title, text, image, ...)."""
        i = int(self._items([item])[0])
        row = self.bundle.items.iloc[i].to_dict()
        row["rankable"] = bool(self.rankable[i])
        row["popularity"] = int(self.popularity[i])
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}

    # -- the pipeline -------------------------------------------------------------------
    def _exclusions(self, rows: list[np.ndarray]) -> RowItems:
        return RowItems(rows, self.num_items)

    def _pipeline(self, queries: torch.Tensor, seen: list[np.ndarray], recent: list[np.ndarray], k: int,
                  diversity: float) -> list[list[tuple[int, float]]]:
        """``(item row, score)`` lists for query vectors ``[B, d]``; ``seen[b]`` is excluded."""
        exclude = self._exclusions(seen)
        n = max(self.candidates, k)
        ids, _ = self.index.search(queries, n, exclude)  # [B, n] model candidates
        if self.content_candidates and self.has_content:
            rows = [b for b in range(len(queries)) if len(recent[b])]
            if rows:
                profile = torch.stack([self.similarity_vectors[torch.as_tensor(recent[b])].mean(0) for b in rows])
                same = len(rows) == len(queries)  # usually every row has a history: reuse its exclusions
                found, values = top_items(lambda r: profile[r] @ self.similarity_vectors.T, torch.arange(len(rows)),
                                          [exclude if same else self._exclusions([seen[b] for b in rows])],
                                          min(self.content_candidates, self.num_items), self.unrankable)
                found = found.masked_fill(torch.isneginf(values), -1)
                extra = torch.full((len(queries), found.shape[1]), -1, dtype=torch.long)
                extra[torch.as_tensor(rows)] = found
                ids = torch.cat([ids, extra], dim=1)
        out = []
        for b in range(len(queries)):
            cand = torch.unique(ids[b][ids[b] >= 0])  # ascending ids: equal scores stay in id order
            if not cand.numel():
                out.append([])
                continue
            scores = self.item_vectors[cand] @ queries[b]  # [n] exact model scores
            scores = scores.nan_to_num(nan=-torch.inf)  # as the index ranks them: a NaN never leads (unverified bundles)
            order = torch.sort(scores, descending=True, stable=True).indices
            cand, scores = cand[order], scores[order]
            picked = self._rerank(cand, scores, k, diversity)
            out.append(list(zip(cand[picked].tolist(), scores[picked].tolist())))
        return out

    def _rerank(self, cand: torch.Tensor, scores: torch.Tensor, k: int, diversity: float) -> torch.Tensor:
        """Positions into ``cand`` (ranked) of the final list: diversity re-ranking of the best
        ``candidates``, then the business rules."""
        pool = min(len(cand), self.candidates)
        want = pool if self.max_per_group else min(k, pool)  # a cap may skip items: keep the whole order
        if diversity > 0 and pool > 1:
            v = self.similarity_vectors[cand[:pool]]
            order = self.rerank(scores[:pool], v @ v.T, want, diversity)
        else:
            order = torch.arange(want)
        if self.max_per_group and self.groups is not None:
            order = cap_per_group(order, [self.groups[int(i)] for i in cand[:pool]], self.max_per_group, k)
        return order[:k]

    def _because(self, items: list[int], history: np.ndarray) -> list[int | None]:
        """For each recommended item, the history item most similar to it (content space)."""
        if not len(history) or not items:
            return [None] * len(items)
        sim = self.similarity_vectors[torch.as_tensor(items)] @ self.similarity_vectors[torch.as_tensor(history)].T
        best = sim.argmax(1)  # [k]
        return [int(history[j]) for j in best.tolist()]

    def _results(self, ranked: list[tuple[int, float]], history: np.ndarray, source: str = "model"
                 ) -> list[Recommendation]:
        because = self._because([i for i, _ in ranked], history)
        return [Recommendation(rank=r + 1, item=self.item_raw[i], title=self.titles[i], score=round(s, 6),
                               because=None if b is None else self.item_raw[b],
                               because_title=None if b is None else self.titles[b], source=source,
                               image=self.images[i] or None)
                for r, ((i, s), b) in enumerate(zip(ranked, because))]

    # -- public API ---------------------------------------------------------------------
    def recommend(self, users: Sequence[str], k: int = 10, exclude_seen: bool = True,
                  exclude: Sequence[str] | None = None, diversity: float = 0.0) -> list[list[Recommendation]]:
        """Top-``k`` lists of known ``users`` (raw ids), one per user, in the given order.

        ``exclude_seen``: leave out each user's known items (train + valid), as evaluation does;
        ``exclude``: raw item ids left out for everyone (business rule); ``diversity`` in [0, 1].
        """
        if isinstance(users, str):
            raise RecommendError("users must be a list of user ids (got one string); wrap it: [user]")
        self._check_k(k)
        self._check_diversity(diversity)
        rows = self._users(users)
        extra = self._items(exclude)
        histories = [self.history_indices[self.history_indptr[u]:self.history_indptr[u + 1]] for u in rows]
        seen = [np.concatenate([h, extra]) if exclude_seen else extra for h in histories]
        recent = [h[-self.recent:] for h in histories]
        ranked = self._pipeline(self.user_vectors[torch.as_tensor(rows)].float(), seen, recent, k, diversity)
        return [self._results(r, h) for r, h in zip(ranked, histories)]

    def user_vector_for_items(self, liked: Sequence[int]) -> torch.Tensor:
        """The vector ``[d]`` of a visitor who liked item rows ``liked`` (oldest first): the
        bundle's user tower (``tower``), or folded in from the liked items' vectors."""
        if self.fold_in_rule == "tower":
            t = self.tower
            rows = torch.as_tensor(np.asarray(liked, dtype=np.int64))[-t["max_history"]:]
            return tower_fold_in(self.item_vectors, rows, t["weight"], t["bias"], t["pooling"], t["query"])
        return fold_in(self.item_vectors.float(), torch.as_tensor(np.asarray(liked)), self.fold_in_rule,
                       self.fold_in_reg)

    def recommend_for_items(self, liked_items: Sequence[str], k: int = 10, exclude: Sequence[str] | None = None,
                            diversity: float = 0.0) -> list[Recommendation]:
        """A new visitor's top-``k`` from the raw ids of a few items they liked (left out of
        the list). When the model knows none of them (an ID-only model, only cold items), the
        list is their content neighbours, marked ``source="content"``."""
        if isinstance(liked_items, str):
            raise RecommendError("liked_items must be a list of item ids (got one string); wrap it: [item]")
        if not liked_items:
            raise RecommendError("liked_items is empty: give at least one item id the visitor liked "
                                 "(or use a text query)")
        self._check_k(k)
        self._check_diversity(diversity)
        liked = self._items(liked_items)
        seen = np.unique(np.concatenate([liked, self._items(exclude)]))
        return self._for_liked(liked, seen, k, diversity)

    def _for_liked(self, liked: np.ndarray, seen: np.ndarray, k: int, diversity: float) -> list[Recommendation]:
        known = liked[self.rankable[torch.as_tensor(liked)].numpy()]
        if not len(known):  # nothing the model can score: answer from content alone
            return self._content_only(liked, seen, k)
        query = self.user_vector_for_items(known).unsqueeze(0)  # [1, d]
        ranked = self._pipeline(query, [seen], [liked[-self.recent:]], k, diversity)[0]
        return self._results(ranked, liked)

    def _content_only(self, liked: np.ndarray, seen: np.ndarray, k: int) -> list[Recommendation]:
        profile = self.similarity_vectors[torch.as_tensor(liked)].mean(0, keepdim=True)  # [1, D]
        ids, values = top_items(lambda r: profile @ self.similarity_vectors.T, torch.arange(1),
                                [self._exclusions([seen])], min(k, self.num_items))
        ranked = [(int(i), float(v)) for i, v in zip(ids[0].tolist(), values[0].tolist()) if v > -float("inf")]
        return self._results(ranked, liked, source="content")

    def text_encoder(self):
        """The bundle's text modality encoder (rebuilt on first use from its recorded id)."""
        if self._text_encoder is None:
            from mmrec.serving.text import TextEncoderUnavailable, text_encoder_for

            spec = self.bundle.manifest.get("text_encoder")
            if self.text_vectors is None or not spec:
                raise RecommendError("this bundle has no item text features, so it cannot answer text queries; "
                                     "recommend from liked items instead")
            try:
                self._text_encoder = text_encoder_for(spec)
            except TextEncoderUnavailable as err:
                raise RecommendError(f"text queries are not available for this bundle: {err}") from err
        return self._text_encoder

    def items_for_text(self, query: str, n: int) -> list[tuple[int, float]]:
        """The ``n`` items whose text is nearest to ``query`` (cosine in text space)."""
        if not isinstance(query, str) or not query.strip():
            raise RecommendError("the text query is empty: type a few words about what you look for")
        vector = _unit(self.text_encoder()([query]).float())  # [1, D_t]
        sims = (self.text_vectors @ vector[0])  # [I]
        has_text = self.text_vectors.abs().sum(1) > 0
        sims = sims.masked_fill(~has_text, -float("inf"))
        values, ids = torch.topk(sims, min(n, self.num_items))
        return [(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist()) if v > -float("inf")]

    def recommend_for_text(self, query: str, k: int = 10, exclude: Sequence[str] | None = None,
                           diversity: float = 0.0) -> list[Recommendation]:
        """A new visitor's top-``k`` from a text query: its nearest items in text space
        (``query_items`` of them) stand in for liked items; they may themselves be recommended."""
        self._check_k(k)
        self._check_diversity(diversity)
        matched = np.array([i for i, _ in self.items_for_text(query, self.query_items)], dtype=np.int64)
        if not len(matched):
            raise RecommendError("no item has text to match the query against")
        return self._for_liked(matched, self._items(exclude), k, diversity)

    def recommend_for_visitor(self, liked_items: Sequence[str] | None = None, query: str | None = None, k: int = 10,
                              exclude: Sequence[str] | None = None, diversity: float = 0.0) -> list[Recommendation]:
        """A new visitor's top-``k`` from liked items and/or a text query: the query's nearest items
        join the liked ones (liked items are left out of the list, query matches are not)."""
        liked_items = list(liked_items or [])
        has_query = query is not None and str(query).strip() != ""
        if not liked_items and not has_query:
            raise RecommendError("give the items the visitor liked, a text query, or both")
        if not has_query:
            return self.recommend_for_items(liked_items, k, exclude, diversity)
        if not liked_items:
            return self.recommend_for_text(str(query), k, exclude, diversity)
        self._check_k(k)
        self._check_diversity(diversity)
        liked = self._items(liked_items)
        matched = np.array([i for i, _ in self.items_for_text(str(query), self.query_items)], dtype=np.int64)
        seen = np.unique(np.concatenate([liked, self._items(exclude)]))
        return self._for_liked(np.concatenate([liked, matched]), seen, k, diversity)

    def search(self, text: str, limit: int = 20) -> list[int]:
        """Item rows whose title contains ``text`` (case-insensitive), most popular first."""
        needle = str(text).strip().lower()
        if not needle:
            return []
        if not hasattr(self, "_lower_titles"):
            self._lower_titles = np.char.lower(self.titles.astype(str))
        hits = np.flatnonzero(np.char.find(self._lower_titles, needle) >= 0)
        order = np.argsort(-np.asarray(self.popularity)[hits], kind="stable")
        return hits[order][:limit].tolist()

    def similar_items(self, item: str, k: int = 10) -> list[Recommendation]:
        """The ``k`` items most similar to ``item`` (cosine in content space where the bundle has
        content vectors, else of the model's item vectors); cold items included."""
        self._check_k(k)
        i = int(self._items([item])[0])
        ids, values = top_items(lambda r: self.similarity_vectors[torch.as_tensor([i])] @ self.similarity_vectors.T,
                                torch.arange(1), [self._exclusions([np.array([i])])], min(k, self.num_items - 1))
        ranked = [(int(j), float(v)) for j, v in zip(ids[0].tolist(), values[0].tolist())]
        source = "content" if self.has_content else "model"
        return [Recommendation(rank=r + 1, item=self.item_raw[j], title=self.titles[j], score=round(v, 6),
                               because=self.item_raw[i], because_title=self.titles[i], source=source,
                               image=self.images[j] or None) for r, (j, v) in enumerate(ranked)]


def recommender_from_config(cfg) -> Recommender:
    """The Recommender of an entry config (``mmrec.recommend``, ``mmrec.serve``): ``cfg.bundle``,
    the ``index`` and ``rerank`` choices (``_partial_`` factories) and the ``recommender``
    settings."""
    from hydra.utils import instantiate

    load = instantiate(cfg.recommender)  # a partial of Recommender.load with the settings
    return load(cfg.bundle, verify=cfg.get("verify", True), index=instantiate(cfg.index), rerank=instantiate(cfg.rerank))
