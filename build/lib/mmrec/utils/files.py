"""File helpers shared by the prepared-dataset format and the serving bundle."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

#: write errors that mean "no space left" (EIO: what some network/FUSE filesystems give when full;
#: EFBIG: a file-size limit, a quota on one file)
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})


def write_failure(path: str | os.PathLike, err: OSError) -> str:
    """The message for a failed write of ``path``: "disk full at <path>: ..." for ENOSPC /
    EDQUOT / EIO / EFBIG, else the OS error and what to check. Every writer of mmrec resumes,
    so the next step is always to fix the cause and rerun."""
    if err.errno in _DISK_FULL:
        return (f"disk full at {path} ({os.strerror(err.errno)}): free space and rerun "
                f"(it resumes)")
    return (f"cannot write {path} ({err}); check free space and permissions of "
            f"{Path(path).parent}, then rerun (it resumes)")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in ``chunk``-byte blocks."""
    digest = hashlib.sha256()
    with open(Path(path), "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
