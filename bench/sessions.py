#!/usr/bin/env python3
"""Logins and sessions: qsh/qshd against OpenSSH in the same run (issue 3's benchmarks).

    python bench/sessions.py            # N=20 runs of `host true`, 3 rounds of 50 logins
    python bench/sessions.py --quick    # N=8, 2 rounds
    python bench/sessions.py --parts 13 --profile

Prints, each beside OpenSSH (a private sshd from ``bench/openssh.py``; key login on both
sides; loopback only):

1. ``qsh host true`` against ``ssh host true`` (OpenSSH's default key exchange), the real
   command-line clients as subprocesses: median and p90 wall time of N interleaved runs,
   the ratio qsh/ssh, and where the qsh client's time goes (phases measured inside the
   process, ``-X importtime`` grouped by library, optionally cProfile);
2. 50 parallel logins: one Python process running 50 concurrent ``aio.connect`` + login
   (+ a session running ``true``) against the real qshd, against 50 parallel
   ``ssh host true`` processes; logins/s and the server's CPU per login;
3. idle interactive sessions: K sessions with a PTY and a login shell held open on each
   server; the PSS (``/proc/PID/smaps_rollup``) of everything the server side holds for
   them, per session.

Both daemons are private: qshd (``python -m qshd -D -e -p 0``) and sshd (``-D -e -f``) run
from temporary directories with their own host keys and authorized keys, listen on
127.0.0.1 on free high ports, and are stopped, with every session and client this script
started, when it ends or fails. The system sshd and port 22 are never touched.

One deliberate change to sshd's defaults: ``SetEnv SHLVL=1``. Debian's bash sources
``~/.bashrc`` for a *non-interactive* ``bash -c cmd`` when ``SSH_CLIENT`` is set (that is
how it recognises sshd); here root's ``.bashrc`` runs ``pyenv init`` and costs ~0.35 s, so
``ssh host true`` would time root's rc file, not OpenSSH (qshd sets no SSH_CLIENT, so its
``bash -c true`` never reads it). With SHLVL=1 in the environment bash's shell level is 2
and it skips the rc file, as it does for qsh. Login shells (part 3) read their profile on
both sides alike.

Benchmarks are never unit tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pstats
import pwd
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import openssh  # noqa: E402
from common import aio  # noqa: E402
from common.accounts.keys import HostKey, PublicKey  # noqa: E402
from common.channels import session as proto  # noqa: E402
from common.protocol.handshake import ClientHandshake  # noqa: E402
from common.protocol.negotiation import Offer  # noqa: E402

HOST = "127.0.0.1"
#: Typed into each interactive shell; the answer (not the echo) proves the shell runs.
MARKER_COMMAND = b"echo READY$((6*7))\n"
MARKER = b"READY42"
#: See the module docstring: keeps Debian's bash from sourcing ~/.bashrc for `bash -c`.
SSHD_EXTRA_CONFIG = "SetEnv SHLVL=1\n"
CLK_TCK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


# --- /proc helpers ---------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: fields[0] is the state, [1] ppid."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (zombies left out)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None or fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime: the process (all threads) and its reaped children."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK


def wait_childless(pid: int, timeout: float = 15.0) -> bool:
    """Wait until ``pid`` has no live descendants (so their CPU time has been reaped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not descendants(pid):
            time.sleep(0.05)  # the last wait() may still be on its way
            return True
        time.sleep(0.05)
    return False


@dataclass
class Memory:
    pss: int = 0  # KiB
    private: int = 0  # KiB (Private_Clean + Private_Dirty: USS)
    processes: int = 0

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.pss + other.pss, self.private + other.private,
                      self.processes + other.processes)

    def __sub__(self, other: Memory) -> Memory:
        return Memory(self.pss - other.pss, self.private - other.private,
                      self.processes - other.processes)


def memory(pid: int) -> Memory:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return Memory()
    values: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            values[parts[0][:-1]] = int(parts[1])
    return Memory(values.get("Pss", 0),
                  values.get("Private_Clean", 0) + values.get("Private_Dirty", 0), 1)


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _kill_leftovers(pids: list[int]) -> None:
    """Processes our daemons started (shells) that outlived them: SIGKILL by pid."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# --- a private qshd ---------------------------------------------------------------------------


class PrivateQshd:
    """qshd in the foreground on a free loopback port, from a temporary directory: its own
    ML-DSA host key (created on first start), a user key listed in its own authorized_keys
    (``AuthorizedKeysFile``), an empty passwd file and password logins off. Logs go to
    ``qshd.log`` in that directory (shown if it fails)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="qsh-bench-qshd-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.user_key_path = self.dir / "user_key"
        self.known_hosts = self.dir / "known_hosts"
        #: For every Python process started here: bytecode cached (in our directory, never in
        #: the source tree), as an installed package has it. PYTHONDONTWRITEBYTECODE (set in
        #: some sandboxes) would make each run compile qsh's own modules again.
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.env["PYTHONPYCACHEPREFIX"] = str(self.dir / "pycache")
        #: PYTHONDONTWRITEBYTECODE=1 and the default cache location: the libraries' bytecode
        #: (installed) is used, ours is compiled at each start unless the tree has a
        #: __pycache__ (a sandbox that sets the variable has none).
        self.env_uncached = {k: v for k, v in self.env.items() if k != "PYTHONPYCACHEPREFIX"}
        self.env_uncached["PYTHONDONTWRITEBYTECODE"] = "1"

    def __enter__(self) -> PrivateQshd:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        self.user_key = HostKey.generate("mldsa65", now=time.time())
        self.user_key.save(self.user_key_path)
        authorized = self.dir / "authorized_keys"
        authorized.write_text(self.user_key.public.openssh_line("qsh-bench") + "\n")
        authorized.chmod(0o600)
        passwd = self.dir / "passwd"
        passwd.touch(0o600)
        ready = self.dir / "ready"
        host_key = self.dir / "host_key"
        self.log = self.dir / "qshd.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "qshd", "-D", "-e", "-p", "0",
                 "-o", f"ListenAddress={HOST}", "-o", f"PasswdFile={passwd}",
                 "-o", "PermitRootLogin=prohibit-password",
                 "-o", "PasswordAuthentication=no",
                 "-o", f"AuthorizedKeysFile={authorized}",
                 "-o", "MaxStartups=200",
                 "--ready-file", str(ready), "-h", str(host_key)],
                cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=log)
        deadline = time.monotonic() + 30
        while not ready.exists() or not ready.read_text().endswith("\n"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"qshd did not start: {self.log_tail()}")
            time.sleep(0.05)
        self.port = int(ready.read_text())
        self.host_public = PublicKey.load(host_key.with_name("host_key.pub"))[0]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def cli(self, remote: str | None = "true") -> list[str]:
        """``qsh ... user@127.0.0.1 remote``: the real client as a user would type it
        (``-F none`` as ssh's ``-F /dev/null``; accept-new into our own known_hosts)."""
        return [sys.executable, "-m", "qsh", "-F", "none", "-p", str(self.port),
                "-i", str(self.user_key_path), "-o", "StrictHostKeyChecking=accept-new",
                "-o", f"UserKnownHostsFile={self.known_hosts}", f"{self.user}@{HOST}",
                *([remote] if remote is not None else [])]

    async def connect(self) -> aio.QsmpConnection:
        """An ``aio`` client logged in with the user key (the host key trusted up front)."""
        connection = await aio.connect(
            HOST, self.port, handshake=ClientHandshake(Offer(), self.host_public),
            user=self.user, identity=self.user_key, timeout=120)
        failed = await connection.wait_authenticated()
        if failed is not None:
            connection.abort()
            raise RuntimeError(f"qsh login refused: {failed}; qshd: {self.log_tail()}")
        return connection

    def close(self) -> None:
        if self.process is not None:
            leftovers = descendants(self.process.pid)
            _stop(self.process)
            self.process = None
            time.sleep(0.1)
            _kill_leftovers([p for p in leftovers if Path(f"/proc/{p}").exists()])
        shutil.rmtree(self.dir, ignore_errors=True)


# --- statistics ---------------------------------------------------------------------------------


@dataclass
class Series:
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def p90(self) -> float:
        if len(self.values) < 2:
            return self.values[0]
        return statistics.quantiles(self.values, n=10, method="inclusive")[8]


# --- 1. `host true` with the real command-line clients ------------------------------------------


@dataclass
class TrueRuns:
    wall: Series = field(default_factory=Series)
    client_cpu: Series = field(default_factory=Series)
    server_cpu: Series = field(default_factory=Series)


def _timed(command: list[str], server_pid: int, into: TrueRuns,
           env: dict[str, str] | None = None) -> None:
    cpu0, server0 = _children_cpu(), cpu_seconds(server_pid)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} exited {done.returncode}: "
                           f"{done.stderr.decode(errors='replace').strip()[-300:]}")
    wait_childless(server_pid)
    into.wall.values.append(wall)
    into.client_cpu.values.append(_children_cpu() - cpu0)
    into.server_cpu.values.append(cpu_seconds(server_pid) - server0)


def cli_ready(qshd: PrivateQshd) -> str | None:
    """None once ``qsh host true`` exits 0 (this also records the host key), else why not."""
    done = subprocess.run(qshd.cli("true"), cwd=ROOT, env=qshd.env, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=120)
    if done.returncode == 0:
        return None
    return (f"qsh exited {done.returncode}: "
            f"{done.stderr.decode(errors='replace').strip()[-300:]}")


def host_true(qshd: PrivateQshd, sshd: openssh.PrivateSshd, count: int
              ) -> tuple[TrueRuns, TrueRuns]:
    """``count`` runs each, interleaved (qsh, ssh, qsh, ...) so load changes hit both."""
    qsh, ssh = TrueRuns(), TrueRuns()
    _timed(sshd.command("true"), sshd.pid, TrueRuns())  # warm-up: known_hosts, page cache
    _timed(qshd.cli("true"), qshd.pid, TrueRuns(), qshd.env)
    for _ in range(count):
        _timed(qshd.cli("true"), qshd.pid, qsh, qshd.env)
        _timed(sshd.command("true"), sshd.pid, ssh)
    return qsh, ssh


def host_true_uncached(qshd: PrivateQshd, count: int) -> TrueRuns:
    """``qsh host true`` with no bytecode cache: what a source checkout run with
    PYTHONDONTWRITEBYTECODE=1 pays."""
    runs = TrueRuns()
    for _ in range(count):
        _timed(qshd.cli("true"), qshd.pid, runs, qshd.env_uncached)
    return runs


# Runs inside `python -c` in place of `python -m qsh`: timestamps (CLOCK_MONOTONIC, shared
# with the parent) around each phase of the real client, written to a JSON file at exit.
# With QSH_BENCH_PRELOAD, the modules a normal run imports are imported first (in the order
# the run imported them), so the later phases carry no import time; the JSON file also lists
# the modules a run imported.
_PROBE = r"""
import time
_t0 = time.monotonic()
import atexit, json, os, sys
_marks = {"t0": _t0}
_before = set(sys.modules)
def _dump():
    _marks["exit"] = time.monotonic()
    with open(os.environ["QSH_BENCH_MARKS"], "w") as f:
        json.dump({"marks": _marks, "modules": [m for m in sys.modules if m not in _before]}, f)
atexit.register(_dump)
import qsh.cli
_marks["cli"] = time.monotonic()
for _name in json.loads(os.environ.get("QSH_BENCH_PRELOAD", "[]")):
    try:
        __import__(_name)
    except Exception:
        pass
_marks["imports"] = time.monotonic()
from common import aio
from qsh import session as _session
def _wrap(owner, attr, key):
    original = getattr(owner, attr)
    async def wrapper(*args, **kwargs):
        _marks.setdefault(key + "_start", time.monotonic())
        try:
            return await original(*args, **kwargs)
        finally:
            _marks[key + "_end"] = time.monotonic()
    setattr(owner, attr, wrapper)
_wrap(aio, "connect", "connect")
_wrap(aio.QsmpConnection, "wait_authenticated", "auth")
_wrap(_session.Session, "run", "session")
_wrap(_session, "close_connection", "close")
qsh.cli.main(json.loads(os.environ["QSH_BENCH_ARGV"]))
"""

PHASES = (
    ("interpreter start (exec, site, .pth files)", "spawn", "t0"),
    ("import qsh.cli (click)", "t0", "cli"),
    ("other imports (asyncio, crypto, common, qsh)", "cli", "imports"),
    ("arguments, config, key file, known_hosts", "imports", "connect_start"),
    ("TCP + handshake (+ user-key signature)", "connect_start", "connect_end"),
    ("login answer (server checks the key)", "connect_end", "auth_end"),
    ("session: open, exec `true`, exit-status", "auth_end", "session_end"),
    ("close the connection", "session_end", "close_end"),
    ("event loop teardown, sys.exit, atexit", "close_end", "exit"),
    ("interpreter finalisation (GC of modules)", "exit", "end"),
)


def _probe_once(qshd: PrivateQshd, preload: list[str]) -> tuple[dict[str, float], list[str]]:
    with tempfile.TemporaryDirectory(prefix="qsh-bench-probe-") as tmp:
        out = Path(tmp) / "marks.json"
        env = dict(qshd.env, QSH_BENCH_MARKS=str(out), QSH_BENCH_PRELOAD=json.dumps(preload),
                   QSH_BENCH_ARGV=json.dumps(qshd.cli("true")[3:]))
        spawn = time.monotonic()
        done = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=120)
        end = time.monotonic()
        if done.returncode != 0:
            raise RuntimeError(f"probe failed: {done.stderr.decode(errors='replace')[-300:]}")
        data = json.loads(out.read_text())
    marks: dict[str, float] = data["marks"]
    marks["spawn"], marks["end"] = spawn, end
    modules = [m for m in data["modules"] if not m.endswith("__main__")]
    return marks, modules


def phase_breakdown(qshd: PrivateQshd, repeats: int) -> list[tuple[str, float]]:
    """Median milliseconds per phase of ``qsh host true`` (see :data:`PHASES`)."""
    _, modules = _probe_once(qshd, [])
    per_phase: dict[str, list[float]] = {name: [] for name, _, _ in PHASES}
    totals: list[float] = []
    for _ in range(repeats):
        marks, _ = _probe_once(qshd, modules)
        for name, start, end in PHASES:
            if start in marks and end in marks:
                per_phase[name].append(1000 * (marks[end] - marks[start]))
        totals.append(1000 * (marks["end"] - marks["spawn"]))
    rows = [(name, statistics.median(v)) for name, v in per_phase.items() if v]
    rows.append(("total (median of the runs)", statistics.median(totals)))
    return rows


# `-X importtime`: self time of every module, attributed to the library that pulled it in.
_IMPORT_GROUPS = {
    "certifi": "certifi, via this machine's sandbox .pth",
    "Crypto": "pycryptodome (+ cffi, pycparser)",
    "cryptography": "cryptography",
    "click": "click",
    "asyncio": "asyncio",
    "site": "site (other)",
}


def import_groups(qshd: PrivateQshd) -> list[tuple[str, float]]:
    done = subprocess.run([sys.executable, "-X", "importtime", *qshd.cli("true")[1:]],
                          cwd=ROOT, env=qshd.env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120,
                          text=True)
    totals: dict[str, float] = {}
    stack: list[str] = []
    lines = [ln for ln in done.stderr.splitlines()
             if ln.startswith("import time:") and "cumulative" not in ln]
    # importtime prints a module after the modules it imported, indented one level deeper:
    # read backwards, each line's ancestors are the last shallower lines seen.
    for line in reversed(lines):
        self_us, _cumulative, name_field = line[len("import time:"):].split("|")
        depth = (len(name_field) - len(name_field.lstrip(" ")) - 1) // 2
        name = name_field.strip()
        stack = [*stack[:depth], name]
        chain = list(reversed(stack))  # the module first, then its importers
        group = next((_IMPORT_GROUPS[m.split(".")[0]] for m in chain
                      if m.split(".")[0] in _IMPORT_GROUPS), None)
        if group is None:
            own = name.split(".")[0] in ("common", "qsh")
            group = "qsh + common (own modules)" if own else "stdlib (the rest)"
        totals[group] = totals.get(group, 0.0) + int(self_us) / 1000
    return sorted(totals.items(), key=lambda kv: -kv[1])


# `--what-if`: the real client started through a small wrapper that applies one cheap change
# from outside, to put numbers on suggestions without editing qsh/ or common/.
_WRAPPER = """{prelude}
import json, os
import qsh.cli
qsh.cli.main(json.loads(os.environ["QSH_BENCH_ARGV"]))
"""
_FREEZE_AT_EXIT = """import gc, sys
_exit = sys.exit
def _frozen_exit(*args):
    gc.freeze()  # finalisation then skips its full collections over every module's objects
    _exit(*args)
sys.exit = _frozen_exit
"""
_NO_CFFI = """import sys
sys.modules["cffi"] = None  # pycryptodome falls back to its ctypes backend: no pycparser
"""
#: Not a product change: ``-S`` skips site's .pth files (this machine has a sandbox one that
#: imports certifi at every start); site-packages is then put on the path by hand.
_NO_PTH = """import os, sys
sys.path.append(os.environ["QSH_BENCH_SITE_PACKAGES"])
"""
_GC_OFF = """import gc
gc.disable()  # no collections while ~200 modules load
"""
#: name: (interpreter flags, prelude); None: the real ``python -m qsh``, for reference.
WHAT_IF: dict[str, tuple[tuple[str, ...], str] | None] = {
    "python -m qsh (reference)": None,
    "as is (through the wrapper)": ((), ""),
    "gc.disable() at start": ((), _GC_OFF),
    "gc.freeze() before sys.exit": ((), _FREEZE_AT_EXIT),
    "pycryptodome on ctypes (cffi hidden)": ((), _NO_CFFI),
    "both": ((), _NO_CFFI + _FREEZE_AT_EXIT),
    "both + gc.disable() at start": ((), _GC_OFF + _NO_CFFI + _FREEZE_AT_EXIT),
    "both, without the sandbox's .pth": (("-S",), _NO_PTH + _NO_CFFI + _FREEZE_AT_EXIT),
}


def what_if(qshd: PrivateQshd, count: int) -> dict[str, TrueRuns]:
    """``count`` runs of each variant, round robin."""
    import site

    env = dict(qshd.env, QSH_BENCH_ARGV=json.dumps(qshd.cli("true")[3:]),
               QSH_BENCH_SITE_PACKAGES=site.getsitepackages()[0])
    results = {name: TrueRuns() for name in WHAT_IF}
    for round_number in range(count + 1):
        for name, variant in WHAT_IF.items():
            runs = results[name] if round_number else TrueRuns()  # round 0 warms up
            if variant is None:
                command = qshd.cli("true")
            else:
                flags, prelude = variant
                command = [sys.executable, *flags, "-c", _WRAPPER.format(prelude=prelude)]
            _timed(command, qshd.pid, runs, env)
    return results


def cprofile_top(qshd: PrivateQshd, count: int = 15) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="qsh-bench-prof-") as tmp:
        out = Path(tmp) / "qsh.prof"
        subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out),
                        *qshd.cli("true")[1:]], cwd=ROOT, env=qshd.env,
                       stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120,
                       check=True)
        stats = pstats.Stats(str(out))
    rows = []
    table = stats.stats
    for (file, line, func), (_cc, calls, tt, ct, _callers) in sorted(
            table.items(), key=lambda kv: -kv[1][2])[:count]:
        where = f"{Path(file).name}:{line}" if line else file
        rows.append(f"{1000 * ct:7.1f} ms cum {1000 * tt:6.1f} ms self {calls:6d}x  "
                    f"{where} {func}")
    return rows


# --- 2. 50 parallel logins ----------------------------------------------------------------------


@dataclass
class Round:
    seconds: float
    server_cpu: float  # seconds, the whole round
    client_cpu: float

    def rate(self, count: int) -> float:
        return count / self.seconds


async def _qsh_login(qshd: PrivateQshd, exec_true: bool) -> None:
    connection = await qshd.connect()
    try:
        if exec_true:
            channel = await connection.open_channel(proto.SESSION)
            reply = await channel.request(proto.EXEC, proto.encode_exec("true"))
            if reply is None or not reply[0]:
                raise RuntimeError("qshd refused to run `true`")
            status = None
            while (request := await channel.next_request()) is not None:
                if request.name == proto.EXIT_STATUS:
                    status = proto.decode_exit_status(request.payload)
            if status != 0:
                raise RuntimeError(f"`true` exited {status}")
    finally:
        connection.close()
        await connection.wait_closed()


async def _qsh_round(qshd: PrivateQshd, count: int, exec_true: bool) -> Round:
    server0, client0 = cpu_seconds(qshd.pid), time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(_qsh_login(qshd, exec_true) for _ in range(count)))
    seconds = time.perf_counter() - start
    client = time.process_time() - client0
    wait_childless(qshd.pid)
    return Round(seconds, cpu_seconds(qshd.pid) - server0, client)


def qsh_parallel(qshd: PrivateQshd, count: int, rounds: int, exec_true: bool) -> list[Round]:
    async def run() -> list[Round]:
        await _qsh_login(qshd, exec_true)  # warm-up
        return [await _qsh_round(qshd, count, exec_true) for _ in range(rounds)]

    return asyncio.run(run())


def ssh_parallel(sshd: openssh.PrivateSshd, count: int, rounds: int) -> list[Round]:
    results = []
    subprocess.run(sshd.command("true"), stdin=subprocess.DEVNULL, check=True)  # warm-up
    wait_childless(sshd.pid)
    for _ in range(rounds):
        server0, client0 = sshd.server_cpu(), _children_cpu()
        processes: list[subprocess.Popen[bytes]] = []
        start = time.perf_counter()
        try:
            for _ in range(count):
                processes.append(subprocess.Popen(sshd.command("true"),
                                                  stdin=subprocess.DEVNULL,
                                                  stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.PIPE))
            failures = []
            for process in processes:
                _, err = process.communicate(timeout=120)
                if process.returncode != 0:
                    failures.append(err.decode(errors="replace").strip())
            seconds = time.perf_counter() - start
        finally:
            for process in processes:
                _stop(process)
        if failures:
            raise RuntimeError(f"{len(failures)} of {count} ssh failed: {failures[0][-200:]}")
        wait_childless(sshd.pid)
        results.append(Round(seconds, sshd.server_cpu() - server0, _children_cpu() - client0))
    return results


# --- 3. idle interactive sessions ---------------------------------------------------------------


@dataclass
class Held:
    """What the server side holds for K idle sessions (all PSS sums, KiB)."""

    fresh: Memory  # the daemon (qshd) or the listener (sshd) before its first session
    warm: Memory  # the same after one warm-up session came and went
    daemon: Memory  # the same while the K sessions are held
    helpers: Memory  # sshd's per-connection processes (none for qshd)
    shells: Memory  # the login shells (and anything they run)

    @property
    def total(self) -> Memory:
        """Everything the sessions cost over the daemon as it was started."""
        return self.daemon - self.fresh + self.helpers + self.shells

    @property
    def marginal(self) -> Memory:
        """The same over the daemon after one session (one-time costs left out)."""
        return self.daemon - self.warm + self.helpers + self.shells


def _measure_tree(daemon_pid: int, fresh: Memory, warm: Memory) -> Held:
    daemon = memory(daemon_pid)
    helpers, shells = Memory(), Memory()
    for pid in descendants(daemon_pid):
        if comm(pid) in ("sshd", "sshd-session"):
            helpers += memory(pid)
        else:
            shells += memory(pid)
    return Held(fresh, warm, daemon, helpers, shells)


async def _read_until(channel: aio.Channel, marker: bytes, timeout: float) -> None:
    seen = b""
    async with asyncio.timeout(timeout):
        while marker not in seen:
            chunk = await channel.read(65536)
            if not chunk:
                raise RuntimeError(f"shell closed before answering: {seen[-200:]!r}")
            seen = seen[-4096:] + chunk


async def _open_shell(qshd: PrivateQshd) -> aio.QsmpConnection:
    connection = await qshd.connect()
    channel = await connection.open_channel(proto.SESSION)
    pty = proto.PtyRequest("xterm", proto.WindowSize(80, 24))
    replies = await asyncio.gather(channel.request(proto.PTY_REQ, pty.encode()),
                                   channel.request(proto.SHELL))
    if not all(r is not None and r[0] for r in replies):
        raise RuntimeError("qshd refused the pty or the shell")
    channel.write(MARKER_COMMAND)
    await _read_until(channel, MARKER, 60)
    return connection


async def _close_all(connections: list[aio.QsmpConnection]) -> None:
    for connection in connections:
        connection.close()
    for connection in connections:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.wait_closed(), 10)


def qsh_idle(qshd: PrivateQshd, count: int, settle: float) -> Held:
    async def run() -> Held:
        fresh = memory(qshd.pid)
        await _close_all([await _open_shell(qshd)])  # warm-up session
        wait_childless(qshd.pid)
        time.sleep(settle)
        warm = memory(qshd.pid)
        connections: list[aio.QsmpConnection] = []
        try:
            for _ in range(count):
                connections.append(await _open_shell(qshd))
            await asyncio.sleep(settle)
            held = _measure_tree(qshd.pid, fresh, warm)
        finally:
            await _close_all(connections)
        wait_childless(qshd.pid)
        return held

    return asyncio.run(run())


def _ssh_read_until(process: subprocess.Popen[bytes], marker: bytes, timeout: float) -> None:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"ssh -tt: no shell answer: {seen[-200:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"ssh -tt ended: {seen[-200:]!r}")
            seen = seen[-4096:] + chunk


def _ssh_shell(sshd: openssh.PrivateSshd, clients: list[subprocess.Popen[bytes]]) -> None:
    client = subprocess.Popen(sshd.command(None, tty=True), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    clients.append(client)
    assert client.stdin is not None
    client.stdin.write(MARKER_COMMAND)
    client.stdin.flush()
    _ssh_read_until(client, MARKER, 60)


def ssh_idle(sshd: openssh.PrivateSshd, count: int, settle: float) -> Held:
    wait_childless(sshd.pid)
    fresh = memory(sshd.pid)  # (the listener has served other connections: it keeps nothing)
    clients: list[subprocess.Popen[bytes]] = []
    try:
        _ssh_shell(sshd, clients)  # warm-up session, as for qshd
        _stop(clients.pop())
        wait_childless(sshd.pid)
        time.sleep(settle)
        warm = memory(sshd.pid)
        for _ in range(count):
            _ssh_shell(sshd, clients)
        time.sleep(settle)
        return _measure_tree(sshd.pid, fresh, warm)
    finally:
        for client in clients:
            _stop(client)
        wait_childless(sshd.pid)


# --- report -------------------------------------------------------------------------------------


def _verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f} ms"


def _ms1(seconds: float) -> str:
    return f"{1000 * seconds:.1f} ms"


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP become KeyboardInterrupt, so every ``finally`` (daemons, sessions)
    runs when the benchmark itself is stopped."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _section(title: str) -> None:
    print()
    print(title)


def _timed_step(what: str, step: Callable[[], T]) -> T:
    start = time.perf_counter()
    result = step()
    print(f"    ({what}: {time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=8 runs, 2 rounds of logins")
    parser.add_argument("--runs", type=int, help="`host true` runs each (default 20, quick 8)")
    parser.add_argument("--parallel", type=int, default=50, help="parallel logins (50)")
    parser.add_argument("--rounds", type=int, help="rounds of parallel logins (3, quick 2)")
    parser.add_argument("--sessions", type=int, default=10, help="idle sessions held (10)")
    parser.add_argument("--parts", default="123", help="which parts to run, e.g. 13")
    parser.add_argument("--profile", action="store_true",
                        help="also print cProfile's top functions of one `qsh host true`")
    parser.add_argument("--what-if", action="store_true",
                        help="also time `qsh host true` with cheap changes applied from outside")
    args = parser.parse_args()
    runs = args.runs or (8 if args.quick else 20)
    rounds = args.rounds or (2 if args.quick else 3)
    why = openssh.available()
    if why is not None:
        sys.exit(f"bench/sessions.py needs OpenSSH for its baseline: {why}.\n"
                 f"    {openssh.INSTALL_HINT}")
    load0 = os.getloadavg()
    print(f"qsh sessions benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"load average {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f} at start")
    summary: list[str] = []
    verdicts: list[str] = []
    with _terminate_as_interrupt(), PrivateQshd() as qshd, \
            openssh.PrivateSshd(SSHD_EXTRA_CONFIG) as sshd:
        print(f"qshd on {HOST}:{qshd.port} (pid {qshd.pid}); {sshd.version} on "
              f"{HOST}:{sshd.port} (pid {sshd.pid}, SetEnv SHLVL=1); login as {qshd.user} "
              "with a user key on both")
        if "1" in args.parts:
            _section(f"1. `qsh host true` vs `ssh host true`: {runs} runs each, interleaved; "
                     "real CLIs as subprocesses")
            problem = cli_ready(qshd)
            if problem is not None:
                print(f"    qsh CLI not ready, part 1 skipped: {problem}")
            else:
                qsh, ssh = _timed_step("host true", lambda: host_true(qshd, sshd, runs))
                ratio = qsh.wall.median / ssh.wall.median
                for name, r in (("qsh", qsh), ("ssh", ssh)):
                    print(f"    {name} host true: median {_ms(r.wall.median)}, p90 "
                          f"{_ms(r.wall.p90)}; CPU per run: client "
                          f"{_ms(r.client_cpu.median)}, server {_ms(r.server_cpu.median)}")
                print(f"    ratio qsh/ssh (median): {ratio:.2f}  (p90: "
                      f"{qsh.wall.p90 / ssh.wall.p90:.2f})")
                summary.append(f"1. host true, median (p90)     {_ms(qsh.wall.median):>7} "
                               f"({_ms(qsh.wall.p90)})  {_ms(ssh.wall.median):>7} "
                               f"({_ms(ssh.wall.p90)})  {ratio:5.2f}   <= 0.7")
                verdicts.append(f"1. qsh host true <= 0.7x ssh host true: "
                                f"{_verdict(ratio <= 0.7)} ({ratio:.2f}x)")
                print("    where `qsh host true` spends its time (phases timed inside the "
                      "client; median of runs):")
                for name, ms in _timed_step("breakdown",
                                            lambda: phase_breakdown(qshd, max(5, runs // 2))):
                    print(f"      {name:48} {ms:7.1f} ms")
                print("    imports by library (-X importtime self times; importtime itself "
                      "inflates them):")
                for name, ms in import_groups(qshd):
                    print(f"      {name:48} {ms:7.1f} ms")
                uncached = host_true_uncached(qshd, max(3, runs // 2))
                print(f"    with PYTHONDONTWRITEBYTECODE=1 as this sandbox sets it (qsh's own "
                      f"modules compiled at each start; {len(uncached.wall.values)} runs): "
                      f"median {_ms(uncached.wall.median)} "
                      f"({uncached.wall.median / ssh.wall.median:.2f}x ssh)")
                if args.what_if:
                    print("    what if (the same client, one change applied by a wrapper):")
                    variants = _timed_step("what-if", lambda: what_if(qshd, runs))
                    # A change's effect: against the wrapper as is (same harness, same
                    # minutes); the projected ratio scales the measured one by it, as the
                    # machine's load may have changed since.
                    base = variants["as is (through the wrapper)"].wall.median
                    for name, r in variants.items():
                        line = (f"      {name:40} median {_ms(r.wall.median):>7}, p90 "
                                f"{_ms(r.wall.p90):>7}")
                        if name.startswith(("python -m", "as is")):
                            print(line)
                            continue
                        print(f"{line}; {1000 * (r.wall.median - base):+4.0f} ms "
                              f"({r.wall.median / base - 1:+4.0%}) -> qsh/ssh "
                              f"~{ratio * r.wall.median / base:.2f}")
                if args.profile:
                    print("    cProfile, top functions by self time (one run; cProfile slows "
                          "Python code, not C):")
                    for row in cprofile_top(qshd):
                        print(f"      {row}")
        if "2" in args.parts:
            n = args.parallel
            _section(f"2. {n} parallel logins, {rounds} rounds (best and median)")
            results: dict[str, list[Round]] = {}
            results["qsh login"] = _timed_step(
                "qsh login", lambda: qsh_parallel(qshd, n, rounds, exec_true=False))
            results["qsh login + true"] = _timed_step(
                "qsh login + true", lambda: qsh_parallel(qshd, n, rounds, exec_true=True))
            results["ssh host true"] = _timed_step(
                "ssh", lambda: ssh_parallel(sshd, n, rounds))
            for name, rs in results.items():
                rates = [r.rate(n) for r in rs]
                print(f"    {name:17} {max(rates):6.1f} logins/s best, "
                      f"{statistics.median(rates):6.1f} median; server CPU per login "
                      f"{_ms1(statistics.median(r.server_cpu for r in rs) / n)}, client "
                      f"{_ms1(statistics.median(r.client_cpu for r in rs) / n)}")
            qsh_rate = statistics.median(r.rate(n) for r in results["qsh login + true"])
            login_rate = statistics.median(r.rate(n) for r in results["qsh login"])
            ssh_rate = statistics.median(r.rate(n) for r in results["ssh host true"])
            qsh_cpu = statistics.median(r.server_cpu for r in results["qsh login + true"]) / n
            ssh_cpu = statistics.median(r.server_cpu for r in results["ssh host true"]) / n
            print(f"    ratio qsh/ssh, logins/s (median): login + true {qsh_rate / ssh_rate:.2f}"
                  f", login only {login_rate / ssh_rate:.2f}")
            print(f"    server side like for like (one login + `true`): qshd "
                  f"{_ms1(qsh_cpu)} CPU = {1 / qsh_cpu:.0f}/s per core; sshd "
                  f"{_ms1(ssh_cpu)} CPU = {1 / ssh_cpu:.0f}/s per core; ratio "
                  f"{ssh_cpu / qsh_cpu:.2f}")
            print("    what the wall-clock figures include: qsh = ONE Python client process "
                  f"with {n} concurrent\n    connections; ssh = {n} C client processes, each "
                  "generating an sntrup761 key; both share\n    the machine's cores with "
                  "their server. Server CPU = the daemon's own CPU (all threads) plus\n"
                  "    everything it reaped: sshd's per-connection processes, the shells "
                  "running `true`.")
            summary.append(f"2. {n} parallel, logins/s       {qsh_rate:7.1f}        "
                           f"{ssh_rate:7.1f}        {qsh_rate / ssh_rate:5.2f}   >= 3")
            summary.append(f"   server CPU per login        {_ms1(qsh_cpu):>7}        "
                           f"{_ms1(ssh_cpu):>7}        {ssh_cpu / qsh_cpu:5.2f}   >= 3 "
                           "(ssh/qsh)")
            verdicts.append(f"2. {n} parallel logins >= 3x sshd: "
                            f"{_verdict(qsh_rate / ssh_rate >= 3)} ({qsh_rate / ssh_rate:.2f}x "
                            f"wall clock; {ssh_cpu / qsh_cpu:.2f}x by server CPU per login)")
        if "3" in args.parts:
            k = args.sessions
            _section(f"3. {k} idle interactive sessions (PTY + login shell) held on each "
                     "server: PSS of the server side")
            settle = 1.0
            # A fresh daemon: the one above has served hundreds of logins, and its heap's
            # free space would absorb new sessions unseen.
            with PrivateQshd() as fresh:
                held_qsh = _timed_step("qsh sessions", lambda: qsh_idle(fresh, k, settle))
            held_ssh = _timed_step("ssh sessions", lambda: ssh_idle(sshd, k, settle))
            for name, held, what in (("qshd", held_qsh, "qshd itself"),
                                     ("sshd", held_ssh, "the listener")):
                total, marginal = held.total, held.marginal
                print(f"    {name}: {total.pss / k:5.0f} KiB PSS per session "
                      f"({total.private / k:.0f} KiB private); {what} "
                      f"{held.fresh.pss} KiB idle, {held.daemon.pss - held.fresh.pss:+d} KiB "
                      f"with the sessions; {held.helpers.processes} sshd processes "
                      f"{held.helpers.pss} KiB; {held.shells.processes} shells "
                      f"{held.shells.pss} KiB")
                print(f"          after one warm-up session: {what} "
                      f"{held.warm.pss - held.fresh.pss:+d} KiB for good; then "
                      f"{marginal.pss / k:.0f} KiB per session, "
                      f"{(marginal.pss - held.shells.pss) / k:.1f} KiB of it outside the shell")
            per_qsh = held_qsh.total.pss / k
            per_ssh = held_ssh.total.pss / k
            ratio = per_qsh / per_ssh
            print(f"    ratio qsh/ssh per session: {ratio:.2f} (after a warm-up session "
                  f"{held_qsh.marginal.pss / held_ssh.marginal.pss:.2f}); without the "
                  f"shells: {(held_qsh.total.pss - held_qsh.shells.pss) / k:.0f} KiB vs "
                  f"{(held_ssh.total.pss - held_ssh.shells.pss) / k:.0f} KiB")
            summary.append(f"3. idle session PSS           {per_qsh:5.0f} KiB      "
                           f"{per_ssh:5.0f} KiB      {ratio:5.2f}   <= 2")
            verdicts.append(f"3. idle session PSS <= 2x sshd: {_verdict(ratio <= 2)} "
                            f"({ratio:.2f}x)")
    load1 = os.getloadavg()
    _section("Summary                         qsh              OpenSSH          qsh/ssh target")
    for line in summary:
        print(f"  {line}")
    for line in verdicts:
        print(f"  {line}")
    print(f"  load average {load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f} at the end "
          f"({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
