"""How the client programs end (issue 18): their output flushed and their ``atexit`` handlers
run (the terminal put back, secrets wiped), then out without the interpreter's finalisation,
which tears every module down one object at a time (10-15 ms of each ``qsh host true``).

Each run is a real ``qsh``/``qcp`` process; the probe registers an ``atexit`` handler and
leaves a thread that only finalisation would wait for (1.5 s) before its line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import atexit, os, sys, threading, time
def late():
    time.sleep(1.5)
    os.write(2, b"FINALISED\\n")
threading.Thread(target=late).start()  # a non-daemon thread: finalisation waits for it
atexit.register(lambda: sys.__stderr__.write("ATEXIT\\n"))
sys.argv[0] = {program!r}
from {module} import main
main(sys.argv[1:])
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed once the block ends: nothing listens there


def run(module: str, *argv: str) -> subprocess.CompletedProcess[str]:
    code = _PROBE.format(program=module.split(".")[0], module=module)
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


@pytest.mark.parametrize("module", ["qsh.entry", "qsh.cli"])
def test_a_failed_login_ends_without_finalisation(module: str, tmp_path: Path) -> None:
    result = run(module, "-F", "none", "-p", str(_closed_port()), "-o", "ConnectTimeout=5",
                 "-o", f"UserKnownHostsFile={tmp_path / 'kh'}", "127.0.0.1", "true")
    assert result.returncode == 255, result
    assert "Connection refused" in result.stderr or "refused" in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert "ATEXIT" in lines  # the handlers ran (the terminal, the secrets)...
    assert "FINALISED" not in lines  # ...and nothing was torn down after them


def test_qcp_ends_without_finalisation(tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x")
    result = run("qcp.cli", "-F", "none", "-P", str(_closed_port()), "-o", "ConnectTimeout=5",
                 "-o", f"UserKnownHostsFile={tmp_path / 'kh'}", str(source), "127.0.0.1:")
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert "ATEXIT" in lines and "FINALISED" not in lines, result.stderr


def test_output_is_complete_when_it_goes_to_a_pipe() -> None:
    """Buffered output (a pipe: block buffering) is flushed before the fast exit: ``-G``
    prints the whole configuration, its last line included."""
    full = run("qsh.cli", "-F", "none", "-G", "somehost")
    assert full.returncode == 0, full
    lines = full.stdout.splitlines()
    assert len(lines) > 30 and lines[0] == "host somehost", lines[:3]
    assert full.stdout.endswith("\n")


def test_a_profiled_run_still_writes_its_profile(tmp_path: Path) -> None:
    """``python -m cProfile -o FILE -m qsh ...`` (bench/startup.py's profile) writes FILE once
    the program returns: under a profiler the exit is the usual one."""
    out = tmp_path / "qsh.prof"
    result = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), "-m", "qsh",
                             "-F", "none", "-G", "somehost"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result
    assert out.stat().st_size > 0
