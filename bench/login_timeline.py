#!/usr/bin/env python3
"""Where a ``qsh host true`` spends its time on the server side: qshd under strace.

    python bench/login_timeline.py                       # 10 runs, this checkout
    python bench/login_timeline.py --compare-tree DIR    # and another (e.g. before a change)
    python bench/login_timeline.py --wall 15 --compare-tree DIR   # wall time, no strace

qshd runs under ``strace -f --seccomp-bpf -ttt -yy`` tracing only the process calls (fork,
exec, wait, exit, set*uid) and the reads and writes: seccomp keeps every other system call
untraced, so the page faults and the Python work, where the time goes, run at full speed;
each traced call costs some tens of microseconds. The real ``qsh host true`` client runs
``--runs`` times, one after the other; each connection's events (from the listener's
``accept`` to its reaping the connection's process) are put on one time line, relative to
the ``accept``, and the median of each milestone over the runs is printed, with the time
between consecutive milestones. Milestones a process model does not have (a single-process
qshd forks no monitor) are left out.

``--wall N`` measures instead, without strace, what a user sees of the server: the wall
time of one client, this checkout's ``qsh`` installed by pip in a throwaway venv (as
``bench/startup.py`` installs it), running ``host true`` against qshd from this checkout and
from each ``--compare-tree``, beside ``ssh host true`` against a private sshd of OpenSSH
10.5 (``--openssh-prefix``) and of the system's OpenSSH; N interleaved runs of each (so load
changes hit all alike), medians, each as a ratio to OpenSSH 10.5's, and the difference
between this checkout's qshd and each other one paired by round (the median and the middle
half of the per-round differences: on a shared machine the load drifts between rounds far
more than within one), and each qshd's own CPU per login (every process of the connection,
from the kernel's accounting as the listener reaps them). The client is the same for every
qshd: what differs is the server's part.

A benchmark's helper, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.sessions import PrivateQshd, TrueRuns, _timed, cli_ready  # noqa: E402

TRACED = ("accept4,clone,clone3,fork,vfork,execve,setresuid,wait4,read,readv,recvfrom,"
          "recvmsg,write,writev,sendto,sendmsg")
READS = {"read", "readv", "recvfrom", "recvmsg"}
WRITES = {"write", "writev", "sendto", "sendmsg"}
_LINE = re.compile(r"^(\d+)\s+(\d+\.\d+) (.*)$")
_CALL = re.compile(r"^(\w+)\((.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_RETURN = re.compile(r"= (-?\d+)")


@dataclass
class Process:
    pid: int
    parent: int | None = None
    forked: float | None = None  # when the parent's fork returned
    children: list[int] = field(default_factory=list)
    first_setresuid: float | None = None
    execve: float | None = None
    exited: float | None = None
    reaped: float | None = None  # when the parent's wait returned it
    reads: list[float] = field(default_factory=list)  # on the client's TCP socket
    writes: list[float] = field(default_factory=list)


@dataclass
class Trace:
    processes: dict[int, Process] = field(default_factory=dict)
    accepts: list[tuple[int, float]] = field(default_factory=list)  # (listener pid, time)

    def process(self, pid: int) -> Process:
        return self.processes.setdefault(pid, Process(pid))


def parse(path: Path) -> Trace:
    """strace -f -ttt -yy output: one event per finished call (a call split into
    ``unfinished``/``resumed`` counts when it returns)."""
    trace = Trace()
    pending: dict[int, str] = {}
    owner: dict[int, int] = {}  # thread id -> its process (strace -f prints thread ids)
    for raw in path.read_text(errors="replace").splitlines():
        match = _LINE.match(raw)
        if match is None:
            continue
        tid, when, rest = int(match.group(1)), float(match.group(2)), match.group(3)
        pid = owner.get(tid, tid)
        if rest.startswith("+++ exited") or rest.startswith("+++ killed"):
            if tid == pid:
                trace.process(pid).exited = when
            continue
        resumed = _RESUMED.match(rest)
        if resumed is not None:
            rest = resumed.group(1) + "(" + pending.pop(tid, "") + resumed.group(2)
        elif rest.endswith("<unfinished ...>"):
            call = _CALL.match(rest)
            if call is not None:
                pending[tid] = call.group(2).removesuffix("<unfinished ...>")
            continue
        call = _CALL.match(rest)
        if call is None:
            continue
        name, args = call.group(1), call.group(2)
        returned = _RETURN.search(args.rsplit(")", 1)[-1] if ")" in args else args)
        value = int(returned.group(1)) if returned else -1
        me = trace.process(pid)
        if name == "accept4" and value >= 0:
            trace.accepts.append((pid, when))
        elif name in ("clone", "clone3") and value > 0 and "CLONE_THREAD" in args:
            owner[value] = pid
        elif name in ("clone", "clone3", "fork", "vfork") and value > 0:
            child = trace.process(value)
            child.parent, child.forked = pid, when
            me.children.append(value)
        elif name == "execve" and me.execve is None:
            me.execve = when
        elif name == "setresuid" and me.first_setresuid is None:
            me.first_setresuid = when
        elif name == "wait4" and value > 0:
            trace.process(value).reaped = when
        elif name in READS and "TCP:" in args.split(",", 1)[0] and value > 0:
            me.reads.append(when)
        elif name in WRITES and "TCP:" in args.split(",", 1)[0] and value > 0:
            me.writes.append(when)
    return trace


def _tree(trace: Trace, pid: int) -> list[Process]:
    found, todo = [], [pid]
    while todo:
        process = trace.process(todo.pop())
        found.append(process)
        todo.extend(process.children)
    return found


def milestones(trace: Trace, listener: int) -> list[dict[str, float]]:
    """One dict per connection: milestone -> seconds after the listener's accept."""
    accepts = [t for pid, t in trace.accepts if pid == listener]
    runs = []
    for number, accepted in enumerate(accepts):
        until = accepts[number + 1] if number + 1 < len(accepts) else float("inf")
        marks: dict[str, float] = {}
        forked = [trace.process(c) for c in trace.process(listener).children
                  if accepted <= (trace.process(c).forked or 0) < until]
        # The connection's process forks the others (a single-process qshd forks only
        # short-lived helpers and shells, which fork nothing).
        monitor = next((p for p in forked if p.execve is None and p.children), None)
        if monitor is not None:  # a process per connection
            marks["connection's process forked (monitor)"] = monitor.forked or accepted
            kids = [trace.process(c) for c in monitor.children]
            # In fork order: the pre-auth process first (the client's first byte waits for
            # it), then the standby that becomes the user's process.
            preauth, standby = [*kids, None, None][:2]
            if preauth is not None and preauth.forked is not None:
                marks["pre-auth process forked"] = preauth.forked
                if preauth.first_setresuid is not None:
                    marks["pre-auth sandboxed (setresuid)"] = preauth.first_setresuid
                if preauth.reads:
                    marks["pre-auth: first read from the client"] = preauth.reads[0]
                if preauth.writes:
                    marks["pre-auth: last write to the client"] = preauth.writes[-1]
                if preauth.exited is not None:
                    marks["pre-auth exited"] = preauth.exited
                if preauth.reaped is not None:
                    marks["pre-auth reaped by the monitor"] = preauth.reaped
            if standby is not None and standby.forked is not None:
                marks["standby (the user's process) forked"] = standby.forked
            if standby is not None and standby.first_setresuid is not None:
                marks["user's process: becomes the user (setresuid)"] = standby.first_setresuid
            if standby is not None and standby.reads:
                marks["user's process: first read from the client"] = standby.reads[0]
            server = _tree(trace, monitor.pid)
            ended = monitor.reaped
        else:  # one process serves every connection
            server = [trace.process(listener)]
            reads = [t for t in trace.process(listener).reads if accepted <= t < until]
            if reads:
                marks["first read from the client"] = reads[0]
            server += [p for p in forked]
            ended = None
        shells = [p for p in server if p.execve is not None and accepted <= p.execve < until]
        if shells:
            shell = min(shells, key=lambda p: p.execve or 0)
            if shell.forked is not None:
                marks["shell forked"] = shell.forked
            marks["shell exec'd"] = shell.execve or 0
            if shell.exited is not None:
                marks["shell exited"] = shell.exited
        writes = [t for p in server for t in p.writes if accepted <= t < until]
        if writes:
            marks["last write to the client"] = max(writes)
        if ended is not None:
            marks["connection's processes ended, reaped by the listener"] = ended
        runs.append({name: t - accepted for name, t in marks.items()})
    return runs


def report(label: str, runs: list[dict[str, float]], walls: list[float]) -> None:
    print(f"{label}: {len(runs)} connections; `qsh host true` (client wall time, under "
          f"strace) median {1000 * statistics.median(walls):.0f} ms")
    names: list[str] = []
    for run in runs:
        for name in sorted(run, key=run.__getitem__):
            if name not in names:
                names.append(name)
    medians = {n: statistics.median(r[n] for r in runs if n in r) for n in names}
    previous = 0.0
    print(f"    {'milestone (median ms after the accept)':58} {'at':>8} {'step':>8}")
    for name in sorted(names, key=medians.__getitem__):
        at = 1000 * medians[name]
        print(f"    {name:58} {at:8.1f} {at - previous:+8.1f}")
        previous = at


def timeline(tree: Path, runs: int, keep: Path | None = None
             ) -> tuple[list[dict[str, float]], list[float]]:
    out = Path(tempfile.mkdtemp(prefix="qsh-bench-strace-"))
    try:
        wrapper = ["strace", "-f", "--seccomp-bpf", "-ttt", "-yy", "-q", "-s", "0",
                   "-e", f"trace={TRACED}", "-e", "signal=none", "-o", str(out / "trace")]
        with PrivateQshd(tree, wrapper) as qshd:
            problem = cli_ready(qshd) if tree == ROOT else None
            if problem is not None:
                raise RuntimeError(problem)
            warm = TrueRuns()
            for _ in range(2):
                _timed(qshd.cli("true"), qshd, warm, qshd.env, qshd.tree)
            time.sleep(0.2)
            skip = len([1 for pid, _ in parse(out / "trace").accepts if pid == qshd.pid])
            timed = TrueRuns()
            for _ in range(runs):
                _timed(qshd.cli("true"), qshd, timed, qshd.env, qshd.tree)
            listener = qshd.pid
        trace = parse(out / "trace")
        connections = milestones(trace, listener)[skip:]
        if keep is not None:
            shutil.copy(out / "trace", keep)
        return connections, timed.wall.values
    finally:
        shutil.rmtree(out, ignore_errors=True)


def wall_times(trees: list[Path], runs: int, openssh_prefix: Path) -> None:
    """``--wall``: see the module docstring."""
    import os

    from bench import openssh
    from bench.sessions import SSHD_EXTRA_CONFIG, _short
    from bench.startup import Samples, installed, run_once, ssh_command, table

    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with contextlib.ExitStack() as stack:
        qshds = [stack.enter_context(PrivateQshd(tree)) for tree in trees]
        sshds = [stack.enter_context(openssh.PrivateSshd(SSHD_EXTRA_CONFIG))]
        if openssh.available(openssh_prefix) is None:
            sshds.append(stack.enter_context(
                openssh.PrivateSshd(SSHD_EXTRA_CONFIG, openssh_prefix)))
        bin_dir = stack.enter_context(installed(ROOT, False))
        env = {k: v for k, v in os.environ.items() if k not in (
            "PYTHONPATH", "PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")}
        data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qsh-bench-")))
        os.chdir(data)  # not a tree: the installed client must not import from one
        commands: dict[str, tuple[list[str], dict[str, str] | None]] = {}
        for qshd in qshds:
            name = "this checkout" if qshd.tree == ROOT else str(qshd.tree)
            command = [str(bin_dir / "qsh"), *qshd.cli("true")[3:]]
            run_once(command, env)  # records the host key
            commands[f"qsh host true, qshd of {name}"] = (command, env)
        for sshd in sshds:
            commands[f"{_short(sshd)} host true"] = (
                ssh_command(sshd, "true", data / "ssh_known_hosts"), None)
        servers = dict(zip(list(commands)[:len(qshds)], qshds, strict=True))
        results = {name: Samples() for name in commands}
        server_cpu: dict[str, list[float]] = {name: [] for name in servers}
        for round_number in range(runs + 1):  # round 0 warms the page cache
            for name, (command, run_env) in commands.items():
                qshd = servers.get(name)
                if qshd is not None:
                    qshd.wait_reaped()
                    before = qshd.server_cpu()
                cpu, wall, rss = run_once(command, run_env)
                if qshd is not None:
                    qshd.wait_reaped()
                    if round_number:
                        server_cpu[name].append(qshd.server_cpu() - before)
                if round_number:
                    results[name].add(cpu, wall, rss)
        print(f"{runs} interleaved runs of each, medians; CPU is the client's")
        table(results, f"{_short(sshds[-1])} host true")
        for name, values in server_cpu.items():
            # The mean: the kernel counts a process's CPU time in clock ticks.
            print(f"qshd CPU per login, {name.split(' of ')[-1]}: "
                  f"{1000 * statistics.mean(values):.1f} ms (mean of {len(values)})")
        names = list(commands)
        for other in names[1:len(qshds)]:
            # Paired by round: the load drifts between rounds far more than within one.
            pairs = sorted(1000 * (a - b) for a, b in zip(
                results[names[0]].wall, results[other].wall, strict=True))
            quarter = len(pairs) // 4
            print(f"this checkout's qshd minus {other.split(' of ')[-1]}'s, paired by round: "
                  f"median {statistics.median(pairs):+.1f} ms (middle half "
                  f"{pairs[quarter]:+.1f} .. {pairs[-1 - quarter]:+.1f})")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="`qsh host true` runs (10)")
    parser.add_argument("--compare-tree", action="append", type=Path, default=[],
                        metavar="DIR", help="also trace qshd from this checkout; repeatable")
    parser.add_argument("--keep", type=Path, metavar="PREFIX",
                        help="keep each strace output as PREFIX.N")
    parser.add_argument("--wall", type=int, metavar="N",
                        help="no strace: N interleaved wall-time runs beside OpenSSH")
    parser.add_argument("--openssh-prefix", type=Path, default=Path("/opt/openssh-10.5"))
    args = parser.parse_args()
    if args.wall:
        wall_times([ROOT, *(t.resolve() for t in args.compare_tree)], args.wall,
                   args.openssh_prefix)
        return
    if shutil.which("strace") is None:
        sys.exit("bench/login_timeline.py needs strace (apt-get install -y strace)")
    for number, tree in enumerate([ROOT, *(t.resolve() for t in args.compare_tree)]):
        with contextlib.suppress(KeyboardInterrupt):
            keep = Path(f"{args.keep}.{number}") if args.keep else None
            connections, walls = timeline(tree, args.runs, keep)
            name = "this checkout" if tree == ROOT else str(tree)
            report(f"qshd from {name}", connections, walls)
            print()


if __name__ == "__main__":
    main()
