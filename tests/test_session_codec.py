"""The session channel's request payloads: round trips and refusals."""

from __future__ import annotations

import contextlib
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.channels import session as s
from common.errors import InvalidInput, QsmpError

sizes = st.builds(s.WindowSize, st.integers(0, s.MAX_DIMENSION), st.integers(0, s.MAX_DIMENSION),
                  st.integers(0, s.MAX_DIMENSION), st.integers(0, s.MAX_DIMENSION))


@given(term=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
                    max_size=s.MAX_TERM), size=sizes)
def test_pty_request_round_trip(term: str, size: s.WindowSize) -> None:
    request = s.PtyRequest(term, size)
    assert s.PtyRequest.decode(request.encode()) == request


@given(size=sizes)
def test_window_change_round_trip(size: s.WindowSize) -> None:
    assert s.decode_window_change(s.encode_window_change(size)) == size


@given(command=st.text(max_size=200).filter(lambda c: "\x00" not in c))
def test_exec_round_trip(command: str) -> None:
    assert s.decode_exec(s.encode_exec(command)) == command


def test_env_and_exit_messages() -> None:
    assert s.decode_env(s.encode_env("LANG", "C.UTF-8")) == ("LANG", "C.UTF-8")
    assert s.decode_exit_status(s.encode_exit_status(7)) == 7
    sig = s.ExitSignal("TERM", False, "terminated")
    assert s.ExitSignal.decode(sig.encode()) == sig
    assert s.decode_signal(s.encode_signal("INT")) == signal.SIGINT
    assert s.exit_code_for_signal("INT") == 128 + signal.SIGINT


@pytest.mark.parametrize(("decode", "payload"), [
    (s.decode_exec, b""),  # truncated
    (s.decode_exec, s.encode_exec("x") + b"\x00"),  # a trailing byte
    (s.decode_exec, s.encode_exec("a\x00b")),  # NUL inside a command
    (s.decode_window_change, s.encode_window_change(s.WindowSize(s.MAX_DIMENSION + 1, 1))),
    (s.PtyRequest.decode, s.PtyRequest("xterm\n", s.WindowSize(80, 24)).encode()),
])
def test_malformed_payloads_are_invalid_input(decode: object, payload: bytes) -> None:
    assert callable(decode)
    with pytest.raises(InvalidInput):
        decode(payload)


def test_an_exit_signal_message_is_cut_by_bytes_as_the_reader_bounds_it() -> None:
    """1,024 two-byte characters are 2,048 bytes: cut by characters, the message was more
    than the peer reads, and the peer ended the connection (PROTOCOL.md section 16, Q22)."""
    sig = s.ExitSignal("TERM", True, "\u00e9" * s.MAX_MESSAGE)
    decoded = s.ExitSignal.decode(sig.encode())
    assert decoded.message == "\u00e9" * (s.MAX_MESSAGE // 2)
    assert (decoded.signal, decoded.core_dumped) == ("TERM", True)
    odd = s.ExitSignal("TERM", False, "a" + "\u00e9" * s.MAX_MESSAGE)  # a boundary mid-character
    assert s.ExitSignal.decode(odd.encode()).message == "a" + "\u00e9" * (s.MAX_MESSAGE // 2 - 1)


def test_unknown_signal_and_bad_env_name() -> None:
    with pytest.raises(InvalidInput):
        s.decode_signal(b"\x04NOPE")
    with pytest.raises(InvalidInput):
        s.decode_env(s.encode_env("A=B", "x"))


@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_protocol_errors(data: bytes) -> None:
    for decode in (s.decode_exec, s.decode_env, s.decode_window_change, s.decode_signal,
                   s.decode_exit_status, s.PtyRequest.decode, s.ExitSignal.decode):
        with contextlib.suppress(QsmpError):
            decode(data)


def test_exit_code_for_signals_beyond_the_wire_table() -> None:
    assert s.exit_code_for_signal("BUS") == 128 + signal.SIGBUS
    assert s.exit_code_for_signal("RTMIN") == 128 + signal.SIGRTMIN  # looked up locally
    assert s.exit_code_for_signal("NOSUCH") == 128
