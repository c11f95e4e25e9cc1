"""Keep freed CPU memory inside the process, so large activations are not page-faulted in again every forward.

glibc's malloc serves every block above its mmap threshold (128 KiB, adapting up to at most 32 MiB) with fresh
pages from the kernel and returns them on free. A CNN forward at a high resolution allocates and frees tens of
such maps, so each forward pays a page fault per 4 KiB of activations: on this project's 2-core CPU linglo_t
took 748 ms at 2048² instead of 455 ms, and whole-model latency grew with an exponent of 1.14 instead of 1.00
from 512² to 2048² (timm peers: 1.18-1.30 instead of 0.99-1.05; docs/performance.md). Raising the mmap and trim
thresholds keeps freed blocks in the heap for reuse — the effect of MALLOC_MMAP_THRESHOLD_ /
MALLOC_TRIM_THRESHOLD_ in the environment, and the reason PyTorch's CPU launcher offers jemalloc/tcmalloc.
The cost: the process keeps its peak memory instead of returning it to the system.

Scope: glibc's main arena, i.e. tensors allocated by the main thread (where a Python program runs its forwards;
PyTorch's intra-op threads do not allocate the outputs). Forwards run from other Python threads, as in a threaded
server, are served by per-thread arenas that keep mapping large blocks afresh: preload jemalloc or tcmalloc there.
"""
from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["reuse_freed_memory", "allocator_state"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3    # glibc <malloc.h>
_LIMIT = 2 ** 31 - 1                              # mallopt takes an int: blocks up to 2 GiB are reused
_OLD_GLIBC_LIMIT = 32 * 2 ** 20                   # older glibc refuses an mmap threshold above 32 MiB
_reusing = False


def reuse_freed_memory() -> bool:
    """Make this process's malloc keep freed blocks up to 2 GiB for reuse (32 MiB on older glibc). The setting
    applies to the whole process and cannot be undone.

    Returns True when set (or already set), False where the C library has no glibc mallopt (macOS, Windows, musl)
    or refuses the thresholds: there use jemalloc/tcmalloc (LD_PRELOAD) for the same effect.
    """
    global _reusing
    if _reusing:
        return True
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    mmap_set = bool(mallopt(_M_MMAP_THRESHOLD, _LIMIT)) or bool(mallopt(_M_MMAP_THRESHOLD, _OLD_GLIBC_LIMIT))
    trim_set = bool(mallopt(_M_TRIM_THRESHOLD, _LIMIT))
    _reusing = mmap_set and trim_set
    return _reusing


def allocator_state() -> str:
    """'reuse' once reuse_freed_memory() has been set in this process, else 'system' (the C library's default)."""
    return "reuse" if _reusing else "system"
