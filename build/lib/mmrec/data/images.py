"""The image stage of dataset preparation: fetch, validate, normalise and cache product images.

:func:`fetch_images` takes, per item, candidate image sources in order of preference (the
Amazon 2023 pipeline passes the ``large``, then ``hi_res``, then ``thumb`` URL) and keeps the
first one that yields a usable picture:

1. fetch it into memory with a time limit and a few retries for time-outs, connection
   errors and 5xx (never for 404). Only http(s) URLs are fetched, since candidates come from
   downloaded metadata (a ``/etc/passwd`` or ``file://`` "image URL" must not be read); a
   local path or ``file://`` URL is read only inside ``local_dir``, the folder of a source
   the user configured as local (ml100k's posters), else it is ``refused``;
2. validate it: Pillow must identify it (else ``not_image``, e.g. an HTML error page served
   with 200); its shorter side must be at least ``min_size`` pixels (else ``too_small``,
   e.g. 1x1 tracking pixels); the pixels to decode, known from the header before anything
   is decoded, must be at most ``max_pixels`` (else ``too_large``: a 12000 x 12000 PNG takes
   gigabytes), where a JPEG is decoded at 1/2, 1/4 or 1/8 scale (``draft``) when that still
   gives ``max_side``; then every pixel is decoded (``Image.load()``; a truncated JPEG is
   ``corrupt`` — ``ImageFile.LOAD_TRUNCATED_IMAGES`` is deliberately left off);
3. normalise it: EXIF orientation applied, transparency flattened onto white, RGB, longer
   side scaled down to ``max_side``;
4. save it as ``<cache_dir>/<item>.jpg`` atomically (temporary file, re-read and checked:
   size, every pixel decodes, JPEG end marker, then ``os.replace``), with the source URL in
   the JPEG comment. A short write that raised nothing never gets the final name.

The stage is resumable: an item whose cache file exists and decodes is reported ``cached``
without any network access (and scaled down in place if ``max_side`` shrank); items that
failed are tried again by the next run. A failed item never touches its cache file, so a
good picture from an earlier run survives a later failure, and one item never writes
another's file. Only environment failures (the cache folder not writable, disk full: "disk
full at <path>: free space and rerun (it resumes)") raise.
One run at a time per ``cache_dir``: a run removes temporary files a killed run left there.

Statuses (one per item, in :data:`STATUSES`): ``ok`` (fetched now), ``cached``, ``no_url``,
``http_404`` (404/410, or a local file that does not exist), ``http_error`` (other statuses,
refused or failed connections, malformed URLs, bodies over :data:`MAX_IMAGE_BYTES`),
``timeout``, ``refused`` (a local file outside ``local_dir``, a scheme other than http(s)), ``not_image``, ``corrupt``,
``too_small``, ``too_large``. When every candidate fails, the item gets the status of the last
candidate tried and an error message listing each candidate's failure.

:func:`check_failure_share` turns a result whose failure share is over a threshold into an
error with the counts and the command that retries (the images stage calls it: a server
outage must not give a dataset whose images are silently all missing).
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

import numpy as np
import pandas as pd
import requests
import urllib3
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from mmrec.data.download import (DownloadError, USER_AGENT, is_retryable_status, local_path,
                                  network_failure, write_failure)
from mmrec.data.prepared import DatasetError
from mmrec.data.stages import prepare_command

log = logging.getLogger(__name__)

STATUSES = ("ok", "cached", "no_url", "http_404", "http_error", "timeout", "refused", "not_image",
            "corrupt", "too_small", "too_large")
USABLE = ("ok", "cached")
#: statuses of items that had nothing to fetch: they never count as failures
NOT_TRIED = ("no_url", "disabled")
COLUMNS = ("item", "status", "url", "path", "bytes", "error")
#: larger bodies are refused (``http_error``): no product photo needs more
MAX_IMAGE_BYTES = 32 << 20
#: pixels one image may decode to (4000 x 4000: about 64 MB as RGBA, per worker)
MAX_PIXELS = 16_000_000
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
    max_pixels: int
    local_dir: Path | None


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
    max_pixels: int = MAX_PIXELS,
    local_dir: str | os.PathLike | None = None,
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
        max_pixels: largest width x height decoded (after JPEG draft scaling); larger
            pictures are ``too_large`` and never decoded.
        local_dir: the folder of a source the user configured as local; only files inside it
            may be candidates (plain paths or ``file://``). ``None``: http(s) URLs only.
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
    jobs = [(_item_id(item), _candidates(urls)) for item, urls in requests]
    ids = pd.Series([item for item, _ in jobs], dtype="int64")
    if ids.duplicated().any():
        dup = int(ids[ids.duplicated()].iloc[0])
        raise DatasetError(f"fetch_images: item {dup} is requested more than once; pass one "
                           f"(item, candidate URLs) pair per item.")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on (set by another library): "
                    "truncated images cannot be detected and may be cached")
    options = _Options(timeout=timeout, retries=retries, backoff=backoff, min_size=min_size,
                       max_side=max_side, quality=quality, max_pixels=int(max_pixels),
                       local_dir=None if local_dir is None else Path(os.path.abspath(local_dir)))
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


def check_failure_share(results: pd.DataFrame, max_share: float, details: Path) -> None:
    """Raise a :class:`DatasetError` when more than ``max_share`` of the items that had an
    image URL got no usable picture (items without one never count). The message gives the
    counts per status, an example, where every item's status is (``details``) and the
    command that retries; the caller must not record its stage as finished, so a rerun
    fetches the failed items again (cached pictures are kept and not fetched again)."""
    status = results["status"].astype(str)
    tried = ~status.isin(NOT_TRIED)
    failed = tried & ~status.isin(USABLE)
    n_tried, n_failed = int(tried.sum()), int(failed.sum())
    if n_failed == 0 or n_failed <= max_share * n_tried:
        return
    counts = ", ".join(f"{k}: {v}" for k, v in status[failed].value_counts().items())
    example = results[failed].iloc[0]
    raise DatasetError(
        f"images: {n_failed} of {n_tried} items with an image URL have no usable picture "
        f"({n_failed / n_tried:.0%}, over max_failure_share={max_share:g}): {counts}; e.g. item "
        f"{example['item']}: {example['error'][:300]}. The {n_tried - n_failed} pictures fetched are "
        f"kept; every item's status is in {details}. Fix the cause (is the image server "
        f"reachable?), then run `{prepare_command()}` again: it retries the failed items only. "
        f"To accept the missing pictures instead, raise dataset.source.images.max_failure_share.")


def _item_id(item) -> int:
    """An item id as the int that names its cached file ``<item>.jpg``: a whole number >= 0 (an
    id such as ``../../evil`` would name a file outside the cache)."""
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool) and item >= 0:
        return int(item)
    if isinstance(item, str) and item.isdigit():
        return int(item)
    raise DatasetError(f"fetch_images: item id {item!r} is not a whole number >= 0; item ids are the dataset's "
                       f"0-based item numbers (they name the cached files <item>.jpg)")


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
            if img.width * img.height > options.max_pixels:  # not ours: never decode it
                return None
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
    allowed = ("http(s) URLs or files inside the configured local source " + str(options.local_dir)
               if options.local_dir is not None else "http(s) URLs")
    try:
        path = local_path(source)
    except DownloadError:
        raise _Failure("refused", f"refused {source!r}: image sources must be {allowed}; fix the metadata or its "
                                  f"image URLs") from None
    except ValueError as err:  # urlparse: "http://[::1" (an unclosed IPv6 host) and the like
        raise _Failure("http_error", f"malformed URL {source!r} ({err}); fix the metadata or its image URLs") from None
    if path is not None:
        return _read_local(_allowed_local(source, path, options.local_dir)), ""
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


def _allowed_local(source: str, path: Path, local_dir: Path | None) -> Path:
    """``path`` when it lies inside ``local_dir`` (lexically: ``..`` cannot climb out, while a
    symlink the user put in their own folder is followed), else a ``refused`` _Failure."""
    if local_dir is not None:
        full = Path(os.path.abspath(path))
        if full == local_dir or local_dir in full.parents:
            return full
    where = (f"only files inside the configured local source {local_dir} are read"
             if local_dir is not None else "this source is not configured as local")
    raise _Failure("refused", f"refused to read local file {source!r}: image sources must be "
                              f"http(s) URLs ({where}); fix the metadata or its image URLs")


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
    except requests.ReadTimeout as err:
        raise _Failure("timeout", f"no answer within {timeout:g}s", retryable=True) from err
    except (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError) as err:
        # body reads through resp.raw raise urllib3's errors (IncompleteRead, ReadTimeoutError);
        # a refused connection is an http_error that says so, not a time-out
        is_timeout, what = network_failure(err, url, timeout)
        raise _Failure("timeout" if is_timeout else "http_error", what, retryable=True) from err


def _decode(data: bytes, content_type: str, options: _Options) -> Image.Image:
    """Validate and normalise: identified, fully decoded, big enough; RGB, scaled to max_side."""
    try:
        img = Image.open(BytesIO(data))
    except UnidentifiedImageError as err:
        head = data[:24]
        kind = f"Content-Type {content_type!r}, " if content_type else ""
        raise _Failure("not_image",
                       f"not an image ({kind}{len(data)} bytes starting {head!r})") from err
    except Image.DecompressionBombError as err:  # over twice Pillow's own limit
        raise _Failure("too_large", f"{err}") from err
    except Exception as err:  # noqa: BLE001 - broken headers
        raise _Failure("corrupt", f"{type(err).__name__}: {err}") from err
    width, height = img.size  # from the header: nothing is decoded yet
    if min(width, height) < options.min_size:
        raise _Failure("too_small",
                       f"{width}x{height} pixels, shorter side under {options.min_size}")
    if img.format == "JPEG":  # decode at 1/2..1/8 scale when max_side still fits: less memory
        img.draft("RGB", (options.max_side, options.max_side))
    if img.width * img.height > options.max_pixels:
        scaled = f" (decoded as {img.width}x{img.height})" if img.size != (width, height) else ""
        raise _Failure("too_large", f"{width}x{height} pixels{scaled} is over max_pixels="
                                    f"{options.max_pixels}: not decoded, to bound memory")
    try:
        img.load()
    except Exception as err:  # noqa: BLE001 - OSError (truncated), SyntaxError, ValueError, ...
        raise _Failure("corrupt", f"{img.format} does not decode: {err}") from err
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
    """Write ``img`` as JPEG to ``dest`` atomically, verified first; returns its size in bytes."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        img.save(tmp, "JPEG", quality=options.quality, comment=url.encode()[:60000])
        problem = _written_jpeg_problem(tmp, img.size)
        if problem:
            raise DatasetError(f"{dest}: the cached picture was not written completely ({problem}); "
                               f"a short write, usually a full disk at {dest.parent}: free space "
                               f"and rerun (it resumes)")
        os.replace(tmp, dest)
    except OSError as err:
        raise DatasetError(f"{write_failure(dest, err)}.") from err
    finally:
        tmp.unlink(missing_ok=True)  # gone after os.replace; a failed write's leftover otherwise
    return dest.stat().st_size


def _written_jpeg_problem(path: Path, size: tuple[int, int]) -> str:
    """What is wrong with a JPEG just written (``""``: nothing). A writer that stopped early
    without raising leaves a file that may still open, so check the end marker (which
    ``LOAD_TRUNCATED_IMAGES``, if another library set it, would not), the size and every pixel."""
    with open(path, "rb") as fh:
        length = fh.seek(0, os.SEEK_END)
        fh.seek(max(length - 2, 0))
        if fh.read(2) != b"\xff\xd9":
            return f"{length} bytes without the JPEG end marker"
    try:
        with Image.open(path) as img:
            if img.size != size:
                return f"{img.size[0]}x{img.size[1]} pixels instead of {size[0]}x{size[1]}"
            img.load()
    except Exception as err:  # noqa: BLE001 - whatever Pillow says, the file is not usable
        return f"{type(err).__name__}: {err}"
    return ""
