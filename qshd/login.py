"""Who may log in: the daemon's answer to each :class:`~common.protocol.auth.AuthRequested`.

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
password never reaches a log line; :class:`~common.protocol.auth.AuthRequested`'s repr hides it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import grp
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common import aio
from common.accounts.key_options import KeyOptions, address_matches
from common.accounts.passwd import PasswdError, PasswdFile
from common.protocol.auth import METHOD_PASSWORD, METHOD_PUBLICKEY, AuthRequested

from .account import DEFAULT_SHELL
from .authorized_keys import NO_OPTIONS, AuthorizedKey
from .config import ConnectionSpec, ServerConfig, expand_tokens
from .loglevel import VERBOSE
from .password_limits import PasswordChecks

# isort: split
# re-exported: importers predate the split
from .account import Account as Account
from .authorized_keys import AuthorizedKeysError as AuthorizedKeysError
from .authorized_keys import read_authorized_keys as read_authorized_keys
from .password_limits import PasswordSlots as PasswordSlots

log = logging.getLogger("qshd")


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


# Reading authorized_keys as the user (read_authorized_keys and its child): qshd.authorized_keys.


# bcrypt's share of the machine (PasswordChecks, PasswordSlots): qshd.password_limits.


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
