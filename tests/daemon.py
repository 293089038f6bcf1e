"""A real qshd and a throwaway account for the tests that drive qsh through other programs
(git, rsync, sftp, Ansible): what each of those test modules needs, made once here.

The daemon runs from this checkout in the foreground on 127.0.0.1 and a free port; the
account is made with ``useradd`` (so root is needed) and removed, with its processes, at the
end. The client side is a ``HOME`` of its own holding ``~/.qsh/config`` with a ``Host qtest``
block, a trusted host key and a user key, and a ``bin/`` whose ``qsh`` runs this checkout:
put first on ``PATH``, it makes the tools run qsh exactly as the README tells users to.

Also the two steps every test that runs a real qshd repeats: :func:`wait_ready` (until its
``--ready-file`` names the port, failing with its log if it dies first) and
:func:`stop_process` (SIGTERM, then SIGKILL after a grace, always reaped).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.accounts.keys import HostKey
from common.accounts.known_hosts import KnownHosts

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def wait_ready(process: subprocess.Popen[bytes], ready: Path, log: Path,
               timeout: float = 30.0) -> int:
    """The port of a qshd started with ``--ready-file ready``, once it listens. If it exits
    first, an AssertionError carries its ``log``; if it is not ready in ``timeout`` seconds,
    it is killed (nobody would stop a daemon whose start failed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists() and ready.read_text().strip():
            return int(ready.read_text())
        if process.poll() is not None:
            raise AssertionError(f"qshd exited: {log.read_text(errors='replace')}")
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise AssertionError("qshd did not start")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM, and SIGKILL if it is still there after ``timeout`` seconds; reaped either
    way, so no test leaves a daemon (or a client) behind."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Env:
    user: str
    home: Path
    port: int
    client_home: Path
    bin: Path
    log: Path

    def environ(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, "HOME": str(self.client_home),
               "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
               "PYTHONPATH": str(ROOT), "GIT_CONFIG_NOSYSTEM": "1", **extra}
        env.pop("PYTHONUNBUFFERED", None)
        return env

    def run(self, *argv: str, cwd: Path | None = None, timeout: float = 60,
            **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              cwd=cwd or self.client_home, env=self.environ(**extra),
                              stdin=subprocess.DEVNULL, start_new_session=True)

    def as_user(self, *argv: str) -> None:
        subprocess.run(["setpriv", f"--reuid={self.user}", f"--regid={self.user}",
                        "--init-groups", *argv], check=True, capture_output=True,
                       cwd=self.home, env={"HOME": str(self.home), "PATH": "/usr/bin:/bin"})

    def logins(self) -> int:
        """Logins the daemon accepted so far (its log's ``Accepted`` lines, as sshd's)."""
        return sum(1 for line in self.log.read_text(errors="replace").splitlines()
                   if " Accepted " in f" {line}")


@contextmanager
def account_daemon(options: Sequence[str] = ()) -> Iterator[Env]:
    """A throwaway account served by a qshd of its own; ``options`` are extra ``-o`` items."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd to make a throwaway account")
    base = Path(tempfile.mkdtemp(prefix="qsh-compat-"))
    base.chmod(0o755)
    name = f"qshx{uuid.uuid4().hex[:8]}"
    home = base / name
    subprocess.run(["useradd", "-m", "-d", str(home), "-s", "/bin/sh", name], check=True,
                   capture_output=True)
    process: subprocess.Popen[bytes] | None = None
    try:
        entry = pwd.getpwnam(name)
        client_home = base / "client"
        (client_home / ".qsh").mkdir(parents=True, mode=0o700)
        key = HostKey.generate("mldsa65", now=time.time())
        key.save(client_home / ".qsh" / "id_mldsa65")
        qsh_dir = home / ".qsh"
        qsh_dir.mkdir(mode=0o700)
        (qsh_dir / "authorized_keys").write_text(key.public.openssh_line("t") + "\n")
        for path in (qsh_dir, qsh_dir / "authorized_keys"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        host_key, ready, log = base / "host_key", base / "ready", base / "qshd.log"
        extra = [item for option in options for item in ("-o", option)]
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [PYTHON, "-m", "qshd", "-D", "-e", "-p", "0", "-o", "ListenAddress=127.0.0.1",
                 *extra, "-h", str(host_key), "--ready-file", str(ready)],
                stdout=out, stderr=out, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        port = wait_ready(process, ready, log)
        KnownHosts.load(client_home / ".qsh" / "known_hosts").add(
            "127.0.0.1", port, HostKey.load(host_key).public)
        config = client_home / ".qsh" / "config"
        config.write_text(f"Host qtest\n  HostName 127.0.0.1\n  Port {port}\n  User {name}\n"
                          "  StrictHostKeyChecking yes\n")
        config.chmod(0o600)
        bin_dir = base / "bin"
        bin_dir.mkdir()
        wrapper = bin_dir / "qsh"
        wrapper.write_text(f'#!/bin/sh\nexec {PYTHON} -m qsh "$@"\n')
        wrapper.chmod(0o755)
        yield Env(name, home, port, client_home, bin_dir, log)
    finally:
        if process is not None:
            stop_process(process)
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True, check=False)
        subprocess.run(["userdel", "-r", name], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
