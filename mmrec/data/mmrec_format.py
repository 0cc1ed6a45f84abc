"""Importer for the MMRec toolbox format (enoche/MMRec), so any MMRec dataset can be brought in.

An MMRec dataset folder holds

* ``<name>.inter``: tab-separated with a header ``userID itemID rating timestamp x_label``
  (``x_label`` 0 = train, 1 = valid, 2 = test; ids 0-based);
* optionally ``i_id_mapping.csv`` / ``u_id_mapping.csv`` (tab-separated raw id -> index);
* optionally ``image_feat.npy`` / ``text_feat.npy`` (``[num_items, dim]`` float arrays).

MMRec stores a missing image as an all-zero row. Here such rows are recorded as *missing*
in the feature store's mask instead (a zero vector would silently turn cosine kNN into
NaN and be treated as real content).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mmrec.data.prepared import DatasetError, register_feature, write_prepared
from mmrec.features.store import FeatureStore

log = logging.getLogger(__name__)

REQUIRED = ("userID", "itemID", "x_label")


def read_inter(path: Path) -> pd.DataFrame:
    """Parse an MMRec ``.inter`` file; errors name the file, line and what to fix."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: file not found; point `dataset.source.path` at an MMRec "
                           f"dataset folder that contains it.")
    try:
        raw = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, engine="c")
    except pd.errors.ParserError as err:
        raise DatasetError(f"{path}: malformed ({err}); every line needs the same number of "
                           f"tab-separated fields as the header.") from err
    except pd.errors.EmptyDataError as err:
        raise DatasetError(f"{path}: empty file.") from err
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise DatasetError(f"{path}: header lacks {missing} (found {list(raw.columns)}); the MMRec "
                           f"format needs tab-separated `userID itemID rating timestamp x_label`.")
    out = pd.DataFrame()
    for col, dst, kind in (("userID", "user", "int64"), ("itemID", "item", "int64"),
                           ("x_label", "split", "int64"), ("rating", "rating", "float32"),
                           ("timestamp", "timestamp", "float64")):
        if col not in raw:
            continue
        values = pd.to_numeric(raw[col], errors="coerce")
        bad = values.isna().to_numpy()
        if kind == "int64":
            filled = values.fillna(0).to_numpy()
            bad = bad | ~np.isclose(filled, np.round(filled))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DatasetError(f"{path}: line {row + 2}: {col}={raw[col].iloc[row]!r} is not a "
                               f"{'whole number' if kind == 'int64' else 'number'}; fix or drop that line.")
        out[dst] = values.astype(kind) if kind != "float64" else values.astype("int64")
    for col in ("user", "item"):
        neg = np.flatnonzero(out[col].to_numpy() < 0)
        if neg.size:
            raise DatasetError(f"{path}: line {int(neg[0]) + 2}: negative {col} id.")
    bad_split = np.flatnonzero(~out["split"].isin([0, 1, 2]).to_numpy())
    if bad_split.size:
        row = int(bad_split[0])
        raise DatasetError(f"{path}: line {row + 2}: x_label={out['split'].iloc[row]} ; allowed 0 "
                           f"(train), 1 (valid), 2 (test).")
    dup = out.duplicated(["user", "item"]).to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise DatasetError(f"{path}: line {row + 2}: user {out['user'].iloc[row]} / item "
                           f"{out['item'].iloc[row]} repeats an earlier line; remove duplicates.")
    return out


def _read_mapping(path: Path, id_col: str) -> pd.DataFrame | None:
    if not path.exists():
        return None
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if id_col not in df.columns or len(df.columns) < 2:
        raise DatasetError(f"{path}: expected tab-separated columns `<raw id>\\t{id_col}`, found "
                           f"{list(df.columns)}.")
    raw_col = [c for c in df.columns if c != id_col][0]
    return pd.DataFrame({"idx": pd.to_numeric(df[id_col]).astype("int64"), "raw_id": df[raw_col]})


class MMRecSource:
    """Prepare a dataset from an MMRec-format folder.

    Args:
        path: folder holding ``<name>.inter`` (and optional mappings / ``*_feat.npy``).
        name: dataset name, i.e. the ``.inter`` file stem (``baby`` for ``baby.inter``).
        feature_files: modality name -> ``.npy`` file name inside ``path``; files that do
            not exist are skipped with a log line.
        feature_dtype: storage dtype of imported features ("float16" or "float32").
    """

    # features come with the source (generated / imported .npy), not from the modality_encoder group
    makes_features = True

    def __init__(self, path: str, name: str,
                 feature_files: dict[str, str] | None = None, feature_dtype: str = "float16"):
        self.path = Path(path)
        self.name = name
        self.feature_files = dict(feature_files) if feature_files is not None else {
            "image": "image_feat.npy", "text": "text_feat.npy"}
        self.feature_dtype = feature_dtype

    def describe(self) -> dict:
        return {"type": "mmrec", "path": str(self.path), "name": self.name}

    def prepare(self, root: str | Path) -> dict:
        root = Path(root)
        inter = read_inter(self.path / f"{self.name}.inter")
        imap = _read_mapping(self.path / "i_id_mapping.csv", "itemID")
        umap = _read_mapping(self.path / "u_id_mapping.csv", "userID")
        num_items = int(max(inter["item"].max() + 1, len(imap) if imap is not None else 0))
        num_users = int(max(inter["user"].max() + 1, len(umap) if umap is not None else 0))
        items = pd.DataFrame({"item": np.arange(num_items)})
        users = pd.DataFrame({"user": np.arange(num_users)})
        if imap is not None:
            items["raw_id"] = imap.set_index("idx")["raw_id"].reindex(items["item"]).fillna("").to_numpy()
        if umap is not None:
            users["raw_id"] = umap.set_index("idx")["raw_id"].reindex(users["user"]).fillna("").to_numpy()
        manifest = write_prepared(
            root, name=self.name, interactions=inter, items=items, users=users,
            split_rule={"rule": "given", "detail": "x_label column of the MMRec .inter file"},
            source=self.describe(),
        )
        for modality, fname in self.feature_files.items():
            fpath = self.path / fname
            if not fpath.exists():
                log.info("MMRec import: no %s (modality '%s' skipped)", fpath, modality)
                continue
            manifest = import_npy_feature(root, modality, fpath, num_items, self.feature_dtype)
        return manifest


def import_npy_feature(root: Path, modality: str, npy: Path, num_items: int, dtype: str) -> dict:
    """Copy a ``[num_items, dim]`` array into ``features/<modality>.lmdb``; all-zero rows -> missing."""
    arr = np.load(npy, mmap_mode="r")
    if arr.ndim != 2 or arr.shape[0] != num_items:
        raise DatasetError(f"{npy}: shape {arr.shape}, expected ({num_items}, dim) for {num_items} items.")
    rel = f"features/{modality}.lmdb"
    present = np.zeros(num_items, dtype=bool)
    with FeatureStore.create(root / rel, dim=arr.shape[1], num_items=num_items,
                             modality_encoder=f"file:{npy.name}", dtype=dtype) as writer:
        step = 4096
        for start in range(0, num_items, step):  # batches, one transaction each
            block = np.asarray(arr[start:start + step], dtype=np.float32)
            ids = np.arange(start, start + len(block))
            keep = np.abs(block).sum(axis=1) > 0
            present[ids[keep]] = True
            writer.put_many(ids[keep], block[keep])
            writer.put_missing(ids[~keep])
    return register_feature(root, modality, {
        "path": rel, "dim": int(arr.shape[1]), "dtype": dtype, "modality_encoder": f"file:{npy.name}",
        "count": int(present.sum()), "missing": int((~present).sum()),
    })
