"""Retrieval indexes over the item vectors: ``exact`` (the evaluation's own ranking) and
``faiss`` (approximate, HNSW or IVF with inner product).

An index answers ``search(queries [B, d], n, exclude) -> (ids [B, n], scores [B, n])``: the
``n`` highest inner products per query among the rankable items, without the items of
``exclude`` (a :class:`~mmrec.core.interactions.RowItems` whose row ``b`` holds what query
``b`` must not get back: history, explicit exclusions). A slot that cannot be filled
holds id ``-1`` and score ``-inf``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from mmrec.core.interactions import RowItems
from mmrec.core.ranking import top_items

log = logging.getLogger(__name__)
logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build it tried is noise


class Index(Protocol):
    name: str

    def search(self, queries: torch.Tensor, n: int, exclude: RowItems) -> tuple[torch.Tensor, torch.Tensor]:
        ...


def _empty_slots(ids: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return ids.masked_fill(torch.isneginf(scores), -1), scores


class ExactIndex:
    """Every rankable item scored by one matrix product: the ranking that evaluation counts
    (:func:`mmrec.evaluation.ranking.top_items`: excluded items and unrankable items masked to
    ``-inf``, ties by item id), so with it a served list is the evaluated list.

    Args:
        item_vectors: ``[I, d]`` float32.
        rankable: ``[I]`` bool; ``False`` items are never returned.
        block: queries scored at once (a ``[block, I]`` score matrix).
    """

    name = "exact"

    def __init__(self, item_vectors: torch.Tensor, rankable: torch.Tensor, block: int = 128,
                 saved: tuple[Path, dict | None] | None = None):
        # ``saved`` (a bundle's FAISS index) is not needed: exact search reads the vectors.
        # The vectors are kept transposed and contiguous, [d, I]: a few queries against the
        # [I, d] layout's transposed view take MKL's slow path on this CPU (one query against
        # 100k x 64: about 3x the time; bench_serve_load.py). Built once before workers fork,
        # the copy is shared by them.
        self.items_t = item_vectors.T.contiguous()  # [d, I]
        self.unrankable = ~rankable if not bool(rankable.all()) else None
        self.block = block

    def search(self, queries: torch.Tensor, n: int, exclude: RowItems) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(len(queries))
        n = min(n, self.items_t.shape[1])
        ids, scores = top_items(lambda r: queries[r] @ self.items_t, rows, [exclude], n, self.unrankable,
                                self.block)  # [B, n]
        return _empty_slots(ids, scores)


class FaissIndex:
    r"""A FAISS index of the rankable items' vectors for maximum inner-product search.

    Scores are inner products of vectors whose norms differ (popular items have longer
    vectors). ``mips="l2"`` (default) reduces the search to a nearest-neighbour search in L2
    (Bachrach et al. 2014): items are indexed as :math:`[x, \sqrt{M^2 - \lVert x\rVert^2}]`
    with :math:`M` the largest item norm, queries as :math:`[q, 0]`, so that
    :math:`\lVert q' - x'\rVert^2 = \lVert q\rVert^2 + M^2 - 2\,q^\top x` and the nearest items
    are those of highest inner product. ``mips="ip"`` indexes the vectors as they are with
    FAISS's inner-product metric. Which finds the top better depends on the vectors: on
    trained LightGCN vectors of Baby, whose users share a popularity direction, HNSW32 at
    efSearch 128 reached recall@100 0.99 with ``l2`` and 0.57 with ``ip``; on isotropic
    Gaussian vectors with widely spread norms ``ip`` does better (``bench_recommend.py
    latency`` reports both). Either way the found items' exact inner products are returned.

    Args:
        item_vectors: ``[I, d]`` float32.
        rankable: ``[I]`` bool; only rankable items are indexed.
        factory: FAISS factory string (``"HNSW32"``, ``"IVF1024,Flat"``, ``"Flat"``, ...).
        ef_search: HNSW's search breadth (the recall-latency knob of ``HNSW*``); ``None``: the value
            export tuned for the bundle's recall target (:meth:`tune`), else 128.
        nprobe: IVF's probed lists (the recall-latency knob of ``IVF*``); ``None``: the tuned
            value, else 16.
        ef_construction: HNSW's build breadth.
        mips: ``l2`` (augmented vectors, L2 metric) or ``ip`` (inner-product metric).
        saved: ``(path, entry)`` of an index saved in the bundle at export, ``entry`` its
            manifest record (``factory``, tuned ``ef_search`` / ``nprobe``, measured recall): read
            instead of built when its factory is this one.
        threads: FAISS OpenMP threads (``None``: FAISS's default).
    """

    name = "faiss"

    def __init__(self, item_vectors: np.ndarray | torch.Tensor, rankable: np.ndarray | torch.Tensor,
                 factory: str = "HNSW32", ef_search: int | None = None, nprobe: int | None = None,
                 ef_construction: int = 200, saved: tuple[Path, dict | None] | None = None, threads: int | None = None,
                 mips: str = "l2"):
        import faiss

        if mips not in ("l2", "ip"):
            raise ValueError(f"mips must be 'l2' or 'ip', got {mips!r}")
        self.mips = mips

        if threads is not None:
            faiss.omp_set_num_threads(threads)
        vectors = np.asarray(item_vectors, dtype=np.float32)
        rankable = np.asarray(rankable, dtype=bool)
        subset = vectors[rankable]  # [n, d]
        norms2 = (subset.astype(np.float64) ** 2).sum(1)  # [n]
        self.max_norm2 = float(norms2.max()) if len(norms2) else 0.0
        extra = np.sqrt(np.clip(self.max_norm2 - norms2, 0.0, None)).astype(np.float32)[:, None]  # [n, 1]
        self.ids = torch.as_tensor(np.flatnonzero(rankable), dtype=torch.long)  # index position -> item id
        self.items = torch.as_tensor(vectors)  # [I, d], shares the (memory-mapped) array
        self.factory = factory
        self.build_seconds = 0.0
        index = None
        entry = (saved[1] or {}) if saved is not None else {}
        if saved is not None and entry.get("factory") == f"{factory}/{mips}" and Path(saved[0]).is_file():
            index = faiss.read_index(str(saved[0]))
            log.info("read the bundle's FAISS %s index (%d vectors)", factory, index.ntotal)
        if index is None:
            if saved is not None:
                log.info("building a FAISS %s index of %d items (the bundle has none saved for it)", factory,
                         len(self.ids))
            start = time.perf_counter()
            if mips == "l2":
                augmented = np.ascontiguousarray(np.concatenate([subset, extra], axis=1))  # [n, d + 1]
                index = faiss.index_factory(augmented.shape[1], factory, faiss.METRIC_L2)
            else:
                augmented = np.ascontiguousarray(subset)  # [n, d]
                index = faiss.index_factory(augmented.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
            if "HNSW" in factory:
                faiss.ParameterSpace().set_index_parameter(index, "efConstruction", ef_construction)
            if not index.is_trained:
                index.train(augmented)
            index.add(augmented)
            self.build_seconds = time.perf_counter() - start
        elif index.ntotal != len(self.ids) or index.d != vectors.shape[1] + (mips == "l2"):
            raise ValueError(f"the saved FAISS index holds {index.ntotal} vectors of dimension {index.d}, the bundle "
                             f"{len(self.ids)} rankable items of {vectors.shape[1]}-d: re-export the bundle")
        self.index = index
        # the search breadth: as asked, else as export tuned it for the bundle's index, else FAISS-typical
        tuned = entry if entry.get("factory") == f"{factory}/{mips}" else {}
        self.knob = "efSearch" if "HNSW" in factory else "nprobe" if "IVF" in factory else None
        asked = ef_search if self.knob == "efSearch" else nprobe
        default = 128 if self.knob == "efSearch" else 16
        if self.knob is not None:
            self.set_breadth(int(asked if asked is not None else tuned.get(self.knob, default)))
        self.recall = tuned.get("recall") if asked is None else None  # measured at export, for the tuned breadth

    def set_breadth(self, value: int) -> None:
        """Set the recall-latency knob (``efSearch`` for HNSW, ``nprobe`` for IVF)."""
        import faiss

        if self.knob is not None:
            faiss.ParameterSpace().set_index_parameter(self.index, self.knob, value)
            self.breadth = value

    def _found(self, queries: np.ndarray, want: int) -> torch.Tensor:
        """``[B, want]`` item ids FAISS finds for ``queries`` (``-1``: none), no exclusions."""
        q = np.asarray(queries, dtype=np.float32)
        if self.mips == "l2":
            q = np.concatenate([q, np.zeros((len(q), 1), dtype=np.float32)], axis=1)
        _, pos = self.index.search(np.ascontiguousarray(q), want)
        pos_t = torch.as_tensor(pos)
        return torch.where(pos_t >= 0, self.ids[pos_t.clamp_min(0)], torch.full_like(pos_t, -1))

    def recall_at(self, queries: np.ndarray, k: int = 100) -> float:
        """Mean share of each query's exact top-``k`` rankable items that the index finds in its top ``k``."""
        k = min(k, len(self.ids))
        q = torch.as_tensor(np.asarray(queries, dtype=np.float32))
        rankable = self.items[self.ids]  # [n, d]
        hits = 0
        for start in range(0, len(q), 64):  # a [64, n] score block at a time
            block = q[start:start + 64]
            exact_ids = self.ids[(block @ rankable.T).topk(k, dim=1).indices]  # [b, k]
            found = self._found(block.numpy(), k)  # [b, k]
            hits += int((found.unsqueeze(2) == exact_ids.unsqueeze(1)).any(1).sum())
        return hits / (len(q) * k)

    def tune(self, queries: np.ndarray, target: float, k: int = 100) -> dict:
        """Choose the smallest search breadth (16, 32, ..., 8192) whose recall@``k`` on the first half
        of ``queries`` reaches ``target``, set it, and measure recall on the other half (held out):
        ``{knob: value, "recall": held-out recall@k, "target_recall", "k", "queries"}``. An exact
        factory (``Flat``) has no knob: its recall is measured only."""
        half = max(1, len(queries) // 2)
        choose, held_out = queries[:half], queries[half:] if len(queries) > 1 else queries
        if self.knob is not None:
            ladder = [16 << i for i in range(10)]
            if self.knob == "nprobe":
                ladder = [v for v in ladder if v < self.index.nlist] + [self.index.nlist]
            for value in ladder:
                self.set_breadth(value)
                if self.recall_at(choose, k) >= target:
                    break
        self.recall = round(self.recall_at(held_out, k), 4)
        out = {"recall": self.recall, "target_recall": target, "k": k, "queries": len(held_out)}
        return {self.knob: self.breadth, **out} if self.knob is not None else out

    def save(self, path: str | Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    def search(self, queries: torch.Tensor, n: int, exclude: RowItems) -> tuple[torch.Tensor, torch.Tensor]:
        extra = int(exclude.counts().max()) if exclude.nnz else 0  # excluded items may take slots
        want = min(n + extra, len(self.ids))
        q = np.asarray(queries, dtype=np.float32)
        ids = self._found(q, want)  # [B, want]
        # exact inner products of the found items (recovering them from the distances would lose
        # precision to cancellation in float32)
        found = self.items[ids.clamp_min(0)]  # [B, want, d]
        scores_t = torch.einsum("bd,bwd->bw", torch.as_tensor(q), found).masked_fill(ids < 0, -torch.inf)
        rows = torch.arange(len(queries)).unsqueeze(1).expand_as(ids)
        drop = (ids < 0) | exclude.contains(rows, ids.clamp_min(0))  # [B, want]
        scores_t = scores_t.masked_fill(drop, -torch.inf)
        # keep each row's first n survivors, in FAISS's order (descending inner product)
        order = torch.sort(drop.to(torch.int8), dim=1, stable=True).indices[:, :n]  # survivors first
        ids, scores_t = ids.gather(1, order), scores_t.gather(1, order)
        if ids.shape[1] < n:
            pad = n - ids.shape[1]
            ids = torch.cat([ids, ids.new_full((len(ids), pad), -1)], dim=1)
            scores_t = torch.cat([scores_t, scores_t.new_full((len(ids), pad), -torch.inf)], dim=1)
        return _empty_slots(ids, scores_t)


INDEXES = {"exact": ExactIndex, "faiss": FaissIndex}
"""Index classes by config name (``conf/index``)."""
