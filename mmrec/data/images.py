"""The image stage of dataset preparation: fetch, validate, normalise and cache product images.

:func:`fetch_images` takes, per item, candidate image sources in order of preference (the
Amazon 2023 pipeline passes the ``large``, then ``hi_res``, then ``thumb`` URL) and keeps the
first one that yields a usable picture:

1. fetch it into memory (http(s) URL, local path or ``file://`` URL) with a time limit and
   a few retries for time-outs, connection errors and 5xx (never for 404);
2. validate it: Pillow must identify it (else ``not_image``, e.g. an HTML error page served
   with 200) and decode every pixel (``Image.load()``; a truncated JPEG is ``corrupt`` —
   ``ImageFile.LOAD_TRUNCATED_IMAGES`` is deliberately left off); its shorter side must be
   at least ``min_size`` pixels (else ``too_small``, e.g. 1x1 tracking pixels);
3. normalise it: EXIF orientation applied, transparency flattened onto white, RGB, longer
   side scaled down to ``max_side``;
4. save it as ``<cache_dir>/<item>.jpg`` atomically (temporary file + ``os.replace``), with
   the source URL in the JPEG comment.

The stage is resumable: an item whose cache file exists and decodes is reported ``cached``
without any network access (and scaled down in place if ``max_side`` shrank); items that
failed are tried again by the next run. A failed item never touches its cache file, so a
good picture from an earlier run survives a later failure, and one item never writes
another's file. Only environment failures (the cache folder not writable, disk full) raise.
One run at a time per ``cache_dir``: a run removes temporary files a killed run left there.

Statuses (one per item, in :data:`STATUSES`): ``ok`` (fetched now), ``cached``, ``no_url``,
``http_404`` (404/410, or a local file that does not exist), ``http_error`` (other statuses,
connection errors, unsupported schemes, bodies over :data:`MAX_IMAGE_BYTES`), ``timeout``,
``not_image``, ``corrupt``, ``too_small``. When every candidate fails, the item gets the
status of the last candidate tried and an error message listing each candidate's failure.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import requests
import urllib3
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from mmrec.data.download import DownloadError, USER_AGENT, is_retryable_status, local_path
from mmrec.data.prepared import DatasetError

log = logging.getLogger(__name__)

STATUSES = ("ok", "cached", "no_url", "http_404", "http_error", "timeout", "not_image",
            "corrupt", "too_small")
USABLE = ("ok", "cached")
COLUMNS = ("item", "status", "url", "path", "bytes", "error")
#: larger bodies are refused (``http_error``): no product photo needs more
MAX_IMAGE_BYTES = 32 << 20
JPEG_QUALITY = 90


class _Failure(Exception):
    """One candidate failed with a status from STATUSES; ``retryable`` for transient causes."""

    def __init__(self, status: str, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.status, self.retryable = status, retryable


@dataclass(frozen=True)
class _Options:
    timeout: float
    retries: int
    backoff: float
    min_size: int
    max_side: int
    quality: int


def fetch_images(
    requests: Sequence[tuple[int, Sequence[str]]],
    cache_dir: str | os.PathLike,
    *,
    workers: int = 8,
    timeout: float = 10,
    retries: int = 2,
    min_size: int = 32,
    max_side: int = 256,
    backoff: float = 0.5,
    quality: int = JPEG_QUALITY,
    progress: bool = True,
) -> pd.DataFrame:
    """Fetch, validate, resize and cache one image per item; one result row per item.

    Args:
        requests: ``(item id, candidate sources)`` pairs, candidates in order of preference;
            anything but a non-empty str / PathLike (None, NaN, "") is skipped. Item ids must
            be unique.
        cache_dir: folder of the cached ``<item>.jpg`` files (created if needed).
        workers: threads fetching in parallel.
        timeout: seconds one attempt at one candidate may take in total (connect + body).
        retries: extra attempts per candidate after a time-out, connection error or 5xx.
        min_size: smallest acceptable shorter side of the original picture, in pixels.
        max_side: the longer side of the cached JPEG is scaled down to at most this.
        backoff: seconds before the first retry, doubled for each further one.
        quality: JPEG quality of the cached files.
        progress: show a tqdm progress bar.

    Returns:
        A DataFrame in the order of ``requests`` with columns ``item`` (int64), ``status``
        (see :data:`STATUSES`), ``url`` (the source used or last tried; for ``cached`` the
        one recorded in the file), ``path`` (``"<item>.jpg"``, relative to ``cache_dir``, or
        ``""`` when there is no usable image), ``bytes`` (size of the cached JPEG, 0 if none)
        and ``error`` (``""`` or what went wrong with each candidate).

    Raises:
        DatasetError: duplicate item ids, or the cache folder cannot be written.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.glob(".*.jpg.tmp-*"):  # left by a killed run (one run per cache_dir)
        stale.unlink(missing_ok=True)
    jobs = [(int(item), _candidates(urls)) for item, urls in requests]
    ids = pd.Series([item for item, _ in jobs], dtype="int64")
    if ids.duplicated().any():
        dup = int(ids[ids.duplicated()].iloc[0])
        raise DatasetError(f"fetch_images: item {dup} is requested more than once; pass one "
                           f"(item, candidate URLs) pair per item.")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on (set by another library): "
                    "truncated images cannot be detected and may be cached")
    options = _Options(timeout=timeout, retries=retries, backoff=backoff, min_size=min_size,
                       max_side=max_side, quality=quality)
    sessions = _Sessions()
    rows: list[tuple | None] = [None] * len(jobs)
    pending: dict[Future, int] = {}
    window = max(workers, 1) * 4  # futures in flight: bounded memory for a million items

    def collect(keep: int) -> None:
        """Record finished items until at most ``keep`` are still in flight."""
        while len(pending) > keep:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                rows[pending.pop(fut)] = fut.result()
            bar.update(len(done))

    try:
        with ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="images") as pool, \
                tqdm(total=len(jobs), unit="img", desc="images", disable=not progress) as bar:
            for pos, (item, urls) in enumerate(jobs):
                pending[pool.submit(_process, item, urls, cache_dir, sessions.get, options)] = pos
                collect(window - 1)
            collect(0)
    finally:
        sessions.close()
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.astype({"item": "int64", "status": str, "url": str, "path": str, "bytes": "int64",
                         "error": str})


def summarize_images(results: pd.DataFrame) -> pd.DataFrame:
    """Count the statuses of a :func:`fetch_images` result: ``status, count, percent, usable``.

    Rows follow the order of :data:`STATUSES` (unknown statuses last); only statuses that
    occur are listed; ``usable`` marks the statuses that leave a cached picture.
    """
    counts = results["status"].astype(str).value_counts()
    order = [s for s in STATUSES if s in counts.index] + sorted(set(counts.index) - set(STATUSES))
    summary = pd.DataFrame({"status": order,
                            "count": counts.reindex(order).to_numpy(dtype="int64")})
    summary["percent"] = (100.0 * summary["count"] / max(len(results), 1)).round(1)
    summary["usable"] = summary["status"].isin(USABLE)
    return summary


def _candidates(urls: Sequence) -> list[str]:
    """The usable candidate sources: non-empty strings and path-like objects, in order."""
    return [os.fspath(u) for u in urls if isinstance(u, os.PathLike) or (isinstance(u, str) and u)]


class _Sessions:
    """One requests.Session per worker thread (Session is not documented as thread-safe)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[requests.Session] = []
        self._lock = threading.Lock()

    def get(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            with self._lock:
                self._all.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            for session in self._all:
                session.close()
            self._all.clear()


def _process(item: int, urls: list[str], cache_dir: Path, session: Callable[[], requests.Session],
             options: _Options) -> tuple:
    """The result row of one item; only cache-write failures raise."""
    name = f"{item}.jpg"
    dest = cache_dir / name
    if dest.exists():
        cached = _check_cached(dest, options)
        if cached is not None:
            return item, "cached", cached[0], name, cached[1], ""
        log.info("%s: cached file unreadable, fetching item %d again", dest, item)
    if not urls:
        return item, "no_url", "", "", 0, "no image URL for this item"
    failures: list[tuple[str, _Failure]] = []
    for url in urls:
        try:
            data, content_type = _fetch(url, session, options)
            image = _decode(data, content_type, options)
        except _Failure as failure:
            failures.append((url, failure))
            continue
        except Exception as err:  # noqa: BLE001 - one odd URL ("http://[x") must not stop the run
            log.debug("item %d, %s: unexpected error", item, url, exc_info=True)
            failures.append((url, _Failure("http_error", f"unexpected {type(err).__name__}: {err}")))
            continue
        return item, "ok", url, name, _save(image, dest, url, options), ""
    last_url, last = failures[-1]
    error = "; ".join(f"{url}: {f.status} ({f})" for url, f in failures)
    return item, last.status, last_url, "", 0, error


def _check_cached(dest: Path, options: _Options) -> tuple[str, int] | None:
    """``(source url, bytes)`` of a decodable cache file (scaled down if too large), else None."""
    try:
        with Image.open(dest) as img:
            img.load()
            url = img.info.get("comment", b"")
            if max(img.size) > options.max_side:  # max_side shrank since it was cached
                small = img.convert("RGB")
                small.thumbnail((options.max_side, options.max_side), Image.Resampling.LANCZOS)
            else:
                small = None
    except Exception:  # noqa: BLE001 - any decoding failure means "not a usable cache file"
        return None
    url = url.decode(errors="replace") if isinstance(url, bytes) else str(url)
    if small is not None:
        _save(small, dest, url, options)
    return url, dest.stat().st_size


def _fetch(source: str, session: Callable[[], requests.Session],
           options: _Options) -> tuple[bytes, str]:
    """The bytes and Content-Type of one candidate, retrying transient failures."""
    try:
        path = local_path(source)
    except DownloadError as err:
        raise _Failure("http_error", str(err)) from err
    if path is not None:
        return _read_local(path), ""
    for attempt in range(options.retries + 1):
        try:
            return _get(source, session(), options.timeout)
        except _Failure as failure:
            if not failure.retryable or attempt == options.retries:
                if attempt:
                    failure.args = (f"{failure} (after {attempt + 1} attempts)",)
                raise
            time.sleep(options.backoff * 2 ** attempt)
    raise AssertionError("unreachable")


def _read_local(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise _Failure("http_error", f"local file is over {MAX_IMAGE_BYTES >> 20} MiB")
        return path.read_bytes()
    except FileNotFoundError as err:
        raise _Failure("http_404", f"local file {path} not found") from err
    except OSError as err:
        raise _Failure("http_error", f"cannot read local file {path}: {err}") from err


def _get(url: str, session: requests.Session, timeout: float) -> tuple[bytes, str]:
    """One GET of a whole body within ``timeout`` seconds, or a _Failure."""
    start = time.monotonic()
    try:
        with session.get(url, timeout=timeout, stream=True) as resp:
            if resp.status_code in (404, 410):
                raise _Failure("http_404", f"HTTP {resp.status_code} {resp.reason}")
            if resp.status_code != 200:
                raise _Failure("http_error", f"HTTP {resp.status_code} {resp.reason}",
                               retryable=is_retryable_status(resp.status_code))
            declared = resp.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > MAX_IMAGE_BYTES:
                raise _Failure("http_error", f"body of {declared} bytes is over "
                                             f"{MAX_IMAGE_BYTES >> 20} MiB")
            body = bytearray()
            # read1 returns what has arrived, so a trickling server meets the deadline too
            # (iter_content would block until a whole chunk is there)
            for chunk in iter(lambda: resp.raw.read1(64 * 1024), b""):
                body += chunk
                if len(body) > MAX_IMAGE_BYTES:
                    raise _Failure("http_error", f"body is over {MAX_IMAGE_BYTES >> 20} MiB")
                if time.monotonic() - start > timeout:
                    raise _Failure("timeout", f"body not complete after {timeout:g}s",
                                   retryable=True)
            return bytes(body), resp.headers.get("Content-Type", "")
    except requests.Timeout as err:
        raise _Failure("timeout", f"no answer within {timeout:g}s", retryable=True) from err
    except (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError) as err:
        # body reads through resp.raw raise urllib3's errors (IncompleteRead, ReadTimeoutError)
        if _caused_by_timeout(err):
            raise _Failure("timeout", f"no data within {timeout:g}s", retryable=True) from err
        raise _Failure("http_error", f"{type(err).__name__}: {err}", retryable=True) from err


def _caused_by_timeout(err: BaseException) -> bool:
    """Whether a requests error wraps a socket/urllib3 read time-out (body reads do that)."""
    seen: BaseException | None = err
    for _ in range(8):  # a short chain; never follow a cycle forever
        if seen is None:
            return False
        if isinstance(seen, (TimeoutError, urllib3.exceptions.TimeoutError)):
            return True
        inner = next((a for a in seen.args if isinstance(a, BaseException)), None)
        seen = inner or seen.__cause__ or seen.__context__
    return False


def _decode(data: bytes, content_type: str, options: _Options) -> Image.Image:
    """Validate and normalise: identified, fully decoded, big enough; RGB, scaled to max_side."""
    try:
        img = Image.open(BytesIO(data))
    except UnidentifiedImageError as err:
        head = data[:24]
        kind = f"Content-Type {content_type!r}, " if content_type else ""
        raise _Failure("not_image",
                       f"not an image ({kind}{len(data)} bytes starting {head!r})") from err
    except Exception as err:  # noqa: BLE001 - e.g. DecompressionBombError, broken headers
        raise _Failure("corrupt", f"{type(err).__name__}: {err}") from err
    try:
        img.load()
    except Exception as err:  # noqa: BLE001 - OSError (truncated), SyntaxError, ValueError, ...
        raise _Failure("corrupt", f"{img.format} does not decode: {err}") from err
    width, height = img.size
    if min(width, height) < options.min_size:
        raise _Failure("too_small",
                       f"{width}x{height} pixels, shorter side under {options.min_size}")
    try:
        img = _to_rgb(ImageOps.exif_transpose(img))
        img.thumbnail((options.max_side, options.max_side), Image.Resampling.LANCZOS)
    except Exception as err:  # noqa: BLE001 - unusual modes Pillow cannot convert
        raise _Failure("corrupt", f"{img.format} {img.mode} cannot be converted: {err}") from err
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB; transparent pixels become white (product shots are cut out on white, not black)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def _save(img: Image.Image, dest: Path, url: str, options: _Options) -> int:
    """Write ``img`` as JPEG to ``dest`` atomically; returns its size in bytes."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        img.save(tmp, "JPEG", quality=options.quality, comment=url.encode()[:60000])
        os.replace(tmp, dest)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"{dest}: cannot write the cached image ({err}); check free space and "
                           f"permissions of {dest.parent}.") from err
    return dest.stat().st_size
