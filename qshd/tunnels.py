"""Tunnels on the server: ``direct-tcpip`` channels, ``tcpip-forward`` listeners and the
``forward-check`` probe (docs/PROTOCOL.md §10B), under the policy of qshd_config.

Process model. This runs where the connection's channels run: in the user's process
(:mod:`qshd.postauth`, already the logged-in user), so every connect and every listen is
done with that user's rights -- a user cannot bind a privileged port or reach what the
account may not. The in-process server (:mod:`qshd.server`) runs channels in the daemon's
own process; it serves tunnels only when that process already is the account's user
(``os.geteuid()`` equals the account's uid) and refuses them otherwise, so nothing is ever
connected or bound as root on a user's behalf.

Policy (qshd.8): ``AllowTcpForwarding`` yes|no|local|remote; ``PermitOpen`` the
destinations of ``direct-tcpip`` (host:port patterns, ``any``, ``none``), matched against the
name as the client gave it, before any resolution, as sshd does; ``PermitListen`` the
listeners of ``tcpip-forward`` (``[host:]port`` patterns); ``GatewayPorts`` whether a remote
listener may bind beyond loopback (``no``: always loopback; ``yes``: every address;
``clientspecified``: the address the client asks for).

Bounds: at most :data:`~common.channels.tunnel.MAX_LISTENERS` listeners and
:data:`~common.channels.tunnel.MAX_PENDING_CONNECTS` connects in progress per connection,
each connect at most :data:`~common.channels.tunnel.CONNECT_TIMEOUT` seconds. Everything is
torn down when the connection ends: listeners closed, forwarded sockets aborted.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from common import aio
from common.channels.tunnel import (
    CANCEL_TCPIP_FORWARD,
    CONNECT_TIMEOUT,
    DIRECT_TCPIP,
    FIRST_MAX,
    FORWARD_CHECK,
    FORWARDED_TCPIP,
    MAX_LISTENERS,
    MAX_PENDING_CONNECTS,
    TCPIP_FORWARD,
    Endpoint,
    ForwardCheck,
    ForwardRequest,
    encode_bound_port,
    encode_first_max,
    encode_reason,
)
from common.errors import InvalidInput
from common.forward.listen import (
    Listener,
    bound_port,
    close_servers,
    connect_forwarder,
    connect_now,
    describe_os_error,
    is_loopback_bind,
    listen_forwarders,
)
from common.forward.pump import Forwarder, requested_endpoint
from common.protocol.mux import GlobalRequest, OpenFailureReason

log = logging.getLogger("qshd")

ALLOW_VALUES = ("yes", "no", "local", "remote")
GATEWAY_VALUES = ("no", "yes", "clientspecified")
#: A pattern: (host pattern, port pattern); "*" matches any.
Pattern = tuple[str, str]


def parse_patterns(value: str, *, host_optional: bool) -> tuple[Pattern, ...] | None:
    """``any`` -> None (no restriction); ``none`` -> () (nothing); else host:port patterns
    (``[v6]:port``; port a number or ``*``; with ``host_optional``, a bare port means any
    loopback listener, as sshd's PermitListen). ValueError names the bad entry."""
    words = value.split()
    if words == ["any"]:
        return None
    if words == ["none"]:
        return ()
    patterns: list[Pattern] = []
    for word in words:
        if word.startswith("["):
            end = word.find("]")
            if end < 0 or word[end + 1:end + 2] != ":":
                raise ValueError(f"bad pattern {word!r}")
            host, port = word[1:end], word[end + 2:]
        elif ":" in word:
            host, _, port = word.rpartition(":")
        elif host_optional:
            host, port = "localhost", word
        else:
            raise ValueError(f"bad pattern {word!r}: expected host:port")
        if not host or (port != "*" and not (port.isdigit() and 1 <= int(port) <= 65535)):
            raise ValueError(f"bad pattern {word!r}: host, then a port 1-65535 or *")
        patterns.append((host.lower(), port))
    return tuple(patterns)


def _matches(patterns: Sequence[Pattern] | None, host: str, port: int) -> bool:
    if patterns is None:
        return True
    return any(fnmatch.fnmatchcase(host.lower(), h) and p in ("*", str(port))
               for h, p in patterns)


@dataclass(frozen=True)
class TunnelPolicy:
    allow: str = "yes"
    permit_open: tuple[Pattern, ...] | None = None
    permit_listen: tuple[Pattern, ...] | None = None
    gateway_ports: str = "no"

    def local_refusal(self, host: str, port: int) -> str | None:
        """Why ``direct-tcpip`` to host:port is refused, or None. An empty host asks whether
        any destination could be allowed (``-D``)."""
        if self.allow not in ("yes", "local"):
            return "local forwarding is disabled (AllowTcpForwarding)"
        if not host:
            return "no destination is permitted (PermitOpen none)" if (
                self.permit_open == ()) else None
        if not _matches(self.permit_open, host, port):
            return f"{host}:{port} is not permitted (PermitOpen)"
        return None

    def listen_address(self, requested: str) -> str:
        """Where a remote listener actually binds (GatewayPorts)."""
        if self.gateway_ports == "yes":
            return "*"
        if self.gateway_ports == "clientspecified" and requested:
            return requested
        return ""

    def remote_refusal(self, address: str, port: int) -> str | None:
        if self.allow not in ("yes", "remote"):
            return "remote forwarding is disabled (AllowTcpForwarding)"
        bind = self.listen_address(address)
        name = bind or "localhost"
        if self.permit_listen is not None and not any(
                (fnmatch.fnmatchcase(name.lower(), h)
                 or (h == "localhost" and is_loopback_bind(bind)))
                and p in ("*", str(port)) for h, p in self.permit_listen):
            return f"listening on {name}:{port} is not permitted (PermitListen)"
        return None


class Tunnels:
    """The tunnels of one connection. ``disabled`` is the reason every tunnel is refused
    (the in-process server not running as the user), or None."""

    def __init__(self, connection: aio.QsmpConnection, policy: TunnelPolicy, user: str,
                 disabled: str | None = None) -> None:
        self.connection = connection
        self.policy = policy
        self.user = user
        self.disabled = disabled
        self._listeners: dict[tuple[str, int], list[Listener]] = {}
        self._forwarders: set[Forwarder] = set()
        self._connecting = 0
        self._lock = asyncio.Lock()
        self._closed = False
        self._watch = asyncio.ensure_future(self._close_with_connection())
        self._tasks: set[asyncio.Task[None]] = set()
        # direct-tcpip to a loopback address is served right where its open arrives.
        connection.set_open_hook(self._open_now)

    @property
    def tag(self) -> str:
        return f"conn={self.connection.number}"

    async def _close_with_connection(self) -> None:
        await self.connection.wait_closed()
        await self.close()

    async def close(self) -> None:
        """Stop every listener and drop every forwarded socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        listeners = [s for servers in self._listeners.values() for s in servers]
        self._listeners.clear()
        for forwarder in list(self._forwarders):
            forwarder.abort()
        await close_servers(listeners)

    # -- global requests

    async def on_global_request(self, connection: aio.QsmpConnection,
                                event: GlobalRequest) -> tuple[bool, bytes]:
        """Answers go out in request order: each waits for the ones before (the mux
        matches replies to requests by order alone)."""
        async with self._lock:
            try:
                if event.name == FORWARD_CHECK:
                    return self._check(ForwardCheck.decode(event.payload))
                if event.name == TCPIP_FORWARD:
                    return await self._forward(ForwardRequest.decode(event.payload))
                if event.name == CANCEL_TCPIP_FORWARD:
                    return await self._cancel(ForwardRequest.decode(event.payload))
            except InvalidInput as exc:
                log.info("%s: malformed %s request from %s: %s", self.tag, event.name,
                         self.user, exc)
                return False, encode_reason(f"malformed request: {exc}")
            return False, b""

    def _refuse(self, what: str, reason: str) -> tuple[bool, bytes]:
        log.info("%s: %s for %s refused: %s", self.tag, what, self.user, reason)
        return False, encode_reason(reason)

    def _check(self, check: ForwardCheck) -> tuple[bool, bytes]:
        what = f"forwarding to {check.host}:{check.port}" if check.host else "forwarding"
        reason = self.disabled or self.policy.local_refusal(check.host, check.port)
        if reason is not None:
            return self._refuse(what, reason)
        # Allowed; and a direct-tcpip open may carry the first bytes of its stream.
        return True, encode_first_max(FIRST_MAX)

    async def _forward(self, request: ForwardRequest) -> tuple[bool, bytes]:
        what = f"listening on {request.address or 'localhost'}:{request.port}"
        reason = self.disabled or self.policy.remote_refusal(request.address, request.port)
        if reason is None and len(self._listeners) >= MAX_LISTENERS:
            reason = f"too many listeners (at most {MAX_LISTENERS} per connection)"
        if reason is None and self._closed:
            reason = "the connection is closing"
        if reason is not None:
            return self._refuse(what, reason)
        bind = self.policy.listen_address(request.address)
        port_box: list[int] = []

        def accepted(forwarder: Forwarder) -> None:
            self._forwarded(request.address, port_box[0], forwarder)

        def factory() -> Forwarder:
            return Forwarder(self.tag, on_connected=accepted)

        try:
            servers = await listen_forwarders(bind, request.port, factory)
        except OSError as exc:
            return self._refuse(what, f"cannot listen: {describe_os_error(exc)}")
        port = bound_port(servers)
        port_box.append(port)
        self._listeners[(request.address, port)] = servers
        log.info("%s: %s listening on %s port %d for the client", self.tag, self.user,
                 bind or "localhost", port)
        return True, encode_bound_port(port)

    async def _cancel(self, request: ForwardRequest) -> tuple[bool, bytes]:
        servers = self._listeners.pop((request.address, request.port), None)
        if servers is None:
            return False, encode_reason("no such listener")
        await close_servers(servers)
        return True, b""

    def _forwarded(self, address: str, port: int, forwarder: Forwarder) -> None:
        """A connection to a remote listener: one ``forwarded-tcpip`` channel, its open
        sent at once, its answer a callback (no task, no turn of the loop)."""
        host, peer_port = forwarder.peername
        endpoint = Endpoint(address or "localhost", port, host, peer_port)

        def opened(channel: aio.Channel | None, error: Exception | None) -> None:
            if channel is not None:
                forwarder.attach(channel)
                forwarder.add_done_callback(self._forwarders.discard)
                return
            if isinstance(error, aio.ChannelOpenError):
                log.info("%s: the client refused a connection to port %d: %s", self.tag,
                         port, error.message)
            else:
                log.debug("%s: no channel for port %d: %s", self.tag, port, error)
            forwarder.abort()
            self._forwarders.discard(forwarder)

        self._forwarders.add(forwarder)
        try:
            self.connection.open_channel_nowait(FORWARDED_TCPIP, endpoint.encode(), opened)
        except Exception as exc:  # connection gone, too many channels
            log.debug("%s: no channel for port %d: %s", self.tag, port, exc)
            forwarder.abort()
            self._forwarders.discard(forwarder)

    # -- channels

    def _open_now(self, channel: aio.Channel) -> bool:
        """A channel the client opens, seen in the event processing that received its
        open: a permitted ``direct-tcpip`` to a loopback address is connected and answered
        here, with no task and no turn of the loop (a short tunnelled connection's main
        cost is such turns, bench/tunnel.py's connections/s). False leaves the channel to
        :meth:`serve_channel` (other kinds, names, refusals: one place for their logs)."""
        if channel.kind != DIRECT_TCPIP or self._closed or self.disabled is not None:
            return False
        try:
            endpoint = Endpoint.decode(channel.payload, first_max=FIRST_MAX)
        except InvalidInput:
            return False
        if self.policy.local_refusal(endpoint.host, endpoint.port) is not None:
            return False
        forwarder = Forwarder(f"{self.tag} chan={channel.id}")
        try:
            pending = connect_now(forwarder, endpoint.host, endpoint.port)
        except ValueError:  # not a loopback address
            return False
        except OSError as exc:
            self._connect_failed(channel, endpoint, exc)
            return True
        if pending is not None:  # a full backlog: wait for it as serve_channel would
            task = asyncio.ensure_future(self._serve(channel, endpoint, forwarder, pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return True
        self._forwarders.add(forwarder)
        forwarder.add_done_callback(self._forwarders.discard)
        forwarder.serve_now(channel, endpoint.first)
        return True

    def _connect_failed(self, channel: aio.Channel, endpoint: Endpoint,
                        exc: BaseException) -> None:
        target = f"{endpoint.host}:{endpoint.port}"
        why = describe_os_error(exc)
        log.info("%s: connect to %s for %s failed: %s", self.tag, target, self.user, why)
        channel.reject(OpenFailureReason.CONNECT_FAILED, f"connect to {target} failed: {why}")

    async def _serve(self, channel: aio.Channel, endpoint: Endpoint, forwarder: Forwarder,
                     started: socket.socket | None = None) -> None:
        """Connect (or finish ``started``) under the pending-connects bound, then forward."""
        if self._connecting >= MAX_PENDING_CONNECTS:
            if started is not None:
                started.close()
            channel.reject(OpenFailureReason.RESOURCE_SHORTAGE,
                           f"too many connects in progress (at most {MAX_PENDING_CONNECTS})")
            return
        self._connecting += 1
        try:
            await connect_forwarder(forwarder, endpoint.host, endpoint.port, CONNECT_TIMEOUT,
                                    started=started)
        except (OSError, TimeoutError) as exc:
            self._connect_failed(channel, endpoint, exc)
            return
        finally:
            self._connecting -= 1
        self._forwarders.add(forwarder)
        try:
            if self._closed:
                forwarder.abort()
                channel.reject(OpenFailureReason.CONNECT_FAILED, "the connection is closing")
                return
            await forwarder.serve(channel, endpoint.first)
        finally:
            self._forwarders.discard(forwarder)

    async def serve_channel(self, channel: aio.Channel) -> None:
        """A tunnel channel the client opened."""
        endpoint = requested_endpoint(channel, DIRECT_TCPIP,
                                      "a client may not open {kind} channels", FIRST_MAX)
        if endpoint is None:
            return
        target = f"{endpoint.host}:{endpoint.port}"
        reason = self.disabled or self.policy.local_refusal(endpoint.host, endpoint.port)
        if reason is not None:
            log.info("%s: forwarding to %s for %s refused: %s", self.tag, target, self.user,
                     reason)
            channel.reject(OpenFailureReason.ADMINISTRATIVELY_PROHIBITED, reason)
            return
        await self._serve(channel, endpoint, Forwarder(f"{self.tag} chan={channel.id}"))
