"""Files in the Amazon Reviews 2023 format, generated: for tests, smoke runs and scale benchmarks.

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
