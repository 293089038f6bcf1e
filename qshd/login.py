"""Who may log in: the daemon's answer to each :class:`~common.auth.AuthRequested`.

The core has already checked the request's syntax and, for a key, its signature over this
session's ID; what is left is policy and files, decided here:

* the name must be a system account (``pwd``): the qshd passwd file decides whether a
  password opens it, the account decides uid, gid, groups, home and shell;
* a daemon that is not root can only ever run things as itself, so only its own account
  may log in (anything else would "succeed" into a session as the wrong user);
* as root, ``PermitRootLogin`` guards uid 0 (``no`` by default, as a root password is the
  first thing guessed), ``prohibit-password`` allows keys only;
* a key must be listed in the user's ``authorized_keys``, and that file and the directories
  above it must be owned by the user or root and writable by nobody else (sshd's
  StrictModes): whoever can write the file can add their own key. The file is read with
  the user's rights, as sshd does, in a short-lived child process that drops to the user
  first: the path is the user's to choose (links included), so what root alone may read
  stays out of reach, and a FIFO or device is refused before anything opens it. Only line
  numbers of what is not a key reach the log, never a line;
* a publickey request for an unknown name reads a stand-in's file (as ``nobody``, from a
  home that does not exist) just as a real user's is read, so that how soon the refusal
  comes does not tell which names exist.

Slow or blocking work runs off the event loop, so one login never holds up every other
connection: account look-ups and authorized_keys reads (a home may sit on a stalled network
file system) in the default executor, bcrypt in a small pool of its own
(:class:`PasswordChecks`) with a bounded queue. Password guessers can keep that pool busy,
but never the threads a key login needs, and never every CPU.

Each decision is logged in sshd's words (``Accepted``/``Failed <method> for <user> from
<ip> port <n>``) so existing log watchers (fail2ban and friends) need little change. A
password never reaches a log line; :class:`~common.auth.AuthRequested`'s repr hides it too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import fnmatch
import grp
import logging
import os
import select
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from common import aio
from common.accounts.key_options import (
    KeyOptions,
    OptionError,
    address_matches,
    parse_options,
    split_options,
)
from common.accounts.keys import LINE_PREFIX, PublicKey, read_limited
from common.accounts.passwd import PasswdError, PasswdFile
from common.errors import InvalidInput
from common.protocol.auth import METHOD_PASSWORD, METHOD_PUBLICKEY, AuthRequested

from . import children
from .account import DEFAULT_SHELL
from .config import ConnectionSpec, ServerConfig, expand_tokens
from .loglevel import VERBOSE

# isort: split
# re-exported: importers predate the split
from .account import Account as Account

log = logging.getLogger("qshd")

#: Far beyond any real authorized_keys file (an ML-DSA-87 line is about 3.5 KB).
MAX_AUTHORIZED_KEYS = 4 * 1024 * 1024
#: Seconds the reader of an authorized_keys file may take (a home on a stalled network
#: file system); then it is killed and the key login refused.
READ_TIMEOUT = 10.0
#: bcrypt threads: half the CPUs, one at least, eight at most. Guessers can then never
#: take every core from the handshakes, key logins and sessions of everybody else.
PASSWORD_THREADS = max(1, min(8, (os.cpu_count() or 2) // 2))
#: Password checks that may wait for a bcrypt thread; one more is refused at once.
PASSWORD_QUEUE = 32

# Account (a system account and its look-up): qshd.account.


#: Whose authorized_keys a publickey request for an unknown name reads: nobody's, in a
#: home that does not exist, with the same steps as for a real account.
STAND_IN = Account("nobody", 65534, 65534, "/nonexistent", DEFAULT_SHELL, (65534,))


def peer_text(connection: aio.QsmpConnection) -> str:
    """``<ip> port <n>``: sshd's wording, which log scanners already parse."""
    peer = connection.peername
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]} port {peer[1]}"
    return str(peer)


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


class PasswordChecks:
    """bcrypt's own pool: ``threads`` workers and at most ``queue`` checks waiting.

    A full queue refuses the attempt at once (the caller logs it as failed) instead of
    growing: under a guessing flood a real user's password waits at most ``queue`` checks,
    not the whole flood. A check whose connection is gone by the time a thread takes it is
    skipped: a guesser that hangs up without waiting costs no bcrypt run.
    """

    def __init__(self, threads: int = PASSWORD_THREADS, queue: int = PASSWORD_QUEUE) -> None:
        self.threads = threads
        self.limit = threads + queue
        self._executor = concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix="qshd-bcrypt")
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Checks running or waiting."""
        return self._pending

    def _done(self, _: concurrent.futures.Future[bool]) -> None:
        with self._lock:
            self._pending -= 1

    async def run(self, check: Callable[[], bool],
                  still_wanted: Callable[[], bool] = lambda: True) -> bool | None:
        """``check()`` on a bcrypt thread; None if the queue is full."""
        with self._lock:
            if self._pending >= self.limit:
                return None
            self._pending += 1
        try:
            future = self._executor.submit(lambda: still_wanted() and check())
        except RuntimeError:  # shut down: the daemon is stopping
            self._done(concurrent.futures.Future())
            return None
        future.add_done_callback(self._done)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class PasswordSlots:
    """bcrypt's share of the machine across every connection's process.

    Each connection's monitor checks its own passwords, so a pool inside one process no
    longer bounds them: 60 guessers would be 60 bcrypt runs at once, and a key login would
    wait for a core. These are ``running`` lock files a check must hold one of (at most that
    many bcrypt runs at a time, machine-wide) and ``waiting`` more that bound the queue: a
    check that finds the queue full is refused at once, as the in-process pool does.
    ``flock`` locks go with their process, so a monitor that dies holding one frees it.
    """

    def __init__(self, directory: Path, running: int = PASSWORD_THREADS,
                 waiting: int = PASSWORD_QUEUE) -> None:
        self.directory = directory
        self.running = [directory / f"run-{i}" for i in range(running)]
        self.waiting = [directory / f"wait-{i}" for i in range(running + waiting)]

    @classmethod
    def create(cls, directory: Path | None = None, **limits: int) -> PasswordSlots:
        """Make (or check) the directory and its lock files; in the listener, at start."""
        if directory is None:
            base = (Path("/run/qshd") if os.geteuid() == 0
                    else Path(tempfile.gettempdir()) / f"qshd-{os.geteuid()}")
            directory = base / "bcrypt"
        for path in (directory.parent, directory):
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o700)
            st = os.lstat(path)
            if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid()
                    or (path == directory and st.st_mode & 0o077)):
                raise OSError(f"{path}: not a private directory of ours")
        slots = cls(directory, **limits)
        for path in (*slots.running, *slots.waiting):
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o600))
        return slots

    def run(self, check: Callable[[], bool], timeout: float) -> bool | None:
        """``check()`` once a slot is free; None if the queue is full or ``timeout``
        passed first."""
        waiting = self._take(self.waiting)
        if waiting is None:
            return None
        try:
            deadline = time.monotonic() + timeout
            while (running := self._take(self.running)) is None:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.02)
            try:
                return check()
            finally:
                os.close(running)
        finally:
            os.close(waiting)

    @staticmethod
    def _take(paths: list[Path]) -> int | None:
        for path in paths:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd
        return None


class Authenticator:
    """The ``on_auth`` callback of :func:`common.aio.serve`, configured once per daemon.

    ``euid`` and ``clock`` are parameters so tests can play root or another time without
    being either.
    """

    def __init__(self, config: ServerConfig, *, euid: int | None = None,
                 clock: Callable[[], float] = time.time,
                 local: tuple[str, int] | None = None) -> None:
        self.config = config
        #: The address and port the client connected to (Match LocalAddress/LocalPort).
        self.local = local or ("", config.port)
        self.euid = os.geteuid() if euid is None else euid
        self.clock = clock
        self.passwd = PasswdFile(config.passwd_path())
        self._passwd_stamp: tuple[int, int, int, int] | None = None
        self._passwd_lock = threading.Lock()
        self.password_checks = PasswordChecks()

    def methods(self, config: ServerConfig | None = None) -> tuple[str, ...]:
        config = config or self.config
        enabled = []
        if config.pubkey_authentication:
            enabled.append(METHOD_PUBLICKEY)
        if config.password_authentication:
            enabled.append(METHOD_PASSWORD)
        return tuple(enabled)

    async def __call__(self, connection: aio.QsmpConnection, request: AuthRequested) -> bool:
        try:
            return await self._decide(connection, request)
        except Exception:
            log.exception("login decision for %s from %s failed; refusing", request.user,
                          peer_text(connection))
            return False

    async def _decide(self, connection: aio.QsmpConnection, request: AuthRequested) -> bool:
        """The in-process daemon's decision: the blocking steps off the event loop, bcrypt
        in its own pool (see :meth:`decide` for the same decision in one blocking call)."""
        method, user = request.method, request.user
        peer = peer_text(connection)
        loop = asyncio.get_running_loop()
        account = await loop.run_in_executor(None, Account.lookup, user)
        config = self.effective(user, account, peer)
        if method not in self.methods(config):
            return self._method_disabled(method, user, peer)
        if method == METHOD_PASSWORD:
            assert request.password is not None
            # bcrypt runs even for unknown or refused users, so the time a failure takes
            # does not reveal which names exist or which ones policy forbids.
            ok = await self._check_password(connection, user, request.password)
            return self._judge_password(user, account, ok, peer, config)
        subject, paths = self._key_subject(account, config)
        found = await loop.run_in_executor(None, _read_all_keys, paths, subject)
        grant = self._judge_key(request, account, found, paths, peer, config)
        if grant is not None and grant.restricted:
            # Key options are enforced in the connection's own processes (qshd.postauth);
            # this server has none, and a restriction it cannot keep is a refusal.
            log.info("Failed publickey for %s from %s: the key's options are enforced only "
                     "by the daemon's connection processes", user, peer)
            return False
        return grant is not None

    def decide(self, request: AuthRequested, peer: str) -> bool:
        """The same decision as :meth:`_decide`, blocking: for qshd's per-connection monitor,
        which serves one client and may wait (its pre-auth process cannot)."""
        return self.decide_login(request, peer) is not None

    def decide_login(self, request: AuthRequested, peer: str) -> KeyOptions | None:
        """:meth:`decide`, with what the login may do: the options of the key line that
        admitted it (:data:`NO_OPTIONS` for a password), or None for a refusal."""
        method, user = request.method, request.user
        account = Account.lookup(user)
        config = self.effective(user, account, peer)
        if method not in self.methods(config):
            self._method_disabled(method, user, peer)
            return None
        if method == METHOD_PASSWORD:
            assert request.password is not None
            ok = self._verify_password(user, request.password)
            return (NO_OPTIONS if self._judge_password(user, account, ok, peer, config)
                    else None)
        subject, paths = self._key_subject(account, config)
        return self._judge_key(request, account, _read_all_keys(paths, subject), paths, peer,
                               config)

    def effective(self, user: str, account: Account | None, peer: str) -> ServerConfig:
        """The configuration for this login: the Match blocks that select it applied."""
        if not self.config.matches:
            return self.config
        return self.config.for_connection(ConnectionSpec(
            user, group_names(account) if account is not None else (),
            peer.split(" port ", 1)[0], self.local[0], self.local[1]))

    @staticmethod
    def _method_disabled(method: str, user: str, peer: str) -> bool:
        log.info("Failed %s for %s from %s: method disabled", method, user, peer)
        return False

    def _judge_password(self, user: str, account: Account | None, ok: bool, peer: str,
                        config: ServerConfig) -> bool:
        refusal = self._policy_refusal(account, METHOD_PASSWORD, config, peer)
        invalid = "invalid user " if account is None else ""
        if account is None or refusal is not None or not ok:
            reason = f": {refusal}" if refusal is not None else ""
            log.info("Failed password for %s%s from %s%s", invalid, user, peer, reason)
            return False
        log.info("Accepted password for %s from %s", user, peer)
        return True

    def _key_subject(self, account: Account | None, config: ServerConfig | None = None
                     ) -> tuple[Account, tuple[Path, ...]]:
        """Whose authorized_keys to read. The same steps whatever the name (the decision
        comes after them): an unknown name reads the stand-in's files, so the refusal is not
        quicker for it."""
        subject = account if account is not None else STAND_IN
        return subject, self.authorized_keys_paths(subject, config)

    def _judge_key(self, request: AuthRequested, account: Account | None,
                   found: list[list[AuthorizedKey] | AuthorizedKeysError | None],
                   paths: tuple[Path, ...], peer: str, config: ServerConfig
                   ) -> KeyOptions | None:
        """The options of the first line that holds the key and admits this login (sshd
        reads on past a line whose from= or expiry-time refuses it), or None."""
        user, key = request.user, request.public_key
        assert key is not None
        refusal = self._policy_refusal(account, METHOD_PUBLICKEY, config, peer)
        lines = [line for keys in found if isinstance(keys, list)
                 for line in keys if line.matches(key)]
        listed = bool(lines)
        problems = [problem for problem in found if isinstance(problem, AuthorizedKeysError)]
        if account is None:
            log.info("Failed publickey for invalid user %s from %s", user, peer)
            return None
        if refusal is not None:
            log.info("Failed publickey for %s from %s: %s", user, peer, refusal)
            return None
        if key.is_expired(self.clock()):
            log.info("Failed publickey for %s from %s: key %s has expired", user, peer,
                     key.fingerprint())
            return None
        for problem in problems:  # as sshd: a file it refuses does not stop the next one
            log.warning("Authentication refused for %s from %s: %s", user, peer, problem)
        if not listed:
            if problems and len(problems) == len(paths):
                return None
            log.info("Failed publickey for %s from %s: key %s is not in %s", user, peer,
                     key.fingerprint(), " or ".join(str(path) for path in paths))
            return None
        address = peer.split(" port ", 1)[0]
        reasons = []
        for line in lines:
            why = line.options.refusal(address, self.clock())
            if why is None:
                log.log(VERBOSE, "Accepted key %s %s found at %s", key.algorithm,
                        key.fingerprint(), line.where)
                log.info("Accepted publickey for %s from %s: %s%s", user, peer,
                         key.fingerprint(), " (restricted by its options in " + line.where
                         + ")" if line.options.restricted else "")
                return line.options
            reasons.append(f"{line.where}: {why}")
        log.info("Failed publickey for %s from %s: key %s: %s", user, peer, key.fingerprint(),
                 "; ".join(reasons))
        return None

    def _policy_refusal(self, account: Account | None, method: str,
                        config: ServerConfig | None = None, peer: str = "") -> str | None:
        """Why this account may not log in by this method, or None if it may."""
        config = config or self.config
        if account is None:
            return None  # reported as "invalid user" by the caller
        if self.euid != 0 and account.uid != self.euid:
            return "this daemon runs without root and serves only its own user"
        listed = user_list_refusal(config, account.name, group_names(account),
                                   peer.split(" port ", 1)[0])
        if listed is not None:
            return listed
        if self.euid == 0 and account.uid == 0:
            permit = config.permit_root_login
            if permit == "no":
                return "root login refused (PermitRootLogin no)"
            if permit == "prohibit-password" and method == METHOD_PASSWORD:
                return "root login by password refused (PermitRootLogin prohibit-password)"
        shell = account.shell
        if not (os.path.isfile(shell) and os.access(shell, os.X_OK)):
            return f"the login shell {shell} is not executable"
        return None

    def authorized_keys_paths(self, account: Account, config: ServerConfig | None = None
                              ) -> tuple[Path, ...]:
        """Every AuthorizedKeysFile of the account, in the order given: a key listed in any
        of them logs in."""
        paths = []
        for template in (config or self.config).authorized_keys_files:
            path = Path(expand_tokens(template, account.name, account.home))
            paths.append(path if path.is_absolute() else Path(account.home) / path)
        return tuple(paths)

    async def _check_password(self, connection: aio.QsmpConnection, user: str,
                              password: bytes) -> bool:
        """bcrypt in its own pool (see :class:`PasswordChecks`), skipped if the client
        has gone meanwhile; False when the pool's queue is full."""
        ok = await self.password_checks.run(
            lambda: self._verify_password(user, password),
            lambda: getattr(connection, "terminated", None) is None)
        if ok is None:
            log.warning("password check for %s from %s refused: %d checks are already "
                        "running or waiting", user, peer_text(connection),
                        self.password_checks.pending)
        return bool(ok)

    def _verify_password(self, user: str, password: bytes) -> bool:
        """In an executor thread: reload the passwd file if it changed (qpasswd edits
        apply to the next attempt, as /etc/shadow edits do for sshd), then bcrypt."""
        try:
            with self._passwd_lock:
                try:
                    st = os.stat(self.passwd.path)
                    stamp: tuple[int, int, int, int] | None = (
                        st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
                except FileNotFoundError:
                    stamp = None
                if stamp != self._passwd_stamp or stamp is None:
                    self.passwd.load()
                    self._passwd_stamp = stamp
            return self.passwd.verify(user, password)
        except PasswdError as exc:
            log.error("password check impossible: %s", exc)
            return False
        except OSError as exc:
            log.error("password check impossible: %s: %s", self.passwd.path, exc.strerror)
            return False


def group_names(account: Account) -> tuple[str, ...]:
    """The names of the account's groups (Match Group, AllowGroups, DenyGroups)."""
    names = []
    for gid in account.groups:
        with contextlib.suppress(KeyError):
            names.append(grp.getgrgid(gid).gr_name)
    return tuple(names)


def user_list_refusal(config: ServerConfig, user: str, groups: tuple[str, ...],
                      address: str) -> str | None:
    """sshd's order: DenyUsers, AllowUsers, DenyGroups, AllowGroups; the first that
    refuses says why. A ``user@address`` pattern needs both to match."""
    def listed(patterns: tuple[str, ...]) -> bool:
        for pattern in patterns:
            name, _, host = pattern.partition("@")
            if fnmatch.fnmatchcase(user, name) and (
                    not host or address_matches(address, (host,))):
                return True
        return False

    if listed(config.deny_users):
        return "user is listed in DenyUsers"
    if config.allow_users is not None and not listed(config.allow_users):
        return "user is not listed in AllowUsers"
    if any(fnmatch.fnmatchcase(g, p) for g in groups for p in config.deny_groups):
        return "a group of the user is listed in DenyGroups"
    if config.allow_groups is not None and not any(
            fnmatch.fnmatchcase(g, p) for g in groups for p in config.allow_groups):
        return "no group of the user is listed in AllowGroups"
    return None


def _read_keys(path: Path, account: Account
               ) -> list[AuthorizedKey] | AuthorizedKeysError | None:
    """authorized_keys read as the user; its problem as a value, for the judge."""
    try:
        return read_authorized_keys(path, account)
    except AuthorizedKeysError as exc:
        return exc


def _read_all_keys(paths: tuple[Path, ...], account: Account
                   ) -> list[list[AuthorizedKey] | AuthorizedKeysError | None]:
    return [_read_keys(path, account) for path in paths]
