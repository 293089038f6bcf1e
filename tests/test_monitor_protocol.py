"""The monitor link: every message round-trips, anything malformed or out of order is
refused, and the blocking link bounds what it reads and how long it waits."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qshd import monitor_protocol as mp
from qshd.monitor import Policy, serve_preauth
from qshd.outcome import EXIT_AUTHFAIL, EXIT_GRACE, EXIT_NOAUTH

HASH = bytes(range(32))
MESSAGES: list[mp.Message] = [
    mp.Sign(b"\x01" * 32, HASH),
    mp.Password("alice", b"secret"),
    mp.PublicKeyLogin("alice", b"blob", HASH, b"sig"),
    mp.Handoff("alice", b"state"),
    mp.Signature(b"s" * 3309),
    mp.Verdict(True, ""),
    mp.Verdict(False, "no"),
    mp.PreauthGone(),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: mp.Message) -> None:
    assert mp.decode(message.encode()) == message


def test_password_and_state_never_in_repr() -> None:
    assert "secret" not in repr(mp.Password("alice", b"secret"))
    assert "state" not in repr(mp.Handoff("alice", b"state-with-keys"))


@pytest.mark.parametrize("data", [
    b"",                                          # nothing
    b"\x7f",                                      # unknown type
    mp.Sign(b"k", HASH).encode() + b"x",          # trailing byte
    mp.Sign(b"k", HASH[:31]).encode(),            # short hash
    mp.Sign(b"k", HASH + b"x").encode(),          # long hash
    mp.Password("a" * 65, b"").encode(),          # user too long
    mp.Password("alice", b"p" * 1025).encode(),   # password too long
])
def test_malformed_refused(data: bytes) -> None:
    with pytest.raises(mp.MonitorError):
        mp.decode(data)


@given(st.binary(max_size=200))
def test_decode_never_raises_anything_else(data: bytes) -> None:
    with contextlib.suppress(mp.MonitorError):
        mp.decode(data)


def test_sequence_allows_only_the_expected_order() -> None:
    seq = mp.Ordering(max_failures=2)
    with pytest.raises(mp.MonitorError):
        seq.check(mp.Password("alice", b"x"))      # login before the signature
    seq.check(mp.Sign(b"k", HASH))
    seq.signed()
    with pytest.raises(mp.MonitorError):
        seq.check(mp.Sign(b"k", HASH))             # a second signature
    with pytest.raises(mp.MonitorError):
        seq.check(mp.Handoff("alice", b""))        # a handoff without a login
    seq.verdict("alice", False)
    seq.check(mp.Password("alice", b"x"))
    seq.verdict("bob", True)
    with pytest.raises(mp.MonitorError):
        seq.check(mp.Handoff("alice", b""))        # not the user who logged in
    seq.check(mp.Handoff("bob", b""))
    seq.handed_off()
    with pytest.raises(mp.MonitorError):
        seq.check(mp.Password("bob", b"x"))


def test_failures_exhaust_the_sequence() -> None:
    seq = mp.Ordering(max_failures=2)
    seq.signed()
    seq.verdict("a", False)
    seq.verdict("a", False)
    with pytest.raises(mp.MonitorError):
        seq.check(mp.Password("a", b"x"))


def test_link_times_out_and_reports_eof() -> None:
    a, b = mp.MonitorLink.pair()
    started = time.monotonic()
    with pytest.raises(mp.MonitorError, match="timed out"):
        a.receive(0.2)
    assert time.monotonic() - started < 2
    b.close()
    with pytest.raises(mp.MonitorError, match="closed"):
        a.receive(1.0)
    a.close()


def _policy(grace: float = 5.0) -> Policy:
    return Policy(sign=lambda key_id, th: b"sig:" + th,
                  check_password=lambda user, pw: pw == b"right",
                  check_key=lambda *args: False, max_failures=3, login_grace=grace)


def _child(link: mp.MonitorLink, steps: list[mp.Message]) -> list[mp.Message]:
    answers: list[mp.Message] = []

    def run() -> None:
        try:
            for step in steps:
                link.send(step)
                if not isinstance(step, mp.Handoff):
                    answers.append(link.receive(5))
        except mp.MonitorError:
            pass  # the monitor hung up: what a refused child sees
        finally:
            link.close()

    thread = threading.Thread(target=run)
    thread.start()
    return answers


def test_monitor_serves_a_login_through_to_handoff() -> None:
    monitor, child = mp.MonitorLink.pair()
    answers = _child(child, [mp.Sign(b"k", HASH), mp.Password("alice", b"wrong"),
                             mp.Password("alice", b"right"), mp.Handoff("alice", b"st")])
    handoff, status = serve_preauth(monitor, _policy(), started=time.monotonic(), tag="t")
    assert handoff == mp.Handoff("alice", b"st") and status == 0
    assert answers == [mp.Signature(b"sig:" + HASH), mp.Verdict(False), mp.Verdict(True)]


def test_monitor_outcomes_without_login() -> None:
    monitor, child = mp.MonitorLink.pair()
    _child(child, [mp.Sign(b"k", HASH)])
    assert serve_preauth(monitor, _policy(), started=time.monotonic(), tag="t") == \
        (None, EXIT_NOAUTH)
    monitor, child = mp.MonitorLink.pair()
    _child(child, [mp.Sign(b"k", HASH), mp.Password("a", b"bad")])
    assert serve_preauth(monitor, _policy(), started=time.monotonic(), tag="t") == \
        (None, EXIT_AUTHFAIL)
    monitor, child = mp.MonitorLink.pair()
    assert serve_preauth(monitor, _policy(grace=0.3), started=time.monotonic(), tag="t") == \
        (None, EXIT_GRACE)
    child.close()


def test_monitor_treats_a_breach_as_a_crash() -> None:
    monitor, child = mp.MonitorLink.pair()
    _child(child, [mp.Password("a", b"right")])  # a login before the handshake signature
    handoff, status = serve_preauth(monitor, _policy(), started=time.monotonic(), tag="t")
    monitor.close()
    assert handoff is None and status not in (0, EXIT_NOAUTH, EXIT_AUTHFAIL, EXIT_GRACE)
