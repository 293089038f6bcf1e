#!/usr/bin/env python3
"""Tunnels: ``qsh -N -T`` against ``ssh -N -L`` in the same run (issue 10).

    python bench/tunnel.py                 # 1 GiB each way, 1000 connections, 3 rounds
    python bench/tunnel.py --quick         # 256 MiB, 300 connections, 1 round
    python bench/tunnel.py --bytes N --connections K --rounds R
    python bench/tunnel.py --only connections --openssh /opt/openssh-10.5 --rounds 5
    python bench/tunnel.py --only connections --tree ../before   # and another checkout

Every client is the real command-line program, each against its own private daemon on
127.0.0.1 (:class:`bench.sessions.PrivateQshd`, :class:`bench.openssh.PrivateSshd`; key
login; ssh with ``-c aes256-gcm@openssh.com``, qsh's default suite is AES-256-GCM too). The
tunnel's far end is a server in this process on 127.0.0.1; the near end a client in this
process. The rounds are interleaved (one of each tunnel, then the next), so the machine's
load changes hit every tunnel alike. Printed, for each, the median of the rounds, every
round, and the ratio qsh/ssh (above 1: qsh is faster):

1. **upload**: ``--bytes`` sent into the tunnel, the far end counts them and answers with
   the count after EOF; MB/s from the first byte sent to the answer.
2. **download**: the far end sends ``--bytes`` on connect; MB/s until EOF.
3. **connections/s**: ``--connections`` sequential connections through the tunnel, each
   opened, 1 KiB sent, 1 KiB echoed back, closed.

Benchmarks are never unit tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import openssh
from bench.sessions import PrivateQshd

HOST = "127.0.0.1"
MiB = 1024 * 1024
BLOCK = bytes(range(256)) * 4096  # 1 MiB


class FarEnd:
    """The server behind the tunnel: ``mode`` "sink" (count, answer at EOF), "source" (send
    ``nbytes`` then close) or "echo" (1 KiB exchanges)."""

    def __init__(self, mode: str, nbytes: int = 0) -> None:
        self.mode = mode
        self.nbytes = nbytes
        self.sock = socket.create_server((HOST, 0), backlog=512)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            if self.mode == "sink":
                total = 0
                buf = bytearray(MiB)
                while n := conn.recv_into(buf):
                    total += n
                conn.sendall(str(total).encode())
            elif self.mode == "source":
                left = self.nbytes
                view = memoryview(BLOCK)
                while left:
                    n = min(left, len(view))
                    conn.sendall(view[:n])
                    left -= n
            else:
                while data := conn.recv(65536):
                    conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def tunnel(command: list[str]) -> Iterator[None]:
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        yield None
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"tunnel on port {port} did not come up")


def upload(port: int, nbytes: int) -> float:
    start = time.perf_counter()
    with socket.create_connection((HOST, port)) as s:
        view = memoryview(BLOCK)
        left = nbytes
        while left:
            n = min(left, len(view))
            s.sendall(view[:n])
            left -= n
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while data := s.recv(64):
            answer += data
    seconds = time.perf_counter() - start
    if int(answer or b"0") != nbytes:
        raise RuntimeError(f"upload: the far end counted {answer!r}, not {nbytes}")
    return nbytes / seconds / 1e6


def download(port: int, nbytes: int) -> float:
    start = time.perf_counter()
    total = 0
    buf = bytearray(MiB)
    with socket.create_connection((HOST, port)) as s:
        while n := s.recv_into(buf):
            total += n
    seconds = time.perf_counter() - start
    if total != nbytes:
        raise RuntimeError(f"download: {total} bytes, not {nbytes}")
    return nbytes / seconds / 1e6


def connections(port: int, count: int) -> float:
    payload = b"x" * 1024
    start = time.perf_counter()
    for _ in range(count):
        with socket.create_connection((HOST, port)) as s:
            s.sendall(payload)
            got = 0
            while got < 1024:
                data = s.recv(1024 - got)
                if not data:
                    raise RuntimeError("connection closed early")
                got += len(data)
    return count / (time.perf_counter() - start)


def measure(tunnels: dict[str, Callable[[int, int], list[str]]], args: argparse.Namespace
            ) -> dict[str, dict[str, list[float]]]:
    """Every measurement through every tunnel command, the rounds interleaved (round 1 of
    each tunnel, then round 2 of each ...), so a change in the machine's load hits all of
    them alike. Each tunnel's client is started once per measurement kind and kept for its
    rounds."""
    results: dict[str, dict[str, list[float]]] = {
        name: {"upload": [], "download": [], "connections": []} for name in tunnels}
    kinds = (("sink", "upload"), ("source", "download"), ("echo", "connections"))
    for mode, key in kinds:
        if key not in args.only:
            continue
        far = FarEnd(mode, args.bytes)
        try:
            with contextlib.ExitStack() as stack:
                ports: dict[str, int] = {}
                for name, make in tunnels.items():
                    lport = free_port()
                    stack.enter_context(tunnel(make(lport, far.port)))
                    ports[name] = lport
                for lport in ports.values():
                    wait_ready(lport)
                for _ in range(args.rounds):
                    for name, lport in ports.items():
                        if key == "upload":
                            value = upload(lport, args.bytes)
                        elif key == "download":
                            value = download(lport, args.bytes)
                        else:
                            value = connections(lport, args.connections)
                        results[name][key].append(value)
        finally:
            far.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes", type=int, default=1024 * MiB)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="upload,download,connections",
                        help="comma-separated: upload, download, connections")
    parser.add_argument("--openssh", action="append", type=Path, default=None,
                        metavar="PREFIX",
                        help="also measure the OpenSSH installed at PREFIX (e.g. "
                        "/opt/openssh-10.5; repeatable); the distribution's is always in")
    parser.add_argument("--tree", action="append", type=Path, default=None,
                        help="also measure qsh and qshd from this checkout (a before and "
                        "after; repeatable)")
    args = parser.parse_args()
    if args.quick:
        args.bytes, args.connections, args.rounds = 256 * MiB, 300, 1
    args.only = set(args.only.split(","))
    with contextlib.ExitStack() as stack:
        tunnels: dict[str, Callable[[int, int], list[str]]] = {}
        for tree in [None, *(args.tree or [])]:
            qshd = stack.enter_context(PrivateQshd(tree=tree.resolve()) if tree
                                       else PrivateQshd())
            # From the daemon's tree: ``-m`` puts the working directory first on the path.
            cli = ["env", "-C", str(qshd.tree), f"PYTHONPATH={qshd.tree}", *qshd.cli(None)]

            def qsh_command(lport: int, port: int, cli: list[str] = cli) -> list[str]:
                return [*cli[:-1], "-N", "-T", f"{lport}:{HOST}:{port}", cli[-1]]

            tunnels["qsh -T" + (f" ({tree})" if tree else "")] = qsh_command
        for prefix in [None, *(args.openssh or [])]:
            why = openssh.available(prefix)
            if why is not None:
                print(f"(no OpenSSH baseline {prefix or ''}: {why})")
                continue
            sshd = stack.enter_context(openssh.PrivateSshd(prefix=prefix))
            base = sshd.command(None, openssh.CIPHERS["aes256gcm"])

            def ssh_command(lport: int, port: int, base: list[str] = base) -> list[str]:
                return [*base[:-1], "-N", "-L", f"{lport}:{HOST}:{port}", base[-1]]

            major, minor = sshd.release()
            tunnels[f"ssh -L (OpenSSH {major}.{minor})"] = ssh_command
        results = measure(tunnels, args)
    print(f"{args.bytes // MiB} MiB each way, {args.connections} connections, "
          f"{args.rounds} interleaved rounds; medians; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'':34} {'upload MB/s':>12} {'download MB/s':>14} {'conn/s':>9}")
    keys = ("upload", "download", "connections")

    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    medians = {name: {k: median(r[k]) for k in keys} for name, r in results.items()}
    for name, r in medians.items():
        print(f"{name:34} {r['upload']:12.0f} {r['download']:14.0f} {r['connections']:9.0f}")
    for qname, q in medians.items():
        if not qname.startswith("qsh"):
            continue
        for name, o in medians.items():
            if name.startswith("ssh"):
                label = f"ratio {qname} / {name[8:-1]}"
                print(f"{label[:44]:44} {q['upload'] / o['upload']:12.2f} "
                      f"{q['download'] / o['download']:14.2f} "
                      f"{q['connections'] / o['connections']:9.2f}")
    print("each round:")
    for name, r in results.items():
        for k in keys:
            if r[k]:
                print(f"  {name:32} {k:12} {' '.join(f'{v:.0f}' for v in r[k])}")


if __name__ == "__main__":
    main()
