"""qcp's command line without a server: which argument is remote (scp's rules), the plan
a command line makes, -l's unit, the one-line usage errors and exit status 1, lazy start-up,
and the progress meter's lines and redraw rate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qcp.cli import (
    OPEN_MAX_BYTES,
    OPEN_MAX_PATHS,
    Location,
    UsageProblem,
    download_batches,
    limit_bytes_per_second,
    parse_location,
    plan,
)
from qcp.progress import REDRAWS_PER_SECOND, TtyProgress, clock, file_line, human_size

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(("arg", "expected"), [
    ("host:path", Location(b"path", "host")),
    ("host:", Location(b"", "host")),  # the remote home
    ("alice@host:dir/f", Location(b"dir/f", "host", "alice")),
    ("a@b@host:x", Location(b"x", "host", "a@b")),  # the last @ splits, as scp
    ("host:/abs/a:b", Location(b"/abs/a:b", "host")),  # only the first colon counts
    ("host:~/x", Location(b"~/x", "host")),
    ("[::1]:/tmp/x", Location(b"/tmp/x", "::1")),
    ("bob@[fe80::1]:f", Location(b"f", "fe80::1", "bob")),
    ("[::1]:", Location(b"", "::1")),
    ("file", Location(b"file")),
    ("./a:b", Location(b"./a:b")),  # a / before the colon: local
    ("/x/y:z", Location(b"/x/y:z")),
    ("dir/a:b", Location(b"dir/a:b")),
    (":leading", Location(b":leading")),  # a leading colon is part of the name
    ("[::1]", Location(b"[::1]")),  # no colon after the bracket: local
    ("with space:x y", Location(b"x y", "with space")),  # as scp: the resolver refuses it
])
def test_which_argument_is_remote(arg: str, expected: Location) -> None:
    assert parse_location(arg) == expected


def test_non_utf8_bytes_survive() -> None:
    raw = b"caf\xe9 \n.txt"
    arg = os.fsdecode(raw)  # what sys.argv holds for those bytes
    assert parse_location(arg) == Location(raw)
    assert parse_location("h:" + arg) == Location(raw, "h")


@pytest.mark.parametrize("arg", ["@host:x", "user@:x", "[]:x"])
def test_remote_argument_without_host_or_user(arg: str) -> None:
    with pytest.raises(UsageProblem):
        parse_location(arg)


def test_plans() -> None:
    up = plan(("a", "b c", "alice@h:dst"))
    assert (up.upload, up.host, up.user, up.sources, up.target) == (
        True, "h", "alice", (b"a", b"b c"), b"dst")
    down = plan(("h:x", "h:/y", "."))
    assert (down.upload, down.host, down.user, down.sources, down.target) == (
        False, "h", None, (b"x", b"/y"), b".")
    assert plan(("f", "[::1]:")).target == b""


@pytest.mark.parametrize(("paths", "message"), [
    (("only",), "at least one SRC"),
    (("a", "b"), "no remote path"),
    (("h:a", "g:b"), "two remote hosts are not supported"),
    (("h:a", "h:b"), "two remote hosts are not supported"),
    (("h:a", "g:b", "."), "same [user@]host"),
    (("u@h:a", "h:b", "."), "same [user@]host"),
    (("h:a", "local", "."), "cannot be mixed"),
])
def test_plans_refused(paths: tuple[str, ...], message: str) -> None:
    with pytest.raises(UsageProblem, match=message.replace("[", r"\[").replace("]", r"\]")):
        plan(paths)


def test_limit_is_kbit_per_second_as_scp() -> None:
    assert limit_bytes_per_second(None) is None
    assert limit_bytes_per_second(8) == 1024
    assert limit_bytes_per_second(1) == 128
    assert limit_bytes_per_second(80_000) == 10_240_000


def test_download_batches_fit_one_open_request_each() -> None:
    from common.channels.copy import DOWNLOAD, MAX_PATHS, OpenRequest
    from common.protocol.mux import MAX_PAYLOAD

    assert OPEN_MAX_PATHS == MAX_PATHS
    assert download_batches((b"a",)) == [(b"a",)]
    assert download_batches((b"a", b"b")) == [(b"a", b"b")]
    many = tuple(b"dir/file%05d" % i for i in range(2500))
    batches = download_batches(many)
    assert [p for b in batches for p in b] == list(many)  # all, in order
    assert len(batches) == 3 and all(len(b) <= MAX_PATHS for b in batches)
    long = tuple(bytes([65 + i % 26]) * 4000 for i in range(40))  # the byte budget binds
    for batch in (*batches, *download_batches(long)):
        request = OpenRequest(DOWNLOAD, batch, len(batch), True, True, True, 10**9)
        assert len(request.encode()) <= MAX_PAYLOAD
    fixed = len(OpenRequest(DOWNLOAD, (b"",), 1).encode()) - 4  # without the one path
    assert MAX_PAYLOAD - fixed == OPEN_MAX_BYTES
    # Never one source alone in a batch of a copy with several (scp's directory rule).
    assert [len(b) for b in download_batches(many[:1025])] == [1023, 2]
    assert [len(b) for b in download_batches(many[:3], max_paths=2)] == [1, 2]


# --------------------------------------------------------------------------- the process


def _qcp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ, PYTHONPATH=str(ROOT))
    environ.update(env or {})
    return subprocess.run([PYTHON, "-m", "qcp", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=environ, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("args", "message"), [
    (("a", "b"), "no remote path"),
    (("h:a", "g:b"), "copies between two remote hosts are not supported"),
    (("h:a", "g:b", "."), "same [user@]host"),
    (("-l", "0", "a", "h:"), "-l"),
    (("-x", "a", "h:"), "No such option '-x'"),
    (("-P", "70000", "a", "h:"), "bad port 70000"),
    ((), "Missing argument"),
])
def test_usage_errors_are_one_line_exit_1(args: tuple[str, ...], message: str) -> None:
    result = _qcp(*args)
    assert result.returncode == 1
    assert result.stderr.startswith("qcp: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


def test_connection_failure_is_one_line_exit_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "f").write_bytes(b"x")
    result = _qcp("-F", "none", "-P", str(port), str(tmp_path / "f"), "127.0.0.1:",
                  env={"HOME": str(tmp_path)})
    assert result.returncode == 1, result
    assert result.stderr == (f"qcp: connect to host 127.0.0.1 port {port}: "
                             "Connection refused\n")


def test_help_does_not_load_the_crypto_stack() -> None:
    result = subprocess.run([PYTHON, "-X", "importtime", "-m", "qcp", "--help"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0 and "--resume" in result.stdout
    loaded = {line.rsplit("|", 1)[-1].strip()
              for line in result.stderr.splitlines() if "|" in line}
    assert "click" in loaded
    # common.cli (click's size) and common.crypto.secret (the process hardening every
    # command does first, ctypes) are allowed; the algorithms and the protocol are not.
    heavy = ("asyncio", "Crypto", "cryptography", "common.crypto.registry",
             "common.crypto.algorithms", "common.crypto.oqs", "common.crypto.pycryptodome",
             "common.protocol", "common.aio", "common.client", "common.transfer")
    assert not {m for m in loaded if m.startswith(heavy)}, loaded


# --------------------------------------------------------------------------- progress


def test_sizes_and_clocks() -> None:
    assert [human_size(n) for n in (0, 1023, 1024, 1536, 100 * 1024, 5 * 1024**3)] == [
        "0B", "1023B", "1.0KB", "1.5KB", "100KB", "5.0GB"]
    assert (clock(0), clock(61), clock(3 * 3600 + 5), clock(-1)) == (
        "00:00", "01:01", "3:00:05", "--:--")


def test_file_line_fits_and_shows_percent_rate_eta() -> None:
    line = file_line("report.pdf", 50 * 1024**2, 100 * 1024**2, 2.0, 80)
    assert len(line) == 79
    assert line.startswith("report.pdf ")
    assert " 50%" in line and "50.0MB" in line and "25.0MB/s" in line and "00:02 ETA" in line
    done = file_line("report.pdf", 100, 100, 4.0, 80, finished=True)
    assert "100%" in done and "00:04" in done and "ETA" not in done
    assert "100%" in file_line("empty", 0, 0, 0.0, 80)
    # A long name is cut from the left, a control character never reaches the terminal.
    long = file_line("d/" * 100 + "end\n\x1b[2J", 0, 10, 0.0, 60)
    assert len(long) == 59 and "\n" not in long and "\x1b" not in long
    assert "end??[2J" in long and long.startswith("...")


def test_resumed_file_rate_counts_only_what_moved() -> None:
    line = file_line("big", 900, 1000, 1.0, 80, moved=400)
    assert " 90%" in line and "400B/s" in line


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_progress_redraws_at_most_ten_times_a_second() -> None:
    out: list[bytes] = []
    now = _Clock()
    meter = TtyProgress(out.append, width=80, now=now)
    meter.start("f", 10_000_000, 0)
    for _ in range(100_000):  # 100,000 blocks in 1 s of clock
        meter.advance(100)
        now.t += 1e-5
    meter.end("f", True)
    meter.close()
    assert meter.redraws <= REDRAWS_PER_SECOND + 3, meter.redraws
    text = b"".join(out).decode()
    assert text.endswith("\n") and "100%" in text.splitlines()[-1]


def test_progress_total_line_for_recursive_copies() -> None:
    out: list[bytes] = []
    now = _Clock()
    meter = TtyProgress(out.append, total=True, width=80, now=now)
    for name in ("a", "b"):
        meter.start(name, 1000, 0)
        now.t += 0.5
        meter.advance(1000)
        meter.end(name, True)
    meter.close()
    text = b"".join(out).decode()
    assert "total: 2 files 2.0KB" in text.rsplit("\r", 1)[-1]
    assert text.count("\x1b[1A") >= 2  # each redraw returns to the file's line


def test_progress_cut_short_leaves_a_fresh_line() -> None:
    out: list[bytes] = []
    meter = TtyProgress(out.append, width=80, now=_Clock())
    meter.start("f", 1000, 0)
    meter.advance(10)
    meter.close()
    assert b"".join(out).endswith(b"\n")


def test_no_meter_without_a_terminal(tmp_path: Path) -> None:
    with open(tmp_path / "log", "wb") as f:
        assert TtyProgress.on_terminal(total=False, fd=f.fileno()) is None
    master, slave = os.openpty()
    try:
        assert TtyProgress.on_terminal(total=False, fd=slave) is not None
    finally:
        os.close(master)
        os.close(slave)
