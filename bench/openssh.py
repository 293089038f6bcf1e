"""The OpenSSH baseline for ``bench/run.py``: a private sshd on a loopback high port.

Nothing here touches the system's sshd, its configuration, its keys or port 22: the daemon
runs from a temporary directory with its own config (``-f``), its own host key, a throwaway
user key in its own ``authorized_keys``, ``ListenAddress 127.0.0.1`` and a free port, in the
foreground (``-D``), and is killed when the benchmark ends. The only file outside the
temporary directory it needs is the privilege-separation directory (``/run/sshd``), which
sshd insists on when started as root; it is created empty if missing.
"""

from __future__ import annotations

import os
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

SSHD = "/usr/sbin/sshd"
INSTALL_HINT = "apt-get install -y openssh-server openssh-client"
CIPHERS = {"aes256gcm": "aes256-gcm@openssh.com",
           "chacha20poly1305": "chacha20-poly1305@openssh.com"}


def available() -> str | None:
    """None if the baseline can run here, else why not."""
    if not Path(SSHD).exists():
        return f"{SSHD} not found"
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "ssh or ssh-keygen not found"
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


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class PrivateSshd:
    """``with PrivateSshd() as sshd: sshd.session(10)``.

    ``extra_config`` is appended to the generated sshd_config (keywords not already set
    there, e.g. ``SetEnv``)."""

    def __init__(self, extra_config: str = "") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="qsh-bench-sshd-"))
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.version = ""
        self.extra_config = extra_config

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
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "qsh-bench",
                        "-f", str(path)], check=True)
        return path

    def _start(self) -> None:
        host_key = self._keygen("host_key")
        user_key = self._keygen("user_key")
        authorized = self.dir / "authorized_keys"
        authorized.write_bytes(user_key.with_suffix(".pub").read_bytes())
        authorized.chmod(0o600)
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
            + self.extra_config
        )
        if os.geteuid() == 0 and not Path("/run/sshd").is_dir():
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
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
        self._user_key = user_key
        out = subprocess.run(["ssh", "-V"], capture_output=True, text=True)
        self.version = (out.stderr or out.stdout).strip()

    @property
    def pid(self) -> int:
        """The listener's process id."""
        assert self.process is not None
        return self.process.pid

    def command(self, remote: str | None, cipher: str | None = None, *,
                tty: bool = False) -> list[str]:
        """The ssh command line; ``remote`` None means a login shell, ``tty`` adds ``-tt``."""
        args = ["ssh", "-F", "/dev/null", "-p", str(self.port), "-i", str(self._user_key),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"]
        if cipher:
            args += ["-c", cipher]
        if tty:
            args.append("-tt")
        return [*args, "127.0.0.1"] + ([remote] if remote is not None else [])

    def server_cpu(self) -> float:
        """CPU time of the listener's reaped children (``cutime + cstime``)."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")

    def _run(self, command: list[str], stdin: int | typing.IO[bytes]) -> Run:
        client0, server0 = _children_cpu(), self.server_cpu()
        start = time.perf_counter()
        subprocess.run(command, check=True, stdin=stdin)
        seconds = time.perf_counter() - start
        time.sleep(0.05)  # let the listener reap its child
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
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)
