"""known_hosts: TOFU bookkeeping in OpenSSH's format, never losing what the user wrote."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.accounts.keys import KeyFileError, PublicKey
from common.accounts.known_hosts import KnownHosts, format_line, host_pattern, parse_line


def make_key(n: int, algorithm: str = "mldsa65", *, key_id: bytes | None = None) -> PublicKey:
    return PublicKey(
        key_id if key_id is not None else bytes([n]) * 16,
        2_000_000_000,
        algorithm,
        bytes([n, 0xAA]) * 20,
    )


K1, K2, K3 = make_key(1), make_key(2), make_key(3)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / ".qsh" / "known_hosts"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_text(text)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# -- basics --------------------------------------------------------------------------------


def test_missing_file_is_empty(path: Path) -> None:
    kh = KnownHosts.load(path)
    assert kh.entries == ()
    result = kh.lookup("example.com", 2022, K1)
    assert result.status == "unknown"
    assert result.matching == () and result.conflicting == ()
    assert not path.exists()


def test_add_then_lookup(path: Path) -> None:
    kh = KnownHosts.load(path)
    kh.add("example.com", 2022, K1)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert path.read_text() == format_line("example.com", K1) + "\n"
    for view in (kh, KnownHosts.load(path)):
        assert view.check("example.com", 2022, K1) == "match"
        result = view.lookup("example.com", 2022, K1)
        assert [e.key for e in result.matching] == [K1]
        assert result.matching[0].line_number == 1


def test_mismatch_reports_conflicting_entries(path: Path) -> None:
    kh = KnownHosts.load(path)
    kh.add("example.com", 2022, K1)
    result = kh.lookup("example.com", 2022, K2)
    assert result.status == "mismatch"
    assert result.matching == ()
    assert [e.key for e in result.conflicting] == [K1]
    assert kh.check("other.example", 2022, K2) == "unknown"


def test_lookup_without_key_only_asks_whether_host_is_known(path: Path) -> None:
    kh = KnownHosts.load(path)
    kh.add("a", 2022, K1)
    kh.add("a", 2022, make_key(5, "mldsa87"))
    result = kh.lookup("a", 2022)
    assert result.status == "match"
    assert len(result.matching) == 2
    assert result.algorithms == ("mldsa65", "mldsa87")
    assert kh.lookup("b", 2022).status == "unknown"


def test_whole_key_is_compared_not_only_key_id(path: Path) -> None:
    kh = KnownHosts.load(path)
    kh.add("h", 2022, K1)
    same_id = make_key(9, key_id=K1.key_id)
    assert kh.check("h", 2022, same_id) == "mismatch"
    later = PublicKey(K1.key_id, K1.expiration + 1, K1.algorithm, K1.verification_key)
    assert kh.check("h", 2022, later) == "mismatch"


def test_several_keys_for_one_host(path: Path) -> None:
    kh = KnownHosts.load(path)
    kh.add("h", 2022, K1)
    kh.add("h", 2022, K2)
    assert kh.check("h", 2022, K1) == "match"
    assert kh.check("h", 2022, K2) == "match"
    assert kh.check("h", 2022, K3) == "mismatch"


def test_add_is_idempotent(path: Path) -> None:
    kh = KnownHosts.load(path)
    kh.add("h", 2022, K1)
    kh.add("H", 2022, K1)
    assert len(path.read_text().splitlines()) == 1


# -- ports and address forms ---------------------------------------------------------------


def test_non_default_port_is_bracketed(path: Path) -> None:
    kh = KnownHosts.load(path)
    kh.add("example.com", 2222, K1)
    assert path.read_text().startswith("[example.com]:2222 qsh-mldsa65 ")
    assert kh.check("example.com", 2222, K1) == "match"
    assert kh.check("example.com", 2022, K1) == "unknown"
    assert kh.check("example.com", 22, K1) == "unknown"


def test_default_port_is_a_parameter(path: Path) -> None:
    kh = KnownHosts.load(path)
    kh.add("example.com", 22, K1, default_port=22)
    assert path.read_text().startswith("example.com ")
    assert kh.check("example.com", 22, K1, default_port=22) == "match"
    assert kh.check("example.com", 22, K1) == "unknown"  # with our default, 22 is bracketed


def test_plain_host_matches_only_the_default_port(path: Path) -> None:
    write(path, format_line("plain.example", K1) + "\n")
    kh = KnownHosts.load(path)
    assert kh.check("plain.example", 2022, K1) == "match"
    assert kh.check("plain.example", 2222, K1) == "unknown"


def test_bracketed_default_port_also_matches(path: Path) -> None:
    write(path, format_line("[box.example]:2022", K1) + "\n")
    assert KnownHosts.load(path).check("box.example", 2022, K1) == "match"


def test_ipv6_literals(path: Path) -> None:
    write(path, format_line("[::1]:2022", K1) + "\n")
    kh = KnownHosts.load(path)
    assert kh.check("::1", 2022, K1) == "match"
    assert kh.check("[::1]", 2022, K1) == "match"
    assert kh.check("::1", 2022, K2) == "mismatch"
    kh.add("::1", 2222, K2)
    kh.add("fe80::1", 2022, K3)
    lines = path.read_text().splitlines()
    assert lines[1].startswith("[::1]:2222 ")
    assert lines[2].startswith("fe80::1 ")
    assert KnownHosts.load(path).check("FE80::1", 2022, K3) == "match"


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("Example.COM", 2022, "example.com"),
        ("example.com", 2023, "[example.com]:2023"),
        ("10.0.0.1", 2022, "10.0.0.1"),
        ("::1", 22, "[::1]:22"),
        ("[::1]", 2022, "::1"),
    ],
)
def test_host_pattern(host: str, port: int, expected: str) -> None:
    assert host_pattern(host, port) == expected


@pytest.mark.parametrize(
    ("host", "port"),
    [
        ("", 2022),
        ("a b", 2022),
        ("a,b", 2022),
        ("*.example", 2022),
        ("#x", 2022),
        ("h", 0),
        ("h", 70000),
    ],
)
def test_host_pattern_rejects(host: str, port: int) -> None:
    with pytest.raises(ValueError):
        host_pattern(host, port)


# -- patterns ------------------------------------------------------------------------------


def test_multiple_patterns(path: Path) -> None:
    write(path, format_line("alpha,beta.example,[gamma]:2200,10.1.1.1", K1) + "\n")
    kh = KnownHosts.load(path)
    for host, port in [
        ("alpha", 2022),
        ("beta.example", 2022),
        ("gamma", 2200),
        ("10.1.1.1", 2022),
    ]:
        assert kh.check(host, port, K1) == "match", host
    assert kh.check("gamma", 2022, K1) == "unknown"
    assert kh.check("delta", 2022, K1) == "unknown"


def test_wildcards_and_negation(path: Path) -> None:
    write(path, format_line("*.corp.example,!bad.corp.example,10.0.0.?", K1) + "\n")
    kh = KnownHosts.load(path)
    assert kh.check("a.corp.example", 2022, K1) == "match"
    assert kh.check("bad.corp.example", 2022, K1) == "unknown"
    assert kh.check("10.0.0.7", 2022, K1) == "match"
    assert kh.check("10.0.0.17", 2022, K1) == "unknown"
    assert kh.check("corp.example", 2022, K1) == "unknown"


# -- preserving the user's file ------------------------------------------------------------

USER_FILE = (
    "# my hosts\n"
    "\n"
    "{alpha}\n"
    "   # indented comment\n"
    "broken line without key\n"
    "@cert-authority *.example qsh-mldsa65 AAAA\n"
    "|1|abc=|def= qsh-mldsa65 AAAA\n"
    "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"
    "{beta}\n"
)


def user_file() -> str:
    return USER_FILE.format(
        alpha=format_line("alpha", K1, "first contact"), beta=format_line("beta", K2)
    )


def test_comments_and_malformed_lines_survive_a_rewrite(path: Path) -> None:
    original = user_file()
    write(path, original)
    kh = KnownHosts.load(path)
    assert [e.patterns for e in kh.entries] == [("alpha",), ("beta",)]
    assert kh.entries[0].comment == "first contact"
    assert kh.entries[1].line_number == 9
    kh.add("gamma", 2022, K3)
    assert path.read_text() == original + format_line("gamma", K3) + "\n"
    assert kh.check("gamma", 2022, K3) == "match"


def test_non_utf8_bytes_survive(path: Path) -> None:
    raw = b"# caf\xe9 latin-1 comment\n" + format_line("a", K1).encode() + b"\n"
    path.parent.mkdir()
    path.write_bytes(raw)
    KnownHosts.load(path).add("b", 2022, K2)
    assert path.read_bytes().startswith(raw)


def test_file_without_final_newline(path: Path) -> None:
    write(path, "# no newline at end")
    KnownHosts.load(path).add("a", 2022, K1)
    assert path.read_text() == "# no newline at end\n" + format_line("a", K1) + "\n"


def test_add_rereads_the_file(path: Path) -> None:
    kh = KnownHosts.load(path)
    kh.add("a", 2022, K1)
    with path.open("a") as f:  # another qsh, or the user's editor, meanwhile
        f.write(format_line("b", K2) + "\n")
    kh.add("c", 2022, K3)
    kh2 = KnownHosts.load(path)
    assert [e.patterns[0] for e in kh2.entries] == ["a", "b", "c"]
    assert kh.check("b", 2022, K2) == "match"


# -- fixing a changed key ------------------------------------------------------------------


def test_remove_and_replace(path: Path) -> None:
    write(path, user_file())
    kh = KnownHosts.load(path)
    assert kh.remove("alpha", 2022) == 1
    assert kh.check("alpha", 2022, K1) == "unknown"
    assert "# my hosts" in path.read_text()
    assert kh.remove("alpha", 2022) == 0
    kh.replace("beta", 2022, K3)
    assert kh.check("beta", 2022, K3) == "match"
    assert kh.check("beta", 2022, K2) == "mismatch"
    assert len(kh.lookup("beta", 2022).matching) == 1


def test_remove_keeps_other_hosts_on_a_shared_line(path: Path) -> None:
    write(path, format_line("a,B,[b]:2022,c", K1, "shared") + "\n")
    kh = KnownHosts.load(path)
    assert kh.remove("b", 2022) == 1
    assert path.read_text() == format_line("a,c", K1, "shared") + "\n"
    assert kh.check("a", 2022, K1) == "match"
    assert kh.check("b", 2022, K1) == "unknown"


def test_remove_drops_a_wildcard_line_it_cannot_narrow(path: Path) -> None:
    write(path, format_line("*.example,x", K1) + "\n" + format_line("y", K2) + "\n")
    kh = KnownHosts.load(path)
    assert kh.remove("h.example", 2022) == 1
    assert path.read_text() == format_line("y", K2) + "\n"


def test_remove_on_missing_file_writes_nothing(path: Path) -> None:
    assert KnownHosts.load(path).remove("a", 2022) == 0
    assert not path.exists()


# -- failures ------------------------------------------------------------------------------


def test_failed_write_keeps_the_old_file(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(path, user_file())

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(KeyFileError, match="No space left"):
        KnownHosts.load(path).add("gamma", 2022, K3)
    monkeypatch.undo()
    assert path.read_text() == user_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["known_hosts"]


def test_unreadable_path_is_a_key_file_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        KnownHosts.load(tmp_path)


@given(st.text(max_size=120))
def test_parse_line_never_crashes(line: str) -> None:
    entry = parse_line(line)
    if entry is not None:
        assert entry.patterns
