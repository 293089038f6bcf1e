"""``python3 -m qsh.demo``: a local qshd and qsh sessions into it, in a throwaway directory.

It runs the real programs as separate processes on 127.0.0.1, so what it shows is what a
user gets: a user key made with qsh-keygen and listed in an authorized_keys file, a daemon
with a fresh host key, first contact (the host key is new and accepted), a remote command,
and -- when run from a terminal -- an interactive shell (leave it with ``exit`` or ``~.``).
Nothing outside the temporary directory is touched.
"""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _wait_for(path: Path, process: subprocess.Popen[bytes], seconds: float = 20.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        if process.poll() is not None:
            raise SystemExit(f"qshd exited early with status {process.returncode}")
        time.sleep(0.05)
    raise SystemExit("qshd did not start listening in time")


def _show(argv: list[str]) -> None:
    """The command as a shell would need it typed (quoted), so it can be copied and run."""
    python = os.path.relpath(sys.executable)  # e.g. .venv/bin/python: the one with qsh
    if python.startswith(".."):
        python = sys.executable
    shown = [python if a == sys.executable else a for a in argv]
    print("\n$ " + shlex.join(shown), flush=True)


def main() -> int:
    user = getpass.getuser()
    with tempfile.TemporaryDirectory(prefix="qsh-demo-") as tmp:
        base = Path(tmp)
        key = base / "id_mldsa65"
        keygen = [sys.executable, "-m", "qsh.keygen", "-f", str(key), "-N", ""]
        _show(keygen)
        subprocess.run(keygen, check=True)
        shutil.copy(key.with_name(key.name + ".pub"), base / "authorized_keys")
        (base / "authorized_keys").chmod(0o600)
        ready = base / "port"
        daemon_argv = [
            sys.executable, "-m", "qshd", "-D", "-e", "-p", "0",
            "-o", "ListenAddress=127.0.0.1",
            "-o", f"AuthorizedKeysFile={base / 'authorized_keys'}",
            "-o", "PermitRootLogin=prohibit-password",
            "-o", f"PasswdFile={base / 'passwd'}",
            "-h", str(base / "host_key"), "--ready-file", str(ready),
        ]
        _show(daemon_argv)
        daemon = subprocess.Popen(daemon_argv)
        try:
            port = _wait_for(ready, daemon)
            client = [sys.executable, "-m", "qsh", "-p", port, "-i", str(key),
                      "-o", f"UserKnownHostsFile={base / 'known_hosts'}",
                      "-o", "StrictHostKeyChecking=accept-new", f"{user}@127.0.0.1"]
            command = [*client, "echo hello from $(hostname) as $(id -un); uname -sr"]
            _show(command)
            status = subprocess.run(command, check=False).returncode
            if status != 0:
                return status
            if not sys.stdin.isatty():
                print("\nNot run from a terminal, so no interactive shell follows. From a "
                      "terminal, this would open one (the daemon is stopped now):")
                _show(client)
                return status
            print("\nAn interactive qsh session follows; leave it with 'exit' or '~.'.")
            _show(client)
            return subprocess.run(client, check=False).returncode
        finally:
            daemon.terminate()
            daemon.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
