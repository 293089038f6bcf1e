"""Reaching a host as ssh does, for every client program (qsh, qcp, the Python API).

* :func:`open_connection` -- the TCP connection and handshake, with the host key checked
  against known_hosts (TOFU per ``StrictHostKeyChecking``); the first login attempt rides
  behind the handshake when there is a key to try.
* :class:`KeyRing` and :func:`authenticate` -- identity files in config order (encrypted ones
  unlocked on the terminal), then passwords on the terminal, as ssh does.
* :func:`login` -- both, in that order: a connection that is logged in, or :class:`QshError`.

Failures are :class:`QshError`: one line for the user, exit status 255 in qsh.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shlex
import socket
from collections.abc import Sequence
from pathlib import Path

from common import aio
from common.accounts.keys import HostKey, KeyFileError, PassphraseRequired, PublicKey
from common.accounts.known_hosts import Entry, KnownHosts, host_pattern
from common.client import proxy, terminal
from common.client.config import DEFAULT_PORT, ClientConfig, default_identity_files
from common.client.dial import FAMILIES

# The reporting half of what was here lives in common/client/program.py (qcp over a master
# needs it without the login stack); every name is still importable from here.
from common.client.program import MAX_SHOWN as MAX_SHOWN
from common.client.program import TAMPERED as TAMPERED
from common.client.program import DisconnectError as DisconnectError
from common.client.program import Prompter as Prompter
from common.client.program import QshError as QshError
from common.client.program import StopSignals as StopSignals
from common.client.program import Ui as Ui
from common.client.program import describe_end as describe_end
from common.client.program import describe_error as describe_error
from common.client.program import printable as printable
from common.client.program import run_program as run_program
from common.client.program import setup_logging as setup_logging
from common.crypto import registry
from common.errors import ErrorCode, QsmpError, RemoteReportedError, UsageError
from common.protocol.auth import METHOD_PASSWORD, METHOD_PUBLICKEY, AuthFailed
from common.protocol.handshake import ClientHandshake, State
from common.protocol.negotiation import ChaffPolicy, ObscurePolicy, Offer
from common.protocol.transport import TransportSettings

#: Password prompts per connection, as ssh's NumberOfPasswordPrompts.
PASSWORD_TRIES = 3
PASSPHRASE_TRIES = 3
#: How long the final close may wait for the server's goodbye.
CLOSE_TIMEOUT = 5.0

CHANGED_KEY_WARNING = """\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
The host key of {host} is not the one in {path}.
The {algorithm} key it presents has the fingerprint {fingerprint}.
Someone could be eavesdropping on you right now (man-in-the-middle attack),
or the host key has just been changed.
{offending}
If you know it was changed, remove the old key and connect again:
  qsh-keygen -f {quoted_path} -R {quoted_host}"""


class HostKeyNotVerifiable(QshError):
    """The server's host key is unknown and may not be trusted, or has changed."""


class PermissionDenied(QshError):
    """Every way to log in that qsh could try was refused."""


# --- Connecting ---------------------------------------------------------------------------


def build_offer(cfg: ClientConfig) -> Offer:
    """The algorithms to propose. Config lists are checked for syntax when read; whether
    this machine has each one (liboqs is optional) is known only here."""
    base = Offer()
    # has_*: liboqs is loaded only for a name that is not built in (common/crypto/registry.py)
    kems = cfg.kems or tuple(k for k in base.kems if registry.has_kem(k))
    signatures = cfg.signatures or tuple(s for s in base.signatures if registry.has_signature(s))
    aeads = cfg.ciphers or base.aeads
    for kind, names, has, available in (
            ("KEM", kems, registry.has_kem, registry.available_kems),
            ("signature", signatures, registry.has_signature, registry.available_signatures),
            ("cipher", aeads, registry.has_aead, registry.available_aeads)):
        for name in names:
            if not has(name):
                raise QshError(f"unknown {kind} {name!r}; "
                               f"available: {', '.join(available())}")
    chaff = ChaffPolicy(enabled=True) if cfg.chaff else base.chaff
    interval = cfg.obscure_keystroke_timing
    obscure = ObscurePolicy(interval_ms=interval) if interval else None
    return Offer(kems=kems, signatures=signatures, aeads=aeads, chaff=chaff, obscure=obscure)


async def open_connection(cfg: ClientConfig, ui: Ui, *,
                          identity: HostKey | None = None,
                          password: bytes | None = None) -> aio.QsmpConnection:
    """Connect, run the handshake and decide on the host key.

    The known_hosts entry for ``cfg.hostname`` (ssh checks the name it connects to, after
    HostName) is handed to the handshake as the trusted key; an unknown key goes to the
    ``StrictHostKeyChecking`` policy. A handshake that fails over the trusted key (the
    server does not know its key ID, or the signature does not verify) is not yet a changed
    key: :func:`_known_key_failed` finds out which it was. With ``identity`` (or
    ``password``) the first login attempt is pipelined behind the handshake.
    """
    try:
        known = KnownHosts.load(cfg.known_hosts)
    except KeyFileError as exc:
        raise QshError(str(exc)) from None
    mode = cfg.strict_host_key_checking
    # HostKeyAlias: the key is known under that name, with no port (as ssh).
    key_host, key_port = ((cfg.host_key_alias, DEFAULT_PORT) if cfg.host_key_alias
                          else (cfg.hostname, cfg.port))
    pattern = host_pattern(key_host, key_port, DEFAULT_PORT)
    found = known.lookup(key_host, key_port, default_port=DEFAULT_PORT)
    offending = found.matching  # if the host presents another key, these lines say so
    pinned = tuple(entry.key for entry in offending)
    # "no" lets even a changed key through (with the warning), so nothing is pre-trusted.
    trusted = pinned[0] if pinned and mode != "no" else None
    refusal: list[QshError] = []

    async def on_host_key(key: PublicKey) -> bool:
        """Trust on first use. Never raises: the adapter treats False as a rejection."""
        if mode == "no":
            if pinned and not any(k.matches(key) for k in pinned):
                ui.warn(changed_key_warning(cfg, pattern, key, offending))
                ui.warn("StrictHostKeyChecking is no: connecting anyway.")
                return True
            if pinned:
                return True
        elif mode == "yes":
            refusal.append(HostKeyNotVerifiable(
                f"no {key.algorithm} host key is known for {pattern} and "
                "StrictHostKeyChecking is yes"))
            return False
        elif mode == "ask":
            answer = await ui.ask(
                f"The authenticity of host '{pattern}' can't be established.\n"
                f"{key.algorithm} key fingerprint is {key.fingerprint()}.\n"
                "Are you sure you want to continue connecting (yes/no)? ")
            if (answer or "").strip().lower() != "yes":
                refusal.append(HostKeyNotVerifiable("host key verification failed"))
                return False
        try:
            known.add(key_host, key_port, key, default_port=DEFAULT_PORT,
                      hashed=cfg.hash_known_hosts)
        except (KeyFileError, OSError) as exc:
            ui.warn(f"Warning: could not record the host key in {cfg.known_hosts}: {exc}")
            return True
        ui.warn(f"Warning: permanently added '{pattern}' ({key.algorithm}) to the list of "
                "known hosts.")
        return True

    def warm() -> None:  # while the server answers our first flight (aio.connect)
        from common.crypto.algorithms import preload_ml_dsa

        preload_ml_dsa(signing=identity is not None)

    offer = build_offer(cfg)
    interval = cfg.server_alive_interval
    settings = TransportSettings(keepalive_interval=interval if interval > 0 else None,
                                 keepalive_count_max=cfg.server_alive_count_max)
    if identity is not None:
        password = None  # one pipelined attempt: the key
    tried: list[PublicKey] = []
    local_addr = (cfg.bind_address, 0) if cfg.bind_address is not None else None
    attempt = 0
    while True:
        handshake = ClientHandshake(offer, trusted, step_timeout=cfg.connect_timeout)
        attempt += 1
        ui.note(1, f"connecting to {cfg.hostname} port {cfg.port}"
                   + (f" (attempt {attempt})" if attempt > 1 else ""))
        try:
            connection = await proxy.connect(
                cfg, ui, handshake=handshake, settings=settings,
                on_host_key=on_host_key, timeout=cfg.connect_timeout,
                user=cfg.user if identity is not None or password is not None else None,
                identity=identity, password=password, family=FAMILIES[cfg.address_family],
                local_addr=local_addr, warm=warm)
        except ConnectionRefusedError as exc:
            # ConnectionAttempts: as ssh, a refused or unreachable TCP connect is tried
            # again a second later; nothing after the TCP connect is retried.
            if attempt < cfg.connection_attempts:
                ui.note(1, f"connect to {cfg.hostname} port {cfg.port}: "
                           f"{os.strerror(exc.errno or errno.ECONNREFUSED)}; retrying")
                await asyncio.sleep(1.0)
                continue
            raise QshError(f"connect to host {cfg.hostname} port {cfg.port}: "
                           f"{os.strerror(exc.errno or errno.ECONNREFUSED)}") from None
        except socket.gaierror as exc:
            raise QshError(f"could not resolve hostname {printable(cfg.hostname)}: "
                           f"{exc.strerror}") from None
        except UnicodeError:  # the resolver's IDNA step: a label over 63, a name over 253
            raise QshError(f"could not resolve hostname {printable(cfg.hostname)}: "
                           "not a valid host name") from None
        except TimeoutError:  # an OSError without errno: first
            raise QshError(timeout_message(cfg, handshake)) from None
        except OSError as exc:
            # asyncio words it "Connect call failed (...)": say what ssh says instead.
            reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
            raise QshError(f"connect to host {cfg.hostname} port {cfg.port}: "
                           f"{reason}") from None
        except UsageError as exc:
            raise QshError(str(exc)) from None
        except QsmpError as exc:
            if refusal:
                raise refusal[0] from None
            if trusted is not None and exc.code in (ErrorCode.KEY_UNRECOGNIZED,
                                                    ErrorCode.VERIFY_FAILURE):
                tried.append(trusted)
                trusted = await _known_key_failed(cfg, ui, exc, pattern, offending, tried)
                continue  # another key known for this host: try the handshake with it
            if exc.code == ErrorCode.KEY_EXPIRED:
                raise HostKeyNotVerifiable(f"the host key of {pattern} has expired") from None
            if isinstance(exc, RemoteReportedError):
                raise QshError(f"server: {printable(exc.message)}") from None
            reason = describe_error(exc.code, exc.message, by_peer=False)
            raise QshError(f"handshake failed: {reason}") from None
        break
    suite, host_key = connection.suite, connection.host_key
    assert suite is not None and host_key is not None  # set once established
    ui.note(1, f"connected to {pattern}: {suite.kem}, {suite.signature}, {suite.aead}; "
               f"host key {host_key.fingerprint()}")
    return connection


def changed_key_warning(cfg: ClientConfig, pattern: str, presented: PublicKey,
                        offending: Sequence[Entry]) -> str:
    """ssh's banner: the new key's fingerprint, where each old key is (file and line), and
    the command that removes them, quoted for a shell."""
    lines = "\n".join(f"Offending {entry.key.algorithm} key in {cfg.known_hosts}:"
                      f"{entry.line_number}" for entry in offending)
    return CHANGED_KEY_WARNING.format(host=pattern, path=cfg.known_hosts,
                                      algorithm=presented.algorithm,
                                      fingerprint=presented.fingerprint(),
                                      offending=lines or f"(no line of {cfg.known_hosts} "
                                                         "names it any more)",
                                      quoted_path=shlex.quote(str(cfg.known_hosts)),
                                      quoted_host=shlex.quote(pattern))


def timeout_message(cfg: ClientConfig, handshake: ClientHandshake) -> str:
    """ConnectTimeout ran out: in TCP's connect (the handshake never started: nothing
    answered our SYN), or in the handshake (something accepted, and did not finish it)."""
    where = f"host {cfg.hostname} port {cfg.port}"
    if handshake.state is State.START:
        return f"connect to {where}: {os.strerror(errno.ETIMEDOUT)}"
    seconds = f"{cfg.connect_timeout:g} second{'' if cfg.connect_timeout == 1 else 's'}"
    return f"connection to {where}: the handshake timed out after {seconds}"


async def _known_key_failed(cfg: ClientConfig, ui: Ui, exc: QsmpError, pattern: str,
                            offending: Sequence[Entry], tried: list[PublicKey]
                            ) -> PublicKey:
    """The handshake failed over a pinned key: decide what to tell the user.

    The error alone cannot say whether the host key changed. A KEY_UNRECOGNIZED or
    VERIFY_FAILURE error packet is plaintext that anyone on the path can send, and a
    signature that does not verify may be a corrupted one from the right key. So ask the
    host which key it has (:func:`probe_host_key`): the changed-key banner only if it
    presents a key that is not pinned; another key pinned for this host is returned, to be
    tried; otherwise the failure is what it was, said as such (exit 255 all the same).
    """
    ui.note(1, f"handshake over the known host key failed ({printable(exc.message)}); "
               f"asking {pattern} which key it has")
    presented = await probe_host_key(cfg, tried[-1], ui)
    pinned = tuple(entry.key for entry in offending)
    if presented is not None:
        if not any(key.matches(presented) for key in pinned):
            ui.warn(changed_key_warning(cfg, pattern, presented, offending))
            raise HostKeyNotVerifiable("host key verification failed") from None
        if not any(key.matches(presented) for key in tried):
            ui.note(1, f"{pattern} has another known key: {presented.fingerprint()}")
            return presented
    if not isinstance(exc, RemoteReportedError):
        raise QshError(f"signature check failed: {TAMPERED}") from None
    said = f'host key check failed: an unauthenticated error packet said "{exc.code.description}"'
    if presented is not None:
        raise QshError(f"{said}, but the host presents the known key: {TAMPERED}") from None
    raise QshError(f"{said} and the host presented no key: {TAMPERED}") from None


async def probe_host_key(cfg: ClientConfig, pinned: PublicKey, ui: Ui | None = None
                         ) -> PublicKey | None:
    """The key the host presents when not asked for a particular one (a fresh connection
    whose first message names no key ID), its signature over that connection's transcript
    checked by the handshake before we see it; None if none could be had. The pinned key's
    algorithm is offered first, so that a host with several keys picks one of that kind.
    The handshake stops there: nothing is sent under keys from it. Through the same
    ProxyCommand or jump hosts as the connection it stands in for."""
    offer = build_offer(cfg)
    signatures = sorted(offer.signatures, key=lambda name: name != pinned.algorithm)
    offer = offer.replace(signatures=tuple(signatures))
    presented: list[PublicKey] = []

    async def record(key: PublicKey) -> bool:
        presented.append(key)
        return False

    handshake = ClientHandshake(offer, None, step_timeout=cfg.connect_timeout)
    try:
        connection = await proxy.connect(cfg, ui or Ui(), handshake=handshake,
                                         on_host_key=record, timeout=cfg.connect_timeout,
                                         family=FAMILIES[cfg.address_family])
    except (OSError, QsmpError, QshError):  # TimeoutError is an OSError
        pass
    else:  # not reached: record() refuses every key
        connection.abort()
    return presented[0] if presented else None


async def close_connection(connection: aio.QsmpConnection) -> None:
    connection.close()
    with contextlib.suppress(TimeoutError, QsmpError, OSError):
        await asyncio.wait_for(connection.wait_closed(), CLOSE_TIMEOUT)
    await proxy.finish(connection)  # a ProxyCommand's process: reaped before we exit


# --- Logging in ---------------------------------------------------------------------------


class KeyRing:
    """The identity files, in order, each loaded only when its turn comes.

    Lazy because an encrypted key costs the person a passphrase: there is no point asking
    for the second key's if the first one logs in. Files that do not exist are skipped in
    silence when they are defaults and with a warning when the user named them.
    """

    def __init__(self, paths: list[Path], ui: Ui) -> None:
        self._paths = list(paths)
        self._ui = ui
        self._defaults = set(default_identity_files())
        self.tried: list[Path] = []
        self._loaded: list[HostKey] = []

    def close(self) -> None:
        """Zero every key loaded: once logged in, nothing signs with them again."""
        for key in self._loaded:
            key.close()
        self._loaded.clear()

    async def next(self) -> tuple[Path, HostKey] | None:
        while self._paths:
            path = self._paths.pop(0)
            key = await self._load(path)
            if key is not None:
                self.tried.append(path)
                self._loaded.append(key)
                return path, key
        return None

    async def _load(self, path: Path) -> HostKey | None:
        if not path.exists():
            if path not in self._defaults:
                self._ui.warn(f"Warning: identity file {path} not accessible: "
                              "no such file or directory.")
            return None
        try:
            return HostKey.load(path)
        except PassphraseRequired:
            return await self._unlock(path)
        except (KeyFileError, OSError) as exc:
            self._ui.warn(f"Warning: {exc}; not using it.")
            return None

    async def _unlock(self, path: Path) -> HostKey | None:
        if self._ui.prompter is None or not terminal.has_tty():
            self._ui.note(1, f"{path} is encrypted and there is no terminal to ask for "
                             "its passphrase; skipping it")
            return None
        prompt = f"Enter passphrase for key '{path}': "
        for _ in range(PASSPHRASE_TRIES):
            answer = await self._ui.ask_secret(prompt)
            if answer is None or not len(answer):  # empty: skip the key, as ssh does
                return None
            try:
                # scrypt takes a noticeable moment; keep the loop (keepalives) running.
                return await asyncio.to_thread(HostKey.load, path, answer.bytes())
            except KeyFileError as exc:
                if "passphrase" not in str(exc):
                    self._ui.warn(f"Warning: {exc}; not using it.")
                    return None
            finally:
                answer.close()
            prompt = f"Bad passphrase, try again for {path}: "
        return None


async def authenticate(connection: aio.QsmpConnection, cfg: ClientConfig, ui: Ui,
                       keys: KeyRing, *, pipelined: Path | None) -> None:
    """Log in: the pipelined key's answer, the other keys, then up to three passwords on
    the terminal. Raises :class:`PermissionDenied` when nothing is left to try."""
    try:
        await _authenticate(connection, cfg, ui, keys, pipelined)
    except QsmpError as exc:
        # The connection ended during login. The server gives up after too many failures
        # or its login grace time (it says so in an error record: RemoteReportedError);
        # anything else (a cut, a record that fails its check) is no refusal.
        raise login_ended(connection, cfg, exc) from None


def login_ended(connection: aio.QsmpConnection, cfg: ClientConfig, exc: QsmpError
                ) -> QshError:
    """The one-line failure for a connection that ended while logging in."""
    terminated = connection.terminated
    if terminated is not None and terminated.by_peer and terminated.code in (
            ErrorCode.AUTHENTICATION_FAILURE, ErrorCode.NONE):
        return PermissionDenied(f"permission denied: the server closed the connection "
                                f"({printable(terminated.reason)})")
    reason = (describe_end(terminated) if terminated is not None
              else describe_error(exc.code, exc.message, by_peer=False))
    return DisconnectError(f"connection to {cfg.host} lost during login: {reason}")


def check_alive(connection: aio.QsmpConnection) -> None:
    """Raise if the connection has ended: a login attempt started on an ended connection
    would wait for an answer forever (the adapter answers only attempts made before)."""
    if connection.terminated is not None:
        raise aio.ConnectionLost(connection.terminated)


async def _authenticate(connection: aio.QsmpConnection, cfg: ClientConfig, ui: Ui,
                        keys: KeyRing, pipelined: Path | None) -> None:
    user = cfg.user
    allowed = allowed_methods(cfg)
    methods: tuple[str, ...] | None = None  # unknown until the server refuses something
    failed: AuthFailed | None
    if pipelined is not None:
        failed = await connection.wait_authenticated()
        if failed is None:
            ui.note(1, f"authenticated as {user} with {pipelined}")
            return
        ui.note(1, f"key {pipelined} refused: {failed.message}")
        methods = failed.methods
    while METHOD_PUBLICKEY in allowed and (methods is None or METHOD_PUBLICKEY in methods):
        entry = await keys.next()
        if entry is None:
            break
        path, key = entry
        check_alive(connection)  # e.g. the server's MaxAuthTries: it said so and left
        failed = await connection.login_publickey(user, key)
        if failed is None:
            ui.note(1, f"authenticated as {user} with {path}")
            return
        ui.note(1, f"key {path} refused: {failed.message}")
        methods = failed.methods
    if methods is not None and METHOD_PASSWORD not in methods:
        raise PermissionDenied(f"permission denied ({','.join(methods)})")
    if METHOD_PASSWORD not in allowed or cfg.number_of_password_prompts == 0:
        shown = ",".join(methods) if methods is not None else "no method left to try"
        raise PermissionDenied(f"permission denied ({shown})")
    if ui.prompter is None or not terminal.has_tty():
        if not keys.tried:
            raise PermissionDenied(
                "permission denied (no usable key and no terminal to ask for a password)")
        raise PermissionDenied(f"permission denied ({','.join(methods or ())}; "
                               "no terminal to ask for a password)")
    prompt = f"{user}@{cfg.hostname}'s password: "
    tries = cfg.number_of_password_prompts
    for attempt in range(tries):
        answer = await ui.ask_secret(prompt)
        if answer is None:
            break
        with answer:  # zeroed once sent and answered
            check_alive(connection)
            failed = await connection.login_password(user, answer.bytes())
        if failed is None:
            ui.note(1, f"authenticated as {user} with a password")
            return
        methods = failed.methods
        if METHOD_PASSWORD not in methods:
            break
        if attempt + 1 < tries:
            ui.warn("Permission denied, please try again.")
    raise PermissionDenied(f"permission denied ({','.join(methods or (METHOD_PASSWORD,))})")


def allowed_methods(cfg: ClientConfig) -> tuple[str, ...]:
    """PubkeyAuthentication, PasswordAuthentication and PreferredAuthentications together:
    the methods qsh may try (keys always before passwords, whatever the order given)."""
    preferred = cfg.preferred_authentications
    return tuple(method for method, on in ((METHOD_PUBLICKEY, cfg.pubkey_authentication),
                                           (METHOD_PASSWORD, cfg.password_authentication))
                 if on and (preferred is None or method in preferred))


async def login(cfg: ClientConfig, ui: Ui) -> aio.QsmpConnection:
    use_keys = METHOD_PUBLICKEY in allowed_methods(cfg)
    keys = KeyRing(list(cfg.identity_files) if use_keys else [], ui)
    first = await keys.next()
    connection = await open_connection(cfg, ui, identity=first[1] if first else None)
    try:
        await authenticate(connection, cfg, ui, keys, pipelined=first[0] if first else None)
    except BaseException:
        connection.abort()
        raise
    finally:
        keys.close()
    return connection
