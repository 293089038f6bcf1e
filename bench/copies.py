#!/usr/bin/env python3
"""File copies: qcp/qshd against scp and ``ssh host 'cat > file'`` in the same run (issue 9).

    python bench/copies.py              # 1 GiB each way, 10,000 files of 1 KiB, 3 rounds
    python bench/copies.py --quick      # 256 MiB, 2,000 files, 1 round
    python bench/copies.py --openssh /opt/openssh-10.5 --profile
    python bench/copies.py --parts 1 --openssh system --openssh /opt/openssh-10.5

Every command is the real command-line program as a user types it, run as a subprocess:
``qcp`` against a private qshd (``bench/sessions.py``'s :class:`PrivateQshd`), ``scp`` and
``ssh`` against a private sshd (``bench/openssh.py``; ``Subsystem sftp internal-sftp`` added,
since scp speaks SFTP by default from OpenSSH 9.0 on). Key logins on both; loopback only;
both daemons stopped at the end. Data and destinations are in /dev/shm on both "hosts" (the
same machine), so the disk is out of the picture and what is measured is the tools.

1. one big file up (``qcp f host:d``, ``scp f host:d``, ``ssh host 'cat > d' < f``) and down
   (``qcp host:f d``, ``scp host:f d``, ``ssh host 'cat f' > d``): median wall time of the
   rounds, MB/s, the CPU of the client and of the server's processes (the machine is
   saturated during a copy, so the wall ratios follow the CPU of both ends), and the ratios
   (rate of qcp / rate of the other);
2. N files of 1 KiB in one directory, ``qcp -r`` against ``scp -r``, both directions;
3. ``--resume``: qcp is interrupted (SIGINT) once its partial file holds half of the big file,
   then run again with ``--resume -v``; "sent N bytes" from its report against the size;
4. the progress meter's cost: :meth:`TtyProgress.advance` per call, and redraws per second.

``--profile`` runs each kind of copy once more under cProfile and prints the top functions
of both ends: the client's process, and the server's side of the copy (a qshd of its own,
started with ``QCP_SERVE_PROFILE``, which makes the user's process profile each copy).
Every copy is checked (size and SHA-256 of the result) so that a fast wrong copy cannot win.

``--openssh`` given twice or more: part 1 runs the scp and ``ssh cat`` of every build listed,
each against its own private sshd, in the same interleaved rounds (the first build is the one
parts 2-5 use), so the ratios against each are taken under the same load.

``--floor`` adds to part 1's rounds the least a Python download can take here
(``bench/copy_floor.py``: one file read, sealed with AES-256-GCM, sent over one loopback TCP
connection, opened and written to a temporary file, fsynced, renamed; nothing else), in each
variant given (``--floor-variants``), and ``cp f d`` (no crypto, no network): each is checked
as every copy is, printed in the same table, with its ratio against each scp and qcp's time
against it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import pstats
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import openssh  # noqa: E402 - ROOT is on sys.path first
from bench.sessions import SSHD_EXTRA_CONFIG, PrivateQshd, Server  # noqa: E402

if typing.TYPE_CHECKING:
    from bench.copy_floor import FloorServer

HOST = "127.0.0.1"
#: One timed copy of part 1.
Step = Callable[[], object]
MiB = 1024 * 1024
GiB = 1024 * MiB


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _machine_cpu() -> float:
    """CPU seconds the whole machine spent busy so far (all processes, both ends of a copy
    and anything else running: read it against the load average)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    machine_cpu: list[float] = field(default_factory=list)
    #: The daemon's side of each copy (part 1): every process the connection ran on the
    #: server, counted as bench/sessions.py counts it (the listener's and what it reaped).
    server_cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def cpu(self) -> float:
        return statistics.median(self.client_cpu)

    @property
    def server(self) -> float | None:
        return statistics.median(self.server_cpu) if self.server_cpu else None

    @property
    def both(self) -> float | None:
        """Client and server CPU of one copy, median over the rounds: on a machine whose
        cores are all busy (as here) the wall time follows it."""
        if not self.server_cpu:
            return None
        return statistics.median(c + s for c, s in zip(self.client_cpu, self.server_cpu,
                                                        strict=True))

    @property
    def busy(self) -> float:
        """The machine's CPU seconds per wall second (2.0 = both cores busy), median."""
        return statistics.median(c / s for c, s in zip(self.machine_cpu, self.seconds,
                                                            strict=True))


def run_timed(command: list[str], into: Timing, *, env: dict[str, str] | None = None,
              cwd: Path = ROOT, stdin: Path | None = None, stdout: Path | None = None,
              server: Server | None = None) -> None:
    """Run one copy; with ``server``, also its daemon's CPU (read again once every process
    of the connection has been reaped, which is not timed)."""
    server0 = server.server_cpu() if server is not None else 0.0
    cpu0 = _children_cpu()
    machine0 = _machine_cpu()
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        fin = stack.enter_context(stdin.open("rb")) if stdin else subprocess.DEVNULL
        fout = stack.enter_context(stdout.open("wb")) if stdout else subprocess.DEVNULL
        done = subprocess.run(command, stdin=fin, stdout=fout, stderr=subprocess.PIPE,
                              env=env, cwd=cwd, timeout=1800)
    seconds = time.perf_counter() - start
    machine = _machine_cpu() - machine0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])}... exited {done.returncode}: "
                           f"{done.stderr.decode(errors='replace').strip()[-400:]}")
    into.seconds.append(seconds)
    into.client_cpu.append(_children_cpu() - cpu0)
    into.machine_cpu.append(machine)
    if server is not None:
        if not server.wait_reaped():
            raise RuntimeError("the daemon's processes for the copy did not end in time")
        into.server_cpu.append(server.server_cpu() - server0)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def make_file(path: Path, size: int) -> Path:
    block = os.urandom(4 * MiB)
    with path.open("wb") as f:
        left = size
        while left:
            f.write(block[:left])
            left -= min(left, len(block))
    return path


def make_tree(path: Path, count: int) -> Path:
    path.mkdir()
    for i in range(count):
        (path / f"f{i:05d}").write_bytes(os.urandom(1024))
    return path


def tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        digest.update(name.encode() + b"\0" + (path / name).read_bytes())
    return digest.hexdigest()


class Tools:
    """The command lines of the three tools against their private daemons."""

    def __init__(self, qshd: PrivateQshd, sshd: openssh.PrivateSshd,
                 baseline: PrivateQshd | None = None, others: list[Tools] | None = None,
                 floor: FloorServer | None = None, floor_variants: list[str] | None = None
                 ) -> None:
        self.qshd = qshd
        self.sshd = sshd
        #: Further OpenSSH builds (``--openssh`` twice or more): part 1 runs theirs too.
        self.others = others or []
        #: ``--compare``: qcp and qshd of another checkout, run in the same rounds.
        self.baseline = baseline
        #: ``--floor``: bench/copy_floor.py's server, and the variants its client runs.
        self.floor = floor
        self.floor_variants = floor_variants or []
        prefix = sshd.prefix
        self.scp_bin = str(prefix / "scp") if prefix else (shutil.which("scp") or "scp")

    def qcp(self, *args: str, quiet: bool = True, q: PrivateQshd | None = None) -> list[str]:
        q = q or self.qshd
        return [sys.executable, "-m", "qcp", "-F", "none", "-P", str(q.port),
                "-i", str(q.user_key_path), "-o", "StrictHostKeyChecking=accept-new",
                "-o", f"UserKnownHostsFile={q.known_hosts}", *(["-q"] if quiet else []),
                *args]

    def qremote(self, path: Path) -> str:
        return f"{self.qshd.user}@{HOST}:{path}"

    def _ssh_options(self) -> list[str]:
        s = self.sshd
        return ["-F", "/dev/null", "-i", str(s._user_key),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"]

    def scp(self, *args: str) -> list[str]:
        extra = ["-S", self.sshd.bin["ssh"]] if self.sshd.prefix else []
        return [self.scp_bin, *extra, *self._ssh_options(), "-P", str(self.sshd.port), "-q",
                *args]

    @property
    def label(self) -> str:
        """The build's version, short: "9.2p1", "10.5p1"."""
        match = re.match(r"OpenSSH_([^\s,]+)", self.sshd.version)
        return match.group(1) if match else self.sshd.version.split()[0]

    def sremote(self, path: Path) -> str:
        return f"{self.sshd.user or os.environ.get('USER') or 'root'}@{HOST}:{path}"

    def ssh(self, remote: str) -> list[str]:
        return self.sshd.command(remote)


def fresh(path: Path) -> Path:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    return path


def _rate(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e6:7.1f} MB/s"


def big_file(tools: Tools, work: Path, size: int, rounds: int) -> dict[str, Timing]:
    data = make_file(work / "data", size)
    digest = sha256(data)
    out = work / "out"
    results = {k: Timing() for k in ("qcp up", "scp up", "ssh cat up",
                                     "qcp down", "scp down", "ssh cat down")}
    env, tree = tools.qshd.env, tools.qshd.tree
    base = tools.baseline
    if base is not None:
        results["base qcp up"] = Timing()
        results["base qcp down"] = Timing()
    openssh_steps: list[Callable[[], list[tuple[str, Step]]]] = []
    for other in tools.others:
        label = other.label
        for key in ("scp up", "ssh cat up", "scp down", "ssh cat down"):
            results[f"{key} {label}"] = Timing()

        def steps_of(o: Tools = other, label: str = label) -> list[tuple[str, Step]]:
            return [
                (f"scp up {label}", lambda: run_timed(o.scp(str(data), o.sremote(out)),
                                                      results[f"scp up {label}"],
                                                      server=o.sshd)),
                (f"ssh cat up {label}", lambda: run_timed(o.ssh(f"cat > {out}"),
                                                          results[f"ssh cat up {label}"],
                                                          stdin=data, server=o.sshd)),
                (f"scp down {label}", lambda: run_timed(o.scp(o.sremote(data), str(out)),
                                                        results[f"scp down {label}"],
                                                        server=o.sshd)),
                (f"ssh cat down {label}", lambda: run_timed(o.ssh(f"cat {data}"),
                                                            results[f"ssh cat down {label}"],
                                                            stdout=out, server=o.sshd)),
            ]
        openssh_steps.append(steps_of)
    floor_steps: list[tuple[str, Step]] = []
    if tools.floor is not None:
        floor = tools.floor

        def floor_step(variant: str, name: str) -> Step:
            return lambda: run_timed(floor.command(data, out, variant), results[name],
                                     server=floor)

        for variant in tools.floor_variants:
            results[f"floor {variant}"] = Timing()
            floor_steps.append((f"floor {variant}", floor_step(variant, f"floor {variant}")))
        results["cp"] = Timing()
        floor_steps.append(("cp", lambda: run_timed(["cp", str(data), str(out)], results["cp"],
                                                    server=floor)))
    for _ in range(rounds):
        steps: list[tuple[str, Step]] = [] if base is None else [
            ("base qcp up", lambda: run_timed(tools.qcp(str(data), tools.qremote(out), q=base),
                                              results["base qcp up"], env=base.env,
                                              cwd=base.tree, server=base)),
            ("base qcp down", lambda: run_timed(tools.qcp(tools.qremote(data), str(out), q=base),
                                                results["base qcp down"], env=base.env,
                                                cwd=base.tree, server=base)),
        ]
        steps += [
            ("qcp up", lambda: run_timed(tools.qcp(str(data), tools.qremote(out)),
                                         results["qcp up"], env=env, cwd=tree,
                                         server=tools.qshd)),
            ("scp up", lambda: run_timed(tools.scp(str(data), tools.sremote(out)),
                                         results["scp up"], server=tools.sshd)),
            ("ssh cat up", lambda: run_timed(tools.ssh(f"cat > {out}"), results["ssh cat up"],
                                             stdin=data, server=tools.sshd)),
            ("qcp down", lambda: run_timed(tools.qcp(tools.qremote(data), str(out)),
                                           results["qcp down"], env=env, cwd=tree,
                                           server=tools.qshd)),
            ("scp down", lambda: run_timed(tools.scp(tools.sremote(data), str(out)),
                                           results["scp down"], server=tools.sshd)),
            ("ssh cat down", lambda: run_timed(tools.ssh(f"cat {data}"),
                                               results["ssh cat down"], stdout=out,
                                               server=tools.sshd)),
        ]
        for more in openssh_steps:
            steps += more()
        steps += floor_steps
        for name, step in steps:
            fresh(out)
            step()
            if out.stat().st_size != size or sha256(out) != digest:
                raise RuntimeError(f"{name}: the copy differs from the source")
            t = results[name]
            print(f"    {name:19} {t.seconds[-1]:6.2f} s {_rate(size, t.seconds[-1])}  "
                  f"CPU client {t.client_cpu[-1]:5.2f} s server {t.server_cpu[-1]:5.2f} s  "
                  f"machine busy {t.machine_cpu[-1] / t.seconds[-1]:4.2f} CPUs", file=sys.stderr,
                  flush=True)
    fresh(out)
    return results


def many_files(tools: Tools, work: Path, count: int, rounds: int) -> dict[str, Timing]:
    tree = make_tree(work / "tree", count)
    digest = tree_digest(tree)
    out = work / "tree-out"
    results = {k: Timing() for k in ("qcp -r up", "scp -r up", "qcp -r down", "scp -r down")}
    env, cwd = tools.qshd.env, tools.qshd.tree
    for _ in range(rounds):
        steps: list[tuple[str, Step]] = [
            ("qcp -r up", lambda: run_timed(tools.qcp("-r", str(tree), tools.qremote(out)),
                                            results["qcp -r up"], env=env, cwd=cwd)),
            ("scp -r up", lambda: run_timed(tools.scp("-r", str(tree), tools.sremote(out)),
                                            results["scp -r up"])),
            ("qcp -r down", lambda: run_timed(tools.qcp("-r", tools.qremote(tree), str(out)),
                                              results["qcp -r down"], env=env, cwd=cwd)),
            ("scp -r down", lambda: run_timed(tools.scp("-r", tools.sremote(tree), str(out)),
                                              results["scp -r down"])),
        ]
        for name, step in steps:
            fresh(out)
            step()
            if tree_digest(out) != digest:
                raise RuntimeError(f"{name}: the copied tree differs")
            print(f"    {name:13} {results[name].seconds[-1]:6.2f} s", file=sys.stderr)
    fresh(out)
    shutil.rmtree(tree)
    return results


@dataclass
class Resumed:
    size: int
    partial: int
    sent: int
    seconds: float
    full_seconds: float


def resume(tools: Tools, work: Path, size: int) -> Resumed:
    data = work / "data"
    if not data.exists() or data.stat().st_size != size:
        make_file(data, size)
    out = fresh(work / "resumed")
    env, cwd = tools.qshd.env, tools.qshd.tree

    def partial() -> int:
        sizes = [p.stat().st_size for p in work.iterdir()
                 if p.name not in ("data", "resumed", "tree", "tree-out", "out")]
        return max(sizes, default=0)

    # The first run is slowed (-l) so that the cut lands near the middle, not past it.
    first = subprocess.Popen(tools.qcp("--resume", "-l", str(800 * 1024), str(data),
                                       tools.qremote(out)),
                             env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while partial() < size // 2:
        if first.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the first qcp --resume ended before half of the file")
        time.sleep(0.005)
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=60)
    time.sleep(0.5)
    have = partial()
    start = time.perf_counter()
    done = subprocess.run(tools.qcp("--resume", "-v", str(data), tools.qremote(out)),
                          env=env, cwd=cwd, capture_output=True, timeout=900)
    seconds = time.perf_counter() - start
    if done.returncode != 0 or sha256(out) != sha256(data):
        raise RuntimeError(f"qcp --resume failed: {done.stderr.decode()[-400:]}")
    sent = [int(m) for m in re.findall(rb"sent (\d+) bytes", done.stderr)]
    full = Timing()
    fresh(out)
    run_timed(tools.qcp(str(data), tools.qremote(out)), full, env=env, cwd=cwd)
    fresh(out)
    return Resumed(size, have, sent[-1] if sent else -1, seconds, full.median)


def progress_cost(calls: int = 1_000_000) -> tuple[float, int, float]:
    """ns per advance() with the real clock and a writer that drops the bytes; the redraws
    over the run; redraws per second of run time."""
    from qcp.progress import TtyProgress

    meter = TtyProgress(lambda data: None, width=100, total=True)
    meter.start("some/file/name.bin", calls * 65536, 0)
    start = time.perf_counter()
    for _ in range(calls):
        meter.advance(65536)
    seconds = time.perf_counter() - start
    meter.end("some/file/name.bin", True)
    meter.close()
    return seconds / calls * 1e9, meter.redraws, meter.redraws / seconds


def _top(path: Path, top: int) -> list[str]:
    report = pstats.Stats(str(path))
    stats = report.stats  # type: ignore[attr-defined]
    lines = [f"{1000 * sum(v[2] for v in stats.values()):9.1f} ms in all (self times)"]
    entries = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    for (filename, line, function), (_, calls, tottime, cumtime, _) in entries:
        where = f"{Path(filename).name}:{line} {function}" if line else function
        lines.append(f"{1000 * tottime:9.1f} ms self {1000 * cumtime:9.1f} ms cum "
                     f"{calls:8d}x  {where}")
    return lines


def profile(tools: Tools, work: Path, qcp_args: list[str], top: int = 15
            ) -> tuple[list[str], list[str]]:
    """cProfile of one qcp run: the client's process, and the server's side of the copy
    when qshd was started with QCP_SERVE_PROFILE (the user's process's event loop thread
    while the copy runs); the top functions of each by self time."""
    stats = work / "prof"
    if stats.exists():
        shutil.rmtree(stats)
    stats.mkdir(mode=0o1777)
    stats.chmod(0o1777)  # the user's process writes there
    command = tools.qcp(*qcp_args)
    command[1:3] = ["-m", "cProfile", "-o", str(stats / "client.prof"), "-m", "qcp"]
    subprocess.run(command, env=tools.qshd.env, cwd=tools.qshd.tree, check=True,
                   stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10  # the server writes it as its side ends, maybe later
    while not (server := sorted(stats.glob("serve-*.prof"))) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _top(stats / "client.prof", top), _top(server[0], top) if server else []


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    shm = Path("/dev/shm")
    path = Path(tempfile.mkdtemp(prefix="qcp-bench-", dir=shm if shm.is_dir() else None))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def profiled(work: Path, size: int, count: int, prefix: Path | None) -> None:
    """Part 5: each kind of copy once under cProfile, both ends, against a qshd of its own
    started with QCP_SERVE_PROFILE (the other parts' qshd runs without it)."""
    data = work / "data"
    if not data.exists() or data.stat().st_size != size:
        make_file(data, size)
    tree = work / "tree"
    if not tree.exists():
        make_tree(tree, count)
    out = work / "out"
    os.environ["QCP_SERVE_PROFILE"] = str(work / "prof")  # inherited by that qshd only
    try:
        qshd = PrivateQshd()
    finally:
        del os.environ["QCP_SERVE_PROFILE"]
    extra = SSHD_EXTRA_CONFIG + "Subsystem sftp internal-sftp\n"
    with qshd, openssh.PrivateSshd(extra, prefix) as sshd:
        tools = Tools(qshd, sshd)
        cases = [
            (f"qcp upload of {size // MiB} MiB", [str(data), tools.qremote(out)]),
            (f"qcp download of {size // MiB} MiB", [tools.qremote(data), str(out)]),
            (f"qcp -r upload of {count} files", ["-r", str(tree), tools.qremote(out)]),
            (f"qcp -r download of {count} files", ["-r", tools.qremote(tree), str(out)]),
        ]
        print("\n5. cProfile, both ends, top functions by self time (a qshd with "
              "QCP_SERVE_PROFILE)")
        for what, args in cases:
            fresh(out)
            client, server = profile(tools, work, args)
            sender = "client" if "upload" in what else "server"
            for side, lines in (("client", client), ("server", server)):
                role = "sender" if side == sender else "receiver"
                print(f"   {what}: the {side} ({role})")
                for line in lines:
                    print(f"    {line}")
        fresh(out)


def big_part(tools: Tools, work: Path, size: int, rounds: int, summary: list[str]) -> None:
    print(f"\n1. one file of {size // MiB} MiB, {rounds} round(s), interleaved "
          "(medians; CPU of the client, of the server's processes, of both)")
    big = big_file(tools, work, size, rounds)
    for name, t in big.items():
        print(f"    {name:19} {t.median:6.2f} s {_rate(size, t.median)}  CPU client "
              f"{t.cpu:5.2f} s server {t.server or 0:5.2f} s both {t.both or 0:5.2f} s  "
              f"machine busy {t.busy:4.2f} CPUs")
    labels = [""] + [f" {o.label}" for o in tools.others]
    floor_summary(tools, big, size, labels, summary)
    for way in ("up", "down"):
        q = big[f"qcp {way}"].median
        for label in labels:
            for other, target in (("scp", 2.0), ("ssh cat", 1.0)):
                ratio = big[f"{other} {way}{label}"].median / q
                rounds_ratio = statistics.median(
                    t / s for t, s in zip(big[f"{other} {way}{label}"].seconds,
                                          big[f"qcp {way}"].seconds, strict=True))
                name = f"{other}{label or ' ' + tools.label}"
                summary.append(f"  {size // MiB} MiB {way:4} qcp vs {name:15} {ratio:5.2f}x "
                               f"(per round {rounds_ratio:4.2f}x; target >= {target:g}x): "
                               f"{'MET' if ratio >= target else 'NOT MET'}")
                mine, theirs = big[f"qcp {way}"].both, big[f"{other} {way}{label}"].both
                if mine and theirs:
                    summary.append(f"  {'':>{len(str(size // MiB)) + 9}}CPU, both ends: qcp "
                                   f"{mine:4.2f} s, {name} {theirs:4.2f} s ({theirs / mine:4.2f}x)")
        if f"base qcp {way}" in big:
            base = big[f"base qcp {way}"].median
            summary.append(f"  {size // MiB} MiB {way:4} the --compare checkout's qcp: "
                           f"{big[f'scp {way}'].median / base:5.2f}x scp, "
                           f"{big[f'ssh cat {way}'].median / base:5.2f}x ssh cat; this "
                           f"checkout's is {base / q:4.2f}x as fast")


def floor_summary(tools: Tools, big: dict[str, Timing], size: int, labels: list[str],
                  summary: list[str]) -> None:
    """``--floor``: each floor variant's (and cp's) ratio against each scp's download, and
    qcp's download time over the fastest floor's, all from the same rounds."""
    names = [f"floor {v}" for v in tools.floor_variants] + (["cp"] if tools.floor else [])
    if not names:
        return
    for name in names:
        t = big[name]
        against = ", ".join(
            f"scp{label or ' ' + tools.label} {big[f'scp down{label}'].median / t.median:4.2f}x"
            for label in labels)
        summary.append(f"  {size // MiB} MiB down {name:19} {t.median:5.2f} s: vs {against}; "
                       f"CPU client {t.cpu:4.2f} s server {t.server or 0:4.2f} s")
    floors = [f"floor {v}" for v in tools.floor_variants]
    if floors:
        best = min(floors, key=lambda n: big[n].median)
        q = big["qcp down"]
        per_round = statistics.median(
            a / b for a, b in zip(q.seconds, big[best].seconds, strict=True))
        summary.append(f"  {size // MiB} MiB down qcp takes {q.median / big[best].median:4.2f}x "
                       f"the fastest floor's time ({best}; per round {per_round:4.2f}x); CPU, "
                       f"both ends: qcp {q.both or 0:4.2f} s, {best} {big[best].both or 0:4.2f} s")


def small_part(tools: Tools, work: Path, count: int, rounds: int, summary: list[str]) -> None:
    print(f"\n2. {count} files of 1 KiB, -r, {rounds} round(s)")
    small = many_files(tools, work, count, rounds)
    for name, t in small.items():
        print(f"    {name:13} {t.median:6.2f} s  {count / t.median:8.0f} files/s  "
              f"client CPU {t.cpu:5.2f} s")
    for way in ("up", "down"):
        ratio = small[f"scp -r {way}"].median / small[f"qcp -r {way}"].median
        summary.append(f"  {count} x 1 KiB {way:4} qcp -r vs scp -r {ratio:5.2f}x "
                       f"(target >= 3x): {'MET' if ratio >= 3 else 'NOT MET'}")


def resume_part(tools: Tools, work: Path, size: int, summary: list[str]) -> None:
    print(f"\n3. --resume of a {size // MiB} MiB upload cut at half")
    r = resume(tools, work, size)
    print(f"    partial file at the cut: {r.partial} bytes ({r.partial / r.size:.1%})")
    print(f"    qcp --resume sent {r.sent} bytes ({r.sent / r.size:.1%} of the file) in "
          f"{r.seconds:.2f} s; a whole copy takes {r.full_seconds:.2f} s")
    summary.append(f"  --resume after a cut at {r.partial / r.size:.0%}: sent "
                   f"{r.sent / r.size:.1%} of the file (expected ~"
                   f"{1 - r.partial / r.size:.0%})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB, 2,000 files, 1 round")
    parser.add_argument("--size", type=int, help="MiB for the big file (default 1024)")
    parser.add_argument("--files", type=int, help="small files (default 10000)")
    parser.add_argument("--rounds", type=int, help="rounds, interleaved (default 3)")
    parser.add_argument("--openssh", action="append",
                        help="'system' (Debian's, the default) or an OpenSSH build prefix; "
                             "twice or more: part 1 runs each build in the same rounds")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile each kind of copy, client and server")
    parser.add_argument("--compare", type=Path, metavar="TREE",
                        help="part 1 also runs qcp and qshd of this checkout (e.g. a worktree "
                             "of an older commit), in the same rounds")
    parser.add_argument("--floor", action="store_true",
                        help="part 1 also runs bench/copy_floor.py's least Python download "
                             "(and cp) in the same rounds")
    parser.add_argument("--floor-variants", default="1t-1m,2t-1m,2t-256k,1t-256k-aio",
                        help="comma-separated copy_floor.py variants for --floor "
                             "(default 1t-1m,2t-1m,2t-256k,1t-256k-aio)")
    parser.add_argument("--parts", default="1234",
                        help="which parts to run, e.g. 1 for the big file only (default 1234)")
    args = parser.parse_args()
    size = (args.size or (256 if args.quick else 1024)) * MiB
    count = args.files or (2000 if args.quick else 10_000)
    rounds = args.rounds or (1 if args.quick else 3)
    prefixes = [None if o == "system" else Path(o) for o in args.openssh or ["system"]]
    prefix = prefixes[0]
    for each in prefixes:
        problem = openssh.available(each)
        if problem:
            print(f"OpenSSH not available: {problem} ({openssh.INSTALL_HINT})")
            return 1
    print(f"qcp benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at start")
    extra = SSHD_EXTRA_CONFIG + "Subsystem sftp internal-sftp\n"
    with PrivateQshd() as qshd, openssh.PrivateSshd(extra, prefix) as sshd, \
            workdir() as work, contextlib.ExitStack() as stack:
        baseline = stack.enter_context(PrivateQshd(args.compare)) if args.compare else None
        others = [Tools(qshd, stack.enter_context(openssh.PrivateSshd(extra, each)))
                  for each in prefixes[1:]]
        floor = None
        if args.floor:
            from bench.copy_floor import FloorServer, Variant

            variants = args.floor_variants.split(",")
            for variant in variants:
                Variant.parse(variant)
            floor = stack.enter_context(FloorServer())
        tools = Tools(qshd, sshd, baseline, others, floor,
                      variants if args.floor else None)
        print(f"qshd on {HOST}:{qshd.port}; {sshd.version} on {HOST}:{sshd.port}; "
              f"data in {work}")
        for other in others:
            print(f"also {other.sshd.version} on {HOST}:{other.sshd.port}")
        if floor is not None:
            print(f"bench/copy_floor.py's server on {HOST}:{floor.port}, variants "
                  f"{', '.join(tools.floor_variants)}")
        summary: list[str] = []

        if "1" in args.parts:
            big_part(tools, work, size, rounds, summary)
        if "2" in args.parts:
            small_part(tools, work, count, rounds, summary)
        if "3" in args.parts:
            resume_part(tools, work, size, summary)
        if "4" in args.parts:
            ns, redraws, per_second = progress_cost()
            print(f"\n4. progress meter: {ns:.0f} ns per advance() (1,000,000 calls), "
                  f"{redraws} redraws = {per_second:.1f}/s")
        if args.profile:
            profiled(work, size, count, prefix)

        print("\nSummary (ratios are the other tool's time / qcp's time: > 1 is qcp faster)")
        for line in summary:
            print(line)
        print(f"  load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
