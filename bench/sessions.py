#!/usr/bin/env python3
"""Logins and sessions: qsh/qshd against OpenSSH in the same run (issues 3 and 8).

    python bench/sessions.py            # N=20 runs of `host true`, 3 rounds of 50 logins
    python bench/sessions.py --quick    # N=8, 2 rounds
    python bench/sessions.py --parts 13 --profile
    python bench/sessions.py --openssh system --openssh /opt/openssh-10.5 \
        --compare-tree /path/to/a/worktree/of/an/older/commit

Prints, each beside OpenSSH (a private sshd from ``bench/openssh.py``; key login on both
sides; loopback only; ``--openssh`` picks which, repeatable: Debian's or a build's prefix):

1. ``qsh host true`` against ``ssh host true`` (OpenSSH's default key exchange), the real
   command-line clients as subprocesses: median and p90 wall time of N interleaved runs,
   the ratio qsh/ssh, and where the qsh client's time goes (phases measured inside the
   process, ``-X importtime`` grouped by library, optionally cProfile);
2. 50 parallel logins: one Python process running 50 concurrent ``aio.connect`` + login
   (+ a session running ``true``) against the real qshd, against 50 parallel
   ``ssh host true`` processes; logins/s and the server's CPU per login;
3. idle interactive sessions: K sessions with a PTY and a login shell held open on each
   server; the PSS (``/proc/PID/smaps_rollup``) of everything the server side holds for
   them, per session;
4. 1 GiB through ``host 'cat > /dev/null'`` with the real CLIs: time, CPU per GiB of each
   side, and the listener's own CPU time before and after each transfer (a listener that
   forks a process per connection should spend nothing while connections move data).

How the server side is counted, for both daemons: everything below the listener. Server CPU
is the listener's utime + stime + cutime + cstime (``/proc/PID/stat``) read once every
process of the measured connections has ended and been reaped (qshd's monitor, pre-auth and
user's processes; sshd's per-connection sshd or sshd-session and sshd-auth; the shells):
each is reaped by its own parent, so its CPU time and its children's reach the listener's
``cutime``/``cstime``. Both daemons run below a child subreaper (``bench/reaper.py``) whose
``cutime``/``cstime`` is added: a process whose parent exits first (OpenSSH 9.2's user
process, for non-root logins) is re-parented to it instead of to PID 1, where its time would
be lost. Memory is the PSS sum over the listener and every live process below it.
``--user NAME`` logs in as a (throwaway) non-root account instead of the running user.
``--compare-tree DIR`` runs qshd and the qsh CLI from another checkout beside this one in
every part (labelled ``qsh@COMMIT``): a before-and-after in the same run.

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
import functools
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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import openssh, reaper  # noqa: E402
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
    """utime + stime + cutime + cstime: the process (all threads) and its reaped children.

    Both daemons serve a connection in processes below the listener (qshd: the monitor, the
    pre-auth process, the user's process; sshd: sshd-session, sshd-auth or a re-executed
    sshd), and each process is reaped by its own parent, so a child's CPU time, its
    children's included, reaches the listener's ``cutime``/``cstime`` once the whole chain
    has been reaped: call :func:`wait_childless` first."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK


def own_cpu_seconds(pid: int) -> float:
    """The process's own CPU time (all its threads), without its children: from
    ``/proc/PID/task/TID/schedstat`` (nanoseconds; utime + stime in ``stat`` only counts
    10 ms ticks, too coarse for a listener that should spend next to nothing)."""
    total = 0
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in threads:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def wait_childless(pid: int, timeout: float = 15.0) -> bool:
    """Wait until ``pid`` has no child left, zombies included, so that every connection's
    processes have been reaped and their CPU time counted in ``pid``'s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not openssh.children(pid):
            return True
        time.sleep(0.02)
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


def smaps_rollup(pid: int) -> dict[str, int] | None:
    """The KiB figures of ``/proc/PID/smaps_rollup`` (Rss, Pss, Private_Dirty, ...), or
    None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            values[parts[0][:-1]] = int(parts[1])
    return values


def memory(pid: int) -> Memory:
    values = smaps_rollup(pid)
    if values is None:
        return Memory()
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


class Server(Protocol):
    """What the measurements need of a private daemon (:class:`PrivateQshd`,
    :class:`openssh.PrivateSshd`)."""

    @property
    def pid(self) -> int: ...  # the listener

    def server_cpu(self) -> float: ...

    def wait_reaped(self, timeout: float = 15.0) -> bool: ...


# --- a private qshd ---------------------------------------------------------------------------


class PrivateQshd:
    """qshd in the foreground on a free loopback port, from a temporary directory: its own
    ML-DSA host key (created on first start), a user key listed in its own authorized_keys
    (``AuthorizedKeysFile``), an empty passwd file and password logins off. Logs go to
    ``qshd.log`` in that directory (shown if it fails).

    ``tree`` runs qshd and the ``qsh`` CLI from another checkout (e.g. a worktree of an older
    commit, for part 4's before-and-after); this script's own client code (parts 2 and 3)
    always comes from this checkout. ``wrapper`` is a command qshd is started under (e.g.
    ``strace -f ...``, see ``bench/login_timeline.py``): :attr:`pid` is then its child."""

    def __init__(self, tree: Path = ROOT, wrapper: list[str] | None = None,
                 login: BenchUser | None = None) -> None:
        self.tree = tree
        self.wrapper = wrapper or []
        self.login = login
        self._listener: int | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="qsh-bench-qshd-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.user = login.name if login else pwd.getpwuid(os.geteuid()).pw_name
        self.user_key_path = self.dir / "user_key"
        self.known_hosts = self.dir / "known_hosts"
        #: For every Python process started here: bytecode cached (in our directory, never in
        #: the source tree), as an installed package has it. PYTHONDONTWRITEBYTECODE (set in
        #: some sandboxes) would make each run compile qsh's own modules again.
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.env["PYTHONPYCACHEPREFIX"] = str(self.dir / "pycache")
        self.env["PYTHONPATH"] = str(tree)  # (`-m` also puts the cwd, the tree, first)
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
        line = self.user_key.public.openssh_line("qsh-bench") + "\n"
        if self.login is not None:
            authorized = self.login.install(f"qsh_authorized_keys.{self.dir.name}", line)
        else:
            authorized = self.dir / "authorized_keys"
            authorized.write_text(line)
            authorized.chmod(0o600)
        self.authorized = authorized
        passwd = self.dir / "passwd"
        passwd.touch(0o600)
        ready = self.dir / "ready"
        host_key = self.dir / "host_key"
        self.log = self.dir / "qshd.log"
        with self.log.open("wb") as log:
            qshd = [sys.executable, "-m", "qshd", "-D", "-e", "-p", "0",
                 "-o", f"ListenAddress={HOST}", "-o", f"PasswdFile={passwd}",
                 "-o", "PermitRootLogin=prohibit-password",
                 "-o", "PasswordAuthentication=no",
                 "-o", f"AuthorizedKeysFile={authorized}",
                 "-o", "MaxStartups=200",
                    "--ready-file", str(ready), "-h", str(host_key)]
            # Below a subreaper (bench/reaper.py) unless another wrapper (strace) is given.
            command = [*self.wrapper, *qshd] if self.wrapper else reaper.command(qshd)
            self.process = subprocess.Popen(command, cwd=self.tree, env=self.env,
                                            stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        while not ready.exists() or not ready.read_text().endswith("\n"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"qshd did not start: {self.log_tail()}")
            time.sleep(0.05)
        self.port = int(ready.read_text())
        self.host_public = PublicKey.load(host_key.with_name("host_key.pub"))[0]
        found = openssh.children(self.process.pid)
        if len(found) != 1:
            raise RuntimeError(f"qshd below {command[1]}: {len(found)} processes")
        self._listener = found[0]

    @property
    def pid(self) -> int:
        """The listener (the process started, or the wrapper's child; with -D it does not
        detach)."""
        assert self.process is not None
        return self._listener or self.process.pid

    def server_cpu(self) -> float:
        """The listener's CPU time and that of everything it (or the reaper) reaped: see
        :func:`cpu_seconds`; complete once :meth:`wait_reaped` returned True."""
        assert self.process is not None
        if self.wrapper:
            return cpu_seconds(self.pid)
        return reaper.server_cpu(self.process.pid, self.pid)

    def wait_reaped(self, timeout: float = 15.0) -> bool:
        """Wait until every process of past connections has ended and been reaped."""
        assert self.process is not None
        if self.wrapper:
            return wait_childless(self.pid, timeout)
        deadline = time.monotonic() + timeout
        while not reaper.settled(self.process.pid, self.pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    @property
    def label(self) -> str:
        """``qsh`` for this checkout, ``qsh@COMMIT`` for another tree."""
        if self.tree == ROOT:
            return "qsh"
        return f"qsh@{_commit(self.tree)}"

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
            if self._listener is not None:  # stop qshd itself; the wrapper follows it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._listener, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(10)
            _stop(self.process)
            self.process = None
            time.sleep(0.1)
            _kill_leftovers([p for p in leftovers if Path(f"/proc/{p}").exists()])
        if self.login is not None and hasattr(self, "authorized"):
            self.authorized.unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class BenchUser:
    """``--user NAME``: log in as NAME on every server rather than as the user running the
    benchmark (root here). sshd treats a root login differently (9.2 keeps no separate
    unprivileged process after login for root), and a real server's users are not root.
    The account is created if it does not exist (``useradd --create-home``, bash) and then
    removed with its home at the end; the authorized keys files live in its ``~/.ssh``,
    owned by it, since both daemons read them with the user's rights."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.created = False

    def __enter__(self) -> BenchUser:
        try:
            pwd.getpwnam(self.name)
        except KeyError:
            # Password "*": no password, but not locked ("!"), which sshd without PAM
            # refuses even for key logins.
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash",
                            "--password", "*", self.name], check=True)
            self.created = True
        account = pwd.getpwnam(self.name)
        self.uid, self.gid, self.home = account.pw_uid, account.pw_gid, Path(account.pw_dir)
        ssh_dir = self.home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(ssh_dir, self.uid, self.gid)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.created:  # (the daemons' close() has ended every process they started)
            done = subprocess.run(["userdel", "--remove", self.name], capture_output=True,
                                  text=True)
            if done.returncode != 0:
                print(f"userdel {self.name}: {done.stderr.strip()}", file=sys.stderr)

    def path(self, name: str) -> Path:
        return self.home / ".ssh" / name

    def install(self, name: str, content: str) -> Path:
        """A file in the user's ~/.ssh, the user's, mode 0600."""
        path = self.path(name)
        path.write_text(content)
        os.chown(path, self.uid, self.gid)
        path.chmod(0o600)
        return path


def _commit(tree: Path) -> str:
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return done.stdout.strip() or tree.name


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


def _timed(command: list[str], server: Server, into: TrueRuns,
           env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
    server.wait_reaped()
    cpu0, server0 = _children_cpu(), server.server_cpu()
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} exited {done.returncode}: "
                           f"{done.stderr.decode(errors='replace').strip()[-300:]}")
    server.wait_reaped()
    into.wall.values.append(wall)
    into.client_cpu.values.append(_children_cpu() - cpu0)
    into.server_cpu.values.append(server.server_cpu() - server0)


def cli_ready(qshd: PrivateQshd) -> str | None:
    """None once ``qsh host true`` exits 0 (this also records the host key), else why not."""
    done = subprocess.run(qshd.cli("true"), cwd=ROOT, env=qshd.env, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=120)
    if done.returncode == 0:
        return None
    return (f"qsh exited {done.returncode}: "
            f"{done.stderr.decode(errors='replace').strip()[-300:]}")


def host_true(qshds: list[PrivateQshd], sshds: list[openssh.PrivateSshd], count: int
              ) -> tuple[list[TrueRuns], list[TrueRuns]]:
    """``count`` runs each, interleaved (qsh, other qsh trees, ssh A, ssh B, qsh, ...) so
    load changes hit all of them."""
    qsh, ssh = [TrueRuns() for _ in qshds], [TrueRuns() for _ in sshds]
    for sshd in sshds:  # warm-up: page cache
        _timed(sshd.command("true"), sshd, TrueRuns())
    for qshd in qshds:
        _timed(qshd.cli("true"), qshd, TrueRuns(), qshd.env, qshd.tree)
    for _ in range(count):
        for qshd, runs in zip(qshds, qsh, strict=True):
            _timed(qshd.cli("true"), qshd, runs, qshd.env, qshd.tree)
        for sshd, runs in zip(sshds, ssh, strict=True):
            _timed(sshd.command("true"), sshd, runs)
    return qsh, ssh


def host_true_uncached(qshd: PrivateQshd, count: int) -> TrueRuns:
    """``qsh host true`` with no bytecode cache: what a source checkout run with
    PYTHONDONTWRITEBYTECODE=1 pays."""
    runs = TrueRuns()
    for _ in range(count):
        _timed(qshd.cli("true"), qshd, runs, qshd.env_uncached)
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
            _timed(command, qshd, runs, env)
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
    table = stats.stats  # type: ignore[attr-defined]  # (set by Stats, not declared)
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
    server_cpu: float  # seconds, the whole round: the listener and everything it reaped
    client_cpu: float
    listener_cpu: float  # of server_cpu, the listener's own (accept, admission, fork)

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


def qsh_round(qshd: PrivateQshd, count: int, exec_true: bool, warm_up: bool = False) -> Round:
    """``count`` concurrent logins from one client process, after every connection of the
    previous round has been reaped (its processes' CPU counted)."""
    async def run() -> Round:
        if warm_up:
            await _qsh_login(qshd, exec_true)
        qshd.wait_reaped()
        server0, own0 = qshd.server_cpu(), own_cpu_seconds(qshd.pid)
        client0 = time.process_time()
        start = time.perf_counter()
        await asyncio.gather(*(_qsh_login(qshd, exec_true) for _ in range(count)))
        seconds = time.perf_counter() - start
        client = time.process_time() - client0
        if not qshd.wait_reaped():
            raise RuntimeError("qshd's connection processes did not end")
        return Round(seconds, qshd.server_cpu() - server0, client,
                     own_cpu_seconds(qshd.pid) - own0)

    return asyncio.run(run())


def ssh_round(sshd: openssh.PrivateSshd, count: int, warm_up: bool = False) -> Round:
    """``count`` parallel ``ssh host true`` processes."""
    if warm_up:
        subprocess.run(sshd.command("true"), stdin=subprocess.DEVNULL, check=True)
    sshd.wait_reaped()
    server0, own0 = sshd.server_cpu(), own_cpu_seconds(sshd.pid)
    client0 = _children_cpu()
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
    if not sshd.wait_reaped():
        raise RuntimeError("sshd's connection processes did not end")
    return Round(seconds, sshd.server_cpu() - server0, _children_cpu() - client0,
                 own_cpu_seconds(sshd.pid) - own0)


def parallel_logins(qshds: list[PrivateQshd], sshds: list[openssh.PrivateSshd], count: int,
                    rounds: int) -> dict[str, list[Round]]:
    """Rounds interleaved: each qshd's login and login + true, each sshd, then again."""
    results: dict[str, list[Round]] = {}
    for qshd in qshds:
        results[f"{qshd.label} login"] = []
        results[f"{qshd.label} login + true"] = []
    for sshd in sshds:
        results[f"{_short(sshd)} host true"] = []
    for number in range(rounds):
        first = number == 0
        for qshd in qshds:
            results[f"{qshd.label} login"].append(qsh_round(qshd, count, False, first))
            results[f"{qshd.label} login + true"].append(qsh_round(qshd, count, True, first))
        for sshd in sshds:
            results[f"{_short(sshd)} host true"].append(ssh_round(sshd, count, first))
    return results


def _short(sshd: openssh.PrivateSshd) -> str:
    """``ssh 9.2`` / ``ssh 10.5``: which OpenSSH, in a table."""
    major, minor = sshd.release()
    return f"ssh {major}.{minor}"


# --- 3. idle interactive sessions ---------------------------------------------------------------


@dataclass
class Held:
    """What the server side holds for K idle sessions (all PSS sums, KiB)."""

    fresh: Memory  # the listener before its first session
    warm: Memory  # the same after one warm-up session came and went
    daemon: Memory  # the same while the K sessions are held
    helpers: Memory  # the per-connection server processes (qshd: monitor + user's process;
    #                  sshd: sshd-session or sshd, twice, sshd-auth while it lives)
    shells: Memory  # the login shells (and anything they run)

    @property
    def total(self) -> Memory:
        """Everything the sessions cost over the daemon as it was started."""
        return self.daemon - self.fresh + self.helpers + self.shells

    @property
    def marginal(self) -> Memory:
        """The same over the daemon after one session (one-time costs left out)."""
        return self.daemon - self.warm + self.helpers + self.shells


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return "?"


#: Process names of OpenSSH's per-connection processes (9.x re-executes ``sshd``; 10.x runs
#: ``sshd-session`` and, before login, ``sshd-auth``).
SSHD_PROCESSES = ("sshd", "sshd-session", "sshd-auth")


def _measure_tree(daemon_pid: int, fresh: Memory, warm: Memory) -> Held:
    """Every process below the listener: a server process if it runs the listener's program
    (qshd's monitor and user's process are forks of the listener) or is one of sshd's;
    everything else (the login shells and what they run) counts as the shells."""
    daemon = memory(daemon_pid)
    server_exe = _exe(daemon_pid)
    helpers, shells = Memory(), Memory()
    for pid in descendants(daemon_pid):
        if _exe(pid) == server_exe or comm(pid) in SSHD_PROCESSES:
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
        qshd.wait_reaped()
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
        qshd.wait_reaped()
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
    sshd.wait_reaped()
    fresh = memory(sshd.pid)  # (the listener has served other connections: it keeps nothing)
    clients: list[subprocess.Popen[bytes]] = []
    try:
        _ssh_shell(sshd, clients)  # warm-up session, as for qshd
        _stop(clients.pop())
        sshd.wait_reaped()
        time.sleep(settle)
        warm = memory(sshd.pid)
        for _ in range(count):
            _ssh_shell(sshd, clients)
        time.sleep(settle)
        return _measure_tree(sshd.pid, fresh, warm)
    finally:
        for client in clients:
            _stop(client)
        sshd.wait_reaped()


# --- 4. 1 GiB through `host 'cat > /dev/null'` -------------------------------------------------


@dataclass
class Stream:
    """One ``host 'cat > /dev/null' < data`` with the real CLI, session setup included."""

    seconds: float
    client_cpu: float
    server_cpu: float  # the listener and everything it reaped (connection processes, cat)
    listener_before: float  # the listener's own CPU time before the transfer (accept, fork)
    listener_after: float  # the same once the transfer ended and was reaped
    listener_moving: float  # the listener's own CPU while `cat` ran (the data phase)
    moving_seconds: float  # how long `cat` was seen running


class _CatWatch:
    """Samples the listener's own CPU time while the remote ``cat`` runs below it: first
    and last sight of a ``cat`` among its descendants, every 10 ms. The time between them
    is the data phase as the server sees it (session set-up and teardown left out)."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.first: tuple[float, float] | None = None  # (monotonic, listener CPU)
        self.last: tuple[float, float] | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.01):
            if any(comm(pid) == "cat" for pid in descendants(self.server_pid)):
                sample = (time.monotonic(), own_cpu_seconds(self.server_pid))
                self.first = self.first or sample
                self.last = sample

    def result(self) -> tuple[float, float]:
        self.stop.set()
        self.thread.join(5)
        if self.first is None or self.last is None:
            return 0.0, 0.0
        return self.last[1] - self.first[1], self.last[0] - self.first[0]


def _stream(command: list[str], server: Server, data: Path, cwd: Path,
            env: dict[str, str] | None) -> Stream:
    if not server.wait_reaped():
        raise RuntimeError("the server still has connection processes before a transfer")
    client0, server0 = _children_cpu(), server.server_cpu()
    own0 = own_cpu_seconds(server.pid)
    watch = _CatWatch(server.pid)
    start = time.perf_counter()
    with data.open("rb") as stdin:
        done = subprocess.run(command, cwd=cwd, env=env, stdin=stdin,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900)
    seconds = time.perf_counter() - start
    moving, moving_seconds = watch.result()
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} exited {done.returncode}: "
                           f"{done.stderr.decode(errors='replace').strip()[-300:]}")
    if not server.wait_reaped():
        raise RuntimeError("the server's connection processes did not end")
    return Stream(seconds, _children_cpu() - client0, server.server_cpu() - server0,
                  own0, own_cpu_seconds(server.pid), moving, moving_seconds)


def make_data(nbytes: int) -> Path:
    """``nbytes`` of random data in /dev/shm (no disk on either side of the transfer)."""
    shm = Path("/dev/shm")
    data_dir = Path(tempfile.mkdtemp(prefix="qsh-bench-data-",
                                     dir=shm if shm.is_dir() else None))
    data = data_dir / "data"
    block = os.urandom(1 << 20)
    with data.open("wb") as f:
        for _ in range(nbytes // len(block)):
            f.write(block)
        f.write(block[:nbytes % len(block)])
    return data


def streams(qshds: list[PrivateQshd], sshds: list[openssh.PrivateSshd], data: Path,
            runs: int) -> dict[str, list[Stream]]:
    """``runs`` transfers each, interleaved (every qshd, every sshd, then again)."""
    remote = "cat > /dev/null"
    results: dict[str, list[Stream]] = {}
    for qshd in qshds:
        results[qshd.label] = []
        _timed(qshd.cli("true"), qshd, TrueRuns(), qshd.env, qshd.tree)  # warm-up
    for sshd in sshds:
        results[_short(sshd)] = []
    for _ in range(runs):
        for qshd in qshds:
            results[qshd.label].append(_stream(qshd.cli(remote), qshd, data, qshd.tree,
                                               qshd.env))
        for sshd in sshds:
            results[_short(sshd)].append(_stream(sshd.command(remote), sshd, data, ROOT,
                                                 None))
    return results


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


class Report:
    """The summary table and the verdicts, filled in part by part."""

    def __init__(self) -> None:
        self.summary: list[str] = []
        self.verdicts: list[str] = []

    def row(self, what: str, qsh: str, ssh: str, ratio: float, target: str) -> None:
        self.summary.append(f"{what:34} {qsh:>17} {ssh:>17} {ratio:6.2f}   {target}")


def part1(qshds: list[PrivateQshd], sshds: list[openssh.PrivateSshd], runs: int,
          args: argparse.Namespace, report: Report) -> None:
    _section(f"1. `qsh host true` vs `ssh host true`: {runs} runs each, interleaved; "
             "real CLIs as subprocesses")
    qshd = qshds[0]
    problem = cli_ready(qshd)
    if problem is not None:
        print(f"    qsh CLI not ready, part 1 skipped: {problem}")
        return
    qsh_all, ssh = _timed_step("host true", lambda: host_true(qshds, sshds, runs))
    qsh = qsh_all[0]
    rows = [*((q.label, t) for q, t in zip(qshds, qsh_all, strict=True)),
            *((_short(d), t) for d, t in zip(sshds, ssh, strict=True))]
    for name, r in rows:
        print(f"    {name + ' host true:':22} median {_ms(r.wall.median):>6}, p90 "
              f"{_ms(r.wall.p90):>6}; CPU per run: client {_ms(r.client_cpu.median):>6}, "
              f"server {_ms1(r.server_cpu.median)}")
    for other, runs_other in zip(qshds[1:], qsh_all[1:], strict=True):
        ratio = qsh.wall.median / runs_other.wall.median
        print(f"    ratio qsh/{other.label} (median): {ratio:.2f}; server CPU per run "
              f"{qsh.server_cpu.median / runs_other.server_cpu.median:.2f}")
        report.row(f"1. host true vs {other.label}",
                   f"{_ms(qsh.wall.median)} ({_ms(qsh.wall.p90)})",
                   f"{_ms(runs_other.wall.median)} ({_ms(runs_other.wall.p90)})", ratio, "")
    for sshd, runs_ssh in zip(sshds, ssh, strict=True):
        ratio = qsh.wall.median / runs_ssh.wall.median
        print(f"    ratio qsh/{_short(sshd)} (median): {ratio:.2f}  (p90: "
              f"{qsh.wall.p90 / runs_ssh.wall.p90:.2f}); server CPU per run "
              f"{qsh.server_cpu.median / runs_ssh.server_cpu.median:.2f}")
        report.row(f"1. host true vs {_short(sshd)}, median",
                   f"{_ms(qsh.wall.median)} ({_ms(qsh.wall.p90)})",
                   f"{_ms(runs_ssh.wall.median)} ({_ms(runs_ssh.wall.p90)})", ratio, "<= 0.7")
        report.verdicts.append(f"1. qsh host true <= 0.7x {_short(sshd)} host true: "
                               f"{_verdict(ratio <= 0.7)} ({ratio:.2f}x)")
    ratio = qsh.wall.median / ssh[0].wall.median
    print("    where `qsh host true` spends its time (phases timed inside the client; median "
          "of runs;\n    this checkout's client against each qshd, so the network phases show "
          "the server's part):")
    tables = [_timed_step("breakdown", functools.partial(phase_breakdown, q, max(5, runs // 2)))
              for q in qshds]
    print(f"      {'':48} " + " ".join(f"{q.label:>14}" for q in qshds))
    for number, (phase, _) in enumerate(tables[0]):
        print(f"      {phase:48} " + " ".join(f"{t[number][1]:11.1f} ms" for t in tables))
    print("    imports by library (-X importtime self times; importtime itself inflates them):")
    for name, ms in import_groups(qshd):
        print(f"      {name:48} {ms:7.1f} ms")
    uncached = host_true_uncached(qshd, max(3, runs // 2))
    print(f"    with PYTHONDONTWRITEBYTECODE=1 as this sandbox sets it (qsh's own modules "
          f"compiled at each start; {len(uncached.wall.values)} runs): median "
          f"{_ms(uncached.wall.median)} ({uncached.wall.median / ssh[0].wall.median:.2f}x "
          f"{_short(sshds[0])})")
    if args.what_if:
        print("    what if (the same client, one change applied by a wrapper):")
        variants = _timed_step("what-if", lambda: what_if(qshd, runs))
        # A change's effect: against the wrapper as is (same harness, same minutes); the
        # projected ratio scales the measured one by it, as the load may have changed since.
        base = variants["as is (through the wrapper)"].wall.median
        for name, r in variants.items():
            line = f"      {name:40} median {_ms(r.wall.median):>7}, p90 {_ms(r.wall.p90):>7}"
            if name.startswith(("python -m", "as is")):
                print(line)
                continue
            print(f"{line}; {1000 * (r.wall.median - base):+4.0f} ms "
                  f"({r.wall.median / base - 1:+4.0%}) -> qsh/{_short(sshds[0])} "
                  f"~{ratio * r.wall.median / base:.2f}")
    if args.profile:
        print("    cProfile, top functions by self time (one run; cProfile slows Python code, "
              "not C):")
        for row in cprofile_top(qshd):
            print(f"      {row}")


def part2(qshds: list[PrivateQshd], sshds: list[openssh.PrivateSshd], n: int, rounds: int,
          report: Report) -> None:
    _section(f"2. {n} parallel logins, {rounds} rounds, interleaved (best and median)")
    results = _timed_step("parallel logins", lambda: parallel_logins(qshds, sshds, n, rounds))
    for name, rs in results.items():
        rates = [r.rate(n) for r in rs]
        print(f"    {name:26} {max(rates):6.1f} logins/s best, {statistics.median(rates):6.1f} "
              f"median; server CPU per login "
              f"{_ms1(statistics.median(r.server_cpu for r in rs) / n)} (listener's own "
              f"{_ms1(statistics.median(r.listener_cpu for r in rs) / n)}), client "
              f"{_ms1(statistics.median(r.client_cpu for r in rs) / n)}")
    qsh_rate = statistics.median(r.rate(n) for r in results["qsh login + true"])
    login_rate = statistics.median(r.rate(n) for r in results["qsh login"])
    qsh_cpu = statistics.median(r.server_cpu for r in results["qsh login + true"]) / n
    for other in qshds[1:]:
        other_cpu = statistics.median(r.server_cpu
                                      for r in results[f"{other.label} login + true"]) / n
        print(f"    vs {other.label}: server CPU per login + `true` qsh {_ms1(qsh_cpu)}, "
              f"{other.label} {_ms1(other_cpu)}: {qsh_cpu / other_cpu:.2f}x")
        report.row(f"2. server CPU/login vs {other.label}", _ms1(qsh_cpu), _ms1(other_cpu),
                   qsh_cpu / other_cpu, "")
    for sshd in sshds:
        name = _short(sshd)
        ssh_rate = statistics.median(r.rate(n) for r in results[f"{name} host true"])
        ssh_cpu = statistics.median(r.server_cpu for r in results[f"{name} host true"]) / n
        print(f"    vs {name}: logins/s (median) login + true {qsh_rate / ssh_rate:.2f}x, login "
              f"only {login_rate / ssh_rate:.2f}x; server CPU per login + `true`: qshd "
              f"{_ms1(qsh_cpu)} = {1 / qsh_cpu:.0f}/s per core, sshd {_ms1(ssh_cpu)} = "
              f"{1 / ssh_cpu:.0f}/s per core; ssh/qsh {ssh_cpu / qsh_cpu:.2f}")
        report.row(f"2. {n} parallel vs {name}, logins/s", f"{qsh_rate:.1f}",
                   f"{ssh_rate:.1f}", qsh_rate / ssh_rate, ">= 3")
        report.row("   server CPU per login (ssh/qsh)", _ms1(qsh_cpu), _ms1(ssh_cpu),
                   ssh_cpu / qsh_cpu, ">= 3")
        report.verdicts.append(f"2. qshd CPU per login >= 3x better than {name}'s: "
                               f"{_verdict(ssh_cpu / qsh_cpu >= 3)} ({ssh_cpu / qsh_cpu:.2f}x; "
                               f"{qsh_rate / ssh_rate:.2f}x by logins/s)")
    print(f"    what the wall-clock figures include: qsh = ONE Python client process with {n} "
          f"concurrent\n    connections; ssh = {n} C client processes; both share the "
          "machine's cores with their\n    server. Server CPU = the listener's own CPU plus "
          "everything it reaped once all of a\n    round's connection processes had ended: "
          "qshd's monitors, pre-auth and user's processes,\n    sshd's sshd-session/sshd-auth "
          "(or re-executed sshd) processes, the shells running `true`.")


def part3(trees: list[Path], sshds: list[openssh.PrivateSshd], k: int,
          report: Report, login: BenchUser | None = None) -> None:
    _section(f"3. {k} idle interactive sessions (PTY + login shell) held on each server: PSS "
             "of the server side")
    settle = 1.0
    held: list[tuple[str, Held]] = []
    for tree in [ROOT, *trees]:
        # A fresh daemon: the one above has served hundreds of logins.
        with PrivateQshd(tree, login=login) as fresh:
            held.append((fresh.label.replace("qsh", "qshd"),
                         _timed_step("qsh sessions", functools.partial(qsh_idle, fresh, k,
                                                                        settle))))
    held_qsh = held[0][1]
    qsh_count = len(held)
    for sshd in sshds:
        held.append((_short(sshd).replace("ssh", "sshd"),
                     _timed_step("ssh sessions", functools.partial(ssh_idle, sshd, k, settle))))
    for name, h in held:
        total, marginal = h.total, h.marginal
        print(f"    {name + ':':10} {total.pss / k:6.0f} KiB PSS per session "
              f"({total.private / k:.0f} KiB private); the listener {h.fresh.pss} KiB idle, "
              f"{h.daemon.pss - h.fresh.pss:+d} KiB with the sessions; "
              f"{h.helpers.processes} connection processes {h.helpers.pss} KiB "
              f"({h.helpers.private} private); {h.shells.processes} shells {h.shells.pss} KiB")
        print(f"               after one warm-up session: the listener "
              f"{h.warm.pss - h.fresh.pss:+d} KiB for good; then {marginal.pss / k:.0f} KiB per "
              f"session, {(marginal.pss - h.shells.pss) / k:.1f} KiB of it outside the shell")
    per_qsh = held_qsh.total.pss / k
    for name, h in held[1:qsh_count]:
        print(f"    ratio qshd/{name} per session: {per_qsh / (h.total.pss / k):.2f}")
        report.row(f"3. idle session PSS vs {name}", f"{per_qsh:.0f} KiB",
                   f"{h.total.pss / k:.0f} KiB", per_qsh / (h.total.pss / k), "")
    for sshd, (name, h) in zip(sshds, held[qsh_count:], strict=True):
        per_ssh = h.total.pss / k
        ratio = per_qsh / per_ssh
        print(f"    ratio qshd/{name} per session: {ratio:.2f} (after a warm-up session "
              f"{held_qsh.marginal.pss / h.marginal.pss:.2f}); without the shells: "
              f"{(held_qsh.total.pss - held_qsh.shells.pss) / k:.0f} KiB vs "
              f"{(h.total.pss - h.shells.pss) / k:.0f} KiB")
        report.row(f"3. idle session PSS vs {_short(sshd)}", f"{per_qsh:.0f} KiB",
                   f"{per_ssh:.0f} KiB", ratio, "<= 2")
        report.verdicts.append(f"3. idle session PSS <= 2x {name}'s: {_verdict(ratio <= 2)} "
                               f"({ratio:.2f}x)")


def part4(qshds: list[PrivateQshd], sshds: list[openssh.PrivateSshd], nbytes: int,
          runs: int, report: Report) -> None:
    size = f"{nbytes / 2**30:g} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"
    _section(f"4. {size} through `host 'cat > /dev/null'` (real CLIs, default ciphers, session "
             f"setup included), {runs} runs each, interleaved")
    qshd = qshds[0]
    data = make_data(nbytes)
    try:
        results = _timed_step("streams", lambda: streams(qshds, sshds, data, runs))
    finally:
        data.unlink(missing_ok=True)
        data.parent.rmdir()
    gib = nbytes / 2**30
    for name, rs in results.items():
        rates = [nbytes / r.seconds / 1e9 for r in rs]
        listener = max(r.listener_after - r.listener_before for r in rs)
        moving = max(r.listener_moving for r in rs)
        print(f"    {name:16} median {statistics.median(r.seconds for r in rs):6.2f} s = "
              f"{statistics.median(rates):.2f} GB/s (best {max(rates):.2f}); CPU/GiB client "
              f"{statistics.median(r.client_cpu for r in rs) / gib:.2f} s, server "
              f"{statistics.median(r.server_cpu for r in rs) / gib:.2f} s")
        phase = statistics.median(r.moving_seconds for r in rs)
        print(f"    {'':16} data phase (`cat` running, seen by the server) median {phase:.2f} s"
              f" = {nbytes / phase / 1e9:.2f} GB/s; the rest (session set-up, teardown) "
              f"{statistics.median(r.seconds - r.moving_seconds for r in rs):.2f} s")
        print(f"    {'':16} the listener's own CPU: {1000 * rs[0].listener_before:.0f} ms "
              f"before the first transfer; at most +{1000 * listener:.2f} ms over a transfer "
              f"(accept, fork and reap included), +{1000 * moving:.3f} ms while `cat` ran")
    qsh_time = statistics.median(r.seconds for r in results[qshd.label])
    qsh_phase = statistics.median(r.moving_seconds for r in results[qshd.label])
    for name, rs in results.items():
        if name == qshd.label:
            continue
        other = statistics.median(r.seconds for r in rs)
        other_phase = statistics.median(r.moving_seconds for r in rs)
        print(f"    {qshd.label}/{name}: time {qsh_time / other:.2f}, data phase "
              f"{qsh_phase / other_phase:.2f}")
        target = "<= 1 (before)" if name.startswith("qsh") else ""
        report.row(f"4. {size} cat, median s vs {name}", f"{qsh_time:.2f} s", f"{other:.2f} s",
                   qsh_time / other, target)
        report.row("   data phase (cat running)", f"{qsh_phase:.2f} s", f"{other_phase:.2f} s",
                   qsh_phase / other_phase, target)
        if name.startswith("qsh"):
            report.verdicts.append(
                f"4. {size} no slower than {name}: {_verdict(qsh_time <= other * 1.05)} "
                f"({qsh_time / other:.2f}x the time, set-up included; data phase "
                f"{qsh_phase / other_phase:.2f}x; 5% allowed for noise)")
    flat = max(r.listener_moving for r in results[qshd.label])
    whole = max(r.listener_after - r.listener_before for r in results[qshd.label])
    report.verdicts.append(f"4. the listener's own CPU flat while a connection moves {size}: "
                           f"{_verdict(flat <= 0.001)} (+{1000 * flat:.3f} ms while `cat` "
                           f"ran; +{1000 * whole:.2f} ms with the accept, fork and reap)")


def _spec(value: str) -> Path | None:
    """``--openssh`` value: ``system`` is the distribution's, anything else a prefix."""
    return None if value == "system" else Path(value).resolve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=8 runs, 2 rounds of logins")
    parser.add_argument("--runs", type=int, help="`host true` runs each (default 20, quick 8)")
    parser.add_argument("--parallel", type=int, default=50, help="parallel logins (50)")
    parser.add_argument("--rounds", type=int, help="rounds of parallel logins (3, quick 2)")
    parser.add_argument("--sessions", type=int, default=10, help="idle sessions held (10)")
    parser.add_argument("--parts", default="1234", help="which parts to run, e.g. 13")
    parser.add_argument("--openssh", action="append", metavar="system|PREFIX",
                        help="an OpenSSH to compare with, repeatable: `system` (Debian's "
                             "/usr/sbin/sshd and ssh) or a directory with ssh, sshd, "
                             "sshd-session, sshd-auth, ssh-keygen (build-openssh.sh's "
                             "PREFIX); default: system")
    parser.add_argument("--compare-tree", action="append", type=Path, default=[],
                        metavar="DIR", help="also run qsh/qshd from this checkout (e.g. a "
                                            "worktree of an older commit) in every part, as "
                                            "qsh@COMMIT; repeatable")
    parser.add_argument("--user", metavar="NAME",
                        help="log in as NAME everywhere (created, and removed at the end, "
                             "if it does not exist) instead of as the user running this")
    parser.add_argument("--bytes", type=int, default=2**30, help="part 4's size (1 GiB)")
    parser.add_argument("--stream-runs", type=int, help="part 4's runs each (3, quick 2)")
    parser.add_argument("--profile", action="store_true",
                        help="also print cProfile's top functions of one `qsh host true`")
    parser.add_argument("--what-if", action="store_true",
                        help="also time `qsh host true` with cheap changes applied from outside")
    args = parser.parse_args()
    runs = args.runs or (8 if args.quick else 20)
    rounds = args.rounds or (2 if args.quick else 3)
    stream_runs = args.stream_runs or (2 if args.quick else 3)
    prefixes = [_spec(v) for v in (args.openssh or ["system"])]
    for prefix in prefixes:
        why = openssh.available(prefix)
        if why is not None:
            sys.exit(f"bench/sessions.py needs OpenSSH for its baseline: {why}.\n"
                     f"    {openssh.INSTALL_HINT}" + (
                         "" if prefix is None else
                         f"\n    /work/shared/vendor/build-openssh.sh {prefix}"))
    load0 = os.getloadavg()
    print(f"qsh sessions benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"load average {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f} at start")
    report = Report()
    with _terminate_as_interrupt(), contextlib.ExitStack() as stack:
        login = stack.enter_context(BenchUser(args.user)) if args.user else None
        qshd = stack.enter_context(PrivateQshd(login=login))
        qshds = [qshd, *(stack.enter_context(PrivateQshd(tree.resolve(), login=login))
                         for tree in args.compare_tree)]
        sshds = [stack.enter_context(openssh.PrivateSshd(
                     SSHD_EXTRA_CONFIG, prefix, user=login.name if login else None,
                     authorized_keys=login.path(f"ssh_authorized_keys.{number}")
                     if login else None))
                 for number, prefix in enumerate(prefixes)]
        for q in qshds:
            print(f"{q.label}: qshd {_commit(q.tree)} from {q.tree} on {HOST}:{q.port} "
                  f"(listener pid {q.pid})")
        print(f"login as {qshd.user} with a user key on every server")
        for sshd in sshds:
            print(f"{_short(sshd)}: {sshd.version} on {HOST}:{sshd.port} (pid {sshd.pid}, "
                  f"SetEnv SHLVL=1)")
        if "1" in args.parts:
            part1(qshds, sshds, runs, args, report)
        if "2" in args.parts:
            part2(qshds, sshds, args.parallel, rounds, report)
        if "3" in args.parts:
            part3([q.tree for q in qshds[1:]], sshds, args.sessions, report, login)
        if "4" in args.parts:
            part4(qshds, sshds, args.bytes, stream_runs, report)
    load1 = os.getloadavg()
    _section(f"Summary {'':26} {'qsh':>17} {'OpenSSH / other':>17} {'ratio':>6}   target")
    for line in report.summary:
        print(f"  {line}")
    for line in report.verdicts:
        print(f"  {line}")
    print(f"  load average {load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f} at the end "
          f"({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
