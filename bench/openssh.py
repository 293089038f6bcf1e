"""The OpenSSH baseline for ``bench/run.py``: a private sshd on a loopback high port.

Nothing here touches the system's sshd, its configuration, its keys or port 22: the daemon
runs from a temporary directory with its own config (``-f``), its own host key, a throwaway
user key in its own ``authorized_keys``, ``ListenAddress 127.0.0.1`` and a free port, in the
foreground (``-D``), and is killed when the benchmark ends. The only file outside the
temporary directory it needs is the privilege-separation directory (``/run/sshd``), which
sshd insists on when started as root; it is created empty if missing.

``prefix`` picks another OpenSSH than the distribution's: a directory holding ``ssh``,
``sshd``, ``ssh-keygen`` and, from 10.0 on, ``sshd-session`` and ``sshd-auth``, as
``/work/shared/vendor/build-openssh.sh PREFIX`` leaves them (its privilege-separation
directory is ``/tmp/osh-empty``). Its own ``ssh`` is the client, so each server is measured
with the client and the default key exchange of the same release.
"""

from __future__ import annotations

import os
import pwd
import re
import resource
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import typing
from dataclasses import dataclass
from pathlib import Path

from bench import reaper

SSHD = "/usr/sbin/sshd"
INSTALL_HINT = "apt-get install -y openssh-server openssh-client"
CIPHERS = {"aes256gcm": "aes256-gcm@openssh.com",
           "chacha20poly1305": "chacha20-poly1305@openssh.com"}
#: Where build-openssh.sh's sshd looks for its privilege-separation directory.
BUILT_PRIVSEP_DIR = "/tmp/osh-empty"


def binaries(prefix: Path | None = None) -> dict[str, str]:
    """The ``ssh``, ``sshd`` and ``ssh-keygen`` to use: the distribution's (None) or a
    prefix's."""
    if prefix is None:
        return {"ssh": shutil.which("ssh") or "ssh", "sshd": SSHD,
                "ssh-keygen": shutil.which("ssh-keygen") or "ssh-keygen"}
    return {name: str(prefix / name) for name in ("ssh", "sshd", "ssh-keygen")}


def available(prefix: Path | None = None) -> str | None:
    """None if the baseline can run here, else why not."""
    for name, path in binaries(prefix).items():
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            return f"{name} not found ({path})"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Run:
    """One ssh command: wall time, and CPU seconds of the client (ssh) and of the server
    (sshd's per-connection processes and the remote command, reaped by the listener)."""

    seconds: float
    cpu_client: float
    cpu_server: float


children = reaper.children


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class PrivateSshd:
    """``with PrivateSshd() as sshd: sshd.session(10)``.

    ``extra_config`` is appended to the generated sshd_config (keywords not already set
    there, e.g. ``SetEnv``)."""

    def __init__(self, extra_config: str = "", prefix: Path | None = None, *,
                 user: str | None = None, authorized_keys: Path | None = None) -> None:
        """``user`` logs in as that account instead of the one running the benchmark;
        ``authorized_keys`` is where its key goes (it is then made the user's, mode 0600:
        sshd reads it with the user's rights, so it must be somewhere the user can reach,
        e.g. under the user's home)."""
        self.dir = Path(tempfile.mkdtemp(prefix="qsh-bench-sshd-"))
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.version = ""
        self.extra_config = extra_config
        self.prefix = prefix
        self.bin = binaries(prefix)
        self.user = user
        self.authorized_keys = authorized_keys
        self._listener: int | None = None

    def __enter__(self) -> PrivateSshd:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _keygen(self, name: str) -> Path:
        path = self.dir / name
        subprocess.run([self.bin["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-C", "qsh-bench",
                        "-f", str(path)], check=True)
        return path

    def _start(self) -> None:
        out = subprocess.run([self.bin["ssh"], "-V"], capture_output=True, text=True)
        self.version = (out.stderr or out.stdout).strip()
        host_key = self._keygen("host_key")
        user_key = self._keygen("user_key")
        authorized = self.authorized_keys or self.dir / "authorized_keys"
        authorized.write_bytes(user_key.with_suffix(".pub").read_bytes())
        authorized.chmod(0o600)
        if self.user is not None:
            account = pwd.getpwnam(self.user)
            os.chown(authorized, account.pw_uid, account.pw_gid)
        config = self.dir / "sshd_config"
        config.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {host_key}\n"
            f"PidFile {self.dir / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {authorized}\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            "MaxStartups 100:30:200\n"
            "LogLevel ERROR\n"
            + self._release_config()
            + self.extra_config
        )
        privsep_dir = "/run/sshd" if self.prefix is None else BUILT_PRIVSEP_DIR
        if os.geteuid() == 0 and not Path(privsep_dir).is_dir():
            os.makedirs(privsep_dir, mode=0o755, exist_ok=True)
        command = [self.bin["sshd"], "-D", "-e", "-f", str(config)]
        if self.prefix is not None and (self.prefix / "sshd-session").exists():
            # Not installed: the helpers are where the build left them, not in libexec.
            command += ["-o", f"SshdSessionPath={self.prefix / 'sshd-session'}"]
            if (self.prefix / "sshd-auth").exists():
                command += ["-o", f"SshdAuthPath={self.prefix / 'sshd-auth'}"]
        # Below a subreaper: 9.2's user process outlives its monitor for non-root logins.
        self.process = subprocess.Popen(reaper.command(command),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"sshd exited: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("sshd did not start listening")
        found = children(self.process.pid)
        if len(found) != 1:
            raise RuntimeError(f"sshd below the reaper: {len(found)} processes")
        self._listener = found[0]
        self._user_key = user_key

    def release(self) -> tuple[int, int]:
        """(major, minor) of this OpenSSH, from ``ssh -V``."""
        match = re.match(r"OpenSSH_(\d+)\.(\d+)", self.version)
        return (int(match.group(1)), int(match.group(2))) if match else (0, 0)

    def _release_config(self) -> str:
        """From 9.8 on sshd penalises sources by default (PerSourcePenalties); a benchmark's
        hundreds of logins from 127.0.0.1 must not be throttled by it."""
        return "PerSourcePenalties no\n" if self.release() >= (9, 8) else ""

    @property
    def pid(self) -> int:
        """The listener's process id (the reaper's child)."""
        assert self._listener is not None
        return self._listener

    def command(self, remote: str | None, cipher: str | None = None, *,
                tty: bool = False) -> list[str]:
        """The ssh command line; ``remote`` None means a login shell, ``tty`` adds ``-tt``."""
        args = [self.bin["ssh"], "-F", "/dev/null", "-p", str(self.port), "-i", str(self._user_key),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"]
        if cipher:
            args += ["-c", cipher]
        if tty:
            args.append("-tt")
        if self.user is not None:
            args += ["-l", self.user]
        return [*args, "127.0.0.1"] + ([remote] if remote is not None else [])

    def server_cpu(self) -> float:
        """CPU time of the whole server side: the listener's own (``utime + stime``: accept,
        fork), its reaped children's (``cutime + cstime``: sshd-session, sshd-auth and the
        remote command, each reaped by its parent in turn) and that of the orphans the
        reaper took in (:mod:`bench.reaper`). Only complete once every child has been
        reaped: see :meth:`wait_reaped`."""
        assert self.process is not None
        return reaper.server_cpu(self.process.pid, self.pid)

    def wait_reaped(self, timeout: float = 15.0) -> bool:
        """Wait until every process of past connections has ended and been reaped (zombies
        included): a child's CPU time reaches ``cutime`` only when its parent reaps it."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while not reaper.settled(self.process.pid, self.pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _run(self, command: list[str], stdin: int | typing.IO[bytes]) -> Run:
        client0, server0 = _children_cpu(), self.server_cpu()
        start = time.perf_counter()
        subprocess.run(command, check=True, stdin=stdin)
        seconds = time.perf_counter() - start
        self.wait_reaped()
        return Run(seconds, _children_cpu() - client0, self.server_cpu() - server0)

    def session(self, count: int) -> Run:
        """``ssh host true`` ``count`` times: the median run (wall time and CPU)."""
        runs = [self._run(self.command("true"), subprocess.DEVNULL) for _ in range(count)]
        return Run(statistics.median(r.seconds for r in runs),
                   statistics.median(r.cpu_client for r in runs),
                   statistics.median(r.cpu_server for r in runs))

    def transfer(self, data_file: Path, cipher: str) -> Run:
        """``ssh -c cipher host 'cat > /dev/null' < data``, session setup included."""
        with data_file.open("rb") as stdin:
            return self._run(self.command("cat > /dev/null", cipher), stdin)

    def close(self) -> None:
        if self.authorized_keys is not None:
            self.authorized_keys.unlink(missing_ok=True)
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)
