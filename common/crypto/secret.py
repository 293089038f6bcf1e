"""Secrets in memory: processes that never dump them, and a buffer that zeroes itself.

Python cannot promise to erase every copy of a key: ``bytes`` are immutable, libraries
copy what they are given, the allocator reuses freed blocks without clearing them. What
the operating system can promise is that no other process, core file or swap device ever
sees the memory of the process that holds them. Two tools here, used by every qsh process
(SECURITY.md is the threat model):

* :func:`harden_process`, called first thing by qshd, and by qsh and qcp before their first
  secret (their core limit first thing, :func:`common.cli.no_core_dumps`): ``RLIMIT_CORE`` soft
  limit 0 (no core file, whatever crashes it; the hard limit is left so a user's shell may
  raise it again with ``ulimit -c``) and ``PR_SET_DUMPABLE`` 0 (no ptrace, no
  ``/proc/PID/mem``, no core, even for the same uid). The kernel resets DUMPABLE on every
  credential change and every exec, so a process that changes uid sets it again
  (qshd/privsep.py does).
* :class:`Secret`, a buffer of its own pages: ``memfd_secret`` memory where the kernel
  has it (locked, and not even in the kernel's direct map), otherwise anonymous pages
  ``mlock``-ed so they are never written to swap (best effort: an unprivileged process may
  be over ``RLIMIT_MEMLOCK``; :attr:`locked` says); ``MADV_DONTDUMP`` so they are left out
  of a core even where one is allowed; and
  zeroed (then unlocked and unmapped) by :meth:`Secret.close`. Every open secret is
  registered, and :func:`wipe_all` zeroes them all: the path every process runs on its way
  out (an exception, ``sys.exit``, SIGTERM/SIGHUP/SIGINT handled by the program, and the
  ``atexit`` hook installed by :func:`harden_process`).

Where a library takes only ``bytes`` (the signature and KEM backends, the AEAD
constructors), :meth:`Secret.bytes` hands it a copy that lives until the garbage
collector frees it: that copy is what the process-wide measures above protect.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import mmap
import os
import resource
import signal
import sys
import weakref

__all__ = ["Secret", "harden_process", "process_hardened", "scrub", "wipe_all",
           "wipe_on_signals"]

_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4
_PAGE = mmap.PAGESIZE

_libc_handle: ctypes.CDLL | None = None
_open: weakref.WeakSet[Secret] = weakref.WeakSet()
_atexit_installed = False


def libc() -> ctypes.CDLL:
    """libc through ctypes, loaded once, with the calls used here declared (prctl, mlock,
    munlock, syscall); qshd's privilege separation declares its own on the same handle."""
    global _libc_handle
    if _libc_handle is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                               ctypes.c_ulong]
        libc.prctl.restype = ctypes.c_int
        libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mlock.restype = ctypes.c_int
        libc.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.munlock.restype = ctypes.c_int
        libc.syscall.restype = ctypes.c_long
        _libc_handle = libc
    return _libc_handle


def harden_process() -> None:
    """No core file and no ptrace for this process, from now on; wipe every open
    :class:`Secret` at exit. Cheap (two system calls): called at the very start of each
    program, before the first secret exists. Failures are ignored on purpose: a platform
    without prctl still gets the core limit, and neither may stop a client from running."""
    global _atexit_installed
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    with contextlib.suppress(OSError, AttributeError):
        libc().prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    if not _atexit_installed:
        atexit.register(wipe_all)
        _atexit_installed = True


def process_hardened() -> bool:
    """Whether this process dumps no core and cannot be traced (for tests and ``-d``)."""
    return (resource.getrlimit(resource.RLIMIT_CORE)[0] == 0
            and libc().prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0) == 0)


def wipe_all() -> None:
    """Zero and free every open :class:`Secret`: a process's last act, however it ends."""
    for secret in list(_open):
        secret.close()


def wipe_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP,
                                                 signal.SIGINT)) -> None:
    """For a process whose signals would otherwise end it at once (SIG_DFL): wipe every
    open :class:`Secret` first, then die of the same signal (its parent sees the same wait
    status). A process that handles these signals itself exits through :func:`wipe_all`
    anyway (``atexit``, or its own exit path)."""
    def wipe_and_die(number: int, _frame: object) -> None:
        wipe_all()
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)

    for number in signals:
        signal.signal(number, wipe_and_die)


def _contents_offset(sample: bytes | str) -> int | None:
    """Where CPython keeps the characters of a ``bytes`` or an ASCII ``str`` object,
    checked on ``sample``; None on any other implementation or layout."""
    if sys.implementation.name != "cpython":
        return None
    offset = sys.getsizeof(type(sample)()) - 1
    raw = sample.encode("ascii") if isinstance(sample, str) else sample
    if ctypes.string_at(id(sample) + offset, len(raw)) != raw:
        return None
    return offset


_BYTES_OFFSET = _contents_offset(bytes(range(40, 80)))
_ASCII_OFFSET = _contents_offset("".join(chr(c) for c in range(40, 80)))


def scrub(data: bytes | bytearray | str) -> None:
    """Zero ``data`` in place: CPython only, for a ``bytes`` or an ASCII ``str`` (a key
    file's text) that the caller made and nobody else holds (a copy of a key a library
    needed as ``bytes``, a decoded key file, a KEM's shared secret); a ``bytearray`` on
    any interpreter. Anything else is left alone: on another interpreter, a str that is
    not ASCII, the shared empty and one-byte objects."""
    if type(data) is bytearray:
        if data:
            ctypes.memset((ctypes.c_char * len(data)).from_buffer(data), 0, len(data))
        return
    if len(data) < 2:
        return
    if type(data) is bytes and _BYTES_OFFSET is not None:
        ctypes.memset(id(data) + _BYTES_OFFSET, 0, len(data))
    elif type(data) is str and _ASCII_OFFSET is not None and data.isascii():
        ctypes.memset(id(data) + _ASCII_OFFSET, 0x30, len(data))  # still valid ASCII


#: memfd_secret(2): the same number on every architecture that has it (Linux 5.14+).
_SYS_MEMFD_SECRET = 447
_memfd_secret_works = sys.platform.startswith("linux")


def _secret_memory(length: int) -> mmap.mmap | None:
    """``length`` bytes of memfd_secret memory: locked, never dumped, and removed from the
    kernel's own direct map, so not even a kernel bug that reads arbitrary memory through
    it finds them. None where the kernel lacks it (or has it off: ``secretmem.enable``),
    remembered so the system call is tried once per process."""
    global _memfd_secret_works
    if not _memfd_secret_works:
        return None
    try:
        fd = int(libc().syscall(_SYS_MEMFD_SECRET, 0))
    except (OSError, AttributeError):
        fd = -1
    if fd < 0:
        _memfd_secret_works = False
        return None
    try:
        os.ftruncate(fd, length)
        return mmap.mmap(fd, length)
    except (OSError, ValueError):  # over RLIMIT_MEMLOCK, say: ordinary pages then
        return None
    finally:
        os.close(fd)


class Secret:
    """Secret bytes in locked pages of their own, zeroed by :meth:`close`.

    ``Secret(data)`` copies ``data`` in (the caller drops or overwrites its own copy);
    :meth:`view` reads it without copying, :meth:`bytes` makes a ``bytes`` copy for a
    library that takes nothing else. Closed twice is fine; reading a closed secret raises
    ValueError. A context manager, and closed when collected.
    """

    __slots__ = ("__weakref__", "_address", "_map", "_owner", "_size", "locked")

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        source = memoryview(data).cast("B")
        self._size = len(source)
        length = max(_PAGE, -(-self._size // _PAGE) * _PAGE)
        self._map: mmap.mmap | None = _secret_memory(length)
        self.locked = self._map is not None  # memfd_secret's pages are locked by the kernel
        #: memfd_secret's pages are shared with a child forked later: only this process
        #: zeroes them (the child's close just drops its mapping).
        self._owner = os.getpid() if self._map is not None else 0
        if self._map is None:
            self._map = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        anchor = ctypes.c_char.from_buffer(self._map)
        self._address = ctypes.addressof(anchor)
        del anchor  # an exported buffer would keep close() from unmapping
        with contextlib.suppress(OSError, AttributeError, ValueError):
            self._map.madvise(mmap.MADV_DONTDUMP)
        if not self.locked:
            with contextlib.suppress(OSError, AttributeError):
                self.locked = libc().mlock(self._address, length) == 0
        self._map[:self._size] = source
        _open.add(self)

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:  # never the contents
        state = "closed" if self._map is None else f"{self._size} bytes"
        return f"<Secret {state}>"

    def __enter__(self) -> Secret:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._map is None

    @property
    def address(self) -> int:
        """Where the bytes are (tests read the memory back after :meth:`close`)."""
        return self._address

    def view(self) -> memoryview:
        """The bytes, without a copy; valid until :meth:`close` (do not keep it)."""
        if self._map is None:
            raise ValueError("secret is closed")
        return memoryview(self._map)[:self._size].toreadonly()

    def bytes(self) -> bytes:
        """A ``bytes`` copy, for a library that accepts nothing else: that copy cannot be
        wiped and lives until it is collected (see the module docstring)."""
        if self._map is None:
            raise ValueError("secret is closed")
        return self._map[:self._size]

    def close(self) -> None:
        """Zero the bytes, unlock and unmap the pages. Idempotent."""
        map_, self._map = self._map, None
        if map_ is None:
            return
        _open.discard(self)
        if not self._owner or self._owner == os.getpid():
            ctypes.memset(self._address, 0, len(map_))
        if self.locked:
            with contextlib.suppress(OSError):
                libc().munlock(self._address, len(map_))
        with contextlib.suppress(BufferError):
            map_.close()  # a view() still held keeps the (zeroed) pages mapped until it goes
