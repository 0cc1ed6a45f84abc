"""The serving bundle: the one thing export writes and serving reads.

A bundle is a read-only folder::

    <bundle>/
      manifest.json             written last: format version, model card, shapes, and the
                                size + SHA-256 of every other file (verified on load)
      user_vectors.npy          float32 [U, d]  user representations (memory-mapped)
      item_vectors.npy          float32 [I, d]  item representations; score = user . item
      item_rankable.npy         bool [I]        False: the model cannot score the item (a cold
                                                item of an ID-only model): never recommended
      item_popularity.npy       int64 [I]       training users per item
      history_indptr.npy        int64 [U + 1]   each user's known items (train + valid), CSR
      history_indices.npy       int64 [nnz]
      content_vectors.npy       float32 [I, D]  fused raw item features (optional): similarity,
                                                re-ranking, "because of", content candidates
      text_vectors.npy          float32 [I, D_t] item text features (optional): text queries
      tower_weight.npy          float32 [d, d]  a two-tower model's user tower (optional; with
      tower_bias.npy            float32 [d]     tower_query [d] for attention pooling): new
      tower_query.npy           float32 [d]     visitors' vectors at request time (manifest
                                                "user_tower": pooling, max_history)
      items.parquet             item, raw_id, title, text, image (relative to the bundle), group
      users.parquet             user, raw_id
      images/                   the items' images (optional)
      index.faiss               a FAISS index of the item vectors (optional)
      ranker.txt                a LightGBM ranker over merged candidates (optional), with:
      cooc_indptr.npy           int64 [I + 1]   item-item co-occurrence of the known
      cooc_indices.npy          int64 [nnz]     histories (CSR, each item's strongest)
      cooc_values.npy           float32 [nnz]
      item_first_seen.npy       float64 [I]     each item's first known interaction (NaN: none)
      item_recent_popularity.npy float32 [I]    interactions among the latest 10% of the known
                                                ones; manifest "ranker": sources, features, ...
      content_projection.npy    float32 [D, k]  where the ranker's content source searches

Vectors are stored with :func:`numpy.save` (C order, little-endian float32) so that every
worker process can memory-map the same pages. Nothing in the bundle is written after export:
loading verifies, serving only reads.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmrec.utils.errors import MmrecError
from mmrec.utils.files import sha256_file

FORMAT = "mmrec-bundle"
VERSION = 1
REQUIRED_ARRAYS = ("user_vectors", "item_vectors", "item_rankable", "item_popularity", "history_indptr",
                   "history_indices")
OPTIONAL_ARRAYS = ("content_vectors", "text_vectors")
#: a two-tower model's user tower (:func:`mmrec.serving.recommender.tower_fold_in`)
TOWER_ARRAYS = ("tower_weight", "tower_bias", "tower_query")
#: the learned ranking stage (:mod:`mmrec.serving.two_stage`), with ``ranker.txt``
RANKER_ARRAYS = ("cooc_indptr", "cooc_indices", "cooc_values", "item_first_seen", "item_recent_popularity",
                 "content_projection")
TABLES = ("items.parquet", "users.parquet")


class BundleError(MmrecError, RuntimeError):
    """A bundle is missing, incomplete, tampered with or of another format version; the
    message names the file and says what to do."""


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json")


def write_bundle(out: str | os.PathLike, arrays: dict[str, np.ndarray], items: pd.DataFrame, users: pd.DataFrame,
                 card: dict[str, Any], extra: dict[str, Any] | None = None,
                 images: dict[int, Path] | None = None, index_writer=None, force: bool = False,
                 ranker_model: str | None = None) -> Path:
    """Write a bundle atomically: everything into a temporary sibling folder, ``manifest.json``
    last, files made read-only, then one rename into place. A crash leaves no half bundle at
    ``out``; an existing bundle is replaced only with ``force``.

    Args:
        arrays: the :data:`REQUIRED_ARRAYS` and any of :data:`OPTIONAL_ARRAYS`.
        items, users: the tables (``items.image`` is rewritten to the copied file's path).
        card: the model card (model, dataset, metrics, selected epoch, config, ...).
        extra: more manifest entries (shapes, the text modality encoder, rules, ...).
        images: item -> image file to copy into ``images/``.
        index_writer: ``callable(path)`` writing ``index.faiss``, or ``None``.
        ranker_model: the LightGBM model text written as ``ranker.txt`` (``None``: no ranker).
    """
    out = Path(out)
    if out.exists() and not force:
        raise BundleError(f"{out}: already exists; pass force=true to replace it, or choose another out=")
    missing = [name for name in REQUIRED_ARRAYS if name not in arrays]
    if missing:
        raise BundleError(f"cannot write a bundle without {missing}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for name, array in arrays.items():
            if name not in REQUIRED_ARRAYS + OPTIONAL_ARRAYS + TOWER_ARRAYS + RANKER_ARRAYS:
                raise BundleError(f"unknown bundle array {name!r}")
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        items = items.copy()
        if images:
            (tmp / "images").mkdir()
            paths = []
            for item in items["item"].tolist():
                src = images.get(int(item))
                if src is None:
                    paths.append("")
                    continue
                dst = tmp / "images" / f"{int(item)}{Path(src).suffix.lower() or '.jpg'}"
                shutil.copyfile(src, dst)
                paths.append(str(dst.relative_to(tmp)))
            items["image"] = paths
        else:
            items["image"] = ""
        items.to_parquet(tmp / "items.parquet", index=False)
        users.to_parquet(tmp / "users.parquet", index=False)
        if index_writer is not None:
            index_writer(tmp / "index.faiss")
        if ranker_model is not None:
            (tmp / "ranker.txt").write_text(ranker_model)
        manifest = {
            "format": FORMAT, "version": VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "card": card, **(extra or {}),
            "files": {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                      for p in _files(tmp)},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        for p in [*_files(tmp), tmp / "manifest.json"]:
            p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        if out.exists():
            _remove(out)
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
    return out


def _remove(path: Path) -> None:
    """Delete a (read-only) bundle folder."""
    if not path.exists():
        return
    for p in path.rglob("*"):
        if p.is_file():
            p.chmod(stat.S_IWUSR | stat.S_IRUSR)
    shutil.rmtree(path)


@dataclass
class Bundle:
    """A loaded bundle: memory-mapped arrays, the two tables and the manifest."""

    root: Path
    manifest: dict[str, Any]
    arrays: dict[str, np.ndarray]
    items: pd.DataFrame
    users: pd.DataFrame

    @property
    def card(self) -> dict[str, Any]:
        return self.manifest.get("card", {})

    @property
    def has_index(self) -> bool:
        return (self.root / "index.faiss").is_file()


def reexport_hint(root: Path, run: str | None = None) -> str:
    """What rebuilds a damaged bundle at ``root``: the export command of its run (``run``, or
    the folder above a run's default ``<run>/bundle``), replacing the damaged copy."""
    if run is None and (root.parent / "config.yaml").is_file() and (root.parent / "metrics.json").is_file():
        run = str(root.parent)
    out = "" if run is not None and Path(run) / "bundle" == root else f" out={root}"
    return f"re-export it with `python -m mmrec.export run={run or '<run folder>'}{out} force=true`"


def load_bundle(root: str | os.PathLike, verify: bool = True) -> Bundle:
    """Open a bundle, check its format version and (``verify``) every file's size and SHA-256
    against the manifest; arrays are memory-mapped read-only."""
    root = Path(root)
    how = reexport_hint(root)
    manifest_path = root / "manifest.json"
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle folder; export a run with `python -m mmrec.export run=<run folder>`")
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: missing, so {root} is not a complete bundle (export did not finish); {how}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{manifest_path}: not valid JSON ({err}); {how}") from err
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path}: not an mmrec bundle (format {manifest.get('format')!r}); {how}")
    if manifest.get("version") != VERSION:
        raise BundleError(f"{manifest_path}: bundle format version {manifest.get('version')}, this mmrec reads "
                          f"version {VERSION}; {how}")
    files = manifest.get("files", {})
    for name, entry in files.items():
        path = root / name
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle (listed in manifest.json); {how}")
        if path.stat().st_size != entry["bytes"]:
            raise BundleError(f"{path}: {path.stat().st_size} bytes, the manifest says {entry['bytes']}: the file "
                              f"was truncated or changed after export; {how}")
        if verify and sha256_file(path) != entry["sha256"]:
            raise BundleError(f"{path}: checksum differs from manifest.json: the file was changed after export; {how}")
    for name in REQUIRED_ARRAYS:
        if f"{name}.npy" not in files:
            raise BundleError(f"{root / (name + '.npy')}: required by the bundle format but not in manifest.json; {how}")
    arrays = {}
    for name in REQUIRED_ARRAYS + OPTIONAL_ARRAYS + TOWER_ARRAYS + RANKER_ARRAYS:
        if f"{name}.npy" in files:
            try:
                arrays[name] = np.load(root / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            except ValueError as err:
                raise BundleError(f"{root / (name + '.npy')}: not a readable array ({err}); {how}") from err
    try:
        items = pd.read_parquet(root / "items.parquet")
        users = pd.read_parquet(root / "users.parquet")
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise BundleError(f"{root}: items.parquet / users.parquet unreadable ({err}); {how}") from err
    bundle = Bundle(root, manifest, arrays, items, users)
    how = reexport_hint(root, bundle.card.get("run"))
    _check_shapes(bundle, how)
    if verify:
        _check_finite(bundle, how)
    return bundle


#: the float arrays of a bundle, all of which export writes finite (it refuses a diverged checkpoint)
FLOAT_ARRAYS = ("user_vectors", "item_vectors") + OPTIONAL_ARRAYS + TOWER_ARRAYS


def _check_finite(bundle: Bundle, how: str) -> None:
    """Refuse NaN / inf in a bundle's vectors: export never writes them, so the file was altered
    after export (a NaN score would otherwise be ranked as if it were a number)."""
    for name in FLOAT_ARRAYS:
        if name not in bundle.arrays:
            continue
        array = bundle.arrays[name]
        bad = ~np.isfinite(array).reshape(len(array), -1).all(axis=1) if array.ndim else ~np.isfinite(array)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise BundleError(f"{bundle.root / (name + '.npy')}: {len(rows)} rows hold NaN or inf (rows "
                              f"{rows[:5].tolist()}{' ...' if len(rows) > 5 else ''}); export writes only finite "
                              f"vectors, so the file was altered after export; {how}")


def _check_shapes(bundle: Bundle, how: str) -> None:
    a = bundle.arrays
    num_users, dim = a["user_vectors"].shape
    num_items, item_dim = a["item_vectors"].shape
    problems = []
    if item_dim != dim:
        problems.append(f"user vectors are {dim}-d but item vectors {item_dim}-d")
    if a["item_rankable"].shape != (num_items,) or a["item_popularity"].shape != (num_items,):
        problems.append("item_rankable / item_popularity do not have one entry per item")
    if a["history_indptr"].shape != (num_users + 1,) or int(a["history_indptr"][-1]) != len(a["history_indices"]):
        problems.append("the history CSR does not match the number of users")
    for name in OPTIONAL_ARRAYS:
        if name in a and a[name].shape[0] != num_items:
            problems.append(f"{name} has {a[name].shape[0]} rows for {num_items} items")
    if "tower_weight" in a or "user_tower" in bundle.manifest:
        tower = bundle.manifest.get("user_tower") or {}
        if ("tower_weight" not in a or "tower_bias" not in a or a["tower_weight"].shape != (dim, dim)
                or a["tower_bias"].shape != (dim,) or (tower.get("pooling") == "attention") != ("tower_query" in a)):
            problems.append(f"the user tower ({tower or 'no manifest entry'}) does not match its arrays or {dim}-d vectors")
    if "ranker" in bundle.manifest:
        absent = [f"{n}.npy" for n in RANKER_ARRAYS if n not in a and n != "content_projection"] + (
            [] if "ranker.txt" in bundle.manifest.get("files", {}) else ["ranker.txt"])
        if absent:
            problems.append(f"the manifest has a ranker but not {absent}")
        elif (a["cooc_indptr"].shape != (num_items + 1,) or a["item_first_seen"].shape != (num_items,)
              or a["item_recent_popularity"].shape != (num_items,)
              or int(a["cooc_indptr"][-1]) != len(a["cooc_indices"]) or len(a["cooc_indices"]) != len(a["cooc_values"])):
            problems.append("the ranker's co-occurrence CSR / item_first_seen do not match the number of items")
    if len(bundle.items) != num_items or len(bundle.users) != num_users:
        problems.append(f"tables have {len(bundle.items)} items / {len(bundle.users)} users, vectors "
                        f"{num_items} / {num_users}")
    if problems:
        raise BundleError(f"{bundle.root}: inconsistent bundle ({'; '.join(problems)}); {how}")
