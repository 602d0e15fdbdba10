"""The C allocator under Python, told to keep less and give back what it no longer uses.

CPython takes objects up to 512 bytes from its own arenas and everything larger (the watch
cache's compressed entries, response bodies, JSON text) from the C library's malloc. glibc's
malloc gives every thread that allocates an arena of its own (up to eight per core), and frees
into them without returning pages to the kernel: after bursts, the 16 reconcile threads' arenas
and the main heap held tens of MiB of free memory in the operator's RSS (/proc/PID/smaps at
10,000 jobs). Two arenas are enough for threads that mostly wait on the API server, and
`malloc_trim` hands free pages back. Both are glibc's: elsewhere (musl) these do nothing.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("finetune_operator")

_M_ARENA_MAX = -8  # mallopt parameter (malloc.h)
ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)  # the symbols the process already has: its C library's
    except OSError:
        return None


def limit_arenas(arenas: int = ARENAS) -> bool:
    """At most `arenas` malloc arenas; call before the first thread starts. Whether it applied."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(ctypes.c_int(_M_ARENA_MAX), ctypes.c_int(arenas)))


def trim() -> bool:
    """Give the kernel back the free pages of every arena. Whether any were given back."""
    libc = _libc()
    malloc_trim = getattr(libc, "malloc_trim", None)
    if malloc_trim is None:
        return False
    return bool(malloc_trim(ctypes.c_size_t(0)))
