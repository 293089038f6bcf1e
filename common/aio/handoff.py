"""Handing a logged-in connection to another process (privilege separation): the server's
pre-auth process accepts the login, flushes, and exports the core's state for the process
that serves the user. One procedure with its own ordering rules (nothing read, sealed or
timed in between), so it has a module of its own."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from common.aio.errors import ConnectionLost

if TYPE_CHECKING:
    from common.aio.connection import QsmpConnection

log = logging.getLogger("qsh.aio")

#: How long :meth:`QsmpConnection.accept_and_hand_off` waits for the kernel to take the
#: login's answer (a client that stops reading right after logging in cannot hold the
#: pre-auth process longer than this).
HANDOFF_FLUSH_TIMEOUT = 10.0


async def accept_then_hand_off(connection: QsmpConnection, timeout: float) -> bytes:
    """See :meth:`QsmpConnection.accept_and_hand_off`."""
    core, transport, loop = connection._core, connection._transport, connection.loop
    if transport is None or connection._closing or core.closed:
        raise ConnectionLost(connection.terminated)
    # Before anything changes (a refusal here can still refuse the login): the checks, and
    # accepting, which raises if no login is waiting and otherwise only queues a record.
    core.check_handoff(accepting=True)
    core.accept_auth()
    # Not one more byte from the socket: what the client sends from now on is the next
    # process's to read. Nothing from here awaits until the core is spent, so nothing else
    # can read, seal or fire a timer in between.
    connection._gate_reading = False
    transport.pause_reading()
    connection._read_paused = True
    connection._pump()  # the AUTH_SUCCESS record goes to the socket
    if core.closed:
        raise ConnectionLost(connection.terminated)
    state = core.export_handoff(connection._now())
    connection._arm_timer(None)
    # Everything sealed so far must reach the kernel before the next process seals the
    # next record, or the peer would see a gap in the sequence.
    deadline = loop.time() + timeout
    delay = 0.001
    while connection._wqueue or transport.get_write_buffer_size():
        if connection._transport is None or transport.is_closing():
            raise ConnectionLost(connection.terminated, "connection lost while handing over")
        if loop.time() >= deadline:
            connection.abort()
            raise TimeoutError("the peer did not take the login's answer in time")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    if connection._transport is None:
        raise ConnectionLost(connection.terminated, "connection lost while handing over")
    # Detach: forget the socket without closing or shutting it down (the next process
    # serves it; this one is about to exit). The transport stays referenced, so that
    # garbage collection does not close our descriptor early either.
    connection._release_socket()
    connection._handed_off_transport = transport
    connection._transport = None
    assert core.terminated is not None
    connection._on_terminated(core.terminated)
    if not connection._closed.done():
        connection._closed.set_result(None)
    log.debug("conn=%d: handed over to another process", connection.number)
    return state
