"""Session accounting: utmp, wtmp and lastlog records for PTY sessions, so that ``who``,
``w``, ``last`` and ``lastlog`` show qsh logins as they show sshd's (Linux, glibc's format).

What is written, as login(1) and sshd write it:

* at login, a ``USER_PROCESS`` record (tty line without ``/dev/``, the session leader's pid
  and session id, user, client address as text and as ``ut_addr_v6``, time) into utmp
  (who is logged in now), replacing the record of the same line if there is one, and
  appended to wtmp (the history ``last`` reads); and the user's lastlog record (time,
  line, host at offset ``uid * 292``), whose previous content is returned so the caller can
  print "Last login: ..." as sshd does;
* at logout, a ``DEAD_PROCESS`` record with the same line and id and no user or host:
  over the login's utmp slot (only if that slot still belongs to this login's pid: a newer
  session on the same tty is left alone) and appended to wtmp, where ``last`` pairs it with
  the login by line.

The records are written here with :mod:`struct` in glibc's on-disk ``struct utmp`` layout
(384 bytes on every Linux ABI glibc supports, x86_64 and aarch64 included: times and the
session id are 32-bit there by design, ``__WORDSIZE_TIME64_COMPAT32``, so 32- and 64-bit
programs share the files) and ``struct lastlog`` (292 bytes), rather than through libc's
``pututxline``/``updwtmpx``/``utmpxname`` via ctypes, because those keep one process-wide
file name and read position and wait for the file lock with a SIGALRM timer (glibc's
manual marks them MT-Unsafe ``race:utent``, ``sig:ALRM``, ``timer``): in a threaded daemon
that also handles its own signals, and with file names that tests point elsewhere, a
private implementation with the path as an argument is the safer one. It takes the same
locks as glibc (an exclusive ``fcntl`` lock on the whole utmp or wtmp file, waited for at
most :data:`LOCK_TIMEOUT` seconds), so it cooperates with login, sshd and systemd writing
the same files, and it keeps wtmp a whole number of records (a torn tail is overwritten, a
short write truncated away) as glibc does.

Accounting never stops a login: a missing file (containers often have no utmp) means that
file is not kept, and any failure (permissions, a lock held too long, a full disk) is
logged once per file and kind of problem, then only at debug level. The calls block on
file I/O for at most about :data:`LOCK_TIMEOUT` seconds each: call them from a thread or
from a process of their own (the privileged monitor), not from the event loop.

:func:`set_loginuid` sets the session leader's audit login uid, as pam_loginuid does for
sshd: ``last`` relies on it to tell a live login from a stale record.

Only regular files are opened (``O_NOFOLLOW``, no FIFO or device that could block us), and
none is created: whether the system keeps these records is the administrator's choice
(the files are created by the boot scripts or the package that wants them).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger("qshd")
_T = TypeVar("_T")

UTMP_PATH = "/var/run/utmp"
WTMP_PATH = "/var/log/wtmp"
LASTLOG_PATH = "/var/log/lastlog"

# ut_type values (<bits/utmp.h>)
EMPTY = 0
RUN_LVL = 1
BOOT_TIME = 2
NEW_TIME = 3
OLD_TIME = 4
INIT_PROCESS = 5
LOGIN_PROCESS = 6
USER_PROCESS = 7
DEAD_PROCESS = 8

UT_LINESIZE = 32
UT_IDSIZE = 4
UT_NAMESIZE = 32
UT_HOSTSIZE = 256

#: struct utmp: short ut_type (+2 padding), pid_t ut_pid, char ut_line[32], char ut_id[4],
#: char ut_user[32], char ut_host[256], struct exit_status {short e_termination, e_exit},
#: int32 ut_session, struct {int32 tv_sec, tv_usec} ut_tv, int32 ut_addr_v6[4],
#: char __glibc_reserved[20]. Native byte order, as the C library writes it.
UTMP_RECORD = struct.Struct("=h2xi32s4s32s256shhiii16s20x")
#: struct lastlog: int32 ll_time, char ll_line[32], char ll_host[256].
LASTLOG_RECORD = struct.Struct("=i32s256s")
assert UTMP_RECORD.size == 384 and LASTLOG_RECORD.size == 292

#: How long to wait for another writer's lock on a file before giving up on that record.
LOCK_TIMEOUT = 1.0
#: utmp holds one record per line (terminal) ever used since boot: a few hundred at most.
#: Past this many records the file is not searched further (a new login is appended).
MAX_UTMP_RECORDS = 16384
_READ_CHUNK = 64  # records per read while searching utmp


@dataclass(frozen=True, slots=True)
class UtmpRecord:
    """One ``struct utmp``, with its strings decoded (invalid UTF-8 replaced)."""

    type: int
    pid: int
    line: str
    id: bytes
    user: str
    host: str
    exit_termination: int = 0
    exit_status: int = 0
    session: int = 0
    seconds: int = 0
    microseconds: int = 0
    addr: bytes = bytes(16)

    def pack(self) -> bytes:
        return UTMP_RECORD.pack(
            self.type, self.pid, _field(self.line, UT_LINESIZE), self.id[:UT_IDSIZE],
            _field(self.user, UT_NAMESIZE), _field(self.host, UT_HOSTSIZE),
            self.exit_termination, self.exit_status, _int32(self.session),
            _int32(self.seconds), self.microseconds, self.addr[:16])

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> UtmpRecord:
        (type_, pid, line, id_, user, host, term, exit_, session, sec, usec,
         addr) = UTMP_RECORD.unpack(data)
        return cls(type_, pid, _text(line), bytes(id_).rstrip(b"\0"), _text(user),
                   _text(host), term, exit_, session, sec, usec, bytes(addr))


@dataclass(frozen=True, slots=True)
class LastlogEntry:
    """A user's last login as lastlog keeps it (``seconds`` is the Unix time)."""

    seconds: int
    line: str
    host: str

    def pack(self) -> bytes:
        return LASTLOG_RECORD.pack(_int32(self.seconds), _field(self.line, UT_LINESIZE),
                                   _field(self.host, UT_HOSTSIZE))

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> LastlogEntry | None:
        """None for a never-written (all zero) record."""
        seconds, line, host = LASTLOG_RECORD.unpack(data)
        if seconds == 0 and not line.strip(b"\0") and not host.strip(b"\0"):
            return None
        return cls(seconds, _text(line), _text(host))


@dataclass(frozen=True, slots=True)
class AccountingFiles:
    """Where records go; None leaves that file out (tests point these at temporary files)."""

    utmp: str | None = UTMP_PATH
    wtmp: str | None = WTMP_PATH
    lastlog: str | None = LASTLOG_PATH


SYSTEM_FILES = AccountingFiles()


@dataclass(frozen=True, slots=True)
class Login:
    """A PTY session as accounting sees it. ``tty`` is the slave's path (``/dev/pts/3``) or
    line (``pts/3``); ``pid`` the session leader (the user's shell), which ``who`` checks is
    alive; ``host`` the client's address as text; ``session`` the session id (the leader's
    pid after setsid; 0 takes ``pid``)."""

    user: str
    uid: int
    tty: str
    pid: int
    host: str
    session: int = 0

    @property
    def line(self) -> str:
        return self.tty.removeprefix("/dev/")

    @property
    def id(self) -> bytes:
        """ut_id: the line's last four bytes (``pts/3`` -> ``ts/3``), as sshd derives it, so
        a later login on the same tty, by us or by sshd, reuses the same utmp slot."""
        return self.line.encode("utf-8", "replace")[-UT_IDSIZE:]


def _field(text: str, size: int) -> bytes:
    """NUL-padded by struct; a full field has no terminating NUL, as in C (nonstring)."""
    return text.encode("utf-8", "replace")[:size]


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _int32(value: int) -> int:
    """Wrap into int32: the on-disk times are 32-bit (they wrap in 2038 for every writer)."""
    return (value + 2**31) % 2**32 - 2**31


def address_bytes(host: str) -> bytes:
    """ut_addr_v6: an IPv4 address in the first 4 bytes, IPv6 in all 16, network order;
    zeros for anything else (a name, "unknown"). IPv4-mapped IPv6 is stored as IPv4."""
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return bytes(16)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.packed.ljust(16, b"\0")


def login_record(login: Login, now: float) -> UtmpRecord:
    seconds = int(now)
    return UtmpRecord(USER_PROCESS, login.pid, login.line, login.id, login.user, login.host,
                      session=login.session or login.pid, seconds=seconds,
                      microseconds=int((now - seconds) * 1_000_000) % 1_000_000,
                      addr=address_bytes(login.host))


def logout_record(login: Login, now: float, *, exit_status: int = 0,
                  signal: int = 0) -> UtmpRecord:
    seconds = int(now)
    return UtmpRecord(DEAD_PROCESS, login.pid, login.line, login.id, "", "",
                      exit_termination=signal, exit_status=exit_status,
                      session=login.session or login.pid, seconds=seconds,
                      microseconds=int((now - seconds) * 1_000_000) % 1_000_000)


# ---------------------------------------------------------------------------------------------
# Reporting: once per file and kind of problem

_reported: set[tuple[str, str]] = set()
_report_lock = threading.Lock()


def _report(path: str, kind: str, message: str, *, level: int = logging.WARNING) -> None:
    with _report_lock:
        first = (path, kind) not in _reported
        _reported.add((path, kind))
    log.log(level if first else logging.DEBUG,
            "session accounting: %s: %s%s", path, message,
            " (reported once)" if first else "")


# ---------------------------------------------------------------------------------------------
# Files

#: fcntl locks belong to the process, so threads of one process do not exclude each other
#: with them; this does.
_thread_lock = threading.Lock()


class _Missing(Exception):
    pass


@contextlib.contextmanager
def _open(path: str, flags: int) -> Iterator[int]:
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise _Missing from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError("not a regular file")
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(fd: int, timeout: float, length: int = 0, start: int = 0) -> Iterator[None]:
    """An exclusive fcntl lock (glibc's kind) on the file or a range, waited for by polling
    so that no signal timer is needed; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start)
            break
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held by another
            if time.monotonic() >= deadline:
                raise TimeoutError(f"lock held by another process for {timeout} s") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
    try:
        yield
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN, length, start)


def _find_slot(fd: int, record: UtmpRecord, owner_pid: int | None) -> int | None:
    """Offset of the utmp record for ``record``'s line id (of a process type), and with
    ``owner_pid`` only if that record is still that pid's USER_PROCESS; None if there is
    none."""
    size = os.fstat(fd).st_size
    count = min(size // UTMP_RECORD.size, MAX_UTMP_RECORDS)
    size_each = UTMP_RECORD.size
    for first in range(0, count, _READ_CHUNK):
        n = min(_READ_CHUNK, count - first)
        chunk = os.pread(fd, n * size_each, first * size_each)
        for i in range(len(chunk) // size_each):
            raw = chunk[i * size_each:(i + 1) * size_each]
            type_, pid = struct.unpack_from("=h2xi", raw)
            if type_ not in (INIT_PROCESS, LOGIN_PROCESS, USER_PROCESS, DEAD_PROCESS):
                continue
            if raw[40:44].rstrip(b"\0") != record.id:
                continue
            if owner_pid is not None and (type_ != USER_PROCESS or pid != owner_pid):
                return None
            return (first + i) * size_each
    return None


def _write_utmp(path: str, record: UtmpRecord, owner_pid: int | None, timeout: float) -> None:
    data = record.pack()
    with _open(path, os.O_RDWR) as fd, _thread_lock, _locked(fd, timeout):
        offset = _find_slot(fd, record, owner_pid)
        if offset is None:
            if owner_pid is not None:
                return  # logout: the slot was reused or never written; nothing to end
            size = os.fstat(fd).st_size
            offset = min(size, MAX_UTMP_RECORDS * UTMP_RECORD.size)
            offset -= offset % UTMP_RECORD.size
        if os.pwrite(fd, data, offset) != len(data):
            raise OSError("short write")


def _append_wtmp(path: str, record: UtmpRecord, timeout: float) -> None:
    data = record.pack()
    with _open(path, os.O_WRONLY) as fd, _thread_lock, _locked(fd, timeout):
        size = os.fstat(fd).st_size
        offset = size - size % UTMP_RECORD.size  # over a crashed writer's torn record
        try:
            written = os.pwrite(fd, data, offset)
        except OSError:
            os.ftruncate(fd, offset)  # never leave a partial record behind
            raise
        if written != len(data):
            os.ftruncate(fd, offset)
            raise OSError("short write")


def _update_lastlog(path: str, uid: int, entry: LastlogEntry,
                    timeout: float) -> LastlogEntry | None:
    offset = uid * LASTLOG_RECORD.size
    with _open(path, os.O_RDWR) as fd, _thread_lock, \
            _locked(fd, timeout, LASTLOG_RECORD.size, offset):
        raw = os.pread(fd, LASTLOG_RECORD.size, offset)
        previous = LastlogEntry.unpack(raw) if len(raw) == LASTLOG_RECORD.size else None
        data = entry.pack()
        if os.pwrite(fd, data, offset) != len(data):
            raise OSError("short write")
    return previous


def _guard(path: str, what: str, action: Callable[[], _T]) -> _T | None:
    """Run one file's update; any failure is reported (once) and swallowed."""
    try:
        return action()
    except _Missing:
        _report(path, "missing", f"does not exist; {what} not recorded", level=logging.INFO)
    except TimeoutError as exc:
        _report(path, "lock", f"{exc}; {what} not recorded")
    except OSError as exc:
        _report(path, f"errno{exc.errno}", f"{exc.strerror or exc}; {what} not recorded")
    except Exception as exc:  # never let accounting end a login
        _report(path, type(exc).__name__, f"{exc!r}; {what} not recorded")
    return None


def _supported() -> bool:
    if sys.platform.startswith("linux"):
        return True
    _report("utmp", "platform", f"not kept on {sys.platform}", level=logging.INFO)
    return False


def record_login(login: Login, now: float, files: AccountingFiles = SYSTEM_FILES, *,
                 lock_timeout: float = LOCK_TIMEOUT) -> LastlogEntry | None:
    """Record a PTY login in utmp, wtmp and lastlog; return the user's previous lastlog
    entry (None if there was none or lastlog is not kept). Never raises for a file
    problem."""
    if not _supported():
        return None
    record = login_record(login, now)
    utmp, wtmp = files.utmp, files.wtmp
    if utmp:
        _guard(utmp, "login", lambda: _write_utmp(utmp, record, None, lock_timeout))
    if wtmp:
        _guard(wtmp, "login", lambda: _append_wtmp(wtmp, record, lock_timeout))
    if not files.lastlog:
        return None
    entry = LastlogEntry(int(now), login.line, login.host)
    lastlog = files.lastlog
    return _guard(lastlog, "login",
                  lambda: _update_lastlog(lastlog, login.uid, entry, lock_timeout))


def record_logout(login: Login, now: float, files: AccountingFiles = SYSTEM_FILES, *,
                  exit_status: int = 0, signal: int = 0,
                  lock_timeout: float = LOCK_TIMEOUT) -> None:
    """Record the end of a PTY login in utmp (only over this login's own slot) and wtmp.
    ``exit_status``/``signal`` describe how the session leader ended. Never raises for a
    file problem."""
    if not _supported():
        return
    record = logout_record(login, now, exit_status=exit_status, signal=signal)
    utmp, wtmp = files.utmp, files.wtmp
    if utmp:
        _guard(utmp, "logout", lambda: _write_utmp(utmp, record, login.pid, lock_timeout))
    if wtmp:
        _guard(wtmp, "logout", lambda: _append_wtmp(wtmp, record, lock_timeout))


def set_loginuid(uid: int) -> bool:
    """Set the audit login uid of the calling process (``/proc/self/loginuid``), as
    pam_loginuid does for sshd: ``last`` tells a live login from a stale record by comparing
    the session leader's loginuid with the user's uid ("still logged in" rather than "gone -
    no logout"), and the audit log attributes what the session does to the user. Call it in
    the session leader before it drops root (it needs CAP_AUDIT_CONTROL); children inherit
    it. Best effort: False (logged once) where the kernel has no audit support or refuses
    (a container without the capability, an immutable loginuid)."""
    try:
        fd = os.open("/proc/self/loginuid", os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        _report("/proc/self/loginuid", f"open{exc.errno}", f"{exc.strerror}; not set",
                level=logging.INFO)
        return False
    try:
        os.write(fd, str(uid).encode())
    except OSError as exc:
        _report("/proc/self/loginuid", f"write{exc.errno}", f"{exc.strerror}; not set",
                level=logging.INFO)
        return False
    finally:
        os.close(fd)
    return True


def read_utmp(path: str, *, limit: int = MAX_UTMP_RECORDS) -> list[UtmpRecord]:
    """The records of a utmp or wtmp file (at most ``limit``; a torn tail is ignored; none
    if the file is missing)."""
    try:
        with _open(path, os.O_RDONLY) as fd:
            data = os.pread(fd, limit * UTMP_RECORD.size, 0)
    except _Missing:
        return []
    whole = len(data) - len(data) % UTMP_RECORD.size
    return [UtmpRecord.unpack(data[i:i + UTMP_RECORD.size])
            for i in range(0, whole, UTMP_RECORD.size)]


def read_lastlog(path: str, uid: int) -> LastlogEntry | None:
    """The user's lastlog entry, None if never written (or the file is missing)."""
    try:
        with _open(path, os.O_RDONLY) as fd:
            raw = os.pread(fd, LASTLOG_RECORD.size, uid * LASTLOG_RECORD.size)
    except _Missing:
        return None
    return LastlogEntry.unpack(raw) if len(raw) == LASTLOG_RECORD.size else None


__all__ = [
    "LASTLOG_PATH",
    "SYSTEM_FILES",
    "UTMP_PATH",
    "WTMP_PATH",
    "AccountingFiles",
    "LastlogEntry",
    "Login",
    "UtmpRecord",
    "address_bytes",
    "login_record",
    "logout_record",
    "read_lastlog",
    "read_utmp",
    "record_login",
    "record_logout",
    "set_loginuid",
]
