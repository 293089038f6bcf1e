"""The TCP connect, started before the client loads its protocol stack.

A fresh ``qsh host true`` spends most of its start importing asyncio, the crypto libraries and
the protocol (bench/startup.py), and the server spends its first ~20 ms after the accept
forking the connection's processes before it sends its first flight (bench/login_timeline.py).
Done one after the other, as they were, both waits add up. :func:`start` begins the connect as
soon as the configuration says where to, so the server works while the client imports; the
connect path (common/client/proxy.py) then :func:`take`\\ s the socket instead of connecting.

It is a head start, not a second way to connect: one address (the resolver's first, as the
first try of asyncio's connect), no retries, no messages. Whatever goes wrong with it (the
name does not resolve, the connect is refused, the socket is not for the host the run ends
up connecting to, or it waited so long -- a passphrase typed before the connect -- that the
server may have given up on it) is not reported: the socket is dropped and the run connects
as it always did, with its errors, retries and messages. Only direct TCP connections get one;
a ProxyCommand or ProxyJump connects through its own process.
"""

from __future__ import annotations

import errno
import socket
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (issue 18)
if TYPE_CHECKING:
    from common.client.config import ClientConfig

#: ``AddressFamily`` -> the resolver's family (common/client/connect.py uses the same).
FAMILIES = {"any": socket.AF_UNSPEC, "inet": socket.AF_INET, "inet6": socket.AF_INET6}
#: An early socket older than this when the connect path comes for it is not used: the time
#: went to something else (a passphrase prompt), and a server's step timeout may be near.
MAX_AGE = 10.0

_Key = tuple[str, int, str, "str | None"]
#: The one early connect of this process: what it is for, the socket, when it started.
_pending: tuple[_Key, socket.socket, float] | None = None


def _key(cfg: ClientConfig) -> _Key:
    return (cfg.hostname, cfg.port, cfg.address_family, cfg.bind_address)


def start(cfg: ClientConfig) -> None:
    """Begin connecting to ``cfg``'s host, without waiting, if the run connects over TCP."""
    global _pending
    if _pending is not None or cfg.proxy_command is not None or cfg.proxy_jump is not None:
        return
    sock = None
    # An ASCII name as bytes: as a str, the resolver's wrapper loads the IDNA codec first
    # (encodings.idna, stringprep, unicodedata: ~1.5 ms) to encode what is already ASCII.
    host = cfg.hostname.encode("ascii") if cfg.hostname.isascii() else cfg.hostname
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, cfg.port, FAMILIES[cfg.address_family], socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        if cfg.bind_address is not None:
            sock.bind((cfg.bind_address, 0))
        if sock.connect_ex(address) not in (0, errno.EINPROGRESS):
            raise OSError
    except (OSError, UnicodeError, IndexError):  # the connect path will say what is wrong
        if sock is not None:
            sock.close()
        return
    _pending = (_key(cfg), sock, time.monotonic())


def drop() -> None:
    """Close the early socket, if one is still waiting to be taken."""
    global _pending
    if _pending is not None:
        _pending[1].close()
        _pending = None


async def take(cfg: ClientConfig, timeout: float) -> socket.socket | None:
    """The early socket for ``cfg``'s host once its connect has completed, or None (there is
    none for this host, it is too old, or its connect failed): the caller connects as usual.
    Waits at most ``timeout`` seconds for the connect (ConnectTimeout, counted from its start):
    past that, :class:`TimeoutError`, as the usual connect would raise."""
    import asyncio

    global _pending
    if _pending is None:
        return None
    key, sock, started = _pending
    _pending = None
    if key != _key(cfg) or time.monotonic() - started > MAX_AGE:
        sock.close()
        return None
    loop = asyncio.get_running_loop()
    writable: asyncio.Future[None] = loop.create_future()

    def connected() -> None:  # (called at each turn of the loop until removed)
        if not writable.done():
            writable.set_result(None)

    fd = sock.fileno()
    loop.add_writer(fd, connected)
    try:
        try:
            async with asyncio.timeout(timeout - (time.monotonic() - started)):
                await writable
        finally:
            loop.remove_writer(fd)
    except BaseException:
        sock.close()
        raise
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
        sock.close()  # refused, unreachable: the usual connect tries again and reports it
        return None
    return sock
