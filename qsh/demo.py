"""``python3 -m qsh.demo``: a local qshd and a qsh session into it, in a throwaway directory.

It runs the real programs as separate processes on 127.0.0.1, so what it shows is exactly
what a user gets: first contact (the host key is new and accepted), then a second connection
that finds the key in known_hosts.
"""

from __future__ import annotations

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


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="qsh-demo-") as tmp:
        base = Path(tmp)
        ready = base / "port"
        daemon = subprocess.Popen(
            [sys.executable, "-m", "qshd", "-D", "-e", "-p", "0", "-o", "ListenAddress=127.0.0.1",
             "-h", str(base / "host_key"),
             "--ready-file", str(ready)],
        )
        try:
            port = _wait_for(ready, daemon)
            client = [sys.executable, "-m", "qsh", "-p", port,
                      "-o", f"UserKnownHostsFile={base / 'known_hosts'}"]
            print(f"\n$ qsh -p {port} -o StrictHostKeyChecking=accept-new 127.0.0.1", flush=True)
            first = subprocess.run([*client, "-o", "StrictHostKeyChecking=accept-new",
                                    "127.0.0.1"], check=False)
            print(f"\n$ qsh -p {port} -o StrictHostKeyChecking=yes 127.0.0.1", flush=True)
            second = subprocess.run([*client, "-o", "StrictHostKeyChecking=yes", "127.0.0.1"],
                                    check=False)
            return first.returncode or second.returncode
        finally:
            daemon.terminate()
            daemon.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
