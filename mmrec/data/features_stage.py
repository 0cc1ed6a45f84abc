"""Feature stages of preparation: run modality encoders over a prepared dataset's items and
record each LMDB store in its manifest.

The encoding itself (batches, DataLoader workers, resume, missing inputs) lives in
:mod:`mmrec.features.extract`, which knows stores and item inputs but not the prepared-dataset
format; this module reads the item table, points the extraction at
``<root>/features/<name>.lmdb`` and registers the result. The manifest entry
(:func:`mmrec.data.prepared.register_feature`) records ``path, dim, dtype, modality_encoder,
weights_hash, count, missing, seconds, items_per_s``.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from mmrec.data.prepared import (DatasetError, feature_modality_encoder, load_prepared, read_manifest,
                                 feature_problem, register_feature, unregister_feature, write_manifest)
from mmrec.features.extract import encode_images, encode_texts
from mmrec.features.modality_encoders import ModalityEncoderSet
from mmrec.features.store import FeatureStore, FeatureStoreError

log = logging.getLogger(__name__)


def item_texts(items: pd.DataFrame) -> np.ndarray:
    """``title + ". " + text`` per item (stripped); ``""`` where both are empty."""
    return (items["title"].str.strip() + ". " + items["text"].str.strip()).str.strip(". ").to_numpy()


def extract_images(root: str | os.PathLike, name: str, modality_encoder, batch_size: int = 256,
                   dtype: str = "float16", num_workers: int = 0, progress: bool | None = None,
                   engine=None, encoder_factory=None) -> dict:
    """Encode ``items.image`` of a prepared dataset into ``features/<name>.lmdb``; returns the manifest.

    Args:
        root: prepared-dataset folder.
        name: feature name (store ``features/<name>.lmdb``, manifest key).
        modality_encoder: an image modality encoder (see :func:`mmrec.features.extract.encode_images`).
        batch_size: images per batch (one DataLoader sample, one LMDB transaction).
        dtype: stored value type, ``"float16"`` or ``"float32"``.
        num_workers: DataLoader worker processes decoding images (0 = in this process).
        progress: show a tqdm bar (items/s); None = only when stderr is a terminal.
        engine, encoder_factory: encode on Ray Data (see :func:`mmrec.features.extract.encode_images`).
    """
    root = Path(root)
    ds = load_prepared(root, verify=False)
    rel = f"features/{name}.lmdb"
    stats = encode_images(root / rel, ds.items["image"].to_numpy(), modality_encoder, image_root=root,
                          batch_size=batch_size, dtype=dtype, num_workers=num_workers, progress=progress,
                          engine=engine, encoder_factory=encoder_factory)
    return register_feature(root, name, {"path": rel, **stats})


def extract_texts(root: str | os.PathLike, name: str, modality_encoder, batch_size: int = 256,
                  dtype: str = "float16", progress: bool | None = None, engine=None, encoder_factory=None) -> dict:
    """Encode ``items.title + items.text`` into ``features/<name>.lmdb``; empty text is missing.

    Arguments as :func:`extract_images` (no workers: tokenising is cheap next to the model).
    """
    root = Path(root)
    ds = load_prepared(root, verify=False)
    rel = f"features/{name}.lmdb"
    stats = encode_texts(root / rel, item_texts(ds.items), modality_encoder, batch_size=batch_size, dtype=dtype,
                         progress=progress, engine=engine, encoder_factory=encoder_factory)
    return register_feature(root, name, {"path": rel, **stats})


def extract_features(root: str | os.PathLike, modality_encoders: ModalityEncoderSet, progress: bool | None = None,
                     names: dict[str, str] | None = None) -> dict:
    """Extract every modality of a ``modality_encoder`` choice into ``root`` (``features/image.lmdb``,
    ``features/text.lmdb``, or the ``names`` given per modality), resuming stores that are
    partly written; returns the updated manifest."""
    names = {"image": "image", "text": "text", **(names or {})}
    manifest: dict = {}
    for modality in modality_encoders.modalities:
        enc = modality_encoders.build(modality)
        if modality == "image":
            manifest = extract_images(root, names["image"], enc, batch_size=modality_encoders.batch_size,
                                      dtype=modality_encoders.dtype, num_workers=modality_encoders.num_workers,
                                      progress=progress)
        else:
            manifest = extract_texts(root, names["text"], enc, batch_size=modality_encoders.batch_size,
                                     dtype=modality_encoders.dtype, progress=progress)
    return manifest


def stored_modality_encoder(root: Path, modality: str) -> str | None:
    """Id of the modality encoder that wrote ``features/<modality>`` of ``root``, or None."""
    entry = read_manifest(root).get("features", {}).get(modality)
    return feature_modality_encoder(entry) if entry else None


def extract_modality(root: Path, modality: str, modality_encoders: ModalityEncoderSet, overwrite: bool,
                     progress: bool, engine=None) -> dict:
    """One feature stage of ``mmrec.prepare``: extract ``modality`` into ``features/<modality>.lmdb``,
    in this process or (``engine``, a :class:`mmrec.features.ray_engine.RayEngine`) on Ray Data.

    A store written by another modality encoder is refused, or with ``overwrite`` unregistered
    and deleted first; returns the stage summary (dim, count, missing, modality_encoder).
    """
    root = Path(root)
    enc = modality_encoders.build(modality)
    stored = stored_modality_encoder(root, modality)
    path = root / "features" / f"{modality}.lmdb"
    if stored is not None and stored != enc.encoder_id:
        if not overwrite:
            raise DatasetError(f"{root}: features/{modality}.lmdb was extracted with {stored!r}, not "
                               f"{enc.encoder_id!r}. Pass prepare.overwrite_features=true to replace it, "
                               f"or prepare into another folder (dataset.root=...).")
    entry = read_manifest(root).get("features", {}).get(modality)
    problem = feature_problem(root, modality) if entry is not None else None  # any damage a reader would find
    if problem is None and entry is None and (path / "data.mdb").exists():
        try:  # an unregistered store from an interrupted run is resumed, unless it is damaged
            FeatureStore(path).close()
        except FeatureStoreError as err:
            problem = str(err)
    if problem is not None:
        log.warning("%s: %s; extracting it anew", path, problem)
        unregister_feature(root, modality)
        shutil.rmtree(path, ignore_errors=True)
        stored = None
    if overwrite and path.exists() and stored != enc.encoder_id:
        manifest = read_manifest(root)
        manifest.get("features", {}).pop(modality, None)
        write_manifest(root, manifest)  # unregister first: a crash now leaves "missing", never "wrong"
        shutil.rmtree(path)
    remote = {}
    if engine is not None:  # each actor builds the encoder from its spec, not a pickled built model
        from mmrec.features.ray_engine import EncoderFactory

        remote = {"engine": engine, "encoder_factory": EncoderFactory(modality_encoders.spec(modality), modality)}
    if modality == "image":
        extract_images(root, modality, enc, batch_size=modality_encoders.batch_size, dtype=modality_encoders.dtype,
                       num_workers=modality_encoders.num_workers, progress=progress, **remote)
    else:
        extract_texts(root, modality, enc, batch_size=modality_encoders.batch_size, dtype=modality_encoders.dtype,
                      progress=progress, **remote)
    entry = read_manifest(root)["features"][modality]
    return ({k: entry[k] for k in ("dim", "count", "missing") if k in entry}
            | {"modality_encoder": feature_modality_encoder(entry)})
