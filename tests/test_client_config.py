"""~/.qsh/config: ssh_config grammar and precedence, so users' ssh habits carry over.

Pure and fast: files live in tmp_path, HOME and the local user name are pinned per test so
``~``, %d and %u are predictable.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.client.config import (
    DEFAULT_PORT,
    ClientConfig,
    ConfigError,
    parse_option,
    resolve,
)
from common.client.config.parser import _quote, _split_args
from common.crypto import suites


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    (home / ".qsh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("LOGNAME", "alice")
    monkeypatch.setenv("USER", "alice")
    return home


def write_config(home: Path, text: str) -> Path:
    path = home / ".qsh" / "config"
    path.write_text(text)
    path.chmod(0o600)
    return path


def resolve_text(home: Path, text: str, host: str = "web1", **kwargs: object) -> ClientConfig:
    """Resolve through an explicit -F file, which also exercises the default-free path."""
    path = home / "test_config"
    path.write_text(text)
    return resolve(host, path=path, **kwargs)  # type: ignore[arg-type]


def error_of(home: Path, text: str, host: str = "web1") -> str:
    with pytest.raises(ConfigError) as info:
        resolve_text(home, text, host)
    return str(info.value)


# --- Defaults ----------------------------------------------------------------------------


def test_defaults_when_the_default_file_is_absent(home: Path) -> None:
    config = resolve("example.org")
    assert config == ClientConfig(
        host="example.org",
        hostname="example.org",
        port=DEFAULT_PORT,
        user="alice",
        identity_files=[home / ".qsh" / "id_mldsa65", home / ".qsh" / "id_mldsa87"],
        kems=None,
        ciphers=None,
        signatures=None,
        chaff=False,
        strict_host_key_checking="ask",
        known_hosts=home / ".qsh" / "known_hosts",
        connect_timeout=30.0,
        server_alive_interval=0.0,
        request_tty="auto",
        log_level="INFO",
    )
    assert config.port == 2022


def test_the_default_file_is_read_when_present(home: Path) -> None:
    write_config(home, "Port 2200\n")
    assert resolve("web1").port == 2200


def test_explicit_file_that_is_missing_is_an_error(home: Path) -> None:
    missing = home / "nope"
    with pytest.raises(ConfigError, match="nope: no such file"):
        resolve("web1", path=missing)


def test_a_config_that_is_a_directory_or_a_fifo_is_one_line(home: Path) -> None:
    """``-F DIR`` or a ``~/.qsh/config`` that is a directory used to end in a traceback
    (IsADirectoryError); a FIFO would have hung qsh in open()."""
    directory = home / "confdir"
    directory.mkdir()
    with pytest.raises(ConfigError, match=r"confdir: is a directory$"):
        resolve("web1", path=directory)
    fifo = home / "conffifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"conffifo: not a regular file$"):
        resolve("web1", path=fifo)
    (home / ".qsh").mkdir(exist_ok=True)
    (home / ".qsh" / "config").mkdir()
    with pytest.raises(ConfigError, match=r"config: is a directory$"):
        resolve("web1")


def test_dash_F_none_reads_no_file(home: Path) -> None:
    write_config(home, "Port 2200\n")
    assert resolve("web1", path=Path("none")).port == DEFAULT_PORT


def test_default_file_writable_by_others_is_refused(home: Path) -> None:
    path = write_config(home, "HostName evil.example\n")
    path.chmod(0o666)
    with pytest.raises(ConfigError, match="bad owner or permissions"):
        resolve("web1")


# --- Precedence: the first value obtained wins ----------------------------------------------


def test_first_match_wins_across_blocks(home: Path) -> None:
    config = resolve_text(home, """
Host web*
    Port 2201
    User deploy
Host web1
    Port 2202
    Chaff yes
Host *
    Port 2203
    User nobody
    ConnectTimeout 5
""")
    assert config.port == 2201  # the first matching block, not the most specific one
    assert config.user == "deploy"
    assert config.chaff is True  # only web1 sets it
    assert config.connect_timeout == 5.0  # falls through to Host *


def test_options_before_the_first_host_apply_to_all_and_win(home: Path) -> None:
    text = "Port 2300\nHost web1\n  Port 2301\n  User bob\n"
    assert resolve_text(home, text, "web1").port == 2300
    assert resolve_text(home, text, "web1").user == "bob"
    assert resolve_text(home, text, "other").port == 2300
    assert resolve_text(home, text, "other").user == "alice"


def test_repeated_keyword_in_one_block_keeps_the_first(home: Path) -> None:
    assert resolve_text(home, "Host *\n Port 1\n Port 2\n").port == 1


def test_non_matching_blocks_are_ignored(home: Path) -> None:
    config = resolve_text(home, "Host db\n  Port 1\nHost *\n  Port 2\n", "web1")
    assert config.port == 2


# --- Host patterns ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "host", "applies"),
    [
        ("*", "anything", True),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "example.com", False),
        ("web?", "web1", True),
        ("web?", "web", False),
        ("web?", "web12", False),
        ("db web1", "web1", True),  # any pattern of the list
        ("WEB1", "web1", True),  # host names compare case-insensitively
        ("* !bastion", "bastion", False),  # a negated match excludes the block
        ("* !bastion", "web1", True),
        ("!bastion", "web1", False),  # negation alone never selects a block
        ("!web1 web*", "web1", False),  # negation wins wherever it sits
        ("[web]1", "w1", False),  # only * and ? are special
        ("[web]1", "[web]1", True),
        ("10.0.0.*", "10.0.0.7", True),
    ],
)
def test_host_patterns(home: Path, patterns: str, host: str, applies: bool) -> None:
    config = resolve_text(home, f"Host {patterns}\n  Port 1\n", host)
    assert (config.port == 1) is applies


def test_quoted_host_pattern(home: Path) -> None:
    assert resolve_text(home, 'Host "web1" \'db\'\n Port 1\n', "db").port == 1


# --- Command-line precedence ------------------------------------------------------------------


def test_dash_o_beats_the_file(home: Path) -> None:
    config = resolve_text(
        home, "Port 2300\nUser bob\nChaff no\n",
        options=["Port=2400", "Chaff yes"],
    )
    assert (config.port, config.user, config.chaff) == (2400, "bob", True)


def test_first_dash_o_wins(home: Path) -> None:
    assert resolve("web1", options=["Port=1", "Port=2"]).port == 1


def test_explicit_user_and_port_beat_dash_o_and_the_file(home: Path) -> None:
    config = resolve_text(
        home, "Host *\n Port 2300\n User bob\n",
        options=["Port 2400", "User carol"], user="dave", port=2500,
    )
    assert (config.user, config.port) == ("dave", 2500)


def test_explicit_user_is_used_for_percent_r(home: Path) -> None:
    config = resolve_text(home, "User bob\nIdentityFile ~/.qsh/key-%r\n", user="dave")
    assert config.identity_files == [home / ".qsh" / "key-dave"]


def test_dash_o_is_checked_like_the_file(home: Path) -> None:
    with pytest.raises(ConfigError, match=r"^-o 'Port=http': bad port 'http'"):
        resolve("web1", options=["Port=http"])
    with pytest.raises(ConfigError, match="unknown keyword Bogus"):
        resolve("web1", options=["Bogus=1"])


def test_bad_explicit_port_is_an_error(home: Path) -> None:
    with pytest.raises(ConfigError, match="bad port 70000"):
        resolve("web1", port=70000)


# --- parse_option ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Port=2200", ("Port", "2200")),
        ("port 2200", ("Port", "2200")),
        ("  PORT = 2200  ", ("Port", "2200")),
        ('IdentityFile="~/my keys/id"', ("IdentityFile", "~/my keys/id")),
        ("stricthostkeychecking=accept-new", ("StrictHostKeyChecking", "accept-new")),
        ("kems=mlkem1024", ("KEMs", "mlkem1024")),
    ],
)
def test_parse_option(text: str, expected: tuple[str, str]) -> None:
    assert parse_option(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Port", "missing value for Port"),
        ("Port=", "missing value for Port"),
        ("=2200", "expected Keyword=value"),
        ("", "expected Keyword=value"),
        ("Host=web1", "Host is not allowed"),
        ("Frobnicate=yes", "unknown keyword Frobnicate"),
        ("Chaff=maybe", "bad Chaff value 'maybe'"),
        ("Port 22 23", "Port takes one value, got 2"),
    ],
)
def test_parse_option_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_option(text)


# --- IdentityFile --------------------------------------------------------------------------------


def test_identity_files_accumulate_in_order(home: Path) -> None:
    config = resolve_text(home, """
IdentityFile ~/.qsh/global
Host web*
    IdentityFile ~/.qsh/web
Host db
    IdentityFile ~/.qsh/db
Host *
    IdentityFile ~/.qsh/last
    IdentityFile ~/.qsh/web
""", options=["IdentityFile=~/.qsh/from-o"], identity_files=["~/.qsh/from-i"])
    keys = home / ".qsh"
    assert config.identity_files == [
        keys / "from-i", keys / "from-o", keys / "global", keys / "web", keys / "last",
    ]  # -i, then -o, then the file; duplicates once, where first seen


def test_identity_file_tokens(home: Path) -> None:
    config = resolve_text(home, """
Host db
    HostName db.internal
    User bob
    IdentityFile %d/keys/%u-%r@%h-%n:%p
    IdentityFile /abs/100%%
""", "db")
    assert config.identity_files == [
        home / "keys" / "alice-bob@db.internal-db:2022",  # %h is HostName's result, as in ssh
        Path("/abs/100%"),
    ]


def test_tilde_is_expanded_before_tokens(home: Path) -> None:
    config = resolve_text(home, "IdentityFile ~/%u\nUserKnownHostsFile ~/kh-%h\n")
    assert config.identity_files == [home / "alice"]
    assert config.known_hosts == home / "kh-web1"


def test_identity_file_with_spaces_needs_quotes(home: Path) -> None:
    config = resolve_text(home, 'IdentityFile "~/my keys/id 1"\nIdentityFile ~/a\\ b\n')
    assert config.identity_files == [home / "my keys" / "id 1", home / "a b"]
    assert "takes one value, got 2" in error_of(home, "IdentityFile ~/my keys\n")


def test_default_identities_only_without_any(home: Path) -> None:
    config = resolve_text(home, "Host other\n IdentityFile ~/x\n")
    assert config.identity_files == [home / ".qsh" / "id_mldsa65", home / ".qsh" / "id_mldsa87"]
    assert resolve("web1", identity_files=[home / "k"]).identity_files == [home / "k"]


def test_unknown_token_is_reported_at_its_line(home: Path) -> None:
    assert error_of(home, "\n\nIdentityFile ~/%x\n").endswith(
        "test_config:3: IdentityFile: unknown token %x in '~/%x'")
    assert "'%' at the end" in error_of(home, "IdentityFile ~/key%\n")


# --- HostName -------------------------------------------------------------------------------


def test_hostname_percent_h_is_the_original_host(home: Path) -> None:
    config = resolve_text(home, "Host *.lan\n  HostName %h.example.com\n", "box.lan")
    assert (config.host, config.hostname) == ("box.lan", "box.lan.example.com")


def test_hostname_does_not_change_which_blocks_match(home: Path) -> None:
    config = resolve_text(home, "Host alias\n HostName real\nHost real\n Port 1\n", "alias")
    assert (config.hostname, config.port) == ("real", DEFAULT_PORT)


def test_hostname_only_knows_percent_h(home: Path) -> None:
    assert "unknown token %r" in error_of(home, "HostName %r.example\n")
    assert resolve_text(home, "HostName 100%%\n").hostname == "100%"


# --- Grammar ------------------------------------------------------------------------------------


def test_keyword_equals_value_forms(home: Path) -> None:
    for line in ("Port=2200", "Port = 2200", "Port= 2200", "Port =2200", "\tPort\t2200"):
        assert resolve_text(home, line + "\n").port == 2200, line


def test_keywords_and_enumerated_values_are_case_insensitive(home: Path) -> None:
    config = resolve_text(home, """
hOsT WEB1
    HOSTNAME web1.example
    stricthostkeychecking ACCEPT-NEW
    ChAfF Yes
    requesttty FORCE
    loglevel debug
""")
    assert config.hostname == "web1.example"
    assert config.strict_host_key_checking == "accept-new"
    assert config.chaff is True
    assert config.request_tty == "force"
    assert config.log_level == "DEBUG1"  # ssh's alias


def test_comments_and_blank_lines(home: Path) -> None:
    config = resolve_text(home, """
# a comment
   # an indented comment

Port 2200 # a trailing comment
IdentityFile ~/key#1
""")
    assert config.port == 2200
    assert config.identity_files == [home / "key#1"]  # '#' inside a word is not a comment


def test_quoted_values(home: Path) -> None:
    config = resolve_text(home, """
User "bob"
HostName 'web1.example'
UserKnownHostsFile "/tmp/known hosts"
IdentityFile "~/say \\"hi\\""
""")
    assert config.user == "bob"
    assert config.hostname == "web1.example"
    assert config.known_hosts == Path("/tmp/known hosts")
    assert config.identity_files == [home / 'say "hi"']


def test_crlf_and_bom(home: Path) -> None:
    assert resolve_text(home, "\ufeffPort 2200\r\nUser bob\r\n").port == 2200


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"))),
                min_size=1, max_size=4))
def test_quote_round_trips(args: list[str]) -> None:
    assert _split_args(" ".join(_quote(a) for a in args), "t") == args


# --- Values ---------------------------------------------------------------------------------


def test_every_keyword(home: Path) -> None:
    config = resolve_text(home, """
HostName h.example
Port 2201
User u
IdentityFile /k
KEMs mlkem1024,mlkem768
Ciphers chacha20poly1305
Signatures mldsa87
Chaff yes
StrictHostKeyChecking yes
UserKnownHostsFile /kh
ConnectTimeout 1m30s
ServerAliveInterval 15
RequestTTY no
LogLevel VERBOSE
""")
    assert config == ClientConfig(
        host="web1", hostname="h.example", port=2201, user="u", identity_files=[Path("/k")],
        kems=("mlkem1024", "mlkem768"), ciphers=("chacha20poly1305",), signatures=("mldsa87",),
        chaff=True, strict_host_key_checking="yes", known_hosts=Path("/kh"),
        connect_timeout=90.0, server_alive_interval=15.0, request_tty="no",
        log_level="VERBOSE",
    )


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30", 30.0), ("2.5", 2.5), ("90s", 90.0), ("2m", 120.0), ("1h1m1s", 3661.0)],
)
def test_time_values(home: Path, value: str, seconds: float) -> None:
    assert resolve_text(home, f"ConnectTimeout {value}\n").connect_timeout == seconds


def test_server_alive_interval_zero_is_off(home: Path) -> None:
    assert resolve_text(home, "ServerAliveInterval 0\n").server_alive_interval == 0.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("+x25519kyber", (*suites.DEFAULT_KEMS, "x25519kyber")),
        ("^mlkem1024", ("mlkem1024", *suites.DEFAULT_KEMS[:2])),
        ("-mlkem1024", suites.DEFAULT_KEMS[:2]),
        ("-mlkem768*", ("mlkem1024",)),
        ("a,b,a", ("a", "b")),
    ],
)
def test_algorithm_list_modifiers(home: Path, value: str, expected: tuple[str, ...]) -> None:
    assert suites.DEFAULT_KEMS == ("mlkem768x25519", "mlkem768", "mlkem1024")
    assert resolve_text(home, f"KEMs {value}\n").kems == expected


def test_strict_host_key_checking_aliases(home: Path) -> None:
    assert resolve_text(home, "StrictHostKeyChecking off\n").strict_host_key_checking == "no"
    assert resolve_text(home, "StrictHostKeyChecking true\n").strict_host_key_checking == "yes"


# --- Errors: one line, file:line -------------------------------------------------------------


def test_unknown_keyword_is_one_line_with_file_and_line(home: Path) -> None:
    message = error_of(home, "Port 2200\n\nHost *\n    Frobnicate yes\n")
    assert message == f"{home / 'test_config'}:4: unknown keyword Frobnicate"
    assert "\n" not in message


# --- Match and Include ----------------------------------------------------------------------


def test_match_host_sees_the_hostname_set_so_far_and_originalhost_the_alias(home: Path) -> None:
    text = ("Host web1\n  HostName 10.0.0.7\n"
            "Match host 10.0.0.*\n  Port 2200\n"
            "Match originalhost web1 user bob\n  Port 2300\n"
            "Match originalhost web1\n  User carol\n  Port 2400\n")
    cfg = resolve_text(home, text)
    assert (cfg.hostname, cfg.port, cfg.user) == ("10.0.0.7", 2200, "carol")
    other = resolve_text(home, text, host="db")
    assert (other.port, other.user) == (2022, "alice")


def test_match_user_localuser_all_and_negation(home: Path) -> None:
    text = ("Match user bob\n  Port 2201\n"
            "Match localuser alice !host db*\n  Port 2202\n"
            "Match all\n  Port 2203\n")
    assert resolve_text(home, text, user="bob").port == 2201
    assert resolve_text(home, text).port == 2202
    assert resolve_text(home, text, host="db1").port == 2203


def test_match_exec_runs_with_tokens_and_matches_on_success(home: Path) -> None:
    marker = home / "ran"
    text = (f'Match exec "test %h = web1 && touch {marker}"\n  Port 2210\n'
            'Match exec false\n  Port 2211\n')
    assert resolve_text(home, text).port == 2210 and marker.exists()
    assert resolve_text(home, text, host="db").port == 2022


def test_match_final_matches_and_canonical_does_not(home: Path) -> None:
    text = "Match canonical\n  Port 2220\nMatch final host web1\n  Port 2221\n"
    assert resolve_text(home, text).port == 2221


def test_match_errors_are_one_line(home: Path) -> None:
    assert error_of(home, "Match\n").endswith(":1: Match needs a criterion")
    assert error_of(home, "Match host\n").endswith(":1: Match host needs an argument")
    assert error_of(home, "Match frob x\n").endswith(":1: unknown Match criterion frob")
    assert error_of(home, "Match all host x\n").endswith(
        ":1: Match all cannot be combined with other criteria")


def test_include_reads_files_relative_to_the_qsh_directory_with_globs(home: Path) -> None:
    (home / ".qsh" / "conf.d").mkdir()
    (home / ".qsh" / "conf.d" / "10-web").write_text("Host web*\n  Port 2230\n")
    (home / ".qsh" / "conf.d" / "20-all").write_text("User dave\n")
    cfg = resolve_text(home, "Include conf.d/*\nHost *\n  Port 2231\n")
    assert (cfg.port, cfg.user) == (2230, "dave")


def test_include_inside_a_block_is_conditional(home: Path) -> None:
    (home / ".qsh" / "web").write_text("Port 2240\nHost *\n  User erin\n")
    text = "Host web1\n  Include web\n"
    assert (resolve_text(home, text).port, resolve_text(home, text).user) == (2240, "erin")
    db = resolve_text(home, text, host="db")
    assert (db.port, db.user) == (2022, "alice")


def test_include_errors(home: Path) -> None:
    (home / ".qsh" / "loop").write_text("Include loop\n")
    assert "Include nested too deeply" in error_of(home, "Include loop\n")
    (home / ".qsh" / "bad").write_text("Frobnicate 1\n")
    bad = home / ".qsh" / "bad"
    assert error_of(home, "Include bad\n") == f"{bad}:1: unknown keyword Frobnicate"
    resolve_text(home, "Include nothing-here*\n")  # no match is no error, as in ssh


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("Port 0", "bad port '0'"),
        ("Port 65536", "bad port '65536'"),
        ("Port 22x", "bad port '22x'"),
        ("Port", "missing value for Port"),
        ("Port 22 23", "Port takes one value, got 2"),
        ('User ""', "empty value for User"),
        ("Chaff maybe", "bad Chaff value 'maybe' (one of yes, no)"),
        ("StrictHostKeyChecking sometimes", "bad StrictHostKeyChecking value 'sometimes'"),
        ("RequestTTY always", "bad RequestTTY value 'always'"),
        ("LogLevel LOUD", "bad LogLevel 'LOUD'"),
        ("ConnectTimeout soon", "bad ConnectTimeout time 'soon'"),
        ("ConnectTimeout 0", "ConnectTimeout must be more than 0"),
        ("ServerAliveInterval -1", "bad ServerAliveInterval time '-1'"),
        ("KEMs mlkem768, mlkem1024", "KEMs takes one value, got 2"),
        ("KEMs mlkem768,,mlkem1024", "'' is not an algorithm name"),
        ("Ciphers -*", "removes every algorithm"),
        ('User "bob', "unterminated quote"),
        ("Host", "Host needs at least one pattern"),
        ("Host web1 !", "empty Host pattern"),
        ("= 22", "missing keyword"),
    ],
)
def test_bad_values_name_file_and_line(home: Path, line: str, message: str) -> None:
    error = error_of(home, f"# first line\n{line}\n")
    assert error.startswith(f"{home / 'test_config'}:2: ")
    assert message in error
    assert "\n" not in error


def test_bad_values_in_blocks_that_do_not_match_are_still_errors(home: Path) -> None:
    assert ":3: bad port" in error_of(home, "Host db\n  User x\n  Port none\n", "web1")


def test_unknown_user_in_tilde(home: Path) -> None:
    message = error_of(home, "IdentityFile ~no-such-user-qsh/key\n")
    assert message.endswith(":1: unknown user in '~no-such-user-qsh'")


def test_unreadable_text_is_an_error(home: Path) -> None:
    path = home / "binary"
    path.write_bytes(b"Port \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        resolve("web1", path=path)


def test_explicit_file_is_not_permission_checked(home: Path) -> None:
    path = home / "shared_config"
    path.write_text("Port 2200\n")
    path.chmod(0o666)
    if os.stat(path).st_mode & 0o022:
        assert resolve("web1", path=path).port == 2200


def test_every_keyword_is_documented_in_qsh_config_5() -> None:
    """The reference for ~/.qsh/config is qsh_config(5): no keyword qsh accepts may be
    missing from it."""
    from common.client.config.keywords import _KEYWORDS

    page = (Path(__file__).resolve().parents[1] / "man" / "qsh_config.5").read_text()
    documented = {word for line in page.splitlines() if line.startswith((".B ", ".BR "))
                  for word in re.findall(r"[A-Z][A-Za-z0-9]+", line)}
    missing = {k.name for k in _KEYWORDS.values()} - documented
    assert not missing, f"not in qsh_config.5: {sorted(missing)}"
