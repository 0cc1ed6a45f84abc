"""Generated data for tests, smoke runs and scale benchmarks.

:class:`SyntheticSource` (``dataset=synthetic``) writes a prepared dataset shaped like an
Amazon 5-core category at any size.

:func:`write_amazon2023` writes ``<Category>.jsonl[.gz]`` and ``meta_<Category>.jsonl[.gz]``
with the real field names and types. Users and items follow skewed (Zipf-like) activity, a
share of reviews repeats an earlier (user, item) pair at a later time, and optional faults
can be injected (malformed JSON, missing fields, wrong types) at known line numbers, which
the function returns so a test can check they are reported exactly.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from mmrec.data.prepared import DatasetError
from mmrec.data.source import DatasetSource

_WORDS = ("soft gentle hydrating cream serum lotion fresh floral matte gloss shampoo brush "
          "organic vegan travel size daily repair smooth bright natural scent long lasting").split()


def _ids(prefix: str, n: int, width: int, rng: np.random.Generator) -> np.ndarray:
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    body = rng.integers(0, len(alphabet), size=(n, width - len(prefix)))
    ids = np.array([prefix + "".join(row) for row in alphabet[body]], dtype=object)
    return ids


def _open(path: Path, gz: bool):
    return gzip.open(path, "wt", compresslevel=1, encoding="utf-8") if gz else open(path, "w", encoding="utf-8")


def write_amazon2023(folder: str | Path, category: str = "Synthetic", *, num_reviews: int = 1000,
                     num_users: int = 200, num_items: int = 100, duplicate_share: float = 0.02,
                     text_words: int = 30, gz: bool = True, seed: int = 0,
                     image_base_url: str = "http://127.0.0.1:1/images",
                     faults: dict[int, str] | None = None, chunk: int = 200_000) -> dict:
    """Write the two files; returns paths, the item/user id arrays and the fault line numbers.

    ``faults`` maps a 1-based review line number to a kind: ``"json"`` (truncated JSON),
    ``"missing_user"`` (no user_id), ``"wrong_type"`` (timestamp as text), ``"blank"``.
    Those lines replace the review that would have been there.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    users = _ids("A", num_users, 28, rng)
    items = _ids("B0", num_items, 10, rng)
    # skewed activity: Zipf-like weights over users and items
    pu = 1.0 / np.arange(1, num_users + 1) ** 0.6
    pi = 1.0 / np.arange(1, num_items + 1) ** 0.8
    faults = dict(faults or {})
    suffix = ".jsonl.gz" if gz else ".jsonl"
    reviews_path = folder / f"{category}{suffix}"
    t0 = 1_500_000_000_000
    with _open(reviews_path, gz) as fh:
        line_no = 0
        for start in range(0, num_reviews, chunk):
            n = min(chunk, num_reviews - start)
            u = rng.choice(num_users, size=n, p=pu / pu.sum())
            i = rng.choice(num_items, size=n, p=pi / pi.sum())
            ts = t0 + rng.integers(0, 200_000_000_000, size=n)
            rating = rng.integers(1, 6, size=n)
            dup = rng.random(n) < duplicate_share
            if start + n > 1 and dup.any():  # repeat an earlier pair of this chunk, later in time
                src = rng.integers(0, np.maximum(np.arange(n), 1))
                u = np.where(dup, u[src], u)
                i = np.where(dup, i[src], i)
                ts = np.where(dup, ts[src] + 1000, ts)
            words = rng.integers(0, len(_WORDS), size=(n, text_words))
            out = []
            for k in range(n):
                line_no += 1
                kind = faults.get(line_no)
                if kind == "blank":
                    out.append("\n")
                    continue
                rec = {"rating": float(rating[k]), "title": "Review title", "text":
                       " ".join(_WORDS[w] for w in words[k]), "images": [], "asin": items[i[k]],
                       "parent_asin": items[i[k]], "user_id": users[u[k]], "timestamp": int(ts[k]),
                       "helpful_vote": 0, "verified_purchase": True}
                if kind == "missing_user":
                    del rec["user_id"]
                elif kind == "wrong_type":
                    rec["timestamp"] = "yesterday"
                text = json.dumps(rec)
                if kind == "json":
                    text = text[: len(text) // 2]
                out.append(text + "\n")
            fh.write("".join(out))
    meta_path = folder / f"meta_{category}{suffix}"
    with _open(meta_path, gz) as fh:
        for k, asin in enumerate(items):
            rec = {"main_category": "All Beauty", "title": f"Product {k} <b>{_WORDS[k % len(_WORDS)]}</b>",
                   "average_rating": 4.2, "rating_number": 10,
                   "features": [f"{_WORDS[(k + 1) % len(_WORDS)]} &amp; {_WORDS[(k + 2) % len(_WORDS)]}"],
                   "description": [f"<p>Made for {_WORDS[(k + 3) % len(_WORDS)]} skin.</p>"], "price": None,
                   "images": [{"thumb": f"{image_base_url}/{asin}_thumb.jpg",
                               "large": f"{image_base_url}/{asin}.jpg", "variant": "MAIN",
                               "hi_res": f"{image_base_url}/{asin}_hires.jpg"}],
                   "videos": [], "store": "Brand", "categories": ["Beauty", "Skin Care"], "details": {},
                   "parent_asin": asin, "bought_together": None}
            fh.write(json.dumps(rec) + "\n")
    return {"reviews": reviews_path, "meta": meta_path, "users": users, "items": items,
            "faults": faults}


# --------------------------------------------------------------------------------------
# An Amazon-shaped prepared dataset at any size (dataset=synthetic), for scale benchmarks
# --------------------------------------------------------------------------------------
def _heavy_tailed_degrees(total: int, n: int, minimum: int, cap: int, exponent: float,
                          rng: np.random.Generator) -> np.ndarray:
    """``n`` integer degrees, each in ``[minimum, cap]``, summing to ``total``: ``minimum`` each
    plus a multinomial share of the rest with weights ``rank^-exponent`` (ranks shuffled, so
    an id says nothing about its activity). A degree over ``cap`` gives its excess back to the
    others (repeated until none is over)."""
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    weights = weights[rng.permutation(n)]
    degrees = np.full(n, minimum, dtype=np.int64) + rng.multinomial(total - minimum * n, weights / weights.sum())
    for _ in range(100):
        excess = int(np.maximum(degrees - cap, 0).sum())
        if not excess:
            return degrees
        np.minimum(degrees, cap, out=degrees)
        room = (degrees < cap) * weights
        degrees += rng.multinomial(excess, room / room.sum())
    raise ValueError(f"cannot fit {total} interactions into {n} ids of at most {cap} each")


def bipartite_with_degrees(user_degrees: np.ndarray, item_degrees: np.ndarray, rng: np.random.Generator,
                           max_rounds: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """A simple bipartite graph (no repeated pair) with exactly the given degrees.

    Configuration model: the item "stubs" (item ``i`` repeated ``item_degrees[i]`` times) are
    shuffled onto the user stubs; a pair drawn twice has its item swapped with a random other
    edge's (the swap keeps every degree), repeated until no pair repeats. Memory and time are
    linear in the number of edges (a sort per round; rounds shrink fast on sparse graphs)."""
    if user_degrees.sum() != item_degrees.sum():
        raise ValueError(f"degree sums differ: users {user_degrees.sum()}, items {item_degrees.sum()}")
    num_items = len(item_degrees)
    users = np.repeat(np.arange(len(user_degrees), dtype=np.int64), user_degrees)  # [E], sorted by user
    items = rng.permutation(np.repeat(np.arange(num_items, dtype=np.int64), item_degrees))  # [E]
    for _ in range(max_rounds):
        key = users * num_items + items
        order = np.argsort(key, kind="stable")
        repeated = order[1:][key[order[1:]] == key[order[:-1]]]  # every occurrence after a pair's first
        if not len(repeated):
            return users, items
        # shuffle the items among the repeated edges and as many random others: a permutation of
        # values keeps every item's (and, users untouched, every user's) degree
        pos = np.unique(np.concatenate([repeated, rng.integers(0, len(items), size=len(repeated))]))
        items[pos] = items[pos[rng.permutation(len(pos))]]
    raise ValueError(f"no simple graph found in {max_rounds} rounds: the degrees are too dense "
                     f"(max user degree {user_degrees.max()} of {num_items} items)")


class SyntheticSource(DatasetSource):
    """Interactions shaped like an Amazon 5-core category, at any size, with optional random
    features: for scale benchmarks (``dataset=synthetic``), not for quality numbers.

    * User activity and item popularity are heavy-tailed: each id gets ``kcore`` interactions
      plus a multinomial share of the rest with weight ``rank^-exponent`` (ranks shuffled).
    * The pairs are a simple bipartite graph with exactly those degrees
      (:func:`bipartite_with_degrees`), so the data is already ``kcore``-core and has exactly
      ``num_users`` users, ``num_items`` items and ``num_interactions`` interactions: the
      k-core filter of a real category has nothing left to remove.
    * Split: per user at random (``split.valid_ratio`` / ``split.test_ratio``, the MMRec
      protocol; :func:`mmrec.data.splits.split_random`); an item whose interactions all land in
      validation / test is naturally cold.
    * ``features``: modality name -> dimension; each item a standard-normal vector (stored as
      ``feature_dtype``), written ``chunk_items`` items at a time from a generator seeded per
      chunk, so the memory a store needs does not grow with the catalogue.
    """

    makes_features = True

    def __init__(self, num_users: int = 20_000, num_items: int = 7_000, num_interactions: int = 160_000,
                 user_exponent: float = 0.5, item_exponent: float = 0.6, kcore: int = 5,
                 split: dict | None = None, features: dict[str, int] | None = None,
                 feature_dtype: str = "float16", chunk_items: int = 4096, seed: int = 0):
        self.num_users, self.num_items, self.num_interactions = int(num_users), int(num_items), int(num_interactions)
        self.user_exponent, self.item_exponent, self.kcore = float(user_exponent), float(item_exponent), int(kcore)
        self.split = {"valid_ratio": 0.1, "test_ratio": 0.1, **dict(split or {})}
        self.features = {str(k): int(v) for k, v in dict(features or {}).items()}
        self.feature_dtype, self.chunk_items, self.seed = feature_dtype, int(chunk_items), int(seed)
        least = self.kcore * max(self.num_users, self.num_items)
        if self.num_interactions < least:
            raise DatasetError(f"dataset.source.num_interactions={self.num_interactions}: a {self.kcore}-core of "
                               f"{self.num_users} users and {self.num_items} items needs at least {least}; "
                               f"raise it or lower num_users / num_items")
        if self.num_interactions > self.num_users * self.num_items // 2:
            raise DatasetError(f"dataset.source.num_interactions={self.num_interactions}: more than half of all "
                               f"{self.num_users} x {self.num_items} pairs; this generator makes sparse data")

    def describe(self) -> dict:
        return {"type": "synthetic", **{k: v for k, v in vars(self).items()}}

    def feature_names(self) -> list[str]:
        return sorted(self.features)

    def generate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(users, items, timestamps, split)`` of every interaction; nothing is written."""
        from mmrec.data.splits import split_random

        rng = np.random.default_rng(self.seed)
        n = self.num_interactions
        user_deg = _heavy_tailed_degrees(n, self.num_users, self.kcore, self.num_items // 2, self.user_exponent, rng)
        item_deg = _heavy_tailed_degrees(n, self.num_items, self.kcore, self.num_users // 2, self.item_exponent, rng)
        users, items = bipartite_with_degrees(user_deg, item_deg, rng)
        timestamps = 1_500_000_000 + rng.integers(0, 200_000_000, size=n)  # seconds, no order meaning
        split = split_random(users, self.split["valid_ratio"], self.split["test_ratio"], self.seed)
        return users, items, timestamps, split

    def prepare(self, root: str | Path) -> dict:
        import pandas as pd

        from mmrec.data.prepared import write_prepared

        root = Path(root)
        users, items, timestamps, split = self.generate()
        interactions = pd.DataFrame({"user": users, "item": items, "timestamp": timestamps, "split": split})
        del users, items, timestamps, split
        manifest = write_prepared(
            root, name="synthetic", interactions=interactions,
            items=pd.DataFrame({"item": np.arange(self.num_items)}),
            users=pd.DataFrame({"user": np.arange(self.num_users)}),
            split_rule={"rule": "random_8_1_1_per_user", **self.split, "seed": self.seed},
            source=self.describe(), expected_features=self.feature_names())
        for offset, (modality, dim) in enumerate(sorted(self.features.items())):
            manifest = self._write_feature(root, modality, dim, offset)
        return manifest

    def _write_feature(self, root: Path, modality: str, dim: int, offset: int) -> dict:
        from mmrec.data.prepared import register_feature
        from mmrec.features.store import FeatureStore

        rel = f"features/{modality}.lmdb"
        with FeatureStore.create(root / rel, dim=dim, num_items=self.num_items, modality_encoder="random:normal",
                                 dtype=self.feature_dtype) as writer:
            for start in range(0, self.num_items, self.chunk_items):
                ids = np.arange(start, min(start + self.chunk_items, self.num_items))
                # one stream per (seed, modality, chunk): a chunk is the same whatever the chunk order
                block = np.random.default_rng([self.seed, offset, start]).standard_normal((len(ids), dim),
                                                                                          dtype=np.float32)
                writer.put_many(ids, block)
        return register_feature(root, modality, {
            "path": rel, "dim": dim, "dtype": self.feature_dtype, "modality_encoder": "random:normal",
            "count": self.num_items, "missing": 0})
