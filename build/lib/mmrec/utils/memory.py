"""Process-level memory allocator settings for CPU training."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

# glibc's mallopt() parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory(trim_threshold_bytes: int = 1 << 30) -> bool:
    """Make glibc's ``malloc`` reuse freed memory instead of handing it back to the kernel.

    By default glibc serves every allocation above 32 MB (and, adaptively, smaller ones) with
    a fresh ``mmap`` and unmaps it on free, so a training step that allocates the same large
    tensors every time pays a page fault per 4 KB page on first touch, every step. Measured
    here (2-core VM): gathering 3,097 rows of a [7050, 4096] float tensor takes 34 ms into a
    fresh tensor and 5.6 ms into a reused one. With mmap disabled (``M_MMAP_MAX = 0``) and
    up to ``trim_threshold_bytes`` of free memory kept at the top of the heap, freed blocks are
    reused. The process's resident memory then stays at its peak rather than shrinking
    between steps; the peak itself is unchanged.

    Returns whether the settings were applied (``False`` off glibc, e.g. macOS or musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only  # noqa: B018
    except (OSError, AttributeError):
        return False
    threshold = min(int(trim_threshold_bytes), 2 ** 31 - 1)  # mallopt takes a C int
    applied = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, threshold) == 1
    if not applied:
        log.warning("glibc mallopt() refused the allocator settings; training continues with the defaults.")
    return applied
