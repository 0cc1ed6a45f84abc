"""Importer for the MMRec toolbox format (enoche/MMRec), so any MMRec dataset can be brought in.

An MMRec dataset folder holds

* ``<name>.inter``: tab-separated with a header ``userID itemID rating timestamp x_label``
  (``x_label`` 0 = train, 1 = valid, 2 = test; ids 0-based);
* optionally ``i_id_mapping.csv`` / ``u_id_mapping.csv`` (tab-separated raw id -> index);
* optionally ``image_feat.npy`` / ``text_feat.npy`` (``[num_items, dim]`` float arrays).

MMRec stores a missing image as an all-zero row. Here such rows are recorded as *missing*
in the feature store's mask instead (a zero vector would silently turn cosine kNN into
NaN and be treated as real content). A row with NaN / inf is refused, naming the row.

Ids that are parseable but wrong follow fixed rules (each applied with a warning that gives
counts, or an error that names the line):

* an id of 2^31 or more, or item ids so sparse that the catalogue would be mostly empty
  rows, are refused: ids must be 0-based indices;
* users without a training interaction (they occur only in validation / test) are dropped
  with their rows: a user the model never saw would be evaluated on an untrained vector;
* gaps in the user ids are closed (users renumbered; ``raw_id`` keeps the original);
* item ids are never renumbered (they index the rows of ``*_feat.npy`` and
  ``i_id_mapping.csv``): items without any interaction stay in the catalogue as cold items,
  items only in validation / test are cold items (counted in the log).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mmrec.data.prepared import (
    DatasetError,
    feature_problem,
    read_manifest,
    register_feature,
    unregister_feature,
    write_prepared,
)
from mmrec.data.source import DatasetSource
from mmrec.features.store import FeatureStore
from mmrec.utils.files import sha256_file

log = logging.getLogger(__name__)

REQUIRED = ("userID", "itemID", "x_label")
MAX_ID = 2**31 - 1  # ids index tables and tensors: beyond this they are raw ids, not indices
SPARSE_FACTOR = 10  # max item id may exceed the number of distinct items this many times (+1000)


def read_inter(path: Path) -> pd.DataFrame:
    """Parse an MMRec ``.inter`` file; errors name the file, line and what to fix."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: file not found; point `dataset.source.path` at an MMRec "
                           f"dataset folder that contains it.")
    try:
        # blank lines are kept as rows (and dropped below) so that reported line numbers match the file
        raw = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, engine="c", skip_blank_lines=False)
    except pd.errors.ParserError as err:
        raise DatasetError(f"{path}: malformed ({err}); every line needs the same number of "
                           f"tab-separated fields as the header.") from err
    except pd.errors.EmptyDataError as err:
        raise DatasetError(f"{path}: empty file; it needs a header and one line per interaction.") from err
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise DatasetError(f"{path}: header lacks {missing} (found {list(raw.columns)}); the MMRec "
                           f"format needs tab-separated `userID itemID rating timestamp x_label`.")
    lines = np.arange(len(raw)) + 2  # file line of each row (line 1 = header)
    blank = (raw.fillna("").astype(str).apply(lambda col: col.str.strip()) == "").all(axis=1).to_numpy()
    raw, lines = raw[~blank].reset_index(drop=True), lines[~blank]
    if raw.empty:
        raise DatasetError(f"{path}: no interactions (only a header); the file needs one line per interaction.")
    out = pd.DataFrame()
    for col, dst, kind in (("userID", "user", "int64"), ("itemID", "item", "int64"),
                           ("x_label", "split", "int64"), ("rating", "rating", "float32"),
                           ("timestamp", "timestamp", "float64")):
        if col not in raw:
            continue
        # as float64 first: a huge integer must be seen as huge, not wrap to a negative int64
        values = pd.to_numeric(raw[col], errors="coerce").astype("float64")
        bad = ~np.isfinite(values.to_numpy())
        if kind == "int64":
            filled = np.nan_to_num(values.to_numpy())
            bad = bad | ~np.isclose(filled, np.round(filled))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DatasetError(f"{path}: line {lines[row]}: {col}={raw[col].iloc[row]!r} is not a "
                               f"{'whole number' if kind == 'int64' else 'finite number'}; fix or drop that line.")
        limit = MAX_ID if col in ("userID", "itemID") else 2.0**62
        big = np.flatnonzero(np.abs(values.to_numpy()) > limit)
        if big.size:
            row = int(big[0])
            raise DatasetError(f"{path}: line {lines[row]}: {col}={raw[col].iloc[row]} is too large "
                               f"({'ids must be 0-based indices below 2^31: map raw ids to indices first' if limit == MAX_ID else 'out of range'}).")
        out[dst] = values.astype(kind) if kind != "float64" else values.astype("int64")
    for col in ("user", "item"):
        neg = np.flatnonzero(out[col].to_numpy() < 0)
        if neg.size:
            raise DatasetError(f"{path}: line {lines[int(neg[0])]}: negative {col} id; ids are 0-based indices.")
    bad_split = np.flatnonzero(~out["split"].isin([0, 1, 2]).to_numpy())
    if bad_split.size:
        row = int(bad_split[0])
        raise DatasetError(f"{path}: line {lines[row]}: x_label={out['split'].iloc[row]}; allowed 0 "
                           f"(train), 1 (valid), 2 (test).")
    dup = out.duplicated(["user", "item"]).to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise DatasetError(f"{path}: line {lines[row]}: user {out['user'].iloc[row]} / item "
                           f"{out['item'].iloc[row]} repeats an earlier line; remove duplicates.")
    out["line"] = lines  # file line of each row, for later messages (not stored in the prepared tables)
    return out


def settle_ids(inter: pd.DataFrame, path: Path, num_items: int, users_raw: np.ndarray | None = None
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply the id rules of the module docstring to parsed interactions; returns
    ``(interactions, users)`` with users renumbered 0..n-1 (``users.raw_id``: the original id,
    or ``users_raw[id]`` from a mapping file)."""
    lines = inter["line"].to_numpy() if "line" in inter else np.arange(len(inter)) + 2
    items = inter["item"].to_numpy()
    distinct = np.unique(items)
    if num_items > SPARSE_FACTOR * len(distinct) + 1000:
        row = int(np.argmax(items))
        raise DatasetError(f"{path}: line {lines[row]}: item id {items[row]} with only {len(distinct)} distinct "
                           f"items in the file: ids must be 0-based indices (a catalogue of {num_items} rows "
                           f"would be mostly empty); map raw ids to indices first, keeping *_feat.npy rows aligned.")
    users, split = inter["user"].to_numpy(), inter["split"].to_numpy()
    num_ids = int(users.max()) + 1
    trained = np.zeros(num_ids, dtype=bool)
    trained[users[split == 0]] = True
    present = np.bincount(users, minlength=num_ids) > 0
    untrained = present & ~trained
    if untrained.any():
        rows = untrained[users]
        log.warning("%s: %d users occur only in validation/test (e.g. user %d, line %d): dropped with their %d "
                    "rows (a model cannot learn a user it never sees in training)", path, int(untrained.sum()),
                    int(np.flatnonzero(untrained)[0]), int(lines[np.flatnonzero(rows)[0]]), int(rows.sum()))
        inter = inter[~rows].reset_index(drop=True)
        users = inter["user"].to_numpy()
    kept = np.flatnonzero(trained)
    gaps = num_ids - int(untrained.sum()) - len(kept)
    if gaps:
        log.warning("%s: %d user ids in 0..%d have no interaction: users renumbered 0..%d (raw_id keeps the "
                    "original id)", path, gaps, num_ids - 1, len(kept) - 1)
    new_id = np.full(num_ids, -1, dtype=np.int64)
    new_id[kept] = np.arange(len(kept))
    inter = inter.assign(user=new_id[users])
    raw = users_raw[kept] if users_raw is not None else kept.astype(str)
    seen = np.zeros(num_items, dtype=bool)
    seen[inter["item"].to_numpy()] = True
    trained_items = np.zeros(num_items, dtype=bool)
    trained_items[inter["item"].to_numpy()[inter["split"].to_numpy() == 0]] = True
    if (~seen).any():
        log.warning("%s: %d of %d item ids have no interaction in any split (e.g. item %d): they stay in the "
                    "catalogue as cold items", path, int((~seen).sum()), num_items, int(np.flatnonzero(~seen)[0]))
    if (seen & ~trained_items).any():
        log.info("%s: %d items occur only in validation/test: cold items (ranked from content only)", path,
                 int((seen & ~trained_items).sum()))
    return inter, pd.DataFrame({"user": np.arange(len(kept)), "raw_id": raw})


def _read_mapping(path: Path, id_col: str) -> pd.DataFrame | None:
    if not path.exists():
        return None
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if id_col not in df.columns or len(df.columns) < 2:
        raise DatasetError(f"{path}: expected tab-separated columns `<raw id>\\t{id_col}`, found "
                           f"{list(df.columns)}.")
    raw_col = [c for c in df.columns if c != id_col][0]
    return pd.DataFrame({"idx": pd.to_numeric(df[id_col]).astype("int64"), "raw_id": df[raw_col]})


class MMRecSource(DatasetSource):
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

    def feature_names(self) -> list[str]:
        """The feature stores this import writes: the modalities whose ``.npy`` file exists."""
        return [m for m, f in self.feature_files.items() if (self.path / f).exists()]

    def prepare(self, root: str | Path) -> dict:
        root = Path(root)
        inter = read_inter(self.path / f"{self.name}.inter")
        imap = _read_mapping(self.path / "i_id_mapping.csv", "itemID")
        umap = _read_mapping(self.path / "u_id_mapping.csv", "userID")
        num_items = int(max(inter["item"].max() + 1, len(imap) if imap is not None else 0))
        users_raw = None
        if umap is not None:
            users_raw = umap.set_index("idx")["raw_id"].reindex(np.arange(int(inter["user"].max()) + 1))
            users_raw = users_raw.fillna("").to_numpy()
        inter, users = settle_ids(inter, self.path / f"{self.name}.inter", num_items, users_raw)
        items = pd.DataFrame({"item": np.arange(num_items)})
        if imap is not None:
            items["raw_id"] = imap.set_index("idx")["raw_id"].reindex(items["item"]).fillna("").to_numpy()
        files = {m: self.path / self.feature_files[m] for m in self.feature_names()}
        for modality in sorted(set(self.feature_files) - set(files)):
            log.info("MMRec import: no %s (modality '%s' skipped)", self.path / self.feature_files[modality], modality)
        manifest = write_prepared(
            root, name=self.name, interactions=inter, items=items, users=users,
            split_rule={"rule": "given", "detail": "x_label column of the MMRec .inter file"},
            source=self.describe(), expected_features=list(files),
        )
        for modality, fpath in files.items():
            manifest = import_npy_feature(root, modality, fpath, num_items, self.feature_dtype)
        return manifest


def import_npy_feature(root: Path, modality: str, npy: Path, num_items: int, dtype: str) -> dict:
    """Copy a ``[num_items, dim]`` array into ``features/<modality>.lmdb``; all-zero rows -> missing."""
    try:
        arr = np.load(npy, mmap_mode="r")
    except (ValueError, OSError) as err:  # truncated, not an .npy, pickled objects
        raise DatasetError(f"{npy}: not a readable .npy array ({err}); export it again with numpy.save.") from err
    if arr.ndim != 2 or arr.shape[0] != num_items:
        raise DatasetError(f"{npy}: shape {arr.shape}, expected ({num_items}, dim) for {num_items} items.")
    rel = f"features/{modality}.lmdb"
    source_sha = sha256_file(npy)
    entry = read_manifest(root).get("features", {}).get(modality)
    if entry is not None:
        if entry.get("source_sha256") == source_sha and feature_problem(root, modality) is None:
            return read_manifest(root)  # imported from this very file before: keep it untouched
        unregister_feature(root, modality)  # another file (or a damaged store): import anew
    present = np.zeros(num_items, dtype=bool)
    with FeatureStore.create(root / rel, dim=arr.shape[1], num_items=num_items,
                             modality_encoder=f"file:{npy.name}", dtype=dtype) as writer:
        step = 4096
        for start in range(0, num_items, step):  # batches, one transaction each
            block = np.asarray(arr[start:start + step], dtype=np.float32)
            ids = np.arange(start, start + len(block))
            bad = ~np.isfinite(block).all(axis=1)
            if bad.any():
                rows = ids[bad]
                raise DatasetError(f"{npy}: NaN or inf in row {rows[0]} (item {rows[0]}; {int(bad.sum())} such rows "
                                   f"in rows {start}..{ids[-1]}); write zeros for a missing vector (recorded as "
                                   f"missing) or fix the export.")
            keep = np.abs(block).sum(axis=1) > 0
            present[ids[keep]] = True
            writer.put_many(ids[keep], block[keep])
            writer.put_missing(ids[~keep])
    return register_feature(root, modality, {
        "path": rel, "dim": int(arr.shape[1]), "dtype": dtype, "modality_encoder": f"file:{npy.name}",
        "count": int(present.sum()), "missing": int((~present).sum()), "source_sha256": source_sha,
    })
