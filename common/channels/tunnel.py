"""TCP tunnels over the mux: the channel kinds, their open payloads and the connect-time
negotiation, as values (no sockets here).

The model is SSH's port forwarding (RFC 4254 §7) with our encodings (docs/PROTOCOL.md §10B):

* ``direct-tcpip`` (client opens; ``-T``/``-L``/``-D``): "connect to host:port for me".
  Payload ``text host | u16 port | text originator | u16 originator_port [| bytes first]``:
  ``first``, only to a server whose ``forward-check`` answer offered it, is the start of the
  client's stream (what the local socket had delivered when the open went out), written to
  the destination right after the connect: a short connection (a request, then its answer)
  does not wait a round trip for the open's confirmation before its request goes out.
* ``tcpip-forward`` global request (``-R``): "listen on address:port and send me what
  arrives". Payload ``text address | u16 port`` (port 0: any free port). Success carries
  ``u16 bound_port``; failure carries ``text reason``.
* ``cancel-tcpip-forward`` global request: the same payload; stop that listener.
* ``forwarded-tcpip`` (server opens, one per accepted connection of a ``-R`` listener):
  payload ``text address | u16 port | text originator | u16 originator_port``, naming the
  listener the connection arrived on and where it came from.
* ``forward-check`` global request (ours; ssh has no equivalent): "would you let me open
  ``direct-tcpip`` to host:port?", sent for every ``-T``/``-L`` (and, with an empty host and
  port 0, for ``-D``: "may I forward at all?") in the first flight after login, so that a
  tunnel the server's policy refuses is refused before any shell starts, not when its first
  connection arrives. Payload ``text host | u16 port``; failure carries ``text reason``;
  success is empty, or ``u32 first_max`` from a server that takes a ``direct-tcpip`` open's
  first bytes, at most that many (:func:`encode_first_max`).

A refused open or request always says why in one line (the open failure's message, or the
reply's ``text reason``), which qsh prints as is.

Every field from the wire is bounded before use: a host name is 1..255 bytes of UTF-8 with
no control character, a port 1..65535 (0 only where it means "any"), an originator at most
:data:`MAX_HOST` bytes too.
"""

from __future__ import annotations

from common.errors import InvalidInput
from common.wire import Reader, Record, Writer, cut_utf8

DIRECT_TCPIP = "direct-tcpip"
FORWARDED_TCPIP = "forwarded-tcpip"
TCPIP_FORWARD = "tcpip-forward"
CANCEL_TCPIP_FORWARD = "cancel-tcpip-forward"
FORWARD_CHECK = "forward-check"
#: Channel kinds that carry one forwarded TCP connection each.
KINDS = frozenset({DIRECT_TCPIP, FORWARDED_TCPIP})

#: A DNS name is at most 253 characters; 255 leaves room for an IPv6 literal with a zone.
MAX_HOST = 255
#: A refusal's reason, as shown to the user.
MAX_REASON = 512
#: Remote listeners (``-R``) one connection may hold on the server.
MAX_LISTENERS = 64
#: ``direct-tcpip`` connects a server runs at once for one connection; more are refused
#: (resource shortage), so a flood of opens cannot pile up half-open sockets.
MAX_PENDING_CONNECTS = 64
#: Seconds a server waits for one outgoing TCP connect before refusing the channel.
CONNECT_TIMEOUT = 10.0
#: The most first bytes a ``direct-tcpip`` open may carry (what our server offers, and the
#: most our client sends whatever the server offers). A request's first flight (an HTTP
#: request, a TLS ClientHello) fits; the server holds at most this per pending connect, so
#: MAX_PENDING_CONNECTS * FIRST_MAX bounds what it holds for one connection (1 MiB).
FIRST_MAX = 16 * 1024


def _check_host(host: str, *, empty_ok: bool = False) -> str:
    # Once per end of every tunnelled connection: the common case (ASCII) without encoding.
    size = len(host) if host.isascii() else len(host.encode("utf-8"))
    if size > MAX_HOST:
        raise InvalidInput(f"host name of {size} bytes exceeds {MAX_HOST}")
    if not size and not empty_ok:
        raise InvalidInput("empty host name")
    if not host.isprintable() or " " in host or "/" in host or "\\" in host:
        raise InvalidInput("host name contains a control character, a space or a slash")
    return host


def _check_port(port: int, *, zero_ok: bool = False) -> int:
    if not (0 if zero_ok else 1) <= port <= 65535:
        raise InvalidInput(f"port {port} outside {0 if zero_ok else 1}..65535")
    return port


def _read_host(r: Reader, *, empty_ok: bool = False) -> str:
    return _check_host(r.text(MAX_HOST), empty_ok=empty_ok)


class Endpoint(Record):
    """Where to connect (``direct-tcpip``) or which listener (``forwarded-tcpip``), plus the
    originator of the TCP connection, for logs, and (``direct-tcpip`` only) the first bytes
    of the client's stream."""

    __slots__ = ("host", "port", "originator", "originator_port", "first")  # noqa: RUF023
    host: str
    port: int
    originator: str
    originator_port: int
    first: bytes

    def __init__(self, host: str, port: int, originator: str = "",
                 originator_port: int = 0, first: bytes = b"") -> None:
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "originator", originator)
        object.__setattr__(self, "originator_port", originator_port)
        object.__setattr__(self, "first", first)

    def encode(self) -> bytes:
        _check_host(self.host)
        _check_port(self.port)
        _check_host(self.originator, empty_ok=True)
        _check_port(self.originator_port, zero_ok=True)
        if len(self.first) > FIRST_MAX:
            raise InvalidInput(f"{len(self.first)} first bytes exceed {FIRST_MAX}")
        w = (Writer().text(self.host).u16(self.port).text(self.originator)
             .u16(self.originator_port))
        if self.first:
            w.vbytes(self.first)
        return w.getvalue()

    @classmethod
    def decode(cls, payload: bytes, *, first_max: int = 0) -> Endpoint:
        """``first_max``: the most first bytes accepted (what this side offered; 0: none,
        the payload ends after the originator's port)."""
        r = Reader(payload)
        host = _read_host(r)
        port = _check_port(r.u16())
        originator = _read_host(r, empty_ok=True)
        originator_port = r.u16()
        first = b""
        if first_max and r.remaining:
            first = r.vbytes(first_max)
            if not first:
                raise InvalidInput("an empty first-bytes field")
        r.end()
        return cls(host, port, originator, originator_port, first)


class ForwardRequest(Record):
    """``tcpip-forward`` / ``cancel-tcpip-forward``: a listener's address and port; an
    empty address is the server's default (loopback), port 0 any free port."""

    __slots__ = ("address", "port")
    address: str
    port: int

    def __init__(self, address: str, port: int) -> None:
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "port", port)

    def encode(self) -> bytes:
        _check_host(self.address, empty_ok=True)
        _check_port(self.port, zero_ok=True)
        return Writer().text(self.address).u16(self.port).getvalue()

    @classmethod
    def decode(cls, payload: bytes) -> ForwardRequest:
        r = Reader(payload)
        address = _read_host(r, empty_ok=True)
        port = r.u16()
        r.end()
        return cls(address, port)


class ForwardCheck(Record):
    """``forward-check``: may the client open ``direct-tcpip`` to host:port? An empty host
    with port 0 asks whether any destination may be reached (``-D``)."""

    __slots__ = ("host", "port")
    host: str
    port: int

    def __init__(self, host: str, port: int) -> None:
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)

    def encode(self) -> bytes:
        _check_host(self.host, empty_ok=True)
        _check_port(self.port, zero_ok=not self.host)
        return Writer().text(self.host).u16(self.port).getvalue()

    @classmethod
    def decode(cls, payload: bytes) -> ForwardCheck:
        r = Reader(payload)
        host = _read_host(r, empty_ok=True)
        port = _check_port(r.u16(), zero_ok=not host)
        r.end()
        if not host and port:
            raise InvalidInput("a port without a host")
        return cls(host, port)


def encode_first_max(first_max: int) -> bytes:
    """A ``forward-check`` success: the server takes up to ``first_max`` first bytes in a
    ``direct-tcpip`` open."""
    return Writer().u32(first_max).getvalue()


def decode_first_max(payload: bytes) -> int:
    """What a ``forward-check`` success offers, capped at :data:`FIRST_MAX`: 0 for an empty
    payload (a server without the extension) and for one that does not decode (the
    extension is then not used; the check itself succeeded)."""
    try:
        r = Reader(payload)
        value = r.u32()
        r.end()
    except InvalidInput:
        return 0
    return min(value, FIRST_MAX)


def encode_bound_port(port: int) -> bytes:
    return Writer().u16(_check_port(port)).getvalue()


def decode_bound_port(payload: bytes) -> int:
    r = Reader(payload)
    port = _check_port(r.u16())
    r.end()
    return port


def encode_reason(reason: str) -> bytes:
    return Writer().vbytes(cut_utf8(reason, MAX_REASON)).getvalue()


def decode_reason(payload: bytes) -> str:
    """A refusal's reason; an empty or malformed payload is no reason, not an error (the
    refusal itself is what counts)."""
    try:
        r = Reader(payload)
        text = r.text(MAX_REASON)
        r.end()
    except InvalidInput:
        return ""
    return text


# --- Forward specifications (command line and config) --------------------------------------


class ForwardSpec(Record):
    """One ``-T``/``-L``, ``-R`` or ``-D`` as the user wrote it.

    ``kind`` is "local", "remote" or "dynamic". For local and dynamic, ``bind``/``port`` are
    the local listener and ``host``/``host_port`` the destination (none for dynamic); for
    remote, ``bind``/``port`` are the server's listener and ``host``/``host_port`` what the
    client connects to.
    """

    __slots__ = ("kind", "bind", "port", "host", "host_port", "text")  # noqa: RUF023 (field order)
    kind: str
    bind: str
    port: int
    host: str
    host_port: int
    text: str

    def __init__(self, kind: str, bind: str, port: int, host: str = "", host_port: int = 0,
                 text: str = "") -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "bind", bind)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "host_port", host_port)
        object.__setattr__(self, "text", text)

    def describe(self) -> str:
        flag = {"local": "-T", "remote": "-R", "dynamic": "-D"}[self.kind]
        return f"{flag} {self.text}"


def _split_fields(text: str) -> list[str]:
    """Colon-separated fields, with ``[v6:addr]`` brackets keeping their colons (ssh's
    syntax); ``/`` is accepted as a separator too, as ssh does for IPv6."""
    fields: list[str] = []
    current = ""
    i = 0
    while i < len(text):
        c = text[i]
        if c == "[":
            end = text.find("]", i)
            if end < 0:
                raise ValueError(f"unmatched '[' in {text!r}")
            current += text[i + 1:end]
            i = end + 1
            continue
        if c in ":/":
            fields.append(current)
            current = ""
        else:
            current += c
        i += 1
    fields.append(current)
    return fields


def _spec_port(value: str, text: str, *, zero_ok: bool = False) -> int:
    if not value.isdigit():
        raise ValueError(f"bad port {value!r} in {text!r}")
    port = int(value)
    if not (0 if zero_ok else 1) <= port <= 65535:
        raise ValueError(f"port {port} out of range in {text!r}")
    return port


def parse_forward(kind: str, text: str) -> ForwardSpec:
    """``[bind:]port:host:hostport`` (local, remote) or ``[bind:]port`` (dynamic);
    ValueError with a one-line reason otherwise. A remote port may be 0 (any)."""
    fields = _split_fields(text.strip())
    if kind == "dynamic":
        if len(fields) == 1:
            return ForwardSpec(kind, "", _spec_port(fields[0], text), text=text)
        if len(fields) == 2:
            return ForwardSpec(kind, fields[0], _spec_port(fields[1], text), text=text)
        raise ValueError(f"bad dynamic forward {text!r}: expected [bind:]port")
    if kind not in ("local", "remote"):
        raise ValueError(f"unknown forward kind {kind!r}")
    if len(fields) == 3:
        fields.insert(0, "")
    if len(fields) != 4 or not fields[2]:
        raise ValueError(f"bad forward {text!r}: expected [bind:]port:host:hostport")
    bind, port, host, host_port = fields
    spec = ForwardSpec(kind, bind, _spec_port(port, text, zero_ok=kind == "remote"), host,
                       _spec_port(host_port, text), text=text)
    try:
        _check_host(host)
        _check_host(bind, empty_ok=True)
    except InvalidInput as exc:
        raise ValueError(f"bad forward {text!r}: {exc}") from None
    return spec
