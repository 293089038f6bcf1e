"""Process memory the adapter manages: the shared receive buffer and glibc's malloc
thresholds (why each is so is in its docstring)."""

from __future__ import annotations

import asyncio
import gc
import itertools
import mmap
import os
import sys
import weakref

from common.aio.limits import RECEIVE_BUFFER_SIZE

#: glibc malloc settings applied by :func:`tune_allocator`.
MALLOC_MMAP_THRESHOLD = 32 * 1024 * 1024
MALLOC_TRIM_THRESHOLD = 64 * 1024 * 1024

_ids = itertools.count(1)
_receive_buffers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, memoryview] = (
    weakref.WeakKeyDictionary()
)


def receive_buffer(loop: asyncio.AbstractEventLoop) -> memoryview:
    """The loop's shared receive buffer. Sharing is safe because the selector loop calls
    ``get_buffer``, ``recv_into`` and ``buffer_updated`` back to back, and the core copies
    what it keeps during ``buffer_updated``. Windows' proactor loop receives into buffers
    in the background, so there each connection gets its own."""
    if sys.platform == "win32":
        return memoryview(bytearray(RECEIVE_BUFFER_SIZE))
    buf = _receive_buffers.get(loop)
    if buf is None:
        # Anonymous memory, not a bytearray: a bytearray is zero-filled at once, 4 MiB of
        # private memory in every process (an idle session, a one-shot client) before a
        # byte arrives; these pages are only made real as data is received into them.
        buf = memoryview(mmap.mmap(-1, RECEIVE_BUFFER_SIZE))
        _receive_buffers[loop] = buf
    return buf


_allocator_tuned = False


def tune_allocator() -> None:
    """Keep glibc's malloc from returning record-sized buffers to the kernel after each use.

    Every record costs the core a few buffers of its size (plaintext, ciphertext, the data
    handed to the application). glibc serves blocks over its adaptive mmap threshold with
    fresh mmaps and trims the heap top eagerly, so at 1-2 GB/s the process spends as much
    time in page faults as in AES-GCM (measured: 300k minor faults per GiB sent, 0.85 s of
    CPU per GiB; 10k faults and 0.4 s once tuned). A fixed 32 MiB mmap threshold and a
    64 MiB trim threshold keep those blocks in the heap for reuse; the cost is that up to
    64 MiB of freed heap may stay resident. Process-wide, idempotent, a no-op off glibc;
    :func:`connect` and :func:`serve` call it. Set ``QSH_NO_MALLOC_TUNING=1`` to skip it.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return
    _allocator_tuned = True
    if os.environ.get("QSH_NO_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return  # not glibc (musl has no mallopt)
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)
    mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD)


def release_free_memory() -> None:
    """Give the C heap's free pages back to the kernel (``malloc_trim``), for a long-lived
    process that has just dropped what it needed only to start: what stays private in an
    idle session's processes is then what they still use. A no-op off glibc."""
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
