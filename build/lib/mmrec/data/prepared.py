"""The prepared-dataset format: the one contract between every source and training.

A prepared dataset is a folder::

    <root>/
      manifest.json          written after the tables; "complete" once every declared store is in
      interactions.parquet   user:int64 item:int64 rating:float32 timestamp:int64 split:int8
                             (split 0 = train, 1 = valid, 2 = test)
      items.parquet          item:int64 raw_id:str title:str text:str image:str
                             (image: path relative to <root>, absolute path or URL; "" = none)
      users.parquet          user:int64 raw_id:str
      features/<name>.lmdb   one LMDB feature store per modality / modality encoder (see mmrec.features.store)
      images/                optional image cache

``manifest.json`` records the format version, counts, the split rule, one entry per
feature store (path, dim, dtype, modality_encoder id, weights_hash, count, missing, seconds,
items_per_s, and the store's ``num_items``, ``bytes`` and ``sha256`` of its ``data.mdb``;
datasets prepared before the modality-encoder rename record the id as ``encoder``, read by
:func:`feature_modality_encoder`), a SHA-256 per table file, and what a complete dataset
contains: ``expected_features`` (the stores its producer will write, declared with the tables,
before any store) and ``complete`` (true once every expected store is registered; recomputed on
every manifest write, so the write that registers the last store is the one that completes
it). ``prepare_command`` is the command that repairs an unfinished dataset (it resumes).
:func:`load_prepared` verifies the table checksums and :meth:`PreparedDataset.feature_store`
each store against its entry, so a truncated, edited or half-written file is caught before
training rather than producing quietly wrong numbers.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mmrec.utils.errors import MmrecError
from mmrec.utils.files import sha256_file

FORMAT = "mmrec-prepared/1"
SPLITS = {"train": 0, "valid": 1, "test": 2}
TABLES = ("interactions.parquet", "items.parquet", "users.parquet")


class DatasetError(MmrecError, RuntimeError):
    """A dataset file is missing, malformed or inconsistent; the message says which and what to do."""


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_write_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def write_manifest(root: Path, manifest: dict) -> None:
    """Write ``manifest.json`` atomically, with ``complete`` recomputed from what it records."""
    manifest["complete"] = not unfinished_features(manifest)
    _atomic_write_bytes(Path(root) / "manifest.json", json.dumps(manifest, indent=2).encode())


def unfinished_features(manifest: dict) -> list[str]:
    """The expected feature stores a manifest does not register yet (``[]`` = complete)."""
    registered = manifest.get("features", {})
    return [m for m in manifest.get("expected_features", []) if m not in registered]


def repair_command(manifest: dict, root: str | os.PathLike | None = None) -> str:
    """The command that finishes (or redoes) the preparation of a dataset; it resumes.

    The one ``mmrec.prepare`` recorded (its own command line), else, for a dataset a training
    prepared itself (demo generator, MMRec import), the command rebuilt from the source
    description in the manifest: the dataset config, its folder and every source setting, so
    that it addresses this very folder with this very source."""
    if manifest.get("prepare_command"):
        return manifest["prepare_command"]
    source = dict(manifest.get("source") or {})
    kind = source.pop("type", None) or manifest.get("name", "<name>")
    parts = ["python -m mmrec.prepare", f"dataset={kind}"]
    if root is not None:
        parts.append(f"dataset.root={Path(root).resolve()}")
    parts += [f"dataset.source.{key}={hydra_value(value)}" for key, value in source.items()]
    return " ".join(shlex.quote(p) if p != "python -m mmrec.prepare" else p for p in parts)


def hydra_value(value) -> str:
    """``value`` as a Hydra command-line override value (null, true, [a,b], {k:v}, quoted strings)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    return text if re.fullmatch(r"[\w./@:+-]+", text) else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


_EXPECTED: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar("expected_features",
                                                                                default=None)


@contextlib.contextmanager
def expecting(features: Sequence[str]):
    """Within this block, :func:`write_prepared` declares ``features`` as expected when its
    caller (a source's tables stage, which does not know the feature stages that follow) does
    not say; so the manifest that makes the tables readable already says they are coming."""
    token = _EXPECTED.set(tuple(features))
    try:
        yield
    finally:
        _EXPECTED.reset(token)


def declare_expected(root: str | os.PathLike, features: Sequence[str], command: str | None = None) -> dict:
    """Record which feature stores a complete ``root`` holds (and the command that makes
    them); until each is registered the dataset reads as unfinished."""
    manifest = read_manifest(root)
    manifest["expected_features"] = list(features)
    if command:
        manifest["prepare_command"] = command
    write_manifest(Path(root), manifest)
    return manifest


def read_manifest(root: Path) -> dict:
    path = Path(root) / "manifest.json"
    if not path.exists():
        raise DatasetError(f"{path}: no manifest; {root} is not a prepared dataset (or its "
                           f"preparation did not finish). Run `python -m mmrec.prepare` or train "
                           f"with a dataset config that prepares it.")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON (line {err.lineno}: {err.msg}); delete the "
                           f"folder and prepare the dataset again.") from err
    if manifest.get("format") != FORMAT:
        raise DatasetError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}; "
                           f"prepare the dataset again with this mmrec version.")
    return manifest


def source_mismatch(root: str | os.PathLike, source) -> str | None:
    """Why the dataset in ``root`` was not made by ``source`` (another source configuration, which
    would be used silently otherwise), or None. Paths may differ: checkouts move."""
    stored = read_manifest(Path(root)).get("source", {})
    wanted = json.loads(json.dumps(source.describe()))
    diffs = {k: (stored.get(k), v) for k, v in wanted.items() if k != "path" and stored.get(k) != v}
    if not diffs:
        return None
    detail = ", ".join(f"{k}: prepared {a!r}, configured {b!r}" for k, (a, b) in sorted(diffs.items()))
    return (f"{root}: prepared from a different source configuration ({detail}). Delete {root} to prepare it "
            f"again, or set dataset.root to another folder.")


def is_prepared(root: str | os.PathLike) -> bool:
    """A manifest exists (the tables are written; the features may not be: see :func:`is_complete`)."""
    return (Path(root) / "manifest.json").exists()


def is_complete(root: str | os.PathLike) -> bool:
    """A readable manifest whose expected feature stores are all registered and present."""
    try:
        return not unfinished_features(read_manifest(root)) and not damaged_features(root)
    except DatasetError:
        return False


def write_prepared(
    root: str | os.PathLike,
    *,
    name: str,
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
    split_rule: dict,
    source: dict,
    expected_features: Sequence[str] | None = None,
) -> dict:
    """Validate and write the tables, then the manifest (last). Returns the manifest.

    ``expected_features``: the feature stores the producer writes next (the dataset reads as
    unfinished until each is registered); None keeps those of an existing manifest. Existing
    features in ``root/features`` are kept; an existing manifest is replaced only once every
    table has been written completely.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if expected_features is None:
        expected_features = _EXPECTED.get()
    interactions = _normalise_interactions(interactions)
    items = _normalise_items(items)
    users = _normalise_users(users)
    validate_tables(interactions, items, users, where=str(root))
    for df, fname in ((interactions, "interactions.parquet"), (items, "items.parquet"),
                      (users, "users.parquet")):
        _atomic_write_parquet(df, root / fname)
    counts = interactions["split"].value_counts().to_dict()
    manifest = {
        "format": FORMAT,
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": source,
        "num_users": int(len(users)),
        "num_items": int(len(items)),
        "num_interactions": {s: int(counts.get(code, 0)) for s, code in SPLITS.items()},
        "split": split_rule,
        "features": {},
        "expected_features": list(expected_features or []),
        "files": {fname: sha256_file(root / fname) for fname in TABLES},
    }
    old = root / "manifest.json"
    if old.exists():
        try:
            previous = json.loads(old.read_text())
        except json.JSONDecodeError:
            previous = {}
        manifest["features"] = previous.get("features", {})
        for key in ("prepare_command",) + (("expected_features",) if expected_features is None else ()):
            if key in previous:
                manifest[key] = previous[key]
    write_manifest(root, manifest)
    return manifest


def register_feature(root: str | os.PathLike, name: str, entry: dict) -> dict:
    """Add/replace one feature entry (path, dim, dtype, modality_encoder, weights_hash, count,
    missing, seconds, items_per_s) in the manifest, with the store's fingerprint (its
    ``num_items``, and ``bytes`` and ``sha256`` of ``data.mdb``) taken now that it is closed."""
    from mmrec.features.store import FeatureStore

    root = Path(root)
    manifest = read_manifest(root)
    store = FeatureStore(root / entry["path"])
    try:
        if store.dim != entry["dim"] or store.dtype != entry["dtype"]:
            raise DatasetError(f"{store.path}: holds dim={store.dim} {store.dtype} but is registered as "
                               f"dim={entry['dim']} {entry['dtype']}; extract it again.")
        fingerprint = {"num_items": store.num_items, **store.fingerprint()}
    finally:
        store.close()
    manifest["features"][name] = {**entry, **fingerprint}
    write_manifest(root, manifest)
    return manifest


def modality_order(manifest: dict, names: Sequence[str] | None = None) -> list[str]:
    """The registered modalities (or ``names`` among them) in the dataset's fixed order: those its
    producer declared (``expected_features``) in that order, then any other by name. Never the
    order of registration, which depends on the folder's history (a repaired store registers last)
    and would reorder every fused feature vector."""
    registered = manifest.get("features", {})
    wanted = list(registered) if names is None else list(names)
    declared = [m for m in manifest.get("expected_features", []) if m in wanted]
    return declared + sorted(m for m in wanted if m not in declared)


def feature_modality_encoder(entry: dict) -> str | None:
    """The id of the modality encoder recorded in a manifest feature entry (``modality_encoder``;
    ``encoder`` in datasets prepared before the rename), or None."""
    return entry.get("modality_encoder", entry.get("encoder"))


def _normalise_interactions(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    if "rating" not in df:
        df["rating"] = 1.0
    if "timestamp" not in df:
        df["timestamp"] = 0
    return df[["user", "item", "rating", "timestamp", "split"]].astype(
        {"user": "int64", "item": "int64", "rating": "float32", "timestamp": "int64", "split": "int8"}
    ).reset_index(drop=True)


def _normalise_items(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for col in ("raw_id", "title", "text", "image"):
        if col not in df:
            df[col] = ""
    df = df[["item", "raw_id", "title", "text", "image"]]
    df[["raw_id", "title", "text", "image"]] = df[["raw_id", "title", "text", "image"]].fillna("").astype(str)
    return df.astype({"item": "int64"}).sort_values("item").reset_index(drop=True)


def _normalise_users(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    if "raw_id" not in df:
        df["raw_id"] = df["user"].astype(str)
    df = df[["user", "raw_id"]]
    df["raw_id"] = df["raw_id"].astype(str)
    return df.astype({"user": "int64"}).sort_values("user").reset_index(drop=True)


def validate_tables(interactions: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame,
                    where: str) -> None:
    """Ids contiguous 0..n-1, interactions inside the id ranges, split codes known, no duplicates."""
    for df, col, what in ((items, "item", "items"), (users, "user", "users")):
        ids = df[col].to_numpy()
        if not np.array_equal(ids, np.arange(len(ids))):
            raise DatasetError(f"{where}: {what} ids must be contiguous 0..{len(ids) - 1}; "
                               f"remap raw ids before writing.")
    n_users, n_items = len(users), len(items)
    for col, n in (("user", n_users), ("item", n_items)):
        vals = interactions[col].to_numpy()
        bad = np.flatnonzero((vals < 0) | (vals >= n))
        if bad.size:
            raise DatasetError(f"{where}: interaction row {int(bad[0])} has {col}={int(vals[bad[0]])}, "
                               f"outside [0, {n}); the id tables and interactions disagree.")
    split = interactions["split"].to_numpy()
    bad = np.flatnonzero(~np.isin(split, list(SPLITS.values())))
    if bad.size:
        raise DatasetError(f"{where}: interaction row {int(bad[0])} has split={int(split[bad[0]])}; "
                           f"allowed: 0 (train), 1 (valid), 2 (test).")
    dup = interactions.duplicated(["user", "item"])
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise DatasetError(f"{where}: user {int(interactions['user'].iloc[row])} and item "
                           f"{int(interactions['item'].iloc[row])} appear twice (row {row}); "
                           f"collapse duplicate interactions first.")
    if not (split == 0).any():
        raise DatasetError(f"{where}: no training interactions (split 0).")


@dataclass
class PreparedDataset:
    """A loaded prepared dataset: id tables, interactions by split, feature stores by name."""

    root: Path
    manifest: dict
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    feature_entries: dict = field(default_factory=dict)
    verify: bool = True  # check each feature store's SHA-256 when it is opened

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def num_users(self) -> int:
        return int(self.manifest["num_users"])

    @property
    def num_items(self) -> int:
        return int(self.manifest["num_items"])

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(users, items)`` int64 arrays of one split ("train", "valid", "test")."""
        sel = self.interactions["split"].to_numpy() == SPLITS[name]
        return (self.interactions["user"].to_numpy()[sel], self.interactions["item"].to_numpy()[sel])

    def local_image(self, value) -> Path | None:
        """An ``items.image`` entry as a readable local file, or ``None`` ("" = none; URLs are
        not fetched; a relative path is relative to the dataset root)."""
        if not isinstance(value, str) or not value or "://" in value:
            return None
        path = Path(value) if Path(value).is_absolute() else self.root / value
        return path if path.is_file() else None

    def feature_store(self, name: str):
        """Open feature store ``name``, verified (:func:`open_feature_store`)."""
        return open_feature_store(self.root, self.manifest, name, self.verify)


def open_feature_store(root: Path, manifest: dict, name: str, verify: bool = True):
    """Open feature store ``name`` of the dataset in ``root``, verified against its manifest entry
    and the dataset: size of ``data.mdb`` (always: reading a truncated LMDB file kills the
    process with SIGBUS), SHA-256 (with ``verify``), dim, dtype and item count."""
    from mmrec.features.store import FeatureStore, FeatureStoreError

    root = Path(root)
    entries = manifest.get("features", {})
    if name not in entries:
        raise DatasetError(f"{root}: no feature '{name}' in manifest.json (available: "
                           f"{sorted(entries) or 'none'}); extract it with "
                           f"`{repair_command(manifest, root)}`.")
    entry = entries[name]
    path = root / entry["path"]
    repair = f"run `{repair_command(manifest, root)}` again: it extracts the store anew"
    problem = store_damage(root, entry)
    if problem is None and verify and "sha256" in entry and sha256_file(path / "data.mdb") != entry["sha256"]:
        problem = "its SHA-256 differs from manifest.json (the file changed after extraction)"
    if problem is not None:
        raise DatasetError(f"{path}/data.mdb: {problem}; {repair}.")
    try:
        store = FeatureStore(path)
    except FeatureStoreError as err:
        raise DatasetError(f"{err} ({repair})") from err
    # (key, value in the store, what it must be, who says so)
    checks = [("dim", store.dim, entry.get("dim", store.dim), "manifest.json records"),
              ("dtype", store.dtype, entry.get("dtype", store.dtype), "manifest.json records"),
              ("num_items", store.num_items, int(manifest["num_items"]), "the dataset has")]
    for key, found, expected, source in checks:
        if found != expected:
            store.close()
            raise DatasetError(f"{path}: {key}={found!r} in the store, but {source} {expected!r}; {repair}.")
    return store


def feature_problem(root: str | os.PathLike, name: str, manifest: dict | None = None) -> str | None:
    """Why feature store ``name`` cannot serve training, or None: what opening it verifies
    (:func:`open_feature_store`, SHA-256 included) and a full read (NaN / inf values, corrupt
    vectors). Reads the whole store: for repairs and stage checks, not for every load."""
    from mmrec.features.store import FeatureStoreError

    manifest = read_manifest(Path(root)) if manifest is None else manifest
    if name not in manifest.get("features", {}):
        return f"features/{name} is not registered in manifest.json"
    try:
        store = open_feature_store(Path(root), manifest, name, verify=True)
    except DatasetError as err:
        return str(err)
    try:
        store.bulk(dtype=None)
    except FeatureStoreError as err:
        return str(err)
    finally:
        store.close()
    return None


def store_damage(root: Path, entry: dict) -> str | None:
    """Why a registered feature store cannot be read (missing ``data.mdb``, a size other than
    the one recorded at registration), or None; cheap: no file is read."""
    data = Path(root) / entry["path"] / "data.mdb"
    if not data.is_file():
        return "missing (the store is registered in manifest.json)"
    size = data.stat().st_size
    if "bytes" in entry and size != entry["bytes"]:
        return f"{size} bytes, manifest.json records {entry['bytes']} (truncated or changed after extraction)"
    return None


def damaged_features(root: str | os.PathLike, deep: bool = False) -> dict[str, str]:
    """``{name: problem}`` of the registered feature stores that are unreadable: by their size
    (:func:`store_damage`, no file read), or with ``deep`` by everything
    :func:`feature_problem` checks (checksum, header, dims, count, finite values)."""
    manifest = read_manifest(root)
    found = {name: (feature_problem(root, name, manifest) if deep else store_damage(Path(root), entry))
             for name, entry in manifest.get("features", {}).items()}
    return {name: problem for name, problem in found.items() if problem is not None}


def unregister_feature(root: str | os.PathLike, name: str) -> None:
    """Drop feature ``name`` from the manifest, then delete its store (in this order: a crash
    in between leaves a store nobody reads, never a registered store that is gone)."""
    root = Path(root)
    manifest = read_manifest(root)
    entry = manifest.get("features", {}).pop(name, None)
    write_manifest(root, manifest)
    if entry is not None:
        shutil.rmtree(root / entry["path"], ignore_errors=True)


def load_prepared(root: str | os.PathLike, verify: bool = True) -> PreparedDataset:
    """Load a prepared dataset, verifying checksums and table consistency."""
    root = Path(root)
    manifest = read_manifest(root)
    tables = {}
    for fname in TABLES:
        path = root / fname
        if not path.exists():
            raise DatasetError(f"{path}: missing; the prepared dataset is incomplete. Delete "
                               f"{root} and prepare it again.")
        if verify and manifest["files"].get(fname) != sha256_file(path):
            raise DatasetError(f"{path}: checksum differs from manifest.json (file changed or "
                               f"truncated). Delete {root} and prepare it again.")
        try:
            tables[fname] = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for corrupt files
            raise DatasetError(f"{path}: cannot be read ({err}). Delete {root} and prepare it "
                               f"again.") from err
    ds = PreparedDataset(root=root, manifest=manifest, interactions=tables["interactions.parquet"],
                         items=tables["items.parquet"], users=tables["users.parquet"],
                         feature_entries=dict(manifest.get("features", {})), verify=verify)
    if len(ds.users) != ds.num_users or len(ds.items) != ds.num_items:
        raise DatasetError(f"{root}/manifest.json: counts ({ds.num_users} users, {ds.num_items} items) "
                           f"disagree with the tables ({len(ds.users)}, {len(ds.items)}).")
    validate_tables(ds.interactions, ds.items, ds.users, where=str(root))
    return ds


def remove_prepared(root: str | os.PathLike) -> None:
    shutil.rmtree(root, ignore_errors=True)
