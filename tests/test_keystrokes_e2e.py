"""Keystroke obfuscation end to end (issue 12): the real qsh CLI in a pseudo-terminal
against a real qshd, typing through the keystroke clock."""

from __future__ import annotations

import statistics
import time

import test_qsh_client
from test_qsh_client import Server, _drain, _expect, _read_some

#: The real qshd and a throwaway account, as test_qsh_client sets them up.
server = test_qsh_client.server

TICK = 0.2  # a slow clock, so one tick stands well above the machine's noise


def _type(child: object, text: bytes, gap: float = 0.03) -> None:
    for ch in text:
        child.write(bytes([ch]))  # type: ignore[attr-defined]
        time.sleep(gap)


def test_a_password_prompt_through_the_clock(server: Server) -> None:
    child = server.spawn("-t", "read -rs -p 'Password: ' pw; echo; echo \"got=$pw\"")
    _expect(child, b"Password: ")
    _type(child, b"s3cr3t-W0rd\r")
    out, status = _drain(child)
    assert status == 0 and b"got=s3cr3t-W0rd" in out, out
    assert out.count(b"s3cr3t-W0rd") == 1  # only the program's line: no echo


def test_vim_edits_a_file_through_the_clock(server: Server) -> None:
    name = f"ks-{time.monotonic_ns()}.txt"
    child = server.spawn("-t", f"vim -u NONE -N -n -i NONE ~/{name}")
    time.sleep(1.0)  # vim draws its screen
    _type(child, b"ihello keys\x1b", gap=0.02)
    _type(child, b":wq\r", gap=0.02)
    out, status = _drain(child)
    assert status == 0, out
    done = server.run(f"cat ~/{name}; rm -f ~/{name}")
    assert done.stdout == b"hello keys\n", done


def test_a_keystroke_waits_at_most_one_tick(server: Server) -> None:
    """With a 200 ms clock a key typed while the clock runs waits for its tick: never more
    than one tick (plus the machine's noise), and on average a good part of one, which
    says the clock is there at all."""
    child = server.spawn("-t", "-o", f"ObscureKeystrokeTiming=interval:{int(TICK * 1000)}",
                         "cat")
    _type(child, b"go\r")
    _expect(child, b"go\r\ngo")
    latencies = []
    for k in range(12):
        ch = bytes([97 + k])
        sent = time.monotonic()
        child.write(ch)  # type: ignore[attr-defined]
        seen = b""
        while ch not in seen and time.monotonic() - sent < 5:
            seen += _read_some(child, 0.5)
        latencies.append(time.monotonic() - sent)
        time.sleep(0.037 * (k % 5))  # land at different points of the tick
    child.write(b"\r\x04")  # type: ignore[attr-defined]  # end cat's line, then EOF
    assert _drain(child)[1] == 0
    assert max(latencies) <= TICK + 0.15, latencies
    assert statistics.mean(latencies) >= TICK / 5, latencies
