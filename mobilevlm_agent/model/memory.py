"""Keeping a quantised model's resident memory near its weights: glibc's heap otherwise holds on to freed temporaries
(the fp32 copy of each piece while it is quantised, the ViT's activations), and peak RSS counts every one of them."""
from __future__ import annotations

import ctypes
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, glibc's malloc.h
MMAP_THRESHOLD = 64 * 1024  # larger blocks get their own mapping, returned to the OS when freed


@functools.cache
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return None


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS now."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def limit_heap_retention() -> None:
    """From now on, blocks over 64 KiB are mapped on their own and unmapped when freed, and the heap top is trimmed
    eagerly. glibc would otherwise raise its mmap threshold after the first large free (up to 32 MiB) and keep ~100 MB
    of a 1.7B model's encode and prefill temporaries. Per-token decode tensors (a few KiB) are unaffected."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, 0)
