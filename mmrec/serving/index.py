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
                 saved: tuple[Path, str | None] | None = None):
        # ``saved`` (a bundle's FAISS index) is not needed: exact search reads the vectors
        self.items = item_vectors
        self.unrankable = ~rankable if not bool(rankable.all()) else None
        self.block = block

    def search(self, queries: torch.Tensor, n: int, exclude: RowItems) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(len(queries))
        n = min(n, self.items.shape[0])
        ids, scores = top_items(lambda r: queries[r] @ self.items.T, rows, [exclude], n, self.unrankable,
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
        ef_search: HNSW's search breadth (the recall-latency knob of ``HNSW*``).
        nprobe: IVF's probed lists (the recall-latency knob of ``IVF*``).
        ef_construction: HNSW's build breadth.
        mips: ``l2`` (augmented vectors, L2 metric) or ``ip`` (inner-product metric).
        saved: ``(path, factory)`` of an index saved in the bundle at export: read instead of
            built when its factory is this one.
        threads: FAISS OpenMP threads (``None``: FAISS's default).
    """

    name = "faiss"

    def __init__(self, item_vectors: np.ndarray | torch.Tensor, rankable: np.ndarray | torch.Tensor,
                 factory: str = "HNSW32", ef_search: int = 128, nprobe: int = 16, ef_construction: int = 200,
                 saved: tuple[Path, str | None] | None = None, threads: int | None = None, mips: str = "l2"):
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
        if saved is not None and saved[1] == f"{factory}/{mips}" and Path(saved[0]).is_file():
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
        params = faiss.ParameterSpace()
        if "HNSW" in factory:
            params.set_index_parameter(index, "efSearch", ef_search)
        if "IVF" in factory:
            params.set_index_parameter(index, "nprobe", nprobe)

    def save(self, path: str | Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    def search(self, queries: torch.Tensor, n: int, exclude: RowItems) -> tuple[torch.Tensor, torch.Tensor]:
        extra = int(exclude.counts().max()) if exclude.nnz else 0  # excluded items may take slots
        want = min(n + extra, len(self.ids))
        q = np.asarray(queries, dtype=np.float32)
        if self.mips == "l2":
            q_index = np.ascontiguousarray(np.concatenate([q, np.zeros((len(q), 1), dtype=np.float32)], axis=1))
        else:
            q_index = np.ascontiguousarray(q)
        _, pos = self.index.search(q_index, want)  # [B, want]
        pos_t = torch.as_tensor(pos)
        ids = torch.where(pos_t >= 0, self.ids[pos_t.clamp_min(0)], torch.full_like(pos_t, -1))  # [B, want]
        # exact inner products of the found items (recovering them from the distances would lose
        # precision to cancellation in float32)
        found = self.items[ids.clamp_min(0)]  # [B, want, d]
        scores_t = torch.einsum("bd,bwd->bw", torch.as_tensor(q), found).masked_fill(pos_t < 0, -torch.inf)
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
