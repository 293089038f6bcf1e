#!/usr/bin/env python3
"""Where a short tunnelled connection spends its CPU: cProfile of ``qsh -N -T`` and of
qshd's user process while ``bench/tunnel.py``'s connections/s part runs (issue 10).

    python bench/tunnel_profile.py                  # 2000 connections, top 25 of each
    python bench/tunnel_profile.py --connections N --top K --sort tottime|cumulative
    python bench/tunnel_profile.py --no-profile --tree ../main   # CPU only, another checkout
    python bench/tunnel_profile.py --timeline 30    # one connection's hops, qsh and ssh -L

``--timeline N``: ``N`` connections 20 ms apart through ``qsh -N -T`` and through
``ssh -N -L`` (Debian's, or ``--openssh PREFIX``), the client and the server side's
processes under ``strace -f --seccomp-bpf -ttt`` (only the calls shown stop); printed for
each, in order, the median time (after the bench's ``connect``) of each system call that
moves a connection (accept, connect, reads, writes, shutdown, close): which process wakes
for what, and how long each hop takes. strace slows each of those calls (tens of
microseconds), and a process idle for 20 ms runs its first hop slower than a busy one, so
read the hops and their order, not the total; the connections are spaced, so the previous
one's closing exchange is not in the way of the next (in bench/tunnel.py's back-to-back
loop it is).

Both programs are the real ones, started through this script in ``--wrap`` mode, which
turns cProfile on around qsh's whole run (stats written on SIGTERM, as bench/tunnel.py
ends it) and around qshd's ``postauth.serve`` (the process that became the user; stats
written when the connection ends). Printed: per-connection CPU of each process (from
``/proc``, so the profiler's own cost is in it) and the top functions.

Benchmarks are never unit tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
#: cProfile's clock: wall time by default (cheap; fine on an idle machine); with
#: QSH_PROFILE_CPU=1 process CPU time (not inflated by waiting for a core on a busy machine,
#: but each reading is a system call, which inflates call-heavy code).
TIMER = time.process_time if os.environ.get("QSH_PROFILE_CPU") else time.perf_counter


def wrap(outdir: str, argv: list[str]) -> None:
    """Run ``python -m qsh|qshd ARGS`` (``argv``) with cProfile."""
    module = argv[argv.index("-m") + 1]
    args = argv[argv.index("-m") + 2:]
    if module == "qshd":
        import qshd.postauth as postauth
        from qshd import cli

        serve = postauth.serve

        def profiled(*a: object, **k: object) -> int:
            profile = cProfile.Profile(TIMER)
            profile.enable()
            try:
                return serve(*a, **k)  # type: ignore[arg-type]
            finally:
                profile.disable()
                profile.dump_stats(f"{outdir}/qshd-user.{os.getpid()}.prof")

        postauth.serve = profiled
        sys.argv = ["qshd", *args]
        cli.main()
        return
    import qsh.cli

    # qsh ends on SIGTERM through SystemExit (255, "killed by signal TERM").
    profile = cProfile.Profile(TIMER)
    profile.enable()
    try:
        qsh.cli.main(args)
    finally:
        profile.disable()
        profile.dump_stats(f"{outdir}/qsh.{os.getpid()}.prof")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


#: What the timeline shows: the calls that move a connection (not epoll, not timers).
TIMELINE_CALLS = ("accept", "accept4", "connect", "read", "recvfrom", "write", "sendto",
                  "sendmsg", "shutdown", "close")


def descendants(pid: int) -> list[int]:
    found = []
    for kid in children(pid):
        found += [kid, *descendants(kid)]
    return found


def timeline(kind: str, count: int, tree: Path, prefix: Path | None) -> None:
    """``count`` spaced connections through ``kind`` ("qsh" or "ssh"), traced; prints the
    median time of each hop (see the module's docstring)."""
    import re
    import signal
    import socket
    import statistics
    from collections import Counter, defaultdict

    from bench import openssh
    from bench.sessions import PrivateQshd
    from bench.tunnel import HOST, FarEnd, connections, free_port, wait_ready

    outdir = tempfile.mkdtemp(prefix="qsh-tunnel-timeline-")
    far = FarEnd("echo")
    lport = free_port()
    daemon: PrivateQshd | openssh.PrivateSshd = (
        PrivateQshd(tree=tree.resolve()) if kind == "qsh" else openssh.PrivateSshd(prefix=prefix))
    with daemon:
        if isinstance(daemon, PrivateQshd):
            cli = daemon.cli(None)
            command = [*cli[:-1], "-N", "-T", f"{lport}:{HOST}:{far.port}", cli[-1]]
            env, cwd = daemon.env, daemon.tree
        else:
            base = daemon.command(None, openssh.CIPHERS["aes256gcm"])
            command = [*base[:-1], "-N", "-L", f"{lport}:{HOST}:{far.port}", base[-1]]
            env, cwd = dict(os.environ), Path.cwd()
        client = subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        tracers = []
        try:
            wait_ready(lport)
            connections(lport, 20)
            assert daemon.process is not None
            sides = {"client": [client.pid], "server": descendants(daemon.process.pid)}
            for side, pids in sides.items():
                trace = ["strace", "-f", "--seccomp-bpf", "-ttt", "-o", f"{outdir}/{side}",
                         "-e", "trace=" + ",".join(TIMELINE_CALLS)]
                for pid in pids:
                    trace += ["-p", str(pid)]
                tracers.append(subprocess.Popen(trace, stderr=subprocess.DEVNULL))
            time.sleep(1.5)  # strace attached
            starts = []
            for _ in range(count):
                starts.append(time.time())
                with socket.create_connection((HOST, lport)) as s:
                    s.sendall(b"x" * 1024)
                    got = 0
                    while got < 1024:
                        got += len(s.recv(1024 - got))
                    starts.append(-time.time())  # (negative: the answer's arrival)
                time.sleep(0.02)
            time.sleep(0.2)
        finally:
            for tracer in tracers:
                tracer.send_signal(signal.SIGINT)
                tracer.wait(10)
            client.terminate()
            client.wait(10)
            far.close()
    events: list[tuple[float, str]] = [(t, "bench: connect") if t > 0 else (-t, "bench: answer")
                                       for t in starts]
    line_re = re.compile(r"(\d+) +([\d.]+) (\w+)\((\d*)")
    for side in ("client", "server"):
        for line in Path(f"{outdir}/{side}").read_text().splitlines():
            m = line_re.match(line)
            if m and "EAGAIN" not in line:
                events.append((float(m.group(2)), f"{side} {m.group(1)}: {m.group(3)}"))
    events.sort()
    offsets: defaultdict[str, list[float]] = defaultdict(list)
    t0 = 0.0
    seen: Counter[str] = Counter()
    for t, what in events:
        if what == "bench: connect":
            t0, seen = t, Counter()
        if not t0 or t - t0 > 0.02:
            continue
        seen[what] += 1
        offsets[f"{what} #{seen[what]}"].append((t - t0) * 1e6)
    print(f"{kind}: {count} spaced connections under strace; median microseconds after the "
          f"bench's connect (events seen in at least half of them)")
    for key in sorted(offsets, key=lambda k: statistics.median(offsets[k])):
        if len(offsets[key]) >= count / 2:
            print(f"  {statistics.median(offsets[key]):7.0f}  {key}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--no-profile", action="store_true",
                        help="only the CPU per connection, without cProfile")
    parser.add_argument("--tree", type=Path, default=HERE.parents[1],
                        help="run qsh and qshd from this checkout (for a before and after)")
    parser.add_argument("--timeline", type=int, default=0, metavar="N",
                        help="trace N spaced connections through qsh -T and ssh -L and print "
                        "each hop's median time")
    parser.add_argument("--openssh", type=Path, default=None, metavar="PREFIX",
                        help="with --timeline: the OpenSSH installed at PREFIX")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parents[1]))
    if args.timeline:
        timeline("qsh", args.timeline, args.tree, None)
        timeline("ssh", args.timeline, args.tree, args.openssh)
        return

    from bench.sessions import PrivateQshd
    from bench.tunnel import HOST, FarEnd, connections, free_port, wait_ready

    outdir = tempfile.mkdtemp(prefix="qsh-tunnel-prof-")
    wrapper = [] if args.no_profile else [sys.executable, str(HERE), "--wrap", outdir]
    with PrivateQshd(tree=args.tree.resolve(), wrapper=wrapper or None) as qshd:
        far = FarEnd("echo")
        lport = free_port()
        cli = qshd.cli(None)
        command = [*cli[:-1], "-N", "-T", f"{lport}:{HOST}:{far.port}", cli[-1]]
        if wrapper:
            command = [*wrapper, *command]
        qsh = subprocess.Popen(command, env=qshd.env, cwd=qshd.tree, stdin=subprocess.DEVNULL)
        try:
            wait_ready(lport)
            time.sleep(0.5)
            assert qshd.process is not None
            # The user process: the newest descendant of the daemon (listener -> monitor
            # -> user process), found by walking down.
            user = qshd.process.pid
            for _ in range(6):
                kids = children(user)
                if not kids:
                    break
                user = max(kids)
            before = cpu_seconds(qsh.pid), cpu_seconds(user)
            rate = connections(lport, args.connections)
            after = cpu_seconds(qsh.pid), cpu_seconds(user)
        finally:
            qsh.terminate()
            qsh.wait(10)
            far.close()
        time.sleep(1)
    n = args.connections

    def per(i: int) -> str:
        user_s, sys_s = (after[i][k] - before[i][k] for k in (0, 1))
        return (f"{(user_s + sys_s) / n * 1e3:.2f} ms (user {user_s / n * 1e3:.2f}, "
                f"system {sys_s / n * 1e3:.2f})")

    print(f"{n} connections: {rate:.0f}/s; CPU per connection: qsh {per(0)}, qshd user "
          f"process {per(1)}" + ("" if args.no_profile else " (under cProfile)"))
    if args.no_profile:
        return
    for name in sorted(os.listdir(outdir)):
        print(f"\n===== {name} =====")
        stats = pstats.Stats(f"{outdir}/{name}")
        stats.sort_stats(args.sort).print_stats(args.top)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--wrap" and "qshd" in sys.argv:
        # PrivateQshd wants the daemon one process below the wrapper.
        sys.exit(subprocess.call([sys.executable, str(HERE), "--wrap-inner", *sys.argv[2:]]))
    elif len(sys.argv) > 2 and sys.argv[1] in ("--wrap", "--wrap-inner"):
        wrap(sys.argv[2], sys.argv[3:])
    else:
        main()
