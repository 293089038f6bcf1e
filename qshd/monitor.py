"""One connection's processes, and the root monitor that ties them together.

The listener forks one process per connection; that process is the *monitor* (root, or
the daemon's own user) and stays the only privileged one. Before it holds anything secret
it forks two children, so neither ever has a host key in its memory:

* the **pre-auth** process (:mod:`qshd.preauth`): drops to ``PrivsepUser`` in an empty
  chroot with no new privileges and tight resource limits, then runs the handshake and the
  login protocol -- every byte the client sends before login. What it needs of root is
  asked here over the monitor link (:mod:`qshd.monitor_protocol`);
* the **standby** that becomes the user's process (:mod:`qshd.postauth`): it waits, root
  and idle, for the handoff of a login the monitor accepted, then becomes the user (groups,
  gid, uid, verified) and serves that connection's sessions with the user's rights.

Only then does the monitor load the host keys, answer the pre-auth process (one handshake
signature, the password and key checks), and, on a login, drop the keys, pass the
connection's state to the standby at once (it becomes the user and rebuilds the connection
while the pre-auth process exits), tell it when the pre-auth process is gone (only then
does it read the socket), and tell the listener (startup pipe). It then waits for the
user's process to end and exits with it. A connection that never logs in ends with the
exit status that tells the listener which penalty it earned (:mod:`qshd.outcome`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import select
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from common.accounts.keys import HostKey, PublicKey
from common.aio.memory import release_free_memory
from common.crypto import algorithms
from common.crypto.secret import wipe_all, wipe_on_signals
from common.errors import QsmpError
from common.protocol.auth import METHOD_PASSWORD, METHOD_PUBLICKEY, AuthRequested
from common.protocol.auth import signed_data as user_signed_data
from common.protocol.schedule import signed_data

from . import children, outcome, postauth, preauth, privsep, utmp
from .config import ServerConfig
from .login import Account, Authenticator, PasswordSlots
from .monitor_protocol import (
    Handoff,
    MonitorError,
    MonitorLink,
    Ordering,
    Password,
    PreauthGone,
    PtyClosed,
    PtyOpened,
    PublicKeyLogin,
    Sign,
    Signature,
    Verdict,
)

log = logging.getLogger("qshd")

#: How long the children get to go after SIGTERM before SIGKILL.
KILL_GRACE = 2.0


@dataclass
class Policy:
    """What the monitor decides with; each call may block (this process has one client)."""

    sign: Callable[[bytes, bytes], bytes]                   # key ID, transcript hash
    check_password: Callable[[str, bytes], bool]
    check_key: Callable[[str, bytes, bytes, bytes], bool]   # user, blob, session ID, sig
    max_failures: int
    login_grace: float


def serve_preauth(link: MonitorLink, policy: Policy, *, started: float,
                  tag: str) -> tuple[Handoff | None, int]:
    """Answer the pre-auth process until it hands a login over or goes.

    Returns the handoff (None without a login) and, without one, the exit status that
    tells the listener why: a protocol breach by the child counts as a crash.
    """
    sequence = Ordering(policy.max_failures)
    while True:
        remaining = started + policy.login_grace - time.monotonic()
        if remaining <= 0:
            return None, outcome.EXIT_GRACE
        try:
            request = link.receive(remaining)
            sequence.check(request)
        except MonitorError as exc:
            if "closed" in str(exc):
                return None, (outcome.EXIT_AUTHFAIL if sequence.failures
                              else outcome.EXIT_NOAUTH)
            if "timed out" in str(exc):
                return None, outcome.EXIT_GRACE
            log.error("%s: pre-auth process broke the monitor protocol: %s", tag, exc)
            return None, outcome.EXIT_CRASH
        answer: Signature | Verdict
        if isinstance(request, Sign):
            try:
                signature = policy.sign(request.key_id, request.transcript_hash)
            except KeyError:
                log.error("%s: pre-auth process asked for an unknown host key", tag)
                return None, outcome.EXIT_CRASH
            answer = Signature(signature)
            sequence.signed()
        elif isinstance(request, Password):
            accepted = policy.check_password(request.user, request.password)
            sequence.verdict(request.user, accepted)
            answer = Verdict(accepted)
        elif isinstance(request, PublicKeyLogin):
            accepted = policy.check_key(request.user, request.key_blob, request.session_id,
                                        request.signature)
            sequence.verdict(request.user, accepted)
            answer = Verdict(accepted)
        else:
            assert isinstance(request, Handoff)
            sequence.handed_off()
            return request, 0
        try:
            link.send(answer)
        except OSError:
            # It went away while we decided (killed, crashed): run() reaps it and says how.
            return None, (outcome.EXIT_AUTHFAIL if sequence.failures else outcome.EXIT_NOAUTH)


def end_children(*pids: int) -> None:
    """Stop what is left of a connection that is over (see :func:`qshd.children.end`)."""
    children.end(*pids, grace=KILL_GRACE)


#: How long the pre-auth process may take to exit after handing over (it has nothing left
#: to do but exit; it held the session keys, so the user's process waits for it).
PREAUTH_EXIT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Shared:
    """What the listener prepares once and every connection's process inherits."""

    host_keys: Sequence[PublicKey]          # public halves only
    privsep_user: privsep.PrivsepUser | None  # None: not root, the pre-auth keeps our uid
    password_slots: PasswordSlots


def run(config: ServerConfig, shared: Shared, sock: socket.socket, peer: tuple[str, int],
        number: int, startup_fd: int) -> int:
    """The connection's process (forked by the listener): see the module docstring."""
    host_keys, privsep_user = shared.host_keys, shared.privsep_user
    privsep.not_dumpable()  # it will hold the host keys; its children inherit the flag
    wipe_on_signals()  # a SIGTERM while it holds them zeroes them first
    tag = f"connection #{number} from {peer[0]} port {peer[1]}"
    started = time.monotonic()
    pre_monitor, pre_child = MonitorLink.pair()
    post_monitor, post_child = MonitorLink.pair()

    def standby() -> int:
        privsep.set_process_name("qshd-user")
        for item in (pre_monitor, pre_child, post_monitor):
            item.close()
        for fd in (startup_fd, log_read, log_write):
            os.close(fd)  # the relay must see the pre-auth log's end when that process ends
        handoff = postauth.wait_for_handoff(post_child, config.login_grace_time + 30)
        if handoff is None:
            return 0
        return postauth.serve(config, sock, handoff, post_child, number, tag)

    def confined() -> int:
        privsep.set_process_name("qshd-auth")
        for item in (pre_monitor, post_monitor, post_child):
            item.close()
        os.close(startup_fd)
        os.close(log_read)
        # Its log goes through us: a file it may not write (RLIMIT_FSIZE 0), a pipe it may.
        os.dup2(log_write, 2)
        os.close(log_write)
        # Nor the daemon's stdin and stdout: a log file (which it could truncate; FSIZE
        # only stops growth), the journal's stream, the terminal of a `qshd -D`.
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        privsep.sandbox_preauth(privsep_user or config.privsep_user)
        return preauth.serve(config, sock, pre_child, host_keys, tag)

    local = sock.getsockname()[:2]
    log_read, log_write = os.pipe2(os.O_CLOEXEC)
    # The pre-auth process first: the client's first byte waits for it, not for the standby.
    preauth_pid = _fork(confined, tag)
    standby_pid = _fork(standby, tag)
    os.close(log_write)
    threading.Thread(target=_relay_log, args=(log_read,), daemon=True).start()
    pre_child.close()
    post_child.close()
    sock.close()  # only the children speak to the client
    # Only now, with both children forked, does anything secret enter this process.
    try:
        keys = {key.public.key_id: key for key in _load_keys(config)}
    except Exception as exc:
        log.error("%s: cannot load the host keys: %s", tag, exc)
        end_children(preauth_pid, standby_pid)
        return outcome.EXIT_NOAUTH  # our fault, not the client's: no crash penalty
    authenticator = Authenticator(config, local=local)
    where = f"{peer[0]} port {peer[1]}"
    #: The key options of each accepted key login, by user: the one logged in goes to the
    #: user's process with the handoff (a password login has none).
    granted: dict[str, str] = {}

    def sign(key_id: bytes, transcript_hash: bytes) -> bytes:
        return keys[key_id].sign(signed_data(transcript_hash))

    def check_password(user: str, password: bytes) -> bool:
        request = AuthRequested(user, METHOD_PASSWORD, password=password)
        verdict = shared.password_slots.run(lambda: authenticator.decide(request, where),
                                            config.login_grace_time)
        if verdict is None:  # the in-process pool's words (qshd.password_limits.PasswordChecks)
            log.warning("password check for %s from %s refused: %d checks are already "
                        "running or waiting", user, where, len(shared.password_slots.waiting))
        return bool(verdict)

    def check_key(user: str, blob: bytes, session_id: bytes, signature: bytes) -> bool:
        try:
            key = PublicKey.decode(blob)
            if not key.verify(user_signed_data(session_id, user, blob), signature):
                raise ValueError("signature")
        except (QsmpError, ValueError):
            log.error("%s: pre-auth process vouched for a bad user-key signature", tag)
            return False
        request = AuthRequested(user, METHOD_PUBLICKEY, public_key=key,
                                session_id=session_id, signature=signature)
        options = authenticator.decide_login(request, where)
        if options is None:
            return False
        granted[user] = options.text
        return True

    policy = Policy(sign=sign, check_password=check_password, check_key=check_key,
                    max_failures=config.max_auth_tries, login_grace=config.login_grace_time)
    try:
        handoff, status = serve_preauth(pre_monitor, policy, started=started, tag=tag)
    finally:
        for key in keys.values():
            key.close()  # zeroed: the user's process never needs them
        keys.clear()
        # The backend's cache of expanded signing keys holds them too (SECURITY.md).
        algorithms._pc_signing_key.cache_clear()
        pre_monitor.close()
    if handoff is None:
        preauth_status = _reap(preauth_pid, KILL_GRACE)
        end_children(preauth_pid, standby_pid)
        post_monitor.close()
        if preauth_status is not None and _crashed(preauth_status):
            log.warning("%s: pre-auth process %s", tag, outcome.describe(preauth_status))
            return outcome.EXIT_CRASH
        if status == outcome.EXIT_GRACE:
            log.info("Timeout before authentication for %s", where)
        return status
    user = handoff.user
    handoff = dataclasses.replace(handoff, key_options=granted.get(user, ""))
    # The standby gets ready (becomes the user, rebuilds the connection) while the
    # pre-auth process exits; it reads the socket only after PreauthGone.
    try:
        post_monitor.send(handoff)
    except OSError as exc:  # the standby is gone: there is nobody to hand over to
        log.warning("%s: the user's process went away before the handoff: %s", tag,
                    exc.strerror)
        end_children(preauth_pid, standby_pid)
        return outcome.EXIT_CRASH
    if _reap(preauth_pid, PREAUTH_EXIT_TIMEOUT) is None:
        end_children(preauth_pid)
    try:
        post_monitor.send(PreauthGone())
    except OSError as exc:
        log.warning("%s: the user's process went away during the handoff: %s", tag,
                    exc.strerror)
        end_children(standby_pid)
        return outcome.EXIT_CRASH
    try:
        os.write(startup_fd, outcome.AUTHENTICATED)
        os.close(startup_fd)
    except OSError:
        pass  # the listener is gone (restarted): nobody needs to know
    del handoff
    # What was needed to log in goes back to the kernel (an idle session keeps little),
    # once the login's first command has had the CPU, not in competition with it.
    select.select([post_monitor], [], [], postauth.RELEASE_DELAY)
    release_free_memory()
    serve_user(post_monitor, user, peer[0], tag)
    post_monitor.close()
    # However accounting ended, the user's process runs to its own end.
    ended = _reap(standby_pid, None)
    if ended is not None and not (os.WIFEXITED(ended) and os.WEXITSTATUS(ended) == 0):
        log.warning("%s: user's process %s", tag, outcome.describe(ended))
    return 0


_LINE = re.compile(r"pts/\d{1,6}")


def serve_user(link: MonitorLink, user: str, host: str, tag: str,
               files: utmp.AccountingFiles = utmp.SYSTEM_FILES) -> None:
    """What the user's process asks of root until it ends: terminal accounting, for a
    terminal that is really that user's (a process of the user could otherwise write any
    line it likes into utmp). Whatever is still logged in when it ends is logged out."""
    account = Account.lookup(user)
    logins: dict[str, utmp.Login] = {}
    while account is not None:
        try:
            message = link.receive(None)
        except MonitorError:
            break
        if isinstance(message, PtyOpened) and message.line not in logins:
            try:
                st = os.stat(f"/dev/{message.line}")
                mine = _LINE.fullmatch(message.line) is not None and \
                    stat.S_ISCHR(st.st_mode) and st.st_uid == account.uid
            except OSError:
                mine = False
            if not mine:
                log.warning("%s: refusing to record %r: not a terminal of %s", tag,
                            message.line, user)
                continue
            login = utmp.Login(user, account.uid, message.line, message.pid, host)
            logins[message.line] = login
            utmp.record_login(login, time.time(), files)
        elif isinstance(message, PtyClosed) and message.line in logins:
            login = logins.pop(message.line)
            utmp.record_logout(login, time.time(), files, **_exit_fields(message.status))
        else:
            log.error("%s: the user's process sent %s; no more accounting", tag,
                      type(message).__name__)
            break
    for login in logins.values():
        utmp.record_logout(login, time.time(), files)


def _exit_fields(status: int) -> dict[str, int]:
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status)}
    return {"exit_status": os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0}


def _load_keys(config: ServerConfig) -> list[HostKey]:
    return [HostKey.load(path) for path in config.host_key_paths()]


def _fork(run: Callable[[], int], tag: str) -> int:
    pid = os.fork()
    if pid:
        return pid
    status = 70
    try:
        status = run()
    except BaseException:
        log.exception("%s: unexpected error", tag)
    finally:
        wipe_all()  # os._exit runs no atexit hook
        logging.shutdown()
        os._exit(status)


def _reap(pid: int, timeout: float | None) -> int | None:
    """The child's wait status once it exits within ``timeout``; None if it did not (or
    was reaped already)."""
    try:
        return children.wait_exit(pid, timeout)
    except ChildProcessError:
        return None


def _crashed(status: int) -> bool:
    """A pre-auth process ends with 0 (handed over) or EXIT_NOAUTH; anything else is a
    crash (a signal, an uncaught exception, a sandbox that could not be set up)."""
    return not (os.WIFEXITED(status) and os.WEXITSTATUS(status) in (0, outcome.EXIT_NOAUTH))


#: What the pre-auth process may write to the log, in all: it is the client's to steer.
MAX_RELAYED_LOG = 256 * 1024
_LOG_PREFIX = re.compile(rb"^qshd\[\d+\]: ")
_UNPRINTABLE = re.compile(rb"[^\x20-\x7e]")


def _relay_log(fd: int) -> None:
    """Copy the pre-auth process's log lines into ours, marked ``[preauth]`` as sshd marks
    its pre-auth child's: they come from the process that parses the client's bytes, so
    they are bounded, stripped of control characters, and never taken for our own."""
    budget = MAX_RELAYED_LOG
    with os.fdopen(fd, "rb") as lines:
        for line in lines:
            if budget <= 0:
                continue
            budget -= len(line)
            text = _UNPRINTABLE.sub(b"?", _LOG_PREFIX.sub(b"", line.rstrip(b"\n"))[:2048])
            log.info("%s [preauth]", text.decode("ascii"))
