"""LMDB feature store: one store per modality and modality encoder.

Layout of ``<name>.lmdb`` (an LMDB directory):

* ``items`` sub-database: key = item index as 8-byte big-endian unsigned integer (so a cursor
  walks items in index order), value = the raw vector bytes (``dim`` values of
  ``dtype``) or the empty value ``b""`` for an item recorded as *missing* (for example
  an image that could not be decoded).
* ``meta`` sub-database: ``b"meta"`` -> JSON with ``dim``, ``dtype``, ``modality_encoder``
  (the id of the modality encoder that wrote the vectors; stores written before the rename
  call it ``encoder``, which is still read), ``num_items`` (and free-form ``extra``).
* ``inputs`` sub-database: key = item index, value = a digest of the input the item's entry
  was computed from (its text; its image reference and file size / mtime), so a resumed
  extraction redoes exactly the items whose input changed (:meth:`FeatureStoreWriter.done_ids`).
* ``blocks`` sub-database (a read cache written when a writer closes on a *complete* store,
  every item stored or recorded missing): key = block index (8-byte big-endian), value =
  ``BLOCK_ROWS`` consecutive rows (missing rows zero-filled); ``meta[b"blocks"]`` holds the
  presence bitmap. :meth:`FeatureStore.bulk` then reads a few large values instead of one
  value per item; any later write drops the blocks first, so they never go stale.

Writes happen in batched transactions (:meth:`FeatureStoreWriter.put_many`); each batch
commits atomically, so an interrupted extraction leaves a consistent store, and
:meth:`FeatureStoreWriter.done_ids` tells a restarted job which items to skip. A write that
fails (disk full, I/O error) raises :class:`FeatureStoreError` naming the store: what was
committed before stays, and a rerun resumes.

Opening checks that ``data.mdb`` is as long as LMDB's own meta page says (a truncated file
would otherwise kill the reading process with SIGBUS); reads refuse non-finite values, naming
the item.

Reads open the environment lazily, read-only and with ``lock=False``; the handle is
tied to the process that opened it, so a store handed to DataLoader workers (fork or
spawn) reopens in each worker instead of sharing a handle across ``fork``.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import lmdb
import numpy as np
import torch

from mmrec.utils.errors import MmrecError
from mmrec.utils.files import sha256_file

_ITEMS_DB = b"items"
_META_DB = b"meta"
_BLOCKS_DB = b"blocks"
_INPUTS_DB = b"inputs"
_MAX_DBS = 4
_META_KEY = b"meta"
_BLOCKS_KEY = b"blocks"
BLOCK_ROWS = 4096
_DTYPES = {"float16": np.float16, "float32": np.float32}
_TORCH_DTYPES = {np.float16: torch.float16, np.float32: torch.float32}


class FeatureStoreError(MmrecError, RuntimeError):
    """A feature store is missing, corrupt or does not match what the caller expects."""


def _key(item: int) -> bytes:
    return int(item).to_bytes(8, "big")


def _keys(ids: np.ndarray) -> list[bytes]:
    # [n] int -> [n, 8] big-endian bytes, one row per key, without a Python int loop.
    raw = np.ascontiguousarray(ids.astype(">u8")).view(np.uint8).reshape(-1, 8)
    return [row.tobytes() for row in raw]


def _write_failure(path: Path, err: Exception) -> "FeatureStoreError":
    """A failed LMDB write as an error that says where and what to do (the committed part stays)."""
    if isinstance(err, lmdb.MapFullError):
        return FeatureStoreError(f"{path}: the store's map is full ({err}); delete the store and extract "
                                 f"again (please report this: the map size is computed from the item count).")
    return FeatureStoreError(f"disk full or write error at {path} ({err}): free space (or fix the "
                             f"disk) and rerun; the extraction resumes after the last committed batch.")


def _digests(inputs: Sequence[bytes] | np.ndarray) -> np.ndarray:
    """Input digests as a fixed-width bytes array ``[n] S16`` (compared without a Python loop)."""
    return np.asarray(inputs, dtype="S16")


def _open_checked(path: Path) -> lmdb.Environment:
    """Open a store read-only after checking that ``data.mdb`` is as long as LMDB needs.

    Pages past the end of a truncated file are mapped but unbacked: touching one is SIGBUS,
    which no exception handler sees. LMDB's meta page (read at open, inside the file) names
    the last page in use; the file must reach it.
    """
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=_MAX_DBS, readahead=False, subdir=True)
    except lmdb.Error as err:
        raise FeatureStoreError(f"{path}: not a readable LMDB store ({err}); it is corrupt or truncated: "
                                f"delete it and extract it again.") from err
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = (path / "data.mdb").stat().st_size
    if size < need:
        env.close()
        raise FeatureStoreError(f"{path}/data.mdb: truncated ({size} bytes, its LMDB header needs {need}); "
                                f"delete the store and extract it again.")
    return env


def _upgrade_meta(meta: dict) -> dict:
    """Meta of a store written before the modality-encoder rename: ``encoder`` -> ``modality_encoder``."""
    if "modality_encoder" not in meta and "encoder" in meta:
        meta = {("modality_encoder" if k == "encoder" else k): v for k, v in meta.items()}
    return meta


def _map_size(num_items: int, dim: int, itemsize: int) -> int:
    # Generous upper bound: LMDB maps lazily, unused map size costs no disk.
    need = num_items * (dim * itemsize + 64) * 2 + (64 << 20)
    return max(need, 256 << 20)


class FeatureStoreWriter:
    """Batched, resumable writer. Use :meth:`FeatureStore.create` or :meth:`FeatureStore.open_writer`."""

    def __init__(self, path: Path, meta: dict):
        self.path = Path(path)
        self.meta = meta
        if (self.path / "data.mdb").exists():  # resuming: refuse a truncated file before mapping it
            _open_checked(self.path).close()
        self.dim = int(meta["dim"])
        self.np_dtype = _DTYPES[meta["dtype"]]
        self.num_items = int(meta["num_items"])
        try:
            self._env = lmdb.open(
                str(self.path),
                map_size=_map_size(self.num_items, self.dim, np.dtype(self.np_dtype).itemsize),
                max_dbs=_MAX_DBS,
                subdir=True,
                sync=True,
            )
            self._meta_db = self._env.open_db(_META_DB)
            self._items_db = self._env.open_db(_ITEMS_DB)
            self._blocks_db = self._env.open_db(_BLOCKS_DB)
            self._inputs_db = self._env.open_db(_INPUTS_DB)
        except lmdb.Error as err:
            raise _write_failure(self.path, err) from err
        self._blocks_dropped = False
        with self._write() as txn:
            stored = txn.get(_META_KEY, db=self._meta_db)
            if stored is None:
                txn.put(_META_KEY, json.dumps(meta).encode(), db=self._meta_db)
            else:
                old = _upgrade_meta(json.loads(stored))
                for field in ("dim", "dtype", "modality_encoder", "num_items"):
                    if old[field] != meta[field]:
                        raise FeatureStoreError(
                            f"{self.path}: existing store has {field}={old[field]!r} but this job "
                            f"writes {field}={meta[field]!r}; delete the store to re-extract, or "
                            f"point the job at another path."
                        )

    @contextlib.contextmanager
    def _write(self) -> Iterator[lmdb.Transaction]:
        """A write transaction whose failure (ENOSPC, EIO, ...) names the store and the next step."""
        try:
            with self._env.begin(write=True) as txn:
                yield txn
        except lmdb.Error as err:
            raise _write_failure(self.path, err) from err

    def done_ids(self, inputs: Sequence[bytes] | np.ndarray | None = None) -> np.ndarray:
        """Item indices already written (vectors and recorded-missing alike), sorted.

        ``inputs``: ``[num_items]`` digests of the items' current inputs; then only the items
        whose entry was written from the same input count as done (a changed text, a newly
        fetched image, or an entry written without a digest are done again).
        """
        with self._env.begin() as txn:
            keys = list(txn.cursor(db=self._items_db).iternext(keys=True, values=False))
            stored = list(txn.cursor(db=self._inputs_db).iternext()) if inputs is not None else []
        if not keys:
            return np.zeros(0, dtype=np.int64)
        done = np.frombuffer(b"".join(keys), dtype=">u8").astype(np.int64)
        if inputs is None:
            return done
        current = _digests(inputs)
        if len(current) != self.num_items:
            raise FeatureStoreError(f"{self.path}: {len(current)} input digests for {self.num_items} items")
        recorded = np.zeros(self.num_items, dtype="S16")  # b"" = none recorded
        if stored:
            ids = np.frombuffer(b"".join(k for k, _ in stored), dtype=">u8").astype(np.int64)
            recorded[ids] = _digests([v for _, v in stored])
        return done[recorded[done] == current[done]]

    def _put_inputs(self, txn: lmdb.Transaction, keys: list[bytes], inputs) -> None:
        if inputs is not None:
            txn.cursor(db=self._inputs_db).putmulti(list(zip(keys, _digests(inputs).tolist())), overwrite=True)

    def put_many(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray | torch.Tensor,
                 inputs: Sequence[bytes] | np.ndarray | None = None) -> None:
        """Write ``vectors[j]`` for item ``ids[j]`` in one transaction (``inputs[j]``: the
        digest of its input, see :meth:`done_ids`)."""
        ids = np.asarray(ids, dtype=np.int64)
        if isinstance(vectors, torch.Tensor):
            vectors = vectors.detach().cpu().numpy()
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape != (len(ids), self.dim):
            raise FeatureStoreError(
                f"{self.path}: expected vectors of shape ({len(ids)}, {self.dim}), got {vectors.shape}"
            )
        if not np.isfinite(vectors).all():
            bad = ids[~np.isfinite(vectors).all(axis=1)][:5].tolist()
            raise FeatureStoreError(f"{self.path}: non-finite feature values for items {bad}")
        self._check_ids(ids)
        data = np.ascontiguousarray(vectors.astype(self.np_dtype, copy=False))
        rowbytes = self.dim * data.itemsize
        buf = data.tobytes()
        keys = _keys(ids)
        items = [(k, buf[j * rowbytes:(j + 1) * rowbytes]) for j, k in enumerate(keys)]
        self._drop_blocks()
        with self._write() as txn:
            txn.cursor(db=self._items_db).putmulti(items, overwrite=True)
            self._put_inputs(txn, keys, inputs)

    def put_missing(self, ids: Iterable[int], inputs: Sequence[bytes] | np.ndarray | None = None) -> None:
        """Record items whose input could not be encoded (empty value = missing)."""
        ids = np.asarray(list(ids), dtype=np.int64)
        if ids.size == 0:
            return
        self._check_ids(ids)
        self._drop_blocks()
        keys = _keys(ids)
        with self._write() as txn:
            txn.cursor(db=self._items_db).putmulti([(k, b"") for k in keys], overwrite=True)
            self._put_inputs(txn, keys, inputs)

    def _drop_blocks(self) -> None:
        """Remove the block cache before the first write of this session (it would go stale)."""
        if self._blocks_dropped:
            return
        with self._write() as txn:
            txn.drop(self._blocks_db, delete=False)
            txn.delete(_BLOCKS_KEY, db=self._meta_db)
        self._blocks_dropped = True

    def _write_blocks(self) -> None:
        """Build the block cache if every item has an entry (see the module docstring)."""
        rowbytes = self.dim * np.dtype(self.np_dtype).itemsize
        with self._env.begin() as txn:
            if txn.stat(self._items_db)["entries"] != self.num_items:
                return
            if txn.get(_BLOCKS_KEY, db=self._meta_db) is not None:
                return  # already built and nothing written since
            mask = np.zeros(self.num_items, dtype=bool)
            blocks = []
            cursor = txn.cursor(db=self._items_db)
            for start in range(0, self.num_items, BLOCK_ROWS):
                rows = min(BLOCK_ROWS, self.num_items - start)
                block = bytearray(rows * rowbytes)
                cursor.set_key(_key(start))
                for j, value in enumerate(cursor.iternext(keys=False, values=True)):
                    if j == rows:
                        break
                    if len(value) == rowbytes:
                        block[j * rowbytes:(j + 1) * rowbytes] = value
                        mask[start + j] = True
                blocks.append((_key(start // BLOCK_ROWS), bytes(block)))
        with self._write() as txn:
            txn.cursor(db=self._blocks_db).putmulti(blocks, overwrite=True)
            txn.put(_BLOCKS_KEY, json.dumps({"rows": BLOCK_ROWS, "present": int(mask.sum())}).encode()
                    + b"\n" + np.packbits(mask).tobytes(), db=self._meta_db)

    def _check_ids(self, ids: np.ndarray) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_items):
            raise FeatureStoreError(
                f"{self.path}: item ids must lie in [0, {self.num_items}), got "
                f"min={ids.min()} max={ids.max()}"
            )

    def close(self) -> None:
        try:
            self._write_blocks()
            self._env.sync()
        except lmdb.Error as err:
            raise _write_failure(self.path, err) from err
        finally:
            self._env.close()

    def __enter__(self) -> "FeatureStoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FeatureStore:
    """Read access to one ``<name>.lmdb`` feature store.

    ``bulk()`` returns ``(values [num_items, dim] float32, mask [num_items] bool)`` and
    ``get_many(ids)`` the same for a batch of item ids; ``mask`` is False for items that
    are missing (never written or recorded missing). Values of missing items are zeros
    and must be ignored through the mask.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not (self.path / "data.mdb").exists():
            raise FeatureStoreError(
                f"{self.path}: no LMDB feature store here (data.mdb missing); run feature "
                f"extraction (`python -m mmrec.prepare ...`) or fix the path."
            )
        self._env: lmdb.Environment | None = None
        self._pid: int | None = None
        self._db = None
        meta = self._read_meta()
        self.dim: int = int(meta["dim"])
        self.dtype: str = meta["dtype"]
        self.modality_encoder: str = meta["modality_encoder"]  # id of the modality encoder that wrote it
        self.num_items: int = int(meta["num_items"])
        self.extra: dict = meta.get("extra", {})
        self._np_dtype = _DTYPES[self.dtype]

    # -- creation -----------------------------------------------------------------
    @staticmethod
    def create(
        path: str | os.PathLike,
        *,
        dim: int,
        num_items: int,
        modality_encoder: str,
        dtype: str = "float16",
        extra: dict | None = None,
    ) -> FeatureStoreWriter:
        """Open (or resume) a store for writing; raises if it exists with other settings."""
        if dtype not in _DTYPES:
            raise FeatureStoreError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"dim": int(dim), "dtype": dtype, "modality_encoder": modality_encoder, "num_items": int(num_items),
                "extra": extra or {}}
        return FeatureStoreWriter(path, meta)

    # -- process-local environment --------------------------------------------------
    def _open(self) -> lmdb.Environment:
        pid = os.getpid()
        if self._env is None or self._pid != pid:
            if self._env is not None:
                # Inherited through fork: LMDB forbids using it, and py-lmdb's per-process
                # registry would refuse a second open of the path. Closing the child's copy
                # (read-only, lock-free) unmaps only the child's view; the parent keeps its own.
                self._env.close()
            env = _open_checked(self.path)
            self._env = env
            try:
                self._db = env.open_db(_ITEMS_DB, create=False)
            except lmdb.Error as err:
                raise FeatureStoreError(f"{self.path}: store has no item table ({err}); it is corrupt or "
                                        f"not an mmrec feature store: extract it again.") from err
            self._pid = pid
        return self._env

    def _read_meta(self) -> dict:
        env = self._open()
        try:
            meta_db = env.open_db(_META_DB, create=False)
            with env.begin() as txn:
                raw = txn.get(_META_KEY, db=meta_db)
        except lmdb.Error as err:
            raise FeatureStoreError(f"{self.path}: store has no metadata ({err}); it is corrupt "
                                    f"or not an mmrec feature store: re-extract it.") from err
        if raw is None:
            raise FeatureStoreError(f"{self.path}: store has no metadata; re-extract it.")
        return _upgrade_meta(json.loads(raw))

    def fingerprint(self) -> dict:
        """``{"bytes", "sha256"}`` of ``data.mdb``, recorded when a store is registered."""
        data = self.path / "data.mdb"
        return {"bytes": data.stat().st_size, "sha256": sha256_file(data)}

    def _check_finite(self, values: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Refuse NaN / inf rows (flipped bytes on disk), naming the first such item."""
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            first = int(bad[0] if ids is None else ids[bad[0]])
            raise FeatureStoreError(f"{self.path}: non-finite values in the vector of item {first} "
                                    f"({bad.size} items in all); the store is damaged: extract it again.")

    def close(self) -> None:
        if self._env is not None and self._pid == os.getpid():
            self._env.close()
        self._env = None
        self._pid = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_env"] = None  # never pickle a handle into a worker
        state["_db"] = None
        state["_pid"] = None
        return state

    def __len__(self) -> int:
        return self.num_items

    # -- reads ----------------------------------------------------------------------
    def _decode(self, ids: np.ndarray, values: list[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
        rowbytes = self.dim * np.dtype(self._np_dtype).itemsize
        lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
        bad = (lengths != 0) & (lengths != rowbytes)
        if bad.any():
            raise FeatureStoreError(f"{self.path}: corrupt vector for item {int(ids[bad][0])} "
                                    f"({int(lengths[bad][0])} bytes, expected {rowbytes}); re-extract.")
        mask = lengths == rowbytes
        out = np.zeros((len(values), self.dim), dtype=np.float32)
        if mask.any():
            present = np.frombuffer(b"".join(values), dtype=self._np_dtype).reshape(-1, self.dim)
            self._check_finite(present, ids[mask])
            out[mask] = present
        return torch.from_numpy(out), torch.from_numpy(mask)

    def bulk(self, dtype: torch.dtype | None = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """All vectors at once: ``(values [num_items, dim], mask [num_items] bool)``.

        ``dtype``: of the returned values (``None``: the stored type, e.g. float16, which
        skips a conversion pass; convert on the device instead). A complete store is read from
        its block cache; otherwise item by item.
        """
        blocks = self._read_blocks(dtype)
        if blocks is not None:
            return blocks
        env = self._open()
        with env.begin(buffers=False) as txn:
            cursor = txn.cursor(db=self._db)
            keys = list(cursor.iternext(keys=True, values=False))
            values = list(cursor.iternext(keys=False, values=True)) if cursor.first() else []
        out_dtype = dtype or _TORCH_DTYPES[self._np_dtype]
        if not values:
            return torch.zeros(self.num_items, self.dim, dtype=out_dtype), torch.zeros(self.num_items, dtype=torch.bool)
        ids = np.frombuffer(b"".join(keys), dtype=">u8").astype(np.int64)
        vals, mask = self._decode(ids, values)
        full = torch.zeros(self.num_items, self.dim, dtype=out_dtype)
        full_mask = torch.zeros(self.num_items, dtype=torch.bool)
        idx = torch.from_numpy(ids)
        full[idx] = vals.to(out_dtype)
        full_mask[idx] = mask
        return full, full_mask

    def _read_blocks(self, dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``bulk()`` from the block cache, or ``None`` when the store has none."""
        env = self._open()
        try:
            meta_db = env.open_db(_META_DB, create=False)
            blocks_db = env.open_db(_BLOCKS_DB, create=False)
        except lmdb.Error:  # a store written before blocks existed
            return None
        rowbytes = self.dim * np.dtype(self._np_dtype).itemsize
        arr = np.empty((self.num_items, self.dim), dtype=self._np_dtype)
        dest = arr.reshape(-1).view(np.uint8)
        with env.begin(buffers=True) as txn:
            raw = txn.get(_BLOCKS_KEY, db=meta_db)
            if raw is None:
                return None
            header, bitmap = bytes(raw).split(b"\n", 1)
            offset = 0
            for value in txn.cursor(db=blocks_db).iternext(keys=False, values=True):  # ~n/4096 values
                size = len(value)
                if offset + size > dest.size:
                    return None
                dest[offset:offset + size] = np.frombuffer(value, dtype=np.uint8)  # one copy out of the map
                offset += size
        if offset != self.num_items * rowbytes:
            return None
        mask = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), count=self.num_items).astype(bool)
        self._check_finite(arr)
        out_dtype = dtype or _TORCH_DTYPES[self._np_dtype]
        return torch.from_numpy(arr).to(out_dtype), torch.from_numpy(mask)

    def get_many(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Vectors for a batch of item ids: ``(values [n, dim] float32, mask [n] bool)``."""
        if isinstance(ids, torch.Tensor):
            ids = ids.cpu().numpy()
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_items):
            raise FeatureStoreError(f"{self.path}: item ids must lie in [0, {self.num_items})")
        env = self._open()
        keys = _keys(ids)
        with env.begin(buffers=False) as txn:
            found = dict(txn.cursor(db=self._db).getmulti(keys))
        values = [found.get(k, b"") for k in keys]
        return self._decode(ids, values)
