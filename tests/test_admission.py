"""qshd.admission without sockets or clocks: MaxStartups' random early drop, the per-source
count of unauthenticated connections, PerSourcePenalties (accumulation, activation, expiry,
the bounded table, the exempt list), the log lines watchers match, and the config keywords.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections.abc import Iterator

import pytest

from qshd.admission import (
    Admission,
    AdmissionSettings,
    Penalty,
    PenaltySettings,
    Refused,
    Startups,
    Ticket,
    classify,
    parse_address,
)
from qshd.config import PER_SOURCE_UNLIMITED, ConfigError, parse

T0 = 1000.0
LOCAL = ("127.0.0.1", 2022)


class Dice:
    """A scripted ``random_below``: returns the given values in turn, records the calls."""

    def __init__(self, *values: int) -> None:
        self.values: Iterator[int] = iter(values)
        self.calls = 0

    def __call__(self, n: int) -> int:
        assert n == 100
        self.calls += 1
        return next(self.values)


def never(n: int) -> int:
    raise AssertionError("the dice must not be rolled here")


def admit(admission: Admission, address: str, now: float = T0,
          port: int = 40000) -> Ticket | Refused:
    return admission.admit(address, port, *LOCAL, now)


def admitted(admission: Admission, address: str, now: float = T0) -> Ticket:
    ticket = admit(admission, address, now)
    assert isinstance(ticket, Ticket), ticket
    return ticket


def fail_logins(admission: Admission, address: str, times: int, now: float = T0,
                kind: Penalty = Penalty.AUTHFAIL) -> None:
    for _ in range(times):
        admission.ended(admitted(admission, address, now), kind, now)


@pytest.fixture()
def qshd_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="qshd")
    return caplog


# --------------------------------------------------------------------------- MaxStartups


def test_drop_probability_rises_linearly_from_start_to_full() -> None:
    s = Startups(10, 30, 100)
    assert [s.drop_percent(n) for n in (0, 9, 10, 55, 99, 100, 500)] == [
        0, 0, 30, 65, 99, 100, 100]
    # A single number is a hard cap: nothing below it is dropped, everything at it.
    assert [Startups(64, 100, 64).drop_percent(n) for n in (63, 64)] == [0, 100]
    for bad in ((0, 30, 10), (11, 30, 10), (5, 0, 10), (5, 101, 10)):
        with pytest.raises(ValueError):
            Startups(*bad)


def test_drop_is_decided_by_the_dice_only_when_uncertain() -> None:
    s = Startups(10, 30, 100)
    assert not s.drop(9, never) and s.drop(100, never)
    assert s.drop(10, Dice(29)) and not s.drop(10, Dice(30))  # 30 %: 0..29 of 0..99
    assert s.drop(55, Dice(64)) and not s.drop(55, Dice(65))


@pytest.mark.parametrize("startups", [10, 40, 77, 99])
def test_drop_frequency_matches_the_probability(startups: int) -> None:
    s = Startups(10, 30, 100)
    rng = random.Random(startups)
    trials = 20000
    drops = sum(s.drop(startups, rng.randrange) for _ in range(trials))
    assert abs(drops / trials * 100 - s.drop_percent(startups)) < 1.5


def test_admit_counts_unauthenticated_connections_and_drops_past_start() -> None:
    dice = Dice(99, 0)
    admission = Admission(AdmissionSettings(startups=Startups(3, 50, 6), per_source=None),
                          random_below=dice)
    tickets = [admitted(admission, f"10.0.0.{i}") for i in range(3)]
    assert admission.startups == 3 and dice.calls == 0
    assert isinstance(admit(admission, "10.0.1.1"), Ticket)  # rolled 99: 50 % spares it
    refused = admit(admission, "10.0.1.2")  # rolled 0
    assert refused == Refused("past MaxStartups", 4)
    admission.authenticated(tickets[0])  # a login frees its slot...
    admission.ended(tickets[1], None, T0)  # ...and so does an end
    admission.ended(tickets[1], None, T0)  # (once)
    assert admission.startups == 2
    assert isinstance(admit(admission, "10.0.1.3"), Ticket)  # below start again: no dice
    assert dice.calls == 2


# --------------------------------------------------------------------------- per source


def test_one_source_holds_at_most_per_source_slots() -> None:
    admission = Admission(AdmissionSettings(per_source=2, netblock4=24), random_below=never)
    first = admitted(admission, "192.0.2.1")
    admitted(admission, "192.0.2.200")  # the same /24
    assert admit(admission, "192.0.2.7") == Refused("past PerSourceMaxStartups", 2)
    assert isinstance(admit(admission, "192.0.3.1"), Ticket)  # another /24
    assert admission.unauthenticated_from("192.0.2.99") == 2
    admission.authenticated(first)
    assert isinstance(admit(admission, "192.0.2.7"), Ticket)


def test_sources_are_grouped_like_sshd() -> None:
    admission = Admission(AdmissionSettings(netblock4=32, netblock6=64))
    assert admission.source("127.0.0.2") == ipaddress.ip_network("127.0.0.2/32")
    assert admission.source("2001:db8::1%eth0") == ipaddress.ip_network("2001:db8::/64")
    # A dual-stack socket's IPv4-mapped address is that IPv4 address.
    assert admission.source("::ffff:192.0.2.5") == ipaddress.ip_network("192.0.2.5/32")
    assert parse_address("not an address") is None
    assert admission.source("unknown") is None
    assert isinstance(admit(admission, "unknown"), Ticket)  # counted globally only


def test_the_default_per_source_limit_stays_below_the_random_drop() -> None:
    """The issue: one source's held sockets locked everyone out. With the defaults it can
    never hold enough slots to make others' connections face the dice."""
    settings = parse("").admission_settings()
    assert settings.startups == Startups(10, 30, 100)
    assert settings.per_source is not None and settings.per_source < settings.startups.start
    admission = Admission(settings, random_below=never)
    for _ in range(64):
        admit(admission, "127.0.0.2")
    assert admission.startups == settings.per_source
    for _ in range(settings.startups.start - settings.per_source):
        admitted(admission, "127.0.0.1")


# --------------------------------------------------------------------------- penalties


def test_penalties_accumulate_activate_past_min_and_expire(qshd_log: pytest.LogCaptureFixture
                                                          ) -> None:
    admission = Admission()  # sshd's defaults: authfail 5 s, min 15 s, max 600 s
    fail_logins(admission, "203.0.113.9", 3)
    assert admission.penalised("203.0.113.9", T0) is None  # 15 s is not more than min
    (left, active, _reason), = admission.penalties(T0).values()
    assert (left, active) == (15.0, False)
    fail_logins(admission, "203.0.113.9", 1)
    assert admission.penalised("203.0.113.9", T0) == "penalty: failed authentication"
    refused = admit(admission, "203.0.113.9", T0 + 1)
    assert refused == Refused("penalty: failed authentication", 0)
    assert isinstance(admit(admission, "203.0.113.10", T0 + 1), Ticket)  # others are not
    assert admission.penalised("203.0.113.9", T0 + 19.9) is not None
    assert admission.penalised("203.0.113.9", T0 + 20.0) is None  # expired, and gone
    assert admission.penalties(T0 + 20.0) == {}
    text = qshd_log.text
    assert ("srclimit_penalise: ipv4: new 203.0.113.9/32 deferred penalty of 5.000 seconds "
            "for penalty: failed authentication") in text
    assert ("srclimit_penalise: 203.0.113.9/32: activating ipv4 penalty of 20.000 seconds "
            "for penalty: failed authentication") in text
    assert ("drop connection #0 from [203.0.113.9]:40000 on [127.0.0.1]:2022 "
            "penalty: failed authentication") in text


def test_penalties_are_capped_at_max_and_keep_the_latest_reason() -> None:
    admission = Admission(AdmissionSettings(penalties=PenaltySettings(max=60.0)))
    for _ in range(40):  # (once active, its connections are refused: penalise directly)
        admission.penalise("198.51.100.1", Penalty.AUTHFAIL, T0)
    admission.penalise("198.51.100.1", Penalty.GRACE_EXCEEDED, T0)
    (left, active, reason), = admission.penalties(T0).values()
    assert (left, active, reason) == (60.0, True, "penalty: exceeded LoginGraceTime")
    assert admission.penalised("198.51.100.1", T0 + 59) is not None
    assert admission.penalised("198.51.100.1", T0 + 60) is None


def test_a_long_penalty_is_active_at_once_and_each_kind_has_its_duration() -> None:
    admission = Admission()
    fail_logins(admission, "192.0.2.1", 1, kind=Penalty.CRASH)  # 90 s > min
    assert admission.penalised("192.0.2.1", T0) == "penalty: caused crash"
    fail_logins(admission, "192.0.2.2", 1, kind=Penalty.NOAUTH)
    fail_logins(admission, "192.0.2.3", 1, kind=Penalty.GRACE_EXCEEDED)
    left = {str(s): v[0] for s, v in admission.penalties(T0).items()}
    assert left == {"192.0.2.1/32": 90.0, "192.0.2.2/32": 1.0, "192.0.2.3/32": 10.0}


def test_no_penalty_after_a_login_for_exempt_sources_or_when_disabled() -> None:
    admission = Admission(AdmissionSettings(
        exempt=(ipaddress.ip_network("10.9.0.0/16"), ipaddress.ip_network("2001:db8::/32"))))
    ticket = admitted(admission, "192.0.2.1")
    admission.authenticated(ticket)
    admission.ended(ticket, Penalty.CRASH, T0)
    fail_logins(admission, "10.9.8.7", 10, kind=Penalty.CRASH)
    fail_logins(admission, "2001:db8::5", 10, kind=Penalty.CRASH)
    assert admission.penalties(T0) == {}
    off = Admission(AdmissionSettings(penalties=PenaltySettings(enabled=False)))
    fail_logins(off, "192.0.2.1", 10, kind=Penalty.CRASH)
    zero = Admission(AdmissionSettings(penalties=PenaltySettings(authfail=0)))
    fail_logins(zero, "192.0.2.1", 10)
    assert off.penalties(T0) == {} and zero.penalties(T0) == {}


def test_ipv6_sources_are_penalised_by_network() -> None:
    admission = Admission(AdmissionSettings(netblock6=64))
    fail_logins(admission, "2001:db8:1:2::1", 1, kind=Penalty.CRASH)
    assert admission.penalised("2001:db8:1:2:ffff::9", T0) == "penalty: caused crash"
    assert admission.penalised("2001:db8:1:3::1", T0) is None


def test_a_full_table_makes_room_by_dropping_the_soonest_to_expire() -> None:
    admission = Admission(AdmissionSettings(penalties=PenaltySettings(max_sources4=2)))
    fail_logins(admission, "192.0.2.1", 1, kind=Penalty.CRASH)  # expires at +90
    fail_logins(admission, "192.0.2.2", 1, kind=Penalty.NOAUTH, now=T0 + 1)  # +2
    fail_logins(admission, "192.0.2.3", 1, kind=Penalty.GRACE_EXCEEDED, now=T0 + 2)  # +12
    assert sorted(str(s) for s in admission.penalties(T0 + 2)) == [
        "192.0.2.1/32", "192.0.2.3/32"]
    # IPv6 has its own table.
    fail_logins(admission, "2001:db8::1", 1, kind=Penalty.CRASH)
    assert len(admission.penalties(T0 + 2)) == 3


def test_deny_all_refuses_the_whole_family_while_the_table_is_full(
        qshd_log: pytest.LogCaptureFixture) -> None:
    admission = Admission(AdmissionSettings(penalties=PenaltySettings(
        max_sources4=1, overflow4="deny-all")))
    fail_logins(admission, "192.0.2.1", 1, kind=Penalty.NOAUTH)
    assert admit(admission, "198.51.100.7") == Refused("too many penalised addresses", 0)
    assert isinstance(admit(admission, "2001:db8::7"), Ticket)
    admission.penalise("192.0.2.2", Penalty.CRASH, T0)
    assert "ipv4 penalty table full, cannot penalise 192.0.2.2/32" in qshd_log.text
    assert isinstance(admit(admission, "198.51.100.7", T0 + 1), Ticket)  # expired: room


def test_the_penalty_heap_stays_bounded_under_repeated_penalties() -> None:
    admission = Admission()
    for i in range(2000):
        admission.penalise("192.0.2.1", Penalty.AUTHFAIL, T0 + i * 0.001)
    table = admission._tables[4]
    assert len(table.entries) == 1 and len(table._heap) <= 4 * 1 + 64 + 1


def test_drop_lines_are_rate_limited_with_a_count(qshd_log: pytest.LogCaptureFixture) -> None:
    admission = Admission(AdmissionSettings(per_source=1))
    admitted(admission, "192.0.2.1")
    for i in range(100):
        admit(admission, "192.0.2.1", T0 + i * 0.01)
    infos = [r.getMessage() for r in qshd_log.records if r.levelno == logging.INFO]
    assert 15 <= sum("drop connection" in m for m in infos) <= 25
    assert admit(admission, "192.0.2.1", T0 + 10) == Refused("past PerSourceMaxStartups", 1)
    assert any(m.startswith("MaxStartups logging rate-limited: additional ") for m in
               (r.getMessage() for r in qshd_log.records))


def test_classify_follows_how_sshd_reads_a_preauth_exit() -> None:
    assert classify(authenticated=True, attempted=True, crashed=True) is None
    assert classify(authenticated=False, attempted=True, crashed=True) is Penalty.CRASH
    assert classify(authenticated=False, attempted=True,
                    grace_exceeded=True) is Penalty.GRACE_EXCEEDED
    assert classify(authenticated=False, attempted=True) is Penalty.AUTHFAIL
    assert classify(authenticated=False, attempted=False) is Penalty.NOAUTH


# --------------------------------------------------------------------------- configuration


def test_admission_keywords_and_defaults() -> None:
    defaults = parse("")
    assert (defaults.max_startups_begin, defaults.max_startups_rate,
            defaults.max_startups) == (10, 30, 100)
    assert defaults.admission_settings().per_source == 5
    assert defaults.first_message_timeout == 10.0
    assert defaults.penalties == PenaltySettings()
    cfg = parse("MaxStartups 20:50:40\nPerSourceMaxStartups none\n"
                "PerSourceNetBlockSize 24:56\nPerSourcePenaltyExemptList 10.0.0.0/8, ::1\n"
                "FirstMessageTimeout 3s\n"
                "PerSourcePenalties authfail:1s noauth:0 grace-exceeded:2m max-sources4:9 "
                "overflow:deny-all\n"
                "PerSourcePenalties authfail:30 crash:1m min:2 max:1h overflow6:deny-all\n")
    settings = cfg.admission_settings()
    assert settings.startups == Startups(20, 50, 40) and settings.per_source is None
    assert (settings.netblock4, settings.netblock6) == (24, 56)
    assert settings.exempt == (ipaddress.ip_network("10.0.0.0/8"),
                               ipaddress.ip_network("::1/128"))
    assert cfg.first_message_timeout == 3.0
    assert settings.penalties == PenaltySettings(
        authfail=1.0, noauth=0.0, grace_exceeded=120.0, max_sources4=9,
        overflow4="deny-all", crash=60.0, min=2.0, max=3600.0, overflow6="deny-all")
    single = parse("MaxStartups 7\nPerSourceMaxStartups 3\nPerSourceNetBlockSize 16\n")
    assert single.startups() == Startups(7, 100, 7)
    assert single.admission_settings().per_source == 3
    assert (single.per_source_netblock4, single.per_source_netblock6) == (16, 128)
    assert parse("PerSourceMaxStartups none\n").per_source_max_startups == PER_SOURCE_UNLIMITED
    assert not parse("PerSourcePenalties no\nPerSourcePenalties crash:1\n").penalties.enabled
    assert parse("PerSourcePenalties crash:1\nPerSourcePenalties no\n").penalties.enabled


@pytest.mark.parametrize(("line", "message"), [
    ("MaxStartups 10:30", "expected start:rate:full or a number"),
    ("MaxStartups 30:30:10", "start must not exceed full"),
    ("MaxStartups 10:0:100", "outside 1..100000"),
    ("MaxStartups 10:101:100", "rate must be 1..100"),
    ("PerSourceMaxStartups 0", "outside 1..100000"),
    ("PerSourceNetBlockSize 33", "outside 0..32"),
    ("PerSourceNetBlockSize 24:129", "outside 0..128"),
    ("PerSourcePenalties authfail", "expected name:value"),
    ("PerSourcePenalties invaliduser:5", "unsupported item"),
    ("PerSourcePenalties yes crash:5", "must appear alone"),
    ("PerSourcePenalties overflow:maybe", "expected one of deny-all, permissive"),
    ("PerSourcePenalties min:soon", "expected seconds"),
    ("PerSourcePenaltyExemptList 10.0.0.0/8,example.org", "expected addresses or networks"),
    ("FirstMessageTimeout 2h", "outside 0..3600 seconds"),
])
def test_admission_keyword_errors_name_the_line(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(f"Port 2222\n{line}\n", "cfg")
    text = str(info.value)
    assert text.startswith("cfg:2: ") and message in text and "\n" not in text
