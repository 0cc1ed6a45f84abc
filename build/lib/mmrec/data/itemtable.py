"""Pieces every real source shares: image options, the image stage, id remapping."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmrec.data.prepared import write_prepared


def atomic_parquet(table: pa.Table | pd.DataFrame, path: Path) -> None:
    """Write a table to ``path`` through a temporary file and a rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if isinstance(table, pd.DataFrame):
        table.to_parquet(tmp, index=False)
    else:
        pq.write_table(table, tmp)
    os.replace(tmp, path)


@dataclass
class ImageOptions:
    """How product images are fetched and validated (``dataset.source.images`` in Hydra).

    Args:
        enabled: fetch images at all (``false``: text only; every image recorded missing).
        workers: download threads.
        timeout: seconds per request.
        retries: extra attempts per URL on timeouts / 5xx.
        min_size: smallest accepted side in pixels (smaller = ``too_small``, masked).
        max_side: images are resized so their longer side is at most this.
        max_pixels: largest width x height decoded (bounds memory; larger = ``too_large``).
        max_failure_share: the stage fails (with counts and the command that retries) when
            more than this share of the items with an image URL get no usable picture.
    """

    enabled: bool = True
    workers: int = 8
    timeout: float = 10.0
    retries: int = 2
    min_size: int = 32
    max_side: int = 256
    max_pixels: int = 16_000_000
    max_failure_share: float = 0.5

    def as_dict(self) -> dict:
        """The options that define the stage's output (its key). The threshold only accepts or
        rejects an output, and max_pixels at its default changes nothing: leaving them out
        keeps datasets prepared before these keys existed from re-running every stage."""
        out = asdict(self)
        out.pop("max_failure_share")
        if self.max_pixels == next(f.default for f in fields(self) if f.name == "max_pixels"):
            out.pop("max_pixels")
        return out


def run_image_stage(root: Path, options: ImageOptions, progress: bool = True,
                    local_dir: str | os.PathLike | None = None) -> dict:
    """Fetch/validate/cache the images of ``work/items.parquet`` (its ``image_urls`` column:
    JSON lists of candidates) into ``root/images``; write ``root/work/images.parquet`` (one row
    per item: status, url, path, error). Returns status counts for the summary.

    ``local_dir``: the folder of a source configured as local, whose files may be candidates
    (else http(s) URLs only). Raises :class:`DatasetError` when the failure share is over
    ``options.max_failure_share`` (after writing the report, so a rerun retries the failures)."""
    root = Path(root)
    items = pd.read_parquet(root / "work" / "items.parquet", columns=["item", "image_urls"])
    requests = [(int(i), json.loads(u)) for i, u in zip(items["item"], items["image_urls"])]
    out = root / "work" / "images.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    if options.enabled:
        from mmrec.data.images import fetch_images

        report = fetch_images(list(requests), root / "images", workers=options.workers,
                              timeout=options.timeout, retries=options.retries,
                              min_size=options.min_size, max_side=options.max_side,
                              max_pixels=options.max_pixels, local_dir=local_dir, progress=progress)
    else:
        report = pd.DataFrame({"item": [r[0] for r in requests], "status": "disabled", "url": "",
                               "path": "", "bytes": 0, "error": ""})
    report = report.sort_values("item").reset_index(drop=True)
    atomic_parquet(report, out)
    if options.enabled:
        from mmrec.data.images import check_failure_share

        check_failure_share(report, options.max_failure_share, out)
    counts = report["status"].value_counts().to_dict()
    return {"images_ok": int(report["path"].astype(bool).sum()),
            "images_missing": int((~report["path"].astype(bool)).sum()),
            "image_status": {str(k): int(v) for k, v in counts.items()}}


def image_column(root: Path, num_items: int) -> np.ndarray:
    """``items.image`` values from the image stage's report: "images/<file>" or "" (missing)."""
    report = pd.read_parquet(Path(root) / "work" / "images.parquet")
    col = np.full(num_items, "", dtype=object)
    ok = report["path"].astype(bool).to_numpy()
    col[report["item"].to_numpy()[ok]] = ["images/" + Path(p).name for p in report["path"][ok]]
    return col


def write_tables(root: Path, name: str, split_rule: dict, source: dict) -> dict:
    """The last stage of every staged source: ``work/{interactions,items,users}.parquet`` plus
    the image report -> the prepared dataset (tables, then manifest.json)."""
    work = Path(root) / "work"
    items = pd.read_parquet(work / "items.parquet")
    items["image"] = image_column(root, len(items))
    manifest = write_prepared(root, name=name, interactions=pd.read_parquet(work / "interactions.parquet"),
                              items=items[["item", "raw_id", "title", "text", "image"]],
                              users=pd.read_parquet(work / "users.parquet"), split_rule=split_rule, source=source)
    return {"num_users": manifest["num_users"], "num_items": manifest["num_items"],
            **{f"{k}_interactions": v for k, v in manifest["num_interactions"].items()}}
