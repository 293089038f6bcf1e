"""Reaching a host through something else, as ssh does: ``ProxyCommand`` and ``ProxyJump``
(``-J``), for qsh, qcp and the API alike (:func:`connect` stands in for the TCP connect).

* ``ProxyCommand``: the command (tokens ``%h %p %r %n %%`` expanded) runs under ``/bin/sh -c
  "exec ..."``, as ssh runs it, with its stdin and stdout on one end of a socketpair and its
  stderr on ours; the QSMP connection runs over the other end. The handshake, the host key
  check (against the target's own name and port in known_hosts, as for a direct connection)
  and the login are the same as over TCP: the proxy only ever sees ciphertext.
* ``ProxyJump [user@]host[:port][,...]``: exactly ssh's construction. The last hop becomes
  the ProxyCommand ``qsh [-l user] [-p port] [-J earlier,hops] [-F file] [-v...] -W
  '[%h]:%p' host``, the same qsh (this Python, ``-m qsh``), so every hop is a connection of
  its own, with its own handshake, host key check and login, nested inside the previous
  hop's ``direct-tcpip`` channel; the destination's connection runs end to end through all
  of them. As with ssh, only ``-F`` and ``-v`` are passed on: the hops' other settings
  (user, key, known_hosts, StrictHostKeyChecking) come from the configuration file's blocks
  for their names, not from this command line's ``-o`` options.
* The proxy is reaped when the connection ends: it gets :data:`EXIT_GRACE` seconds to end by
  itself (it sees EOF; a jump's ``qsh -W`` then exits 0), then SIGHUP, then SIGKILL. A proxy
  that exits before the connection is made is one line: which, and its exit status.

Host names and user names are put into the command line unquoted by ssh (``nc %h %p``);
here a value with a character a shell would interpret is refused instead (ssh 9.6 refuses
them too, for names from the command line).

This module imports no asyncio at import time: the config reads :func:`parse_jump` when a
file names a ProxyJump, and nothing else is paid by runs that use no proxy.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sys
from typing import TYPE_CHECKING, Any

from common.value_record import Record

if TYPE_CHECKING:
    import asyncio
    import socket

    from common import aio
    from common.client.config import ClientConfig
    from common.client.connect import Ui

#: Seconds a proxy has to exit by itself once its connection has ended.
EXIT_GRACE = 2.0
#: Seconds to wait for a proxy after SIGHUP before SIGKILL.
KILL_GRACE = 1.0
#: Seconds a failed connect waits to learn whether the proxy exited (and with what).
EXIT_WAIT = 1.0
#: Hops one ProxyJump may list (each is a process and a connection).
MAX_HOPS = 16
#: Proxies started by proxies, at most: a ProxyJump under ``Host *`` that also matches the
#: jump host itself would otherwise start qsh after qsh without end. Counted in the
#: environment each proxy inherits.
MAX_NESTING = 16
NESTING_VARIABLE = "QSH_PROXY_DEPTH"
#: What may stand for %h, %n and %r in a command given to a shell.
_SHELL_SAFE = re.compile(r"[A-Za-z0-9_.:@%+=,-]+")
_USER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.+-]*")
_HOST = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")
_HOST6 = re.compile(r"[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?")


class Hop(Record):
    """One jump host: ``[user@]host[:port]``."""

    __slots__ = ("user", "host", "port")  # noqa: RUF023 (field order)
    user: str | None
    host: str
    port: int | None

    def __init__(self, user: str | None, host: str, port: int | None) -> None:
        object.__setattr__(self, "user", user)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and self.port is not None else self.host
        return "".join((f"{self.user}@" if self.user else "", host,
                        f":{self.port}" if self.port is not None else ""))


def split_host_port(text: str, what: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[host]:port`` or ``[v6]``; ValueError names ``what``."""
    port_text: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad {what} {text!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text  # a bare IPv6 address has several colons and no port
    if not (_HOST.fullmatch(host) or _HOST6.fullmatch(host)) or len(host) > 255:
        raise ValueError(f"bad host name in {what} {text!r}")
    if port_text is None:
        return host, None
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"bad port in {what} {text!r}")
    return host, int(port_text)


def parse_jump(text: str) -> tuple[Hop, ...]:
    """``[user@]host[:port][,...]`` (each may be written ``ssh://...``), checked so that
    no part can be read as an option or by a shell. ValueError says what is wrong."""
    hops = []
    for item in text.split(","):
        item = item.removeprefix("ssh://").removesuffix("/")
        user, sep, where = item.rpartition("@")
        if sep and not _USER.fullmatch(user):
            raise ValueError(f"bad user name in ProxyJump {text!r}")
        host, port = split_host_port(where, "ProxyJump")
        hops.append(Hop(user if sep else None, host, port))
    if len(hops) > MAX_HOPS:
        raise ValueError(f"ProxyJump lists {len(hops)} hops; at most {MAX_HOPS}")
    return tuple(hops)


def jump_command(cfg: ClientConfig, verbosity: int) -> str:
    """ssh's ProxyCommand for ProxyJump (see the module's docstring), %-tokens unexpanded."""
    assert cfg.proxy_jump is not None
    *earlier, last = parse_jump(cfg.proxy_jump)
    words = [sys.executable, "-m", "qsh"]
    if last.user:
        words += ["-l", last.user]
    if last.port is not None:
        words += ["-p", str(last.port)]
    if earlier:
        words += ["-J", ",".join(str(hop) for hop in earlier)]
    if cfg.config_file is not None:
        words += ["-F", str(cfg.config_file)]
    if verbosity:
        words.append("-" + "v" * min(verbosity, 3))
    quoted = " ".join(shlex.quote(word).replace("%", "%%") for word in words)
    return f"{quoted} -W '[%h]:%p' {shlex.quote(last.host).replace('%', '%%')}"


def expand(command: str, cfg: ClientConfig) -> str:
    """ProxyCommand's tokens: %h the host to reach (after HostName), %p its port, %r the
    user, %n the name as typed, %% a percent."""
    values = {"h": cfg.hostname, "p": str(cfg.port), "r": cfg.user, "n": cfg.host, "%": "%"}

    def token(match: re.Match[str]) -> str:
        value = values.get(match.group(1))
        if value is None:
            raise ValueError(f"unknown token %{match.group(1)} in ProxyCommand")
        if match.group(1) != "%" and not _SHELL_SAFE.fullmatch(value):
            raise ValueError(f"{value!r} (%{match.group(1)}) has characters a shell would "
                             "interpret: not put into a ProxyCommand")
        return value
    return re.sub(r"%(.?)", token, command)


def nesting() -> int:
    """How many proxies run this one (0: started by hand)."""
    text = os.environ.get(NESTING_VARIABLE, "")
    return int(text) if text.isdigit() and len(text) < 4 else 0


def proxy_command(cfg: ClientConfig, verbosity: int) -> str | None:
    """The command to run (tokens expanded), or None for a direct connection."""
    if (cfg.proxy_jump is not None or cfg.proxy_command is not None) and (
            nesting() >= MAX_NESTING):
        raise ValueError(f"{nesting()} proxies deep: a ProxyJump or ProxyCommand that "
                         "reaches itself? (give the jump host's own Host block "
                         "ProxyJump none)")
    if cfg.proxy_jump is not None:
        return expand(jump_command(cfg, verbosity), cfg)
    if cfg.proxy_command is not None:
        return expand(cfg.proxy_command, cfg)
    return None


class Proxy:
    """One running proxy process and our end of its socketpair."""

    def __init__(self, what: str, process: asyncio.subprocess.Process,
                 sock: socket.socket) -> None:
        self.what = what  # "ProxyCommand" or "jump host NAME", for messages
        self.process = process
        self.sock = sock
        self._reaper: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, what: str, command: str) -> Proxy:
        import asyncio
        import socket

        ours, theirs = socket.socketpair()
        try:
            # exec: the shell becomes the proxy, so the pid we signal is the proxy's.
            process = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", f"exec {command}", stdin=theirs.fileno(),
                stdout=theirs.fileno(), stderr=None,
                env={**os.environ, NESTING_VARIABLE: str(nesting() + 1)})
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(what, process, ours)

    def describe_exit(self) -> str | None:
        """One line for a proxy that has exited, None while it runs."""
        code = self.process.returncode
        if code is None:
            return None
        how = f"exit status {code}" if code >= 0 else f"signal {-code}"
        return f"{self.what} ended ({how}) before the connection was made"

    async def exited(self, timeout: float) -> bool:
        import asyncio

        try:
            async with asyncio.timeout(timeout):
                await self.process.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self, grace: float = EXIT_GRACE) -> None:
        """Reap the proxy: ``grace`` seconds to exit by itself, then SIGHUP (as ssh sends
        it), then SIGKILL."""
        import signal

        try:
            if await self.exited(grace):
                return
            for signum, wait in ((signal.SIGHUP, KILL_GRACE), (signal.SIGKILL, KILL_GRACE)):
                try:
                    self.process.send_signal(signum)
                except ProcessLookupError:
                    return
                if await self.exited(wait):
                    return
        except BaseException:  # cancelled (the loop ending): no orphan proxy
            self.kill()
            raise

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    def watch(self, connection: aio.QsmpConnection) -> None:
        """Reap the proxy once ``connection`` has ended."""
        import asyncio

        async def reap() -> None:
            try:
                await connection.wait_closed()
            except BaseException:  # cancelled: the program is ending without a close
                self.kill()
                raise
            await self.stop()

        self._reaper = asyncio.ensure_future(reap())
        _watched[id(connection)] = self


#: Proxies of live connections, by id(connection): :func:`finish` waits for their reaping.
_watched: dict[int, Proxy] = {}


async def finish(connection: aio.QsmpConnection) -> None:
    """After ``connection`` was closed: wait (bounded) until its proxy, if any, is reaped,
    so that a program that exits next leaves no proxy process behind."""
    import asyncio

    proxy = _watched.pop(id(connection), None)
    if proxy is None or proxy._reaper is None:
        return
    try:
        async with asyncio.timeout(EXIT_GRACE + 3 * KILL_GRACE):
            await asyncio.shield(proxy._reaper)
    except TimeoutError:
        pass


async def connect(cfg: ClientConfig, ui: Ui, **kwargs: Any) -> aio.QsmpConnection:
    """:func:`common.aio.connect` to ``cfg.hostname``/``cfg.port``: straight over TCP, or
    over a ProxyCommand's (or a ProxyJump's) socket. ``kwargs`` go to it as they are,
    except the TCP-only ``family`` and ``local_addr`` when there is a proxy."""
    from common import aio
    from common.client import dial
    from common.client.connect import QshError, printable

    try:
        command = proxy_command(cfg, ui.verbosity)
    except ValueError as exc:
        raise QshError(str(exc)) from None
    if command is None:
        sock = await dial.take(cfg, cfg.connect_timeout)
        if sock is not None:  # connected while the client loaded (common/client/dial.py)
            kwargs.pop("family", None)
            kwargs.pop("local_addr", None)
            return await aio.connect(cfg.hostname, cfg.port, sock=sock, **kwargs)
        return await aio.connect(cfg.hostname, cfg.port, **kwargs)
    kwargs.pop("family", None)
    kwargs.pop("local_addr", None)
    if cfg.proxy_jump is not None:
        what = f"jump host {parse_jump(cfg.proxy_jump)[-1]}"
    else:
        what = "ProxyCommand"
    ui.note(1, f"connecting to {cfg.hostname} port {cfg.port} through {what}: "
               f"{printable(command)}")
    try:
        proxy = await Proxy.start(what, command)
    except OSError as exc:
        raise QshError(f"cannot run the {what}: {exc.strerror or exc}") from None
    try:
        connection = await aio.connect(cfg.hostname, cfg.port, sock=proxy.sock, **kwargs)
    except BaseException as exc:
        # The socket closed under the handshake: a proxy that went away is why, so say
        # that, not "connection lost". Otherwise (a refused host key, a timeout, a signal)
        # our end is closed now; the proxy sees EOF and ends by itself, quietly.
        lost = isinstance(exc, aio.ConnectionLost) or (
            isinstance(exc, OSError) and not isinstance(exc, TimeoutError))
        # A proxy that ends cleanly (0) after the far end closed is no news: the error
        # already says what happened.
        if lost and await proxy.exited(EXIT_WAIT) and proxy.process.returncode != 0 and (
                why := proxy.describe_exit()):
            raise QshError(why) from None
        await proxy.stop(grace=EXIT_WAIT)
        raise
    proxy.watch(connection)
    return connection
