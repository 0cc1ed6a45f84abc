"""Batched feature extraction into an LMDB store: resumable, honest about missing inputs.

Features are computed once per dataset and modality encoder and stored; training only reads
them. The functions here take the inputs (image references, texts), a modality encoder and
the store path; reading a prepared dataset and recording the store in its manifest is the
data layer's part (:mod:`mmrec.data.features_stage`).

* Images: a torch ``DataLoader`` walks the items not yet in the store, one batch of ids per
  sample; its workers open, decode and (when the modality encoder has ``preprocess`` /
  ``encode_tensor``, see :mod:`mmrec.features.modality_encoders`) resize and normalise the
  images, returning ``(ids [b], pixels [k, ...], ok [b])``. The main process runs the network
  (on the modality encoder's device; pinned memory when that is CUDA) under
  ``torch.inference_mode`` and writes the batch in one LMDB transaction.
* Texts: one string per item, in batches.
* An input that cannot be used (no image reference, unreadable or corrupt file, empty
  text) is recorded as *missing* in the store, never as a zero vector.
* A restarted extraction skips the items already in the store (vectors and recorded
  missing alike) *that were computed from the same input*: each entry is stored with a
  digest of its input (the text; the image reference with the file's size and mtime), so an
  interrupted job resumes where it stopped, and an item whose text changed or whose image
  has been fetched since is encoded again.

Both return ``dim, dtype, modality_encoder, weights_hash, count, missing, seconds,
items_per_s``; ``seconds`` and ``items_per_s`` are those of the run that completed the store
(items it processed / its wall time).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mmrec.features.store import FeatureStore

log = logging.getLogger(__name__)

_COUNT_CHUNK = 65536  # item ids per read when counting a finished store


def _load_image(root: Path, ref: str) -> Image.Image | None:
    if not ref:
        return None
    path = Path(ref) if Path(ref).is_absolute() else root / ref
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        log.warning("image of %s unusable (%s): recorded as missing", path, err)
        return None


class ImageBatches(Dataset):
    """Sample ``b`` = batch ``b`` of ``ids``: ``(ids [n] int64, images, ok [n] bool)``.

    ``images`` holds only the usable images (``ok`` is True), in id order: a tensor
    ``[k, ...]`` made by stacking ``preprocess(image)`` when ``preprocess`` is given, else a
    list of RGB ``PIL.Image``. Decoding and preprocessing happen in ``__getitem__``, that is
    in the DataLoader workers. Holds no model and no open file, so it pickles cheaply.
    """

    def __init__(self, root: Path, refs: np.ndarray, ids: np.ndarray, batch_size: int,
                 preprocess: Callable[[Image.Image], torch.Tensor] | None = None):
        self.root, self.refs, self.ids = Path(root), refs, np.asarray(ids, dtype=np.int64)
        self.batch_size, self.preprocess = int(batch_size), preprocess

    def __len__(self) -> int:
        return (len(self.ids) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, b: int):
        ids = self.ids[b * self.batch_size:(b + 1) * self.batch_size]
        ok = np.zeros(len(ids), dtype=bool)
        images = []
        for j, item in enumerate(ids):
            img = _load_image(self.root, str(self.refs[item]))
            if img is not None and self.preprocess is not None:
                try:
                    img = self.preprocess(img)
                except Exception as err:  # a transform failing on one odd file must not stop the job
                    log.warning("image of item %d (%s) failed preprocessing (%s): recorded as missing",
                                item, self.refs[item], err)
                    img = None
            if img is not None:
                images.append(img)
                ok[j] = True
        if self.preprocess is not None:
            images = torch.stack(images) if images else torch.zeros(0)
        return torch.from_numpy(ids), images, torch.from_numpy(ok)


class TextBatches:
    """Batch ``b`` of ``ids``: ``(ids [n] int64, texts of the usable items, ok [n] bool)``;
    an empty text is not usable (missing)."""

    def __init__(self, texts: np.ndarray, ids: np.ndarray, batch_size: int):
        self.texts, self.ids, self.batch_size = texts, np.asarray(ids, dtype=np.int64), int(batch_size)

    def __len__(self) -> int:
        return (len(self.ids) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, b: int):
        ids = self.ids[b * self.batch_size:(b + 1) * self.batch_size]
        batch = self.texts[ids]
        ok = np.array([bool(t) for t in batch], dtype=bool)
        return ids, [str(t) for t in batch[ok]], ok


def image_preprocess(enc) -> Callable | None:
    """The modality encoder's per-image ``preprocess`` when it can also ``encode_tensor`` the
    stacked result (then resizing runs where the images are decoded), else None (PIL images)."""
    return getattr(enc, "preprocess", None) if hasattr(enc, "encode_tensor") else None


def encode_inputs(enc, kind: str, inputs) -> torch.Tensor:
    """One batch's usable inputs -> ``[k, dim]`` vectors, as the in-process and Ray paths both encode."""
    if kind == "image" and image_preprocess(enc) is not None:
        return enc.encode_tensor(inputs)
    return enc(inputs)


def _show_progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else bool(progress)


def _count(path: Path) -> tuple[int, int]:
    """``(stored vectors, missing)`` of a store, read in chunks (never all vectors at once)."""
    store = FeatureStore(path)
    try:
        count = 0
        for start in range(0, store.num_items, _COUNT_CHUNK):
            _, mask = store.get_many(np.arange(start, min(start + _COUNT_CHUNK, store.num_items)))
            count += int(mask.sum())
        return count, store.num_items - count
    finally:
        store.close()


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def text_digests(texts: Sequence[str] | np.ndarray) -> np.ndarray:
    """``[n] S16`` digest of each item's text (the input of its text vector)."""
    return np.asarray([_digest(str(t)) for t in texts], dtype="S16")


def image_digests(root: Path, refs: Sequence[str] | np.ndarray) -> np.ndarray:
    """``[n] S16`` digest of each item's image input: the reference and, when it names a file
    that exists, its size and mtime (so a file fetched, replaced or removed since counts as a
    new input without reading every image)."""
    out = []
    for ref in refs:
        ref = str(ref)
        try:
            st = os.stat(Path(ref) if Path(ref).is_absolute() else Path(root) / ref) if ref else None
        except OSError:
            st = None
        out.append(_digest(f"{ref}\0{st.st_size}\0{st.st_mtime_ns}" if st else f"{ref}\0absent"))
    return np.asarray(out, dtype="S16")


def _run(path: Path, modality_encoder, num_items: int, dtype: str, progress: bool | None, digests: np.ndarray,
         batches: Callable[[np.ndarray], Iterator[tuple[np.ndarray, object, np.ndarray]]],
         encode: Callable[[object], torch.Tensor]) -> dict:
    """Shared loop: open/resume the store, encode the batches of not-yet-done ids, count."""
    path = Path(path)
    weights_hash = getattr(modality_encoder, "weights_hash", "unknown")
    start = time.time()
    processed = 0
    with FeatureStore.create(path, dim=modality_encoder.dim, num_items=num_items,
                             modality_encoder=modality_encoder.encoder_id, dtype=dtype,
                             extra={"weights_hash": weights_hash}) as writer:
        todo = np.setdiff1d(np.arange(num_items), writer.done_ids(digests))
        if len(todo) < num_items:
            log.info("%s: resuming, %d of %d items already stored from the same input", path,
                     num_items - len(todo), num_items)
        bar = tqdm(total=len(todo), desc=f"{path.stem} ({modality_encoder.modality})", unit="item",
                   unit_scale=True, disable=not _show_progress(progress), dynamic_ncols=True)
        unusable: list[int] = []
        stream = batches(todo)
        try:
            with torch.inference_mode():
                for ids, inputs, ok in stream:
                    if ok.any():
                        vectors = encode(inputs)  # [ok.sum(), dim]
                        writer.put_many(ids[ok], vectors.detach().float().cpu(), digests[ids[ok]])
                        del vectors
                    writer.put_missing(ids[~ok], digests[ids[~ok]])
                    unusable.extend(ids[~ok][: max(0, 5 - len(unusable))].tolist())
                    processed += len(ids)
                    bar.update(len(ids))
        finally:
            stream.close()  # stops image workers now, also when encoding raised
            bar.close()
    seconds = time.time() - start
    count, missing = _count(path)
    log.info("%s: %d items encoded, %d missing%s; this run %d items in %.1fs", path, count, missing,
             f" (e.g. items {unusable})" if unusable else "", processed, seconds)
    return {"dim": int(modality_encoder.dim), "dtype": dtype, "modality_encoder": modality_encoder.encoder_id,
            "weights_hash": weights_hash, "count": count, "missing": missing, "seconds": round(seconds, 3),
            "items_per_s": round(processed / seconds, 2) if seconds > 0 else None}


def encode_images(path: str | Path, refs: Sequence[str] | np.ndarray, modality_encoder, image_root: str | Path,
                  batch_size: int = 256, dtype: str = "float16", num_workers: int = 0,
                  progress: bool | None = None, engine=None, encoder_factory=None) -> dict:
    """Encode the image of every item into the store at ``path``; returns its statistics.

    Args:
        path: the LMDB store (created, or resumed when it exists with the same settings).
        refs: ``[num_items]`` image reference per item: a path relative to ``image_root``, an
            absolute path, or ``""`` for none (missing).
        modality_encoder: an image modality encoder (``modality``, ``dim``, ``encoder_id``,
            ``__call__(list[PIL.Image])``; with ``preprocess`` + ``encode_tensor`` the
            resizing runs in the workers too).
        image_root: folder that relative references are resolved against.
        batch_size: images per batch (one DataLoader sample, one LMDB transaction).
        dtype: stored value type, ``"float16"`` or ``"float32"``.
        num_workers: DataLoader worker processes decoding images (0 = in this process).
        progress: show a tqdm bar (items/s); None = only when stderr is a terminal.
        engine: None to encode in this process, or a :class:`mmrec.features.ray_engine.RayEngine`
            to encode the same batches in its actor pool (this process still writes the store).
        encoder_factory: with ``engine``, a picklable zero-argument callable that builds the modality
            encoder in each actor (default: ``modality_encoder`` itself, pickled).

    Returns:
        ``{dim, dtype, modality_encoder, weights_hash, count, missing, seconds, items_per_s}``.
    """
    refs = np.asarray(refs, dtype=object)
    image_root = Path(image_root)
    enc = modality_encoder
    if engine is not None:
        return _run(Path(path), enc, len(refs), dtype, progress, image_digests(image_root, refs),
                    lambda todo: engine.encoded("image", encoder_factory or enc, refs, todo, batch_size, image_root),
                    torch.from_numpy)
    preprocess = image_preprocess(enc)
    device = getattr(enc, "device", torch.device("cpu"))
    on_cuda = torch.device(device).type == "cuda"

    def batches(todo: np.ndarray):
        loader = DataLoader(ImageBatches(image_root, refs, todo, batch_size, preprocess), batch_size=None,
                            shuffle=False, num_workers=num_workers, pin_memory=on_cuda and preprocess is not None,
                            prefetch_factor=2 if num_workers > 0 else None)
        it = iter(loader)
        try:
            for ids, images, ok in it:
                yield ids.numpy(), images, ok.numpy()
        finally:
            del it  # shuts the workers down now, also when encoding raised

    return _run(Path(path), enc, len(refs), dtype, progress, image_digests(image_root, refs), batches,
                lambda images: encode_inputs(enc, "image", images))


def encode_texts(path: str | Path, texts: Sequence[str] | np.ndarray, modality_encoder, batch_size: int = 256,
                 dtype: str = "float16", progress: bool | None = None, engine=None, encoder_factory=None) -> dict:
    """Encode the text of every item (``texts[item]``) into the store at ``path``; empty text
    is missing. Arguments and result as :func:`encode_images` (no workers: tokenising is cheap
    next to the model).
    """
    texts = np.asarray(texts, dtype=object)
    if engine is not None:
        return _run(Path(path), modality_encoder, len(texts), dtype, progress, text_digests(texts),
                    lambda todo: engine.encoded("text", encoder_factory or modality_encoder, texts, todo, batch_size),
                    torch.from_numpy)

    def batches(todo: np.ndarray):
        source = TextBatches(texts, todo, batch_size)
        return (source[b] for b in range(len(source)))

    return _run(Path(path), modality_encoder, len(texts), dtype, progress, text_digests(texts), batches,
                modality_encoder)
