"""Checkpoints written whole or not at all."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mmrec.runs import RunFolderError
from mmrec.utils.files import write_failure


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with the file written under a temporary name, flushed to disk
    and renamed: a full disk or a killed process never leaves a truncated checkpoint under its
    final name (Lightning writes the final path directly), and the checkpoint it would have
    replaced stays. A failed write is a user error naming the file and the next step."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialised first: a write error is then a plain OSError
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(buffer.getbuffer())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise RunFolderError(f"{write_failure(path, err)}; continue from the last complete checkpoint with "
                                 f"ckpt_path={path.parent / 'last.ckpt'}") from err
