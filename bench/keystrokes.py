#!/usr/bin/env python3
"""What a passive observer learns about typing in a qsh session (issue 12).

    python bench/keystrokes.py                 # obscured (default), chaff, and off
    python bench/keystrokes.py --bursts 4 --quick
    python bench/keystrokes.py --bulk 1024 --compare-tree /tmp/qsh-before

A private qshd (``bench.sessions.PrivateQshd``) on 127.0.0.1 and, between it and the real
``qsh`` CLI, a capturing proxy on 127.0.0.1 (a process of its own, apart from the typist): it
forwards bytes unchanged and notes the time, direction and size of every record (the 13-byte
outer header is in clear, so record boundaries are what an observer on the path sees; no root
and no tcpdump needed). The
client runs ``qsh -t host cat`` in a pseudo-terminal (the remote pty echoes each key),
typed by this script in bursts with human-like gaps (log-normal, median 150 ms) separated
by pauses.

Windows: "typing" is each burst from its first to its last key; "fake" is the second after
the last key (the shortest fake period is 1 s); "idle" is the middle of each pause (after any
fake period). For each pair it prints record rates and a two-sample Kolmogorov-Smirnov test
(statistic D and its asymptotic p-value, computed here) on inter-record times and record
sizes, per direction: p > 0.05 means the capture cannot tell the windows apart by that
statistic; the quantiles of the inter-record times show where two windows differ. Controls
compare windows of one kind with each other (even against odd bursts, even against odd
pauses): on a shared machine they fail now and then too, and tell the environment's share of a
failure from the session's. Also: each keystroke's echo latency as the user sees it (key
written to the client's terminal until its echo is read back), and idle bandwidth.

``--bulk MIB``: ``qsh host 'cat > /dev/null'`` of MIB MiB with this tree's qsh/qshd and, with
``--compare-tree``, another checkout's (alternating runs in one process: the before-and-after
with the same noise).

Benchmarks are never unit tests: nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import random
import select
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.sessions import HOST, PrivateQshd, make_data  # noqa: E402
from common.wire import HEADER_SIZE  # noqa: E402

# --------------------------------------------------------------------------- statistics


def ks_2samp(a: list[float], b: list[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov: (D, asymptotic p-value). D is the largest gap between
    the two empirical distribution functions; p uses the Kolmogorov distribution with
    Stephens' small-sample correction, p = 2 sum (-1)^(k-1) exp(-2 k^2 lambda^2)."""
    if not a or not b:
        return float("nan"), float("nan")
    xs, ys = sorted(a), sorted(b)
    n, m = len(xs), len(ys)
    i = j = 0
    d = 0.0
    while i < n and j < m:
        v = min(xs[i], ys[j])
        while i < n and xs[i] <= v:
            i += 1
        while j < m and ys[j] <= v:
            j += 1
        d = max(d, abs(i / n - j / m))
    en = math.sqrt(n * m / (n + m))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 1e-3:
        return d, 1.0
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, min(max(p, 0.0), 1.0)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


# --------------------------------------------------------------------------- the proxy


@dataclass
class Capture:
    #: (monotonic time, "c2s" | "s2c", record size on the wire)
    records: list[tuple[float, str, int]] = field(default_factory=list)


def _proxy(listener: socket.socket, target_port: int, out: Connection) -> None:
    """The proxy process: one thread, one select loop, a timestamp as each recv returns.
    Its own process, so the typist (this script's main thread) never holds a lock the proxy
    waits for: with the proxy as threads of the typing process, a typist preempted while
    holding the GIL made the capture's timestamps late during typing and only then."""
    client, _ = listener.accept()
    listener.close()
    upstream = socket.create_connection((HOST, target_port), timeout=30)
    upstream.settimeout(None)
    for s in (client, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    records: list[tuple[float, str, int]] = []
    pipes = {client: (upstream, "c2s", bytearray()), upstream: (client, "s2c", bytearray())}
    open_ends = set(pipes)
    deadline = time.monotonic() + 3600
    while open_ends and time.monotonic() < deadline:
        ready, _, _ = select.select(list(open_ends), [], [], 5.0)
        for src in ready:
            dst, direction, buf = pipes[src]
            try:
                data = src.recv(1 << 16)
            except OSError:
                data = b""
            now = time.monotonic()
            if not data:
                open_ends.discard(src)
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                continue
            with contextlib.suppress(OSError):
                dst.sendall(data)
            buf += data
            while len(buf) >= HEADER_SIZE:
                length = int.from_bytes(buf[9:13], "big")
                if len(buf) < HEADER_SIZE + length:
                    break
                records.append((now, direction, HEADER_SIZE + length))
                del buf[:HEADER_SIZE + length]
    out.send(records)
    out.close()


def start_proxy(target_port: int) -> tuple[int, Callable[[], Capture]]:
    """A one-connection forwarding proxy on 127.0.0.1 in a process of its own; returns its
    port and a function that waits for the connection's end and gives the capture."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    receiver, sender = multiprocessing.get_context("fork").Pipe(duplex=False)
    process = multiprocessing.get_context("fork").Process(
        target=_proxy, args=(listener, target_port, sender), daemon=True)
    process.start()
    listener.close()
    sender.close()

    def finish() -> Capture:
        cap = Capture()
        if receiver.poll(30):
            cap.records = receiver.recv()
        process.join(5)
        if process.is_alive():
            process.kill()
        return cap

    return port, finish


# --------------------------------------------------------------------------- a session


@dataclass
class Session:
    name: str
    cap: Capture
    bursts: list[tuple[float, float]]  # (first key, last key)
    pauses: list[tuple[float, float]]
    latencies: list[float]
    end: float


def _read_echo(fd: int, want: bytes, timeout: float = 5.0) -> float | None:
    got = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            got += os.read(fd, 4096)
            if want in got:
                return time.monotonic()
    return None


def run_session(qshd: PrivateQshd, name: str, options: list[str], bursts: int,
                pause: float, seed: int) -> Session:
    import ptyprocess  # type: ignore[import-untyped]

    port, finish = start_proxy(qshd.port)
    cli = qshd.cli("cat")
    i = cli.index("-p")
    cli[i + 1] = str(port)
    cli[i:i] = ["-t", *options]
    child = ptyprocess.PtyProcess.spawn(cli, cwd=str(ROOT), env=qshd.env)
    rng = random.Random(seed)
    try:
        child.write(b"ready\r")
        if _read_echo(child.fd, b"ready\r\nready", 30) is None:
            raise RuntimeError(f"no session: {qshd.log_tail()}")
        time.sleep(pause)
        spans, pauses, latencies = [], [], []
        for b in range(bursts):
            first = time.monotonic()
            last = first
            for k in range(rng.randint(15, 30)):
                ch = bytes([97 + (k % 26)])
                sent = time.monotonic()
                child.write(ch)
                echoed = _read_echo(child.fd, ch)
                if echoed is not None:
                    latencies.append(echoed - sent)
                last = sent
                gap = min(rng.lognormvariate(math.log(0.15), 0.5), 0.8)
                time.sleep(max(0.0, gap - (time.monotonic() - sent)))
            spans.append((first, last))
            start_pause = time.monotonic()
            time.sleep(pause + rng.uniform(0, 1.5))
            pauses.append((start_pause, time.monotonic()))
            child.write(b"\r")
            _read_echo(child.fd, b"\n", 5)
            time.sleep(0.05 if b < bursts - 1 else 0)
        end = time.monotonic()
        child.write(b"\x04")
    finally:
        time.sleep(0.3)
        if child.isalive():
            child.terminate(force=True)
        cap = finish()
    return Session(name, cap, spans, pauses, latencies, end)


def window(cap: Capture, start: float, end: float, direction: str
           ) -> tuple[list[float], list[int]]:
    recs = [(t, s) for t, d, s in cap.records if d == direction and start <= t < end]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(recs)]
    return gaps, [s for _, s in recs]


QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
QUANTILE_NAMES = "/".join(f"{q * 100:g}" for q in QUANTILES) + "%"


def compare(session: Session, label: str, a_spans: list[tuple[float, float]],
            b_spans: list[tuple[float, float]]) -> None:
    for direction in ("c2s", "s2c"):
        ga, sa, gb, sb = [], [], [], []
        dur_a = dur_b = 0.0
        for s, e in a_spans:
            g, z = window(session.cap, s, e, direction)
            ga += g
            sa += z
            dur_a += e - s
        for s, e in b_spans:
            g, z = window(session.cap, s, e, direction)
            gb += g
            sb += z
            dur_b += e - s
        dg, pg = ks_2samp(ga, gb)
        ds, ps = ks_2samp([float(x) for x in sa], [float(x) for x in sb])
        rate_a = len(sa) / dur_a if dur_a else float("nan")
        rate_b = len(sb) / dur_b if dur_b else float("nan")
        sizes_a = sorted(set(sa))[:6]
        sizes_b = sorted(set(sb))[:6]
        print(f"  {label:26} {direction}: records {len(sa):4} vs {len(sb):4}, "
              f"rate {rate_a:6.1f} vs {rate_b:6.1f}/s; "
              f"inter-record median {pct(ga, .5) * 1000:6.1f} vs {pct(gb, .5) * 1000:6.1f} ms "
              f"KS D={dg:.3f} p={pg:.3f}; sizes {sizes_a} vs {sizes_b} KS D={ds:.3f} p={ps:.3f}")
        # Where the distributions differ, if they do: the quantiles side by side.
        qa = " ".join(f"{pct(ga, q) * 1000:5.2f}" for q in QUANTILES)
        qb = " ".join(f"{pct(gb, q) * 1000:5.2f}" for q in QUANTILES)
        print(f"  {'':26} {direction}: inter-record ms at {QUANTILE_NAMES}: {qa} vs {qb}")


def report(session: Session) -> None:
    print(f"\n== {session.name}")
    lat = session.latencies
    print(f"  echo latency seen by the user: median {pct(lat, .5) * 1000:.1f} ms, "
          f"p99 {pct(lat, .99) * 1000:.1f} ms (n={len(lat)})")
    typing = [(s, e) for s, e in session.bursts if e > s]
    fakes = [(e + 0.01, e + 0.99) for _, e in session.bursts]
    # The middle of each pause: after the longest fake period (3 s) when the pause allows.
    idle = [(s + 3.2, e - 0.2) for s, e in session.pauses if e - s > 4.0]
    compare(session, "typing vs fake-tail", typing, fakes)
    compare(session, "typing vs idle", typing, idle)
    # Controls: windows of one kind against each other. What the machine's other load does
    # to the ticks over a session (a few ms of run-queue wait for some of them, more in one
    # window than another) fails these as often as it fails the comparisons above.
    compare(session, "control: typing even/odd", typing[0::2], typing[1::2])
    if any(window(session.cap, s, e, "c2s")[1] for s, e in idle):
        compare(session, "control: idle even/odd", idle[0::2], idle[1::2])
    for direction in ("c2s", "s2c"):
        total = sum(sum(window(session.cap, s, e, direction)[1]) for s, e in idle)
        seconds = sum(e - s for s, e in idle)
        print(f"  idle bandwidth {direction}: {total / seconds if seconds else 0:8.0f} B/s "
              f"over {seconds:.1f} s")


def dump(session: Session, directory: Path) -> None:
    """The raw capture (for analysis beyond the summary: quantiles, tick phases)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{session.name}-{time.strftime('%H%M%S')}.json"
    path.write_text(json.dumps({
        "name": session.name, "records": session.cap.records, "bursts": session.bursts,
        "pauses": session.pauses, "latencies": session.latencies, "end": session.end,
        "loadavg": os.getloadavg()}))
    print(f"  capture written to {path}")


# --------------------------------------------------------------------------- bulk


def bulk(trees: list[Path], mib: int, runs: int) -> None:
    data = make_data(mib << 20)
    try:
        qshds = [PrivateQshd(tree=t) for t in trees]
        for q in qshds:
            q.__enter__()
        try:
            times: dict[Path, list[float]] = {t: [] for t in trees}
            for _ in range(runs):
                for q in qshds:
                    with data.open("rb") as stdin:
                        start = time.perf_counter()
                        done = subprocess.run(q.cli("cat > /dev/null"), cwd=q.tree, env=q.env,
                                              stdin=stdin, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.PIPE, timeout=900)
                        seconds = time.perf_counter() - start
                    if done.returncode:
                        raise RuntimeError(done.stderr.decode(errors="replace")[-300:])
                    times[q.tree].append(seconds)
            print(f"\n== {mib} MiB through `qsh host 'cat > /dev/null'` ({runs} runs each, "
                  "alternating)")
            for tree, values in times.items():
                print(f"  {tree!s:40} median {statistics.median(values):6.2f} s "
                      f"({mib / statistics.median(values):6.1f} MiB/s) runs "
                      + " ".join(f"{v:.2f}" for v in values))
        finally:
            for q in qshds:
                q.close()
    finally:
        data.unlink()
        data.parent.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bursts", type=int, default=6)
    parser.add_argument("--pause", type=float, default=6.0)
    parser.add_argument("--quick", action="store_true", help="3 bursts, shorter pauses")
    parser.add_argument("--modes", default="default,chaff,off")
    parser.add_argument("--bulk", type=int, default=0, metavar="MIB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compare-tree", type=Path, action="append", default=[])
    parser.add_argument("--dump", type=Path, metavar="DIR",
                        help="also write each session's capture and windows as JSON here")
    parser.add_argument("--nice", type=int, default=0, metavar="N",
                        help="run the sessions (proxy, qsh, qshd) at this niceness; negative "
                             "(root) keeps the machine's other load out of the measurement")
    args = parser.parse_args()
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    if args.quick:
        args.bursts, args.pause = 3, 4.5
    modes = {"default": [], "chaff": ["-o", "Chaff=yes"],
             "chaff-alive": ["-o", "Chaff=yes", "-o", "ServerAliveInterval=1"],
             "off": ["-o", "ObscureKeystrokeTiming=no"]}
    wanted = [m for m in args.modes.split(",") if m]
    if wanted:
        with PrivateQshd() as qshd:
            for n, mode in enumerate(wanted):
                session = run_session(qshd, mode, modes[mode], args.bursts, args.pause, 12 + n)
                report(session)
                if args.dump:
                    dump(session, args.dump)
    if args.bulk:
        bulk([ROOT, *args.compare_tree], args.bulk, args.runs)


if __name__ == "__main__":
    main()
