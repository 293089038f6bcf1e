#!/usr/bin/env python3
"""qsh's end-to-end benchmark, with OpenSSH measured in the same run for comparison.

    python bench/run.py            # 1 GiB per transfer, ~1-2 minutes
    python bench/run.py --quick    # 256 MiB, fewer repeats, ~20 s
    python bench/run.py --sweep    # also try other window / record sizes

Prints:

(a) handshakes/s of the default suite, client and server cores back to back in this process
    (no sockets): the protocol's CPU cost, both sides on one core;
(b) connects/s over loopback TCP: ``aio.connect`` + close against a server process;
(c) one-channel throughput over loopback TCP between two processes (this one sends or
    receives, ``bench/peer.py`` is the other end) for each AEAD, in GB/s (10^9 bytes/s);
(d) the OpenSSH baseline when sshd is installed: a private sshd (see ``bench/openssh.py``),
    ``ssh host 'cat > /dev/null' < data`` for the same byte count with each matching cipher,
    ``ssh host true`` per second, and the ratios qsh / OpenSSH.

Machines shared with other work are noisy: each transfer runs ``--repeat`` times and both
the best and the median are shown. Benchmarks are never unit tests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import openssh  # noqa: E402
from common import aio  # noqa: E402
from common.accounts.keys import HostKey, PublicKey  # noqa: E402
from common.protocol.connection import Connection  # noqa: E402
from common.protocol.handshake import ClientHandshake, ServerHandshake  # noqa: E402
from common.protocol.negotiation import Offer  # noqa: E402

AEADS = ("aes256gcm", "chacha20poly1305")
GiB = 1 << 30
MiB = 1 << 20
CHUNK = MiB  # application write size


# --- (a) handshakes in process ---------------------------------------------------------------


def handshakes_in_process(count: int) -> float:
    key = HostKey.generate("mldsa65", now=time.time())
    now = time.time()

    def one() -> None:
        client = Connection(ClientHandshake(Offer(), key.public))
        server = Connection(ServerHandshake([key]))
        client.start(now)
        server.start(now)
        moved = True
        while moved:
            moved = False
            for a, b in ((client, server), (server, client)):
                for chunk in a.data_to_send():
                    moved = True
                    b.receive_data(chunk, now)
        assert client.established and server.established

    one()  # warm up (imports, registry)
    start = time.perf_counter()
    for _ in range(count):
        one()
    return count / (time.perf_counter() - start)


# --- the peer process ------------------------------------------------------------------------


class Peer:
    """``bench/peer.py`` in a subprocess: a qsh server on a loopback port."""

    def __init__(self, aead: str, window: int | None, max_packet: int | None) -> None:
        args = [sys.executable, str(ROOT / "bench" / "peer.py"), "--aead", aead]
        if window:
            args += ["--window", str(window)]
        if max_packet:
            args += ["--max-packet", str(max_packet)]
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            self.close()
            raise RuntimeError(f"peer did not start: {line!r}")
        self.port = int(line.split()[1])

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def _trust(key: PublicKey) -> bool:
    return True


async def _connect(port: int, aead: str, window: int | None = None,
                   max_packet: int | None = None) -> aio.QsmpConnection:
    return await aio.connect("127.0.0.1", port, on_host_key=_trust, window=window,
                             max_packet=max_packet,
                             handshake=ClientHandshake(Offer(aeads=(aead,)), None))


# --- (b) connects over TCP -------------------------------------------------------------------


async def connects_per_second(port: int, count: int) -> float:
    warm = await _connect(port, "aes256gcm")
    warm.close()
    await warm.wait_closed()
    start = time.perf_counter()
    for _ in range(count):
        connection = await _connect(port, "aes256gcm")
        connection.close()
        await connection.wait_closed()
    return count / (time.perf_counter() - start)


# --- (c) throughput --------------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float  # wall time of the transfer
    cpu_here: float  # CPU seconds this process spent on it
    cpu_peer: float  # and the peer process


async def _peer_cpu(connection: aio.QsmpConnection) -> float:
    channel = await connection.open_channel("cpu")
    value: float = struct.unpack(">d", await channel.readexactly(8))[0]
    await channel.wait_closed()
    return value


async def upload(connection: aio.QsmpConnection, nbytes: int) -> None:
    """Send ``nbytes`` on one channel; return once the peer confirms it read them all."""
    channel = await connection.open_channel("sink")
    block = os.urandom(CHUNK)
    count = nbytes // CHUNK
    for _ in range(count):
        channel.write(block)
        await channel.drain()
    channel.write_eof()
    confirmed = int.from_bytes(await channel.readexactly(8), "big")
    if confirmed != count * CHUNK:
        raise RuntimeError(f"peer read {confirmed} bytes, expected {count * CHUNK}")


async def download(connection: aio.QsmpConnection, nbytes: int) -> None:
    """Receive ``nbytes`` on one channel from the peer."""
    channel = await connection.open_channel("source", nbytes.to_bytes(8, "big"))
    total = 0
    async for chunk in channel:
        total += len(chunk)
    if total != nbytes:
        raise RuntimeError(f"received {total} bytes, expected {nbytes}")


async def transfer(port: int, aead: str, nbytes: int, direction: str, window: int | None,
                   max_packet: int | None) -> Sample:
    connection = await _connect(port, aead, window, max_packet)
    peer_before = await _peer_cpu(connection)
    cpu_before = time.process_time()
    start = time.perf_counter()
    await (upload if direction == "up" else download)(connection, nbytes)
    seconds = time.perf_counter() - start
    cpu_here = time.process_time() - cpu_before
    cpu_peer = await _peer_cpu(connection) - peer_before
    connection.close()
    await connection.wait_closed()
    return Sample(seconds, cpu_here, cpu_peer)


@dataclass
class Rate:
    best: float  # GB/s
    median: float
    cpu_send: float  # CPU seconds per GiB, median, sending and receiving process
    cpu_receive: float

    @property
    def cpu_bound(self) -> float:
        """GB/s if each process had a core to itself: the busier one decides."""
        return GiB / max(self.cpu_send, self.cpu_receive, 1e-9) / 1e9

    def __str__(self) -> str:
        return (f"{self.best:5.2f} GB/s best, {self.median:5.2f} median; "
                f"CPU/GiB send {self.cpu_send:.2f} s, receive {self.cpu_receive:.2f} s "
                f"(~{self.cpu_bound:.1f} GB/s CPU-bound)")


def measure(aead: str, nbytes: int, repeat: int, *, window: int | None = None,
            max_packet: int | None = None, direction: str = "up") -> Rate:
    peer = Peer(aead, window, max_packet)
    try:
        samples = [asyncio.run(transfer(peer.port, aead, nbytes, direction, window,
                                        max_packet)) for _ in range(repeat)]
    finally:
        peer.close()
    rates = [nbytes / s.seconds / 1e9 for s in samples]
    gib = nbytes / GiB
    here = statistics.median(s.cpu_here for s in samples) / gib
    there = statistics.median(s.cpu_peer for s in samples) / gib
    send, receive = (here, there) if direction == "up" else (there, here)
    return Rate(max(rates), statistics.median(rates), send, receive)


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB, fewer repeats")
    parser.add_argument("--bytes", type=int, help="bytes per transfer (default 1 GiB)")
    parser.add_argument("--repeat", type=int, help="runs per transfer (default 3, quick 2)")
    parser.add_argument("--sweep", action="store_true",
                        help="also try other window and max_packet sizes (aes256gcm)")
    parser.add_argument("--no-openssh", action="store_true", help="skip the baseline")
    parser.add_argument("--openssh-prefix", type=Path, metavar="DIR",
                        help="the baseline's ssh/sshd from DIR (e.g. build-openssh.sh's "
                             "PREFIX) instead of Debian's")
    args = parser.parse_args()
    nbytes = args.bytes or (256 * MiB if args.quick else GiB)
    nbytes -= nbytes % CHUNK
    repeat = args.repeat or (2 if args.quick else 3)
    hs_count = 30 if args.quick else 100

    print(f"qsh benchmark: {nbytes / MiB:.0f} MiB per transfer, best/median of {repeat}; "
          f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    print()
    rate_hs = handshakes_in_process(hs_count)
    print(f"(a) handshakes in process (default suite, both cores, no sockets): "
          f"{rate_hs:7.1f} /s  ({1000 / rate_hs:.2f} ms each)")
    peer = Peer("aes256gcm", None, None)
    try:
        rate_connect = asyncio.run(connects_per_second(peer.port, hs_count // 2))
    finally:
        peer.close()
    print(f"(b) connects over loopback TCP (connect + handshake + close):    "
          f"{rate_connect:7.1f} /s  ({1000 / rate_connect:.2f} ms each)")
    print()
    print("(c) one channel over loopback TCP between two processes (bench/peer.py is the "
          "other end).\n    CPU/GiB: each process's CPU time (user + kernel) per GiB moved; "
          "CPU-bound: what the\n    pair would do with a core each and nothing else running")
    qsh_up: dict[str, Rate] = {}
    for aead in AEADS:
        qsh_up[aead] = measure(aead, nbytes, repeat)
        print(f"    {aead:17} upload   {qsh_up[aead]}")
        down = measure(aead, nbytes, repeat, direction="down")
        print(f"    {aead:17} download {down}")
    if args.sweep:
        print("    window / max_packet sweep (aes256gcm, upload):")
        for window, max_packet in ((2 * MiB, 64 * 1024), (8 * MiB, 256 * 1024),
                                   (16 * MiB, 512 * 1024), (32 * MiB, MiB - 16),
                                   (64 * MiB, MiB - 16)):
            rate = measure("aes256gcm", nbytes, repeat, window=window, max_packet=max_packet)
            print(f"      window {window / MiB:4.0f} MiB, max_packet {max_packet // 1024:5d} "
                  f"KiB: {rate}")
    print()
    if args.no_openssh:
        return
    why = openssh.available(args.openssh_prefix)
    if why is not None:
        print(f"(d) OpenSSH baseline skipped: {why}. To include it:\n"
              f"        {openssh.INSTALL_HINT}")
        return
    openssh_baseline(nbytes, repeat, hs_count // 4, qsh_up, rate_connect, args.openssh_prefix)


def openssh_baseline(nbytes: int, repeat: int, hs_count: int, qsh_up: dict[str, Rate],
                     qsh_connects: float, prefix: Path | None = None) -> None:
    shm = Path("/dev/shm")
    data_dir = Path(tempfile.mkdtemp(prefix="qsh-bench-",
                                     dir=shm if shm.is_dir() else None))
    data = data_dir / "data"
    gib = nbytes / GiB
    try:
        block = os.urandom(CHUNK)
        with data.open("wb") as f:
            for _ in range(nbytes // CHUNK):
                f.write(block)
        with openssh.PrivateSshd(prefix=prefix) as sshd:
            print(f"(d) OpenSSH baseline ({sshd.version}), private sshd on 127.0.0.1:"
                  f"{sshd.port}:")
            setup = sshd.session(max(hs_count, 3))
            print(f"    ssh host true: {1 / setup.seconds:5.1f} /s ({1000 * setup.seconds:.0f} ms "
                  "each: process start, key exchange, user auth, session)")
            for aead, cipher in openssh.CIPHERS.items():
                runs = [sshd.transfer(data, cipher) for _ in range(repeat)]
                # Count the transfer only, as for qsh: subtract one `ssh host true`.
                rates = [nbytes / max(r.seconds - setup.seconds, 1e-9) / 1e9 for r in runs]
                ssh = Rate(max(rates), statistics.median(rates),
                           statistics.median(r.cpu_client - setup.cpu_client for r in runs) / gib,
                           statistics.median(r.cpu_server - setup.cpu_server for r in runs) / gib)
                raw = nbytes / min(r.seconds for r in runs) / 1e9
                print(f"    ssh -c {cipher:29} {ssh}")
                print(f"        (session setup subtracted; {raw:.2f} GB/s best with it)")
                qsh = qsh_up[aead]
                print(f"      qsh {aead} / OpenSSH: throughput {qsh.best / ssh.best:.2f}x best, "
                      f"{qsh.median / ssh.median:.2f}x median; CPU per GiB (lower is better) "
                      f"{qsh.cpu_send / ssh.cpu_send:.2f}x sending, "
                      f"{qsh.cpu_receive / ssh.cpu_receive:.2f}x receiving")
            print(f"    connects: qsh {qsh_connects:.1f}/s vs `ssh host true` "
                  f"{1 / setup.seconds:.1f}/s (ssh also starts a process, authenticates a user "
                  "and runs a command)")
    finally:
        data.unlink(missing_ok=True)
        data_dir.rmdir()


if __name__ == "__main__":
    main()
