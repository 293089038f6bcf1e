"""The two server processes of tests/test_handoff.py's end-to-end test (not a test module).

``preauth MONITOR_FD USER PASSWORD USER_KEY_HEX``: listens on 127.0.0.1 (the port goes to
stdout), runs the handshake and the login with aio, and on success hands the connection
over: the state and the TCP socket go to MONITOR_FD (a unix socket), then it exits.

``adopt SOCKET_FD STATE_FD USER``: reads the state from STATE_FD (a pipe), adopts the
socket with aio.adopt, echoes every ``session`` channel, and once the connection is over
prints one JSON line of what it saw (rekey counts, user, how it ended).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
import sys
import time

from common import aio
from common.accounts.keys import HostKey
from common.protocol.auth import AuthRequested
from common.protocol.handshake import ServerHandshake
from common.protocol.transport import TransportSettings

TIMEOUT = 30.0


async def preauth(monitor_fd: int, user: str, password: bytes, user_key: bytes) -> None:
    monitor = socket.socket(fileno=monitor_fd)
    host_key = HostKey.generate("mldsa65", now=time.time())
    done = asyncio.get_running_loop().create_future()

    async def on_auth(conn: aio.QsmpConnection, request: AuthRequested) -> bool:
        if request.user != user:
            return False
        if request.password is not None:
            ok = hmac.compare_digest(request.password, password)
        else:
            ok = request.public_key is not None and request.public_key.encode() == user_key
        if not ok:
            return False
        transport = conn.transport
        assert transport is not None
        fd = transport.get_extra_info("socket").fileno()
        state = await conn.accept_and_hand_off()
        message = len(state).to_bytes(4, "big") + state
        sent = socket.send_fds(monitor, [message], [fd])
        monitor.sendall(message[sent:])
        done.set_result(None)
        return True

    server = await aio.serve("127.0.0.1", 0, make_handshake=lambda: ServerHandshake((host_key,)),
                             on_channel=None, on_auth=on_auth)
    print(server.port, flush=True)
    async with asyncio.timeout(TIMEOUT):
        await done
    server.close()
    monitor.close()


async def adopt(fd: int, user: str, state: bytes) -> dict[str, object]:
    sock = socket.socket(fileno=fd)

    async def echo(_conn: aio.QsmpConnection, channel: aio.Channel) -> None:
        if channel.kind != "session":
            channel.reject()
            return
        channel.accept()
        while data := await channel.read():
            channel.write(data)
            await channel.drain()
        channel.write_eof()

    conn = await aio.adopt(sock, state, on_channel=echo, user=user,
                           settings=TransportSettings(rekey_bytes=1 << 20))
    async with asyncio.timeout(TIMEOUT):
        await conn.wait_closed()
    transport = conn.core.transport
    assert transport is not None and conn.terminated is not None
    return {"rekeys_sent": transport.rekeys_sent, "rekeys_received": transport.rekeys_received,
            "user": conn.user, "end": [int(conn.terminated.code), conn.terminated.by_peer]}


def main() -> None:
    mode = sys.argv[1]
    if mode == "preauth":
        asyncio.run(preauth(int(sys.argv[2]), sys.argv[3], sys.argv[4].encode(),
                            bytes.fromhex(sys.argv[5])))
    elif mode == "adopt":
        with open(int(sys.argv[3]), "rb") as pipe:
            state = pipe.read()
        result = asyncio.run(adopt(int(sys.argv[2]), sys.argv[4], state))
        print(json.dumps(result), flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
