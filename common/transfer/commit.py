"""Putting a verified file in place: a temporary name (or none: O_TMPFILE) next to the
destination, fsync, an atomic rename, then mode and times; small files a batch at a time.
A module of its own because this is what commit threads run: plain file-system calls, no
peer, so what "never a wrong file" rests on reads in one place, with the umask new files
start from and the directory fsync that makes their renames durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import secrets
import stat

from common.channels.copy import FileEntry

PARTIAL = b"partial"
#: Files are written unnamed (O_TMPFILE) where the system allows, and named at the end
#: through /proc: a process killed mid-file then leaves nothing behind.
_ANONYMOUS = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")


def temp_name(name: bytes, suffix: bytes) -> bytes:
    """``.NAME.qcp-SUFFIX``, NAME shortened (with a hash of it) so the whole stays a
    valid component."""
    if len(name) > 200:
        name = name[:160] + hashlib.sha256(name).hexdigest()[:16].encode()
    return b"." + name + b".qcp-" + suffix


def partial_name(name: bytes) -> bytes:
    """Where ``--resume`` keeps an interrupted file: ``.NAME.qcp-partial``."""
    return temp_name(name, PARTIAL)


#: Commit jobs (fsync, rename: one big file, or a batch of small ones) in flight at once,
#: and the threads that run them.
MAX_COMMITS = 16
COMMIT_THREADS = 8
#: Files up to this size, not resumed, are taken whole into memory and checked by the
#: event loop, which then touches no file for them: creating, writing, fsync and rename
#: are a commit thread's, for a batch at a time. (Per file, a syscall in the event loop's
#: thread and a job handed to a thread each cost a wait for the GIL while commit threads
#: run; that, not the syscalls, was most of a small file's cost.)
SMALL = 64 * 1024
#: A batch of small files goes to a commit thread at this many files or bytes.
BATCH_FILES = 64
BATCH_BYTES = 1024 * 1024


class SmallFile:
    """A verified small file waiting for a commit thread."""

    __slots__ = ("data", "default", "display", "message", "mode", "name", "parent", "times")

    def __init__(self, parent: int, name: bytes, data: bytes, mode: int | None, default: int,
                 times: tuple[int, int] | None, message: FileEntry, display: bytes) -> None:
        self.parent = parent
        self.name = name
        self.data = data
        self.mode = mode  # -p: the source's; None: an existing destination's, else ``default``
        self.default = default
        self.times = times
        self.message = message
        self.display = display


def commit_batch(batch: list[SmallFile]) -> list[OSError | None]:
    """In a commit thread: each file of the batch, one result each (None: in place)."""
    results: list[OSError | None] = []
    for small in batch:
        try:
            _write_small(small)
        except OSError as exc:
            results.append(exc)
        else:
            results.append(None)
    return results


def _write_small(small: SmallFile) -> None:
    parent, name, mode = small.parent, small.name, small.mode
    if mode is None:  # keep an existing destination's mode; a directory is not replaced
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            mode = small.default
        else:
            if stat.S_ISDIR(st.st_mode):
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
            mode = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else small.default
    fd, temp = open_temp(parent, name)
    try:
        data = memoryview(small.data)
        position = 0
        while position < len(data):
            position += os.pwrite(fd, data[position:], position)
    except OSError:
        os.close(fd)
        if temp:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=parent)
        raise
    commit_file(fd, parent, temp, name, mode, small.times)


def open_temp(parent: int, name: bytes) -> tuple[int, bytes]:
    """A new file to write in the directory ``parent``: (fd, its temporary name, or b""
    when it has none: O_TMPFILE, where the filesystem allows)."""
    if _ANONYMOUS:
        try:
            fd = os.open(b".", os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o600,
                         dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
        else:  # no name until it is complete: even a killed process leaves nothing
            return fd, b""
    for _ in range(16):
        temp = temp_name(name, secrets.token_hex(4).encode())
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=parent)
        except FileExistsError:
            continue
        return fd, temp
    raise OSError(errno.EEXIST, "no free temporary name")


def commit_file(fd: int, parent: int, temp: bytes, name: bytes, mode: int,
                 times: tuple[int, int] | None) -> None:
    """In a commit thread: make the file durable, put it in place, then set its mode and
    times through the descriptor (the name may already be another file's again)."""
    try:
        try:
            os.fsync(fd)
            if not temp:  # anonymous (O_TMPFILE): named only now, next to its destination
                temp = _link_anonymous(fd, parent, name)
            os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=parent)
            raise
        os.chmod(fd, mode)
        if times is not None:
            os.utime(fd, ns=times)
    finally:
        os.close(fd)


def _link_anonymous(fd: int, parent: int, name: bytes) -> bytes:
    """Give an O_TMPFILE file a temporary name (linkat through /proc, which needs no
    privilege), to be renamed over the destination: a rename replaces atomically, a link
    cannot."""
    for _ in range(16):
        temp = temp_name(name, secrets.token_hex(4).encode())
        try:
            os.link(f"/proc/self/fd/{fd}", temp, dst_dir_fd=parent, follow_symlinks=True)
        except FileExistsError:
            continue
        return temp
    raise OSError(errno.EEXIST, "no free temporary name")


def current_umask() -> int:
    """The process's umask, read without setting it where Linux allows: setting it to learn
    it would, for an instant, apply to what other threads create, and to a session's
    shell forked in that instant (qshd's user process runs both)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


async def fsync_dir(fd: int) -> None:
    # an O_PATH descriptor, or a filesystem without directory fsync, refuses: harmless
    with contextlib.suppress(OSError):
        await asyncio.get_running_loop().run_in_executor(None, os.fsync, fd)
