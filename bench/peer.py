"""The far end of the throughput benchmark: a qsh server in its own process.

Started by ``bench/run.py``; prints ``PORT <n>`` on stdout once listening and serves until
its stdin closes. Channel kinds:

* ``sink``: read everything until EOF, then answer with the byte count (u64) and close;
* ``source``: the open payload is a u64 byte count; send that many bytes, then close;
* ``cpu``: answer with this process's CPU time (user + system seconds, a float64), then close.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import aio
from common.accounts.keys import HostKey
from common.protocol.handshake import ServerHandshake
from common.protocol.negotiation import ServerPolicy

CHUNK = 1 << 20


async def on_channel(connection: aio.QsmpConnection, channel: aio.Channel) -> None:
    if channel.kind == "sink":
        channel.accept()
        total = 0
        async for data in channel:
            total += len(data)
        channel.write(total.to_bytes(8, "big"))
    elif channel.kind == "source":
        channel.accept()
        remaining = int.from_bytes(channel.payload, "big")
        block = os.urandom(CHUNK)
        while remaining:
            n = min(remaining, CHUNK)
            channel.write(block if n == CHUNK else block[:n])
            remaining -= n
            await channel.drain()
    elif channel.kind == "cpu":
        channel.accept()
        channel.write(struct.pack(">d", time.process_time()))
    else:
        channel.reject(3, f"unknown channel kind {channel.kind}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--aead", default="aes256gcm")
    parser.add_argument("--window", type=int, default=None)
    parser.add_argument("--max-packet", type=int, default=None)
    args = parser.parse_args()
    key = HostKey.generate("mldsa65", now=time.time())
    policy = ServerPolicy(aeads=(args.aead,))
    server = await aio.serve("127.0.0.1", 0,
                             make_handshake=lambda: ServerHandshake([key], policy),
                             on_channel=on_channel, window=args.window,
                             max_packet=args.max_packet)
    print(f"PORT {server.port}", flush=True)
    loop = asyncio.get_running_loop()
    # Serve until the parent closes our stdin (or dies).
    await loop.run_in_executor(None, sys.stdin.read)
    server.close(connections=True)


if __name__ == "__main__":
    asyncio.run(main())
