"""Robust downloads against a local HTTP server: resume, retries, verification, no refetch."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest
from httpserver import LocalHTTPServer, Route, http_server  # noqa: F401 - fixture

from mmrec.data.download import DownloadError, download, is_complete, part_path, sidecar_path

BODY = bytes(range(256)) * 400  # 102,400 bytes
SHA = hashlib.sha256(BODY).hexdigest()
FAST = dict(backoff=0.01, timeout=2, chunk_size=4096, progress=False)


def _left_over(dest):
    return sorted(p.name for p in dest.parent.iterdir())


def test_fresh_download_verifies_and_records(http_server, tmp_path):
    http_server.add("/data.bin", BODY)
    dest = tmp_path / "sub" / "data.bin"
    assert download(http_server.url("/data.bin"), dest, sha256=SHA, size=len(BODY), **FAST) == dest
    assert dest.read_bytes() == BODY
    record = json.loads(sidecar_path(dest).read_text())
    assert record["url"] == http_server.url("/data.bin")
    assert (record["size"], record["sha256"]) == (len(BODY), SHA)
    assert _left_over(dest) == ["data.bin", "data.bin.complete"]


def test_interrupted_transfer_resumes_with_range(http_server, tmp_path):
    http_server.add("/big.bin", Route(BODY, truncate_first=30_000))
    dest = tmp_path / "big.bin"
    download(http_server.url("/big.bin"), dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == BODY
    first, second = http_server.requests_for("/big.bin")
    assert first.headers.get("Range") is None
    assert second.headers.get("Range") == "bytes=30000-"
    assert second.headers.get("If-Range") == http_server.routes["/big.bin"].etag


def test_resume_across_calls_after_giving_up(http_server, tmp_path):
    """A failed (or killed) run leaves .part; the next call continues from its size."""
    route = http_server.add("/big.bin", Route(BODY, truncate_first=50_000, fail_after=1))
    dest = tmp_path / "big.bin"
    with pytest.raises(DownloadError, match=r"giving up.*HTTP 503.*50000 bytes kept in .*big\.bin\.part"):
        download(http_server.url("/big.bin"), dest, retries=1, **FAST)
    assert not dest.exists() and part_path(dest).stat().st_size == 50_000
    route.fail_after = None  # the outage ends
    download(http_server.url("/big.bin"), dest, sha256=SHA, retries=0, **FAST)
    assert dest.read_bytes() == BODY
    log = [(r.headers.get("Range"), r.status) for r in http_server.requests_for("/big.bin")]
    assert log == [(None, 200), ("bytes=50000-", 503), ("bytes=50000-", 503), ("bytes=50000-", 206)]
    assert _left_over(dest) == ["big.bin", "big.bin.complete"]


def test_server_ignoring_range_restarts_from_zero(http_server, tmp_path):
    http_server.add("/norange.bin", Route(BODY, truncate_first=40_000, ranges=False))
    dest = tmp_path / "norange.bin"
    download(http_server.url("/norange.bin"), dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == BODY  # not the first 40,000 bytes twice
    assert http_server.requests_for("/norange.bin")[1].headers.get("Range") == "bytes=40000-"


def test_changed_file_is_not_spliced(http_server, tmp_path):
    """If-Range with the old ETag: the server sends the whole new file, not the tail."""
    http_server.add("/v.bin", Route(BODY, truncate_first=10_000, fail_after=1))
    dest = tmp_path / "v.bin"
    with pytest.raises(DownloadError):
        download(http_server.url("/v.bin"), dest, retries=0, **FAST)
    new = BODY[::-1]
    http_server.add("/v.bin", new)
    download(http_server.url("/v.bin"), dest, sha256=hashlib.sha256(new).hexdigest(), **FAST)
    assert dest.read_bytes() == new
    last = http_server.requests_for("/v.bin")[-1]
    assert (last.headers.get("Range"), last.status) == ("bytes=10000-", 200)


def test_retries_after_503_then_succeeds(http_server, tmp_path):
    http_server.add("/flaky", Route(BODY, fail_times=3))
    dest = tmp_path / "flaky.bin"
    download(http_server.url("/flaky"), dest, retries=3, **FAST)
    assert dest.read_bytes() == BODY
    assert http_server.routes["/flaky"].hits == 4


def test_retries_exhausted_names_the_url(http_server, tmp_path):
    http_server.add("/down", Route(BODY, fail_times=100, fail_status=500))
    dest = tmp_path / "down.bin"
    url = http_server.url("/down")
    with pytest.raises(DownloadError, match=rf"{url}: giving up after 3 failed attempt\(s\).*HTTP 500"):
        download(url, dest, retries=2, **FAST)
    assert http_server.routes["/down"].hits == 3
    assert _left_over(dest) == []


def test_404_fails_at_once_and_leaves_nothing(http_server, tmp_path):
    http_server.add("/missing", 404)
    dest = tmp_path / "missing.bin"
    url = http_server.url("/missing")
    with pytest.raises(DownloadError, match=rf"{url}: HTTP 404"):
        download(url, dest, **FAST)
    assert len(http_server.requests_for("/missing")) == 1  # not retried
    assert _left_over(dest) == []


def test_checksum_mismatch_leaves_no_file(http_server, tmp_path):
    http_server.add("/data.bin", BODY)
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match="SHA-256 .* does not match the expected 0000"):
        download(http_server.url("/data.bin"), dest, sha256="0" * 64, **FAST)
    assert _left_over(dest) == []


def test_size_mismatch_is_refused(http_server, tmp_path):
    http_server.add("/data.bin", BODY)
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match=f"reports {len(BODY)} bytes but 10 are expected"):
        download(http_server.url("/data.bin"), dest, size=10, **FAST)
    assert _left_over(dest) == []


def test_complete_file_is_not_downloaded_again(http_server, tmp_path):
    http_server.add("/data.bin", BODY)
    dest = tmp_path / "data.bin"
    url = http_server.url("/data.bin")
    download(url, dest, **FAST)
    download(url, dest, **FAST)  # the sidecar proves it complete
    download(url, dest, sha256=SHA, size=len(BODY), **FAST)
    sidecar_path(dest).unlink()
    download(url, dest, sha256=SHA, **FAST)  # no sidecar: the checksum proves it complete
    assert len(http_server.requests_for("/data.bin")) == 1
    assert is_complete(dest, url) and not is_complete(dest, url + "?other")


def test_damaged_final_file_is_replaced(http_server, tmp_path):
    http_server.add("/data.bin", BODY)
    dest = tmp_path / "data.bin"
    url = http_server.url("/data.bin")
    download(url, dest, **FAST)
    dest.write_bytes(BODY[:-7])  # sidecar size no longer matches
    download(url, dest, **FAST)
    assert dest.read_bytes() == BODY
    assert len(http_server.requests_for("/data.bin")) == 2


def test_content_encoding_gzip_is_saved_as_sent(http_server, tmp_path):
    packed = gzip.compress(b'{"a": 1}\n' * 1000)
    http_server.add("/reviews.jsonl.gz", Route(packed, headers={"Content-Encoding": "gzip"}))
    dest = tmp_path / "reviews.jsonl.gz"
    download(http_server.url("/reviews.jsonl.gz"), dest, size=len(packed), **FAST)
    assert dest.read_bytes() == packed


def test_slow_server_times_out_and_retries(http_server, tmp_path):
    http_server.add("/slow", Route(BODY, slow=1.5))
    with pytest.raises(DownloadError, match="giving up after 2 failed attempt.*(Timeout|timed out)"):
        download(http_server.url("/slow"), tmp_path / "slow.bin", retries=1, backoff=0.01,
                 timeout=0.3, progress=False)


def test_local_sources_are_verified_not_copied(tmp_path):
    src = tmp_path / "local.bin"
    src.write_bytes(BODY)
    dest = tmp_path / "out" / "local.bin"
    assert download(str(src), dest, sha256=SHA, size=len(BODY)) == src
    assert download(src.as_uri(), dest) == src
    assert not dest.parent.exists()
    with pytest.raises(DownloadError, match="SHA-256 .* local copy is corrupt"):
        download(src, dest, sha256="1" * 64)
    with pytest.raises(DownloadError, match="expected 5"):
        download(src, dest, size=5)
    with pytest.raises(DownloadError, match="nope.bin: local source file not found"):
        download(tmp_path / "nope.bin", dest)
    with pytest.raises(DownloadError, match="unsupported URL scheme 'ftp'"):
        download("ftp://example.org/x", dest)


@pytest.mark.parametrize("progress", [False, True])
def test_progress_bar_only_when_asked(http_server, tmp_path, capsys, progress):
    http_server.add("/data.bin", BODY)
    download(http_server.url("/data.bin"), tmp_path / "data.bin", backoff=0.01, timeout=2,
             chunk_size=4096, progress=progress)
    err = capsys.readouterr().err
    assert ("data.bin" in err) is progress


def test_server_helper_serves_ranges_and_logs(tmp_path):
    """The test server itself: ranges, 416, HEAD, query strings, files."""
    import requests

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_bytes(b"hello")
    with LocalHTTPServer({"/x": b"0123456789", "/e": 500}) as server:
        assert server.add_directory("/files", tmp_path / "d") == ["/files/a.txt"]
        get = requests.get
        assert get(server.url("/x"), headers={"Range": "bytes=3-5"}).content == b"345"
        resp = get(server.url("/x?v=1"), headers={"Range": "bytes=-2"})
        assert (resp.status_code, resp.content, resp.headers["Content-Range"]) == (206, b"89", "bytes 8-9/10")
        assert get(server.url("/x"), headers={"Range": "bytes=20-"}).status_code == 416
        assert get(server.url("/e")).status_code == 500
        assert get(server.url("/nowhere")).status_code == 404
        assert get(server.url("/files/a.txt")).text == "hello"
        assert requests.head(server.url("/x")).headers["Content-Length"] == "10"
        assert [r.method for r in server.requests_for("/x")] == ["GET", "GET", "GET", "HEAD"]


def _fake_part(dest, url, data, etag):
    part_path(dest).write_bytes(data)
    meta = {"url": url, "total": len(BODY), "validator": etag}
    dest.with_name(dest.name + ".part.json").write_text(json.dumps(meta))


def test_finished_part_is_only_verified_and_renamed(http_server, tmp_path):
    """Killed between the last byte and the rename: no request needed."""
    route = http_server.add("/data.bin", BODY)
    dest = tmp_path / "data.bin"
    _fake_part(dest, http_server.url("/data.bin"), BODY, route.etag)
    download(http_server.url("/data.bin"), dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == BODY and http_server.requests == []


def test_bad_resumed_bytes_get_one_fresh_download(http_server, tmp_path):
    """A resumed file failing its checksum is downloaded once more from zero."""
    route = http_server.add("/data.bin", BODY)
    dest = tmp_path / "data.bin"
    _fake_part(dest, http_server.url("/data.bin"), b"\0" * 1000, route.etag)
    download(http_server.url("/data.bin"), dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == BODY
    log = [(r.headers.get("Range"), r.status) for r in http_server.requests_for("/data.bin")]
    assert log == [("bytes=1000-", 206), (None, 200)]
