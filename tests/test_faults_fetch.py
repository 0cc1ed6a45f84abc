"""Fault injection for fetching and parsing (issue 17, classes 4, 5, the write side of 6 and
the fetch side of 9): malformed JSON lines, broken gzip, a server that ignores If-Range, a
refused connection, local files named by metadata, pixel bombs, a full disk and short writes,
an image server outage.

Every case checks both the message (file / line / URL / item, and what to do) and that what
was already written survives unchanged. Everything runs against 127.0.0.1.
"""

from __future__ import annotations

import builtins
import errno
import gzip
import hashlib
import io
import json
import os
import socket
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from httpserver import Route, http_server  # noqa: F401 - fixture
from hydra.utils import instantiate
from PIL import Image, ImageFile

import mmrec.data.download as download_module
from mmrec.data.amazon2023 import REVIEW_SCHEMA, Amazon2023Source
from mmrec.data.download import DownloadError, download, part_path
from mmrec.data.images import fetch_images, prepare_command
from mmrec.data.itemtable import ImageOptions, run_image_stage
from mmrec.data.jsonl import JsonlReader
from mmrec.data.prepared import DatasetError
from mmrec.data.synthetic import write_amazon2023

from conftest import compose_cfg

pytestmark = pytest.mark.faults

BODY = bytes(range(256)) * 400  # 102,400 bytes
FAST = dict(backoff=0.0, timeout=5, progress=False, chunk_size=8192)
IMAGES = dict(workers=2, timeout=5, retries=0, backoff=0.0, progress=False)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (relative path -> bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _jpeg(size: tuple[int, int] = (64, 64), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _closed_port_url(path: str) -> str:
    """A URL on a 127.0.0.1 port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


# -- class 4: JSON lines ----------------------------------------------------------------------
GOOD = [{"user_id": f"u{k}", "parent_asin": f"a{k}", "timestamp": 1000 + k, "rating": 4.0} for k in range(6)]
BAD_LINES = {
    2: '{"user_id": "u", "parent_asin": "a", "timestamp": 1, "rating": 1.0, "x": ' + "[" * 50_000 + "]" * 50_000 + "}",
    4: '{"user_id": "u", "parent_asin": "a", "timestamp": 123456789012345678901234567890, "rating": 1.0}',
    6: '{"user_id": "u\\ud800", "parent_asin": "a", "timestamp": 1, "rating": 1.0}',
    8: '{"user_id": "u", "parent_asin": "a", "timestamp": 1, "rating": ' + "9" * 400 + "}",
}


def _reviews_file(path: Path, gz: bool) -> list[dict]:
    """GOOD lines with BAD_LINES at their 1-based numbers; returns the good records in order."""
    lines, good = [], iter(GOOD)
    for number in range(1, len(GOOD) + len(BAD_LINES) + 1):
        lines.append(BAD_LINES[number] if number in BAD_LINES else json.dumps(next(good)))
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return GOOD


@pytest.mark.parametrize("schema", ["flat", "nested"])
@pytest.mark.parametrize("gz", [False, True])
def test_odd_lines_are_counted_with_their_numbers_not_fatal(tmp_path, schema, gz):
    """RecursionError, OverflowError (int64 and float), a lone surrogate: each one line, counted."""
    path = tmp_path / ("r.jsonl.gz" if gz else "r.jsonl")
    good = _reviews_file(path, gz)
    before = path.read_bytes()
    fields = REVIEW_SCHEMA if schema == "flat" else pa.schema(
        [*REVIEW_SCHEMA, ("tags", pa.list_(pa.string()))])  # a list column: pyarrow's parser
    reader = JsonlReader(path, fields, required=("user_id", "parent_asin", "timestamp"))
    table = pa.concat_tables(list(reader))
    report = reader.report.as_dict()
    assert report["malformed"] == 4 and report["lines"] == 10 and report["rows"] == 6
    numbers = [int(e.split(":")[0].split()[1]) for e in report["malformed_examples"]]
    assert numbers == sorted(BAD_LINES)
    text = " | ".join(report["malformed_examples"])
    assert "nested too deeply" in text and "outside the range of int64" in text
    assert "expected a number" in text and "surrogate" in text
    # the good lines are all kept, unchanged, and the input file is untouched
    assert table.select([f.name for f in REVIEW_SCHEMA]).to_pylist() == good
    assert path.read_bytes() == before


def test_strict_mode_names_the_deeply_nested_line(tmp_path):
    path = tmp_path / "r.jsonl"
    _reviews_file(path, gz=False)
    reader = JsonlReader(path, REVIEW_SCHEMA, strict=True)
    with pytest.raises(DatasetError, match=rf"{path}:2: invalid JSON \(nested too deeply\)\. Fix or remove the line"):
        list(reader)


def _tiny_amazon(root: Path, image_base_url: str, **kw) -> dict:
    return write_amazon2023(root / "src", "Tiny", num_reviews=400, num_users=30, num_items=12,
                            image_base_url=image_base_url, seed=3, **kw)


def test_truncated_gz_names_the_file_and_leaves_no_temp_file(tmp_path):
    """The parse stage over a truncated .gz: a clear error, no temporary parquet, the previous
    reviews table unchanged."""
    files = _tiny_amazon(tmp_path, "http://127.0.0.1:1/images")
    source = Amazon2023Source("Tiny", str(tmp_path / "raw"), reviews=str(files["reviews"]),
                              meta=str(files["meta"]), kcore=2, progress=False,
                              images=ImageOptions(enabled=False))
    root = tmp_path / "ds"
    source.prepare(root, until="parse")
    work = root / "work"
    before = _snapshot(work)
    data = files["reviews"].read_bytes()
    files["reviews"].write_bytes(data[: len(data) * 2 // 3])  # an interrupted copy
    with pytest.raises(DatasetError) as err:
        source.prepare(root, force=["parse"], until="parse")
    message = str(err.value)
    assert str(files["reviews"]) in message and "truncated or corrupt" in message
    assert "prepare.force=[download]" in message and "complete copy" in message
    assert not list(work.glob(".*tmp*"))  # no half-written reviews table
    after = _snapshot(work)
    assert after["reviews.parquet"] == before["reviews.parquet"]
    assert after["raw_files.json"] == before["raw_files.json"]


def test_corrupt_gz_crc_names_the_file(tmp_path):
    path = tmp_path / "r.jsonl.gz"
    data = bytearray(gzip.compress(("\n".join(json.dumps(g) for g in GOOD * 50) + "\n").encode()))
    data[-8] ^= 0xFF  # the CRC-32 in the trailer
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=rf"{path}: the compressed data is truncated or corrupt .*Delete it"):
        list(JsonlReader(path, REVIEW_SCHEMA))
    assert path.read_bytes() == bytes(data)


# -- class 5: resumed downloads must not splice two versions ------------------------------------
def _partial(http_server, tmp_path, route: Route) -> tuple[str, Path, bytes]:
    """A download of ``route`` cut after 30,000 bytes, then an outage (503): it gives up and
    keeps the part; the outage is over on return. (url, dest, the part's bytes)."""
    route.truncate_first, route.fail_after = 30_000, 1
    http_server.add("/f.bin", route)
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="30000 bytes kept"):
        download(http_server.url("/f.bin"), dest, retries=0, **FAST)
    route.fail_after = None
    return http_server.url("/f.bin"), dest, part_path(dest).read_bytes()


@pytest.mark.parametrize("validator", ["etag", "last_modified", "vanished"])
def test_206_of_another_version_restarts_from_zero(http_server, tmp_path, caplog, validator):
    """A server or cache that ignores If-Range answers 206 with the new file's tail: the
    recorded ETag / Last-Modified differ (or are gone), so the transfer restarts from zero."""
    old_lm, new_lm = "Mon, 01 Jan 2024 00:00:00 GMT", "Tue, 02 Jan 2024 00:00:00 GMT"
    etag = validator == "etag"
    old = Route(BODY, send_etag=etag, headers={} if etag else {"Last-Modified": old_lm})
    url, dest, kept = _partial(http_server, tmp_path, old)
    assert kept == BODY[:30_000]
    new_body = BODY[::-1]
    headers = {"last_modified": {"Last-Modified": new_lm}, "etag": {}, "vanished": {}}[validator]
    http_server.add("/f.bin", Route(new_body, if_range=False, send_etag=etag, headers=headers))
    with caplog.at_level("WARNING"):
        got = download(url, dest, retries=2, **FAST)
    assert got.read_bytes() == new_body  # not BODY[:30000] + new_body[30000:]
    assert json.loads((tmp_path / "f.bin.complete").read_text())["sha256"] == hashlib.sha256(new_body).hexdigest()
    log = [(r.headers.get("Range"), r.status) for r in http_server.requests_for("/f.bin")]
    assert log[-2:] == [("bytes=30000-", 206), (None, 200)]
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert url in warning and "changed since the partial download" in warning and "restarting from zero" in warning
    assert {"etag": "ETag '\"", "last_modified": f"Last-Modified '{new_lm}' differs from the partial file's",
            "vanished": f"Last-Modified is missing, the partial file's was '{old_lm}'"}[validator] in warning


def test_206_of_the_same_version_still_resumes(http_server, tmp_path):
    """The check must not throw away good partial bytes: same validators, resumed."""
    url, dest, kept = _partial(http_server, tmp_path, Route(BODY, if_range=False))
    download(url, dest, retries=0, **FAST)
    assert dest.read_bytes() == BODY
    log = [(r.headers.get("Range"), r.status) for r in http_server.requests_for("/f.bin")]
    assert log == [(None, 200), ("bytes=30000-", 503), ("bytes=30000-", 206)]


# -- class 9: a refused connection is not a time-out ------------------------------------------
def test_download_connection_refused_says_so_fast(tmp_path):
    url = _closed_port_url("/raw/file.gz")
    dest = tmp_path / "raw" / "file.gz"
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download(url, dest, retries=1, backoff=0.0, timeout=10, progress=False)
    message = str(err.value)
    assert time.monotonic() - start < 5  # refused at once, not after the 10 s time-out
    assert message.startswith(f"{url}: giving up after 2 failed attempt(s)")
    assert "connection refused by 127.0.0.1:" in message and "check that the server is up" in message
    assert "no data within" not in message and "timed out" not in message
    assert not dest.exists() and not part_path(dest).exists()


def test_image_connection_refused_is_not_a_timeout(http_server, tmp_path):
    cache = tmp_path / "cache"
    http_server.add("/ok.jpg", _jpeg())
    fetch_images([(1, [http_server.url("/ok.jpg")])], cache, **IMAGES)
    before = _snapshot(cache)
    url = _closed_port_url("/img/2.jpg")
    df = fetch_images([(1, [http_server.url("/ok.jpg")]), (2, [url])], cache, **{**IMAGES, "timeout": 10})
    row = df.set_index("item").loc[2]
    assert row["status"] == "http_error" and row["url"] == url
    assert "connection refused by 127.0.0.1:" in row["error"] and "no data within" not in row["error"]
    assert df.set_index("item").loc[1, "status"] == "cached"
    assert _snapshot(cache) == before


# -- class 6 (downloads): disk full while writing ---------------------------------------------
class _FullDisk(io.RawIOBase):
    """A writable file that fails every write with ``code`` (ENOSPC, EIO)."""

    def __init__(self, code: int) -> None:
        self.code = code

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        raise OSError(self.code, f"{errno.errorcode[self.code]} (injected)")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_download_disk_full_keeps_bytes_and_resumes(http_server, tmp_path, monkeypatch, code):
    url, dest, kept = _partial(http_server, tmp_path, Route(BODY))
    real_open = builtins.open

    def full_open(path, mode="r", *args, **kwargs):
        if str(path).endswith(".part") and "a" in mode:
            return _FullDisk(code)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(download_module, "open", full_open, raising=False)
    with pytest.raises(DownloadError) as err:
        download(url, dest, retries=3, **FAST)
    assert str(err.value) == (f"{url}: disk full at {part_path(dest)} ({os.strerror(code)}): free space and "
                              f"rerun (it resumes).")
    assert part_path(dest).read_bytes() == kept and not dest.exists()
    monkeypatch.undo()
    download(url, dest, retries=0, **FAST)  # the rerun resumes from the kept bytes
    assert dest.read_bytes() == BODY
    assert http_server.requests_for("/f.bin")[-1].headers.get("Range") == "bytes=30000-"


# -- class 5: local files named by metadata ---------------------------------------------------
def test_metadata_naming_local_files_is_refused(http_server, tmp_path):
    """``/etc/passwd`` or ``file://`` as an "image URL": refused, never read, never stored."""
    secret = tmp_path / "secret.png"
    Image.new("RGB", (64, 64), "red").save(secret)  # a readable picture: only the policy stops it
    http_server.add("/good.jpg", _jpeg())
    cache = tmp_path / "cache"
    fetch_images([(9, [http_server.url("/good.jpg")])], cache, **IMAGES)
    before = _snapshot(cache)
    requests = [(1, ["/etc/passwd"]), (2, [f"file://{secret}"]), (3, [str(secret), http_server.url("/good.jpg")]),
                (9, ["/etc/passwd"])]
    df = fetch_images(requests, cache, **IMAGES).set_index("item")
    assert df.loc[1, "status"] == "refused" and df.loc[2, "status"] == "refused"
    assert "refused to read local file '/etc/passwd'" in df.loc[1, "error"]
    assert f"file://{secret}" in df.loc[2, "error"] and "must be http(s) URLs" in df.loc[2, "error"]
    assert (df.loc[3, "status"], df.loc[3, "url"]) == ("ok", http_server.url("/good.jpg"))  # the http fallback
    assert "root:" not in " ".join(df["error"]) and "root:" not in " ".join(df["url"])
    assert df.loc[9, "status"] == "cached"  # an earlier picture is neither refetched nor lost
    after = _snapshot(cache)
    assert after["9.jpg"] == before["9.jpg"] and sorted(after) == ["3.jpg", "9.jpg"]


def test_configured_local_source_reads_only_inside_its_folder(tmp_path):
    """ml100k-style local posters keep working; ``..`` cannot climb out of the folder."""
    src = tmp_path / "src"
    (src / "posters").mkdir(parents=True)
    (src / "posters" / "1.jpg").write_bytes(_jpeg(seed=1))
    (tmp_path / "outside.jpg").write_bytes(_jpeg(seed=2))
    df = fetch_images([(1, [str(src / "posters" / "1.jpg")]), (2, [f"file://{src}/posters/1.jpg"]),
                       (3, [str(src / "posters" / ".." / ".." / "outside.jpg")])],
                      tmp_path / "cache", local_dir=src, **IMAGES).set_index("item")
    assert df.loc[1, "status"] == "ok" and df.loc[2, "status"] == "ok"
    assert df.loc[3, "status"] == "refused"
    assert f"only files inside the configured local source {src} are read" in df.loc[3, "error"]
    assert not (tmp_path / "cache" / "3.jpg").exists()


def test_image_stage_refuses_metadata_file_urls(tmp_path):
    """Through the stage as the Amazon source runs it (no local source configured): the report
    says refused, the item has no picture, and the other items' report rows are right."""
    root = tmp_path / "ds"
    (root / "work").mkdir(parents=True)
    pd.DataFrame({"item": [0, 1], "image_urls": [json.dumps(["file:///etc/passwd"]), "[]"]}).to_parquet(
        root / "work" / "items.parquet")
    summary = run_image_stage(root, ImageOptions(workers=1, timeout=2, retries=0, max_failure_share=1.0),
                              progress=False)
    report = pd.read_parquet(root / "work" / "images.parquet")
    assert report["status"].tolist() == ["refused", "no_url"] and report["path"].tolist() == ["", ""]
    assert "file:///etc/passwd" in report["error"].iloc[0]
    assert summary["images_ok"] == 0 and summary["image_status"] == {"refused": 1, "no_url": 1}
    assert not (root / "images").exists() or not list((root / "images").iterdir())


# -- class 5: bounded decoding ----------------------------------------------------------------
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header announces ``width x height`` (no pixel data: decoding it would fail
    as ``corrupt``; only a check before decoding gives ``too_large``)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_bomb_is_refused_before_decoding(http_server, tmp_path):
    http_server.add("/bomb.png", _png_header_only(12_000, 12_000))
    http_server.add("/thumb.jpg", _jpeg((80, 80)))
    cache = tmp_path / "cache"
    df = fetch_images([(1, [http_server.url("/bomb.png")]),
                       (2, [http_server.url("/bomb.png"), http_server.url("/thumb.jpg")])],
                      cache, **IMAGES).set_index("item")
    assert df.loc[1, "status"] == "too_large"
    assert "12000x12000 pixels is over max_pixels=16000000: not decoded" in df.loc[1, "error"]
    assert http_server.url("/bomb.png") in df.loc[1, "error"]
    assert (df.loc[2, "status"], df.loc[2, "url"]) == ("ok", http_server.url("/thumb.jpg"))
    assert sorted(_snapshot(cache)) == ["2.jpg"]


def test_max_pixels_is_configurable_and_jpeg_decodes_in_draft(http_server, tmp_path):
    """A 2000x2000 JPEG decodes at 1/4 scale (500x500 for max_side 256), so a 400,000-pixel
    limit lets it through; the same picture as PNG cannot be drafted and is refused."""
    gradient = np.add.outer(np.arange(2000), np.arange(2000)).astype(np.uint8)
    picture = Image.fromarray(np.stack([gradient] * 3, axis=-1))
    for fmt, name in (("JPEG", "/big.jpg"), ("PNG", "/big.png")):
        buf = io.BytesIO()
        picture.save(buf, fmt)
        http_server.add(name, buf.getvalue())
    df = fetch_images([(1, [http_server.url("/big.jpg")]), (2, [http_server.url("/big.png")])],
                      tmp_path, max_pixels=400_000, **IMAGES).set_index("item")
    assert df.loc[1, "status"] == "ok"
    assert df.loc[2, "status"] == "too_large" and "2000x2000 pixels is over max_pixels=400000" in df.loc[2, "error"]
    with Image.open(tmp_path / "1.jpg") as img:
        assert img.size == (256, 256)


# -- class 6 (images): short writes and a full disk -------------------------------------------
def _cache_with_one_picture(http_server, tmp_path) -> tuple[Path, dict[str, bytes], list]:
    """A cache holding item 1 from an earlier run, and requests for items 1 and 2."""
    http_server.add("/1.jpg", _jpeg(seed=1))
    http_server.add("/2.jpg", _jpeg(seed=2))
    cache = tmp_path / "cache"
    fetch_images([(1, [http_server.url("/1.jpg")])], cache, **IMAGES)
    requests = [(1, [http_server.url("/1.jpg")]), (2, [http_server.url("/2.jpg")])]
    return cache, _snapshot(cache), requests


@pytest.mark.parametrize("load_truncated", [False, True])
def test_short_write_is_never_renamed_into_place(http_server, tmp_path, monkeypatch, load_truncated):
    """The JPEG writer stops half-way without raising (what a full disk can look like): the
    file is checked before the rename, so no truncated 2.jpg is ever marked ok — even when
    another library switched on LOAD_TRUNCATED_IMAGES."""
    cache, before, requests = _cache_with_one_picture(http_server, tmp_path)
    real_save = Image.Image.save

    def short_save(self, fp, format=None, **params):  # noqa: A002 - Pillow's name
        buf = io.BytesIO()
        real_save(self, buf, format, **params)
        Path(fp).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])

    monkeypatch.setattr(Image.Image, "save", short_save)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    with pytest.raises(DatasetError) as err:
        fetch_images(requests, cache, **IMAGES)
    message = str(err.value)
    assert message.startswith(f"{cache / '2.jpg'}: the cached picture was not written completely")
    assert "without the JPEG end marker" in message and "free space and rerun (it resumes)" in message
    assert _snapshot(cache) == before  # no 2.jpg, no temporary file, 1.jpg untouched
    monkeypatch.undo()
    again = fetch_images(requests, cache, **IMAGES)
    assert again["status"].tolist() == ["cached", "ok"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_image_disk_full_names_the_file(http_server, tmp_path, monkeypatch, code):
    cache, before, requests = _cache_with_one_picture(http_server, tmp_path)

    def full_save(self, fp, format=None, **params):  # noqa: A002
        Path(fp).write_bytes(b"\xff\xd8")  # what got out before the disk filled up
        raise OSError(code, "injected")

    monkeypatch.setattr(Image.Image, "save", full_save)
    with pytest.raises(DatasetError) as err:
        fetch_images(requests, cache, **IMAGES)
    assert str(err.value).startswith(f"disk full at {cache / '2.jpg'} (")
    assert str(err.value).endswith("): free space and rerun (it resumes).")
    assert _snapshot(cache) == before


# -- class 9: an images stage over its failure threshold fails, and a rerun retries -----------
@pytest.fixture
def outage(http_server, tmp_path):
    """A tiny Amazon 2023 category whose image server answers 503 for every image (one
    shared Route per picture, so ``route.fail_after = None`` ends the outage)."""
    files = _tiny_amazon(tmp_path, http_server.url("/images"))
    routes = []
    for k, asin in enumerate(files["items"]):
        route = Route(_jpeg(seed=k), fail_after=0)
        for suffix in ("", "_hires", "_thumb"):
            http_server.add(f"/images/{asin}{suffix}.jpg", route)
        routes.append(route)
    cfg = compose_cfg(["dataset=amazon2023", f"paths.data_dir={tmp_path / 'data'}",
                       "dataset.source.category=Tiny", f"dataset.source.reviews={files['reviews']}",
                       f"dataset.source.meta={files['meta']}", "dataset.source.kcore=2",
                       "dataset.source.progress=false", "dataset.source.images.timeout=5",
                       "dataset.source.images.retries=0", "dataset.source.images.workers=4"],
                      config_name="prepare")
    return cfg, routes


def test_images_stage_over_threshold_fails_then_rerun_retries(outage):
    cfg, routes = outage
    assert cfg.dataset.source.images.max_failure_share == 0.5  # the documented default
    source, root = instantiate(cfg.dataset.source), Path(cfg.dataset.root)
    with pytest.raises(DatasetError) as err:
        source.prepare(root)
    message = str(err.value)
    report = pd.read_parquet(root / "work" / "images.parquet")
    n = len(report)
    assert message.startswith(f"images: {n} of {n} items with an image URL have no usable picture (100%, "
                              f"over max_failure_share=0.5): http_error: {n}; e.g. item 0: ")
    assert "HTTP 503" in message and str(root / "work" / "images.parquet") in message
    assert "python -m mmrec.prepare" in message and "retries the failed items only" in message
    assert "dataset.source.images.max_failure_share" in message
    state = json.loads((root / "work" / "stages.json").read_text())
    assert "items" in state and "images" not in state  # not recorded as finished: a rerun retries
    assert not (root / "manifest.json").exists()
    kept = _snapshot(root / "work")
    for route in routes:
        route.fail_after = None  # the server is back
    records = {r["stage"]: r["status"] for r in source.prepare(root)}
    assert records == {"download": "skipped", "parse": "skipped", "filter": "skipped", "split": "skipped",
                       "items": "skipped", "images": "ran", "tables": "ran"}
    report = pd.read_parquet(root / "work" / "images.parquet")
    assert set(report["status"]) == {"ok"}
    after = _snapshot(root / "work")
    for name in ("reviews.parquet", "filtered.parquet", "interactions.parquet", "items.parquet", "users.parquet"):
        assert after[name] == kept[name], name  # the stages before were not redone


def test_failure_threshold_is_configurable_and_ignores_items_without_url(http_server, tmp_path):
    http_server.add("/ok.jpg", _jpeg())
    root = tmp_path / "ds"
    (root / "work").mkdir(parents=True)
    urls = [[http_server.url("/ok.jpg")], [http_server.url("/gone.jpg")], [], [], []]
    pd.DataFrame({"item": range(5), "image_urls": [json.dumps(u) for u in urls]}).to_parquet(
        root / "work" / "items.parquet")
    options = dict(workers=2, timeout=5, retries=0)
    # 1 of 2 items with a URL failed: 50% is not over 0.5; items without a URL do not count
    summary = run_image_stage(root, ImageOptions(**options), progress=False)
    assert summary["image_status"] == {"no_url": 3, "ok": 1, "http_404": 1}
    cached = _snapshot(root / "images")
    with pytest.raises(DatasetError, match=r"images: 1 of 2 items .* \(50%, over max_failure_share=0\.25\): "
                                           r"http_404: 1; e\.g\. item 1: .*/gone\.jpg"):
        run_image_stage(root, ImageOptions(**options, max_failure_share=0.25), progress=False)
    assert _snapshot(root / "images") == cached


def test_retry_command_is_the_running_prepare_command():
    """Under Hydra the message quotes the exact command line that was run."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from mmrec.utils.config import CONFIG_DIR

    overrides = ["dataset=beauty", "dataset.source.images.timeout=3", "prepare.force=[images]"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("prepare", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        assert prepare_command() == ("python -m mmrec.prepare dataset=beauty dataset.source.images.timeout=3 "
                                     "'prepare.force=[images]'")
    finally:
        HydraConfig.instance().cfg = None
    assert cfg.dataset.source.images.max_failure_share == 0.5  # beauty inherits the key
    assert prepare_command() == "python -m mmrec.prepare <the arguments used before>"  # outside Hydra: the generic form
