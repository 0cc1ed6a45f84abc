"""The MMRec-format importer: fixtures with errors, features with zero rows, real Amazon Baby."""

import numpy as np
import pytest

from conftest import shared_path
from mmrec.data.mmrec_format import MMRecSource, read_inter
from mmrec.data.prepared import DatasetError, load_prepared

HEADER = "userID\titemID\trating\ttimestamp\tx_label\n"


def _folder(tmp_path, lines, name="toy"):
    (tmp_path / f"{name}.inter").write_text(HEADER + "".join(lines))
    return tmp_path


GOOD = ["0\t0\t5\t10\t0\n", "0\t1\t4\t11\t1\n", "1\t1\t3\t12\t0\n", "1\t2\t3\t13\t2\n", "2\t0\t1\t14\t0\n"]


def test_import_and_features(tmp_path):
    (tmp_path / "src").mkdir()
    src = _folder(tmp_path / "src", GOOD)
    feat = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, 4.0]], dtype=np.float32)  # item 1: zeros = missing
    np.save(src / "image_feat.npy", feat)
    MMRecSource(str(src), "toy").prepare(tmp_path / "out")
    ds = load_prepared(tmp_path / "out")
    assert ds.manifest["num_interactions"] == {"train": 3, "valid": 1, "test": 1}
    assert ds.manifest["features"]["image"]["missing"] == 1
    values, mask = ds.feature_store("image").bulk()
    assert mask.tolist() == [True, False, True]
    assert values[2].tolist() == [3.0, 4.0]


@pytest.mark.parametrize("lines,match", [
    (GOOD[:2] + ["1\tx\t3\t12\t0\n"], "line 4: itemID='x' is not a whole number"),
    (GOOD[:2] + ["1\t1\t3\t12\t5\n"], "line 4: x_label=5"),
    (GOOD[:2] + [GOOD[0]], "line 4: user 0 / item 0 repeats"),
    (GOOD[:2] + ["1\t1\t3\t12\t0\textra\n"], "malformed"),
])
def test_bad_lines_are_named(tmp_path, lines, match):
    with pytest.raises(DatasetError, match=match):
        read_inter(_folder(tmp_path, lines) / "toy.inter")


def test_missing_columns_and_file(tmp_path):
    (tmp_path / "toy.inter").write_text("user\titem\n0\t1\n")
    with pytest.raises(DatasetError, match="header lacks"):
        read_inter(tmp_path / "toy.inter")
    with pytest.raises(DatasetError, match="file not found"):
        MMRecSource(str(tmp_path), "nothere").prepare(tmp_path / "out")


def test_amazon_baby_import(tmp_path):
    src = shared_path("amazon-baby")
    MMRecSource(str(src), "baby").prepare(tmp_path / "baby")
    ds = load_prepared(tmp_path / "baby")
    assert (ds.num_users, ds.num_items) == (19445, 7050)
    assert ds.manifest["num_interactions"] == {"train": 119674, "valid": 20559, "test": 20559}
    assert ds.items["raw_id"].str.len().gt(0).all()  # asins from i_id_mapping.csv
