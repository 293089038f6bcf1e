"""One qsh run: reach the host, trust it, log in, run a shell or a command, return its status.

The pieces are shared with the Python API (:mod:`qsh.api`), which differs only in having no
person to ask and no terminal to drive:

* :func:`open_connection` -- the TCP connection and handshake, with the host key checked
  against known_hosts (TOFU per ``StrictHostKeyChecking``); the first login attempt rides
  behind the handshake when there is a key to try.
* :class:`KeyRing` and :func:`authenticate` -- identity files in config order (encrypted ones
  unlocked on the terminal), then passwords on the terminal, as ssh does.
* :class:`Session` -- the ``session`` channel: pty-req / shell / exec, the byte pumps between
  the local fds and the channel with flow control both ways, the terminal in raw mode, the
  ``~`` escapes, SIGWINCH, signals, and the remote exit status.

The first two are in common/client/connect.py, :class:`Session` (and the exit status and
signal rules) in qsh/session_channel.py, the fds it moves bytes through in qsh/local_end.py.
This module is the run around them (:func:`run_client`): the login, a ControlMaster, the
tunnels, ``-N`` and ``-f``, the session, and the connection's close.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from common import aio
from common.cli import stdin_from_null
from common.client import terminal
from common.client.config import ClientConfig, wants_pty
from common.client.connect import (
    DisconnectError,
    QshError,
    StopSignals,
    Ui,
    close_connection,
    describe_end,
    login,
)
from common.errors import ErrorCode

# re-exported: importers predate the split (qsh/stdio.py, qsh/mux.py, tests, bench)
from .local_end import READ_SIZE as READ_SIZE
from .local_end import FdReader as FdReader
from .local_end import FdWriter as FdWriter
from .local_end import LocalEnd as LocalEnd
from .session_channel import Session as Session
from .session_channel import exit_code as exit_code

if TYPE_CHECKING:
    from common.channels.tunnel import ForwardSpec

    from .tunnels import ClientTunnels

# The session channel (Session, exit_code, the outcome): qsh/session_channel.py.

# The local fds (FdReader, FdWriter, READ_SIZE) and LocalEnd: qsh/local_end.py.

# --- Whole runs ---------------------------------------------------------------------------


async def settle_tunnels(negotiation: Awaitable[list[str]], cfg: ClientConfig, ui: Ui) -> None:
    """The tunnels' answers: with ExitOnForwardFailure a refusal ends qsh (255) in one line
    naming the tunnel and the reason; without, each refusal is a warning."""
    failures = await negotiation
    if not failures:
        return
    if cfg.exit_on_forward_failure:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise QshError(f"tunnel refused: {failures[0]}{more}")
    for failure in failures:
        ui.warn(f"qsh: tunnel not set up: {failure}")


def go_background() -> None:
    """``-f``: the parent exits 0, the child carries on in a session of its own with stdin
    from /dev/null (stdout and stderr stay, as ssh's). The event loop carries over: this
    process has no other thread, and the executor gets fresh threads."""
    import concurrent.futures

    loop = asyncio.get_running_loop()
    if os.fork():
        os._exit(0)
    # asyncio ties the running loop to the pid that started it; this process continues it.
    asyncio._set_running_loop(loop)
    os.setsid()
    stdin_from_null()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor())


async def wait_connection(connection: aio.QsmpConnection, cfg: ClientConfig) -> int:
    """``-N``: tunnels only, until the connection ends: 0 after the server's goodbye, 255
    (:class:`DisconnectError`) when it was lost."""
    await connection.wait_closed()
    terminated = connection.terminated
    if terminated is None or terminated.code != ErrorCode.NONE:
        raise DisconnectError(f"connection to {cfg.host} closed: {describe_end(terminated)}")
    return 0


def new_tunnels(connection: aio.QsmpConnection, ui: Ui,
                specs: list[ForwardSpec]) -> ClientTunnels:
    """The connection's tunnels; the tunnel engine loads here, for a run that uses it."""
    from .tunnels import ClientTunnels

    return ClientTunnels(connection, ui, specs)


async def run_client(cfg: ClientConfig, ui: Ui, *, command: str | None, force_tty: bool,
                     no_command: bool = False, background: bool = False,
                     quiet: bool = False) -> int:
    """The whole of ``qsh``: the exit status, or :class:`QshError`.

    SIGTERM/SIGHUP/SIGINT during connecting and logging in cancel this task, so every
    ``finally`` runs (a password prompt's echo comes back); the session replaces those
    handlers with its own once its channel is open. All are removed on the way out.
    """
    connection: aio.QsmpConnection | None = None
    tunnels: ClientTunnels | None = None
    session: Session | None = None
    master = None
    with StopSignals(), terminal.saved_blocking_modes():
        try:
            connection = await login(cfg, ui)
            if cfg.control_path is not None and cfg.control_master != "no":
                from . import mux  # connection sharing: only for those who ask for it

                master = mux.Master.start(connection, cfg, ui)
                if master is not None and cfg.control_persist is not None:
                    master.detach(command=command, force_tty=force_tty,
                                  no_command=no_command or background, quiet=quiet,
                                  environ=os.environ)
            gate: Awaitable[None] | None = None
            # Made now for tunnels asked for and for a master (-O forward); else at the
            # first ~C, if ever: the tunnel engine's import is ~4 ms of every start.
            if cfg.forwards or master is not None:
                tunnels = new_tunnels(connection, ui, cfg.forwards)
            if master is not None:
                master.tunnels = tunnels  # -O forward / -O cancel
            if tunnels is not None and cfg.forwards:
                # The requests go out now, beside the session's open (one round trip).
                gate = asyncio.ensure_future(settle_tunnels(
                    asyncio.ensure_future(tunnels.negotiate()), cfg, ui))
            try:
                if master is not None and cfg.control_persist is not None:
                    if gate is not None:
                        await gate
                        gate = None
                    await master.serve(cfg.control_persist)  # the detached master
                    return 0
                if no_command or background:
                    if gate is not None:
                        await gate
                        gate = None
                    if background:
                        go_background()
                    if no_command:
                        return await wait_connection(connection, cfg)
                pty = wants_pty(cfg.request_tty, command=command, stdin_is_tty=os.isatty(0),
                                force=force_tty)
                shared = connection
                session = Session(connection, cfg, ui, command=command, pty=pty, gate=gate,
                                  tunnels=tunnels,
                                  make_tunnels=lambda: new_tunnels(shared, ui, []))
                status = await session.run()
                if master is not None:  # the clients' sessions end before the connection
                    await master.serve(None)
                return status
            except aio.ConnectionLost as exc:
                raise DisconnectError(f"connection to {cfg.host} closed: "
                                      f"{describe_end(exc.terminated)}") from None
        finally:
            terminal.restore_all()
            if master is not None:
                master.close()
            if tunnels is None and session is not None:
                tunnels = session.tunnels  # made by a ~C
            if tunnels is not None:
                await tunnels.close()
            if connection is not None:
                await close_connection(connection)
