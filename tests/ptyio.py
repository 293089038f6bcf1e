"""Reading a program's terminal in tests: wait for a prompt, or for the end."""

from __future__ import annotations

import select
import time

from ptyprocess import PtyProcess


def read_until(proc: PtyProcess, needle: bytes, timeout: float = 20) -> bytes:
    """Everything read up to and including ``needle``; fails on timeout or early EOF."""
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out waiting for {needle!r}; got {buf!r}")
        ready, _, _ = select.select([proc.fd], [], [], remaining)
        if ready:
            try:
                buf += proc.read(4096)
            except EOFError:
                raise AssertionError(f"EOF waiting for {needle!r}; got {buf!r}") from None
    return buf


def read_to_eof(proc: PtyProcess, timeout: float = 20) -> bytes:
    """Everything until the program closes its terminal (then reaps it)."""
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.fd], [], [], deadline - time.monotonic())
        if ready:
            try:
                buf += proc.read(4096)
            except EOFError:
                proc.wait()
                return buf
    raise AssertionError(f"no EOF; got {buf!r}")
