"""A hostile client for the read gate: completes the handshake over a raw TCP socket, like
any client, then sends requests that each ask for an answer as fast as it can, and never
reads again: keep-alive requests (``keepalive``, the default) or global requests with
``want_reply`` (``global``).

Run as its own process (``python3 tests/flooder.py PORT HOST_KEY_PUB SECONDS [KIND]``) so
that the flood and the server under test do not share an interpreter. Prints
``established`` after the handshake and one line at the end:
``sent=<bytes> blocked=<seconds>``, how much the kernel took from us and how long our
socket would take nothing at all (the server had stopped reading).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.accounts.keys import PublicKey  # noqa: E402
from common.protocol.connection import Connection, ConnectionTerminated  # noqa: E402
from common.protocol.handshake import ClientHandshake  # noqa: E402
from common.protocol.negotiation import Offer  # noqa: E402
from common.protocol.transport import InnerType  # noqa: E402

#: Keep-alive records sealed per batch handed to the kernel.
BATCH = 2000


def handshake(sock: socket.socket, trusted: PublicKey, timeout: float = 30.0) -> Connection:
    core = Connection(ClientHandshake(Offer(), trusted))
    core.start(time.time())
    sock.sendall(b"".join(bytes(b) for b in core.data_to_send()))
    deadline = time.monotonic() + timeout
    while not core.established:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        data = sock.recv(65536)
        core.receive_data(data, time.time())
        for event in core.events_received():
            if isinstance(event, ConnectionTerminated):
                raise SystemExit(f"handshake failed: {event.reason}")
        sock.sendall(b"".join(bytes(b) for b in core.data_to_send()))
    return core


def flood(sock: socket.socket, core: Connection, seconds: float,
          kind: str = "keepalive") -> tuple[int, float]:
    transport = core.transport
    assert transport is not None
    sock.setblocking(False)
    sent = 0
    blocked = 0.0
    pending = memoryview(b"")
    end = time.monotonic() + seconds
    while (now := time.monotonic()) < end:
        if not pending:
            for _ in range(BATCH):
                if kind == "global":
                    core.mux.global_request("flood@qsh", b"", want_reply=True)
                else:
                    transport.send(InnerType.KEEPALIVE_REQUEST, os.urandom(8))
            pending = memoryview(b"".join(bytes(b) for b in core.data_to_send()))
        try:
            n = sock.send(pending)
        except BlockingIOError:
            n = 0
        except OSError:
            break  # the server gave up on us: that is allowed
        if n:
            sent += n
            pending = pending[n:]
        else:
            time.sleep(0.01)
            blocked += time.monotonic() - now
    return sent, blocked


def main() -> None:
    port, key_file, seconds = int(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    kind = sys.argv[4] if len(sys.argv) > 4 else "keepalive"
    trusted = PublicKey.load(key_file)[0]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A small, fixed receive buffer: with the kernel's autotuning (tcp_rmem's maximum is
    # 32 MiB on some machines) the server's replies could all fit in it on a loaded machine,
    # where the server answers slowly, and never back up to where the read gate looks.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    core = handshake(sock, trusted)
    print("established", flush=True)
    sent, blocked = flood(sock, core, seconds, kind)
    print(f"sent={sent} blocked={blocked:.2f}", flush=True)
    sock.close()


if __name__ == "__main__":
    main()
