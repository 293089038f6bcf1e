#!/usr/bin/env python3
"""The programs that run ssh, over qsh and over ssh in the same run (issue 15).

    python bench/tools.py                       # OpenSSH of the distribution, 3 rounds
    python bench/tools.py --openssh /opt/openssh-10.5 --rounds 5
    python bench/tools.py --quick --parts ansible

Each tool is run as a user runs it, once through qsh and once through ssh, interleaved
round by round, with the same data on the same loopback: a private qshd
(``bench/sessions.py``'s :class:`PrivateQshd`) and a private sshd (``bench/openssh.py``).
Both clients are reached the way the README tells users to reach qsh: a host alias
``bench`` in a config file of their own, through a two-line wrapper (``qsh -F FILE`` or
``ssh -F FILE``) that the tools are pointed at. The ``qsh`` there is what users get: the
console script of a clean venv with the tree installed by ``pip install .``
(``bench/startup.py``'s :func:`installed`), not ``python -m qsh`` from this interpreter,
whose site-packages may run ``.pth`` hooks at every start (~27 ms per run on the bench
machine, and an Ansible task runs qsh six times); ``--qsh tree`` measures that way instead.

- ``ansible``: a 20-task playbook (``command`` module, one host) with the stock ssh plugin
  and its default ``ssh_args`` (connection sharing on: ``ControlMaster=auto``,
  ``ControlPersist=60s``), a fresh control directory each round so no round inherits a
  master;
- ``git``: ``git clone`` of a repository of 50 MB (incompressible, 10 commits) over
  ``ssh://``-style ``bench:/path``, protocol v2;
- ``rsync``: ``rsync -a`` of one 1 GiB file up into an empty directory.

Reported: the median wall time of each side and the ratio ssh/qsh (above 1: qsh is
faster), with every round's times, the load average and the OpenSSH version.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import openssh  # noqa: E402 - ROOT is on sys.path first
from bench.sessions import SSHD_EXTRA_CONFIG, PrivateQshd  # noqa: E402
from bench.startup import installed  # noqa: E402

HOST = "127.0.0.1"
MiB = 1024 * 1024
REMOTE_PYTHON = "/usr/bin/python3"
PARTS = ("ansible", "git", "rsync")


def wrapper(path: Path, argv: list[str], env: dict[str, str],
            unset: tuple[str, ...] = ()) -> Path:
    # Bytecode cached as an installed package has it: a sandbox's PYTHONDONTWRITEBYTECODE
    # would make every qsh run compile its modules again (30-60 ms each here).
    exports = f"unset {' '.join(('PYTHONDONTWRITEBYTECODE', *unset))}\n" + "".join(
        f"export {k}='{v}'\n" for k, v in env.items())
    quoted = " ".join(f"'{a}'" for a in argv)
    path.write_text(f"#!/bin/sh\n{exports}exec {quoted} \"$@\"\n")
    path.chmod(0o755)
    return path


class Side:
    """One transport (qsh or ssh): its wrapper and the environment the tools get."""

    def __init__(self, name: str, program: Path, work: Path) -> None:
        self.name = name
        self.program = program
        self.work = work

    def run(self, argv: list[str], cwd: Path, **env: str) -> float:
        environ = {**os.environ, "LC_ALL": "C.UTF-8", **env}
        started = time.perf_counter()
        result = subprocess.run(argv, cwd=cwd, env=environ, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=1800)
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"{self.name}: {' '.join(argv[:3])} failed "
                               f"({result.returncode}): {(result.stderr or result.stdout)[-800:]}")
        return elapsed


def make_sides(qshd: PrivateQshd, sshd: openssh.PrivateSshd, work: Path,
               qsh_bin: Path | None = None) -> list[Side]:
    """The two wrappers; ``qsh_bin`` is an installed venv's bin directory (None: the
    tree, by ``python -m qsh``)."""
    qconfig = work / "qsh_config"
    qconfig.write_text(f"Host bench\n  HostName {HOST}\n  Port {qshd.port}\n  User {qshd.user}\n"
                       f"  IdentityFile {qshd.user_key_path}\n  StrictHostKeyChecking accept-new\n"
                       f"  UserKnownHostsFile {qshd.known_hosts}\n")
    sconfig = work / "ssh_config"
    sconfig.write_text(f"Host bench\n  HostName {HOST}\n  Port {sshd.port}\n"
                       f"  IdentityFile {sshd._user_key}\n  IdentitiesOnly yes\n"
                       f"  StrictHostKeyChecking no\n  UserKnownHostsFile {work}/ssh_known_hosts\n"
                       "  BatchMode yes\n  LogLevel ERROR\n")
    bin_dir = work / "bin"
    bin_dir.mkdir()
    if qsh_bin is None:
        q = wrapper(bin_dir / "qsh-bench", [sys.executable, "-m", "qsh", "-F", str(qconfig)],
                    {k: v for k, v in qshd.env.items() if k.startswith("PYTHON")})
    else:  # nothing of the tree's environment: the venv's script finds its own packages
        q = wrapper(bin_dir / "qsh-bench", [str(qsh_bin / "qsh"), "-F", str(qconfig)], {},
                    unset=("PYTHONPATH", "PYTHONPYCACHEPREFIX"))
    s = wrapper(bin_dir / "ssh-bench", [sshd.bin["ssh"], "-F", str(sconfig)], {})
    return [Side("qsh", q, work), Side("ssh", s, work)]


def ansible_case(work: Path, tasks: int) -> Callable[[Side, int], float]:
    ansible = Path(sys.executable).parent / "ansible-playbook"
    program = str(ansible) if ansible.exists() else shutil.which("ansible-playbook")
    if program is None:
        raise SystemExit("ansible-playbook not found (pip install ansible-core)")
    book = work / "book.yml"
    book.write_text("- hosts: bench\n  gather_facts: false\n  tasks:\n" + "".join(
        f"    - command: echo task {n}\n" for n in range(tasks)))

    def run(side: Side, round_number: int) -> float:
        inventory = work / f"inventory-{side.name}"
        inventory.write_text(
            f"bench ansible_ssh_executable={side.program} "
            f"ansible_sftp_extra_args='-S {side.program}' "
            f"ansible_scp_extra_args='-S {side.program}' "
            f"ansible_python_interpreter={REMOTE_PYTHON}\n")
        control = work / f"cp-{side.name}-{round_number}"
        control.mkdir()
        return side.run([program, "-i", str(inventory), str(book)], work,
                        ANSIBLE_SSH_CONTROL_PATH_DIR=str(control),
                        ANSIBLE_LOCAL_TEMP=str(work / "ansible-local"), ANSIBLE_NOCOLOR="1")
    return run


def git_case(work: Path, size: int) -> Callable[[Side, int], float]:
    if shutil.which("git") is None:
        raise SystemExit("git not found")
    source = work / "src-repo"
    subprocess.run(["git", "init", "-q", str(source)], check=True)
    per_commit = size // 10
    for n in range(10):
        (source / f"blob{n}").write_bytes(os.urandom(per_commit))
        subprocess.run(["git", "-C", str(source), "add", "."], check=True)
        subprocess.run(["git", "-C", str(source), "-c", "user.name=b", "-c", "user.email=b@b",
                        "commit", "-qm", f"c{n}"], check=True)
    bare = work / "repo.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(bare)], check=True)

    def run(side: Side, round_number: int) -> float:
        target = work / f"clone-{side.name}-{round_number}"
        try:
            return side.run(["git", "clone", "-q", f"bench:{bare}", str(target)], work,
                            GIT_SSH_COMMAND=str(side.program), GIT_SSH_VARIANT="ssh",
                            GIT_CONFIG_NOSYSTEM="1")
        finally:
            shutil.rmtree(target, ignore_errors=True)
    return run


def rsync_case(work: Path, size: int) -> Callable[[Side, int], float]:
    if shutil.which("rsync") is None:
        raise SystemExit("rsync not found")
    data = work / "rsync-src"
    data.mkdir()
    with open(data / "big", "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))

    def run(side: Side, round_number: int) -> float:
        target = work / f"rsync-{side.name}-{round_number}"
        target.mkdir()
        try:
            return side.run(["rsync", "-a", "-e", str(side.program), f"{data}/",
                             f"bench:{target}/"], work)
        finally:
            shutil.rmtree(target, ignore_errors=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--openssh", type=Path, default=None,
                        help="an OpenSSH prefix (build-openssh.sh's); default: the system's")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round, 256 MiB for rsync")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--qsh", choices=("installed", "tree"), default="installed",
                        help="installed: the console script of a clean venv (what users "
                        "run; default); tree: python -m qsh with this interpreter")
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    rounds = 1 if args.quick else args.rounds
    prefix = args.openssh
    if (missing := openssh.available(prefix)) is not None:
        raise SystemExit(f"OpenSSH baseline unavailable: {missing}")
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    shm = Path("/dev/shm")
    work = Path(tempfile.mkdtemp(prefix="qsh-bench-tools-", dir=shm if shm.is_dir() else None))
    os.chmod(work, 0o755)
    try:
        with contextlib.ExitStack() as stack:
            qsh_bin = (None if args.qsh == "tree"
                       else stack.enter_context(installed(ROOT, False)))
            qshd = stack.enter_context(PrivateQshd())
            sshd = stack.enter_context(openssh.PrivateSshd(
                SSHD_EXTRA_CONFIG + "Subsystem sftp internal-sftp\n", prefix))
            print(f"qshd on {HOST}:{qshd.port}; {sshd.version} on {HOST}:{sshd.port}; "
                  f"qsh {'python -m qsh' if qsh_bin is None else qsh_bin / 'qsh'}; "
                  f"load average {load} at start")
            sides = make_sides(qshd, sshd, work, qsh_bin)
            cases: dict[str, Callable[[Side, int], float]] = {}
            if "ansible" in parts:
                cases["ansible-playbook, 20 tasks"] = ansible_case(work, 20)
            if "git" in parts:
                cases["git clone, 50 MB"] = git_case(work, 50 * MiB)
            if "rsync" in parts:
                size = 256 * MiB if args.quick else 1024 * MiB
                cases[f"rsync -a, {size // MiB} MiB"] = rsync_case(work, size)
            for label, case in cases.items():
                times: dict[str, list[float]] = {side.name: [] for side in sides}
                for round_number in range(rounds):
                    order = sides if round_number % 2 == 0 else sides[::-1]
                    for side in order:
                        times[side.name].append(case(side, round_number))
                q, s = statistics.median(times["qsh"]), statistics.median(times["ssh"])
                shown = {k: " ".join(f"{t:.2f}" for t in v) for k, v in times.items()}
                print(f"{label}: qsh {q:.2f} s, ssh {s:.2f} s -> ssh/qsh {s / q:.2f}x "
                      f"(qsh rounds {shown['qsh']}; ssh rounds {shown['ssh']})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at end")


if __name__ == "__main__":
    main()
