"""Offline feature extraction into LMDB: batched, resumable, honest about missing inputs.

Features are computed once per dataset and encoder and stored; training only reads them.
A restarted extraction skips the items already in the store (vectors and recorded
missing alike), so an interrupted job resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mmrec.data.prepared import load_prepared, register_feature
from mmrec.features.store import FeatureStore

log = logging.getLogger(__name__)


def _load_image(root: Path, ref: str) -> Image.Image | None:
    if not ref:
        return None
    path = Path(ref) if Path(ref).is_absolute() else root / ref
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError, OSError) as err:
        log.warning("image of %s unusable (%s): recorded as missing", path, err)
        return None


def _extract(root: Path, name: str, encoder: Callable, inputs: Callable[[np.ndarray], list],
             num_items: int, batch_size: int, dtype: str, encoder_id: str) -> dict:
    rel = f"features/{name}.lmdb"
    start = time.time()
    with FeatureStore.create(root / rel, dim=encoder.dim, num_items=num_items, encoder=encoder_id,
                             dtype=dtype) as writer:
        todo = np.setdiff1d(np.arange(num_items), writer.done_ids())
        if len(todo) < num_items:
            log.info("%s: resuming, %d of %d items already stored", rel, num_items - len(todo), num_items)
        for pos in range(0, len(todo), batch_size):
            ids = todo[pos:pos + batch_size]
            batch = inputs(ids)
            ok = np.array([x is not None for x in batch], dtype=bool)
            if ok.any():
                with torch.inference_mode():
                    vectors = encoder([x for x in batch if x is not None])
                writer.put_many(ids[ok], vectors)
            writer.put_missing(ids[~ok])
    store = FeatureStore(root / rel)
    _, mask = store.bulk()
    store.close()
    log.info("%s: %d items encoded, %d missing (%.1fs)", rel, int(mask.sum()), int((~mask).sum()),
             time.time() - start)
    return register_feature(root, name, {"path": rel, "dim": encoder.dim, "dtype": dtype,
                                         "encoder": encoder_id, "count": int(mask.sum()),
                                         "missing": int((~mask).sum())})


def extract_images(root: str | Path, name: str, encoder, batch_size: int = 256,
                   dtype: str = "float16") -> dict:
    """Encode ``items.image`` of a prepared dataset into ``features/<name>.lmdb``."""
    root = Path(root)
    ds = load_prepared(root, verify=False)
    refs = ds.items["image"].to_numpy()
    return _extract(root, name, encoder, lambda ids: [_load_image(root, refs[i]) for i in ids],
                    ds.num_items, batch_size, dtype, encoder.encoder_id)


def extract_texts(root: str | Path, name: str, encoder, batch_size: int = 256,
                  dtype: str = "float16") -> dict:
    """Encode ``items.title + items.text`` into ``features/<name>.lmdb``; empty text is missing."""
    root = Path(root)
    ds = load_prepared(root, verify=False)
    texts = (ds.items["title"].str.strip() + ". " + ds.items["text"].str.strip()).str.strip(". ").to_numpy()
    return _extract(root, name, encoder, lambda ids: [texts[i] or None for i in ids],
                    ds.num_items, batch_size, dtype, encoder.encoder_id)
