#!/usr/bin/env python3
"""What one run of the client costs, beside ssh (issue 18): CPU, wall time and memory.

    python bench/startup.py             # 15 interleaved runs of each command, 3 rounds of 100
    python bench/startup.py --quick     # 7 runs, 1 round
    python bench/startup.py --no-logins --no-profile
    python bench/startup.py --before /tmp/old   # beside another checkout: before and after

Every command is a real process started by this script and reaped with ``os.wait4``: its CPU
(user + system, its children's included) comes from the kernel, its peak RSS from GNU time's
``%M`` (``ru_maxrss``, the command started from a small process: see :data:`TIME`), the wall
time from spawn to reap. Measured, interleaved (one run of each, then the
next round, so load changes hit all alike), medians:

* the interpreter's floors: ``python -c pass`` (this machine's site-packages: its ``.pth``
  files run at every start), ``python -I -S -c pass`` (no site at all), and ``-c pass`` in
  the clean venv below; the dependencies' floor: the venv's python importing only what a
  key login needs of cryptography and pycryptodome (:data:`CRYPTO_FLOOR`), then that and
  asyncio -- what any client built on them pays before its first line of its own;
* ``qsh --help``, ``qsh host true`` and ``qcp FILE host:`` against a private qshd (from
  ``bench/sessions.py``) on 127.0.0.1, each two ways: ``python -m qsh`` from the tree
  (``PYTHONPATH``, bytecode cached) and the installed console script of a throwaway venv in
  /tmp (``pip install --no-deps`` of the tree: a wheel, byte-compiled as pip installs it),
  and ``qsh host true`` also from a second venv with ``pip install -e`` (CI's way).
  The venv has no ``--system-site-packages``; the dependencies' directory is added to its
  path by a plain ``.pth`` line, so the machine's own ``.pth`` hooks (a sandbox's certifi
  patch, an editable install of another checkout) do not run in it, as on a user's machine.
  ``--venv-system-site`` makes it a ``--system-site-packages`` venv instead;
* ``ssh host true`` of OpenSSH 9.2 (``/usr/bin/ssh``) and 10.5 (``--openssh-prefix``) against
  private sshds (``bench/openssh.py``), key login on both sides.

Then: the peak PSS and RSS of a client holding a session (``host 'sleep 1'``, sampled from
``/proc/PID/smaps_rollup``); 100 logins running ``true``, 10 at a time (a pool of 10 processes
kept full), logins per second and the clients' CPU, qsh beside ssh; ``-X importtime`` of the
installed ``qsh host true`` (top modules by cumulative time, top-level imports) and a cProfile
of it (top functions by cumulative time).

Nothing touches the system sshd or port 22. Benchmarks are never unit tests: nothing here
asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pstats
import shutil
import site
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import openssh  # noqa: E402
from bench.sessions import (  # noqa: E402
    SSHD_EXTRA_CONFIG,
    PrivateQshd,
    _short,
    smaps_rollup,
)

PY = sys.executable


@dataclass
class Samples:
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)  # KiB

    def add(self, cpu: float, wall: float, rss: int) -> None:
        self.cpu.append(cpu)
        self.wall.append(wall)
        self.rss.append(rss)


#: The dependencies' floor (issue 18): what a key login imports from the two crypto libraries
#: the project is built on, loaded as qsh loads them (pycryptodome on its ctypes backend,
#: common/crypto/pycryptodome.py) and nothing of qsh's own: cryptography for X25519, the
#: AEADs and ML-DSA verification, pycryptodome for ML-KEM, ML-DSA signing and KMAC.
CRYPTO_FLOOR = (
    "import common.crypto.pycryptodome as p; p.load()\n"
    "from cryptography.exceptions import InvalidSignature, InvalidTag\n"
    "from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem, x25519\n"
    "from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305\n"
    "import cryptography.hazmat.backends.openssl.backend\n"
    "from Crypto.PublicKey import MLKEM, MLDSA\n"
    "from Crypto.Signature import mldsa as signing\n"
    "from Crypto.Hash.keccak import _raw_keccak_lib\n")
#: ... and the event loop, as a fresh run imports it (no ssl: qsh/run.py marks it absent).
ASYNCIO_FLOOR = "import sys; sys.modules['ssl'] = None; import asyncio\n"


def spawn(command: list[str], env: dict[str, str] | None = None) -> int:
    stdin = os.open(os.devnull, os.O_RDONLY)
    stdout = os.open(os.devnull, os.O_WRONLY)
    try:
        actions = [(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, stdout, 1)]
        return os.posix_spawn(command[0], command, env if env is not None else os.environ,
                              file_actions=actions)
    finally:
        os.close(stdin)
        os.close(stdout)


#: Started in between for the peak RSS: a child's ``ru_maxrss`` counts the memory of the
#: process that forked it until it execs (this script's ~40 MB); GNU time is ~2 MB, and its
#: CPU (well under a millisecond) is counted with the command's.
TIME = "/usr/bin/time"


def run_once(command: list[str], env: dict[str, str] | None = None
             ) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, peak RSS KiB) of one run; raises if it fails."""
    with tempfile.NamedTemporaryFile(prefix="qsh-bench-rss-") as out:
        start = time.perf_counter()
        pid = spawn([TIME, "-q", "-f", "%M", "-o", out.name, *command], env)
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{' '.join(command)} exited "
                               f"{os.waitstatus_to_exitcode(status)}")
        rss = int(Path(out.name).read_text().split()[-1])
    return usage.ru_utime + usage.ru_stime, wall, rss


# --- the installed client -------------------------------------------------------------------


#: The console script pip writes for an entry point ``module:function`` (pip 23's, from
#: distlib): the entry point's module imported after ``re`` and ``sys``. Used only when pip
#: cannot build the tree (no network for its build dependencies).
CONSOLE_SCRIPT = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from {module} import {function}
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit({function}())
"""

#: How the tree is installed: what users get, and what CI (and the README's test line) does.
KINDS = {"installed": [], "editable": ["-e"]}


@contextlib.contextmanager
def installed(tree: Path, system_site: bool, kind: str = "installed") -> Iterator[Path]:
    """A throwaway venv in /tmp with ``tree`` installed by pip (``pip install --no-deps``,
    ``-e`` for ``kind="editable"``: setuptools' editable finder, a ``.pth`` hook that runs
    at every start of the venv's interpreter), byte-compiled as pip installs it, with pip's
    console scripts. The dependencies come from this interpreter's site-packages through a
    plain ``.pth`` line (see the module's docstring). If pip cannot build (its isolated
    build fetches setuptools), the packages are copied in and byte-compiled, with scripts in
    pip's shape, and a line says so. Yields the venv's bin directory."""
    venv = Path(tempfile.mkdtemp(prefix=f"qsh-bench-venv-{kind}-"))
    try:
        flags = ["--system-site-packages"] if system_site else []
        subprocess.run([PY, "-m", "venv", *flags, str(venv)], check=True)
        py = venv / "bin" / "python"
        purelib = Path(subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True).stdout.strip())
        if not system_site:  # the dependencies, without the machine's .pth hooks
            (purelib / "zz-deps.pth").write_text(site.getsitepackages()[0] + "\n")
        source = tree
        if kind == "installed":  # pip builds in the tree: a copy, so that it stays clean
            source = venv / "src"
            shutil.copytree(tree, source, ignore=shutil.ignore_patterns(
                "__pycache__", ".git", "build", "*.egg-info", ".*cache", ".hypothesis"))
        env = {k: v for k, v in os.environ.items() if k not in (
            "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
        done = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps",
                               "--disable-pip-version-check", *KINDS[kind], str(source)],
                              env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"pip install {' '.join(KINDS[kind])} failed ({done.stderr.strip()[-200:]});"
                  " copying the tree in instead")
            _copy_in(tree, py, purelib, venv)
        yield venv / "bin"
    finally:
        shutil.rmtree(venv, ignore_errors=True)


def _copy_in(tree: Path, py: Path, purelib: Path, venv: Path) -> None:
    import tomllib

    project = tomllib.loads((tree / "pyproject.toml").read_text())
    for package in ("common", "qsh", "qshd", "qcp", "qpasswd"):
        shutil.copytree(tree / package, purelib / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([py, "-m", "compileall", "-q", str(purelib)], check=True)
    for name, target in project["project"]["scripts"].items():
        module, function = target.split(":")
        script = venv / "bin" / name
        script.write_text(CONSOLE_SCRIPT.format(python=py, module=module, function=function))
        script.chmod(0o755)


# --- measurements ---------------------------------------------------------------------------


def ssh_command(sshd: openssh.PrivateSshd, remote: str, known_hosts: Path) -> list[str]:
    """``sshd.command(remote)`` with a known_hosts file of our own, so that nothing ssh
    writes can land in ``/dev/null``."""
    return [f"UserKnownHostsFile={known_hosts}" if arg == "UserKnownHostsFile=/dev/null"
            else arg for arg in sshd.command(remote)]


def interleaved(commands: dict[str, tuple[list[str], dict[str, str] | None]], runs: int
                ) -> dict[str, Samples]:
    results = {name: Samples() for name in commands}
    for round_number in range(runs + 1):
        for name, (command, env) in commands.items():
            cpu, wall, rss = run_once(command, env)
            if round_number:  # round 0 warms the page cache
                results[name].add(cpu, wall, rss)
    return results


def _pss_rss(pid: int) -> tuple[int, int]:
    values = smaps_rollup(pid) or {}
    return values.get("Pss", 0), values.get("Rss", 0)


def held_memory(command: list[str], env: dict[str, str] | None) -> tuple[int, int]:
    """Peak (PSS, RSS) KiB of a client during ``host 'sleep 1'``, sampled every 20 ms."""
    pid = spawn(command, env)
    peak_pss = peak_rss = 0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        pss, rss = _pss_rss(pid)
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(0.02)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{command[0]} exited {os.waitstatus_to_exitcode(status)}")
    return peak_pss, peak_rss


def logins(command: list[str], env: dict[str, str] | None, total: int = 100,
           parallel: int = 10) -> tuple[float, float]:
    """``total`` runs, ``parallel`` at a time: (logins per second, client CPU per login)."""
    running: set[int] = set()
    started = failed = 0
    cpu = 0.0
    start = time.perf_counter()
    while started < total or running:
        while started < total and len(running) < parallel:
            running.add(spawn(command, env))
            started += 1
        pid, status, usage = os.wait4(-1, 0)
        if pid in running:
            running.discard(pid)
            cpu += usage.ru_utime + usage.ru_stime
            failed += os.waitstatus_to_exitcode(status) != 0
    seconds = time.perf_counter() - start
    if failed:
        raise RuntimeError(f"{failed} of {total} runs of {command[0]} failed")
    return total / seconds, cpu / total


def importtime(command: list[str], env: dict[str, str] | None, top: int = 25) -> list[str]:
    done = subprocess.run([command[0], "-X", "importtime", *command[1:]], env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cumulative, name = line[len("import time:"):].split("|")
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        rows.append((int(cumulative), int(self_us), depth, name.strip()))
    out = [f"{len(rows)} modules imported, {sum(r[1] for r in rows) / 1000:.1f} ms in all "
           "(self times; -X importtime's own overhead included)"]
    out.append("top-level imports by cumulative time:")
    for cumulative, _self, _depth, name in sorted(
            (r for r in rows if r[2] == 0), reverse=True)[:top]:
        out.append(f"  {cumulative / 1000:7.1f} ms  {name}")
    out.append("every module by cumulative time:")
    for cumulative, self_us, depth, name in sorted(rows, reverse=True)[:top]:
        out.append(f"  {cumulative / 1000:7.1f} ms (self {self_us / 1000:5.1f})  "
                   f"{'  ' * depth}{name}")
    return out


def cprofile(command: list[str], env: dict[str, str] | None, top: int = 25) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="qsh-bench-prof-") as tmp:
        out = Path(tmp) / "client.prof"
        # command: [python, -m, qsh, ...] -> [python, -m, cProfile, -o, out, -m, qsh, ...]
        subprocess.run([command[0], "-m", "cProfile", "-o", str(out), *command[1:]],
                       env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120, check=True)
        stats = pstats.Stats(str(out))
    table = stats.stats  # type: ignore[attr-defined]  # (set by Stats, not declared)
    rows = []
    for (file, line, func), (_cc, calls, tt, ct, _callers) in sorted(
            table.items(), key=lambda kv: -kv[1][3])[:top]:
        where = f"{'/'.join(Path(file).parts[-2:])}:{line}" if line else file
        rows.append(f"  {1000 * ct:7.1f} ms cum {1000 * tt:6.1f} ms self {calls:6d}x  "
                    f"{where} {func}")
    return rows


# --- report ---------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(results: dict[str, Samples], reference: str | None) -> None:
    ref_wall = _median(results[reference].wall) if reference in results else None
    print(f"{'command':44} {'CPU ms':>7} {'wall ms':>8} {'peak RSS MB':>11} "
          f"{'wall / ' + (reference or '-'):>18}")
    for name, samples in results.items():
        wall = _median(samples.wall)
        ratio = f"{wall / ref_wall:.2f}x" if ref_wall else ""
        print(f"{name:44} {1000 * _median(samples.cpu):7.1f} {1000 * wall:8.1f} "
              f"{_median([float(r) for r in samples.rss]) / 1024:11.1f} {ratio:>18}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of 100 logins")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--openssh-prefix", type=Path, default=Path("/opt/openssh-10.5"))
    parser.add_argument("--venv-system-site", action="store_true")
    parser.add_argument("--no-logins", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--before", type=Path, metavar="DIR",
                        help="another checkout (e.g. `git archive` of an older commit) whose "
                             "installed qsh and qcp run beside this one's: before and after")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.rounds = 7, 1
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{os.cpu_count()} CPUs; {PY}")
    with contextlib.ExitStack() as stack:
        qshd = stack.enter_context(PrivateQshd())
        sshds = [stack.enter_context(openssh.PrivateSshd(SSHD_EXTRA_CONFIG))]
        if openssh.available(args.openssh_prefix) is None:
            sshds.append(stack.enter_context(
                openssh.PrivateSshd(SSHD_EXTRA_CONFIG, args.openssh_prefix)))
        bin_dir = stack.enter_context(installed(ROOT, args.venv_system_site))
        editable = stack.enter_context(installed(ROOT, args.venv_system_site, "editable"))
        before = (stack.enter_context(installed(args.before, args.venv_system_site))
                  if args.before else None)
        before_editable = (stack.enter_context(
            installed(args.before, args.venv_system_site, "editable")) if args.before else None)
        env = qshd.env  # the tree's: PYTHONPATH, and bytecode cached outside the tree
        # The installed programs: nothing of the tree on the path, pip's own bytecode.
        venv_env = {k: v for k, v in os.environ.items() if k not in (
            "PYTHONPATH", "PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")}
        data = stack.enter_context(tempfile.TemporaryDirectory(prefix="qsh-bench-f-"))
        # Not the tree: `python -m` puts the current directory first on the path, and the
        # installed programs must not import from it.
        os.chdir(data)
        ssh_known = Path(data, "ssh_known_hosts")
        small = Path(data, "f")
        small.write_bytes(b"x" * 1000)
        qsh_args = qshd.cli("true")[3:]  # after [python, -m, qsh]
        # Never host:/dev/null: qcp's server writes a temporary file and renames it over the
        # target, and as root that replaces the device node with a regular file.
        qcp_args = ["-F", "none", "-P", str(qshd.port), "-i", str(qshd.user_key_path),
                    "-o", f"UserKnownHostsFile={qshd.known_hosts}",
                    "-o", "StrictHostKeyChecking=accept-new", str(small),
                    f"{qshd.user}@127.0.0.1:{data}/copy"]
        venv_py = str(bin_dir / "python")
        run_once(qshd.cli("true"), env)  # records the host key
        commands: dict[str, tuple[list[str], dict[str, str] | None]] = {
            "python -c pass": ([PY, "-c", "pass"], env),
            "python -I -S -c pass": ([PY, "-I", "-S", "-c", "pass"], env),
            "venv python -c pass": ([venv_py, "-c", "pass"], venv_env),
            "venv python -c 'import re, sys'": ([venv_py, "-c", "import re, sys"], venv_env),
            "editable venv python -c pass": ([str(editable / "python"), "-c", "pass"],
                                             venv_env),
            "venv python -c 'import click'": ([venv_py, "-c", "import click"], venv_env),
            "venv python: the crypto a login needs": ([venv_py, "-c", CRYPTO_FLOOR], venv_env),
            "venv python: that crypto + asyncio": (
                [venv_py, "-c", CRYPTO_FLOOR + ASYNCIO_FLOOR], venv_env),
            "python -m qsh --help": ([PY, "-m", "qsh", "--help"], env),
            "qsh --help (installed)": ([str(bin_dir / "qsh"), "--help"], venv_env),
            "qcp --help (installed)": ([str(bin_dir / "qcp"), "--help"], venv_env),
            "python -m qsh host true": ([PY, "-m", "qsh", *qsh_args], env),
            "qsh host true (installed)": ([str(bin_dir / "qsh"), *qsh_args], venv_env),
            "qsh host true (editable)": ([str(editable / "qsh"), *qsh_args], venv_env),
            "python -m qcp f host:": ([PY, "-m", "qcp", *qcp_args], env),
            "qcp f host: (installed)": ([str(bin_dir / "qcp"), *qcp_args], venv_env),
        }
        if before is not None:
            commands["qsh --help (before)"] = ([str(before / "qsh"), "--help"], venv_env)
            commands["qsh host true (before)"] = ([str(before / "qsh"), *qsh_args], venv_env)
        if before_editable is not None:
            commands["qsh host true (editable, before)"] = (
                [str(before_editable / "qsh"), *qsh_args], venv_env)
            commands["qcp f host: (before)"] = ([str(before / "qcp"), *qcp_args], venv_env)
        for sshd in sshds:
            commands[f"{_short(sshd)} host true"] = (ssh_command(sshd, "true", ssh_known), None)
        print(f"\n== {args.runs} interleaved runs of each; medians "
              "(CPU = user + sys of the process and its children, from wait4) ==")
        results = interleaved(commands, args.runs)
        ssh_new = f"{_short(sshds[-1])} host true"
        table(results, ssh_new)
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

        print("\n== peak memory holding a session (host 'sleep 1'), sampled; median of 3 ==")
        held = {"qsh (installed)": ([str(bin_dir / "qsh"), *qsh_args[:-1], "sleep 1"],
                                    venv_env)}
        if before is not None:
            held["qsh (before)"] = ([str(before / "qsh"), *qsh_args[:-1], "sleep 1"], venv_env)
        for sshd in sshds:
            held[_short(sshd)] = (ssh_command(sshd, "sleep 1", ssh_known), None)
        for name, (command, run_env) in held.items():
            peaks = [held_memory(command, run_env) for _ in range(3)]
            print(f"{name:24} PSS {_median([p[0] for p in peaks]) / 1024:6.1f} MB   "
                  f"RSS {_median([p[1] for p in peaks]) / 1024:6.1f} MB")

        if not args.no_logins:
            print(f"\n== 100 logins running `true`, 10 at a time; {args.rounds} rounds, "
                  "interleaved; median ==")
            pools = {"qsh (installed)": ([str(bin_dir / "qsh"), *qsh_args], venv_env),
                     "qsh (editable)": ([str(editable / "qsh"), *qsh_args], venv_env),
                     "python -m qsh": ([PY, "-m", "qsh", *qsh_args], env)}
            if before is not None:
                pools["qsh (before)"] = ([str(before / "qsh"), *qsh_args], venv_env)
            if before_editable is not None:
                pools["qsh (editable, before)"] = ([str(before_editable / "qsh"), *qsh_args],
                                                   venv_env)
            for sshd in sshds:
                pools[_short(sshd)] = (ssh_command(sshd, "true", ssh_known), None)
            rates: dict[str, list[tuple[float, float]]] = {name: [] for name in pools}
            for _ in range(args.rounds):
                for name, (command, run_env) in pools.items():
                    rates[name].append(logins(command, run_env))
            ref = _median([r[0] for r in rates[_short(sshds[-1])]])
            for name, values in rates.items():
                rate = _median([r[0] for r in values])
                print(f"{name:24} {rate:6.1f} logins/s  ({rate / ref:.2f}x "
                      f"{_short(sshds[-1])})   client CPU "
                      f"{1000 * _median([r[1] for r in values]):6.1f} ms per login")
            print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

        if not args.no_profile:
            installed_true = [venv_py, "-m", "qsh", *qsh_args]
            for name, command in (("qsh --help", [venv_py, "-m", "qsh", "--help"]),
                                  ("qsh host true", installed_true),
                                  ("qcp f host:", [venv_py, "-m", "qcp", *qcp_args])):
                print(f"\n== -X importtime of {name} (installed) ==")
                print("\n".join(importtime(command, venv_env)))
            print("\n== cProfile of qsh host true (installed), by cumulative time ==")
            print("\n".join(cprofile(installed_true, venv_env)))


if __name__ == "__main__":
    main()
