"""Two-stage ranking: several candidate sources, merged, then a learned ranker over
per-(user, candidate) features.

One code path computes the candidates and their features for the ranker's training rows
(:mod:`mmrec.two_stage`, on a train-only view), for the offline test evaluation and for
serving (:class:`~mmrec.serving.recommender.Recommender`, from the bundle), so that what the
ranker learned on, what evaluation counts and what is shown are the same numbers (tested).

Candidate **sources**, each a score over every item with the user's known items (and the items
the model cannot rank) removed, of which the best ``sizes[source]`` are proposed:

- ``model``: the retrieval model's score ``u . i`` (the exact index);
- ``content``: cosine between an item's content and the mean content of the user's
  ``recent`` latest known items (per modality, then averaged: the fused content space),
  searched in the content's top principal directions where it is wider than 64;
- ``cooccurrence``: ``sum_h C[h, i]`` over those recent items ``h``, with ``C`` the
  item-item co-occurrence of the known histories, cosine-normalised
  (``C[h, i] = n_hi / sqrt(n_h n_i)``) and cut to each item's ``neighbours`` strongest;
- ``popular``: ``log(1 + n_i)``, the item's known interactions.

The union of the proposals is scored by the ranker; items outside the union follow, in the
model's order, so the result is still a full ranking of every item (what the evaluator needs).

**Features** of a (user, candidate) pair, :data:`FEATURES` plus one ``content_<modality>``
per content modality: each source's score and rank (rank = ``sizes[source]`` where the
source did not propose the item) and its score relative to the row's best, the item's
popularity (all and recent), age and cold flag, the user's history length, and the share of the user's history in the candidate's group (NaN without
groups).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from mmrec.core.ranking import _ties_by_id

#: candidate sources, in the order of the ``proposed`` columns
SOURCES = ("model", "content", "cooccurrence", "popular")
#: the latest share of known interactions that an item's recent popularity counts
RECENT_SHARE = 0.1
#: features of every pair (``content_<modality>`` columns follow them)
FEATURES = ("model_score", "model_gap", "model_rank", "content_score", "content_rank", "cooc_score", "cooc_share",
            "cooc_rank", "cooc_all", "cooc_all_share", "pop_log", "pop_recent_log", "item_age_log_days", "item_cold", "user_history_log", "group_share")


def history_csr(histories: Sequence[np.ndarray], num_items: int) -> sp.csr_matrix:
    """``[U, I]`` binary user-item matrix of ``histories`` (one item array per user)."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    indptr = np.zeros(len(histories) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(lengths)
    indices = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if len(histories) else np.zeros(0, np.int64)
    x = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(histories), num_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def cooccurrence(indptr: np.ndarray, indices: np.ndarray, num_items: int, neighbours: int = 50) -> sp.csr_matrix:
    """The item-item co-occurrence ``[I, I]`` of user histories (CSR ``indptr`` / ``indices``):
    ``n_hi / sqrt(n_h n_i)`` (users holding both over the geometric mean of each one's users),
    the diagonal removed, each row cut to its ``neighbours`` largest entries (ties by lower id)."""
    x = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(indptr) - 1, num_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    n = np.asarray(x.sum(0)).ravel()  # [I] users per item
    c = (x.T @ x).tocoo()  # [I, I] users holding both
    keep = c.row != c.col
    row, col = c.row[keep].astype(np.int64), c.col[keep].astype(np.int64)
    value = c.data[keep] / np.sqrt(n[row] * n[col])
    order = np.lexsort((col, -value, row))  # row-major, strongest first, ties by lower id
    row, col, value = row[order], col[order], value[order]
    starts = np.searchsorted(row, np.arange(num_items))  # [I] first entry of each row
    keep = (np.arange(len(row)) - starts[row]) < neighbours  # each row's first `neighbours`
    return sp.csr_matrix((value[keep].astype(np.float32), (row[keep], col[keep])), shape=(num_items, num_items))


@dataclass
class StageData:
    """What the sources and features are computed from: a bundle's arrays for the test
    evaluation and serving (:meth:`from_bundle`), or the train-only view the ranker learns on.

    Attributes:
        item_vectors: ``[I, d]`` the model's item vectors (score = user . item).
        content: ``[I, D]`` fused content vectors (:meth:`FeatureSet.content_vectors`) or ``None``.
        modalities: ``{name: dim}`` of the content's blocks, in order (their cosine is the
            block's dot times the number of blocks).
        indptr, indices: each user's known items, CSR (what is excluded and the history).
        cooc: ``[I, I]`` :func:`cooccurrence` of those histories.
        first_seen: ``[I]`` time of each item's first known interaction (NaN: none), seconds.
        recent_popularity: ``[I]`` each item's interactions among the latest
            :data:`RECENT_SHARE` of the known ones (what is in fashion now).
        now: the latest known interaction time (an item's age is ``now - first_seen``).
        rankable: ``[I]`` bool, False where the model cannot score the item (never proposed).
        groups: ``[I]`` int group code (-1: none) or ``None``.
        projection: ``[D, k]`` the content's top principal directions (:func:`content_projection`):
            the content source searches in that ``k``-d space (a full scan of ``D``-d content per
            request is memory-bound at 100k items); ``None``: exact search. The features are
            exact either way.
    """

    item_vectors: torch.Tensor
    content: torch.Tensor | None
    modalities: dict[str, int]
    indptr: np.ndarray
    indices: np.ndarray
    cooc: sp.csr_matrix
    first_seen: np.ndarray
    now: float
    recent_popularity: np.ndarray
    rankable: torch.Tensor
    groups: torch.Tensor | None = None
    projection: np.ndarray | None = None
    popularity: torch.Tensor = field(init=False)

    def __post_init__(self):
        num_items = len(self.item_vectors)
        self.popularity = torch.as_tensor(np.bincount(np.asarray(self.indices, dtype=np.int64), minlength=num_items),
                                          dtype=torch.float32)  # [I] known interactions per item
        if self.content is not None and sum(self.modalities.values()) != self.content.shape[1]:
            raise ValueError(f"content modalities {self.modalities} do not add up to {self.content.shape[1]} columns")

    @property
    def num_items(self) -> int:
        return len(self.item_vectors)

    def history(self, user: int) -> np.ndarray:
        return np.asarray(self.indices[self.indptr[user]:self.indptr[user + 1]])

    @classmethod
    def build(cls, item_vectors: torch.Tensor, content: torch.Tensor | None, modalities: dict[str, int],
              indptr: np.ndarray, indices: np.ndarray, times: np.ndarray, rankable: torch.Tensor,
              groups: torch.Tensor | None = None, neighbours: int = 50, search_dim: int = 64) -> "StageData":
        """A view from known histories (CSR, ``times`` aligned with ``indices``); content wider
        than ``search_dim`` is searched in its :func:`content_projection`."""
        num_items = len(item_vectors)
        first = np.full(num_items, np.inf)
        np.minimum.at(first, np.asarray(indices, dtype=np.int64), np.asarray(times, dtype=np.float64))
        first[np.isinf(first)] = np.nan
        now = float(np.max(times)) if len(times) else 0.0
        latest = np.asarray(times) >= np.quantile(times, 1 - RECENT_SHARE) if len(times) else np.zeros(0, bool)
        recent = np.bincount(np.asarray(indices, dtype=np.int64)[latest], minlength=num_items).astype(np.float32)
        return cls(item_vectors, content, modalities, np.asarray(indptr), np.asarray(indices),
                   cooccurrence(indptr, indices, num_items, neighbours), first, now, recent, rankable, groups,
                   content_projection(content, search_dim) if content is not None and content.shape[1] > search_dim
                   else None)

    @classmethod
    def from_bundle(cls, bundle) -> "StageData":
        """The bundle's view (known = train + valid histories, its saved co-occurrence)."""
        a, entry = bundle.arrays, bundle.manifest["ranker"]
        num_items = len(a["item_vectors"])
        cooc = sp.csr_matrix((np.asarray(a["cooc_values"]), np.asarray(a["cooc_indices"]), np.asarray(a["cooc_indptr"])),
                             shape=(num_items, num_items))
        groups = None
        if "group" in bundle.items.columns:
            codes, _ = _group_codes(bundle.items["group"])
            groups = torch.as_tensor(codes)
        content = torch.from_numpy(np.array(a["content_vectors"], dtype=np.float32)) if "content_vectors" in a else None
        return cls(torch.from_numpy(np.array(a["item_vectors"], dtype=np.float32)), content,
                   dict(entry.get("modalities", {})), np.asarray(a["history_indptr"]), np.asarray(a["history_indices"]),
                   cooc, np.array(a["item_first_seen"], dtype=np.float64), float(entry["now"]),
                   np.array(a["item_recent_popularity"], dtype=np.float32),
                   torch.from_numpy(np.array(a["item_rankable"], dtype=bool)), groups,
                   np.array(a["content_projection"], dtype=np.float32) if "content_projection" in a else None)


def _pair_dots(block: torch.Tensor, profile: torch.Tensor, r: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """``[P]`` ``profile[r] . block[i]``, from the gathered rows in chunks of at most 4M floats
    (a batch of many users has many pairs)."""
    step = max(1, (1 << 22) // max(block.shape[1], 1))
    return torch.cat([(block[i[s:s + step]] * profile[r[s:s + step]]).sum(1) for s in range(0, len(r), step)]
                     or [torch.zeros(0)])


def content_projection(content: torch.Tensor, dim: int, sample: int = 20_000) -> np.ndarray:
    """``[D, dim]`` the top principal directions (uncentred: the directions of the largest
    inner products) of content ``[I, D]``, from at most ``sample`` evenly spaced rows; each
    direction's sign fixed (its largest entry positive), so the same content gives the same
    projection."""
    rows = np.linspace(0, len(content) - 1, min(sample, len(content))).round().astype(np.int64)
    x = content[torch.as_tensor(rows)].double()  # [n, D]
    _, vectors = torch.linalg.eigh(x.T @ x)  # ascending eigenvalues
    top = vectors[:, -dim:].flip(1)  # [D, dim], largest first
    sign = torch.sign(top.gather(0, top.abs().argmax(0, keepdim=True)))  # [1, dim]
    return (top * sign).float().numpy()


def _group_codes(values) -> tuple[np.ndarray, list[str]]:
    """Integer codes of an items-table group column (-1: empty / missing)."""
    text = ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values]
    names = sorted({t for t in text if t})
    code = {n: i for i, n in enumerate(names)}
    return np.array([code.get(t, -1) for t in text], dtype=np.int64), names


@dataclass
class Candidates:
    """The merged candidates of a batch of ``B`` queries: ``pairs`` ``[P, 2]`` (row, item),
    their features ``[P, F]`` and which sources proposed each (``proposed [P, S]`` bool, in
    :data:`SOURCES` order), plus the model's scores ``[B, I]`` (the order after the union)."""

    pairs: torch.Tensor
    features: np.ndarray
    proposed: torch.Tensor
    model_scores: torch.Tensor


class TwoStage:
    """Candidate sources and the features of their union (see the module docstring).

    Args:
        data: the :class:`StageData` view.
        sizes: candidates proposed per source (a source missing or 0 proposes none; ``content``
            needs content vectors).
        recent: latest history items the content and co-occurrence sources start from.
        ranker: ``features [P, F] -> scores [P]`` (a LightGBM booster's ``predict``), or ``None``
            for :meth:`candidates` alone.
    """

    def __init__(self, data: StageData, sizes: dict[str, int], recent: int = 10, ranker=None):
        unknown = set(sizes) - set(SOURCES)
        if unknown:
            raise ValueError(f"unknown candidate sources {sorted(unknown)}; known: {list(SOURCES)}")
        if recent < 1:
            raise ValueError(f"recent must be >= 1, got {recent}")
        self.data, self.recent, self.ranker = data, int(recent), ranker
        self.sizes = {s: int(sizes.get(s, 0) or 0) for s in SOURCES}
        if data.content is None:
            self.sizes["content"] = 0
        self.feature_names = list(FEATURES) + [f"content_{m}" for m in (data.modalities if data.content is not None else {})]
        # per-item features, computed once
        age = np.log1p(np.maximum(data.now - data.first_seen, 0.0) / 86400.0)  # [I], NaN: never seen
        self._item = {"pop_log": torch.log1p(data.popularity), "age_log_days": torch.from_numpy(age.astype(np.float32)),
                      "pop_recent_log": torch.log1p(torch.from_numpy(np.array(data.recent_popularity, dtype=np.float32))),
                      "cold": (data.popularity == 0).float()}
        self._blocks, self._search, self._projection = [], None, None
        if data.content is not None:  # each modality's unit rows (content blocks are scaled by 1/sqrt(M))
            scale = len(data.modalities) ** 0.5
            bounds = np.cumsum([0, *data.modalities.values()])
            self._blocks = [data.content[:, a:b] * scale for a, b in zip(bounds[:-1], bounds[1:])]  # [I, d_m] each
            if data.projection is not None:
                self._projection = torch.from_numpy(np.asarray(data.projection, dtype=np.float32))  # [D, k]
                self._search = data.content @ self._projection  # [I, k]

    def candidates(self, queries: torch.Tensor, histories: Sequence[np.ndarray],
                   exclude: Sequence[np.ndarray] | None = None) -> Candidates:
        """Candidates and features for query vectors ``[B, d]`` whose known items (oldest
        first) are ``histories[b]``; ``exclude[b]`` (default: the history) is never proposed."""
        d = self.data
        b, num_items = len(queries), d.num_items
        exclude = histories if exclude is None else exclude
        blocked = torch.zeros(b, num_items, dtype=torch.bool)  # [B, I] never proposed
        rows = np.repeat(np.arange(b), [len(e) for e in exclude])
        if len(rows):
            blocked[torch.as_tensor(rows), torch.as_tensor(np.concatenate(exclude).astype(np.int64))] = True
        blocked |= ~d.rankable.unsqueeze(0)
        recent = [np.asarray(h[-self.recent:], dtype=np.int64) for h in histories]
        model = queries.float() @ d.item_vectors.T  # [B, I]
        profiles = [self._profile(block, recent) for block in self._blocks]  # [B, d_m] each, unit (0: no history)
        content = self._content_scores(profiles, b)  # [B, I]
        cooc = torch.from_numpy((history_csr(recent, num_items) @ d.cooc).toarray().astype(np.float32))  # [B, I]
        cooc_all = torch.from_numpy((history_csr(histories, num_items) @ d.cooc).toarray().astype(np.float32))  # [B, I]
        pop = self._item["pop_log"].expand(b, num_items)  # [B, I]
        scores = {"model": model, "content": content, "cooccurrence": cooc, "popular": pop}
        ranks, best = {}, {}  # per source: ranks [B, I] and each row's best proposable score [B]
        proposed_any = torch.zeros(b, num_items, dtype=torch.bool)
        for source in SOURCES:
            n = min(self.sizes[source], num_items)
            rank = torch.full((b, num_items), float(self.sizes[source]))  # [B, I], not proposed: the size
            if n:
                masked = scores[source].masked_fill(blocked, -torch.inf)
                if source == "cooccurrence":  # no co-occurrence at all is no proposal
                    masked = masked.masked_fill(masked <= 0, -torch.inf)
                values, top = _stable_top(masked, n)  # [B, n]
                best[source] = values[:, 0]
                got = ~torch.isneginf(values)
                rank.scatter_(1, top, torch.where(got, torch.arange(n, dtype=torch.float32).expand(b, n),
                                                  float(self.sizes[source])))
                proposed_any |= rank < self.sizes[source]
            ranks[source] = rank
        proposed_any &= ~blocked
        pairs = proposed_any.nonzero()  # [P, 2] row-major, items ascending
        r, i = pairs[:, 0], pairs[:, 1]
        hist_len = torch.tensor([len(h) for h in histories], dtype=torch.float32)  # [B]
        # scores relative to the row's best: a user's scale differs, a tree's thresholds do not
        model_top = best.get("model", model.masked_fill(blocked, -torch.inf).max(1).values)
        cooc_top = best.get("cooccurrence", cooc.max(1).values).clamp_min(1e-12).nan_to_num(1.0, posinf=1.0, neginf=1.0)
        per_modality = [_pair_dots(block, profile, r, i) for block, profile in zip(self._blocks, profiles)]  # [P] each
        content_pairs = torch.stack(per_modality).mean(0) if per_modality else torch.zeros(len(r))
        columns = [model[r, i], model[r, i] - model_top[r], ranks["model"][r, i], content_pairs, ranks["content"][r, i],
                   cooc[r, i], cooc[r, i] / cooc_top[r], ranks["cooccurrence"][r, i], cooc_all[r, i],
                   cooc_all[r, i] / cooc_all.masked_fill(blocked, 0).max(1).values.clamp_min(1e-12)[r], pop[r, i],
                   self._item["pop_recent_log"][i], self._item["age_log_days"][i], self._item["cold"][i], torch.log1p(hist_len)[r], self._group_share(histories, r, i)]
        columns += per_modality
        features = torch.stack(columns, dim=1).numpy().astype(np.float32)  # [P, F]
        proposed = torch.stack([ranks[s][r, i] < self.sizes[s] for s in SOURCES], dim=1)  # [P, S]
        return Candidates(pairs, features, proposed, model)

    def _content_scores(self, profiles: list[torch.Tensor], b: int) -> torch.Tensor:
        """``[B, I]`` the content source's score: the mean over modalities of each item's cosine
        with the row's profile, i.e. the fused content's dot product with the profiles
        concatenated over sqrt(M); in the projected space where the data has one."""
        if not profiles:
            return torch.zeros(b, self.data.num_items)
        query = torch.cat(profiles, dim=1) / len(profiles) ** 0.5  # [B, D] in the fused layout
        if self._search is not None:
            return (query @ self._projection) @ self._search.T  # [B, k] @ [k, I]
        return query @ self.data.content.T

    def _profile(self, block: torch.Tensor, recent: list[np.ndarray]) -> torch.Tensor:
        """``[B, d_m]`` the unit mean of each row's recent items' block (0 without history);
        an item's cosine with it is its block's dot product."""
        lengths = torch.tensor([len(r) for r in recent])
        flat = torch.as_tensor(np.concatenate(recent) if recent else np.zeros(0, np.int64))
        row = torch.repeat_interleave(torch.arange(len(recent)), lengths)
        profile = torch.zeros(len(recent), block.shape[1]).index_add_(0, row, block[flat])  # [B, d_m]
        return profile / profile.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def _group_share(self, histories: Sequence[np.ndarray], r: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """``[P]`` share of row ``r``'s history in item ``i``'s group (NaN: no groups)."""
        groups = self.data.groups
        if groups is None:
            return torch.full((len(r),), float("nan"))
        num_groups = int(groups.max()) + 2  # code -1 (no group) counted in the last column
        lengths = torch.tensor([len(h) for h in histories])
        flat = torch.as_tensor(np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if len(histories)
                               else np.zeros(0, np.int64))
        row = torch.repeat_interleave(torch.arange(len(histories)), lengths)
        counts = torch.zeros(len(histories), num_groups).index_put_((row, groups[flat] % num_groups),
                                                                     torch.ones(len(flat)), accumulate=True)  # [B, G+1]
        share = counts / counts.sum(1, keepdim=True).clamp_min(1)
        g = groups[i]
        return torch.where(g >= 0, share[r, g % num_groups], torch.zeros(len(r)))

    def scores(self, queries: torch.Tensor, histories: Sequence[np.ndarray],
               exclude: Sequence[np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-stage full ranking ``[B, I]``: the ranker's scores on the candidates, above
        every other item, which follow in the model's order; and ``proposed [B, I, S]``."""
        if self.ranker is None:
            raise ValueError("TwoStage.scores needs a ranker")
        c = self.candidates(queries, histories, exclude)
        b, num_items = c.model_scores.shape
        # non-candidates: below -1, in the model's order (a monotone shift of its scores)
        model = c.model_scores
        top = model.masked_fill(~torch.isfinite(model), -torch.inf).max(1, keepdim=True).values.nan_to_num(0.0, neginf=0.0)
        full = -1.0 - (top - model).clamp_min(0)  # [B, I]
        proposed = torch.zeros(b, num_items, len(SOURCES), dtype=torch.bool)
        if len(c.pairs):
            ranked = torch.as_tensor(np.asarray(self.ranker(c.features), dtype=np.float64))  # [P]
            r, i = c.pairs[:, 0], c.pairs[:, 1]
            low = torch.full((b,), float("inf"), dtype=torch.float64).scatter_reduce(0, r, ranked, "amin")
            full[r, i] = (ranked - low[r]).float()  # >= 0: every candidate above every other item
            proposed[r, i] = c.proposed
        return full, proposed


def _stable_top(scores: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk`` with equal scores in id order (lower first), as :func:`top_items`."""
    values, ids = torch.topk(scores, n, dim=1)
    return _ties_by_id(scores, values, ids)


def bundle_arrays(data: StageData) -> dict[str, np.ndarray]:
    """The :data:`~mmrec.serving.bundle.RANKER_ARRAYS` of a (known-history) view, as export writes them."""
    cooc = data.cooc.tocsr()
    return {"cooc_indptr": cooc.indptr.astype(np.int64), "cooc_indices": cooc.indices.astype(np.int64),
            "cooc_values": cooc.data.astype(np.float32), "item_first_seen": data.first_seen.astype(np.float64),
            "item_recent_popularity": data.recent_popularity.astype(np.float32),
            **({"content_projection": data.projection.astype(np.float32)} if data.projection is not None else {})}


def load_two_stage(bundle) -> TwoStage:
    """The bundle's ranking stage: its sources over the bundle's view, scored by ``ranker.txt``."""
    import lightgbm as lgb

    entry = bundle.manifest["ranker"]
    booster = lgb.Booster(model_file=str(bundle.root / "ranker.txt"))
    stage = TwoStage(StageData.from_bundle(bundle), entry["sizes"], entry["recent"],
                     ranker=lambda x: booster.predict(x, num_threads=1))
    if stage.feature_names != list(entry["features"]):
        raise ValueError(f"{bundle.root / 'manifest.json'}: the ranker was trained on features {entry['features']}, "
                         f"this mmrec computes {stage.feature_names}; re-export the run with ranker=lightgbm")
    return stage
