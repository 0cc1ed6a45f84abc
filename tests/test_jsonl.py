"""Streaming JSON-lines parsing: fast path, malformed lines by number, strict mode; text cleaning."""

from __future__ import annotations

import gzip

import pyarrow as pa
import pytest

from mmrec.data.jsonl import JsonlReader
from mmrec.data.prepared import DatasetError
from mmrec.data.text import assemble_text, clean_text

SCHEMA = pa.schema([("user_id", pa.string()), ("timestamp", pa.int64()), ("rating", pa.float64()),
                    ("tags", pa.list_(pa.string()))])

LINES = [
    b'{"user_id": "a", "timestamp": 1, "rating": 5.0, "extra": {"x": [1, 2]}}',   # 1 ok
    b'',                                                                         # 2 blank
    b'{"user_id": "b", "timestamp": 2}',                                         # 3 ok (rating null)
    b'{"timestamp": 3}',                                                         # 4 missing user_id
    b'{"user_id": "c", "timestamp": "4", "tags": "solo"}',                       # 5 coerced
    b'{"user_id": "d", "timestamp": 5',                                          # 6 bad JSON
    b'[1, 2]',                                                                   # 7 not an object
    b'{"user_id": "e", "timestamp": "soon"}',                                    # 8 wrong type
    b'{"user_id": "f", "timestamp": 6, "tags": ["x", "y"]}',                     # 9 ok
]


@pytest.mark.parametrize("block", [40, 1 << 20])
@pytest.mark.parametrize("gz", [False, True])
def test_malformed_lines_reported_by_number(tmp_path, block, gz):
    path = tmp_path / ("r.jsonl.gz" if gz else "r.jsonl")
    data = b"\n".join(LINES)  # no final newline: the last line still counts
    path.write_bytes(gzip.compress(data) if gz else data)
    reader = JsonlReader(path, SCHEMA, required=("user_id", "timestamp"), block_bytes=block)
    rows = [r for t in reader for r in t.to_pylist()]
    assert [r["user_id"] for r in rows] == ["a", "b", "c", "f"]
    assert rows[2]["timestamp"] == 4 and rows[2]["tags"] == ["solo"]
    rep = reader.report
    assert (rep.lines, rep.rows, rep.blank, rep.malformed) == (9, 4, 1, 4)
    assert [n for n, _ in rep.examples] == [4, 6, 7, 8]
    assert "user_id" in dict(rep.examples)[4]


FLAT = pa.schema([("user_id", pa.string()), ("timestamp", pa.int64()), ("rating", pa.float64())])


@pytest.mark.parametrize("block", [40, 1 << 20])
def test_flat_schema_goes_through_polars_with_the_same_reports(tmp_path, block):
    path = tmp_path / "r.jsonl"
    lines = LINES + [b'{"user_id": {"n": 1}, "timestamp": 7}']  # 10: nested value for a string
    path.write_bytes(b"\n".join(lines) + b"\n")
    reader = JsonlReader(path, FLAT, required=("user_id", "timestamp"), block_bytes=block)
    assert reader._polars_schema is not None  # the review files' fast path
    rows = [r for t in reader for r in t.to_pylist()]
    assert [r["user_id"] for r in rows] == ["a", "b", "c", "f"]
    assert [n for n, _ in reader.report.examples] == [4, 6, 7, 8, 10]
    assert "expected a string" in dict(reader.report.examples)[10]


def test_polars_and_pyarrow_fast_paths_agree(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text("".join(f'{{"user_id": "u{k}", "timestamp": {k}, "rating": {k % 5}, "text": "x y"}}\n'
                            for k in range(3000)) + "\n")
    fast = JsonlReader(path, FLAT, required=("user_id",), block_bytes=8192)
    slow = JsonlReader(path, FLAT, required=("user_id",), block_bytes=8192)
    slow._polars_schema = None  # pyarrow's parser
    a, b = pa.concat_tables(list(fast)), pa.concat_tables(list(slow))
    assert a.schema == b.schema == FLAT and a.equals(b) and a.num_rows == 3000
    assert fast.report.as_dict() == slow.report.as_dict()


def test_clean_fast_path_has_no_malformed(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text("".join(f'{{"user_id": "u{k}", "timestamp": {k}}}\n' for k in range(1000)))
    reader = JsonlReader(path, SCHEMA, required=("user_id",), block_bytes=4096)
    tables = list(reader)
    assert len(tables) > 1 and sum(t.num_rows for t in tables) == 1000
    assert reader.report.malformed == 0 and reader.report.lines == 1000


def test_strict_fails_on_first_bad_line_with_its_number(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"\n".join(LINES) + b"\n")
    reader = JsonlReader(path, SCHEMA, required=("user_id", "timestamp"), strict=True)
    with pytest.raises(DatasetError, match=r"r\.jsonl:4: missing required field"):
        list(reader)


def test_clean_text_strips_html_entities_and_normalises():
    assert clean_text("<p>Soft&nbsp;&amp; <b>gentle</b></p><br/>cream\u00a0\u2028x") == "Soft & gentle cream x"
    assert clean_text("&lt;b&gt; is text") == "<b> is text"
    assert clean_text("ﬁne   ｆｏｏ") == "fine foo"  # NFKC ligature and full-width
    assert clean_text(None) == "" and clean_text(["a", None, " b "]) == "a b"


def test_assemble_text_fields_and_empty():
    rec = {"features": ["Vegan", "<i>Cruelty free</i>."], "description": [], "store": "Acme",
           "categories": ["Beauty", "Skin Care"]}
    assert assemble_text(rec, ["features", "description", "categories", "store"]) == \
        "Vegan Cruelty free. Beauty > Skin Care. Store: Acme"
    assert assemble_text({}, ["features", "store"]) == ""
