"""Robust downloads: streamed, resumed, retried, verified, then renamed into place.

:func:`download` fetches one file over HTTP(S) so that a multi-GB transfer survives a
flaky network and a killed process:

* bytes stream into ``<dest>.part``; ``<dest>.part.json`` records the URL and the server's
  validators (ETag, Last-Modified) and total size, so a later call, even from a new
  process, resumes with ``Range: bytes=<part size>-`` plus ``If-Range``. A server that
  ignores the range (answers 200) or whose file changed restarts the transfer from zero,
  and so does a 206 whose ETag / Last-Modified differ from (or lack) the recorded ones: a
  server or cache that ignores ``If-Range`` would otherwise splice two versions of a file;
* connection errors, time-outs, truncated bodies, 408/425/429 and 5xx are retried with
  exponential back-off (``backoff * 2**k`` seconds, or the server's ``Retry-After``);
  a refused connection is reported as such, not as a time-out (urllib3's connection error
  subclasses its time-out error);
  ``retries`` counts consecutive failed attempts that brought no new bytes, so a
  connection that keeps breaking but keeps progressing still finishes. Other statuses
  (404, 403, ...) fail at once with a :class:`DownloadError` naming the URL and status;
* the size (``Content-Length`` / ``Content-Range`` total and the ``size`` argument) and,
  when given, the SHA-256 (computed while streaming) are verified before the ``.part``
  file is renamed onto ``dest`` (atomic: ``dest`` is either absent, the previous file or
  the complete new one). A checksum mismatch removes the ``.part`` file (after one fresh
  transfer from zero if the first one was resumed), so nothing corrupt gets the final name;
* on success ``<dest>.complete`` (JSON: url, size, sha256, etag, time) is written. A later
  call finds ``dest`` complete, without any network access, when that sidecar matches the
  URL and the file's size (and the requested SHA-256), or when the file matches the
  requested ``sha256`` / ``size``; it is then never downloaded again;
* a full disk (ENOSPC, EDQUOT, or EIO, which some filesystems give when full) becomes
  "disk full at <path>: free space and rerun (it resumes)"; the bytes received stay.

Local sources (a path or a ``file://`` URL) are never copied: they are checked (exists,
``size``, ``sha256`` when given) and their own path is returned, so the caller must use
the return value rather than ``dest``. Two processes downloading to the same ``dest`` at
the same time are not supported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import requests
import urllib3
from tqdm import tqdm

from mmrec.data.prepared import DatasetError
from mmrec.utils.files import sha256_file, write_failure

log = logging.getLogger(__name__)

USER_AGENT = "mmrec-download/1 (+python-requests)"
#: statuses worth retrying: timeouts, rate limits and server errors (every 5xx)
RETRY_STATUSES = frozenset({408, 425, 429})
_CONTENT_RANGE = re.compile(r"^bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)$")


class DownloadError(DatasetError):
    """A download failed for good; the message names the URL or file, the cause and what to do."""


def _causes(err: BaseException) -> list[BaseException]:
    """``err`` and what it wraps: ``args``, urllib3's ``reason``, ``__cause__``/``__context__``
    (requests wraps urllib3 errors that wrap socket errors), breadth first, no cycles."""
    seen, queue = [], [err]
    while queue and len(seen) < 32:
        cur = queue.pop(0)
        if any(cur is s for s in seen):
            continue
        seen.append(cur)
        inner = [a for a in cur.args if isinstance(a, BaseException)]
        queue += inner + [e for e in (getattr(cur, "reason", None), cur.__cause__, cur.__context__)
                          if isinstance(e, BaseException)]
    return seen


def network_failure(err: BaseException, url: str, timeout: float) -> tuple[bool, str]:
    """``(is a time-out, what happened)`` for a requests/urllib3/socket error of ``url``.

    A refused connection or an unknown host fails at once and says so: urllib3's
    ``NewConnectionError`` subclasses its ``ConnectTimeoutError``, so an ``isinstance`` check
    for time-outs alone would call a stopped server "no data within 10s".
    """
    chain = _causes(err)
    where = urllib3.util.parse_url(url).netloc if "://" in url else url
    if any(isinstance(e, (urllib3.exceptions.NameResolutionError, socket.gaierror)) for e in chain):
        return False, f"cannot resolve the host of {where}; check the URL and the network (DNS)"
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return False, (f"connection refused by {where}: nothing accepts connections there; "
                       f"check that the server is up and the URL is right")
    failed = next((e for e in chain if isinstance(e, urllib3.exceptions.NewConnectionError)), None)
    if failed is not None:  # unreachable network, reset during connect, ...
        return False, f"cannot connect to {where} ({failed})"
    if any(isinstance(e, (urllib3.exceptions.ConnectTimeoutError, requests.ConnectTimeout)) for e in chain):
        return True, f"timed out: no connection to {where} within {timeout:g}s"
    if any(isinstance(e, (TimeoutError, urllib3.exceptions.TimeoutError, requests.Timeout)) for e in chain):
        return True, f"timed out: no data within {timeout:g}s"
    return False, f"{type(err).__name__}: {err}"


def is_retryable_status(status: int) -> bool:
    """True for HTTP statuses that may succeed on a later attempt (408, 425, 429, 5xx)."""
    return status in RETRY_STATUSES or 500 <= status <= 599


def local_path(source: str | os.PathLike) -> Path | None:
    """The file a local source names (plain path or ``file://`` URL); None for http(s) URLs.

    Raises :class:`DownloadError` for other URL schemes (ftp, s3, ...).
    """
    if isinstance(source, os.PathLike):
        return Path(source)
    parsed = urlparse(source)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):  # C:\... on Windows
        return Path(source)
    raise DownloadError(f"{source}: unsupported URL scheme {parsed.scheme!r}; use http(s)://, "
                        f"file:// or a local path (download other sources by hand first).")


def sidecar_path(dest: Path) -> Path:
    """``<dest>.complete``: the JSON record written when ``dest`` was downloaded completely."""
    return dest.with_name(dest.name + ".complete")


def part_path(dest: Path) -> Path:
    """``<dest>.part``: the bytes received so far."""
    return dest.with_name(dest.name + ".part")


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def is_complete(dest: str | os.PathLike, url: str, *, sha256: str | None = None,
                size: int | None = None) -> bool:
    """Whether ``dest`` already holds the complete download of ``url`` (no network access).

    True when ``<dest>.complete`` records this URL and the file's current size (and, if
    given, the same SHA-256 and size), or when no such record exists but the file matches
    the given ``sha256`` (hashed now; the record is then written) or, without ``sha256``,
    the given ``size``. Without a record, ``sha256`` or ``size`` nothing proves
    completeness and the answer is False.
    """
    dest = Path(dest)
    if not dest.is_file():
        return False
    actual = dest.stat().st_size
    if size is not None and actual != size:
        return False
    sha256 = sha256.lower() if sha256 else None
    record = _read_json(sidecar_path(dest))
    if record and record.get("url") == url and record.get("size") == actual:
        return sha256 is None or record.get("sha256") == sha256
    if sha256 is not None:
        digest = sha256_file(dest)
        if digest != sha256:
            return False
        _write_json(sidecar_path(dest), {"url": url, "size": actual, "sha256": digest,
                                         "etag": None, "finished": _now(), "verified": "sha256"})
        return True
    return size is not None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class _Retry(Exception):
    """An attempt failed in a way another attempt may fix."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Part:
    """``<dest>.part`` plus its metadata and a running SHA-256 of its bytes."""

    def __init__(self, dest: Path, url: str) -> None:
        self.path = part_path(dest)
        self.meta_path = dest.with_name(dest.name + ".part.json")
        self.url = url
        meta = _read_json(self.meta_path) or {}
        self.validator: str | None = meta.get("validator")
        self.validators: dict[str, str] = _recorded_validators(meta)
        self.total: int | None = meta.get("total")
        self.size = self.path.stat().st_size if self.path.exists() else 0
        self.resumed = False  # whether the current bytes were received by several requests
        self._hash: "hashlib._Hash | None" = None
        if meta.get("url") != url and (self.size or meta):
            log.info("%s: discarding %s (%d bytes of another or unknown source)", url, self.path,
                     self.size)
            self.reset()

    def reset(self) -> None:
        """Throw the received bytes away and start from zero."""
        self.path.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)
        self.size, self.total, self.validator, self.resumed = 0, None, None, False
        self.validators = {}
        self._hash = hashlib.sha256()

    def begin(self, total: int | None, resp: requests.Response) -> None:
        """Record what the server said about the file before any byte of it is written."""
        self.total, self.validator = total, _validator(resp)
        self.validators = _response_validators(resp)
        try:
            _write_json(self.meta_path, {"url": self.url, "total": total, "validator": self.validator,
                                         **self.validators})
        except OSError as err:
            raise DownloadError(f"{self.url}: {write_failure(self.meta_path, err)}.") from err

    def changed(self, resp: requests.Response) -> str | None:
        """Why a 206 cannot continue the bytes kept (a recorded ETag / Last-Modified that the
        answer changes or lacks), or None when it can."""
        now = _response_validators(resp)
        for name, kept in self.validators.items():
            if name not in now:
                return f"{_HEADER[name]} is missing, the partial file's was {kept!r}"
            if now[name] != kept:
                return f"{_HEADER[name]} {now[name]!r} differs from the partial file's {kept!r}"
        return None

    def _hasher(self) -> "hashlib._Hash":
        if self._hash is None:
            self._hash = hashlib.sha256()
            if self.size:  # bytes left by an earlier process: hash them once
                with open(self.path, "rb") as fh:
                    while block := fh.read(1 << 20):
                        self._hash.update(block)
        return self._hash

    def append(self, chunks, bar: tqdm) -> None:
        """Write ``chunks`` to the end of the part file, hashing and counting them."""
        hasher = self._hasher()
        with open(self.path, "ab") as fh:
            for chunk in chunks:
                fh.write(chunk)
                hasher.update(chunk)
                self.size += len(chunk)
                bar.update(len(chunk))

    def hexdigest(self) -> str:
        return self._hasher().hexdigest()


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None


def _int_header(resp: requests.Response, name: str) -> int | None:
    value = resp.headers.get(name, "")
    return int(value) if value.strip().isdigit() else None


_HEADER = {"etag": "ETag", "last_modified": "Last-Modified"}


def _response_validators(resp: requests.Response) -> dict[str, str]:
    """The ETag and Last-Modified a response carries (only those present)."""
    return {name: resp.headers[header] for name, header in _HEADER.items() if resp.headers.get(header)}


def _recorded_validators(meta: dict) -> dict[str, str]:
    """The validators a ``.part.json`` recorded; one written before both were kept holds
    only ``validator`` (a strong ETag, else Last-Modified)."""
    if any(name in meta for name in _HEADER):
        return {name: meta[name] for name in _HEADER if meta.get(name)}
    old = meta.get("validator")
    if not old:
        return {}
    return {"etag" if old.startswith(('"', "W/")) else "last_modified": old}


def _validator(resp: requests.Response) -> str | None:
    """A strong ETag, or Last-Modified, usable in If-Range (weak ETags are not allowed there)."""
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return resp.headers.get("Last-Modified")


def _attempt(session: requests.Session, url: str, part: _Part, size: int | None, timeout: float,
             chunk_size: int, progress: bool, label: str) -> None:
    """One request: append what the server sends to the part file, or raise _Retry/DownloadError."""
    have = part.size
    if have and part.total is not None and have == part.total:
        return  # every byte arrived before an earlier process stopped: only verification left
    headers = {}
    if have:
        headers["Range"] = f"bytes={have}-"
        if part.validator:
            headers["If-Range"] = part.validator
    try:
        resp = session.get(url, headers=headers, stream=True, timeout=timeout)
    except (requests.Timeout, requests.ConnectionError) as err:  # SSL errors included
        raise _Retry(network_failure(err, url, timeout)[1]) from err
    except requests.RequestException as err:  # invalid URL, too many redirects, ...
        raise DownloadError(f"{url}: {type(err).__name__}: {err}; check the URL.") from err
    with resp:
        status = resp.status_code
        if status == 416 and have:
            match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", "").strip())
            if match and match.group(3) == str(have):
                part.total = have  # the part file already holds the whole file
                return
            log.warning("%s: server refused to resume at byte %d (416); restarting from zero",
                        url, have)
            part.reset()
            raise _Retry("416 Range Not Satisfiable", retry_after=0.0)
        if is_retryable_status(status):
            raise _Retry(f"HTTP {status} {resp.reason}", retry_after=_retry_after(resp))
        if status not in (200, 206):
            raise DownloadError(f"{url}: HTTP {status} {resp.reason}. Check that the URL is right "
                                f"and still served (open it in a browser); it is not retried.")
        if status == 206:
            match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", "").strip())
            if not match or match.group(1) is None or int(match.group(1)) != have:
                log.warning("%s: server answered the resume at byte %d with Content-Range %r; "
                            "restarting from zero", url, have, resp.headers.get("Content-Range"))
                part.reset()
                raise _Retry("unusable Content-Range", retry_after=0.0)
            changed = part.changed(resp)
            if changed:  # a server or cache that ignored If-Range: never splice two versions
                log.warning("%s: the file changed since the partial download (%s); restarting "
                            "from zero", url, changed)
                part.reset()
                raise _Retry(f"the file changed on the server ({changed})", retry_after=0.0)
            total = int(match.group(3)) if match.group(3) != "*" else None
            part.resumed = True
        else:
            if have:
                log.warning("%s: server ignored the Range request (answered 200); restarting from "
                            "zero", url)
                part.reset()
            total = _int_header(resp, "Content-Length")
        if size is not None and total is not None and total != size:
            part.reset()
            raise DownloadError(f"{url}: the server reports {total} bytes but {size} are expected; "
                                f"the file at this URL changed or the expected size is wrong.")
        part.begin(total, resp)
        with tqdm(total=total, initial=part.size, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=label, disable=not progress, leave=False) as bar:
            try:  # raw bytes: a .gz served with Content-Encoding: gzip must stay compressed
                part.append(resp.raw.stream(chunk_size, decode_content=False), bar)
            except (urllib3.exceptions.HTTPError, requests.RequestException, ConnectionError,
                    TimeoutError) as err:
                raise _Retry(f"transfer interrupted after {part.size} bytes "
                             f"({network_failure(err, url, timeout)[1]})") from err
            except OSError as err:  # writing the part file: disk full, permissions
                raise DownloadError(f"{url}: {write_failure(part.path, err)}.") from err
    if part.total is not None and part.size < part.total:
        raise _Retry(f"connection closed after {part.size} of {part.total} bytes")
    if part.total is not None and part.size > part.total:
        announced = part.total
        part.reset()
        raise _Retry(f"received more than the announced {announced} bytes; restarting from zero")


def _transfer(session: requests.Session, url: str, part: _Part, *, size: int | None, retries: int,
              backoff: float, timeout: float, chunk_size: int, progress: bool, label: str) -> None:
    """Attempts until the part file is complete; ``retries`` bounds consecutive fruitless ones."""
    failures = 0
    while True:
        before = part.size
        try:
            _attempt(session, url, part, size, timeout, chunk_size, progress, label)
            return
        except _Retry as err:
            progressed = part.size > before
            failures = 0 if progressed else failures + 1
            if failures > retries:
                kept = ""
                if part.size:
                    kept = f"; {part.size} bytes kept in {part.path}, a rerun resumes"
                raise DownloadError(f"{url}: giving up after {failures} failed attempt(s) in a row "
                                    f"(last: {err}){kept}. Check the network or the server, then "
                                    f"run again.") from err
            delay = backoff * 2 ** max(failures - 1, 0)
            if err.retry_after is not None:  # the server's Retry-After, or 0 after a restart
                delay = min(err.retry_after, 60.0)
            step = f"resuming at byte {part.size}" if progressed else f"retry {failures}/{retries}"
            log.warning("%s: %s; %s in %.1fs", url, err, step, delay)
            time.sleep(delay)


def download(source: str | os.PathLike, dest: str | os.PathLike, *, sha256: str | None = None,
             size: int | None = None, retries: int = 5, backoff: float = 0.5, timeout: float = 30,
             chunk_size: int = 1 << 20, progress: bool = True) -> Path:
    """Download ``source`` to ``dest`` (resumable, retried, verified, atomic); return the file.

    Args:
        source: an ``http(s)://`` URL, or a local path / ``file://`` URL. A local file is
            verified (exists, ``size``, ``sha256``) and **its own path is returned**; nothing
            is copied and ``dest`` is not touched.
        dest: where the downloaded file goes; parent folders are created. Intermediate files:
            ``<dest>.part`` and ``<dest>.part.json``; on success ``<dest>.complete``.
        sha256: expected hex digest; a mismatch raises and leaves no file under ``dest``.
        size: expected size in bytes, checked against the server's announced size up front
            and against the received bytes at the end.
        retries: how many failed attempts in a row (without new bytes) are retried.
        backoff: the first retry waits ``backoff`` seconds, then 2x, 4x, ...
        timeout: seconds to connect and seconds between received bytes (not the total time).
        chunk_size: bytes per read from the network.
        progress: show a tqdm progress bar (on stderr).

    Returns:
        ``dest``, or the local source's own path.

    Raises:
        DownloadError: 4xx other than 408/425/429, retries exhausted, size or checksum wrong,
            local file missing, unsupported scheme. The message names the URL/file.
    """
    dest = Path(dest)
    sha256 = sha256.lower() if sha256 else None
    local = local_path(source)
    if local is not None:
        return _verify_local(local, sha256=sha256, size=size)
    url = str(source)
    if is_complete(dest, url, sha256=sha256, size=size):
        log.debug("%s: complete, not downloaded again", dest)
        return dest
    _drop_stale(dest, url, sha256=sha256, size=size)
    dest.parent.mkdir(parents=True, exist_ok=True)
    options = dict(size=size, retries=retries, backoff=backoff, timeout=timeout,
                   chunk_size=chunk_size, progress=progress, label=dest.name)
    with requests.Session() as session:
        session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
        part = _Part(dest, url)
        if part.size:
            log.info("%s: resuming at byte %d from %s", url, part.size, part.path)
        _transfer(session, url, part, **options)
        digest = part.hexdigest()
        if sha256 is not None and digest != sha256 and part.resumed:
            log.warning("%s: SHA-256 mismatch after a resumed transfer; downloading once more "
                        "from zero", url)
            part.reset()
            _transfer(session, url, part, **options)
            digest = part.hexdigest()
    if size is not None and part.size != size:
        part.reset()
        raise DownloadError(f"{url}: received {part.size} bytes, expected {size}; removed the "
                            f"partial file. Check the expected size, then run again.")
    if sha256 is not None and digest != sha256:
        part.reset()
        raise DownloadError(f"{url}: SHA-256 {digest} does not match the expected {sha256}; the "
                            f"download was removed. The file at this URL changed or the expected "
                            f"checksum is wrong.")
    try:
        os.replace(part.path, dest)
        part.meta_path.unlink(missing_ok=True)
        _write_json(sidecar_path(dest), {"url": url, "size": part.size, "sha256": digest,
                                         "etag": part.validator, "finished": _now()})
    except OSError as err:  # the sidecar on a full disk; without it the next run re-verifies
        raise DownloadError(f"{url}: {write_failure(dest, err)}.") from err
    log.info("%s: downloaded %d bytes to %s", url, part.size, dest)
    return dest


def _drop_stale(dest: Path, url: str, *, sha256: str | None, size: int | None) -> None:
    """Before a new transfer: forget the old record; remove a ``dest`` proven wrong."""
    sidecar_path(dest).unlink(missing_ok=True)
    if dest.is_file() and (sha256 is not None or size is not None):
        log.warning("%s: does not match the expected %s; removing it and downloading %s again",
                    dest, "SHA-256" if sha256 else "size", url)
        dest.unlink()


def _verify_local(path: Path, *, sha256: str | None, size: int | None) -> Path:
    if not path.is_file():
        raise DownloadError(f"{path}: local source file not found; check the path (or give an "
                            f"http(s) URL to download it).")
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise DownloadError(f"{path}: {actual} bytes, expected {size}; the local copy is "
                            f"incomplete or a different file. Replace it.")
    if sha256 is not None and (digest := sha256_file(path)) != sha256:
        raise DownloadError(f"{path}: SHA-256 {digest} does not match the expected {sha256}; the "
                            f"local copy is corrupt or a different file. Replace it.")
    return path
