#!/usr/bin/env python3
"""A command over a shared connection: ``qsh host true`` with connection sharing, beside a
fresh login and beside OpenSSH's own sharing, in the same run (issues 15 and 18).

    python bench/shared.py                  # N=20 interleaved runs of each
    python bench/shared.py --runs 8 --openssh system --openssh /opt/openssh-10.5

For each client: a master is started once (``ControlMaster=auto``, ``ControlPersist``,
``ControlPath`` in a private directory), then N runs of ``host true`` ride on it; fresh
logins are measured in the same interleaved loop. Reported: median and p90 of the client's
CPU (user + system of the process, from ``RUSAGE_CHILDREN``; for a shared run that is the
mux client alone -- the master's work is in the master) and of the wall time, each as a
ratio to ssh's. ``qsh`` runs three ways: ``python -m qsh`` from the tree, and the console
script of a clean venv with the tree installed by ``pip install .`` and by ``pip install -e
.`` (bench/startup.py's venvs); beside them the venv's floors, ``python -c pass`` and
``python -c 'import re'`` (pip's console script imports re before our module). The masters
are told ``-O exit`` at the end. Private daemons as in
``bench/sessions.py``: loopback only, the system's sshd never touched.

A copy of a small file (``--copy-size`` bytes, 10 KiB by default) up to the host, in the
same loop: ``qcp`` over qsh's master (no login: the master relays the copy channel) and
fresh, ``scp`` over ssh's master (``-o ControlPath`` etc., as scp passes them to ssh) and
fresh, and the ratios qcp / scp. ``--qcp-before DIR`` adds another checkout's qcp (``git
archive`` of an older commit) over the same master, in the same loop.

Benchmarks are never unit tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import openssh  # noqa: E402
from bench.sessions import (  # noqa: E402
    SSHD_EXTRA_CONFIG,
    PrivateQshd,
    TrueRuns,
    _children_cpu,
)
from bench.startup import KINDS, installed  # noqa: E402


def _timed(command: list[str], _server: object, into: TrueRuns,
           env: dict[str, str] | None = None) -> None:
    """bench/sessions.py's, without waiting for the server's processes to be reaped: a
    shared connection's stay for as long as its master (the server's CPU is not measured)."""
    cpu0 = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} exited {done.returncode}: "
                           f"{done.stderr.decode(errors='replace').strip()[-300:]}")
    into.wall.values.append(wall)
    into.client_cpu.values.append(_children_cpu() - cpu0)


def _sharing(path: Path) -> list[str]:
    return ["-o", "ControlMaster=auto", "-o", "ControlPersist=300", "-o", f"ControlPath={path}"]


def _with_options(command: list[str], options: list[str]) -> list[str]:
    """Options go right after the program (and its ``-m qsh``), before everything else."""
    at = 3 if command[1:3] == ["-m", "qsh"] else 1
    return [*command[:at], *options, *command[at:]]


def _line(name: str, runs: TrueRuns) -> str:
    cpu, wall = runs.client_cpu, runs.wall
    return (f"  {name:<34} client CPU {cpu.median * 1000:7.1f} ms (p90 {cpu.p90 * 1000:6.1f})"
            f"   wall {wall.median * 1000:7.1f} ms (p90 {wall.p90 * 1000:6.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--copy-size", type=int, default=10 * 1024)
    parser.add_argument("--openssh", action="append", default=[],
                        help="'system' or an OpenSSH prefix (repeatable; default both)")
    parser.add_argument("--before", type=Path, metavar="DIR",
                        help="another checkout (e.g. `git archive` of an older commit): its "
                             "installed qsh on the same master, beside this one's")
    parser.add_argument("--qcp-before", type=Path, metavar="DIR",
                        help="another checkout: its `python -m qcp` over the same master, "
                             "beside this tree's (the qcp row only; no venvs)")
    args = parser.parse_args()
    prefixes = args.openssh or ["system", "/opt/openssh-10.5"]
    work = Path(tempfile.mkdtemp(prefix="qsh-bench-shared-"))
    work.chmod(0o700)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        qshd = stack.enter_context(PrivateQshd())
        sshds = []
        for prefix in prefixes:
            chosen = None if prefix == "system" else Path(prefix)
            why = openssh.available(chosen)
            if why is not None:
                print(f"skipping OpenSSH {prefix}: {why}")
                continue
            sshds.append(stack.enter_context(openssh.PrivateSshd(
                SSHD_EXTRA_CONFIG + "Subsystem sftp internal-sftp\n", chosen)))  # scp's
        qsh_path = work / "qsh-%C"
        qsh_fresh = qshd.cli("true")
        qsh_shared = _with_options(qsh_fresh, _sharing(qsh_path))
        # The console scripts as users (pip install .) and CI (pip install -e .) have them,
        # on the same master: a clean venv each (bench/startup.py's), nothing of the tree's
        # environment.
        venv_env = {k: v for k, v in os.environ.items() if k not in (
            "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
        scripts = {kind: stack.enter_context(installed(ROOT, False, kind)) for kind in KINDS}
        if args.before is not None:
            scripts.update({f"{kind}, before": stack.enter_context(
                installed(args.before.resolve(), False, kind)) for kind in KINDS})
        qsh_installed = {kind: [str(bin_dir / "qsh"), *qsh_shared[3:]]
                         for kind, bin_dir in scripts.items()}
        ssh_cmds = []
        for n, sshd in enumerate(sshds):
            fresh = sshd.command("true")
            ssh_cmds.append((sshd, fresh, _with_options(fresh, _sharing(work / f"ssh{n}-%C"))))

        def stop_masters() -> None:
            subprocess.run(_with_options(qshd.cli(None), [*_sharing(qsh_path), "-O", "exit"]),
                           env=qshd.env, capture_output=True, timeout=30, check=False)
            for _, _, shared in ssh_cmds:
                subprocess.run(_with_options(shared[:-1], ["-O", "exit"]), capture_output=True,
                               timeout=30, check=False)

        stack.callback(stop_masters)
        # The floor: the interpreter (-I -S) and the mux client alone, as if qsh's command
        # line and configuration cost nothing (what issue 18's work on qsh/cli.py can reach).
        shown = subprocess.run(_with_options(qsh_shared, ["-G"]), env=qshd.env,
                               capture_output=True, text=True, check=True).stdout
        control_path = next(line.split(" ", 1)[1] for line in shown.splitlines()
                            if line.startswith("controlpath "))
        floor_script = (
            f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from common.client import mux_client as m\n"
            "r = m.session_request(command='true', pty=False, subsystem=False, quiet=False,"
            " environment=[], environ={})\n"
            f"sys.exit(m.try_session({control_path!r}, r, verbose=False))\n")
        mux_floor = [sys.executable, "-I", "-S", "-c", floor_script]
        # The copies: one small file up, into a directory per client.
        small = work / "small"
        small.write_bytes(os.urandom(args.copy_size))
        qcp_fresh = [sys.executable, "-m", "qcp", "-F", "none", "-P", str(qshd.port),
                     "-i", str(qshd.user_key_path), "-o", "StrictHostKeyChecking=accept-new",
                     "-o", f"UserKnownHostsFile={qshd.known_hosts}", "-q", str(small),
                     f"{qshd.user}@127.0.0.1:{work / 'qcp-copy'}"]
        qcp_shared = [*qcp_fresh[:3], "-o", f"ControlPath={control_path}", *qcp_fresh[3:]]
        # The other checkout's qcp: -P so that the cwd (this tree) does not come first.
        qcp_before = [sys.executable, "-P", *qcp_shared[1:]]
        before_env = (dict(qshd.env, PYTHONPATH=str(args.qcp_before.resolve()))
                      if args.qcp_before is not None else None)
        scp_cmds = []
        for n, (sshd, ssh_fresh, _) in enumerate(ssh_cmds):
            scp_bin = str(sshd.prefix / "scp") if sshd.prefix else (shutil.which("scp") or "scp")
            options = ssh_fresh[1:ssh_fresh.index("127.0.0.1")]  # minus -p/-l (scp's -P)
            port = options.index("-p")
            del options[port:port + 2]
            if "-l" in options:
                login = options.index("-l")
                del options[login:login + 2]
            user = sshd.user or os.environ.get("USER") or "root"
            scp_fresh = [scp_bin, *(["-S", sshd.bin["ssh"]] if sshd.prefix else []), *options,
                         "-P", str(sshd.port), "-q", str(small),
                         f"{user}@127.0.0.1:{work / f'scp{n}-copy'}"]
            scp_shared = [*scp_fresh[:1], *_sharing(work / f"ssh{n}-%C"), *scp_fresh[1:]]
            scp_cmds.append((sshd, scp_fresh, scp_shared))
        python_floor = [sys.executable, "-I", "-S", "-c", "pass"]
        # Warm-up (page cache, known_hosts) and the masters, outside the measurement.
        _timed(qsh_fresh, qshd, TrueRuns(), qshd.env)
        _timed(qsh_shared, qshd, TrueRuns(), qshd.env)
        for sshd, fresh, shared in ssh_cmds:
            _timed(fresh, sshd, TrueRuns())
            _timed(shared, sshd, TrueRuns())
        for command in qsh_installed.values():
            _timed(command, qshd, TrueRuns(), venv_env)
        results = {"qsh fresh login": TrueRuns(), "qsh shared": TrueRuns(),
                   **{f"qsh shared ({kind})": TrueRuns() for kind in qsh_installed},
                   "mux client alone (-I -S)": TrueRuns(), "python3 -I -S -c pass": TrueRuns(),
                   "venv python -c pass": TrueRuns(), "venv python -c 'import re'": TrueRuns()}
        venv_py = str(scripts["installed"] / "python")
        for sshd, _, _ in ssh_cmds:
            results[f"ssh {sshd.version.split(',')[0]} fresh"] = TrueRuns()
            results[f"ssh {sshd.version.split(',')[0]} shared"] = TrueRuns()
        copies = {"qcp fresh": TrueRuns(), "qcp shared": TrueRuns()}
        if before_env is not None:
            copies["qcp shared (before)"] = TrueRuns()
            _timed(qcp_before, qshd, TrueRuns(), before_env)  # warm-up (its bytecode)
        for sshd, _, _ in scp_cmds:
            copies[f"scp {sshd.version.split(',')[0]} fresh"] = TrueRuns()
            copies[f"scp {sshd.version.split(',')[0]} shared"] = TrueRuns()
        _timed(qcp_fresh, qshd, TrueRuns(), qshd.env)  # warm-up
        for _, scp_fresh, scp_shared in scp_cmds:
            _timed(scp_fresh, None, TrueRuns())
            _timed(scp_shared, None, TrueRuns())
        for _ in range(args.runs):
            _timed(qsh_fresh, qshd, results["qsh fresh login"], qshd.env)
            _timed(qsh_shared, qshd, results["qsh shared"], qshd.env)
            for kind, command in qsh_installed.items():
                _timed(command, qshd, results[f"qsh shared ({kind})"], venv_env)
            # The console script's floor: pip's script imports re before our module.
            _timed([venv_py, "-c", "pass"], qshd, results["venv python -c pass"], venv_env)
            _timed([venv_py, "-c", "import re"], qshd, results["venv python -c 'import re'"],
                   venv_env)
            _timed(mux_floor, qshd, results["mux client alone (-I -S)"], qshd.env)
            _timed(python_floor, qshd, results["python3 -I -S -c pass"], qshd.env)
            for sshd, fresh, shared in ssh_cmds:
                name = sshd.version.split(",")[0]
                _timed(fresh, sshd, results[f"ssh {name} fresh"])
                _timed(shared, sshd, results[f"ssh {name} shared"])
            _timed(qcp_fresh, qshd, copies["qcp fresh"], qshd.env)
            _timed(qcp_shared, qshd, copies["qcp shared"], qshd.env)
            if before_env is not None:
                _timed(qcp_before, qshd, copies["qcp shared (before)"], before_env)
            for sshd, scp_fresh, scp_shared in scp_cmds:
                name = sshd.version.split(",")[0]
                _timed(scp_fresh, sshd, copies[f"scp {name} fresh"])
                _timed(scp_shared, sshd, copies[f"scp {name} shared"])
        logins = qshd.log.read_text(errors="replace").count("Accepted publickey")
        print(f"`host true`, {args.runs} interleaved runs each; load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; qshd logins: {logins} "
              f"(fresh qsh and qcp runs + 3 warm-up/master)")
        for name, runs in results.items():
            print(_line(name, runs))
        for (name, baseline) in [(k, v) for k, v in results.items() if k.startswith("ssh")]:
            for mine_name in (["qsh shared", *(f"qsh shared ({k})" for k in qsh_installed)]
                              if name.endswith("shared") else ["qsh fresh login"]):
                mine = results[mine_name]
                print(f"  {mine_name} / {name}: "
                      f"x{mine.client_cpu.median / baseline.client_cpu.median:.2f} client CPU, "
                      f"x{mine.wall.median / baseline.wall.median:.2f} wall")
        fresh, shared = results["qsh fresh login"], results["qsh shared"]
        print(f"  qsh shared / qsh fresh: "
              f"x{shared.client_cpu.median / fresh.client_cpu.median:.2f} client CPU, "
              f"{(fresh.wall.median - shared.wall.median) * 1000:.1f} ms less wall")
        print(f"a {args.copy_size}-byte file up, {args.runs} interleaved runs each (in the "
              "logins above: the fresh qcp runs and one warm-up; none for a shared one)")
        for name, runs in copies.items():
            print(_line(name, runs))
        for name, baseline in copies.items():
            if name.startswith("scp"):
                kind = "shared" if name.endswith("shared") else "fresh"
                mine = copies[f"qcp {kind}"]
                print(f"  qcp {kind} / {name}: "
                      f"x{mine.client_cpu.median / baseline.client_cpu.median:.2f} client CPU, "
                      f"x{mine.wall.median / baseline.wall.median:.2f} wall")
        if before_env is not None:
            old = copies["qcp shared (before)"]
            print(f"  qcp shared / qcp shared (before): "
                  f"x{copies['qcp shared'].client_cpu.median / old.client_cpu.median:.2f} "
                  "client CPU")
            for name, baseline in copies.items():
                if name.startswith("scp") and name.endswith("shared"):
                    print(f"  qcp shared (before) / {name}: "
                          f"x{old.client_cpu.median / baseline.client_cpu.median:.2f} client "
                          f"CPU, x{old.wall.median / baseline.wall.median:.2f} wall")
        qfresh, qshared = copies["qcp fresh"], copies["qcp shared"]
        print(f"  qcp shared / qcp fresh: "
              f"x{qshared.client_cpu.median / qfresh.client_cpu.median:.2f} client CPU, "
              f"x{qshared.wall.median / qfresh.wall.median:.2f} wall, "
              f"{(qfresh.wall.median - qshared.wall.median) * 1000:.1f} ms less")


if __name__ == "__main__":
    main()
