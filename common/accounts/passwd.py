"""qshd's own password file: one ``name:bcrypt-hash`` line per user, like htpasswd or hkexsh.

qshd does not read ``/etc/shadow``: a separate file lets an administrator give remote access
to a subset of accounts, with passwords that differ from the local ones, and lets an
unprivileged daemon have password logins at all. The account a name maps to is still the
system account of the same name; this file only says which password opens it.

Format::

    # comments and blank lines are kept when the file is rewritten
    alice:$2b$12$<22 salt chars><31 hash chars>

* User names are 1-32 characters, ``[a-z_][a-z0-9_.-]*``, case-sensitive: the portable
  subset of POSIX login names, so a name can never smuggle a ``:``, a newline or a path.
* Hashes are bcrypt (``$2a$``, ``$2b$`` or ``$2y$``, cost 4-31); the cost is stored in each
  hash, so raising the default only affects passwords set afterwards.
* Anything else is a :class:`PasswdFileError` naming ``file:line``, and a file that could not
  be parsed is never rewritten: dropping the lines we did not understand would lose users.

bcrypt reads only the first 72 bytes of a password and ignores the rest. Rather than pre-hash
(which would make our hashes unreadable to every other bcrypt tool) we refuse a longer
password when it is set, and :meth:`PasswdFile.verify` never accepts one, so a password
cannot silently mean less than the user typed.

Edits are read-modify-write under an exclusive ``flock`` on ``<file>.lock`` and land with an
atomic rename (:func:`common.accounts.files.atomic_write`), so two concurrent ``qpasswd``
runs cannot lose each other's change, and a reader -- qshd -- sees the old file or the new
one, never a torn one. The lock lives in a separate file because the rename replaces the
passwd file's inode: a lock taken on the old inode would not exclude a process that opened
the new one. The lock file is never removed (removing it would reopen exactly that race).

File I/O is fine under the sans-IO rule; this module never reads the clock, sleeps or opens
a socket. bcrypt is deliberately slow: qshd must call :meth:`PasswdFile.verify` off its
event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from common.accounts.files import KeyFileError, atomic_write, read_limited

DEFAULT_COST = 12
MIN_COST = 4
MAX_COST = 31
#: bcrypt's input limit; longer passwords are refused rather than silently truncated.
MAX_PASSWORD = 72
MAX_USER_NAME = 32
#: Far beyond any real passwd file; bounds what load() reads into memory.
MAX_PASSWD_FILE = 16 * 1024 * 1024
PASSWD_MODE = 0o600
LOCK_SUFFIX = ".lock"
SYSTEM_PASSWD = Path("/etc/qsh/passwd")

_USER_RE = re.compile(r"[a-z_][a-z0-9_.-]*")
# 22 salt characters encode 128 bits, so the last one only has four legal values.
_HASH_RE = re.compile(
    r"\$2[aby]\$(?P<cost>0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{21}[.Oeu][./A-Za-z0-9]{31}"
)
# Salt and digest of the stand-in hash checked for unknown users. Any well-formed value does:
# what matters is that bcrypt does the same amount of work as for a real user.
_DUMMY_TAIL = "abcdefghijklmnopqrstuu" + "A" * 31


class PasswdError(Exception):
    """Anything wrong with a passwd operation; ``str()`` is one line, fit to print after the
    program's name."""


class PasswdFileError(PasswdError):
    """The passwd file could not be read, parsed, locked or written."""


class InvalidUserName(PasswdError, ValueError):
    """A user name outside ``[a-z_][a-z0-9_.-]*`` (1-32 characters)."""


class InvalidPassword(PasswdError, ValueError):
    """A password bcrypt cannot represent faithfully (empty, or longer than 72 bytes)."""


def check_user_name(user: str) -> None:
    """Raise :class:`InvalidUserName` unless ``user`` is a name this file can hold."""
    if not 1 <= len(user) <= MAX_USER_NAME or not _USER_RE.fullmatch(user):
        raise InvalidUserName(
            f"invalid user name {user[:40]!r}: use 1-{MAX_USER_NAME} characters from "
            "a-z 0-9 _ . - starting with a letter or _"
        )


def check_password(password: bytes) -> None:
    """Raise :class:`InvalidPassword` for a password that cannot be stored as typed."""
    if not password:
        raise InvalidPassword("empty password refused")
    if len(password) > MAX_PASSWORD:
        raise InvalidPassword(
            f"password too long: bcrypt uses at most {MAX_PASSWORD} bytes "
            f"and would silently ignore the rest ({len(password)} given)"
        )


def default_passwd_path() -> Path:
    """Where qshd looks by default: the system file for a root daemon, the user's own file
    for a daemon run by an ordinary user (who can only ever log in as themselves)."""
    if os.geteuid() == 0:
        return SYSTEM_PASSWD
    return Path.home() / ".qsh" / "passwd"


@dataclass
class _Line:
    """One line of the file. ``user`` is None for comments and blank lines, whose ``text``
    is written back exactly as read."""

    text: str
    user: str | None = None
    hashed: str | None = None

    def render(self) -> str:
        if self.user is None:
            return self.text
        return f"{self.user}:{self.hashed}"


class PasswdFile:
    """A passwd file on disk and the last state read from it.

    ``load()`` refreshes the in-memory view that :meth:`users` and :meth:`verify` use;
    :meth:`set_password` and :meth:`delete` always re-read the file under the lock, so they
    act on the current file, not on a possibly stale view, and leave the view current.
    The view is swapped in one assignment, so threads calling :meth:`verify` while another
    reloads see either the old users or the new ones.
    """

    def __init__(self, path: str | os.PathLike[str], *, check_mode: bool = True) -> None:
        self.path = Path(path)
        self.check_mode = check_mode
        self._hashes: dict[str, str] | None = None
        self._order: list[str] = []
        self._dummy = _dummy_hash(DEFAULT_COST)

    def __repr__(self) -> str:
        return f"PasswdFile({str(self.path)!r})"

    # -- reading -----------------------------------------------------------------------

    def load(self, *, must_exist: bool = False) -> None:
        """Read the file. A missing file is an empty one (nobody may log in yet) unless
        ``must_exist``. Raises :class:`PasswdFileError`."""
        self._adopt(self._read(must_exist=must_exist))

    def users(self) -> list[str]:
        """User names in file order, loading the file on first use."""
        if self._hashes is None:
            self.load()
        return list(self._order)

    def verify(self, user: str, password: bytes) -> bool:
        """True only if ``user`` exists and ``password`` is theirs.

        An unknown user (or a name that is not even valid) costs the same bcrypt run as a
        known one, against a stand-in hash with the cost most users in the file have, so
        the time a failure takes does not reveal which names exist. bcrypt's checkpw does
        the comparison of the hashes. Loads the file on first use; call :meth:`load` to pick
        up later edits.
        """
        if self._hashes is None:
            self.load()
        assert self._hashes is not None
        stored = self._hashes.get(user)
        candidate = stored if stored is not None else self._dummy
        try:
            # bcrypt 5 raises for more than 72 bytes; still spend the same time on a prefix.
            matched = bcrypt.checkpw(password[:MAX_PASSWORD], candidate.encode("ascii"))
        except ValueError:
            matched = False
        return matched and stored is not None and 0 < len(password) <= MAX_PASSWORD

    # -- editing -----------------------------------------------------------------------

    def set_password(self, user: str, password: bytes, cost: int = DEFAULT_COST) -> bool:
        """Add ``user`` or change their password; return True when the user is new.

        The hash is computed before taking the lock, so a slow cost does not hold up other
        editors. Raises :class:`InvalidUserName`, :class:`InvalidPassword`, or
        :class:`PasswdFileError` (in which case the file is unchanged).
        """
        check_user_name(user)
        check_password(password)
        if not MIN_COST <= cost <= MAX_COST:
            raise PasswdError(f"bcrypt cost must be {MIN_COST}..{MAX_COST}, not {cost}")
        hashed = bcrypt.hashpw(password, bcrypt.gensalt(rounds=cost)).decode("ascii")
        with self._locked():
            lines = self._read(must_exist=False)
            for line in lines:
                if line.user == user:
                    line.hashed = hashed
                    added = False
                    break
            else:
                lines.append(_Line("", user, hashed))
                added = True
            self._write(lines)
        self._adopt(lines)
        return added

    def delete(self, user: str) -> bool:
        """Remove ``user``; False (and no write) when there is no such user."""
        check_user_name(user)
        with self._locked():
            lines = self._read(must_exist=False)
            kept = [line for line in lines if line.user != user]
            if len(kept) == len(lines):
                self._adopt(lines)
                return False
            self._write(kept)
        self._adopt(kept)
        return True

    # -- internals ---------------------------------------------------------------------

    def _adopt(self, lines: list[_Line]) -> None:
        hashes = {line.user: line.hashed for line in lines if line.user and line.hashed}
        costs = Counter(int(h[4:6]) for h in hashes.values())
        # The most common cost (ties: the higher one) is what a real user's check costs.
        cost = max(costs, key=lambda c: (costs[c], c)) if costs else DEFAULT_COST
        self._order = list(hashes)
        self._dummy = _dummy_hash(cost)
        self._hashes = hashes

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the edit lock across a whole read-modify-write; closing the descriptor
        releases it, so even a crashed editor never leaves the file locked."""
        if self.path.is_symlink():
            # The rename would replace the link with a file and leave its target stale.
            raise PasswdFileError(
                f"{self.path} is a symbolic link; edit the file it points to instead"
            )
        lock_path = self.path.with_name(self.path.name + LOCK_SUFFIX)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(lock_path, flags, PASSWD_MODE)
        except OSError as exc:
            raise PasswdFileError(f"cannot lock {self.path}: {lock_path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self, *, must_exist: bool) -> list[_Line]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if must_exist:
                raise PasswdFileError(f"{self.path}: no such file") from None
            return []
        except OSError as exc:
            raise PasswdFileError(f"cannot read {self.path}: {exc.strerror}") from exc
        try:
            # Checked on the open descriptor, so the file cannot be swapped after the check.
            st = os.fstat(fd)
            self._check_file(st)
            data = _read_bounded(fd, self.path)
        except OSError as exc:
            raise PasswdFileError(f"cannot read {self.path}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        return _parse(data, self.path)

    def _check_file(self, st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise PasswdFileError(f"{self.path}: not a regular file")
        if not self.check_mode:
            return
        # As sshd's StrictModes: whoever can write the file can give themselves a login.
        if st.st_mode & 0o022:
            raise PasswdFileError(
                f"permissions {stat.S_IMODE(st.st_mode):04o} for {self.path} are too open: "
                f"group or others can write it (chmod 600 {self.path})"
            )
        if st.st_uid not in (0, os.geteuid()):
            raise PasswdFileError(
                f"{self.path} is owned by uid {st.st_uid}, not by root or by us "
                f"(uid {os.geteuid()})"
            )

    def _write(self, lines: list[_Line]) -> None:
        text = "".join(line.render() + "\n" for line in lines)
        try:
            atomic_write(self.path, text.encode("utf-8"), PASSWD_MODE)
        except KeyFileError as exc:
            raise PasswdFileError(str(exc)) from exc


def _dummy_hash(cost: int) -> str:
    return f"$2b${cost:02d}${_DUMMY_TAIL}"


def _read_bounded(fd: int, path: Path) -> bytes:
    data = read_limited(fd, MAX_PASSWD_FILE)
    if data is None:
        raise PasswdFileError(f"{path}: too large for a passwd file")
    return data


def _parse(data: bytes, path: Path) -> list[_Line]:
    """Every line is understood or the whole file is refused, naming the first bad line."""
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()  # the newline that ends the last line
    lines: list[_Line] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(raw_lines, 1):
        where = f"{path}:{number}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PasswdFileError(f"{where}: not UTF-8 text") from None
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            lines.append(_Line(text))
            continue
        user, sep, hashed = text.rstrip().partition(":")
        if not sep:
            raise PasswdFileError(f"{where}: expected 'user:bcrypt-hash'")
        try:
            check_user_name(user)
        except InvalidUserName as exc:
            raise PasswdFileError(f"{where}: {exc}") from None
        if not _HASH_RE.fullmatch(hashed):
            raise PasswdFileError(f"{where}: the hash for {user!r} is not a bcrypt hash")
        if user in seen:
            raise PasswdFileError(f"{where}: duplicate user {user!r} (first on line {seen[user]})")
        seen[user] = number
        lines.append(_Line(text, user, hashed))
    return lines
