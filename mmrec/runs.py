"""Run folders: which folder a training may write into, the lock that keeps it one writer's,
and the identity a checkpoint carries so that a resume continues only the run it belongs to.

A run folder holds a run once it has ``config.yaml``, ``metrics.json`` or a checkpoint. Such a
folder is continued only by resuming it (``ckpt_path=<run>/checkpoints/last.ckpt``); any other
training into it is refused before anything is written, as is a resume that names another
folder, and a resume whose checkpoint was written by another model, on another dataset or with
other shapes. While a training runs, ``<run>/.run.lock`` (an exclusive ``flock``) keeps a
second process out of the folder. Checks that need only the configuration also run as the
Hydra callback, before Hydra writes its ``.hydra/`` files into the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from mmrec.utils.config import resumed_run
from mmrec.utils.errors import MmrecError

#: files whose presence makes a folder a run's (a fresh Hydra folder has only .hydra/ and a log)
RUN_MARKERS = ("config.yaml", "metrics.json")
LOCK_FILE = ".run.lock"
#: the checkpoint key of :func:`run_identity`
IDENTITY_KEY = "mmrec_run"


class RunFolderError(MmrecError, RuntimeError):
    """A training would write into a folder that is not its own (another run, a locked folder,
    a checkpoint of another run). The folder is never removed on this error: it is someone's."""

    keeps_folder = True


def secondary_process() -> bool:
    """Whether this process is a DDP process other than the first (Lightning's launchers set
    its rank in the environment): it re-runs the command in the same run folder, which the
    first process already holds and checks."""
    return any(os.environ.get(var, "0") not in ("", "0") for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def holds_run(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds (the start of) a training run."""
    folder = Path(folder)
    return any((folder / name).exists() for name in RUN_MARKERS) or any((folder / "checkpoints").glob("*.ckpt"))


def _same(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def folder_problem(out_dir: str | os.PathLike, ckpt_path: str | None) -> str | None:
    """Why a training with ``ckpt_path`` may not write into ``out_dir``, or None.

    * a checkpoint of run ``R`` continues ``R`` in ``R``: another folder is refused (the run
      would be split over two folders);
    * a folder that holds a run is continued only by resuming it.
    """
    out_dir = Path(out_dir)
    run = resumed_run(ckpt_path)
    if run is not None and not _same(run, out_dir):
        return (f"ckpt_path={ckpt_path} belongs to the run {run}, and a resume continues a run in its own folder, "
                f"but the output folder is {out_dir} (hydra.run.dir / paths.output_dir): drop that setting to "
                f"continue {run}, or start a new run without ckpt_path")
    if run is None and holds_run(out_dir) and str(ckpt_path) not in ("last", "best"):
        return (f"{out_dir} already holds a run ({', '.join(n for n in RUN_MARKERS if (out_dir / n).exists()) or 'checkpoints'}); "
                f"a run folder is continued only by resuming it (ckpt_path={out_dir / 'checkpoints' / 'last.ckpt'}); "
                f"for a new run leave hydra.run.dir out or name a new folder")
    return None


class RunLock:
    """An exclusive, non-blocking lock on ``<folder>/.run.lock`` for the life of a training.

    A second process that asks for it is refused at once (its message names the holder's pid).
    The lock file is removed on release, so a folder a run was refused from or failed in before
    writing anything still reads as bookkeeping only.
    """

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise RunFolderError(f"{self.path.parent}: another training (pid {holder}) is writing into this run "
                                     f"folder now; wait for it to finish, or give this run another folder "
                                     f"(leave hydra.run.dir out)") from None
            # the holder before us may have removed the file after we opened it: lock the live file
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: nobody can be holding it after us
        finally:
            os.close(self._fd)
            self._fd = None


def dataset_fingerprint(manifest: dict) -> str:
    """A short hash of what makes a prepared dataset's training data: its tables' checksums
    and its split rule (not its folder, which may move)."""
    blob = json.dumps({"files": manifest.get("files", {}), "split": manifest.get("split", {})}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_identity(model_target: str, manifest: dict, root: str | os.PathLike) -> dict[str, Any]:
    """What a checkpoint records of its run (``checkpoint[IDENTITY_KEY]``): the model class, the
    dataset (name, folder, fingerprint, sizes)."""
    return {"model": model_target, "dataset": manifest.get("name"), "dataset_root": str(root),
            "dataset_fingerprint": dataset_fingerprint(manifest),
            "num_users": int(manifest.get("num_users", -1)), "num_items": int(manifest.get("num_items", -1))}


def _short(target: str | None) -> str:
    return str(target).rsplit(".", 1)[-1]


def identity_of(state: dict, ckpt_path: str | os.PathLike) -> dict[str, Any] | None:
    """The run identity of a loaded checkpoint: recorded in it, or (older checkpoints) read from
    its run folder's ``config.yaml``; None when neither says."""
    if isinstance(state.get(IDENTITY_KEY), dict):
        return state[IDENTITY_KEY]
    run = resumed_run(str(ckpt_path))
    if run is None:
        return None
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(run / "config.yaml")
        return {"model": OmegaConf.select(cfg, "model.encoder._target_"),
                "dataset_root": OmegaConf.select(cfg, "dataset.root")}
    except Exception:  # noqa: BLE001 - an unreadable config says nothing; the shapes are still checked
        return None


def config_resume_problem(ckpt_path: str | None, model_target: str | None, state: dict | None = None) -> str | None:
    """The part of :func:`resume_problem` that needs no data (the Hydra callback runs it before
    Hydra writes into the checkpoint's run folder): the checkpoint's model class. ``state``: the
    loaded checkpoint (None: loaded here)."""
    if not ckpt_path or not Path(str(ckpt_path)).is_file() or model_target is None:
        return None
    if state is None:
        state = load_checkpoint(ckpt_path)
    found = identity_of(state, ckpt_path)
    if found and found.get("model") and found["model"] != model_target:
        return _model_message(ckpt_path, found["model"], model_target)
    return None


def _model_message(ckpt_path: Any, theirs: str, ours: str) -> str:
    return (f"ckpt_path={ckpt_path} is a checkpoint of {_short(theirs)} ({theirs}), but this configuration trains "
            f"{_short(ours)} ({ours}): resume with the run's own settings (nothing was written), or start afresh "
            f"with ckpt_path=null")


def load_checkpoint(ckpt_path: str | os.PathLike) -> dict:
    """``torch.load`` of a checkpoint on the CPU; an unreadable file is a :class:`RunFolderError`
    naming it."""
    import torch

    try:
        return torch.load(str(ckpt_path), map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - torch raises several types for a file that is not a checkpoint
        raise RunFolderError(f"ckpt_path={ckpt_path}: not a readable checkpoint ({type(err).__name__}: {err}); "
                             f"point it at a run's checkpoints/last.ckpt, or ckpt_path=null to start afresh") from err


def resume_problem(ckpt_path: str | os.PathLike, state: dict, identity: dict[str, Any],
                   expected_state: dict[str, Any]) -> str | None:
    """Why the checkpoint ``state`` (loaded from ``ckpt_path``) cannot continue a run with
    ``identity`` (:func:`run_identity`) and module state ``expected_state``, or None: another
    model class, another dataset (fingerprint, or folder for older checkpoints), other
    parameter names or shapes."""
    found = identity_of(state, ckpt_path) or {}
    if found.get("model") and found["model"] != identity["model"]:
        return _model_message(ckpt_path, found["model"], identity["model"])
    if "dataset_fingerprint" in found and found["dataset_fingerprint"] != identity["dataset_fingerprint"]:
        return (f"ckpt_path={ckpt_path} was trained on dataset {found.get('dataset')!r} ({found.get('dataset_root')}, "
                f"{found.get('num_users')} users x {found.get('num_items')} items), but this configuration trains on "
                f"{identity['dataset']!r} ({identity['dataset_root']}, {identity['num_users']} users x "
                f"{identity['num_items']} items): resume with the run's own dataset (nothing was written), or start "
                f"afresh with ckpt_path=null")
    if "dataset_fingerprint" not in found and found.get("dataset_root") \
            and not _same(found["dataset_root"], identity["dataset_root"]):
        return (f"ckpt_path={ckpt_path} was trained on the dataset in {found['dataset_root']}, but this configuration "
                f"trains on {identity['dataset_root']}: resume with the run's own dataset, or ckpt_path=null")
    theirs = state.get("state_dict", {})
    ours = {k: tuple(v.shape) for k, v in expected_state.items()}
    shapes = {k: tuple(v.shape) for k, v in theirs.items() if hasattr(v, "shape")}
    diffs = [f"{k}: {shapes.get(k, 'absent')} in the checkpoint, {ours.get(k, 'absent')} here"
             for k in sorted(set(ours) | set(shapes)) if shapes.get(k) != ours.get(k)]
    if diffs:
        more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
        return (f"ckpt_path={ckpt_path}: its weights do not fit this model ({'; '.join(diffs[:3])}{more}): resume "
                f"with the run's own model settings (nothing was written), or start afresh with ckpt_path=null")
    return None
