"""The prepared-dataset format: round trip and clear errors for corrupt or missing files."""

import json

import pandas as pd
import pytest

from mmrec.data.prepared import DatasetError, load_prepared, write_prepared


def _write(root):
    inter = pd.DataFrame({"user": [0, 0, 1, 1, 2], "item": [0, 1, 1, 2, 0], "split": [0, 1, 0, 2, 0]})
    items = pd.DataFrame({"item": [0, 1, 2], "title": ["a", "b", "c"]})
    users = pd.DataFrame({"user": [0, 1, 2]})
    return write_prepared(root, name="tiny", interactions=inter, items=items, users=users,
                          split_rule={"rule": "given"}, source={"type": "test"})


def test_round_trip(tmp_path):
    manifest = _write(tmp_path)
    ds = load_prepared(tmp_path)
    assert manifest["num_interactions"] == {"train": 3, "valid": 1, "test": 1}
    assert (ds.num_users, ds.num_items) == (3, 3)
    users, items = ds.split("train")
    assert sorted(zip(users.tolist(), items.tolist())) == [(0, 0), (1, 1), (2, 0)]
    assert ds.items["title"].tolist() == ["a", "b", "c"]


def test_changed_table_is_detected(tmp_path):
    _write(tmp_path)
    path = tmp_path / "interactions.parquet"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="interactions.parquet: checksum differs"):
        load_prepared(tmp_path)


def test_missing_table_and_manifest(tmp_path):
    with pytest.raises(DatasetError, match="no manifest"):
        load_prepared(tmp_path)
    _write(tmp_path)
    (tmp_path / "items.parquet").unlink()
    with pytest.raises(DatasetError, match="items.parquet: missing"):
        load_prepared(tmp_path)


def test_corrupt_manifest(tmp_path):
    _write(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="manifest.json: not valid JSON"):
        load_prepared(tmp_path)


@pytest.mark.parametrize("change,match", [
    ({"item": [0, 1, 5, 1, 0]}, "item=5, outside"),
    ({"split": [0, 1, 0, 7, 0]}, "split=7"),
    ({"user": [0, 0, 0, 1, 2], "item": [0, 1, 1, 2, 0]}, "appear twice"),
])
def test_inconsistent_tables_are_refused_before_writing(tmp_path, change, match):
    inter = pd.DataFrame({"user": [0, 0, 1, 1, 2], "item": [0, 1, 1, 2, 0], "split": [0, 1, 0, 2, 0]})
    inter = inter.assign(**change)
    with pytest.raises(DatasetError, match=match):
        write_prepared(tmp_path, name="bad", interactions=inter, items=pd.DataFrame({"item": [0, 1, 2]}),
                       users=pd.DataFrame({"user": [0, 1, 2]}), split_rule={}, source={})
    assert not (tmp_path / "manifest.json").exists()


def test_rewrite_keeps_previous_dataset_until_complete(tmp_path):
    _write(tmp_path)
    before = json.loads((tmp_path / "manifest.json").read_text())
    with pytest.raises(DatasetError):
        write_prepared(tmp_path, name="bad", interactions=pd.DataFrame({"user": [0], "item": [9], "split": [0]}),
                       items=pd.DataFrame({"item": [0, 1, 2]}), users=pd.DataFrame({"user": [0, 1, 2]}),
                       split_rule={}, source={})
    assert json.loads((tmp_path / "manifest.json").read_text()) == before
    load_prepared(tmp_path)  # still valid
