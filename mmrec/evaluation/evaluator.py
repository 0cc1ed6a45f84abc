"""The one home of evaluation: what is excluded per split, the item groups, blocked scoring
into a reused buffer, and what is collected (hit counts; top-k lists where a metric needs
them).

Plain torch, no Lightning. Evaluation (:meth:`Evaluator.start`) and the recommendation tables
(:meth:`Evaluator.top_items`) rank with :func:`mmrec.core.ranking.top_items` and the same
masking; serving's exact index calls that same function on the exported vectors (it does not
go through the Evaluator, which it never imports), so a recommendation shown to a user and a
hit counted in evaluation come from the same ranking (tested: served lists equal evaluated
lists).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from mmrec.core.interactions import InteractionMatrix
from mmrec.core.items import ItemSets
from mmrec.evaluation import beyond
from mmrec.core.ranking import top_items
from mmrec.evaluation.ranking import MetricAccumulator, hits_of, ranked_hits

#: ``score_fn(users [b], out) -> scores [b, I]``; ``out`` is a ``[b, I]`` buffer to write into, or
#: ``None`` (return a fresh tensor). The scores are masked in place.
ScoreFn = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]

#: The interactions removed from a user's ranking when evaluating a split: everything the
#: user is known to have interacted with before it. ``known`` is all of the user's history
#: (what serving filters).
HISTORY: dict[str, tuple[str, ...]] = {"valid": ("train",), "test": ("train", "valid"),
                                       "known": ("train", "valid")}

#: Values of the ``lists`` setting: collect top-k lists (and beyond-accuracy metrics) on
#: ``every`` evaluation, only on the ``final`` ones (the selected checkpoint), or ``never``.
LIST_MODES = ("never", "final", "every")


def embedding_scorer(user_emb: torch.Tensor, item_emb: torch.Tensor,
                     score_all: Callable[..., torch.Tensor] | None = None) -> ScoreFn:
    """A :data:`ScoreFn` from user / item representations; ``score_all(u [b, d], items [I, d],
    out=)`` defaults to the dot product (the contract of every recommender here)."""
    if score_all is None:
        return lambda us, out=None: torch.mm(user_emb[us], item_emb.T, out=out)
    return lambda us, out=None: score_all(user_emb[us], item_emb, out=out)


class Evaluator(nn.Module):
    """Full-ranking evaluation of one dataset split.

    Args:
        splits: ``{"train": ..., "valid": ..., "test": ...}`` interaction sets (``train`` is
            required: it is excluded from every ranking and gives item popularity).
        item_sets: warm / cold items of the split (metrics are also reported per group).
        ks: cut-offs of every metric.
        block: users scored at once on a CPU, into one reused ``[block, I]`` buffer that stays
            in cache (``None``: a whole batch; GPUs always score a whole batch). Results do
            not depend on it.
        content: ``[I, D]`` item content vectors (the fused raw features) for intra-list
            diversity; ``None``: the model's item representations are used, and the metric
            is named ``ild_emb`` instead of ``ild_content``.
        lists: when top-k lists (and with them the beyond-accuracy metrics) are collected:
            ``final`` (the evaluations of the selected checkpoint), ``every`` or ``never``.
        history: split -> the splits excluded from its ranking (default :data:`HISTORY`).
        metrics: accuracy metrics (names of :data:`mmrec.evaluation.metrics.METRICS`).
    """

    def __init__(self, splits: Mapping[str, InteractionMatrix], item_sets: ItemSets,
                 ks: Sequence[int] = (10, 20, 50), block: int | None = 128, content: torch.Tensor | None = None,
                 lists: str = "final", history: Mapping[str, Sequence[str]] | None = None,
                 metrics: Sequence[str] = ("recall", "ndcg", "precision", "map", "hit")):
        super().__init__()
        if "train" not in splits:
            raise ValueError(f"splits need a 'train' entry, got {sorted(splits)}")
        if not ks or min(ks) < 1:
            raise ValueError(f"evaluation cut-offs must be >= 1, got {list(ks)}")
        if block is not None and block < 1:
            raise ValueError(f"block must be >= 1 or None, got {block}")
        if lists not in LIST_MODES:
            raise ValueError(f"lists must be one of {LIST_MODES}, got {lists!r}")
        self.splits = dict(splits)
        for name, matrix in self.splits.items():  # submodules: they follow the module's device
            self.add_module(f"{name}_split", matrix)
        self.item_sets = item_sets
        self.ks = sorted(int(k) for k in ks)
        self.block = block
        self.lists = lists
        self.history_of = {k: tuple(v) for k, v in (history or HISTORY).items()}
        self.metric_names = list(metrics)
        if content is not None and content.shape[0] != item_sets.num_items:
            raise ValueError(f"content has {content.shape[0]} rows for {item_sets.num_items} items")
        self.register_buffer("content", content, persistent=False)  # [I, D] or None
        train = self.splits["train"]
        degree = train.item_degree()  # [I] training users per item
        self.register_buffer("item_degree", degree, persistent=False)
        self.register_buffer("long_tail", ~beyond.short_head(degree), persistent=False)  # [I] bool

    @property
    def num_items(self) -> int:
        return self.item_sets.num_items

    @property
    def num_users(self) -> int:
        return self.splits["train"].num_users

    def history(self, split: str) -> list[InteractionMatrix]:
        """The interaction sets excluded from the ranking of ``split`` (a user's known items)."""
        if split not in self.history_of:
            raise KeyError(f"no history rule for split {split!r}; known: {sorted(self.history_of)}")
        return [self.splits[s] for s in self.history_of[split]]

    def users(self, split: str) -> torch.Tensor:
        """The users evaluated on ``split``: those with at least one item in it."""
        return self.splits[split].users_with_items()

    def _block(self, device: torch.device) -> int | None:
        return self.block if device.type == "cpu" else None

    def top_items(self, score_fn: ScoreFn, users: torch.Tensor, k: int, split: str = "known",
                  unrankable: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(item ids [B, k], scores [B, k])``: the full ranking of ``users`` with the history
        of ``split`` removed and ``unrankable`` items last: the lists that evaluation judges
        (its hits are counted from the same masking and order) and that serving shows."""
        block = self._block(users.device)
        return top_items(lambda us: score_fn(us, None), users, self.history(split), min(k, self.num_items),
                         unrankable, block)

    def start(self, split: str, score_fn: ScoreFn, unrankable: torch.Tensor | None = None,
              lists: bool = False, item_emb: torch.Tensor | None = None,
              device: torch.device | None = None) -> "EvaluationPass":
        """Begin a pass over ``split``; feed it user batches with :meth:`EvaluationPass.update`.

        ``lists``: also collect the top-k lists and compute the beyond-accuracy metrics.
        ``item_emb``: the model's item representations, for intra-list diversity when the
        evaluator has no content vectors.
        """
        return EvaluationPass(self, split, score_fn, unrankable, lists, item_emb,
                              device or self.item_sets.warm.device)

    def evaluate(self, score_fn: ScoreFn, split: str, unrankable: torch.Tensor | None = None,
                 lists: bool = False, item_emb: torch.Tensor | None = None, batch_size: int = 1024) -> dict[str, float]:
        """A whole pass over ``split``'s users in batches of ``batch_size``: ``{"recall@20": ...}``."""
        users = self.users(split)
        run = self.start(split, score_fn, unrankable, lists, item_emb, users.device)
        for begin in range(0, len(users), batch_size):
            run.update(users[begin:begin + batch_size])
        return run.compute()


class EvaluationPass:
    """One evaluation of one split: accumulates hit counts per item group (and the top-k lists
    when asked) over user batches, then computes every metric once. Made by
    :meth:`Evaluator.start`; holds one reused ``[block, I]`` score buffer on a CPU."""

    def __init__(self, evaluator: Evaluator, split: str, score_fn: ScoreFn, unrankable: torch.Tensor | None,
                 lists: bool, item_emb: torch.Tensor | None, device: torch.device):
        self.evaluator = evaluator
        self.split = split
        self.exclude = evaluator.history(split)
        self.truth = evaluator.splits[split]
        self.unrankable = unrankable
        self.lists = lists
        self.item_emb = item_emb
        self.groups = evaluator.item_sets.groups()
        self.block = evaluator._block(device)
        self.max_k = max(evaluator.ks)
        self.accumulators = {g: MetricAccumulator(evaluator.ks, evaluator.metric_names) for g in self.groups}
        # the top-k lists of the pass (with lists): int32 [U, max_k] preallocated for the split's users, filled
        # block by block; only its metrics are computed at the end (no [U, I] tensor outside a scoring block)
        self._tops = torch.full((len(evaluator.users(split)) if lists else 0, self.max_k), -1, dtype=torch.int32)
        self._filled = 0
        # one [block, I] score buffer for the whole pass (CPU blocks)
        buffer = (torch.empty(self.block, evaluator.num_items, device=device)
                  if self.block is not None else None)
        if buffer is None:
            self._score = lambda us: score_fn(us, None)
        else:
            self._score = lambda us: score_fn(us, buffer[:len(us)])

    def update(self, users: torch.Tensor) -> None:
        """Rank every item for ``users`` ``[B]`` and count their hits."""
        ev = self.evaluator
        if self.lists:
            k = min(self.max_k, ev.num_items)
            top, values = top_items(self._score, users, self.exclude, k, self.unrankable, self.block)  # [B, k]
            # hits exactly as the rank count gives them (tested), so that the accuracy figures do
            # not depend on whether lists were collected
            groups = hits_of(top, users, self.truth, self.groups)
            if k < self.max_k:  # a catalogue smaller than the longest cut-off: no hit past its end
                pad = top.new_full((len(users), self.max_k - k), -1)
                groups = {g: (torch.cat([h, pad >= 0], dim=1), n) for g, (h, n) in groups.items()}
                top, values = torch.cat([top, pad], dim=1), torch.cat([values, pad.to(values.dtype)], dim=1)
            # masked and unrankable slots (-inf) are never shown: empty for the list metrics
            shown = top.masked_fill(torch.isneginf(values), -1).to(torch.int32).cpu()
            end = self._filled + len(users)
            if end > len(self._tops):  # more users than the split has (a caller's own batches): grow
                grow = torch.full((end - len(self._tops), self.max_k), -1, dtype=torch.int32)
                self._tops = torch.cat([self._tops, grow])
            self._tops[self._filled:end] = shown
            self._filled = end
        else:
            groups = ranked_hits(self._score, users, self.exclude, self.truth, self.max_k, self.unrankable,
                                 self.block, self.groups)
        for group, (hits, num_pos) in groups.items():  # hits [B, max_k], num_pos [B]
            self.accumulators[group].update(hits, num_pos)

    def top_lists(self) -> torch.Tensor:
        """``[n, max_k]`` int32 the lists collected so far (``-1``: empty slot); only with ``lists``."""
        if not self.lists:
            raise RuntimeError("this pass does not collect lists (start it with lists=True)")
        return self._tops[:self._filled]

    def compute(self) -> dict[str, float]:
        """Accuracy per item group (``recall@20``, ``warm/recall@20``, ``cold/recall@20``, ...)
        and, with lists, the beyond-accuracy metrics of all lists of the pass."""
        out = {f"{group}{name}": value for group, acc in self.accumulators.items()
               for name, value in acc.compute().items()}
        if self.lists and self._filled:
            out.update(self._beyond(self.top_lists()))
        return out

    def _beyond(self, top: torch.Tensor) -> dict[str, float]:
        ev, ks = self.evaluator, self.evaluator.ks
        degree, cold = ev.item_degree.cpu(), ev.item_sets.cold.cpu()
        if ev.content is not None:
            vectors, ild_name = ev.content.cpu(), "ild_content"
        elif self.item_emb is not None:
            vectors, ild_name = self.item_emb.detach().float().cpu(), "ild_emb"
        else:
            vectors, ild_name = None, ""
        values = {
            "coverage": beyond.item_coverage(top, ks, ev.num_items),
            "gini": beyond.gini_index(top, ks, ev.num_items),
            "entropy": beyond.shannon_entropy(top, ks, ev.num_items),
            "avg_pop": beyond.average_popularity(top, ks, degree),
            "aplt": beyond.long_tail_share(top, ks, ev.long_tail.cpu()),
            "novelty": beyond.novelty(top, ks, degree, ev.num_users),
            "cold_exposure": beyond.cold_exposure(top, ks, cold),
        }
        if bool(cold.any()):
            values["cold/coverage"] = beyond.item_coverage(top, ks, ev.num_items, cold)
        if vectors is not None:
            values[ild_name] = beyond.intra_list_diversity(top, ks, vectors)
        return {f"{name}@{k}": float(v) for name, series in values.items() for k, v in zip(ks, series.tolist())}
