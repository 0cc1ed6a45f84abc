"""Feature extraction on Ray Data (``python -m mmrec.prepare ... prepare.engine=ray``).

The in-process path (:mod:`mmrec.features.extract`) spread over a Ray actor pool, for catalogues
of millions of images or texts and for machines (or clusters) with several GPUs:

* This process keeps everything that touches the store, exactly as in process: which items are
  left (the resume), and every write, one LMDB transaction per batch. A job stopped at any point
  resumes from what was committed, whichever engine wrote it.
* Ray Data maps extraction batches to vectors: a dataset of one row per batch number,
  ``map_batches`` over an actor pool. Each actor builds its modality encoder once (on its GPU
  when it is given one: Ray sets ``CUDA_VISIBLE_DEVICES``), decodes and preprocesses the batch's
  inputs with the same :class:`~mmrec.features.extract.ImageBatches` /
  :class:`~mmrec.features.extract.TextBatches` and encodes them with the same
  :func:`~mmrec.features.extract.encode_inputs`, and returns ``(ids, vectors [k, dim] float32, ok)``.
  Same batches and same encoder: the stored vectors equal the in-process ones (tested).
* On a cluster, the image files must be readable by every node at the same path (a shared
  filesystem); ``address="auto"`` joins a running cluster instead of starting a local Ray.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

log = logging.getLogger(__name__)


class _EncodeActor:
    """One actor of the pool: its own modality encoder and batch source, batch numbers in, vectors out."""

    def __init__(self, encoder: Any, kind: str, inputs: Any, todo: Any, batch_size: int, image_root: str | None,
                 threads: int):
        import ray
        import torch

        torch.set_num_threads(threads)  # the reduction order of a CPU matmul depends on it
        from mmrec.features.extract import ImageBatches, TextBatches, image_preprocess

        if isinstance(inputs, ray.ObjectRef):
            inputs, todo = ray.get(inputs), ray.get(todo)
        self.torch = torch
        self.enc = encoder() if isinstance(encoder, EncoderFactory) else encoder
        self.kind = kind
        self.batches = (ImageBatches(Path(image_root), inputs, todo, batch_size, image_preprocess(self.enc))
                        if kind == "image" else TextBatches(inputs, todo, batch_size))

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from mmrec.features.extract import encode_inputs

        out: dict[str, list] = {"ids": [], "vectors": [], "ok": []}
        for b in rows["data"]:
            ids, inputs, ok = self.batches[int(b)]
            ids = ids.numpy() if hasattr(ids, "numpy") else np.asarray(ids)
            ok = ok.numpy() if hasattr(ok, "numpy") else np.asarray(ok)
            if ok.any():
                with self.torch.inference_mode():
                    vectors = encode_inputs(self.enc, self.kind, inputs).detach().float().cpu().numpy()
            else:
                vectors = np.zeros((0, int(self.enc.dim)), dtype=np.float32)
            out["ids"].append(ids)
            out["vectors"].append(vectors)
            out["ok"].append(ok)
        return {key: _objects(values) for key, values in out.items()}


def _objects(values: list) -> np.ndarray:
    """A 1-d object array of arrays (one per batch), whatever their shapes."""
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


class EncoderFactory:
    """A picklable recipe that builds one modality encoder in each actor (instead of pickling a
    built one, weights and all): ``ModalityEncoderSet(**{modality: spec}).build(modality)``."""

    def __init__(self, spec: Any, modality: str):
        self.spec, self.modality = spec, modality

    def __call__(self):
        from mmrec.features.modality_encoders import ModalityEncoderSet

        return ModalityEncoderSet(**{self.modality: self.spec}).build(self.modality)


class RayEngine:
    """Ray Data as the extraction engine (``prepare.engine=ray``, settings under ``prepare.ray``).

    Args:
        address: a running Ray cluster to join (``"auto"`` or ``ray://...``), or None to start
            (or reuse) a local Ray in this process.
        num_cpus: CPUs a local Ray may use (None: every core).
        actors: actors in the pool (encoders at work at once).
        cpus_per_actor: CPUs each actor reserves (its decoding and, without a GPU, encoding).
        gpus_per_actor: GPUs each actor reserves (0 on a CPU machine; 1 gives each encoder a GPU).
        threads_per_actor: torch threads of each actor's CPU work. None: as many as this process
            uses, so the vectors are bit-identical to an in-process run on this kind of machine (a
            CPU matmul's rounding depends on its thread count); ``cpus_per_actor`` instead is faster
            on a loaded pool and differs in the last float bit.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None, actors: int = 2,
                 cpus_per_actor: float = 1, gpus_per_actor: float = 0, threads_per_actor: int | None = None):
        if actors < 1 or cpus_per_actor < 0 or gpus_per_actor < 0:
            raise ValueError(f"actors must be >= 1 and the per-actor resources >= 0, got actors={actors}, "
                             f"cpus_per_actor={cpus_per_actor}, gpus_per_actor={gpus_per_actor}")
        self.address, self.num_cpus, self.actors = address, num_cpus, int(actors)
        self.cpus_per_actor, self.gpus_per_actor = cpus_per_actor, gpus_per_actor
        self.threads_per_actor = threads_per_actor

    def _init(self):
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, num_cpus=None if self.address else self.num_cpus,
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # mmrec's own bar counts the written items
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        return ray

    def encoded(self, kind: str, encoder: Any | Callable, inputs: np.ndarray, todo: np.ndarray, batch_size: int,
                image_root: str | Path | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(ids, vectors, ok)`` of every batch of ``todo`` (in the order the pool finishes them)."""
        import torch

        ray = self._init()
        num_batches = (len(todo) + batch_size - 1) // batch_size
        if num_batches == 0:
            return
        # the inputs go to the object store once; each actor reads them from there
        refs = (ray.put(np.asarray(inputs, dtype=object)), ray.put(np.asarray(todo, dtype=np.int64)))
        # the batch numbers as in-memory blocks: no read task competes with the actors for CPUs
        ds = ray.data.from_numpy(np.array_split(np.arange(num_batches), min(num_batches, 4 * self.actors)))
        # max_restarts=0: a lost actor fails the job, whose committed batches a rerun keeps (the resume)
        ds = ds.map_batches(_EncodeActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=self.actors),
                            num_cpus=self.cpus_per_actor, num_gpus=self.gpus_per_actor or None, max_restarts=0,
                            fn_constructor_kwargs={"encoder": encoder, "kind": kind, "inputs": refs[0], "todo": refs[1],
                                                   "batch_size": batch_size,
                                                   "image_root": None if image_root is None else str(image_root),
                                                   "threads": self.threads_per_actor or torch.get_num_threads()})
        log.info("Ray Data: %d batches of %d over %d actors (%s CPU, %s GPU each)", num_batches, batch_size,
                 self.actors, self.cpus_per_actor, self.gpus_per_actor)
        for row in ds.iter_rows():
            # rows come back read-only from the object store; the writer wants its own arrays
            yield np.array(row["ids"]), np.array(row["vectors"]), np.array(row["ok"])
