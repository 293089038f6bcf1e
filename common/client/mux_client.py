"""The mux client: a qsh run that uses another qsh's connection instead of making its own.

What it costs is the point (issue 18: a command over a shared connection within 15 ms of
CPU): no asyncio, no crypto, no protocol stack -- the socket, the terminal and the three
file descriptors, synchronously. The master (qsh/mux.py) opens the session channel on its
connection and pumps between the descriptors passed here and the channel; all this process
does is keep its terminal raw, forward window-size changes and signals, and wait for the
exit code.

Trust in the control socket (both directions are the same user, or nothing):

* The socket is opened without following a symlink (``O_PATH | O_NOFOLLOW``, connected
  through ``/proc/self/fd``): whatever sits at ControlPath must itself be a socket, owned
  by us. A symlink there is never followed, by the client or by the master.
* The directory holding it must be ours (or root's) and not writable by others unless
  sticky (as /tmp): otherwise someone else could swap the socket between check and use.
* The master's uid (SO_PEERCRED) must be ours; the master checks ours the same way.
"""

from __future__ import annotations

# _socket and _signal, not socket and signal: those build enums at import, which alone
# cost this path more than everything else it imports (contextlib is left out too).
import _signal  # type: ignore[import-not-found]
import _socket
import os
import select
import stat
import struct

from common.cli import EXIT_FAILURE
from common.client import mux_wire as wire
from common.client.config.settings import wants_pty

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from common.client.config import ClientConfig

#: Seconds to wait for the master's hello and its answer to a request.
REPLY_TIMEOUT = 10.0
#: After this many stop signals the client gives up on the master and exits by itself.
SIGNALS_BEFORE_GIVING_UP = 3
#: common/channels/session.py's MAX_ENV_VALUE (not imported: this path stays small).
MAX_ENV_VALUE = 32 * 1024
_PEERCRED = struct.Struct("3i")  # pid, uid, gid
_Attributes = list[int | list[bytes | int]]  # termios.tcgetattr's
#: The signals passed on to the master, by the names the session's "signal" request uses.
_STOP_SIGNALS: dict[int, str] = {_signal.SIGINT: "INT", _signal.SIGTERM: "TERM",
                                 _signal.SIGHUP: "HUP"}


class MuxUnusable(Exception):
    """There is something at ControlPath, but not a master we may talk to."""


def check_directory(path: str) -> None:
    """The directory of a control socket must be ours (or root's) and writable by nobody
    else, except a sticky one (as /tmp), where others cannot replace what is ours."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        info = os.stat(directory)
    except OSError as exc:
        raise MuxUnusable(f"{directory}: {exc.strerror}") from None
    if info.st_uid not in (os.getuid(), 0):
        raise MuxUnusable(f"{directory} belongs to another user")
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise MuxUnusable(f"{directory} is writable by other users")


def peer_credentials(sock: _socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket."""
    data = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, _gid = _PEERCRED.unpack(data)
    return int(pid), int(uid)


def open_master(path: str) -> tuple[_socket.socket, int] | None:
    """A connection to the master listening at ``path`` and its pid; None when nobody
    listens there (no socket, or a stale one: the caller may replace it);
    :class:`MuxUnusable` when what is there must not be used."""
    check_directory(path)
    try:
        handle = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MuxUnusable(f"{path}: {exc.strerror}") from None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        info = os.fstat(handle)
        if not stat.S_ISSOCK(info.st_mode):
            raise MuxUnusable(f"{path} is not a socket")
        if info.st_uid != os.getuid():
            raise MuxUnusable(f"{path} belongs to another user")
        sock.settimeout(REPLY_TIMEOUT)
        try:
            sock.connect(f"/proc/self/fd/{handle}")
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            return None  # stale: its master is gone
        if peer_credentials(sock)[1] != os.getuid():
            raise MuxUnusable(f"the master at {path} runs as another user")
        kind, body = read_frame(sock)
        if kind != wire.HELLO:
            raise wire.MuxError("no hello from the master")
        return sock, wire.decode_hello(body)
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(handle)


def _read_exactly(sock: _socket.socket, n: int) -> bytes:
    chunks: list[bytes] = []
    while n:
        chunk = sock.recv(min(n, 65536))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(sock: _socket.socket) -> tuple[int, bytes]:
    """One message; :class:`EOFError` when the master closed, ``TimeoutError`` per the
    socket's timeout."""
    kind, length = wire.parse_header(_read_exactly(sock, wire.HEADER_SIZE))
    return kind, _read_exactly(sock, length)


def _answer(sock: _socket.socket, said: list[str] | None = None) -> str | None:
    """The master's answer to a request: None for OK (its message, if any, appended to
    ``said``), the reason for ERROR."""
    kind, body = read_frame(sock)
    if kind == wire.OK:
        if body and said is not None:
            said.append(wire.decode_string(body))
        return None
    if kind == wire.ERROR:
        return wire.decode_string(body)
    raise wire.MuxError(f"unexpected answer type {kind}")


# --- ``-O``: commands to the master ----------------------------------------------------------

#: -O commands and what ssh prints once each is done.
COMMANDS = {"check": wire.CHECK, "exit": wire.EXIT, "stop": wire.STOP}
_DONE = {"exit": "Exit request sent.", "stop": "Stop listening request sent."}


def control_command(path: str, name: str, *, forwards: Sequence[tuple[str, str]] = (),
                    err: int = 2) -> int:
    """``qsh -O NAME``: 0 when the master did it, 255 when there is none or it refused;
    what happened goes to stderr in ssh's words. ``forward`` and ``cancel`` take the
    command line's tunnels, ``(kind, spec)`` each, one request apiece."""
    def say(text: str) -> None:
        _write_all(err, (text + "\n").encode(errors="replace"))

    if name in ("forward", "cancel"):
        if not forwards:
            say(f"qsh: -O {name} needs a tunnel: -L, -R or -D")
            return EXIT_FAILURE
        kind = wire.FORWARD if name == "forward" else wire.CANCEL
        requests = [wire.frame(kind, wire.string(k) + wire.string(text))
                    for k, text in forwards]
    elif name in COMMANDS:
        requests = [wire.frame(COMMANDS[name])]
    else:
        say(f"qsh: unknown -O command {name!r} (check, exit, stop, forward, cancel)")
        return EXIT_FAILURE
    said: list[str] = []
    for request in requests:
        try:
            opened = open_master(path)
            if opened is None:
                say(f"Control socket connect({path}): No such file or directory, or no master")
                return EXIT_FAILURE
            sock, pid = opened
            try:
                sock.sendall(request)
                refused = _answer(sock, said)
            finally:
                sock.close()
        except (MuxUnusable, wire.MuxError, OSError, EOFError) as exc:
            say(f"qsh: control socket {path}: {describe_failure(exc)}")
            return EXIT_FAILURE
        for line in said:
            say(line)
        said.clear()
        if refused is not None:
            say(f"qsh: the master refused: {refused}")
            return EXIT_FAILURE
    if name in ("check", "exit", "stop"):
        say(f"Master running (pid={pid})" if name == "check" else _DONE[name])
    return 0


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the master closed the connection"
    if isinstance(exc, TimeoutError):
        return "the master did not answer"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


# --- A session -------------------------------------------------------------------------------


def window_size(fd: int) -> wire.Size | None:
    """(columns, rows, width_px, height_px) of the terminal on ``fd``, None if none (the
    same as common/client/terminal.py's, which this path must not import: asyncio)."""
    import fcntl
    import termios

    try:
        packed = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None
    rows, columns, width_px, height_px = struct.unpack("HHHH", packed)
    if not rows or not columns:
        return None
    return columns, rows, width_px, height_px


def session_request(*, command: str | None, pty: bool, subsystem: bool, quiet: bool,
                    environment: Sequence[tuple[str, str]],
                    environ: Mapping[str, str]) -> wire.SessionRequest:
    stdin_is_tty = os.isatty(0)
    flags = ((wire.WANT_TTY if pty else 0) | (wire.SUBSYSTEM if subsystem else 0)
             | (wire.STDIN_IS_TTY if stdin_is_tty else 0) | (wire.QUIET if quiet else 0))
    size = (window_size(0 if stdin_is_tty else 1) if pty else None) or (80, 24, 0, 0)
    # What the session would not send anyway stays out of the request, which must fit a
    # frame: values over the session's limit, variables past MAX_ENV.
    sendable = [(name, value) for name, value in environment
                if len(value.encode("utf-8", "surrogateescape")) <= MAX_ENV_VALUE]
    return wire.SessionRequest(flags=flags, term=(environ.get("TERM") or "dumb")[:64],
                               size=size, command=command,
                               environment=sendable[:wire.MAX_ENV])


def _enter_raw() -> _Attributes | None:
    """fd 0 in raw mode for a pty session (as ssh's mux client does it: the master only
    moves bytes); what to restore (:func:`_restore`), None if fd 0 is no terminal."""
    import termios
    import tty

    try:
        saved: _Attributes = termios.tcgetattr(0)
        tty.setraw(0, termios.TCSADRAIN)
    except termios.error:
        return None
    return saved


def _restore(saved: _Attributes) -> None:
    import termios

    try:  # noqa: SIM105 - contextlib costs this path an import
        termios.tcsetattr(0, termios.TCSADRAIN, saved)
    except (OSError, termios.error):
        pass  # the terminal is gone: nothing left to restore


def send_with_fds(sock: _socket.socket, data: bytes, fds: tuple[int, ...]) -> None:
    """``data`` with ``fds`` passed (SCM_RIGHTS) on its first byte."""
    rights = struct.pack(f"{len(fds)}i", *fds)
    sent = sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
    if sent < len(data):
        sock.sendall(data[sent:])


def run_session(sock: _socket.socket, request: wire.SessionRequest) -> int:
    """Hand fds 0-2 and the request to the master, then wait for the exit code, passing
    on window-size changes and stop signals. Errors are one ``qsh:`` line and 255."""
    try:
        send_with_fds(sock, request.encode(), (0, 1, 2))
        refused = _answer(sock)
    except (wire.MuxError, OSError, EOFError) as exc:
        _error(f"control socket: {describe_failure(exc)}")
        return EXIT_FAILURE
    if refused is not None:
        _error(refused)
        return EXIT_FAILURE
    tty = bool(request.flags & wire.WANT_TTY and request.flags & wire.STDIN_IS_TTY)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    pending: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        pending.append(signum)

    watched = list(_STOP_SIGNALS)
    if tty:
        watched.append(_signal.SIGWINCH)
    previous = {signum: _signal.signal(signum, on_signal) for signum in watched}
    old_wakeup = _signal.set_wakeup_fd(wake_w)
    stops = 0
    saved = None
    try:
        saved = _enter_raw() if tty else None
        sock.settimeout(None)
        while True:
            readable, _, _ = select.select([sock.fileno(), wake_r], [], [])
            if wake_r in readable:
                try:  # noqa: SIM105 - as in _restore
                    os.read(wake_r, 256)
                except BlockingIOError:
                    pass
            while pending:
                signum = pending.pop(0)
                if signum == _signal.SIGWINCH:
                    size = window_size(0)
                    if size is not None:
                        sock.sendall(wire.encode_size(size))
                    continue
                stops += 1
                if stops >= SIGNALS_BEFORE_GIVING_UP:
                    return 128 + signum
                name = _STOP_SIGNALS[signum]
                sock.sendall(wire.frame(wire.SIGNAL, wire.string(name)))
            if sock.fileno() in readable:
                kind, body = read_frame(sock)
                if kind == wire.EXIT_STATUS:
                    return min(wire.decode_u32(body), EXIT_FAILURE)
                raise wire.MuxError(f"unexpected message type {kind}")
    except (wire.MuxError, OSError, EOFError) as exc:
        _error(f"the master ended the session: {describe_failure(exc)}")
        return EXIT_FAILURE
    finally:
        if saved is not None:
            _restore(saved)
        _signal.set_wakeup_fd(old_wakeup)
        for signum, handler in previous.items():
            _signal.signal(signum, handler)
        os.close(wake_r)
        os.close(wake_w)


def _error(message: str) -> None:
    _write_all(2, f"qsh: {message}\n".encode(errors="replace"))


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


def shared_session(cfg: ClientConfig, command: str | None, *, force_tty: bool, quiet: bool,
                   verbose: bool) -> int | None:
    """This run's session over the master's connection at ``cfg.control_path``: its exit
    code, or None when no master answers (the caller then logs in by itself). One place
    for qsh's full command line and its fast path (qsh/entry.py)."""
    from common.client.config import environment_to_send

    assert cfg.control_path is not None
    pty = wants_pty(cfg.request_tty, command=command, stdin_is_tty=os.isatty(0),
                    force=force_tty)
    request = session_request(
        command=command, pty=pty, subsystem=cfg.session_type == "subsystem", quiet=quiet,
        environment=environment_to_send(cfg, os.environ), environ=os.environ)
    return try_session(cfg.control_path, request, verbose=verbose)


def try_session(path: str, request: wire.SessionRequest, *, verbose: bool) -> int | None:
    """The whole mux client: the exit code, or None when there is no master to use (the
    caller logs in itself, as ssh does)."""
    try:
        opened = open_master(path)
    except (MuxUnusable, wire.MuxError, OSError, EOFError) as exc:
        if verbose:
            line = f"debug1: not using control socket {path}: {describe_failure(exc)}\n"
            _write_all(2, line.encode(errors="replace"))
        return None
    if opened is None:
        return None
    sock, pid = opened
    if verbose:
        _write_all(2, f"debug1: using the shared connection of master {pid} ({path})\n"
                   .encode(errors="replace"))
    try:
        return run_session(sock, request)
    finally:
        sock.close()

