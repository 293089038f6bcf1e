"""``python3 -m qsh.demo``, the README's first command, run as a user would run it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_runs_a_command_and_says_what_it_skipped(tmp_path: Path) -> None:
    """Without a terminal: the remote command's output, every command shown quoted so that
    it can be pasted into a shell, and a line saying why no interactive shell follows (it
    used to skip it in silence, and to print ``-N`` with nothing after it)."""
    result = subprocess.run([sys.executable, "-m", "qsh.demo"], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT),
                                 "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "hello from " in result.stdout
    shown = [line[2:] for line in result.stdout.splitlines() if line.startswith("$ ")]
    assert len(shown) == 4, result.stdout
    keygen = shlex.split(shown[0])
    # The interpreter that has qsh (a venv's, say), not a bare python3 that may not.
    assert keygen[:3] == [sys.executable, "-m", "qsh.keygen"] and keygen[-2:] == ["-N", ""]
    command = shlex.split(shown[2])
    assert command[-1] == "echo hello from $(hostname) as $(id -un); uname -sr"
    assert "Not run from a terminal, so no interactive shell follows." in result.stdout
    assert shlex.split(shown[3]) == command[:-1]  # the shell it would have opened
