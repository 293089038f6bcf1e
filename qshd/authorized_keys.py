"""Reading a user's authorized_keys with the user's rights, after sshd's StrictModes checks.

Its own module because it is the one part of a login decision that forks: the caller (the
connection's monitor, as root, or the in-process server, in an executor thread) forks a
short-lived reader that drops to the user before it looks at the path, so what the reader
may open, and how long it may take, is bounded here and nowhere else.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from common.accounts.key_options import KeyOptions, OptionError, parse_options, split_options
from common.accounts.keys import LINE_PREFIX, PublicKey, read_limited
from common.errors import InvalidInput

from . import children
from .account import Account

log = logging.getLogger("qshd")

#: Far beyond any real authorized_keys file (an ML-DSA-87 line is about 3.5 KB).
MAX_AUTHORIZED_KEYS = 4 * 1024 * 1024
#: Seconds the reader of an authorized_keys file may take (a home on a stalled network
#: file system); then it is killed and the key login refused.
READ_TIMEOUT = 10.0


class AuthorizedKeysError(Exception):
    """The file exists but may not be trusted or read; the message says why (for the log)."""


def _check_owner_and_mode(st: os.stat_result, what: str, path: str, uid: int, *,
                          allow_sticky: bool) -> None:
    if st.st_uid not in (0, uid):
        raise AuthorizedKeysError(f"bad ownership or modes for {what} {path}: "
                                  f"owned by uid {st.st_uid}")
    if st.st_mode & 0o022:
        # A root-owned sticky directory (/tmp) lets others add entries but never replace
        # ours, so it cannot be used to swap the file or a directory under it.
        if allow_sticky and st.st_mode & stat.S_ISVTX and st.st_uid == 0:
            return
        raise AuthorizedKeysError(f"bad ownership or modes for {what} {path}: "
                                  f"mode {stat.S_IMODE(st.st_mode):04o} is writable by "
                                  "group or others")


@dataclass(frozen=True, slots=True)
class AuthorizedKey:
    """One usable line of an authorized_keys file: the key and what its options allow."""

    key: PublicKey
    options: KeyOptions
    where: str  # "file:line", for the log

    def matches(self, other: PublicKey) -> bool:
        return self.key.matches(other)


#: What an accepted login carries to the user's process: the options of the key line that
#: let it in (none for a password).
NO_OPTIONS = KeyOptions()


def read_authorized_keys(path: Path, account: Account) -> list[AuthorizedKey] | None:
    """The keys in ``path``, read with ``account``'s rights after sshd's StrictModes checks;
    None if there is no file. Raises :class:`AuthorizedKeysError`.

    Malformed lines, and lines with an option qshd does not implement, are skipped and
    logged by number, as sshd skips them: one bad line must not lock the user out of
    every other key. Their content is never logged: the file may be a link to anything the
    user could read and the log could not."""
    data = _read_as_user(path, account)
    if data is None:
        return None
    keys: list[AuthorizedKey] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        line = raw.decode("utf-8", "replace").strip()
        if not line or line.startswith("#"):
            continue
        try:
            options_text, key_text = split_options(line, LINE_PREFIX)
            key, _comment = PublicKey.parse_line(key_text)
        except (OptionError, InvalidInput):
            log.info("%s: line %d: malformed key, skipped", path, number)
            continue
        try:
            options = parse_options(options_text) if options_text else NO_OPTIONS
        except OptionError as exc:
            log.info("%s: line %d: %s, skipped", path, number, exc)
            continue
        keys.append(AuthorizedKey(key, options, f"{path}:{number}"))
    return keys


#: The reader's answer: a tag byte, then the file, or an error message for the log.
_FOUND, _MISSING, _REFUSED = b"K", b"N", b"E"


def _read_as_user(path: Path, account: Account) -> bytes | None:
    """The file at ``path``, read in a child process that has the account's rights only
    (when we are root; otherwise ours, which are the account's or less).

    A fork, not a new interpreter: the interpreter may not be the user's to run, and a
    fork costs a millisecond or two. Between fork and _exit the child runs a few lines of
    our own and system calls: no logging, no import, no library that takes a lock, so
    the threads it did not inherit cannot have left it one held (CPython re-creates its
    own locks in the child)."""
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        raise AuthorizedKeysError(f"cannot read {path}: {exc.strerror}") from None
    if pid == 0:
        _reader(write_end, str(path), account)
    os.close(write_end)
    try:
        reply = _collect(read_end, pid, path)
    finally:
        os.close(read_end)
    tag, body = reply[:1], reply[1:]
    if tag == _FOUND:
        return body
    if tag == _MISSING:
        return None
    if tag == _REFUSED:
        raise AuthorizedKeysError(body.decode("utf-8", "replace"))
    raise AuthorizedKeysError(f"cannot read {path}: the reader failed")


def _collect(fd: int, pid: int, path: Path) -> bytes:
    """The reader's whole answer (bounded in size and time); the reader reaped."""
    limit = MAX_AUTHORIZED_KEYS + 1
    chunks: list[bytes] = []
    size = 0
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + READ_TIMEOUT
    done = False
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AuthorizedKeysError(f"cannot read {path}: timed out")
            if not poller.poll(remaining * 1000):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                done = True
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise AuthorizedKeysError(f"{path} is too large")
            chunks.append(chunk)
    finally:
        _reap_reader(pid, kill=not done)


def _reap_reader(pid: int, *, kill: bool) -> None:
    """Wait for the reader (ours and unreaped, so its pid is safe to signal); it has
    closed its end of the pipe, so it is exiting. One stuck in the kernel on a dead file
    server is left to a thread that waits for it."""
    if kill:
        os.kill(pid, signal.SIGKILL)
    try:
        if children.wait_exit(pid, 1.0) is not None:
            return
    except ChildProcessError:
        return
    os.kill(pid, signal.SIGKILL)
    threading.Thread(target=os.waitpid, args=(pid, 0), daemon=True,
                     name=f"reaper-{pid}").start()


def _reader(fd: int, path: str, account: Account) -> NoReturn:
    """The child: drop to the account, read, write the answer to ``fd``, exit."""
    code = 1
    try:
        os.closerange(3, fd)  # nothing of the daemon's (sockets, keys) stays open here
        os.closerange(fd + 1, os.sysconf("SC_OPEN_MAX"))
        if os.geteuid() == 0:
            os.setgroups(list(account.groups))
            os.setresgid(account.gid, account.gid, account.gid)
            os.setresuid(account.uid, account.uid, account.uid)
        answer = memoryview(_read_checked(path, account))
        while answer:
            answer = answer[os.write(fd, answer) :]
        code = 0
    except BaseException:  # noqa: S110  (the parent reports a reader that said nothing)
        pass
    finally:
        os._exit(code)


def _read_checked(path: str, account: Account) -> bytes:
    """In the child, as the user: the reader's answer for ``path``.

    Checks run on the real path (links resolved with the user's rights), on what lstat
    says is there (a FIFO or a device is refused before it is opened: opening either can
    block or act), on the opened descriptor (the same regular file), then on every
    directory above the file up to the user's home (or up to / for a file outside it)."""
    try:
        real = os.path.realpath(path)
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            return _MISSING
        except OSError as exc:
            raise AuthorizedKeysError(f"cannot open {real}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise AuthorizedKeysError(f"{real} is not a regular file")
        try:
            fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_NOCTTY)
        except OSError as exc:
            raise AuthorizedKeysError(f"cannot open {real}: {exc.strerror}") from None
        try:
            opened = os.fstat(fd)
            if (not stat.S_ISREG(opened.st_mode)
                    or (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino)):
                raise AuthorizedKeysError(f"{real} is not a regular file (it changed)")
            _check_owner_and_mode(opened, "file", real, account.uid, allow_sticky=False)
            home = os.path.realpath(account.home)
            directory = os.path.dirname(real)
            first = True
            while True:
                try:
                    dst = os.stat(directory)
                except OSError as exc:
                    raise AuthorizedKeysError(
                        f"cannot check {directory}: {exc.strerror}") from None
                _check_owner_and_mode(dst, "directory", directory, account.uid,
                                      allow_sticky=not first)
                first = False
                if directory in (home, "/"):
                    break
                directory = os.path.dirname(directory)
            data = read_limited(fd, MAX_AUTHORIZED_KEYS)
        finally:
            os.close(fd)
        if data is None:
            raise AuthorizedKeysError(f"{real} is too large")
        return _FOUND + data
    except AuthorizedKeysError as exc:
        return _REFUSED + str(exc).encode("utf-8", "replace")
    except OSError as exc:
        return _REFUSED + f"cannot read {path}: {exc.strerror}".encode("utf-8", "replace")

