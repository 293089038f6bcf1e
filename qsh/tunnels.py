"""qsh's tunnels: ``-T``/``-L``, ``-R`` and ``-D`` (and their config keywords), negotiated
at connect time (docs/PROTOCOL.md §10B).

:meth:`ClientTunnels.negotiate` sends, right after login and back to back with the session
channel's open, one global request per tunnel -- ``forward-check`` for each local and
dynamic tunnel (the server's policy for that destination), ``tcpip-forward`` for each remote
one -- so the answers arrive in the same round trip as the session's and before any shell
or command starts. It then binds the local listeners. The result is the list of failures,
one line each ("which tunnel: why"); the caller decides (ExitOnForwardFailure).

Each accepted local connection opens one ``direct-tcpip`` channel (after the SOCKS request,
for ``-D``); each ``forwarded-tcpip`` channel the server opens for a remote listener
connects to the tunnel's local destination. A refused or unreachable destination closes
the accepted socket and is reported in one line.

:meth:`ClientTunnels.add` and :meth:`ClientTunnels.cancel` change the tunnels of a running
connection (the ``~C`` escape line, :mod:`qsh.escapes`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from common import aio
from common.channels.tunnel import (
    CANCEL_TCPIP_FORWARD,
    DIRECT_TCPIP,
    FORWARD_CHECK,
    FORWARDED_TCPIP,
    TCPIP_FORWARD,
    Endpoint,
    ForwardCheck,
    ForwardRequest,
    ForwardSpec,
    decode_bound_port,
    decode_first_max,
    decode_reason,
)
from common.client.connect import Ui, printable
from common.errors import InvalidInput, UsageError
from common.forward import socks
from common.forward.listen import (
    Listener,
    close_servers,
    connect_forwarder,
    describe_os_error,
    listen_forwarders,
)
from common.forward.pump import Forwarder, requested_endpoint
from common.protocol.mux import OpenFailureReason

#: Seconds qsh waits for one local connect of a remote tunnel.
CONNECT_TIMEOUT = 10.0


class ClientTunnels:
    def __init__(self, connection: aio.QsmpConnection, ui: Ui,
                 specs: list[ForwardSpec]) -> None:
        self.connection = connection
        self.ui = ui
        self.specs = specs
        #: Local and dynamic tunnels' listeners.
        self._listeners: dict[ForwardSpec, Sequence[Listener]] = {}
        #: Remote tunnels by the port the server bound.
        self._remote: dict[int, ForwardSpec] = {}
        #: Every forwarded socket.
        self._forwarders: set[Forwarder] = set()
        self.bound_ports: dict[ForwardSpec, int] = {}
        #: The first bytes a direct-tcpip open may carry, as the server's forward-check
        #: answers offered (0: a server that does not take them).
        self.first_max = 0

    async def negotiate(self) -> list[str]:
        """Ask for every tunnel; the failures, one line each."""
        return await self.add(self.specs)

    async def add(self, specs: list[ForwardSpec]) -> list[str]:
        """Ask for more tunnels (at connect time, or from ``~C``); the failures, one line
        each."""
        # The server may open forwarded-tcpip channels as soon as a listener exists.
        self.connection.set_channel_handler(self._on_channel)
        asks: list[Awaitable[tuple[bool, bytes] | None]] = []
        for spec in specs:
            if spec.kind == "remote":
                payload = ForwardRequest(spec.bind, spec.port).encode()
                asks.append(self.connection.global_request(TCPIP_FORWARD, payload))
            else:
                check = ForwardCheck(spec.host, spec.host_port)
                asks.append(self.connection.global_request(FORWARD_CHECK, check.encode()))
        # Tasks start in order, so the requests leave in order, in one flight.
        replies = await asyncio.gather(*asks)
        failures: list[str] = []
        for spec, reply in zip(specs, replies, strict=True):
            ok, payload = reply if reply is not None else (False, b"")
            if not ok:
                reason = decode_reason(payload) or "refused by the server"
                failures.append(f"{spec.describe()}: {printable(reason)}")
                continue
            if spec.kind == "remote":
                try:
                    port = decode_bound_port(payload) if payload else spec.port
                except InvalidInput:
                    port = spec.port
                self._remote[port] = spec
                self.bound_ports[spec] = port
                if spec.port == 0:
                    self.ui.say(f"Allocated port {port} for remote forward to "
                                f"{spec.host}:{spec.host_port}")
                continue
            self.first_max = decode_first_max(payload)
            try:
                servers = await self._listen(spec)
            except OSError as exc:
                failures.append(f"{spec.describe()}: cannot listen on port {spec.port}: "
                                f"{describe_os_error(exc)}")
                continue
            self._listeners[spec] = servers
            self.bound_ports[spec] = int(servers[0].sockets[0].getsockname()[1])
            self.ui.note(1, f"{spec.describe()}: listening")
        return failures

    async def close(self) -> None:
        for forwarder in list(self._forwarders):
            forwarder.abort()
        servers = [server for listeners in self._listeners.values() for server in listeners]
        self._listeners.clear()
        await close_servers(servers)

    async def cancel(self, kind: str, bind: str, port: int) -> str | None:
        """Stop the tunnel of ``kind`` listening on ``[bind:]port`` (``~C -KL/-KR/-KD``):
        a local listener closes (its connections carry on, as in ssh); a remote one is
        cancelled on the server (``cancel-tcpip-forward``). None, or why not."""
        def matches(spec: ForwardSpec) -> bool:
            return (spec.kind == kind and self.bound_ports.get(spec) == port
                    and (not bind or spec.bind == bind))

        if kind != "remote":
            for spec in list(self._listeners):
                if matches(spec):
                    await close_servers(self._listeners.pop(spec))
                    del self.bound_ports[spec]
                    return None
            return f"no {kind} forward on port {port}"
        for bound, spec in list(self._remote.items()):
            if matches(spec):
                payload = ForwardRequest(spec.bind, bound).encode()
                reply = await self.connection.global_request(CANCEL_TCPIP_FORWARD, payload)
                if reply is None or not reply[0]:
                    reason = decode_reason(reply[1]) if reply else ""
                    return f"the server did not cancel it: {printable(reason or 'refused')}"
                del self._remote[bound]
                del self.bound_ports[spec]
                return None
        return f"no remote forward on port {port}"

    # -- local and dynamic tunnels

    async def _listen(self, spec: ForwardSpec) -> Sequence[Listener]:
        if spec.kind == "dynamic":
            return await listen_forwarders(spec.bind, spec.port, self._socks_factory(spec))
        return await listen_forwarders(spec.bind, spec.port, self._forwarder_factory(spec))

    def _forwarder_factory(self, spec: ForwardSpec) -> Callable[[], Forwarder]:
        tag = spec.describe()

        def accepted(forwarder: Forwarder) -> None:
            # No task: the open goes out now, its answer comes back as a callback.
            host, port = spec.host, spec.host_port
            try:
                peer_host, peer_port = forwarder.peername
                first = forwarder.first
                endpoint = Endpoint(host, port, peer_host, peer_port, first).encode()
                if self.ui.verbosity >= 2:  # (not even the text otherwise: per connection)
                    self.ui.note(2, f"{tag}: connection from {peer_host}:{peer_port}"
                                 + (f", {len(first)} first bytes sent with the open" if first
                                    else ""))
                self._forwarders.add(forwarder)
                self.connection.open_channel_nowait(
                    DIRECT_TCPIP, endpoint,
                    lambda channel, error: self._opened(tag, forwarder, channel, error))
            except (aio.ConnectionLost, UsageError, InvalidInput) as exc:
                self.ui.warn(f"qsh: {tag}: no channel for {host}:{port}: {exc}")
                forwarder.abort()
                self._forwarders.discard(forwarder)

        def factory() -> Forwarder:
            return Forwarder(tag, on_connected=accepted, first_max=self.first_max)
        return factory

    def _opened(self, tag: str, forwarder: Forwarder, channel: aio.Channel | None,
                error: Exception | None) -> None:
        """The answer to a ``-T`` connection's open: forward, or close the socket."""
        if channel is not None:
            forwarder.attach(channel)
            forwarder.add_done_callback(self._forwarders.discard)
            return
        if isinstance(error, aio.ChannelOpenError):
            self.ui.warn(f"qsh: {tag}: {printable(error.message)}")
        else:
            self.ui.warn(f"qsh: {tag}: no channel: {error}")
        forwarder.abort()
        self._forwarders.discard(forwarder)

    def _socks_factory(self, spec: ForwardSpec) -> Callable[[], Forwarder]:
        """``-D``: each accepted connection first says where to (SOCKS, read by the
        forwarder's preamble, within socks.REQUEST_TIMEOUT), then is forwarded as a -T
        one; what the client sent after its request goes with the open as first bytes."""
        tag = spec.describe()
        loop = asyncio.get_running_loop()

        def factory() -> Forwarder:
            parser = socks.Parser()
            forwarder = Forwarder(tag)

            def timed_out() -> None:
                self.ui.warn(f"qsh: {tag}: bad SOCKS request: none within "
                             f"{socks.REQUEST_TIMEOUT:.0f} s")
                forwarder.abort()

            timer = loop.call_later(socks.REQUEST_TIMEOUT, timed_out)

            def on_bytes(data: bytes) -> None:
                try:
                    if not data:
                        raise socks.SocksError("the client closed before its request")
                    out, request = parser.feed(data)
                except (socks.SocksError, ValueError) as exc:
                    timer.cancel()
                    self.ui.warn(f"qsh: {tag}: bad SOCKS request: {exc}")
                    forwarder.refuse(parser.answer)
                    return
                if out:
                    forwarder.send(out)
                if request is not None:
                    timer.cancel()
                    forwarder.preamble = None
                    self._socks_open(tag, forwarder, request, parser.rest)

            forwarder.preamble = on_bytes
            forwarder.add_done_callback(lambda _: timer.cancel())
            self._forwarders.add(forwarder)
            forwarder.add_done_callback(self._forwarders.discard)
            return forwarder
        return factory

    def _socks_open(self, tag: str, forwarder: Forwarder, request: socks.Request,
                    rest: bytes) -> None:
        first = rest if len(rest) <= self.first_max else b""
        forwarder.hold(rest[len(first):])
        host, port = request.host, request.port

        def opened(channel: aio.Channel | None, error: Exception | None) -> None:
            if channel is not None:
                forwarder.send(request.reply(socks.SUCCEEDED))
                forwarder.attach(channel)
                return
            if isinstance(error, aio.ChannelOpenError):
                self.ui.warn(f"qsh: {tag}: {printable(error.message)}")
                forwarder.refuse(request.reply(socks.reply_code(error.reason)))
            else:
                self.ui.warn(f"qsh: {tag}: no channel for {host}:{port}: {error}")
                forwarder.abort()

        try:
            peer_host, peer_port = forwarder.peername
            endpoint = Endpoint(host, port, peer_host, peer_port, first).encode()
            self.ui.note(2, f"{tag}: connection from {peer_host}:{peer_port} to {host}:{port}"
                         + (f", {len(first)} first bytes sent with the open" if first
                            else ""))
            self.connection.open_channel_nowait(DIRECT_TCPIP, endpoint, opened)
        except (aio.ConnectionLost, UsageError, InvalidInput) as exc:
            self.ui.warn(f"qsh: {tag}: no channel for {host}:{port}: {exc}")
            forwarder.abort()

    # -- remote tunnels

    async def _on_channel(self, connection: aio.QsmpConnection, channel: aio.Channel) -> None:
        endpoint = requested_endpoint(channel, FORWARDED_TCPIP,
                                      "qsh does not accept {kind} channels")
        if endpoint is None:
            return
        spec = self._remote.get(endpoint.port)
        if spec is None:
            channel.reject(OpenFailureReason.ADMINISTRATIVELY_PROHIBITED,
                           f"no tunnel for port {endpoint.port}")
            return
        forwarder = Forwarder(f"{spec.describe()} chan={channel.id}")
        try:
            await connect_forwarder(forwarder, spec.host, spec.host_port, CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            why = describe_os_error(exc)
            self.ui.warn(f"qsh: {spec.describe()}: connect to {spec.host}:{spec.host_port} "
                         f"failed: {why}")
            channel.reject(OpenFailureReason.CONNECT_FAILED, f"connect failed: {why}")
            return
        self._forwarders.add(forwarder)
        try:
            await forwarder.serve(channel)
        finally:
            self._forwarders.discard(forwarder)
