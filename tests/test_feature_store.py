"""LMDB feature store: round trip, missing mask, resume, interrupted writes, workers."""

import multiprocessing as mp

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from mmrec.features.store import FeatureStore, FeatureStoreError


def _write(path, n=50, dim=8, dtype="float16", missing=(3, 7)):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    present = np.setdiff1d(np.arange(n), missing)
    with FeatureStore.create(path, dim=dim, num_items=n, modality_encoder="test", dtype=dtype) as w:
        for chunk in np.array_split(present, 4):  # several batched transactions
            w.put_many(chunk, vectors[chunk])
        w.put_missing(missing)
    return vectors


@pytest.mark.parametrize("dtype,atol", [("float16", 2e-3), ("float32", 0.0)])
def test_bulk_round_trip_and_mask(tmp_path, dtype, atol):
    vectors = _write(tmp_path / "f.lmdb", dtype=dtype)
    store = FeatureStore(tmp_path / "f.lmdb")
    values, mask = store.bulk()
    assert values.shape == (50, 8) and store.dim == 8 and store.dtype == dtype
    assert mask.sum() == 48 and not mask[3] and not mask[7]
    assert torch.allclose(values[mask], torch.from_numpy(vectors)[mask], atol=atol, rtol=1e-3)
    assert (values[~mask] == 0).all()


def test_get_many_keeps_order_and_reports_missing(tmp_path):
    vectors = _write(tmp_path / "f.lmdb", dtype="float32")
    store = FeatureStore(tmp_path / "f.lmdb")
    ids = [9, 3, 0, 9]
    values, mask = store.get_many(ids)
    assert mask.tolist() == [True, False, True, True]
    assert torch.equal(values[0], torch.from_numpy(vectors[9]))
    assert torch.equal(values[2], torch.from_numpy(vectors[0]))
    with pytest.raises(FeatureStoreError, match="must lie in"):
        store.get_many([50])


def test_unwritten_items_are_missing_and_resume_skips_done(tmp_path):
    path = tmp_path / "f.lmdb"
    with FeatureStore.create(path, dim=4, num_items=10, modality_encoder="e") as w:
        w.put_many([0, 1, 2], np.ones((3, 4)))
    assert FeatureStore(path).bulk()[1].tolist() == [True] * 3 + [False] * 7
    with FeatureStore.create(path, dim=4, num_items=10, modality_encoder="e") as w:  # a restarted job
        assert w.done_ids().tolist() == [0, 1, 2]


def test_interrupted_batch_leaves_consistent_store(tmp_path):
    path = tmp_path / "f.lmdb"
    with FeatureStore.create(path, dim=4, num_items=10, modality_encoder="e") as w:
        w.put_many([0, 1], np.ones((2, 4)))
        with pytest.raises(FeatureStoreError):  # a failing batch (NaN) writes nothing
            w.put_many([2, 3], np.array([[1, 2, 3, 4], [np.nan, 0, 0, 0]]))
    values, mask = FeatureStore(path).bulk()
    assert mask.tolist() == [True, True] + [False] * 8


def test_reopening_with_other_settings_fails(tmp_path):
    _write(tmp_path / "f.lmdb")
    with pytest.raises(FeatureStoreError, match="dim=8"):
        FeatureStore.create(tmp_path / "f.lmdb", dim=16, num_items=50, modality_encoder="test")


def test_store_written_before_the_rename_reads_and_resumes(tmp_path):
    """Stores written before the modality-encoder rename call the id ``encoder`` in their meta."""
    import json

    import lmdb

    path = tmp_path / "old.lmdb"
    vectors = _write(path, n=10, dim=4, missing=())
    env = lmdb.open(str(path), max_dbs=3, subdir=True)
    meta_db = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        meta = json.loads(txn.get(b"meta", db=meta_db))
        meta["encoder"] = meta.pop("modality_encoder")
        txn.put(b"meta", json.dumps(meta).encode(), db=meta_db)
    env.close()
    store = FeatureStore(path)
    assert store.modality_encoder == "test"
    store.close()
    with FeatureStore.create(path, dim=4, num_items=10, modality_encoder="test") as w:  # resumes
        assert len(w.done_ids()) == 10
    with pytest.raises(FeatureStoreError, match="modality_encoder='test'"):
        FeatureStore.create(path, dim=4, num_items=10, modality_encoder="other")
    values, mask = FeatureStore(path).bulk()
    assert bool(mask.all()) and torch.allclose(values, torch.from_numpy(vectors), atol=2e-3)


def test_missing_store_has_clear_error(tmp_path):
    with pytest.raises(FeatureStoreError, match="no LMDB feature store"):
        FeatureStore(tmp_path / "nope.lmdb")


class _Batches(Dataset):
    def __init__(self, store):
        self.store = store

    def __len__(self):
        return 10

    def __getitem__(self, i):
        values, mask = self.store.get_many([i * 5 % 50, (i * 5 + 1) % 50])
        return values, mask, self.store._pid


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_open_their_own_handle(tmp_path, context):
    if context not in mp.get_all_start_methods():
        pytest.skip(f"{context} unavailable")
    vectors = _write(tmp_path / "f.lmdb", dtype="float32")
    store = FeatureStore(tmp_path / "f.lmdb")
    store.bulk()  # the parent opens a handle before forking
    loader = DataLoader(_Batches(store), batch_size=None, num_workers=2,
                        multiprocessing_context=context)
    pids = set()
    for i, (values, mask, pid) in enumerate(loader):
        assert torch.equal(values[0], torch.from_numpy(vectors[i * 5 % 50]))
        pids.add(pid)
    assert store._pid not in pids and len(pids) == 2


def test_block_cache_equals_item_path_and_never_goes_stale(tmp_path, monkeypatch):
    import mmrec.features.store as store_mod

    monkeypatch.setattr(store_mod, "BLOCK_ROWS", 16)  # several blocks, the last one partial
    path = tmp_path / "b.lmdb"
    vectors = _write(path, n=50)
    store = FeatureStore(path)
    from_blocks = store.bulk()
    assert store._read_blocks(torch.float32) is not None  # complete store: blocks were written
    monkeypatch.setattr(FeatureStore, "_read_blocks", lambda self, dtype: None)
    from_items = store.bulk()
    monkeypatch.undo()
    assert torch.equal(from_blocks[0], from_items[0]) and torch.equal(from_blocks[1], from_items[1])
    half, _ = store.bulk(dtype=None)
    assert half.dtype == torch.float16 and torch.equal(half.float(), from_items[0])
    store.close()
    # a later write (here: item 3 gets a vector) drops the blocks before changing anything
    with FeatureStore.create(path, dim=8, num_items=50, modality_encoder="test") as w:
        w.put_many([3], vectors[3:4])
    store = FeatureStore(path)
    values, mask = store.bulk()
    assert bool(mask[3]) and torch.allclose(values[3], torch.from_numpy(vectors[3]), atol=2e-3)
    store.close()


def test_incomplete_store_has_no_blocks(tmp_path):
    path = tmp_path / "p.lmdb"
    with FeatureStore.create(path, dim=4, num_items=10, modality_encoder="test") as w:
        w.put_many([0, 1], np.ones((2, 4), dtype=np.float32))
    store = FeatureStore(path)
    assert store._read_blocks(None) is None
    values, mask = store.bulk()
    assert mask.tolist() == [True, True] + [False] * 8
