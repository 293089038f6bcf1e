"""The asyncio adapter: the only code of qsh that touches sockets, timers and tasks.

The sans-IO :class:`~common.connection.Connection` does all the protocol work; this module
moves its bytes, fires its timers and turns its events into awaitable objects:

* :func:`connect` returns a :class:`QsmpConnection` once the handshake is complete;
* :func:`serve` listens and calls ``on_channel(connection, channel)`` for every channel a
  peer opens; each connection is isolated (a failure in one, even a bug of ours, closes
  only that connection and is logged);
* :class:`Channel` is a byte stream with flow control: ``read`` / ``readexactly`` /
  ``read_stderr``, ``write`` + ``drain``, ``write_eof``, ``close``, and channel requests;
  or, for a byte pump that runs on callbacks alone (``common.forward``), push delivery:
  ``set_consumer`` + ``grant``, ``write_blocked`` + ``set_writable_callback``,
  ``add_close_callback``;
* :class:`QsmpConnection` also opens channels from a callback (``open_channel_nowait``),
  sends what several calls produce in one write (``batch``), and takes the handler of
  channels the peer opens after connecting (``set_channel_handler``).

Speed (DESIGN.md section 5) decides the shape of the hot path. There are no asyncio
streams: the connection is an :class:`asyncio.BufferedProtocol` that receives straight
into one large preallocated buffer (shared by all connections of a loop, because the core
copies what it keeps before ``buffer_updated`` returns) and hands the core a memoryview of
it; records go out with one ``writelines`` of the core's buffers. Writes are sent at once
(no per-write task switch); reads acknowledge window as the application consumes data, so
a slow reader throttles the sender instead of growing our buffers.

Time: the core is given ``loop.time()`` shifted to the wall clock at connection start
(monotonic, so timers are immune to clock steps, yet close enough to the epoch for key
expiration checks, which compare ``now`` with a Unix time).

The package, one concern per module: :mod:`~common.aio.limits` (sizes and time-outs),
:mod:`~common.aio.memory` (receive buffer, malloc tuning), :mod:`~common.aio.errors`,
:mod:`~common.aio.channel` (:class:`Channel`), :mod:`~common.aio.connection`
(:class:`QsmpConnection`, the only class that touches the socket; its parts by concern, as
mixins, in :mod:`~common.aio.socket_side`, :mod:`~common.aio.engine`,
:mod:`~common.aio.login`, :mod:`~common.aio.channel_events` and :mod:`~common.aio.handoff`),
:mod:`~common.aio.chunks` (the received-bytes queue), :mod:`~common.aio.client`
(:func:`connect`) and :mod:`~common.aio.server` (:func:`serve`, :func:`adopt`).
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from common.aio.channel import Channel, ReadStream
    from common.aio.client import connect
    from common.aio.connection import (
        AuthHandler,
        ChannelHandler,
        GlobalRequestHandler,
        HostKeyCallback,
        OpenAnswer,
        QsmpConnection,
    )
    from common.aio.errors import ChannelClosedError, ChannelOpenError, ConnectionLost
    from common.aio.limits import CHANNEL_HIGH_WATER, DEFAULT_CONNECT_TIMEOUT, RECEIVE_BUFFER_SIZE
    from common.aio.memory import tune_allocator
    from common.aio.server import AdmissionTicket, AdmitHandler, Server, accept, adopt, serve

#: Where each name lives. The names load on first use (PEP 562), so that a module of the
#: package -- the errors, a channel's type -- can be imported without the whole stack
#: (qcp over a ControlMaster needs no handshake, no transport, no crypto registry).
_HOME = {
    "Channel": "channel", "ReadStream": "channel", "connect": "client",
    "AuthHandler": "connection", "ChannelHandler": "connection",
    "GlobalRequestHandler": "connection", "HostKeyCallback": "connection",
    "OpenAnswer": "connection", "QsmpConnection": "connection",
    "ChannelClosedError": "errors", "ChannelOpenError": "errors", "ConnectionLost": "errors",
    "CHANNEL_HIGH_WATER": "limits", "DEFAULT_CONNECT_TIMEOUT": "limits",
    "RECEIVE_BUFFER_SIZE": "limits", "tune_allocator": "memory",
    "AdmissionTicket": "server", "AdmitHandler": "server", "Server": "server",
    "accept": "server", "adopt": "server", "serve": "server",
}


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "CHANNEL_HIGH_WATER",
    "DEFAULT_CONNECT_TIMEOUT",
    "RECEIVE_BUFFER_SIZE",
    "AdmissionTicket",
    "AdmitHandler",
    "AuthHandler",
    "Channel",
    "ChannelClosedError",
    "ChannelHandler",
    "ChannelOpenError",
    "ConnectionLost",
    "GlobalRequestHandler",
    "HostKeyCallback",
    "OpenAnswer",
    "QsmpConnection",
    "ReadStream",
    "Server",
    "accept",
    "adopt",
    "connect",
    "serve",
    "tune_allocator",
]
