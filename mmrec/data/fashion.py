"""A shop with real product photos: the Fashion Product Images layout -> prepared dataset.

The public "Fashion Product Images" set is a folder of ``images/<id>.jpg`` and ``styles.csv``
(``id, gender, masterCategory, subCategory, articleType, baseColour, season, year, usage,
productDisplayName``); ``../shared/data/product-photos`` is a 1,200-photo copy whose table is
named ``products.csv`` (same columns; either name is read). The set has no interactions, so
shoppers are generated (:func:`persona_interactions`): each has a stated taste, and what they
buy follows it, with noise and a popularity bias. Their personas are kept in
``<root>/personas.json``, so what a model recommends can be checked against what each shopper
is known to like.

Stages: ``items`` (item table + generated interactions + personas) -> ``images`` (the local
photos validated, resized, cached) -> ``tables``; then the ``modality_encoder`` stages extract
image and text features, as for every staged source.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mmrec.data.itemtable import ImageOptions, atomic_parquet, run_image_stage, write_tables
from mmrec.data.prepared import DatasetError
from mmrec.data.source import DatasetSource
from mmrec.data.splits import _rank_within_user, split_random
from mmrec.data.stages import Stage, run_stages
from mmrec.data.text import clean_text

COLUMNS = ("id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "year",
           "usage", "productDisplayName")
TABLE_NAMES = ("styles.csv", "products.csv")  # the public set's name, then the local copy's
#: the attributes a persona states, and the weight of a match in a shopper's affinity for an item
TASTE_WEIGHTS = {"articleType": 3.0, "baseColour": 1.0, "usage": 1.0, "season": 0.5}


def read_styles(folder: Path) -> pd.DataFrame:
    """The product table (``styles.csv`` or ``products.csv``) as strings, one row per id.

    The public ``styles.csv`` has lines whose display name contains commas without quotes:
    the fields after the ninth are joined back into ``productDisplayName``. A line with fewer
    fields, an id twice or a non-numeric id is an error naming the file and line."""
    path = next((folder / name for name in TABLE_NAMES if (folder / name).exists()), None)
    if path is None:
        raise DatasetError(f"{folder}: no {' or '.join(TABLE_NAMES)}; dataset.source.path must be a Fashion "
                           "Product Images folder (images/<id>.jpg and styles.csv)")
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header[:len(COLUMNS)]) != COLUMNS:
            raise DatasetError(f"{path}: line 1 must be the header {','.join(COLUMNS)}; found {header}")
        for line_no, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) < len(COLUMNS):
                raise DatasetError(f"{path}, line {line_no}: {len(fields)} fields, expected {len(COLUMNS)} "
                                   f"({','.join(COLUMNS)}); fix or delete the line")
            fields = fields[:len(COLUMNS) - 1] + [",".join(fields[len(COLUMNS) - 1:])]
            if not fields[0].strip().isdigit():
                raise DatasetError(f"{path}, line {line_no}: id {fields[0]!r} is not a number (images are "
                                   "images/<id>.jpg)")
            rows.append([f.strip() for f in fields])
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    dup = table["id"].duplicated()
    if dup.any():
        raise DatasetError(f"{path}: id {table['id'][dup].iloc[0]} appears twice; keep one line per product")
    if table.empty:
        raise DatasetError(f"{path}: no products")
    return table


def product_text(row: dict) -> str:
    """The display name, then the labelled attributes (what a shopper's words would match)."""
    parts = [clean_text(row["productDisplayName"])]
    for label, key in (("Type", "articleType"), ("Colour", "baseColour"), ("For", "gender"), ("Usage", "usage"),
                       ("Season", "season"), ("Category", "subCategory")):
        if row.get(key):
            parts.append(f"{label}: {row[key]}")
    return ". ".join(p for p in parts if p)


def persona_interactions(products: pd.DataFrame, num_shoppers: int, interactions_per_shopper: int,
                         noise_share: float, popularity_exponent: float, temperature: float,
                         seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """Generated shoppers: ``(users, items, steps, personas)``.

    Every draw comes from one ``numpy`` generator seeded with ``seed``:

    * A persona states a gender (Men or Women; Unisex items suit both), 1-3 article types, 1-2
      colours, one usage and one season, each drawn in proportion to how many products have
      it (a shop's assortment shapes its customers).
    * Affinity of shopper ``s`` for item ``i``: the sum of :data:`TASTE_WEIGHTS` over the stated
      attributes ``i`` matches, plus ``popularity_exponent`` x the log of a Zipf popularity of
      ``i`` (ranks shuffled); an item for the other gender is never bought by taste.
    * A shopper buys ``max(5, Poisson(interactions_per_shopper))`` distinct items: a share
      ``noise_share`` drawn by popularity alone, the rest by ``softmax(affinity / temperature)``;
      both without replacement (Gumbel top-k over the catalogue, all shoppers at once).
    * ``steps`` orders each shopper's items at random (1, 2, ...).
    """
    rng = np.random.default_rng(seed)
    num_items = len(products)
    attrs = {key: products[key].to_numpy() for key in ("gender", *TASTE_WEIGHTS)}

    shares = {}  # attribute -> (values, share of products with each): what personas are drawn from
    for key in TASTE_WEIGHTS:
        values, counts = np.unique(attrs[key][attrs[key] != ""], return_counts=True)
        shares[key] = (values, counts / counts.sum())

    def draw(key: str, low: int, high: int) -> list[str]:
        values, p = shares[key]
        n = min(int(rng.integers(low, high + 1)), len(values))
        return sorted(rng.choice(values, size=n, replace=False, p=p).tolist())

    personas = []
    for shopper in range(num_shoppers):
        personas.append({"shopper": shopper, "gender": str(rng.choice(["Men", "Women"])),
                         "articleType": draw("articleType", 1, 3), "baseColour": draw("baseColour", 1, 2),
                         "usage": draw("usage", 1, 1), "season": draw("season", 1, 1)})
    log_pop = -np.log(np.arange(1, num_items + 1))[rng.permutation(num_items)]  # [I] Zipf ranks, shuffled
    affinity = np.zeros((num_shoppers, num_items))  # [S, I]
    for key, weight in TASTE_WEIGHTS.items():
        liked = np.array([np.isin(attrs[key], p[key]) for p in personas])  # [S, I]
        affinity += weight * liked
    gender = np.array([p["gender"] for p in personas])
    suits = (attrs["gender"][None, :] == gender[:, None]) | np.isin(attrs["gender"], ["Unisex", ""])[None, :]
    taste = np.where(suits, affinity / temperature + popularity_exponent * log_pop, -np.inf)  # [S, I]
    noise = np.broadcast_to(popularity_exponent * log_pop, taste.shape)
    counts = np.minimum(np.maximum(5, rng.poisson(interactions_per_shopper, num_shoppers)), num_items // 2)
    n_noise = rng.binomial(counts, noise_share)
    gumbel = rng.gumbel(size=(2, num_shoppers, num_items))
    by_taste = np.argsort(-(taste + gumbel[0]), axis=1)  # [S, I] a taste-weighted order without replacement
    by_pop = np.argsort(-(noise + gumbel[1]), axis=1)  # [S, I] a popularity-weighted order
    users, items = [], []
    for s in range(num_shoppers):  # per shopper only to merge two short lists without repeats
        picked = by_pop[s, :n_noise[s]].tolist()
        taken = set(picked)
        picked += [i for i in by_taste[s, :counts[s]].tolist() if i not in taken][:counts[s] - len(picked)]
        users += [s] * len(picked)
        items += picked
    users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    steps = _rank_within_user(users, rng.random(len(users)))[0] + 1  # a random order within each shopper
    return users, items, steps, personas


class FashionProductsSource(DatasetSource):
    """Prepare ``dataset=fashion``.

    Args:
        path: a Fashion Product Images folder (``images/<id>.jpg`` and ``styles.csv`` or
            ``products.csv``).
        num_shoppers, interactions_per_shopper, noise_share, popularity_exponent, temperature,
            seed: the shopper generator (:func:`persona_interactions`).
        valid_ratio, test_ratio: per-shopper random split (the MMRec protocol).
        images: validation / resizing options of the photos (local files).
        progress: progress bars.
    """

    staged = True  # prepared by `mmrec.prepare` in resumable stages

    def __init__(self, path: str, num_shoppers: int = 1000, interactions_per_shopper: int = 20,
                 noise_share: float = 0.2, popularity_exponent: float = 0.5, temperature: float = 0.7,
                 seed: int = 0, valid_ratio: float = 0.1, test_ratio: float = 0.1,
                 images: ImageOptions | None = None, progress: bool = True):
        if not 0.0 <= noise_share <= 1.0:
            raise ValueError(f"noise_share must be in [0, 1], got {noise_share}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.path = Path(path)
        self.num_shoppers, self.interactions_per_shopper = int(num_shoppers), int(interactions_per_shopper)
        self.noise_share, self.popularity_exponent = float(noise_share), float(popularity_exponent)
        self.temperature, self.seed = float(temperature), int(seed)
        self.valid_ratio, self.test_ratio = float(valid_ratio), float(test_ratio)
        self.images = images or ImageOptions(workers=2)
        self.progress = progress

    def _generator(self) -> dict:
        return {"num_shoppers": self.num_shoppers, "interactions_per_shopper": self.interactions_per_shopper,
                "noise_share": self.noise_share, "popularity_exponent": self.popularity_exponent,
                "temperature": self.temperature, "seed": self.seed, "valid_ratio": self.valid_ratio,
                "test_ratio": self.test_ratio}

    def describe(self) -> dict:
        return {"type": "fashion", "path": str(self.path), **self._generator(), "images": self.images.as_dict()}

    def stages(self, root: str | Path) -> list[Stage]:
        root = Path(root)
        return [Stage("items", self._generator(), lambda: self._items(root)),
                Stage("images", self.images.as_dict(), lambda: self._images(root)),
                Stage("tables", {}, lambda: self._tables(root))]

    def prepare(self, root: str | Path, force: Sequence[str] = (), until: str | None = None) -> list[dict]:
        return run_stages(root, self.stages(root), force=force, until=until)

    def _items(self, root: Path) -> dict:
        products = read_styles(self.path)
        photos = [self.path / "images" / f"{pid}.jpg" for pid in products["id"]]
        records = products.to_dict("records")
        items = pd.DataFrame({"item": range(len(products)), "raw_id": products["id"].to_numpy(),
                              "title": [clean_text(r["productDisplayName"]) for r in records],
                              "text": [product_text(r) for r in records],
                              "image_urls": [json.dumps([str(p)] if p.exists() else []) for p in photos]})
        users, item_ids, steps, personas = persona_interactions(
            products, self.num_shoppers, self.interactions_per_shopper, self.noise_share,
            self.popularity_exponent, self.temperature, self.seed)
        split = split_random(users, self.valid_ratio, self.test_ratio, self.seed)
        inter = pd.DataFrame({"user": users, "item": item_ids, "timestamp": steps, "split": split})
        work = root / "work"
        atomic_parquet(inter, work / "interactions.parquet")
        atomic_parquet(items, work / "items.parquet")
        atomic_parquet(pd.DataFrame({"user": range(self.num_shoppers),
                                     "raw_id": [f"s{s}" for s in range(self.num_shoppers)]}),
                       work / "users.parquet")
        tmp = root / ".personas.json.tmp"
        tmp.write_text(json.dumps(personas, indent=1))
        tmp.replace(root / "personas.json")
        return {"products": len(products), "shoppers": self.num_shoppers, "interactions": len(inter),
                "no_photo": int((items["image_urls"] == "[]").sum()),
                "article_types": int(products["articleType"].nunique())}

    def _images(self, root: Path) -> dict:
        return run_image_stage(root, self.images, progress=self.progress, local_dir=self.path)

    def _tables(self, root: Path) -> dict:
        rule = {"rule": "random_8_1_1_per_user", "detail": "generated shoppers (personas.json), per shopper a "
                f"random {1 - self.valid_ratio - self.test_ratio:.0%} / {self.valid_ratio:.0%} / "
                f"{self.test_ratio:.0%} split", "seed": self.seed}
        return write_tables(root, "fashion", rule, self.describe())


def read_personas(root: str | Path) -> list[dict]:
    """The shoppers' stated tastes written by the ``items`` stage (``<root>/personas.json``)."""
    path = Path(root) / "personas.json"
    if not path.exists():
        raise DatasetError(f"{path}: not found; prepare the dataset with python -m mmrec.prepare dataset=fashion")
    return json.loads(path.read_text())
