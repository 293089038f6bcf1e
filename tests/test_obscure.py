"""Keystroke timing and size obfuscation (issue 12, PROTOCOL.md 7.8), sans-IO with a fake
clock: a small discrete-event simulation moves records between a client and a server
Connection with a fixed one-way latency, and a server "shell" that echoes what it gets."""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field

import pytest
from helpers import NOW, established_pair, split_packets, take

from common.errors import ErrorCode
from common.protocol.connection import Connection
from common.protocol.mux import ChannelData, ChannelOpenRequest
from common.protocol.negotiation import (
    ChaffPolicy,
    ObscurePolicy,
    Offer,
    ServerPolicy,
    agree_obscure,
)
from common.protocol.obscure import ECHO_WAIT
from common.protocol.transport import InnerType

TICK = 0.020
POLICY = ObscurePolicy()
LATENCY = 0.0002
ECHO_DELAY = 0.0007
#: A smallest-class record on the wire: header, plaintext of the first class, tag.
SMALL = POLICY.wire_size()


@dataclass
class Sim:
    client: Connection
    server: Connection
    cid: int
    sid: int
    echo: bool = True
    now: float = NOW
    #: (time, "c2s"/"s2c", wire size) of every record sent after the setup.
    log: list[tuple[float, str, int]] = field(default_factory=list)
    typed: list[float] = field(default_factory=list)
    received_by_server: bytearray = field(default_factory=bytearray)
    other_events: list[object] = field(default_factory=list)
    _queue: list[tuple[float, int, str, object]] = field(default_factory=list)
    _n: int = 0

    def at(self, when: float, kind: str, arg: object = None) -> None:
        self._n += 1
        heapq.heappush(self._queue, (when, self._n, kind, arg))

    def type(self, when: float, data: bytes = b"x") -> None:
        self.at(when, "key", data)

    def flush(self, conn: Connection) -> None:
        data = take(conn)
        direction = "c2s" if conn is self.client else "s2c"
        peer = self.server if conn is self.client else self.client
        for packet in split_packets(data):
            self.log.append((self.now, direction, len(packet)))
        if data:
            self.at(self.now + LATENCY, "deliver", (peer, data))

    def run_until(self, end: float) -> None:
        while True:
            timers = [(t, c) for c in (self.client, self.server)
                      if (t := c.next_timer()) is not None]
            first_timer = min(timers, key=lambda x: x[0]) if timers else None
            first_event = self._queue[0][0] if self._queue else None
            if first_timer is not None and (first_event is None
                                            or first_timer[0] < first_event):
                if first_timer[0] > end:
                    break
                self.now = max(self.now, first_timer[0])
                conn = first_timer[1]
                conn.handle_timer(self.now)
                self.flush(conn)
                continue
            if first_event is None or first_event > end:
                break
            when, _, kind, arg = heapq.heappop(self._queue)
            self.now = max(self.now, when)
            if kind == "key":
                assert isinstance(arg, bytes)
                self.typed.append(self.now)
                self.client.note_time(self.now)
                self.client.mux.send_data(self.cid, arg)
                self.flush(self.client)
            elif kind == "echo":
                assert isinstance(arg, bytes)
                self.server.note_time(self.now)
                self.server.mux.send_data(self.sid, arg)
                self.flush(self.server)
            else:
                assert isinstance(arg, tuple)
                dst, data = arg
                dst.receive_data(data, self.now)
                for event in dst.events_received():
                    if dst is self.server and isinstance(event, ChannelData):
                        self.received_by_server += event.data
                        if self.echo:
                            self.at(self.now + ECHO_DELAY, "echo", bytes(event.data))
                    elif not isinstance(event, ChannelData):
                        self.other_events.append(event)
                self.flush(dst)
        self.now = max(self.now, end)

    def window(self, start: float, end: float, direction: str) -> list[tuple[float, int]]:
        return [(t, size) for t, d, size in self.log if d == direction and start <= t < end]


def make_sim(*, offer: Offer | None = None, policy: ServerPolicy | None = None,
             interactive: bool = True, echo: bool = True,
             client_seed: bytes | None = None) -> Sim:
    kwargs: dict[str, object] = {"offer": offer or Offer(obscure=POLICY), "policy": policy}
    if client_seed is not None:
        kwargs["client_seed"] = client_seed
    client, server = established_pair(**kwargs)
    cid = client.mux.open_channel("session")
    sim = Sim(client, server, cid, -1, echo=echo)
    sim.flush(client)
    sim.run_until(NOW + 0.01)
    (req,) = [e for e in sim.other_events if isinstance(e, ChannelOpenRequest)]
    server.mux.accept_channel(req.channel_id)
    sim.sid = req.channel_id
    sim.flush(server)
    sim.run_until(NOW + 0.02)
    client.events_received()
    if interactive:
        client.set_interactive(True)
    sim.log.clear()
    return sim


def on_grid(times: list[float], start: float) -> bool:
    return all(abs(((t - start) / TICK) - round((t - start) / TICK)) < 1e-4 for t in times)


#: Irregular typing, gaps 35-290 ms (below the shortest fake period, so one clock run).
GAPS = [0.137, 0.052, 0.290, 0.081, 0.199, 0.035, 0.240, 0.117, 0.063, 0.171, 0.224, 0.098]


def type_burst(sim: Sim, start: float) -> float:
    t = start
    sim.type(t)
    for gap in GAPS:
        t += gap
        sim.type(t)
    return t


def test_keystrokes_leave_only_on_clock_ticks() -> None:
    sim = make_sim()
    start = NOW + 1.0
    last = type_burst(sim, start)
    sim.run_until(last + 0.5)
    sent = [t for t, _ in sim.window(start, last + 0.5, "c2s")]
    assert len(sent) > len(GAPS) + 1
    # The first keystroke starts the clock; every record after it is on its ticks.
    assert sent[0] == pytest.approx(start, abs=1e-6)
    assert on_grid(sent, start), [round((t - start) / TICK, 3) for t in sent]
    # Each keystroke waited at most one tick (the data arrived in order, all of it).
    assert bytes(sim.received_by_server) == b"x" * (len(GAPS) + 1)
    ticks = sorted(sent)
    for typed in sim.typed:
        first_after = min(t for t in ticks if t >= typed - 1e-9)
        assert first_after - typed <= TICK + 1e-6


def test_typing_and_fake_windows_look_alike() -> None:
    """A window of typing and an equally long window of the fakes that follow it: same
    record count and same size multiset, both directions."""
    sim = make_sim()
    start = NOW + 1.0
    last = type_burst(sim, start)
    sim.run_until(last + 5.0)
    length = 0.9  # shorter than the shortest fake period (1 s)
    typing_at = start - TICK / 2  # windows between ticks, so none straddles one
    fake_at = last + TICK / 2
    typing_c = sim.window(typing_at, typing_at + length, "c2s")
    fake_c = sim.window(fake_at, fake_at + length, "c2s")
    typing_s = sim.window(typing_at, typing_at + length, "s2c")
    fake_s = sim.window(fake_at, fake_at + length, "s2c")
    assert len(typing_c) == len(fake_c) == round(length / TICK)
    assert Counter(s for _, s in typing_c) == Counter(s for _, s in fake_c) == {
        SMALL: len(typing_c)}
    assert len(typing_s) == len(fake_s)
    assert Counter(s for _, s in typing_s) == Counter(s for _, s in fake_s)
    assert set(s for _, s in typing_s) == {SMALL}


def fake_period(sim: Sim, start: float) -> float:
    """Type once at ``start``; how long the clock kept sending fakes after it."""
    sim.type(start)
    sim.run_until(start + 4.0)
    sent = [t for t, _ in sim.window(start, start + 4.0, "c2s")]
    assert on_grid(sent, start)
    return sent[-1] - start


def test_fake_period_after_typing_has_a_random_length() -> None:
    sim = make_sim()
    periods = [fake_period(sim, NOW + 1.0 + 5.0 * i) for i in range(6)]
    for period in periods:
        assert POLICY.tail_min_ms / 1000 - TICK <= period <= POLICY.tail_max_ms / 1000 + TICK
    assert len({round(p / TICK) for p in periods}) >= 4, periods
    # After the fake period the clock stops: an idle session is silent.
    assert sim.window(NOW + 1.0 + 3.2, NOW + 1.0 + 5.0, "c2s") == []


def test_fakes_get_echo_shaped_replies() -> None:
    sim = make_sim()
    start = NOW + 1.0
    last = type_burst(sim, start)
    sim.run_until(last + 5.0)
    server = sim.server.transport
    assert server is not None and server.echo_mimic is not None
    c2s = sim.window(start, last + 5.0, "c2s")
    s2c = sim.window(start, last + 5.0, "s2c")
    # One reply per tick, real or fake, all of one size, each within the real echoes'
    # delay (the fakes draw theirs from the measured ones).
    assert len(s2c) == len(c2s)
    assert {s for _, s in s2c} == {SMALL}
    delays = [r - c for (c, _), (r, _) in zip(c2s, s2c, strict=True)]
    real = LATENCY + ECHO_DELAY
    assert all(real - 1e-6 <= d <= real + 0.0011 for d in delays), sorted(delays)[-3:]
    assert server.echo_mimic.fake_replies == len(c2s) - len(GAPS) - 1 > 0


def test_a_keystroke_without_echo_is_answered_too() -> None:
    """A password prompt echoes nothing: the protocol layer answers the keystroke anyway,
    so the reply count does not tell real ticks (no echo) from fakes (echoed)."""
    sim = make_sim(echo=False)
    start = NOW + 1.0
    last = type_burst(sim, start)
    sim.run_until(last + 5.0)
    c2s = sim.window(start, last + 5.0, "c2s")
    s2c = sim.window(start, last + 5.0, "s2c")
    assert len(s2c) == len(c2s)
    assert all(r - c <= LATENCY + ECHO_WAIT + 1e-6
               for (c, _), (r, _) in zip(c2s, s2c, strict=True))


def test_bulk_is_neither_delayed_nor_padded() -> None:
    sim = make_sim(echo=False)
    at = NOW + 1.0 + 0.0037  # off the grid of any clock
    sim.type(at, b"y" * 60_000)
    sim.run_until(at + 0.001)
    sent = sim.window(at, at + 0.001, "c2s")
    assert sent and all(t == pytest.approx(at, abs=1e-9) for t, _ in sent)
    payload_records = [s for _, s in sent]
    assert sum(payload_records) >= 60_000
    # Bulk records get the ordinary random padding (<= padding_max), not a size class.
    assert all(s > POLICY.size_classes[-1] for s in payload_records)
    # Server output is never held either.
    sim.at(at + 0.002, "echo", b"z" * 50_000)
    sim.run_until(at + 0.003)
    out = sim.window(at + 0.002, at + 0.003, "s2c")
    assert out and all(t == pytest.approx(at + 0.002, abs=1e-9) for t, _ in out)


def test_no_clock_without_a_pty_session() -> None:
    sim = make_sim(interactive=False, echo=False)
    sim.type(NOW + 1.0037)
    sim.run_until(NOW + 4.0)
    (sent,) = sim.window(NOW + 1.0, NOW + 4.0, "c2s")
    assert sent == (pytest.approx(NOW + 1.0037, abs=1e-9), SMALL)  # padded, not held


def test_bulk_does_not_overtake_a_held_keystroke() -> None:
    sim = make_sim(echo=False)
    start = NOW + 1.0
    sim.type(start, b"a")
    sim.type(start + 0.005, b"b")  # held for the next tick
    sim.type(start + 0.006, b"C" * 20_000)  # releases "b" first
    sim.run_until(start + 0.1)
    assert bytes(sim.received_by_server) == b"ab" + b"C" * 20_000


def test_chaff_makes_idle_look_like_typing() -> None:
    """With chaff the clock never stops: any idle window of an interactive session looks
    like typing (count and sizes), not only the fake period after it."""
    sim = make_sim(offer=Offer(obscure=POLICY, chaff=ChaffPolicy(enabled=True)))
    start = NOW + 10.0
    last = type_burst(sim, start)
    sim.run_until(last + 10.0)
    length = 0.9
    typing = sim.window(start, start + length, "c2s")
    for idle_start in (NOW + 1.0, NOW + 5.0, last + 4.0, last + 8.0):
        idle = sim.window(idle_start, idle_start + length, "c2s")
        assert len(idle) == len(typing) == round(length / TICK)
        assert Counter(s for _, s in idle) == Counter(s for _, s in typing)
        idle_s = sim.window(idle_start, idle_start + length, "s2c")
        assert Counter(s for _, s in idle_s) == Counter(
            s for _, s in sim.window(start, start + length, "s2c"))


def test_server_clamps_the_clock_and_an_old_peer_gets_nothing() -> None:
    sim = make_sim(policy=ServerPolicy(obscure_min_interval_ms=40))
    transport = sim.client.transport
    assert transport is not None and transport.keystroke_clock is not None
    assert transport.keystroke_clock.interval == pytest.approx(0.040)
    # A server that does not take the offer (or predates it): no clock, no fakes.
    sim = make_sim(policy=ServerPolicy(allow_obscure=False))
    assert sim.client.transport is not None and sim.client.transport.keystroke_clock is None
    sim.type(NOW + 1.0)
    sim.run_until(NOW + 4.0)
    assert len(sim.window(NOW + 1.0, NOW + 4.0, "c2s")) == 1
    # A client that did not offer it: the server sends no OBSCURE record.
    sim = make_sim(offer=Offer())
    assert sim.server.transport is not None and sim.server.transport.echo_mimic is None
    assert agree_obscure(None, ServerPolicy()) is None


def test_fake_keystroke_without_agreement_is_refused() -> None:
    client, server = established_pair()
    assert client.transport is not None
    client.transport.send(InnerType.FAKE_KEYSTROKE, b"")
    server.receive_data(take(client), NOW)
    assert server.terminated is not None
    assert server.terminated.code == ErrorCode.INVALID_REQUEST


def test_unoffered_obscure_record_is_refused() -> None:
    client, server = established_pair()
    assert server.transport is not None
    server.transport.send(InnerType.OBSCURE, POLICY.encoded())
    client.receive_data(take(server), NOW)
    assert client.terminated is not None
    assert client.terminated.code == ErrorCode.UNKNOWN_PROTOCOL



# --- the asyncio adapter: ticks on time on a real event loop -------------------------------


def test_ticks_fire_on_time_whatever_else_wakes_the_loop() -> None:
    """Why a capture told typing from idle with chaff (bench/keystrokes.py, KS test on the
    client's inter-record times): asyncio's call_at waits in epoll with a timeout rounded up
    to whole milliseconds, so a tick left up to 1 ms late, by an amount set by what last
    woke the loop: a keystroke at a random moment while typing, the previous tick's reply
    while idle. Here the loop's selector rounds its timeouts up to 10 ms instead of 1 (the
    same fault, large enough to stand out of a loaded machine's scheduling noise), and
    keystrokes come at random moments on real loopback: the ticks must still be handled
    on time (call_at: 5 ms late on median)."""
    import asyncio
    import math
    import random
    import selectors
    import time

    from common import aio
    from common.accounts.keys import HostKey
    from common.protocol.handshake import ClientHandshake, ServerHandshake

    class CoarseSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
        def select(self, timeout: float | None = None) -> list[object]:
            if timeout is not None and timeout > 0:
                timeout = math.ceil(timeout / 0.010) * 0.010
            return super().select(timeout)  # type: ignore[no-any-return]

    host_key = HostKey.generate("mldsa65", now=time.time())
    offer = Offer(obscure=POLICY, chaff=ChaffPolicy(enabled=True))
    lateness: list[float] = []

    async def on_channel(connection: aio.QsmpConnection, channel: aio.Channel) -> None:
        channel.accept()
        async for chunk in channel:
            channel.write(chunk)

    async def main() -> None:
        server = await aio.serve(
            "127.0.0.1", 0, make_handshake=lambda: ServerHandshake([host_key]),
            on_channel=on_channel)
        try:
            client = await aio.connect("127.0.0.1", server.port,
                                       handshake=ClientHandshake(offer, host_key.public))
            channel = await client.open_channel("echo")
            client.set_interactive(True)
            core = client._core
            transport = core.transport
            assert transport is not None and transport.keystroke_clock is not None
            clock = transport.keystroke_clock
            handle_timer = core.handle_timer

            def timed(now: float) -> None:
                tick = clock.next_tick
                if tick is not None and now >= tick:
                    lateness.append(time.monotonic() - (tick - client._offset))
                handle_timer(now)

            core.handle_timer = timed  # type: ignore[method-assign]
            rng = random.Random(12)
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                channel.write(b"k")
                await asyncio.sleep(rng.uniform(0.003, 0.037))
            client.close()
            await client.wait_closed()
        finally:
            server.close()
            await server.wait_closed()

    loop = asyncio.SelectorEventLoop(CoarseSelector())
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 20))
    finally:
        loop.close()
    assert len(lateness) > 50
    lateness.sort()
    quartiles = [round(lateness[len(lateness) * q // 4] * 1000, 2) for q in (1, 2, 3)]
    assert quartiles[1] < 2.0, f"ticks late by {quartiles} ms (quartiles)"


def test_precise_timer_fires_once_at_the_latest_arming_and_not_after_cancel() -> None:
    """The timerfd behind the ticks: re-arming replaces the deadline (an expiry already
    pending is forgotten), cancel disarms, close releases the descriptor."""
    import asyncio
    import os
    import time

    from common.aio.timer import precise_timer

    async def main() -> tuple[list[float], float, bool]:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        timer = precise_timer(loop, lambda: fired.append(loop.time()))
        assert timer is not None
        start = loop.time()
        timer.call_at(start + 0.005)
        time.sleep(0.010)  # the first deadline passes while the loop is busy...
        timer.call_at(start + 0.030)  # ...and is replaced before the loop looks
        await asyncio.sleep(0.060)
        timer.call_at(loop.time() + 0.010)
        timer.cancel()
        await asyncio.sleep(0.030)
        fd = timer._fd
        timer.close()
        try:
            os.fstat(fd)
        except OSError:
            closed = True
        else:
            closed = False
        return fired, start, closed

    fired, start, closed = asyncio.run(main())
    assert len(fired) == 1 and fired[0] >= start + 0.030
    assert closed, "the timerfd was not closed"
