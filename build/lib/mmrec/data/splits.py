"""Interaction filtering and splitting rules, as vectorised NumPy functions.

Everything here works on integer-coded arrays ``users, items, timestamps`` (one entry per
interaction, duplicates already collapsed), so the same code serves a 100-row test and a
66-million-review category. Split codes are those of the prepared format: 0 train,
1 validation, 2 test.

Rules (``split_interactions(rule=...)``):

* ``random`` — per user, a random 8:1:1 share of the user's interactions (the MMRec
  protocol). For a user with ``n`` interactions the test and validation parts get
  ``ceil(n * ratio)`` each, but never so many that training is left empty.
* ``leave_last_out`` — per user, the latest interaction (by timestamp) is test, the one
  before it validation, the rest training (the Amazon Reviews 2023 benchmark protocol).
  Ties in time are broken by a seeded random order. A user with 2 interactions gives one to
  training and one to test; with 1, training only.
* ``global_time`` — one clock for everyone: ``timestamp < t1`` train, ``t1 <= timestamp <
  t2`` validation, ``timestamp >= t2`` test (no interaction from the future in training).
  Users or items first seen after ``t1`` are naturally cold.

The ``cold_items`` option (a share in [0, 1)) is applied after any rule: that share of
items, drawn at random, is removed from training entirely; their interactions go to
validation or test (a seeded coin per interaction), so evaluation contains items no model
has seen a training interaction of.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

TRAIN, VALID, TEST = 0, 1, 2
RULES = ("random", "leave_last_out", "global_time")


def kcore(users: np.ndarray, items: np.ndarray, k: int, max_rounds: int = 1000) -> tuple[np.ndarray, list[dict]]:
    """Iterative k-core: drop users and items with fewer than ``k`` interactions until none is left.

    Returns a boolean keep-mask over the interactions and one record per round (counts of
    interactions / users / items remaining), so the summary can show how fast it converged.
    Ids must be non-negative integers (any range).
    """
    keep = np.ones(len(users), dtype=bool)
    rounds: list[dict] = []
    if k <= 1:
        return keep, rounds
    n_u, n_i = int(users.max(initial=-1)) + 1, int(items.max(initial=-1)) + 1
    rows = np.arange(len(users))  # surviving rows: each round works on fewer
    u, i = users, items
    for _ in range(max_rounds):
        u_deg = np.bincount(u, minlength=n_u)
        i_deg = np.bincount(i, minlength=n_i)
        ok = (u_deg[u] >= k) & (i_deg[i] >= k)
        if ok.all():
            break
        rows, u, i = rows[ok], u[ok], i[ok]
        rounds.append({"interactions": int(len(rows)), "users": int(np.count_nonzero(np.bincount(u, minlength=n_u))),
                       "items": int(np.count_nonzero(np.bincount(i, minlength=n_i)))})
    else:
        raise RuntimeError(f"k-core with k={k} did not converge in {max_rounds} rounds")
    keep[:] = False
    keep[rows] = True
    return keep, rounds


def _rank_within_user(users: np.ndarray, *keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of every interaction inside its user's list sorted by ``keys`` (first key
    primary; 0-based), and the user's list length, both aligned with the input."""
    order = np.lexsort(tuple(reversed(keys)) + (users,))  # lexsort: last key is the primary one
    sorted_users = users[order]
    counts = np.bincount(users, minlength=int(users.max(initial=-1)) + 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(users), dtype=np.int64)
    rank[order] = np.arange(len(users)) - starts[sorted_users]
    return rank, counts[users]


def split_random(users: np.ndarray, valid_ratio: float = 0.1, test_ratio: float = 0.1,
                 seed: int = 0) -> np.ndarray:
    """Per-user random split; see the module docstring."""
    rng = np.random.default_rng(seed)
    rank, n = _rank_within_user(users, rng.random(len(users)))
    n_test = np.minimum(np.ceil(n * test_ratio), np.maximum(n - 1, 0)).astype(np.int64)
    n_valid = np.minimum(np.ceil(n * valid_ratio), np.maximum(n - 1 - n_test, 0)).astype(np.int64)
    split = np.full(len(users), TRAIN, dtype=np.int8)
    # the last n_test positions of the shuffled list are test, the n_valid before them validation
    split[rank >= n - n_test] = TEST
    split[(rank >= n - n_test - n_valid) & (rank < n - n_test)] = VALID
    return split


def split_leave_last_out(users: np.ndarray, timestamps: np.ndarray, seed: int = 0) -> np.ndarray:
    """Per-user temporal split: latest -> test, second latest -> validation."""
    rng = np.random.default_rng(seed)
    rank, n = _rank_within_user(users, timestamps, rng.random(len(users)))
    split = np.full(len(users), TRAIN, dtype=np.int8)
    split[(rank == n - 1) & (n >= 2)] = TEST
    split[(rank == n - 2) & (n >= 3)] = VALID
    return split


def split_global_time(timestamps: np.ndarray, t1: int, t2: int) -> np.ndarray:
    """Global temporal cut-offs ``t1 <= t2`` (same unit as the timestamps)."""
    if t1 > t2:
        raise ValueError(f"global_time split: t1={t1} must not be after t2={t2}")
    split = np.full(len(timestamps), TRAIN, dtype=np.int8)
    split[timestamps >= t1] = VALID
    split[timestamps >= t2] = TEST
    return split


def hold_out_cold_items(items: np.ndarray, split: np.ndarray, share: float, num_items: int,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Move every interaction of a random ``share`` of items out of training.

    Returns the new split codes and the boolean mask of cold items. Their interactions go
    to validation or test with probability 1/2 each (seeded).
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"cold_items share must be in [0, 1), got {share}")
    rng = np.random.default_rng(seed + 1)
    cold = np.zeros(num_items, dtype=bool)
    n_cold = int(round(share * num_items))
    if n_cold:
        cold[rng.choice(num_items, size=n_cold, replace=False)] = True
    split = split.copy()
    hit = cold[items]
    split[hit] = np.where(rng.random(int(hit.sum())) < 0.5, VALID, TEST).astype(np.int8)
    return split, cold


def split_interactions(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, *, rule: str,
                       num_items: int, valid_ratio: float = 0.1, test_ratio: float = 0.1,
                       t1: int | None = None, t2: int | None = None, cold_items: float = 0.0,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Apply a rule (and the optional cold-item hold-out). Returns ``(split codes, cold mask)``."""
    if rule == "random":
        split = split_random(users, valid_ratio, test_ratio, seed)
    elif rule == "leave_last_out":
        split = split_leave_last_out(users, timestamps, seed)
    elif rule == "global_time":
        if t1 is None or t2 is None:
            raise ValueError("global_time split needs both t1 and t2 (timestamps, same unit as the data)")
        split = split_global_time(timestamps, int(t1), int(t2))
    else:
        raise ValueError(f"unknown split rule {rule!r}; choose one of {RULES}")
    if cold_items:
        return hold_out_cold_items(items, split, cold_items, num_items, seed)
    return split, np.zeros(num_items, dtype=bool)


@dataclass
class SplitRule:
    """A split as a config object (``dataset.source.split`` in Hydra); see the module docstring.

    Args:
        rule: ``random`` | ``leave_last_out`` | ``global_time``.
        valid_ratio / test_ratio: shares for ``random``.
        t1 / t2: cut-offs for ``global_time`` (same unit as the timestamps: ms for Amazon 2023).
        cold_items: share of items held out of training entirely (0 = none).
        seed: seeds the random parts (shuffles, tie-breaks, cold items).
    """

    rule: str = "random"
    valid_ratio: float = 0.1
    test_ratio: float = 0.1
    t1: int | None = None
    t2: int | None = None
    cold_items: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown split rule {self.rule!r}; choose one of {RULES}")
        if self.rule == "global_time" and (self.t1 is None or self.t2 is None):
            raise ValueError("split rule global_time needs t1 and t2 (e.g. dataset.source.split.t1=...)")

    def apply(self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray,
              num_items: int) -> tuple[np.ndarray, np.ndarray]:
        return split_interactions(users, items, timestamps, rule=self.rule, num_items=num_items,
                                  valid_ratio=self.valid_ratio, test_ratio=self.test_ratio,
                                  t1=self.t1, t2=self.t2, cold_items=self.cold_items, seed=self.seed)

    def as_dict(self) -> dict:
        return asdict(self)
