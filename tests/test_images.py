"""The image stage: fallback between candidates, validation statuses, atomic resumable cache."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from httpserver import Route, http_server  # noqa: F401 - fixture
from PIL import Image

from mmrec.data.images import STATUSES, fetch_images, summarize_images

# generous timeout for fetches that must succeed (the machine may be busy); 0.5 s where a
# time-out is the point of the test
FAST = dict(workers=4, timeout=5, retries=0, backoff=0.01, progress=False)


def _picture(fmt: str, size: tuple[int, int], seed: int = 0, mode: str = "RGB") -> bytes:
    """A noisy picture (noise keeps JPEGs large enough to truncate meaningfully)."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    buf = BytesIO()
    Image.fromarray(pixels, mode).save(buf, fmt)
    return buf.getvalue()


def _row(df, item):
    return df.set_index("item").loc[item]


def test_good_images_are_cached_resized_rgb(http_server, tmp_path):
    http_server.add("/a.jpg", _picture("JPEG", (600, 300)))
    http_server.add("/b.png", _picture("PNG", (100, 400), mode="RGBA"))
    local = tmp_path / "c.png"
    local.write_bytes(_picture("PNG", (80, 80), seed=2))
    cache = tmp_path / "cache"
    df = fetch_images([(0, [http_server.url("/a.jpg")]), (1, [http_server.url("/b.png")]),
                       (2, [str(local)])], cache, max_side=200, local_dir=tmp_path, **FAST)
    assert df["item"].tolist() == [0, 1, 2]
    assert df["status"].tolist() == ["ok", "ok", "ok"]
    assert df["path"].tolist() == ["0.jpg", "1.jpg", "2.jpg"]
    assert df["url"].tolist() == [http_server.url("/a.jpg"), http_server.url("/b.png"), str(local)]
    sizes = {}
    for item in range(3):
        with Image.open(cache / f"{item}.jpg") as img:
            assert (img.format, img.mode) == ("JPEG", "RGB")
            sizes[item] = img.size
        assert _row(df, item)["bytes"] == (cache / f"{item}.jpg").stat().st_size
    assert sizes == {0: (200, 100), 1: (50, 200), 2: (80, 80)}  # never enlarged
    assert sorted(p.name for p in cache.iterdir()) == ["0.jpg", "1.jpg", "2.jpg"]  # no temp files


def test_404_falls_back_to_next_candidate(http_server, tmp_path):
    http_server.add("/large.jpg", 404)
    http_server.add("/thumb.jpg", _picture("JPEG", (64, 64)))
    df = fetch_images([(5, [http_server.url("/large.jpg"), http_server.url("/thumb.jpg")]),
                       (6, [http_server.url("/large.jpg")])], tmp_path, **FAST)
    assert _row(df, 5)[["status", "url", "path"]].tolist() == ["ok", http_server.url("/thumb.jpg"), "5.jpg"]
    assert _row(df, 6)["status"] == "http_404"
    assert "HTTP 404" in _row(df, 6)["error"] and _row(df, 6)["path"] == ""
    assert not (tmp_path / "6.jpg").exists()


@pytest.mark.parametrize("route, timeout, status, message", [
    (Route(_picture("JPEG", (300, 300))[:4000]), 5, "corrupt", "JPEG does not decode"),
    (Route(b"<html><body>Robot check</body></html>", content_type="text/html"), 5, "not_image",
     "Content-Type 'text/html'"),
    (Route(_picture("PNG", (1, 1))), 5, "too_small", "1x1 pixels"),
    (Route(b"", status=500), 5, "http_error", "HTTP 500"),
    (Route(_picture("JPEG", (64, 64)), slow=2.0), 0.5, "timeout", "no answer within 0.5s"),
    (Route(_picture("JPEG", (64, 64)), slow_body=0.3, chunk_size=200), 0.5, "timeout",
     "body not complete after 0.5s"),
])
def test_bad_candidates_get_their_status(http_server, tmp_path, route, timeout, status, message):
    http_server.add("/x", route)
    df = fetch_images([(3, [http_server.url("/x")])], tmp_path, **{**FAST, "timeout": timeout})
    assert df["status"].tolist() == [status]
    assert message in df["error"].iloc[0]
    assert list(tmp_path.iterdir()) == []


def test_no_url_and_missing_local_file(tmp_path):
    df = fetch_images([(0, []), (1, ["", None, float("nan")]), (2, [str(tmp_path / "gone.jpg")]),
                       (3, ["ftp://example.org/a.jpg"]), (4, ["http://[::1"])],
                      tmp_path / "cache", local_dir=tmp_path, **FAST)
    assert df["status"].tolist() == ["no_url", "no_url", "http_404", "refused", "http_error"]
    assert "gone.jpg not found" in df["error"].iloc[2]
    # what metadata may name: never a hint at schemes it refuses
    assert f"image sources must be http(s) URLs or files inside the configured local source {tmp_path}" \
        in df["error"].iloc[3] and "file://" not in df["error"].iloc[3]
    assert "malformed URL 'http://[::1'" in df["error"].iloc[4] and "unexpected" not in df["error"].iloc[4]


def test_empty_request_list(tmp_path):
    df = fetch_images([], tmp_path, **FAST)
    assert list(df.columns) == ["item", "status", "url", "path", "bytes", "error"] and df.empty
    assert summarize_images(df).empty


def test_transient_errors_are_retried(http_server, tmp_path):
    route = http_server.add("/flaky.jpg", Route(_picture("JPEG", (64, 64)), fail_times=2))
    df = fetch_images([(0, [http_server.url("/flaky.jpg")])], tmp_path,
                      **{**FAST, "retries": 2})
    assert df["status"].tolist() == ["ok"] and route.hits == 3


def test_interrupted_transfer_is_retried_not_called_corrupt(http_server, tmp_path):
    route = http_server.add("/cut.jpg", Route(_picture("JPEG", (300, 300)), truncate_first=3000))
    df = fetch_images([(0, [http_server.url("/cut.jpg")])], tmp_path, **FAST)
    assert df["status"].tolist() == ["http_error"] and "IncompleteRead" in df["error"].iloc[0]
    df = fetch_images([(1, [http_server.url("/cut.jpg")])], tmp_path, **{**FAST, "retries": 1})
    assert df["status"].tolist() == ["ok"] and route.hits == 2


def test_rerun_skips_cached_and_retries_failures(http_server, tmp_path):
    good = http_server.add("/good.jpg", _picture("JPEG", (64, 64)))
    http_server.add("/later.jpg", 404)
    requests = [(0, [http_server.url("/good.jpg")]), (1, [http_server.url("/later.jpg")])]
    first = fetch_images(requests, tmp_path, **FAST)
    assert first["status"].tolist() == ["ok", "http_404"]
    http_server.add("/later.jpg", _picture("JPEG", (64, 64), seed=1))  # now it exists
    second = fetch_images(requests, tmp_path, **FAST)
    assert second["status"].tolist() == ["cached", "ok"]
    assert second["url"].tolist() == [http_server.url("/good.jpg"), http_server.url("/later.jpg")]
    assert good.hits == 1


def test_cached_file_survives_later_failure(http_server, tmp_path):
    """An earlier good picture is neither lost nor modified when its source now fails."""
    http_server.add("/a.jpg", _picture("JPEG", (64, 64)))
    fetch_images([(7, [http_server.url("/a.jpg")])], tmp_path, **FAST)
    before = (tmp_path / "7.jpg").read_bytes()
    http_server.add("/a.jpg", Route(b"<html>gone</html>", content_type="text/html"))
    df = fetch_images([(7, [http_server.url("/a.jpg")]), (8, [http_server.url("/a.jpg")])],
                      tmp_path, **FAST)
    assert df["status"].tolist() == ["cached", "not_image"]
    assert (tmp_path / "7.jpg").read_bytes() == before
    assert not (tmp_path / "8.jpg").exists()


def test_unreadable_cache_file_is_refetched_but_kept_on_failure(http_server, tmp_path):
    broken = _picture("JPEG", (64, 64))[:500]
    (tmp_path / "1.jpg").write_bytes(broken)
    (tmp_path / "2.jpg").write_bytes(broken)
    http_server.add("/ok.jpg", _picture("JPEG", (64, 64)))
    http_server.add("/down.jpg", 500)
    df = fetch_images([(1, [http_server.url("/ok.jpg")]), (2, [http_server.url("/down.jpg")])],
                      tmp_path, **FAST)
    assert df["status"].tolist() == ["ok", "http_error"]
    with Image.open(tmp_path / "1.jpg") as img:
        img.load()
    assert (tmp_path / "2.jpg").read_bytes() == broken  # not ours to delete on a failed fetch


def test_duplicate_items_are_refused(tmp_path):
    from mmrec.data.prepared import DatasetError

    with pytest.raises(DatasetError, match="item 4 is requested more than once"):
        fetch_images([(4, ["a"]), (4, ["b"])], tmp_path, **FAST)


def test_summary_counts_every_status(http_server, tmp_path):
    http_server.add("/ok.jpg", _picture("JPEG", (64, 64)))
    http_server.add("/tiny.png", _picture("PNG", (8, 8)))
    requests = [(0, [http_server.url("/ok.jpg")]), (1, [http_server.url("/ok.jpg")]),
                (2, [http_server.url("/tiny.png")]), (3, [])]
    summary = summarize_images(fetch_images(requests, tmp_path, **FAST))
    assert summary["status"].tolist() == ["ok", "no_url", "too_small"]
    assert summary["count"].tolist() == [2, 1, 1]
    assert summary["percent"].tolist() == [50.0, 25.0, 25.0]
    assert summary["usable"].tolist() == [True, False, False]
    assert set(summary["status"]) <= set(STATUSES)


def test_smaller_max_side_rescales_cache_without_fetching(http_server, tmp_path):
    route = http_server.add("/a.jpg", _picture("JPEG", (400, 200)))
    fetch_images([(0, [http_server.url("/a.jpg")])], tmp_path, max_side=200, **FAST)
    df = fetch_images([(0, [http_server.url("/a.jpg")])], tmp_path, max_side=100, **FAST)
    assert df["status"].tolist() == ["cached"] and route.hits == 1
    with Image.open(tmp_path / "0.jpg") as img:
        assert img.size == (100, 50)
    assert df["bytes"].iloc[0] == (tmp_path / "0.jpg").stat().st_size


def test_temp_files_of_a_killed_run_are_removed(tmp_path):
    (tmp_path / ".3.jpg.tmp-999-1").write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("kept")
    fetch_images([(3, [])], tmp_path, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
