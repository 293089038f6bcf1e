#!/usr/bin/env python3
"""Tunnels: ``qsh -N -T`` against ``ssh -N -L`` in the same run (issue 10).

    python bench/tunnel.py                 # 1 GiB each way, 1000 connections, 3 rounds
    python bench/tunnel.py --quick         # 256 MiB, 300 connections, 1 round
    python bench/tunnel.py --bytes N --connections K --rounds R

Both clients are the real command-line programs, each against its own private daemon on
127.0.0.1 (:class:`bench.sessions.PrivateQshd`, :class:`bench.openssh.PrivateSshd`; key
login; ssh with ``-c aes256-gcm@openssh.com``, qsh's default suite is AES-256-GCM too). The
tunnel's far end is a server in this process on 127.0.0.1; the near end a client in this
process. Printed, for each, with the ratio qsh/ssh (above 1: qsh is faster):

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
import socket
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


def measure(make: Callable[[int, int], list[str]], args: argparse.Namespace
            ) -> dict[str, float]:
    """Best of ``rounds`` for each measurement through one tunnel command."""
    results: dict[str, list[float]] = {"upload": [], "download": [], "connections": []}
    for mode, key in (("sink", "upload"), ("source", "download"), ("echo", "connections")):
        far = FarEnd(mode, args.bytes)
        lport = free_port()
        try:
            with tunnel(make(lport, far.port)):
                wait_ready(lport)
                for _ in range(args.rounds):
                    if key == "upload":
                        results[key].append(upload(lport, args.bytes))
                    elif key == "download":
                        results[key].append(download(lport, args.bytes))
                    else:
                        results[key].append(connections(lport, args.connections))
        finally:
            far.close()
    return {k: max(v) for k, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes", type=int, default=1024 * MiB)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.bytes, args.connections, args.rounds = 256 * MiB, 300, 1
    why = openssh.available()
    with contextlib.ExitStack() as stack:
        qshd = stack.enter_context(PrivateQshd())
        cli = qshd.cli(None)

        def qsh_command(lport: int, port: int) -> list[str]:
            return [*cli[:-1], "-N", "-T", f"{lport}:{HOST}:{port}", cli[-1]]

        rows = {"qsh -T": measure(qsh_command, args)}
        if why is None:
            sshd = stack.enter_context(openssh.PrivateSshd())
            base = sshd.command(None, openssh.CIPHERS["aes256gcm"])

            def ssh_command(lport: int, port: int) -> list[str]:
                return [*base[:-1], "-N", "-L", f"{lport}:{HOST}:{port}", base[-1]]

            rows[f"ssh -L ({sshd.version.split(',')[0]})"] = measure(ssh_command, args)
        else:
            print(f"(no OpenSSH baseline: {why})")
    print(f"{args.bytes // MiB} MiB each way, {args.connections} connections, best of "
          f"{args.rounds}")
    print(f"{'':28} {'upload MB/s':>12} {'download MB/s':>14} {'conn/s':>9}")
    for name, r in rows.items():
        print(f"{name:28} {r['upload']:12.0f} {r['download']:14.0f} {r['connections']:9.0f}")
    if len(rows) == 2:
        q, s = rows.values()
        print(f"{'ratio qsh/ssh':28} {q['upload'] / s['upload']:12.2f} "
              f"{q['download'] / s['download']:14.2f} {q['connections'] / s['connections']:9.2f}")


if __name__ == "__main__":
    main()
