"""The listening process: accept, admit, fork. It never reads a byte of the protocol.

Everything a client sends is parsed in that connection's own process, forked from here
(see :mod:`qshd.connection`): a bug reached through the protocol crashes one connection,
two users copying files use two cores, and established sessions do not depend on this
process at all -- stopping, killing or re-executing the listener leaves them running
(sshd's model). The listener is kept small and single-threaded on purpose: a plain
``selectors`` loop, no asyncio, no thread pool, so ``fork`` is safe and cheap, and it
imports everything a connection needs *before* it forks, so a child starts warm.

The listener never holds a host key's private half: keys are checked at start-up and on
reload in a throwaway child, and each connection's monitor loads them after it has forked
the process that talks to the client.

What the listener does decide is admission (:mod:`qshd.admission`): MaxStartups with
random early drop, per-source limits and penalties, all before a fork, so a flood costs a
``accept`` and a ``close``. It learns how each login ended from the connection's startup
pipe and exit status (:mod:`qshd.outcome`).

SIGHUP re-executes the daemon with the same arguments, as sshd does, after a ``qshd -t``
of the new configuration passes; the listening sockets are passed across the ``exec`` so
no connection attempt is refused meanwhile. A configuration that fails the check leaves the
running daemon as it was, with one log line saying why.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from common.crypto.secret import wipe_all

from . import outcome, privsep
from .admission import Admission, Penalty, Refused, Ticket
from .loglevel import NOTICE

log = logging.getLogger("qshd")

#: Environment of a re-executed listener: the inherited listening sockets, as
#: ``fd:address:port`` items separated by commas.
LISTEN_FDS_ENV = "QSHD_LISTEN_FDS"
#: Set on re-exec: the daemon is already detached; stay in the foreground of that.
REEXEC_ENV = "QSHD_REEXEC"
#: Seconds a reload's configuration check may take.
RELOAD_CHECK_TIMEOUT = 60.0


#: ``serve(sock, peer, number, startup_fd)`` runs in the forked child and returns its exit
#: status; the listener's state is gone from the child by then.
ServeConnection = Callable[[socket.socket, tuple[str, int], int, int], int]


@dataclass
class _Child:
    pid: int
    number: int
    ticket: Ticket
    startup: int | None
    authenticated: bool = False


@dataclass
class Listener:
    addresses: list[tuple[str, int]]
    serve: ServeConnection
    admission: Admission
    #: argv after ``python -m qshd``: what a reload re-executes.
    argv: list[str]
    backlog: int = 128
    sockets: list[socket.socket] = field(default_factory=list)
    _children: dict[int, _Child] = field(default_factory=dict)
    _by_pipe: dict[int, _Child] = field(default_factory=dict)
    _numbers: int = 0
    _stop: bool = False
    _reload: bool = False
    _selector: selectors.BaseSelector | None = None

    # ------------------------------------------------------------------ sockets

    def bind(self) -> None:
        """Bind every address, or take the sockets a re-executing listener passed on."""
        inherited = _inherited_sockets()
        for index in range(len(self.addresses)):
            host, port = self.addresses[index]  # read afresh: a -p 0 port is shared on
            sock = inherited.pop((host, port), None)
            if sock is None and port == 0:  # re-executed after -p 0: keep the port it got
                sock = next((inherited.pop(key) for key in list(inherited) if key[0] == host),
                            None)
            if sock is None:
                sock = _bind(host, port, self.backlog)
            if port == 0:  # later addresses share the first one's port (as -p 0 did)
                port = sock.getsockname()[1]
                self.addresses = [(h, port if p == 0 else p) for h, p in self.addresses]
            self.sockets.append(sock)
        for sock in inherited.values():  # a reload that dropped an address
            sock.close()

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        privsep.set_process_name("qshd")
        gc.collect()
        gc.freeze()  # children share these pages instead of copying them on first GC
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        handlers = {signal.SIGCHLD: self._noop, signal.SIGHUP: self._on_hup,
                    signal.SIGTERM: self._on_stop, signal.SIGINT: self._on_stop}
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        # They were blocked from start-up (qshd/cli.py), or across the exec of a reload
        # (_reexec): a signal that arrived meanwhile is pending, and is handled now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, CONTROL_SIGNALS)
        selector = self._selector = selectors.DefaultSelector()
        for sock in self.sockets:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, "accept")
        selector.register(wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop:
                try:
                    self._step(selector, wake_r)
                except Exception:  # a bug of ours must not stop the daemon
                    log.exception("listener: unexpected error; carrying on")
                    time.sleep(0.1)
        finally:
            signal.set_wakeup_fd(-1)
            with contextlib.suppress(Exception):
                self._reap()  # so the count below is right
            selector.close()
            os.close(wake_r)
            os.close(wake_w)
            for sock in self.sockets:
                sock.close()
        log.log(NOTICE, "listener stopped; %d connection(s) carry on", len(self._children))

    def _step(self, selector: selectors.BaseSelector, wake_r: int) -> None:
        for key, _ in selector.select(timeout=5.0):
            if key.data == "accept":
                self._accept(key.fileobj, selector)  # type: ignore[arg-type]
            elif key.data == "wake":
                _drain(wake_r)
            else:
                self._startup_readable(key.data, selector)
        self._reap()
        if self._reload:
            self._reload = False
            self._reexec()

    def _noop(self, _sig: int, _frame: object) -> None:
        pass

    def _on_hup(self, _sig: int, _frame: object) -> None:
        self._reload = True

    def _on_stop(self, _sig: int, _frame: object) -> None:
        self._stop = True

    def _accept(self, listening: socket.socket, selector: selectors.BaseSelector) -> None:
        try:
            sock, peer = listening.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EMFILE and friends: say so, keep listening
            log.error("accept: %s", exc.strerror)
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                time.sleep(0.1)
            return
        address, port = str(peer[0]), int(peer[1])
        self._numbers += 1
        number = self._numbers
        local = listening.getsockname()
        ticket = self.admission.admit(address, port, str(local[0]), int(local[1]),
                                      time.monotonic())
        if isinstance(ticket, Refused):  # logged by admit(), in sshd's words
            _close_now(sock)
            return
        try:
            startup_r, startup_w = os.pipe2(os.O_CLOEXEC)
        except OSError as exc:
            log.error("connection #%d: %s", number, exc.strerror)
            _close_now(sock)
            return
        try:
            pid = os.fork()
        except OSError as exc:
            log.error("connection #%d from %s: fork: %s", number, address, exc.strerror)
            os.close(startup_r)
            os.close(startup_w)
            _close_now(sock)
            self.admission.ended(ticket, None, time.monotonic())
            return
        if pid == 0:  # the connection's process
            self._become_child(selector, startup_r)
            status = 70  # EX_SOFTWARE: serve() itself raised
            try:
                sock.setblocking(True)
                status = self.serve(sock, (address, port), number, startup_w)
            except BaseException:
                log.exception("connection #%d: unexpected error", number)
            finally:
                wipe_all()  # os._exit runs no atexit hook
                os._exit(status)
        os.close(startup_w)
        sock.close()
        child = _Child(pid, number, ticket, startup_r)
        self._children[pid] = child
        self._by_pipe[startup_r] = child
        selector.register(startup_r, selectors.EVENT_READ, child)

    def _become_child(self, selector: selectors.BaseSelector, own_pipe: int) -> None:
        """Shed the listener: its sockets, the other children's pipes, its signals."""
        signal.set_wakeup_fd(-1)
        privsep.set_process_name("qshd-session")
        for sig in (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        selector.close()
        for sock in self.sockets:
            sock.close()
        os.close(own_pipe)
        for fd in self._by_pipe:
            os.close(fd)
        self._children.clear()
        self._by_pipe.clear()
        # The listener's objects stay frozen: a collection in the child then never walks
        # (and so never copies) the pages it shares with the listener and its siblings.
        with contextlib.suppress(OSError):
            os.setsid()  # a terminal's ^C to a foreground qshd -D ends the listener only

    def _startup_readable(self, child: _Child, selector: selectors.BaseSelector) -> None:
        assert child.startup is not None
        try:
            data = os.read(child.startup, 16)
        except OSError:
            data = b""
        if data.startswith(outcome.AUTHENTICATED) and not child.authenticated:
            child.authenticated = True
            self.admission.authenticated(child.ticket)
        if not data or child.authenticated:
            self._forget_pipe(child)

    def _forget_pipe(self, child: _Child) -> None:
        assert child.startup is not None and self._selector is not None
        self._selector.unregister(child.startup)
        del self._by_pipe[child.startup]
        os.close(child.startup)
        child.startup = None

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self._children.pop(pid, None)
            if child is None:
                continue  # a connection of the listener we re-executed from
            if child.startup is not None:
                self._forget_pipe(child)
            if child.authenticated:
                self.admission.ended(child.ticket, None, time.monotonic())
                continue
            penalty = outcome.penalty(status)
            if penalty is Penalty.CRASH:
                log.warning("connection #%d from %s port %d: pre-login process %s",
                            child.number, child.ticket.address, child.ticket.port,
                            outcome.describe(status))
            self.admission.ended(child.ticket, penalty, time.monotonic())

    # ------------------------------------------------------------------ reload

    def _reexec(self) -> None:
        """SIGHUP: check the configuration as it now stands, then exec ourselves anew."""
        try:
            check = subprocess.run([sys.executable, "-m", "qshd", "-t", *self.argv],
                                   capture_output=True, text=True, timeout=RELOAD_CHECK_TIMEOUT,
                                   stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.log(NOTICE, "reload refused: the configuration check did not run: %s", exc)
            return
        if check.returncode != 0:
            reason = (check.stderr.strip().splitlines() or ["(no message)"])[-1]
            log.log(NOTICE, "reload refused, keeping the running configuration: %s", reason)
            return
        # From here to the exec a SIGTERM would be lost (the new process knows nothing of
        # it): block the control signals, so that one arriving now stays pending across
        # the exec, and give up the reload if a stop came during the check.
        signal.pthread_sigmask(signal.SIG_BLOCK, CONTROL_SIGNALS)
        if self._stop:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, CONTROL_SIGNALS)
            log.log(NOTICE, "received SIGHUP, then a stop: not restarting")
            return
        log.log(NOTICE, "received SIGHUP; restarting with the new configuration")
        items = []
        for sock, (host, port) in zip(self.sockets, self.addresses, strict=True):
            os.set_inheritable(sock.fileno(), True)
            sock.setblocking(True)
            items.append(f"{sock.fileno()}:{host}:{port}")
        env = dict(os.environ, **{LISTEN_FDS_ENV: ",".join(items), REEXEC_ENV: "1"})
        signal.set_wakeup_fd(-1)
        logging.shutdown()
        try:
            os.execve(sys.executable, [sys.executable, "-m", "qshd", *self.argv], env)  # noqa: S606
        except OSError as exc:  # keep serving as we were
            signal.pthread_sigmask(signal.SIG_UNBLOCK, CONTROL_SIGNALS)
            log.log(NOTICE, "reload failed: exec: %s", exc.strerror)
            for sock in self.sockets:
                os.set_inheritable(sock.fileno(), False)
                sock.setblocking(False)


def _inherited_sockets() -> dict[tuple[str, int], socket.socket]:
    spec = os.environ.pop(LISTEN_FDS_ENV, "")
    found: dict[tuple[str, int], socket.socket] = {}
    for item in filter(None, spec.split(",")):
        fd_text, _, rest = item.partition(":")
        host, _, port_text = rest.rpartition(":")
        try:
            sock = socket.socket(fileno=int(fd_text))
        except (ValueError, OSError):
            log.warning("ignoring an inherited listening socket %r", item)
            continue
        os.set_inheritable(sock.fileno(), False)
        found[(host, int(port_text))] = sock
    return found


#: What stops or reloads the listener.
CONTROL_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


class BindError(Exception):
    """A ListenAddress that cannot be resolved or bound: one line for the administrator."""


def _bind(host: str, port: int, backlog: int) -> socket.socket:
    where = f"cannot listen on {host} port {port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "not a valid host name"
        raise BindError(f"{where}: {reason}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(f"{where}: {exc.strerror or exc}") from None
    return sock


def check_address(host: str) -> None:
    """What ``qshd -t`` can know without taking the port (a running daemon holds it): that
    the address resolves and is one of this machine's (bound with port 0 and let go).
    Raises :class:`BindError`."""
    _bind(host, 0, 1).close()


def _close_now(sock: socket.socket) -> None:
    """Refused before a byte: no lingering, no half-close."""
    with contextlib.suppress(OSError):
        sock.close()


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, InterruptedError):
        pass
