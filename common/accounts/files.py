"""Bounded reads and atomic writes of the small files an account keeps: key files,
known_hosts, the password file. A module of its own because known_hosts and passwd use it as
much as the key classes do, and because how a file is written so that a crash leaves the old
one or the new one (O_EXCL, fsync, rename) is a concern apart from what the file holds.

Files are written atomically (temporary file in the same directory, fsync, rename, fsync of the
directory), so a crash or a full disk never leaves a half-written key where the old one was.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from common.crypto.secret import scrub

#: Bigger than any private key file we write; bounds what load() reads from disk.
MAX_KEY_FILE = 1024 * 1024


class KeyFileError(Exception):
    """A key or known_hosts file could not be read, written or understood.

    Not a :class:`~common.errors.QsmpError`: it is a problem with a local file, never a
    protocol event, and nothing about it goes on the wire. ``str()`` is one line, fit to
    print after the program's name.
    """


def read_text(path: str | os.PathLike[str], limit: int, *, private: bool = False) -> str:
    """Read a small text file; with ``private``, refuse it if group or others can access it.

    The mode is checked on the opened descriptor, not the path, so the file cannot be swapped
    between the check and the read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path}: not a regular file")
        if private and st.st_mode & 0o077:
            raise KeyFileError(
                f"permissions {stat.S_IMODE(st.st_mode):04o} for {path} are too open: a private"
                f" key must not be accessible by group or others (chmod 600 {path})"
            )
        data = read_limited(fd, limit) if st.st_size <= limit else None
        if data is None:
            raise KeyFileError(f"{path}: file too large for a key file")
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: malformed key file: not UTF-8 text") from None
    finally:
        scrub(data)  # the file's bytes: the caller gets the text


def read_limited(fd: int, limit: int) -> bytes | None:
    """All of ``fd``, or None as soon as it exceeds ``limit`` bytes: a file that grows while
    we read (or lies in fstat) still cannot make us hold more than the limit."""
    chunks: list[bytes] = []
    size = 0
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return None
    return b"".join(chunks)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` so that readers see the old file or the new one, never
    a mixture, and a failure at any step leaves the old file untouched.

    The temporary file is created with O_EXCL and ``mode`` from the start, so a private key is
    never readable by others, not even for an instant. A path that exists as anything but a
    regular file or a symlink (a device, a FIFO, a directory) is refused, never replaced.
    Raises KeyFileError.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    try:
        kind = stat.S_IFMT(target.lstat().st_mode)
    except FileNotFoundError:
        kind = stat.S_IFREG
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from exc
    if kind not in (stat.S_IFREG, stat.S_IFLNK):
        # The rename would put a regular file in the place of a device or FIFO: with
        # ``UserKnownHostsFile=/dev/null`` (an ssh idiom), root's /dev/null for everyone.
        raise KeyFileError(f"cannot write {path}: not a regular file")
    tmp = directory / f".{target.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, mode)
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed a 0644 .pub file
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise KeyFileError(f"cannot write {path}: {exc.strerror or exc}") from exc
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable. Best effort: some filesystems refuse it."""
    try:
        dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(dfd)
    finally:
        os.close(dfd)
