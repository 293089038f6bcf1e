#!/usr/bin/env python3
"""Tunnels: ``qsh -N -T`` against ``ssh -N -L`` in the same run (issue 10).

    python bench/tunnel.py                 # 1 GiB each way, 1000 connections, 3 rounds
    python bench/tunnel.py --quick         # 256 MiB, 300 connections, 1 round
    python bench/tunnel.py --bytes N --connections K --rounds R
    python bench/tunnel.py --only connections --openssh /opt/openssh-10.5 --rounds 5
    python bench/tunnel.py --only connections --tree ../before   # and another checkout
    python bench/tunnel.py --only connections --floor --openssh /opt/openssh-10.5 --rounds 5

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

``--floor`` adds the least tunnels Python can be (:mod:`bench.tunnel_floor`: two asyncio
relays over one TCP connection, plain and AES-256-GCM sealed, and one process piping
straight to the far end) to the same rounds, their ratios to ssh -L, and each tunnel's
CPU per connection (``--cpu`` alone prints that too): the client side is the processes
started for it (``ssh``, ``qsh``, the local relay), the server side every process below
its daemon (sshd's listener and session processes, qshd's) or the remote relay; from
``/proc`` around each connections round, so start-up and login are not in it.

Benchmarks are never unit tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
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
from bench.tunnel_profile import cpu_seconds, descendants

HOST = "127.0.0.1"
MiB = 1024 * 1024
BLOCK = bytes(range(256)) * 4096  # 1 MiB
FLOOR = str(Path(__file__).resolve().parent / "tunnel_floor.py")
#: A tunnel: the commands that make it, in start order; the last is the client, which
#: listens on the local port; any before it are server side (a relay of our own).
Commands = list[list[str]]


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
def tunnel(commands: Commands) -> Iterator[list[int]]:
    """The tunnel's processes, started in order and stopped in reverse (the client first);
    yields their pids."""
    with contextlib.ExitStack() as stack:
        pids = []
        for command in commands:
            pids.append(stack.enter_context(process(command)))
        yield pids


@contextlib.contextmanager
def process(command: list[str]) -> Iterator[int]:
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        yield child.pid
    finally:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


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


def process_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of ``pids`` and every process below them, those alive."""
    total = 0.0
    for pid in {*pids, *(kid for top in pids for kid in descendants(top))}:
        with contextlib.suppress(OSError, IndexError):
            total += sum(cpu_seconds(pid))
    return total


def measure(tunnels: dict[str, Callable[[int, int], Commands]], args: argparse.Namespace,
            daemons: dict[str, int] | None = None) -> dict[str, dict[str, list[float]]]:
    """Every measurement through every tunnel command, the rounds interleaved (round 1 of
    each tunnel, then round 2 of each ...), so a change in the machine's load hits all of
    them alike. Each tunnel's client is started once per measurement kind and kept for its
    rounds. ``daemons``: tunnel name -> pid of its daemon, whose descendants are that
    tunnel's server side; with ``--cpu`` (or ``--floor``) the CPU per connection of either
    side is in the results as "client ms" and "server ms" (one value: all rounds)."""
    daemons = daemons or {}
    track = args.cpu or args.floor
    results: dict[str, dict[str, list[float]]] = {
        name: {"upload": [], "download": [], "connections": [], "client ms": [],
               "server ms": []} for name in tunnels}
    kinds = (("sink", "upload"), ("source", "download"), ("echo", "connections"))
    for mode, key in kinds:
        if key not in args.only:
            continue
        far = FarEnd(mode, args.bytes)
        try:
            with contextlib.ExitStack() as stack:
                ports: dict[str, int] = {}
                sides: dict[str, tuple[list[int], list[int]]] = {}
                for name, make in tunnels.items():
                    lport = free_port()
                    pids = stack.enter_context(tunnel(make(lport, far.port)))
                    ports[name] = lport
                    sides[name] = pids[-1:], pids[:-1] + ([daemons[name]] if name in daemons
                                                          else [])
                for lport in ports.values():
                    wait_ready(lport)
                cpu = {name: [0.0, 0.0] for name in tunnels}
                for _ in range(args.rounds):
                    for name, lport in ports.items():
                        if key == "upload":
                            value = upload(lport, args.bytes)
                        elif key == "download":
                            value = download(lport, args.bytes)
                        elif not track:
                            value = connections(lport, args.connections)
                        else:
                            before = [process_cpu(side) for side in sides[name]]
                            value = connections(lport, args.connections)
                            for i, side in enumerate(sides[name]):
                                cpu[name][i] += process_cpu(side) - before[i]
                        results[name][key].append(value)
                if key == "connections" and track:
                    count = args.rounds * args.connections
                    for name, (client, server) in cpu.items():
                        results[name]["client ms"].append(client / count * 1e3)
                        results[name]["server ms"].append(server / count * 1e3)
        finally:
            far.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes", type=int, default=1024 * MiB)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--floor", action="store_true",
                        help="also the least Python tunnels (bench/tunnel_floor.py): plain, "
                        "sealed, direct; implies --cpu")
    parser.add_argument("--cpu", action="store_true",
                        help="print each tunnel's CPU per connection (connections part)")
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
        tunnels: dict[str, Callable[[int, int], Commands]] = {}
        daemons: dict[str, int] = {}
        for tree in [None, *(args.tree or [])]:
            qshd = stack.enter_context(PrivateQshd(tree=tree.resolve()) if tree
                                       else PrivateQshd())
            # From the daemon's tree: ``-m`` puts the working directory first on the path.
            cli = ["env", "-C", str(qshd.tree), f"PYTHONPATH={qshd.tree}", *qshd.cli(None)]

            def qsh_command(lport: int, port: int, cli: list[str] = cli) -> Commands:
                return [[*cli[:-1], "-N", "-T", f"{lport}:{HOST}:{port}", cli[-1]]]

            name = "qsh -T" + (f" ({tree})" if tree else "")
            tunnels[name] = qsh_command
            assert qshd.process is not None
            daemons[name] = qshd.process.pid
        for prefix in [None, *(args.openssh or [])]:
            why = openssh.available(prefix)
            if why is not None:
                print(f"(no OpenSSH baseline {prefix or ''}: {why})")
                continue
            sshd = stack.enter_context(openssh.PrivateSshd(prefix=prefix))
            base = sshd.command(None, openssh.CIPHERS["aes256gcm"])

            def ssh_command(lport: int, port: int, base: list[str] = base) -> Commands:
                return [[*base[:-1], "-N", "-L", f"{lport}:{HOST}:{port}", base[-1]]]

            major, minor = sshd.release()
            tunnels[f"ssh -L (OpenSSH {major}.{minor})"] = ssh_command
            assert sshd.process is not None
            daemons[f"ssh -L (OpenSSH {major}.{minor})"] = sshd.process.pid
        if args.floor:
            tunnels.update(floors())
        results = measure(tunnels, args, daemons)
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
        if not qname.startswith(("qsh", "floor")):
            continue
        for name, o in medians.items():
            if name.startswith("ssh"):
                label = f"ratio {qname} / {name[8:-1]}"
                print(f"{label[:46]:46} {q['upload'] / o['upload']:12.2f} "
                      f"{q['download'] / o['download']:14.2f} "
                      f"{q['connections'] / o['connections']:9.2f}")
    if args.cpu or args.floor:
        print("CPU per connection (all connections rounds), ms: client side + server side")
        for name, rounds in results.items():
            if rounds["client ms"]:
                client, server = rounds["client ms"][0], rounds["server ms"][0]
                print(f"  {name:32} {client:6.3f} + {server:6.3f} = {client + server:6.3f}")
    print("each round:")
    for name, rounds in results.items():
        for k in keys:
            if rounds[k]:
                print(f"  {name:32} {k:12} {' '.join(f'{v:.0f}' for v in rounds[k])}")


def floors() -> dict[str, Callable[[int, int], Commands]]:
    """bench/tunnel_floor.py's tunnels, run by this Python (the sealed one needs
    ``cryptography``): a remote and a local relay (plain, sealed, and both over raw
    sockets instead of asyncio's transports), and the direct pipe."""
    key = secrets.token_hex(32)  # this run's, for the sealed relays

    def relays(seal: list[str]) -> Callable[[int, int], Commands]:
        def make(lport: int, port: int) -> Commands:
            rport = free_port()
            run = ["env", f"QSH_FLOOR_KEY={key}", sys.executable, FLOOR]
            return [[*run, "remote", str(rport), *seal],
                    [*run, "local", str(lport), str(rport), f"{HOST}:{port}", *seal]]
        return make

    def direct(lport: int, port: int) -> Commands:
        return [[sys.executable, FLOOR, "direct", str(lport), f"{HOST}:{port}"]]

    return {"floor: relays, plain": relays([]),
            "floor: relays, AES-GCM": relays(["--seal"]),
            "floor: relays, raw": relays(["--raw"]),
            "floor: raw, AES-GCM": relays(["--raw", "--seal"]),
            "floor: direct": direct}


if __name__ == "__main__":
    main()
