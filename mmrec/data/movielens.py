"""MovieLens-100k multimodal (``../shared/data/ml100k-mm``) -> prepared dataset.

The interactions come in the MMRec format with their split (75,000 / 12,000 / 13,000); the
item side goes through the same item-table and image stages as Amazon: text assembled and
cleaned from the plot summary, genres, cast and director (title kept separately), posters
validated, resized and cached in ``images/`` (466 of 1,682 movies have one: the others are a
real missing-image case, recorded and masked).

Stages: ``items`` (interactions + item table) -> ``images`` -> ``tables``.

``cold_items`` (default 0: the given split unchanged) moves every interaction of a random
share of the movies out of training, half of them to validation and half to test
(:func:`mmrec.data.splits.hold_out_cold_items`): the given split has only 25 cold test
interactions, too few to measure whether content carries cold items (``dataset=ml100k_cold``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mmrec.data.itemtable import (
    ImageOptions,
    atomic_parquet,
    run_image_stage,
    write_tables,
)
from mmrec.data.mmrec_format import _read_mapping, read_inter
from mmrec.data.prepared import DatasetError
from mmrec.data.source import DatasetSource
from mmrec.data.splits import TRAIN, hold_out_cold_items, split_leave_last_out
from mmrec.data.stages import Stage, run_stages
from mmrec.data.text import clean_text

TEXT_FIELDS = ("summary", "genres", "cast", "director")
SPLITS = ("given", "leave_last_out")
_LABELS = {"summary": "", "genres": "Genres: ", "cast": "Cast: ", "director": "Director: "}


def movie_text(row: dict, fields: Sequence[str]) -> str:
    """Cleaned plot summary, then labelled genres / cast / director ("|" lists become ", ")."""
    parts = []
    for name in fields:
        value = row.get(name)
        if value is None or (isinstance(value, float) and value != value):  # NaN from CSV
            continue
        text = clean_text(str(value).replace("|", ", "))
        if text:
            parts.append(_LABELS.get(name, "") + text.rstrip("."))
    return ". ".join(parts)


class MovieLens100kSource(DatasetSource):
    """Prepare ``dataset=ml100k``.

    Args:
        path: the ``ml100k-mm`` folder (``ml100k.inter``, ``items.csv``, ``posters/``).
        text_fields: ``items.csv`` columns joined into the item text.
        images: validation / resizing options for the posters (they are local files).
        progress: progress bars.
        cold_items: share of movies held out of training entirely (0: the given split).
        cold_seed: seed choosing the held-out movies and their validation/test side.
        split: ``given`` (the ``x_label`` column) or ``leave_last_out`` (per user by timestamp:
            latest -> test, second latest -> validation; not with ``cold_items``).
        split_seed: seed of the random order breaking ties in time (``leave_last_out`` only).
    """

    staged = True  # prepared by `mmrec.prepare` in resumable stages

    def __init__(self, path: str, text_fields: Sequence[str] = TEXT_FIELDS, images: ImageOptions | None = None,
                 progress: bool = True, cold_items: float = 0.0, cold_seed: int = 0, split: str = "given",
                 split_seed: int = 0):
        if not 0.0 <= cold_items < 1.0:
            raise ValueError(f"cold_items must be a share in [0, 1), got {cold_items}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split == "leave_last_out" and cold_items:
            raise ValueError(f"split=leave_last_out cannot be combined with cold_items={cold_items}: held-out "
                             "movies would move interactions from the middle of a user's history into "
                             "validation/test; use one or the other (dataset=ml100k_seq or dataset=ml100k_cold)")
        self.path = Path(path)
        self.text_fields = tuple(text_fields)
        self.images = images or ImageOptions(workers=2)
        self.progress = progress
        self.cold_items = float(cold_items)
        self.cold_seed = int(cold_seed)
        self.split = split
        self.split_seed = int(split_seed)

    def _split_settings(self) -> dict:
        # nothing for the given split, so that folders prepared before the option existed (and
        # their stage keys) stay valid; any other split names itself and its tie-break seed
        return {} if self.split == "given" else {"split": self.split, "split_seed": self.split_seed}

    def describe(self) -> dict:
        return {"type": "ml100k", "path": str(self.path), "text_fields": list(self.text_fields),
                "images": self.images.as_dict(), "cold_items": self.cold_items, "cold_seed": self.cold_seed,
                **self._split_settings()}

    def stages(self, root: str | Path) -> list[Stage]:
        root = Path(root)
        return [Stage("items", {"text_fields": list(self.text_fields), "cold_items": self.cold_items,
                                "cold_seed": self.cold_seed, **self._split_settings()}, lambda: self._items(root)),
                Stage("images", self.images.as_dict(), lambda: self._images(root)),
                Stage("tables", {}, lambda: self._tables(root))]

    def prepare(self, root: str | Path, force: Sequence[str] = (), until: str | None = None) -> list[dict]:
        return run_stages(root, self.stages(root), force=force, until=until)

    def _items(self, root: Path) -> dict:
        inter = read_inter(self.path / "ml100k.inter")
        csv = self.path / "items.csv"
        if not csv.exists():
            raise DatasetError(f"{csv}: not found; dataset.source.path must be the ml100k-mm folder.")
        meta = pd.read_csv(csv, dtype={"itemID": "int64"}, keep_default_na=True)
        unknown = sorted(set(self.text_fields) - set(meta.columns))
        if unknown:
            raise DatasetError(f"{csv}: no column(s) {unknown} for text_fields (columns: {list(meta.columns)}).")
        num_items = int(max(inter["item"].max() + 1, meta["itemID"].max() + 1))
        meta = meta.set_index("itemID").reindex(range(num_items))
        mapping = _read_mapping(self.path / "i_id_mapping.csv", "itemID")
        raw = mapping.set_index("idx")["raw_id"].reindex(range(num_items)).fillna("") if mapping is not None \
            else pd.Series([str(i) for i in range(num_items)])
        records = meta.reset_index().to_dict("records")
        posters = [self.path / "posters" / f"{i}.jpg" for i in range(num_items)]
        items = pd.DataFrame({"item": range(num_items), "raw_id": raw.to_numpy(),
                              "title": [clean_text(r.get("title")) if isinstance(r.get("title"), str) else ""
                                        for r in records],
                              "text": [movie_text(r, self.text_fields) for r in records],
                              "image_urls": [json.dumps([str(p)] if p.exists() else []) for p in posters]})
        num_users = int(inter["user"].max() + 1)
        if self.split == "leave_last_out":
            if "timestamp" not in inter:
                raise DatasetError(f"{self.path / 'ml100k.inter'}: no timestamp column; split=leave_last_out "
                                   "orders each user's interactions by it (use split=given).")
            inter["split"] = split_leave_last_out(inter["user"].to_numpy(), inter["timestamp"].to_numpy(),
                                                  self.split_seed).astype(inter["split"].dtype)
        cold = 0
        if self.cold_items:
            split, cold_mask = hold_out_cold_items(inter["item"].to_numpy(), inter["split"].to_numpy(),
                                                   self.cold_items, num_items, self.cold_seed)
            inter["split"] = split.astype(inter["split"].dtype)
            cold = int(cold_mask.sum())
        work = root / "work"
        atomic_parquet(inter, work / "interactions.parquet")
        atomic_parquet(items, work / "items.parquet")
        atomic_parquet(pd.DataFrame({"user": range(num_users)}), work / "users.parquet")
        train_items = np.unique(inter["item"].to_numpy()[inter["split"].to_numpy() == TRAIN])
        return {"users": num_users, "items": num_items, "interactions": len(inter),
                "held_out_items": cold, "items_without_training": num_items - len(train_items),
                "empty_text": int((items["text"] == "").sum()),
                "no_poster": int((items["image_urls"] == "[]").sum())}

    def _images(self, root: Path) -> dict:
        # the posters are local files of the configured source folder: the only ones read
        return run_image_stage(root, self.images, progress=self.progress, local_dir=self.path)

    def _tables(self, root: Path) -> dict:
        rule = {"rule": "given", "detail": "x_label of ml100k.inter (MMRec split)"}
        if self.split == "leave_last_out":
            rule = {"rule": "leave_last_out", "detail": "per user by the timestamps of ml100k.inter: latest -> test, "
                    "second latest -> validation, the rest training; ties in time broken by a random order "
                    f"seeded with split_seed={self.split_seed}", "split_seed": self.split_seed}
        if self.cold_items:
            rule.update(detail=rule["detail"] + f"; every interaction of {self.cold_items:.0%} of the movies "
                        "moved to validation/test (cold items)", cold_items=self.cold_items, cold_seed=self.cold_seed)
        return write_tables(root, "ml100k", rule, self.describe())
