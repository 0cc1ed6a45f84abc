"""Recommendations from a bundle: retrieve -> rank -> re-rank, for known users, new visitors
(a few liked items, or a text query) and "more like this".

The stages:

1. **Retrieve** candidates: the index's highest inner products (``exact``: the evaluation's
   own ranking, :class:`~mmrec.serving.index.ExactIndex`; ``faiss``: approximate), with the
   request's excluded items (the user's history, explicit exclusions) and the items the model
   cannot rank masked; plus, where the bundle has content vectors, the items nearest in
   content space to the user's recent history, so that cold items can enter at all.
2. **Rank** the merged, de-duplicated candidates by the exact model score (user . item; ties
   by item id, as in evaluation); or, when the bundle has a learned ranker
   (``export ranker=lightgbm``), merge its candidate sources (model, content, co-occurrence,
   popular) and order them by the ranker (:mod:`mmrec.serving.two_stage`, the code its test
   evaluation ran), each item saying which sources proposed it.
3. **Re-rank** the best ``candidates`` of them for diversity (``mmr`` or ``dpp`` over content
   similarity, ``diversity`` in [0, 1]; 0 keeps the ranking) and apply business rules (an
   optional cap per item group).

With the exact index and ``diversity=0`` a known user's list is exactly the evaluation's
top-k of the same user (training and validation items excluded): what is shown is what was
counted (tested).

The :class:`Recommender` is that pipeline and the explanations ("because of"), composed of
the bundle's :class:`~mmrec.serving.catalogue.Catalogue` (ids, titles, histories, search) and
a :class:`~mmrec.serving.visitor.VisitorEncoder` (a new visitor's vector from liked items
and/or words: when the model has nothing to say about those items, an ID-only model and only
cold items, the answer is their content neighbours, marked ``source="content"``). Every request
is validated once, here, against one :class:`~mmrec.serving.limits.Limits`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mmrec.core.interactions import RowItems
from mmrec.core.ranking import top_items
from mmrec.serving.bundle import Bundle, load_bundle
from mmrec.serving.catalogue import Catalogue, UnknownIdError, bundle_tensor
from mmrec.serving.index import INDEXES
from mmrec.serving.limits import Limits, RecommendError
from mmrec.serving.rerank import RERANKERS, cap_per_group
from mmrec.serving.visitor import (
    FOLD_IN_RULES,
    VISITOR_RULES,
    VisitorEncoder,
    VisitorProfile,
    fold_in,
    tower_fold_in,
    unit,
)

__all__ = [
    "FOLD_IN_RULES",
    "VISITOR_RULES",
    "Limits",
    "RecommendError",
    "Recommendation",
    "Recommender",
    "UnknownIdError",
    "VisitorAnswer",
    "fold_in",
    "recommender_from_config",
    "tower_fold_in",
]

log = logging.getLogger(__name__)


@dataclass
class Recommendation:
    """One recommended item, as shown: raw id, title, score, and why."""

    rank: int
    item: str
    title: str
    score: float
    because: str | None = None  # the history / liked item most like this one (raw id)
    because_title: str | None = None
    source: str = "model"  # "model": ranked by the model's score; "ranker": by the learned ranker; "content": by content similarity alone
    image: str | None = None  # path of the item's image inside the bundle, if any
    proposed_by: list[str] | None = None  # with a learned ranker: the candidate sources that proposed the item

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)  # flat fields: no deep copy (dataclasses.asdict costs ~1 ms for a list of 20)


@dataclass
class VisitorAnswer:
    """A new visitor's list and the items their text query matched (what the page shows as
    "matched"), from one pass that encodes the query once."""

    items: list[Recommendation]
    matched: list[str] = field(default_factory=list)  # raw ids nearest to the query, nearest first
    notice: str | None = None  # e.g. no word of the query occurs in any item's text


def _catalogue_attribute(name: str) -> property:
    """A read-only attribute of the recommender that is its catalogue's (``rec.item_raw`` ...)."""
    return property(lambda self: getattr(self.catalogue, name), doc=f"The catalogue's ``{name}``.")


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
        fold_in, fold_in_reg, query_items: how new visitors get a vector
            (:class:`~mmrec.serving.visitor.VisitorEncoder`).
        max_per_group: business rule: at most this many items of one ``group`` (an items-table
            column, e.g. a category) in a list; ``None``: no cap.
        limits: what one request may ask (``None``: the defaults of :class:`Limits`).
        ranker: ``auto``: the bundle's learned ranking stage where it has one; ``off``: rank by the
            model's score; ``on``: require one. With it, the model source is the exact ranking and
            ``candidates`` / ``content_candidates`` / ``recent`` give way to the bundle's own sizes.
    """

    user_raw = _catalogue_attribute("user_raw")
    item_raw = _catalogue_attribute("item_raw")
    user_index = _catalogue_attribute("user_index")
    item_index = _catalogue_attribute("item_index")
    num_users = _catalogue_attribute("num_users")
    num_items = _catalogue_attribute("num_items")
    popularity = _catalogue_attribute("popularity")
    rankable = _catalogue_attribute("rankable")

    def __init__(self, bundle: Bundle, index: str | Callable = "exact", index_params: dict | None = None,
                 rerank: str | Callable = "mmr",
                 candidates: int = 200, content_candidates: int = 50, recent: int = 10, fold_in: str = "auto",
                 fold_in_reg: float = 1.0, max_per_group: int | None = None, query_items: int = 5,
                 limits: Limits | None = None, ranker: str = "auto"):
        if isinstance(rerank, str) and rerank not in RERANKERS:
            raise ValueError(f"rerank must be one of {sorted(RERANKERS)}, got {rerank!r}")
        if isinstance(index, str) and index not in INDEXES:
            raise ValueError(f"index must be one of {sorted(INDEXES)}, got {index!r}")
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        if content_candidates < 0 or recent < 1:
            raise ValueError(f"content_candidates must be >= 0 and recent >= 1, got {content_candidates}, {recent}")
        if ranker not in ("auto", "on", "off"):
            raise ValueError(f"ranker must be auto, on or off, got {ranker!r}")
        if ranker == "on" and "ranker" not in bundle.manifest:
            raise ValueError(f"ranker=on but {bundle.root} has no learned ranker: export the run with "
                             f"`python -m mmrec.export run=<run> ranker=lightgbm`, or use ranker=auto")
        if max_per_group is not None and max_per_group < 1:
            raise ValueError(f"max_per_group must be >= 1 or null, got {max_per_group}")
        self.bundle = bundle
        self.limits = limits or Limits()
        self.catalogue = Catalogue(bundle)
        a = bundle.arrays
        self.user_vectors = bundle_tensor(a["user_vectors"])  # [U, d]
        self.item_vectors = bundle_tensor(a["item_vectors"])  # [I, d]
        self.unrankable = None if bool(self.rankable.all()) else ~self.rankable
        # similarity space: the fused content vectors where the bundle has them, else the model's own
        self.has_content = "content_vectors" in a
        self.similarity_vectors = unit(bundle_tensor(a["content_vectors"]).float() if self.has_content
                                       else self.item_vectors.float())  # [I, D]
        self.visitors = VisitorEncoder(bundle, self.item_vectors, self.rankable, fold_in, fold_in_reg, query_items)
        self.rerank = RERANKERS[rerank]() if isinstance(rerank, str) else rerank
        self.candidates, self.content_candidates, self.recent = candidates, content_candidates, recent
        self.max_per_group = max_per_group
        saved = (bundle.root / "index.faiss", bundle.manifest.get("index"))  # its factory, tuned breadth, recall
        factory = INDEXES[index] if isinstance(index, str) else index
        self.index = factory(item_vectors=self.item_vectors, rankable=self.rankable, saved=saved, **(index_params or {}))
        self.two_stage = None
        if ranker != "off" and "ranker" in bundle.manifest:
            from mmrec.serving.two_stage import load_two_stage

            self.two_stage = load_two_stage(bundle)

    @classmethod
    def load(cls, path: str | Path, verify: bool = True, **kwargs) -> Recommender:
        """Load and verify the bundle at ``path`` (:func:`~mmrec.serving.bundle.load_bundle`)."""
        return cls(load_bundle(path, verify=verify), **kwargs)

    @property
    def ranked_by(self) -> str:
        """What orders the lists: ``ranker`` (the bundle's learned ranking stage) or ``model``."""
        return "model" if self.two_stage is None else "ranker"

    # -- the catalogue and the visitor encoder, as the recommender's own API ---------------
    @property
    def fold_in_rule(self) -> str:
        """How new visitors get a vector: ``tower``, ``mean`` or ``ridge``."""
        return self.visitors.fold_in_rule

    def history(self, user: str) -> list[str]:
        """The known items (train + valid) of a user, oldest first (raw ids)."""
        return self.catalogue.history(user)

    def describe(self, item: str) -> dict[str, Any]:
        """The items-table row of ``item`` as a dict (raw id, title, text, image, rankable, popularity)."""
        return self.catalogue.describe(item)

    def search(self, text: str, limit: int = 20) -> list[int]:
        """Item rows whose title contains ``text`` (case-insensitive), most popular first; ``text``
        and ``limit`` within the limits."""
        self.limits.check_search(text, limit)
        return self.catalogue.search(text, limit)

    def user_vector_for_items(self, liked: Sequence[int]) -> torch.Tensor:
        """The vector ``[d]`` of a visitor who liked item rows ``liked`` (oldest first)."""
        return self.visitors.user_vector(liked)

    def items_for_text(self, query: str, n: int) -> list[tuple[int, float]]:
        """The ``n`` items whose text is nearest to ``query``: ``(row, cosine)``."""
        return self.visitors.items_for_text(query, n)

    # -- the pipeline -------------------------------------------------------------------
    def _check(self, k: int, diversity: float) -> None:
        self.limits.check_k(k)
        self.limits.check_diversity(diversity)

    def _pipeline(self, queries: torch.Tensor, seen: list[np.ndarray], histories: list[np.ndarray], k: int,
                  diversity: float) -> tuple[list[list[tuple[int, float]]], list[list[list[str]] | None]]:
        """``(item row, score)`` lists for query vectors ``[B, d]`` whose known items (oldest
        first) are ``histories[b]``; ``seen[b]`` is excluded. Also, per list, the sources that
        proposed each item (``None`` without a learned ranker)."""
        exclude = RowItems(seen, self.num_items)
        if self.two_stage is not None:
            return self._ranked(queries, seen, histories, exclude, k, diversity)
        recent = [h[-self.recent:] for h in histories]
        n = max(self.candidates, k)
        ids, _ = self.index.search(queries, n, exclude)  # [B, n] model candidates
        if self.content_candidates and self.has_content:
            rows = [b for b in range(len(queries)) if len(recent[b])]
            if rows:
                profile = torch.stack([self.similarity_vectors[torch.as_tensor(recent[b])].mean(0) for b in rows])
                same = len(rows) == len(queries)  # usually every row has a history: reuse its exclusions
                found, values = top_items(lambda r: profile[r] @ self.similarity_vectors.T, torch.arange(len(rows)),
                                          [exclude if same else RowItems([seen[b] for b in rows], self.num_items)],
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
        return out, [None] * len(out)

    def _ranked(self, queries: torch.Tensor, seen: list[np.ndarray], histories: list[np.ndarray], exclude: RowItems,
                k: int, diversity: float) -> tuple[list[list[tuple[int, float]]], list[list[list[str]]]]:
        """The learned ranking stage: the two-stage full ranking (the one its evaluation counted),
        its best ``candidates`` re-ranked."""
        from mmrec.serving.two_stage import SOURCES

        full, proposed = self.two_stage.scores(queries.float(), histories, seen)  # [B, I], [B, I, S]
        n = min(max(self.candidates, k), self.num_items)
        ids, values = top_items(lambda r: full[r], torch.arange(len(queries)), [exclude], n, self.unrankable)
        out, sources = [], []
        for b in range(len(queries)):
            shown = ~torch.isneginf(values[b])
            cand, scores = ids[b][shown], values[b][shown]
            order = self._rerank(cand, scores, k, diversity) if len(cand) else torch.zeros(0, dtype=torch.long)
            picked = cand[order]
            out.append(list(zip(picked.tolist(), scores[order].tolist())))
            flags = proposed[b, picked].tolist()  # [k, S]
            sources.append([[s for s, f in zip(SOURCES, row) if f] for row in flags])
        return out, sources

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
        groups = self.catalogue.groups
        if self.max_per_group and groups is not None:
            order = cap_per_group(order, [groups[int(i)] for i in cand[:pool]], self.max_per_group, k)
        return order[:k]

    def _because(self, items: list[int], history: np.ndarray) -> list[int | None]:
        """For each recommended item, the history item most similar to it (content space), never
        the item itself (a text query's matches stand in for history and may be recommended):
        ``None`` where the item is its history's only member."""
        if not len(history) or not items:
            return [None] * len(items)
        rows, hist = torch.as_tensor(items), torch.as_tensor(np.asarray(history, dtype=np.int64))
        sim = self.similarity_vectors[rows] @ self.similarity_vectors[hist].T  # [k, H]
        sim = sim.masked_fill(rows.unsqueeze(1) == hist.unsqueeze(0), -float("inf"))
        values, best = sim.max(1)  # [k]
        return [None if v == -float("inf") else int(history[j]) for v, j in zip(values.tolist(), best.tolist())]

    def _results(self, ranked: list[tuple[int, float]], because: list[int | None], source: str = "model",
                 proposed_by: list[list[str]] | None = None) -> list[Recommendation]:
        c = self.catalogue
        proposed_by = proposed_by or [None] * len(ranked)
        return [Recommendation(rank=r + 1, item=c.item_raw[i], title=c.titles[i], score=round(s, 6),
                               because=None if b is None else c.item_raw[b],
                               because_title=None if b is None else c.titles[b], source=source,
                               image=c.images[i] or None, proposed_by=p)
                for r, ((i, s), b, p) in enumerate(zip(ranked, because, proposed_by))]

    def _explained(self, ranked: list[tuple[int, float]], history: np.ndarray, source: str = "model",
                   proposed_by: list[list[str]] | None = None) -> list[Recommendation]:
        """``ranked`` as shown, each with the ``history`` item most like it."""
        return self._results(ranked, self._because([i for i, _ in ranked], history), source, proposed_by)

    def _nearest(self, profile: torch.Tensor, seen: np.ndarray, n: int) -> list[tuple[int, float]]:
        """The ``n`` items most similar to ``profile`` ``[1, D]`` in content space, without ``seen``."""
        ids, values = top_items(lambda r: profile @ self.similarity_vectors.T, torch.arange(1),
                                [RowItems([seen], self.num_items)], min(n, self.num_items))
        return [(int(i), float(v)) for i, v in zip(ids[0].tolist(), values[0].tolist()) if v > -float("inf")]

    def _for_visitor(self, visitor: VisitorProfile, seen: np.ndarray, k: int, diversity: float
                     ) -> list[Recommendation]:
        basis = visitor.basis
        if visitor.vector is None:  # nothing the model can score: answer from content alone
            profile = self.similarity_vectors[torch.as_tensor(basis)].mean(0, keepdim=True)  # [1, D]
            return self._explained(self._nearest(profile, seen, k), basis, source="content")
        ranked, sources = self._pipeline(visitor.vector.unsqueeze(0), [seen], [np.asarray(basis)], k, diversity)
        return self._explained(ranked[0], basis, self.ranked_by, sources[0])

    # -- public API ---------------------------------------------------------------------
    def recommend(self, users: Sequence[str], k: int = 10, exclude_seen: bool = True,
                  exclude: Sequence[str] | None = None, diversity: float = 0.0) -> list[list[Recommendation]]:
        """Top-``k`` lists of known ``users`` (raw ids), one per user, in the given order.

        ``exclude_seen``: leave out each user's known items (train + valid), as evaluation does;
        ``exclude``: raw item ids left out for everyone (business rule); ``diversity`` in [0, 1].
        """
        users = self.limits.id_list("users", users)
        self._check(k, diversity)
        rows = self.catalogue.users(users)
        extra = self.catalogue.items(self.limits.item_ids("exclude", exclude))
        histories = [self.catalogue.known_rows(u) for u in rows]
        seen = [np.concatenate([h, extra]) if exclude_seen else extra for h in histories]
        ranked, sources = self._pipeline(self.user_vectors[torch.as_tensor(rows)].float(), seen, histories, k, diversity)
        return [self._explained(r, h, self.ranked_by, p) for r, h, p in zip(ranked, histories, sources)]

    def answer_visitor(self, liked_items: Sequence[str] | None = None, query: str | None = None, k: int = 10,
                       exclude: Sequence[str] | None = None, diversity: float = 0.0) -> VisitorAnswer:
        """A new visitor's top-``k`` from liked items and/or a text query, and the items the query
        matched: they join the liked ones (liked items are left out of the list, query matches are
        not). A blank query counts as none."""
        has_query = query is not None and str(query).strip() != ""
        if not liked_items and not has_query:
            raise RecommendError("give the items the visitor liked, a text query, or both", "items")
        return self._answer(liked_items, str(query) if has_query else None, k, exclude, diversity)

    def _answer(self, liked_items: Sequence[str] | None, query: str | None, k: int,
                exclude: Sequence[str] | None, diversity: float) -> VisitorAnswer:
        self._check(k, diversity)
        liked = self.catalogue.items(self.limits.item_ids("items", liked_items))  # the API's name of the field
        excluded = self.catalogue.items(self.limits.item_ids("exclude", exclude))
        if query is not None:
            self.limits.check_text(query, "query")
        visitor = self.visitors.profile(liked, query)
        items = self._for_visitor(visitor, np.concatenate([liked, excluded]), k, diversity)
        return VisitorAnswer(items, self.item_raw[visitor.matched].tolist(), visitor.notice)

    def recommend_for_visitor(self, liked_items: Sequence[str] | None = None, query: str | None = None, k: int = 10,
                              exclude: Sequence[str] | None = None, diversity: float = 0.0) -> list[Recommendation]:
        """:meth:`answer_visitor`'s list."""
        return self.answer_visitor(liked_items, query, k, exclude, diversity).items

    def recommend_for_items(self, liked_items: Sequence[str], k: int = 10, exclude: Sequence[str] | None = None,
                            diversity: float = 0.0) -> list[Recommendation]:
        """A new visitor's top-``k`` from the raw ids of a few items they liked (left out of
        the list). When the model knows none of them (an ID-only model, only cold items), the
        list is their content neighbours, marked ``source="content"``."""
        if not isinstance(liked_items, str) and not liked_items:
            raise RecommendError("liked_items is empty: give at least one item id the visitor liked "
                                 "(or use a text query)", "items")
        return self._answer(liked_items, None, k, exclude, diversity).items

    def recommend_for_text(self, query: str, k: int = 10, exclude: Sequence[str] | None = None,
                           diversity: float = 0.0) -> list[Recommendation]:
        """A new visitor's top-``k`` from a text query: its nearest items in text space
        (``query_items`` of them) stand in for liked items; they may themselves be recommended."""
        return self._answer(None, query, k, exclude, diversity).items

    def similar_items(self, item: str, k: int = 10) -> list[Recommendation]:
        """The ``k`` items most similar to ``item`` (cosine in content space where the bundle has
        content vectors, else of the model's item vectors); cold items included."""
        self.limits.check_k(k)
        i = int(self.catalogue.items([item])[0])
        ranked = self._nearest(self.similarity_vectors[i:i + 1], np.array([i]), min(k, self.num_items - 1))
        return self._results(ranked, [i] * len(ranked), "content" if self.has_content else "model")


def recommender_from_config(cfg) -> Recommender:
    """The Recommender of an entry config (``mmrec.recommend``, ``mmrec.serve``): ``cfg.bundle``,
    the ``index`` and ``rerank`` choices (``_partial_`` factories) and the ``recommender``
    settings (its ``limits`` included)."""
    from hydra.utils import instantiate

    load = instantiate(cfg.recommender)  # a partial of Recommender.load with the settings and the Limits
    return load(cfg.bundle, verify=cfg.get("verify", True), index=instantiate(cfg.index), rerank=instantiate(cfg.rerank))
