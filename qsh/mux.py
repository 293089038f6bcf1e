"""The master of connection sharing: the qsh that logged in serves later qsh runs for the
same destination over its connection (ControlMaster, ControlPath, ControlPersist; qsh.1
CONNECTION SHARING).

The control socket is a Unix socket at ControlPath, the user's alone:

* It is created under a random name in the same directory (mode 0600 from the umask, before
  anyone can connect) and hard-linked into place, which fails rather than replace anything:
  a live socket there means another master (this qsh then shares nothing, as ssh does),
  anything that is not a socket (a symlink above all) is left alone and never followed. A
  stale socket (nobody listening: ECONNREFUSED) is unlinked and replaced.
* Each peer's uid (SO_PEERCRED) must be ours; the client checks ours the same way
  (common/client/mux_client.py, which also checks the directory).
* Every message is bounded (common/client/mux_wire.py), a request must come within
  REQUEST_TIMEOUT, at most MAX_CLIENTS conversations run at once, and at most three file
  descriptors are taken from a client (any more ends its conversation).

A mux client's session is an ordinary :class:`qsh.session.Session` whose local end is the
three descriptors the client passed (:class:`qsh.session.LocalEnd`); the client keeps its
terminal and signals and forwards window changes and stop signals here. The exit code goes
back on the control socket. ``-O forward``/``-O cancel`` go to the connection's
:class:`qsh.tunnels.ClientTunnels`, as ``~C`` does. qcp's copy channels are relayed, bytes
only, to the socket the client passed (:meth:`Master._copy`, common/client/mux_copy.py).

ControlPersist: the master forks; the child detaches (new session, stdio on /dev/null) and
serves until it has had no client for that long (0: until ``-O exit`` or the connection
ends); the parent becomes a mux client for its own command, as ssh does. Without it, the
master runs its own session and then waits for its clients before closing.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import os
import secrets
import signal
import socket
import stat
from collections.abc import Mapping

from common import aio
from common.channels.copy import COPY
from common.channels.tunnel import parse_forward
from common.cli import EXIT_FAILURE
from common.client import mux_client
from common.client import mux_wire as wire
from common.client.config import ClientConfig, environment_to_send, wants_pty
from common.client.connect import QshError, Ui, describe_end
from common.client.terminal import saved_blocking_modes
from common.errors import UsageError
from common.forward.pump import Forwarder

from .session import LocalEnd, Session
from .tunnels import ClientTunnels

MAX_CLIENTS = 64
#: Seconds a client has to send its request after connecting.
REQUEST_TIMEOUT = 10.0
#: stdin, stdout, stderr: the only descriptors a client may pass.
MAX_FDS = 3
#: Seconds the server has to answer a tunnel request of ``-O forward``.
FORWARD_TIMEOUT = 30.0
#: Seconds the server has to answer the open of a copy channel for qcp.
COPY_OPEN_TIMEOUT = 30.0
#: sun_path's size on Linux, the terminating NUL included.
MAX_SOCKET_PATH = 108
_RECV_SIZE = 64 * 1024
_STOP_SIGNALS = {"INT": signal.SIGINT, "TERM": signal.SIGTERM, "HUP": signal.SIGHUP}


class _ClientUi(Ui):
    """A mux session's messages go to the client's stderr, with CR LF when the client's
    terminal is raw."""

    def __init__(self, fd: int, *, raw: bool, quiet: bool) -> None:
        super().__init__(0, quiet=quiet)
        self.log_fd = fd
        self._crlf = raw

    def _write(self, text: str) -> None:
        super()._write(text.replace("\n", "\r\n") + "\r" if self._crlf else text)


class _Peer:
    """One conversation on the control socket: framed reads that collect passed fds."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self.fds: list[int] = []

    async def read_frame(self, timeout: float | None) -> tuple[int, bytes]:
        while True:
            if len(self._buffer) >= wire.HEADER_SIZE:
                kind, length = wire.parse_header(bytes(self._buffer[:wire.HEADER_SIZE]))
                end = wire.HEADER_SIZE + length
                if len(self._buffer) >= end:
                    body = bytes(self._buffer[wire.HEADER_SIZE:end])
                    del self._buffer[:end]
                    return kind, body
            await asyncio.wait_for(self._readable(), timeout)
            self._receive()

    def _receive(self) -> None:
        try:
            data, ancillary, flags, _ = self.sock.recvmsg(
                _RECV_SIZE, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            return
        for level, kind, cdata in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
                self.fds.extend(fds)
        if flags & socket.MSG_CTRUNC or len(self.fds) > MAX_FDS:
            raise wire.MuxError("too many file descriptors")
        if not data:
            raise EOFError
        self._buffer += data

    async def _readable(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_reader(self.sock.fileno(), wake)
        try:
            await ready
        finally:
            self._loop.remove_reader(self.sock.fileno())

    async def send(self, data: bytes) -> None:
        await asyncio.wait_for(self._loop.sock_sendall(self.sock, data), REQUEST_TIMEOUT)

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []
        self.sock.close()


def _create_socket(path: str, ui: Ui) -> tuple[socket.socket, tuple[int, int]] | None:
    """The listening socket, linked at ``path``; None (with the reason under -v or as a
    warning) when this qsh cannot be the master there."""
    try:
        mux_client.check_directory(path)
        opened = mux_client.open_master(path)
    except mux_client.MuxUnusable as exc:
        ui.warn(f"ControlSocket {path}: {exc}; not sharing this connection")
        return None
    except (wire.MuxError, OSError, EOFError) as exc:  # something half-alive is there
        ui.warn(f"ControlSocket {path} already exists ({exc}); not sharing this connection")
        return None
    if opened is not None:
        opened[0].close()
        ui.warn(f"ControlSocket {path} already exists, disabling multiplexing")
        return None
    temporary = f"{path}.{secrets.token_hex(8)}"
    if len(os.fsencode(temporary)) >= MAX_SOCKET_PATH:
        ui.warn(f"ControlPath too long ({path}); not sharing this connection")
        return None
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177)
    try:
        server.bind(temporary)
        server.listen(16)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # stale (nobody answered above); a non-socket stays
        os.link(temporary, path, follow_symlinks=False)
    except OSError as exc:
        server.close()
        why = "already exists" if exc.errno == errno.EEXIST else exc.strerror
        ui.warn(f"ControlSocket {path}: {why}; not sharing this connection")
        return None
    finally:
        os.umask(old_umask)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    info = os.lstat(path)
    server.setblocking(False)
    return server, (info.st_dev, info.st_ino)


class Master:
    """The control socket of one connection, and the mux sessions run over it."""

    def __init__(self, connection: aio.QsmpConnection, cfg: ClientConfig, ui: Ui,
                 server: socket.socket, identity: tuple[int, int]) -> None:
        assert cfg.control_path is not None
        self.connection = connection
        self.cfg = cfg
        self.ui = ui
        self.path = cfg.control_path
        self._server: socket.socket | None = server
        self._identity = identity
        self._loop = asyncio.get_running_loop()
        self._clients: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._exit = False
        #: ControlPersist: the pid of the qsh that forked this master, whose own command
        #: needs no confirmation with ControlMaster ask.
        self._own_client = 0
        #: Where ``-O forward`` and ``-O cancel`` go (run_client sets it).
        self.tunnels: ClientTunnels | None = None
        #: In serve(): nothing of the master's own runs; -O exit need not end the connection.
        self._serving = False
        self._loop.add_reader(server.fileno(), self._accept)

    @classmethod
    def start(cls, connection: aio.QsmpConnection, cfg: ClientConfig, ui: Ui) -> Master | None:
        assert cfg.control_path is not None
        created = _create_socket(cfg.control_path, ui)
        if created is None:
            return None
        ui.note(1, f"control socket {cfg.control_path}: sharing this connection")
        return cls(connection, cfg, ui, *created)

    # -- accepting

    def _accept(self) -> None:
        if self._server is None:
            return
        try:
            sock, _ = self._server.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:  # EMFILE and friends: drop this one, keep serving
            self.ui.note(1, f"control socket: accept: {exc.strerror}")
            return
        sock.setblocking(False)
        pid, uid = mux_client.peer_credentials(sock)
        if uid != os.getuid():
            self.ui.note(1, f"control socket: refused a client of uid {uid}")
            sock.close()
            return
        if len(self._clients) >= MAX_CLIENTS:
            self.ui.note(1, "control socket: too many clients; refused one")
            sock.close()
            return
        task = asyncio.ensure_future(self._serve(_Peer(sock, pid)))
        self._clients.add(task)
        task.add_done_callback(self._client_done)
        self._changed.set()

    def _client_done(self, task: asyncio.Task[None]) -> None:
        self._clients.discard(task)
        self._changed.set()

    def stop_listening(self) -> None:
        """No new clients (``-O stop``, and on the way out); the socket goes if it is
        still ours (another master may have replaced a path we no longer hold)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._loop.remove_reader(server.fileno())
        server.close()
        with contextlib.suppress(OSError):
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == self._identity:
                os.unlink(self.path)
        self._changed.set()

    # -- one client

    async def _serve(self, peer: _Peer) -> None:
        try:
            await peer.send(wire.hello(os.getpid()))
            kind, body = await peer.read_frame(REQUEST_TIMEOUT)
            if kind == wire.CHECK:
                await peer.send(wire.frame(wire.OK))
            elif kind == wire.EXIT:
                await peer.send(wire.frame(wire.OK))
                self.ui.note(1, "control socket: exit requested")
                self._exit = True
                self._changed.set()
                if not self._serving:  # a session of the master's own is running: ends too
                    self.connection.close("the control master was told to exit")
            elif kind == wire.STOP:
                await peer.send(wire.frame(wire.OK))
                self.ui.note(1, "control socket: stop listening requested")
                self.stop_listening()
            elif kind in (wire.FORWARD, wire.CANCEL):
                await peer.send(await self._tunnel(kind, *wire.decode_pair(body)))
            elif kind == wire.NEW_SESSION:
                await self._session(peer, wire.SessionRequest.decode(body))
            elif kind == wire.NEW_COPY:
                await self._copy(peer, body)
            else:
                await peer.send(wire.frame(wire.ERROR, wire.string("unexpected request")))
        except (wire.MuxError, OSError, EOFError, TimeoutError) as exc:
            self.ui.note(1, f"control socket: a client failed: {exc!r}")
        finally:
            peer.close()

    async def _session(self, peer: _Peer, request: wire.SessionRequest) -> None:
        fds, peer.fds = peer.fds, []
        try:
            refusal = self._refusal(peer)
            if len(fds) != MAX_FDS:
                refusal = "the request came without stdin, stdout and stderr"
            if refusal is not None:
                await peer.send(wire.frame(wire.ERROR, wire.string(refusal)))
                return
            if peer.pid == self._own_client:
                self._own_client = 0  # once: its pid may be reused
            await peer.send(wire.frame(wire.OK))
            flags = request.flags
            pty = bool(flags & wire.WANT_TTY)
            ui = _ClientUi(fds[2], raw=pty and bool(flags & wire.STDIN_IS_TTY),
                           quiet=bool(flags & wire.QUIET))
            cfg = self.cfg.replace(
                session_type="subsystem" if flags & wire.SUBSYSTEM else "default")
            local = LocalEnd(stdin=fds[0], stdout=fds[1], stderr=fds[2], own_terminal=False,
                             stdin_is_tty=bool(flags & wire.STDIN_IS_TTY), term=request.term,
                             size=request.size, environment=request.environment)
            session = Session(self.connection, cfg, ui, command=request.command, pty=pty,
                              local=local)
            with saved_blocking_modes(tuple(fds)):
                run = asyncio.ensure_future(self._run(session, ui))
                control = asyncio.ensure_future(self._control(peer, session))
                try:
                    await asyncio.wait({run, control}, return_when=asyncio.FIRST_COMPLETED)
                    if not run.done():  # the client went away: so does its session
                        session.stop("the mux client went away")
                    code = await run
                finally:  # also when the master closes: no session outlives its fds
                    for task in (control, run):
                        task.cancel()
                    for task in (control, run):
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
            await peer.send(wire.frame(wire.EXIT_STATUS, wire.u32(code)))
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _refusal(self, peer: _Peer) -> str | None:
        """Why this master serves no client now (None: it does)."""
        if self.cfg.control_master in ("ask", "autoask") and peer.pid != self._own_client:
            return (f"ControlMaster {self.cfg.control_master}: this master cannot ask "
                    "for confirmation (qsh has no askpass); use yes or auto")
        if self._exit or self.connection.terminated is not None:
            return "the master is exiting"
        return None

    async def _copy(self, peer: _Peer, payload: bytes) -> None:
        """qcp's copy channel (common/client/mux_copy.py): opened on this connection and
        relayed to the socket the client passed, as a tunnel is relayed to its TCP
        connection, until both are gone; then OK, so the client knows the relay ended
        here and did not die."""
        fds, peer.fds = peer.fds, []
        sock: socket.socket | None = None
        try:
            if len(fds) == 1:
                with contextlib.suppress(OSError):  # ENOTSOCK: the finally closes it
                    sock = socket.socket(fileno=fds[0])
                    fds.clear()
            refusal = self._refusal(peer)
            if sock is None or sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                refusal = "the copy request came without its socket"
            if refusal is not None:
                await peer.send(wire.frame(wire.ERROR, wire.string(refusal)))
                return
            assert sock is not None
            try:
                channel = await asyncio.wait_for(self.connection.open_channel(COPY, payload),
                                                 COPY_OPEN_TIMEOUT)
            except aio.ChannelOpenError as exc:
                await peer.send(wire.open_failed(exc.reason, exc.message))
                return
            except (aio.ConnectionLost, TimeoutError) as exc:
                await peer.send(wire.frame(wire.ERROR, wire.string(
                    f"the master's connection: {exc or 'no answer from the server'}")))
                return
            except UsageError as exc:  # a payload over the mux's bound, too many channels
                await peer.send(wire.frame(wire.ERROR, wire.string(str(exc))))
                return
            relay = Forwarder(tag=f"mux copy for pid {peer.pid}")
            relay.start(sock)
            sock = None  # the relay's now
            relay.attach(channel)
            try:
                await peer.send(wire.frame(wire.OK))
                await relay.wait()
            finally:  # also when the master closes: no relay outlives its connection
                relay.abort()
            await peer.send(wire.frame(wire.OK))
        finally:
            if sock is not None:
                sock.close()
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    async def _tunnel(self, kind: int, forward: str, text: str) -> bytes:
        """``-O forward`` / ``-O cancel`` of one tunnel: the answer to send."""
        def error(message: str) -> bytes:
            return wire.frame(wire.ERROR, wire.string(message))

        if self.tunnels is None:
            return error("this master has no tunnels")
        try:
            spec = parse_forward(forward, text)
        except ValueError as exc:
            return error(str(exc))
        try:
            if kind == wire.CANCEL:
                why = await self.tunnels.cancel(spec.kind, spec.bind, spec.port)
                return error(why) if why else wire.frame(wire.OK)
            failures = await asyncio.wait_for(self.tunnels.add([spec]), FORWARD_TIMEOUT)
        except (aio.ChannelClosedError, aio.ConnectionLost, TimeoutError) as exc:
            return error(f"tunnel {text}: {exc or 'no answer from the server'}")
        if failures:
            return error(failures[0])
        self.ui.note(1, f"control socket: tunnel {text} added")
        if spec.kind == "remote" and spec.port == 0:
            port = self.tunnels.bound_ports.get(spec, 0)
            return wire.frame(wire.OK, wire.string(
                f"Allocated port {port} for remote forward to {spec.host}:{spec.host_port}"))
        return wire.frame(wire.OK)

    async def _run(self, session: Session, ui: Ui) -> int:
        try:
            return await session.run()
        except QshError as exc:
            ui.error(str(exc))
        except aio.ConnectionLost as exc:
            ui.error(f"connection to {self.cfg.host} closed: {describe_end(exc.terminated)}")
        return EXIT_FAILURE

    async def _control(self, peer: _Peer, session: Session) -> None:
        """Window changes and stop signals from the client, until it goes away."""
        while True:
            kind, body = await peer.read_frame(None)
            if kind == wire.WINDOW_CHANGE:
                session.resize(wire.decode_size(body))
            elif kind == wire.SIGNAL:
                signum = _STOP_SIGNALS.get(wire.decode_string(body))
                if signum is not None:
                    session.on_signal(signum)
            else:
                raise wire.MuxError(f"unexpected message type {kind} in a session")

    # -- the master's life

    async def serve(self, persist: float | None) -> None:
        """Until ``-O exit``, the connection's end, or no client left: at once when
        ``persist`` is None, after ``persist`` idle seconds otherwise (0: never)."""
        closed = asyncio.ensure_future(self.connection.wait_closed())
        self._serving = True
        try:
            while not self._exit and not closed.done():
                timeout: float | None = None
                if not self._clients:
                    if self._server is None or persist is None:
                        break
                    timeout = persist or None
                self._changed.clear()
                changed = asyncio.ensure_future(self._changed.wait())
                done, _ = await asyncio.wait({changed, closed}, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if not done:
                    self.ui.note(1, f"control socket: idle for {persist:g}s; exiting")
                    break
        finally:
            closed.cancel()
        self.close()

    def close(self) -> None:
        self.stop_listening()
        for task in list(self._clients):
            task.cancel()

    def detach(self, *, command: str | None, force_tty: bool, no_command: bool,
               quiet: bool, environ: Mapping[str, str]) -> None:
        """ControlPersist: the child returns, a detached master; the parent becomes a mux
        client of it for this run's own command (none with -N) and exits with its code."""
        loop = asyncio.get_running_loop()
        pid = os.fork()
        if pid:
            # The event loop's signal wake-up pipe is the child's too now: a signal to
            # this process must not reach the master's loop.
            signal.set_wakeup_fd(-1)
            for signum in _STOP_SIGNALS.values():
                signal.signal(signum, signal.SIG_DFL)
            status = 0
            if not no_command:
                cfg = self.cfg
                pty = wants_pty(cfg.request_tty, command=command,
                                           stdin_is_tty=os.isatty(0), force=force_tty)
                request = mux_client.session_request(
                    command=command, pty=pty, subsystem=cfg.session_type == "subsystem",
                    quiet=quiet, environment=environment_to_send(cfg, environ),
                    environ=environ)
                result = mux_client.try_session(self.path, request, verbose=False)
                status = EXIT_FAILURE if result is None else result
            os._exit(status)
        import concurrent.futures

        self._own_client = os.getppid()
        asyncio._set_running_loop(loop)  # asyncio ties the running loop to its pid
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor())
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
