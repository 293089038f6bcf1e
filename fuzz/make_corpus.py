"""Write the seed corpora under fuzz/corpus/<harness>/ from the deterministic recordings.

Every seed is built from real packets and records (fuzz/support.py records them at import
with fixed seeds), so regenerating gives the same files until the protocol itself changes;
rerun this after a wire format change and commit the result::

    python fuzz/make_corpus.py
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.protocol.auth import AuthMessage, password_request
from common.protocol.mux import MuxMessage
from common.protocol.negotiation import ChaffPolicy
from common.protocol.transport import InnerType
from common.wire import HEADER_SIZE, Flag, Writer, encode_packet
from fuzz.support import (
    HOST_KEY_65,
    HOST_KEY_87,
    SCENARIOS,
    encode_plan,
    open_recorded,
    seal_recorded,
)

CORPUS = Path(__file__).resolve().parent / "corpus"


def _len(n: int) -> bytes:
    """The harnesses' length field: u8, or 0xFF then u16."""
    return bytes((n,)) if n < 0xFF else b"\xff" + n.to_bytes(2, "big")


def _u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


# --------------------------------------------------------------------------- wire


def wire_seeds() -> Iterable[tuple[str, bytes]]:
    sc = SCENARIOS[0]
    request, response = sc.client_flight[0], sc.server_flight[0]
    yield "header-connect-request", b"\x00\x00" + request[:HEADER_SIZE]
    yield "header-record", b"\x00\x02" + sc.client_records[0][:HEADER_SIZE]
    yield "header-too-long", b"\x00\x00" + response[:HEADER_SIZE]
    payload = (Writer().u8(1).u16(2).u32(3).u64(4).vbytes(b"abc").name("mlkem768")
               .text("h\u00e9llo").names(("a", "bc")).boolean(True).getvalue())
    program = bytes((0, 1, 2, 3, 7 | (8 << 3), 9, 10 | (8 << 3), 11 | (4 << 3), 12, 13))
    yield "reader-program", b"\x01" + bytes((len(program),)) + program + payload
    stream = b"".join(sc.client_flight) + b"".join(sc.client_records)
    yield "frames-client-flight-whole", b"\x02\x01\x00\x00\x00" + stream
    yield "frames-client-flight-varied", b"\x02\x02\x03\x07\x01" + stream
    yield "frames-bad-flag", b"\x02\x00\x02\x04\x02" + request + b"\x77" + bytes(12)
    yield "public-key-mldsa65", b"\x03" + HOST_KEY_65.public.encode()
    yield "public-key-mldsa87", b"\x03" + HOST_KEY_87.public.encode()
    for i, scenario in enumerate(SCENARIOS):
        yield f"connect-request-{scenario.name}", b"\x04" + scenario.client_flight[0][13:]
        yield (f"connect-response-{scenario.name}",
               b"\x05" + bytes((i,)) + scenario.server_flight[0][13:])
    for name, policy in (("off", ChaffPolicy()), ("on", ChaffPolicy(True, 10, 3_600_000, 0,
                                                                      16384))):
        w = Writer()
        policy.encode(w)
        yield f"chaff-{name}", b"\x06" + w.getvalue()
    yield "private-key", b"\x07" + HOST_KEY_65.encode_private()
    yield "key-line", b"\x08" + HOST_KEY_65.public.openssh_line("host@example").encode()


# --------------------------------------------------------------------------- mux


def _peer(msg_type: int, body: bytes) -> bytes:
    return bytes((msg_type - 0x20,)) + _len(len(body)) + body


def _app(call: int, flag: bool = False) -> bytes:
    op = next(op for op in range(0xC0, 0x100) if op % 12 == call and bool(op & 0x10) == flag)
    return bytes((op,))


def mux_seeds() -> Iterable[tuple[str, bytes]]:
    m = MuxMessage
    w = Writer
    confirmed = 0x40
    yield "data-adjust-eof-close", bytes((confirmed,)) + b"".join((
        _peer(m.CHANNEL_DATA, w().u32(0).getvalue() + b"hello"),
        _peer(m.CHANNEL_EXTENDED_DATA, w().u32(0).u32(1).getvalue() + b"oops"),
        _peer(m.CHANNEL_WINDOW_ADJUST, w().u32(0).u32(4096).getvalue()),
        _peer(m.CHANNEL_EOF, w().u32(0).getvalue()),
        _peer(m.CHANNEL_CLOSE, w().u32(0).getvalue()),
    ))
    yield "confirm-then-send", b"\x00" + b"".join((
        _app(3) + _u16(300) + b"\x00",
        _peer(m.CHANNEL_OPEN_CONFIRM, w().u32(0).u32(5).u32(100).u32(64).vbytes(b"").getvalue()),
        _peer(m.CHANNEL_WINDOW_ADJUST, w().u32(0).u32(1000).getvalue()),
    ))
    yield "open-failure", b"\x00" + _peer(
        m.CHANNEL_OPEN_FAILURE, w().u32(0).u32(2).text("connect failed").getvalue())
    yield "peer-channel-requests", bytes((0xC0 | confirmed,)) + b"".join((
        _peer(m.CHANNEL_REQUEST, w().u32(1).name("exec").boolean(True).vbytes(b"ls")
              .getvalue()),
        _app(8, True) + b"\x01",
        _peer(m.CHANNEL_DATA, w().u32(1).getvalue() + bytes(200)),
        _app(6, True) + b"\x01" + _u16(200),
        _app(7, True) + b"\x00",
        _peer(m.CHANNEL_SUCCESS, w().u32(0).vbytes(b"").getvalue()),
        _peer(m.CHANNEL_FAILURE, w().u32(0).vbytes(b"").getvalue()),
    ))
    yield "global-requests", b"\x01" + b"".join((
        _peer(m.GLOBAL_REQUEST, w().name("tcpip-forward").boolean(True).vbytes(b"x")
              .getvalue()),
        _app(10, True),
        _app(9, True),
        _peer(m.REQUEST_SUCCESS, w().vbytes(b"").getvalue()),
        _peer(m.REQUEST_FAILURE, w().vbytes(b"").getvalue()),
    ))
    yield "peer-open-accept-reject", b"\x02" + b"".join((
        _peer(m.CHANNEL_OPEN, w().name("x11").u32(3).u32(10).u32(10).vbytes(b"").getvalue()),
        _app(1),
        _peer(m.CHANNEL_OPEN, w().name("auth").u32(4).u32(10).u32(10).vbytes(b"").getvalue()),
        _app(2) + b"\x01",
    ))
    yield "small-window-overflow", bytes((confirmed | (2 << 1),)) + _peer(
        m.CHANNEL_DATA, w().u32(0).getvalue() + bytes(101))


# --------------------------------------------------------------------------- transport

_RAW, _SEALED, _MESSAGE, _MUX, _PEER_READ, _PEER_FLUSH, _TIMER = range(7)
_PEER_REKEY, _REKEY, _APP, _EOF, _CLOSE = range(7, 12)


def _op(kind: int, *args: bytes) -> bytes:
    return bytes((kind,)) + b"".join(args)


def _bytes_arg(data: bytes) -> bytes:
    return _len(len(data)) + data


def transport_seeds() -> Iterable[tuple[str, bytes]]:
    w = Writer
    server, client = 0x00, 0x04
    keepalive = 1 << 3
    small_rekey = 2 << 3
    for i, sc in enumerate(SCENARIOS):
        records = sc.client_records
        yield f"server-real-records-{sc.name}", bytes((i | server, 0, 0)) + b"".join((
            _op(_RAW, _bytes_arg(records[0])),
            _op(_APP, b"\x01"),  # accept the channel the record opened
            *(_op(_RAW, _bytes_arg(r)) for r in records[1:]),
            _op(_PEER_READ),
        ))
        yield f"client-real-records-{sc.name}", bytes((i | client, 1, 0)) + b"".join((
            _op(_APP, b"\x00"),  # open the channel the recorded confirmation answers
            *(_op(_RAW, _bytes_arg(r)) for r in sc.server_records),
        ))
    ka_token = b"\x00\x01\x02\x03\x04\x05\x06\x07"
    yield "keepalive-both-ways", bytes((keepalive, 3, 5)) + b"".join((
        _op(_TIMER, _u16(16 * 8)),
        _op(_PEER_READ),
        _op(_PEER_FLUSH),
        _op(_TIMER, _u16(16 * 8)),
        _op(_PEER_READ),
        _op(_PEER_FLUSH),
        _op(_MESSAGE, bytes((InnerType.KEEPALIVE_REQUEST,)), _bytes_arg(ka_token)),
    ))
    yield "peer-rekey-then-data", bytes((client, 0, 0)) + b"".join((
        _op(_PEER_REKEY), _op(_PEER_FLUSH), _op(_PEER_READ), _op(_PEER_FLUSH),
        _op(_MUX, b"\x00", _bytes_arg(w().name("session").u32(0).u32(1000).u32(100)
                                      .vbytes(b"").getvalue())),
        _op(_PEER_READ),
    ))
    yield "target-rekey-round-trip", bytes((2, 0, 0)) + b"".join((
        _op(_REKEY), _op(_PEER_READ), _op(_PEER_FLUSH), _op(_PEER_READ),
        _op(_APP, b"\x00"), _op(_PEER_READ),
    ))
    yield "auto-rekey-by-bytes", bytes((small_rekey | 1, 0, 0)) + b"".join((
        _op(_APP, b"\x00"), _op(_PEER_READ),
        _op(_MUX, b"\x01", _bytes_arg(w().u32(0).u32(9).u32(1 << 20).u32(1 << 16).vbytes(b"")
                                      .getvalue())),
        _op(_APP, b"\x02", b"\x00", _u16(4000)),
        _op(_PEER_READ), _op(_PEER_FLUSH), _op(_PEER_READ),
    ))
    ciphertext = w().u32(1120).fixed(bytes(1120)).getvalue()  # X-Wing's size
    yield "rekey-without-offer", bytes((0, 0, 0)) + _op(
        _MESSAGE, bytes((InnerType.REKEY,)), _bytes_arg(ciphertext))
    yield "shutdown", bytes((0, 0, 0)) + _op(
        _MESSAGE, bytes((InnerType.SHUTDOWN,)), _bytes_arg(w().text("bye").getvalue()))
    yield "error-report", bytes((1, 0, 0)) + _op(
        _MESSAGE, bytes((InnerType.ERROR,)), _bytes_arg(w().u8(0x0B).text("no").getvalue()))
    yield "bad-padding", bytes((0, 1, 0)) + _op(_SEALED, b"\x00", _bytes_arg(b"\x24\xff\xff"))
    yield "chaff-and-timers", bytes((2 | keepalive, 0, 0)) + b"".join((
        _op(_MESSAGE, bytes((InnerType.CHAFF,)), _bytes_arg(bytes(40))),
        _op(_TIMER, _u16(8)), _op(_TIMER, _u16(160)), _op(_PEER_READ), _op(_PEER_FLUSH),
        _op(_TIMER, _u16(160)),
    ))
    yield "garbage-then-close", bytes((0, 2, 6)) + b"".join((
        _op(_RAW, _bytes_arg(b"\x04" + bytes(8) + b"\x00\x00\x00\x04" + b"abcd")),
        _op(_CLOSE), _op(_EOF),
    ))


# --------------------------------------------------------------------------- handshakes

_EOF_FLAG, _EXPIRE, _LATE, _REJECT, _STRANGER = 0x01, 0x02, 0x04, 0x08, 0x10
_BYTEWISE_CHUNKS, _FIXED_CHUNKS, _VARIED_CHUNKS, _SEALED = 0x20, 0x40, 0x60, 0x80
_EARLY, _LOGIN, _AUTH, _CLOSE = 0x01, 0x02, 0x04, 0x08


def _record(inner_type: int, body: bytes) -> bytes:
    """A record's plaintext: inner type, no padding, body."""
    return bytes((inner_type, 0, 0)) + body


def _handshake_seeds(side: str) -> Iterable[tuple[str, bytes]]:
    theirs = "client_flight" if side == "server" else "server_flight"
    for i, sc in enumerate(SCENARIOS):
        flight: tuple[bytes, ...] = getattr(sc, theirs)
        for k in range(len(flight) + 1):
            yield f"prefix{k}-{sc.name}", encode_plan(i, k)
        yield f"flight-as-tail-{sc.name}", encode_plan(i, 0, tail=b"".join(flight))
    sc = SCENARIOS[0]
    flight = getattr(sc, theirs)
    records = sc.client_records if side == "server" else sc.server_records
    yield "flight-varied-chunks", encode_plan(0, 0, flags=_VARIED_CHUNKS, chunk_param=9,
                                              tail=b"".join(flight))
    yield "established-then-records", encode_plan(0, 4, tail=b"".join(records))
    yield "prefix1-next-bytewise", encode_plan(0, 1, flags=_BYTEWISE_CHUNKS, tail=flight[1])
    yield "prefix2-patched-length", encode_plan(0, 2, patches=((12, 0x01),))
    yield "prefix1-patched-body", encode_plan(0, 1, patches=((20, 0x80), (40, 0x01)))
    yield "prefix0-patched-flag", encode_plan(0, 0, patches=((0, 0x0C),))
    yield "error-packet", encode_plan(0, 1, tail=encode_packet(Flag.ERROR_CONDITION, 1, b"\x05"))
    yield "terminated-packet", encode_plan(0, 1, tail=encode_packet(Flag.CONNECTION_TERMINATED,
                                                                    1, b""))
    yield "eof-mid-handshake", encode_plan(1, 2, flags=_EOF_FLAG)
    yield "step-timeout", encode_plan(2, 1, flags=_EXPIRE)
    yield "expired-host-key", encode_plan(0, 1, flags=_LATE)
    from_client = side == "server"
    for k in range(len(flight)):
        if seal_recorded(sc, from_client, k, b"") is not None:
            yield f"sealed{k}-recorded-plaintext", encode_plan(
                0, k, flags=_SEALED, tail=open_recorded(sc, from_client, k))
            yield f"sealed{k}-empty", encode_plan(0, k, flags=_SEALED)
    yield "close-mid-handshake", encode_plan(0, 2, more=_CLOSE)
    yield "close-established", encode_plan(2, 4, more=_CLOSE)
    if side == "server":
        opening = _record(MuxMessage.CHANNEL_OPEN, Writer().name("session").u32(0)
                          .u32(65536).u32(32768).vbytes(b"").getvalue())
        yield "sealed4-channel-open", encode_plan(0, 4, flags=_SEALED, tail=opening)
        login = _record(AuthMessage.AUTH_REQUEST, password_request("alice", b"pw"))
        yield "sealed4-login-accepted", encode_plan(0, 4, flags=_SEALED, more=_AUTH,
                                                    tail=login)
        yield "sealed4-login-rejected", encode_plan(0, 4, flags=_SEALED | _REJECT | _EXPIRE,
                                                    more=_AUTH, tail=login)
        yield "sealed4-channel-before-login", encode_plan(0, 4, flags=_SEALED, more=_AUTH,
                                                          tail=opening)
        yield "login-grace-expires", encode_plan(0, 4, flags=_EXPIRE, more=_AUTH)
    else:
        yield "tofu-reject", encode_plan(1, 1, flags=_REJECT)
        yield "stranger-key", encode_plan(0, 1, flags=_STRANGER)
        success = _record(AuthMessage.AUTH_SUCCESS, b"")
        yield "sealed4-login-success", encode_plan(0, 4, flags=_SEALED, more=_LOGIN,
                                                   tail=success)
        failure = _record(AuthMessage.AUTH_FAILURE, Writer().names(("password",))
                          .text("no").getvalue())
        yield "sealed4-login-failure", encode_plan(1, 4, flags=_SEALED, more=_LOGIN,
                                                   tail=failure)
        confirm = _record(MuxMessage.CHANNEL_OPEN_CONFIRM, Writer().u32(0).u32(5).u32(65536)
                          .u32(32768).vbytes(b"").getvalue())
        yield "early-data-established", encode_plan(0, 4, flags=_SEALED, more=_EARLY,
                                                    tail=confirm)
        yield "early-data-and-login", encode_plan(3, 3, more=_EARLY | _LOGIN)
        yield "early-data-close", encode_plan(0, 3, more=_EARLY | _CLOSE)


# --------------------------------------------------------------------------- auth


def auth_seeds() -> Iterable[tuple[str, bytes]]:
    from common.crypto.rng import DeterministicRng
    from common.protocol.auth import publickey_request
    from fuzz.fuzz_auth import SESSION_ID

    def request(body: bytes) -> bytes:
        return b"\x00" + _len(len(body)) + body

    accept, reject, wait = b"\xc0", b"\xc1", b"\xc2"
    yield "server-password-accept", b"\x00\x05" + request(
        password_request("alice", b"correct horse")) + accept
    signed = publickey_request("alice", HOST_KEY_65, SESSION_ID, DeterministicRng(b"auth"))
    yield "server-publickey-accept", b"\x00\x05" + request(signed) + accept
    forged = publickey_request("alice", HOST_KEY_65, bytes(32), DeterministicRng(b"auth"))
    yield "server-publickey-forged", b"\x00\x00" + request(forged) + wait + b"\x10"
    yield "server-reject-retry", b"\x00\x02" + b"".join((
        request(password_request("bob", b"guess")), reject + b"\x10",  # reject, time
        request(password_request("bob", b"guess2")), reject + b"\x40",
    ))
    unknown = Writer().name("carol").name("keyboard-interactive").getvalue() + b"xyz"
    yield "server-unknown-method", b"\x00\x00" + request(unknown) + wait + b"\x10"
    failure = Writer().names(("publickey", "password")).text("denied").getvalue()
    yield "client-failure-then-success", b"\x01" + b"".join((
        b"\xc0", b"\x02" + _len(len(failure)) + failure, b"\xc0", b"\x01\x00"))


HARNESSES = {
    "wire": wire_seeds,
    "mux": mux_seeds,
    "transport": transport_seeds,
    "handshake_server": lambda: _handshake_seeds("server"),
    "handshake_client": lambda: _handshake_seeds("client"),
    "auth": auth_seeds,
}


def main() -> None:
    for harness, seeds in HARNESSES.items():
        directory = CORPUS / harness
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        count = 0
        for name, data in seeds():
            path = directory / name
            if path.exists():
                raise SystemExit(f"duplicate seed name {harness}/{name}")
            path.write_bytes(data)
            count += 1
        print(f"{harness}: {count} seeds")


if __name__ == "__main__":
    main()
