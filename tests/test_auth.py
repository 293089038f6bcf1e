"""User authentication over the established channel: both real cores, in memory."""

from __future__ import annotations

import functools

import pytest
from helpers import CLIENT_SEED, NOW, SERVER_SEED, host_key, pump, rng_for, take, terminations

from common.accounts.keys import HostKey
from common.crypto.rng import DeterministicRng
from common.errors import ErrorCode, UsageError
from common.protocol.auth import (
    FIRST_FAILURE_DELAY,
    MAX_FAILURE_DELAY,
    AuthFailed,
    AuthMessage,
    AuthRequested,
    AuthSucceeded,
    signed_data,
)
from common.protocol.connection import Connection
from common.protocol.handshake import ClientHandshake, ServerHandshake
from common.protocol.mux import ChannelOpenRequest
from common.protocol.negotiation import Offer
from common.wire import Writer


@functools.cache
def user_key() -> HostKey:
    return HostKey.generate("mldsa65", now=NOW, rng=DeterministicRng(b"qsh test user key"))


def pair(**server_kwargs: object) -> tuple[Connection, Connection]:
    key = host_key()
    client = Connection(ClientHandshake(Offer(), key.public, rng=rng_for(CLIENT_SEED)),
                        rng=rng_for(CLIENT_SEED))
    server = Connection(ServerHandshake((key,), rng=rng_for(SERVER_SEED)),
                        rng=rng_for(SERVER_SEED), require_auth=True, **server_kwargs)  # type: ignore[arg-type]
    client.start(NOW)
    server.start(NOW)
    return client, server


def events_of(kind: type, events: list[object]) -> list[object]:
    return [e for e in events if isinstance(e, kind)]


def test_password_rides_behind_the_establish_request() -> None:
    """The request leaves in the client's third flight, with the establish request, so
    login costs no round trip of its own."""
    client, server = pair()
    client.authenticate_password("alice", b"correct horse")
    flights = []
    for _ in range(3):
        flights.append(take(client))
        server.receive_data(flights[-1], NOW)
        client.receive_data(take(server), NOW)
    [request] = events_of(AuthRequested, server.events_received())
    assert request == AuthRequested("alice", "password", password=b"correct horse")
    assert "horse" not in repr(request)
    server.accept_auth()
    pump(client, server, NOW)
    assert events_of(AuthSucceeded, client.events_received()) == [AuthSucceeded("alice")]
    assert client.authenticated_user == server.authenticated_user == "alice"


def test_channel_traffic_waits_for_the_answer() -> None:
    client, server = pair()
    client.authenticate_password("alice", b"pw")
    client.mux.open_channel("session")
    pump(client, server, NOW)
    seen = server.events_received()
    assert events_of(AuthRequested, seen) and not events_of(ChannelOpenRequest, seen)
    server.accept_auth()
    pump(client, server, NOW)
    assert len(events_of(ChannelOpenRequest, server.events_received())) == 1


def test_user_key_signature_is_checked_by_the_core() -> None:
    client, server = pair()
    client.authenticate_publickey("bob", user_key())
    pump(client, server, NOW)
    [request] = events_of(AuthRequested, server.events_received())
    assert request.method == "publickey" and request.public_key == user_key().public
    server.accept_auth()
    pump(client, server, NOW)
    assert events_of(AuthSucceeded, client.events_received()) == [AuthSucceeded("bob")]


def test_signature_from_another_session_is_refused_without_asking() -> None:
    """A replayed key signature (made over another session ID) never reaches the
    application: the core refuses it, after the failure delay."""
    client, server = pair()
    pump(client, server, NOW)
    key = user_key()
    blob = key.public.encode()
    stale = key.sign(signed_data(bytes(32), "bob", blob))
    body = (Writer().name("bob").name("publickey").vbytes(blob).vbytes(stale).getvalue())
    assert server.transport is not None and client.transport is not None
    client.transport.send(AuthMessage.AUTH_REQUEST, body)
    client._client_auth.sent("bob")  # the test sends by hand what the API would build
    server.receive_data(take(client), NOW)
    assert not events_of(AuthRequested, server.events_received())
    assert take(server) == b""
    assert server.next_timer() == NOW + FIRST_FAILURE_DELAY
    server.handle_timer(NOW + FIRST_FAILURE_DELAY)
    client.receive_data(take(server), NOW)
    [failed] = events_of(AuthFailed, client.events_received())
    assert isinstance(failed, AuthFailed) and "signature" in failed.message


def test_failures_wait_longer_each_time_and_end_the_connection() -> None:
    client, server = pair(max_auth_attempts=5)
    now = NOW
    delays = []
    for attempt in range(5):
        client.authenticate_password("alice", b"wrong%d" % attempt)
        pump(client, server, now)
        assert events_of(AuthRequested, server.events_received())
        server.reject_auth(now)
        due = server.next_timer()
        assert due is not None
        delays.append(due - now)
        server.handle_timer(due - 0.01)
        assert take(server) == b""  # nothing before the delay
        server.handle_timer(due)
        now = due
        client.receive_data(take(server), now)
        client_events = client.events_received()
        assert events_of(AuthFailed, client_events)
    expected = [min(FIRST_FAILURE_DELAY * 2**i, MAX_FAILURE_DELAY) for i in range(5)]
    assert delays == pytest.approx(expected)
    (term,) = terminations(server.events_received())
    assert term.code == ErrorCode.AUTHENTICATION_FAILURE and not term.by_peer
    (peer_term,) = terminations(client_events)
    assert peer_term.code == ErrorCode.AUTHENTICATION_FAILURE and peer_term.by_peer


def test_channel_before_login_is_a_protocol_error() -> None:
    client, server = pair()
    client.mux.open_channel("session")  # no authenticate_*: nothing holds it back
    pump(client, server, NOW)
    (term,) = terminations(server.events_received())
    assert term.code == ErrorCode.INVALID_REQUEST


def test_second_request_before_the_answer_is_refused() -> None:
    client, server = pair()
    client.authenticate_password("alice", b"pw")
    pump(client, server, NOW)
    with pytest.raises(UsageError):  # the client API will not send two
        client.authenticate_password("alice", b"again")
    assert client.transport is not None
    client.transport.send(AuthMessage.AUTH_REQUEST, Writer().name("alice").name("password")
                          .vbytes(b"again").getvalue())
    server.receive_data(take(client), NOW)
    (term,) = terminations(server.events_received())
    assert term.code == ErrorCode.INVALID_REQUEST


def test_unknown_method_is_a_failure_not_an_error() -> None:
    client, server = pair()
    pump(client, server, NOW)
    assert client.transport is not None
    client._client_auth.sent("alice")
    client.transport.send(AuthMessage.AUTH_REQUEST,
                          Writer().name("alice").name("telepathy").getvalue())
    server.receive_data(take(client), NOW)
    assert not server.closed and not events_of(AuthRequested, server.events_received())
    server.handle_timer(NOW + FIRST_FAILURE_DELAY)
    client.receive_data(take(server), NOW)
    [failed] = events_of(AuthFailed, client.events_received())
    assert isinstance(failed, AuthFailed) and "password" in failed.methods


def test_login_grace_time() -> None:
    client, server = pair(login_grace=10.0)
    pump(client, server, NOW)
    assert server.next_timer() == NOW + 10.0
    server.handle_timer(NOW + 10.0)
    (term,) = terminations(server.events_received())
    assert term.code == ErrorCode.AUTHENTICATION_FAILURE and "grace" in term.reason


def test_login_grace_ends_with_success() -> None:
    client, server = pair(login_grace=10.0)
    client.authenticate_password("alice", b"pw")
    pump(client, server, NOW)
    server.accept_auth()
    pump(client, server, NOW)
    server.handle_timer(NOW + 11.0)
    assert not server.closed


def test_refused_login_keeps_channel_traffic_held() -> None:
    """After a refusal the client still holds its channel open (a login-requiring server
    would end the connection on it) and sends it once a later attempt succeeds."""
    client, server = pair()
    client.authenticate_password("alice", b"wrong")
    client.mux.open_channel("session")
    pump(client, server, NOW)
    server.reject_auth(NOW)
    server.handle_timer(NOW + FIRST_FAILURE_DELAY)
    pump(client, server, NOW + FIRST_FAILURE_DELAY)
    assert events_of(AuthFailed, client.events_received())
    assert not server.closed and not events_of(ChannelOpenRequest, server.events_received())
    client.authenticate_password("alice", b"right")
    pump(client, server, NOW + 1)
    server.accept_auth()
    pump(client, server, NOW + 1)
    assert len(events_of(ChannelOpenRequest, server.events_received())) == 1


def test_failure_lists_only_the_methods_the_server_offers() -> None:
    client, server = pair(auth_methods=("publickey",))
    client.authenticate_password("alice", b"pw")
    pump(client, server, NOW)
    server.reject_auth(NOW, "passwords are not accepted here: " + "é" * 1000)
    server.handle_timer(NOW + FIRST_FAILURE_DELAY)
    pump(client, server, NOW + FIRST_FAILURE_DELAY)
    [failed] = events_of(AuthFailed, client.events_received())
    assert isinstance(failed, AuthFailed) and failed.methods == ("publickey",)
    # A long non-ASCII message is cut to the byte limit on a character boundary.
    assert failed.message.startswith("passwords are not accepted here")
    assert not client.closed


@pytest.mark.parametrize("user", ["", "a" * 33, "has space", "naïve"])
def test_bad_user_names_are_refused_at_the_call(user: str) -> None:
    client, _ = pair()
    with pytest.raises(UsageError):
        client.authenticate_publickey(user, user_key())
    with pytest.raises(UsageError):
        client.authenticate_password(user, b"pw")
    assert client.data_to_send()  # the connection itself is unharmed
