"""Keep glibc's malloc from holding on to memory the gateway has freed.

Every registration and login hashes a password with scrypt (n=2**14, r=8, p=5):
16 MiB that OpenSSL mallocs in a worker thread and frees a moment later.
glibc serves the first such request with mmap and unmaps it on free, but that
free also raises its *dynamic* mmap threshold to 16 MiB (and the trim
threshold to 32 MiB), so every later one comes from a heap arena and stays
resident after it is freed: the first registration made the gateway 16 MiB
larger for good (42 → 58 MiB in ``lowband bench homeserver``).

:func:`limit_retention` sets, through glibc's documented ``mallopt``:

* ``M_MMAP_THRESHOLD`` to 1 MiB, which turns the dynamic adjustment off:
  blocks of 1 MiB and more (scrypt's) are mmapped and go back to the kernel
  on free. Not glibc's default 128 KiB: asyncio reads a socket into a 256 KiB
  buffer, and at 128 KiB every read would be an mmap/munmap pair (measured
  with strace: one per request);
* ``M_TRIM_THRESHOLD`` to 2 MiB (twice the mmap threshold, as glibc's own
  dynamic rule does): below it, freed memory at the top of the heap is kept,
  so those 256 KiB buffers do not cost a ``brk`` each either;
* ``M_ARENA_MAX`` to 1: the database writer and the worker threads share the
  main arena instead of keeping one each (glibc's per-thread caches still
  serve small blocks without the lock). Must happen before threads start.

The environment variables glibc reads at start-up (``MALLOC_ARENA_MAX``,
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``) win: when any is set, nothing
is changed. On another C library nothing is done either.
"""

from __future__ import annotations

import os

MMAP_THRESHOLD = 1024 * 1024
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
ARENA_MAX = 1

# From glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_OVERRIDES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def limit_retention() -> str:
    """Apply the settings above to this process; a short description of what was done.

    Call before any thread starts. Never raises: a C library without
    ``mallopt`` (or one that refuses a setting) leaves the defaults.
    """
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        libc = ""
    if not libc.startswith("glibc"):
        return "not glibc: allocator defaults kept"
    if any(name in os.environ for name in _OVERRIDES):
        return "malloc settings from the environment kept"
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "no mallopt: allocator defaults kept"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = []
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1:
        done.append(f"mmap threshold {MMAP_THRESHOLD // 1024} KiB")
    if mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1:
        done.append(f"trim threshold {TRIM_THRESHOLD // 1024} KiB")
    if mallopt(_M_ARENA_MAX, ARENA_MAX) == 1:
        done.append(f"{ARENA_MAX} arena")
    return f"{libc}: " + (", ".join(done) if done else "mallopt refused; defaults kept")
