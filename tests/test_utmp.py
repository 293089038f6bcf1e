"""qshd.utmp: login and logout records checked with the system's own tools.

Records go to temporary files and are read back by ``who FILE`` (coreutils), ``last -f
FILE`` and ``utmpdump`` (util-linux) and ``lastlog -R ROOT`` (login/shadow, which reads
ROOT/var/log/lastlog and ROOT/etc/passwd after a chroot): if our layout or our semantics
differed from glibc's, these are the programs that would show it. The layout itself is
compared with the C compiler's ``offsetof``/``sizeof`` where a compiler is installed.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qshd import utmp
from qshd.utmp import (
    DEAD_PROCESS,
    LASTLOG_RECORD,
    USER_PROCESS,
    UTMP_RECORD,
    AccountingFiles,
    LastlogEntry,
    Login,
    address_bytes,
    read_lastlog,
    read_utmp,
    record_login,
    record_logout,
    set_loginuid,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

#: For the tests that need no real account.
UID = 4242
USER = "qshacct"



def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False,
                          env={**os.environ, "LC_ALL": "C", "TZ": "UTC"})
    assert done.returncode == 0, (argv, done.stderr)
    return done.stdout


@pytest.fixture(scope="module")
def account() -> Iterator[tuple[str, int]]:
    """A throwaway system account: last(1) looks the user up to tell a live login (the
    session leader's loginuid is the user's) from a stale record."""
    if os.geteuid() != 0:
        pytest.skip("needs root (useradd)")
    name = f"qsha{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--no-create-home", name], check=True, capture_output=True,
                   timeout=60)
    try:
        yield name, pwd.getpwnam(name).pw_uid
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False, timeout=60)


@pytest.fixture()
def files(tmp_path: Path, account: tuple[str, int]) -> AccountingFiles:
    """Empty utmp and wtmp, and a lastlog inside a root lastlog -R can chroot into."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "var" / "log").mkdir(parents=True)
    user, uid = account
    (root / "etc" / "passwd").write_text(
        f"root:x:0:0:root:/root:/bin/sh\n{user}:x:{uid}:{uid}::/nonexistent:/bin/sh\n")
    for path in (tmp_path / "utmp", tmp_path / "wtmp", root / "var" / "log" / "lastlog"):
        path.touch()
    return AccountingFiles(str(tmp_path / "utmp"), str(tmp_path / "wtmp"),
                           str(root / "var" / "log" / "lastlog"))


@pytest.fixture()
def leader(account: tuple[str, int]) -> Iterator[int]:
    """A live session leader whose audit loginuid is the user's (as after set_loginuid in
    a real session), so that ``last`` sees a live login, not a stale record."""
    uid = account[1]
    proc = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: set_loginuid(uid))
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(autouse=True)
def fresh_reports() -> Iterator[None]:
    utmp._reported.clear()
    yield
    utmp._reported.clear()


def test_login_and_logout_seen_by_who_last_and_lastlog(files: AccountingFiles,
                                                        leader: int,
        account: tuple[str, int]) -> None:
    user, uid = account
    assert files.utmp and files.wtmp and files.lastlog
    login = Login(user, uid, "/dev/pts/42", leader, "127.0.0.1")
    t0 = time.time()
    assert record_login(login, t0, files) is None  # no earlier login

    who = _run(_tool("who"), files.utmp)
    assert re.search(rf"^{user}\s+pts/42\s+.*\(127\.0\.0\.1\)$", who, re.M), who
    last = _run(_tool("last"), "-w", "-f", files.wtmp)
    assert re.search(rf"^{user}\s+pts/42\s+127\.0\.0\.1\s+.*still logged in", last, re.M), last
    dump = _run(_tool("utmpdump"), files.utmp)
    assert re.search(rf"\[7\] \[{leader:05d}\] \[s/42\] \[{user}\s*\] \[pts/42\s*\] "
                     r"\[127\.0\.0\.1\s*\] \[127\.0\.0\.1\s*\]", dump), dump
    root = str(Path(files.lastlog).parents[2])
    lastlog = _run(_tool("lastlog"), "-R", root, "-u", user)
    assert re.search(rf"^{user}\s+pts/42\s+127\.0\.0\.1\s+\w+ \w+ +\d+ [\d:]+ \+0000 \d+$",
                     lastlog, re.M), lastlog

    record_logout(login, t0 + 125, files, exit_status=0)
    who = _run(_tool("who"), files.utmp)
    assert user not in who, who
    last = _run(_tool("last"), "-w", "-f", files.wtmp)
    assert re.search(rf"^{user}\s+pts/42\s+127\.0\.0\.1\s+.* - [\d:]+\s+\(00:02\)", last,
                     re.M), last
    assert "still logged in" not in last
    # The utmp slot is marked dead, not removed (who -a, w and friends expect that).
    (record,) = read_utmp(files.utmp)
    assert (record.type, record.line, record.user, record.host) == (DEAD_PROCESS, "pts/42",
                                                                     "", "")
    # wtmp: the login and the logout, the logout with the line and no user.
    assert [(r.type, r.user, r.line) for r in read_utmp(files.wtmp)] == [
        (USER_PROCESS, user, "pts/42"), (DEAD_PROCESS, "", "pts/42")]


def test_lastlog_returns_the_previous_login(files: AccountingFiles, leader: int,
        account: tuple[str, int]) -> None:
    user, uid = account
    assert files.lastlog
    first = Login(user, uid, "pts/1", leader, "127.0.0.1")
    second = Login(user, uid, "pts/2", leader, "::1")
    assert record_login(first, 1_700_000_000.5, files) is None
    previous = record_login(second, 1_700_000_100.0, files)
    assert previous == LastlogEntry(1_700_000_000, "pts/1", "127.0.0.1")
    assert read_lastlog(files.lastlog, uid) == LastlogEntry(1_700_000_100, "pts/2", "::1")
    assert read_lastlog(files.lastlog, uid - 1) is None  # never written: zeros
    assert read_lastlog(files.lastlog, uid + 1000) is None  # past the end
    assert os.path.getsize(files.lastlog) == (uid + 1) * LASTLOG_RECORD.size
    # The file is sparse up to our record, as login(1) leaves it.
    assert os.stat(files.lastlog).st_blocks * 512 < os.path.getsize(files.lastlog)


def test_utmp_slots(files: AccountingFiles, leader: int,
        account: tuple[str, int]) -> None:
    """One slot per line: a new login on a line replaces the old record; a logout only ends
    its own login, never a newer one on the same line."""
    user, uid = account
    assert files.utmp
    a = Login(user, uid, "pts/7", leader, "127.0.0.1")
    b = Login("root", 0, "pts/8", leader, "127.0.0.2")
    record_login(a, 1_700_000_000, files)
    record_login(b, 1_700_000_001, files)
    record_logout(a, 1_700_000_002, files)
    a2 = Login(user, uid, "pts/7", os.getpid(), "127.0.0.3")
    record_login(a2, 1_700_000_003, files)
    assert [(r.type, r.line, r.host) for r in read_utmp(files.utmp)] == [
        (USER_PROCESS, "pts/7", "127.0.0.3"), (USER_PROCESS, "pts/8", "127.0.0.2")]
    record_logout(a, 1_700_000_004, files)  # a's old session ends late: a2 stays
    assert (read_utmp(files.utmp)[0].type, read_utmp(files.utmp)[0].pid) == (
        USER_PROCESS, os.getpid())
    record_logout(a2, 1_700_000_005, files)
    assert [r.type for r in read_utmp(files.utmp)] == [DEAD_PROCESS, USER_PROCESS]


def test_wtmp_torn_tail_is_replaced(files: AccountingFiles, leader: int,
        account: tuple[str, int]) -> None:
    """A writer that crashed mid-record left a partial one: we write over it, so the file
    stays a whole number of records and last reads everything after it."""
    user, uid = account
    assert files.wtmp
    Path(files.wtmp).write_bytes(b"\x07" * 100)
    record_login(Login(user, uid, "pts/3", leader, "127.0.0.1"), time.time(), files)
    assert os.path.getsize(files.wtmp) == UTMP_RECORD.size
    assert re.search(rf"^{user}\s+pts/3\s", _run(_tool("last"), "-w", "-f", files.wtmp), re.M)


def test_accounting_never_fails_a_login(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    """Missing files, a FIFO where a file should be, a directory: the calls return, nothing
    blocks, and each problem is logged once per file, then only at debug level."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    broken = AccountingFiles(str(fifo), str(tmp_path), str(tmp_path / "missing"))
    login = Login(USER, UID, "pts/5", os.getpid(), "127.0.0.1")
    caplog.set_level(logging.DEBUG, logger="qshd")
    start = time.monotonic()
    for _ in range(3):
        assert record_login(login, time.time(), broken) is None
        record_logout(login, time.time(), broken)
    assert time.monotonic() - start < 2
    loud = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(loud) == 3, [r.getMessage() for r in loud]  # one per file, not per call
    messages = " | ".join(r.getMessage() for r in loud)
    assert "missing: does not exist" in messages
    assert "not a regular file" in messages
    assert "Is a directory" in messages


def test_a_held_lock_is_waited_for_then_given_up(files: AccountingFiles,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Another process holds the wtmp lock (glibc's fcntl kind): we wait lock_timeout, give
    up on that file only, and say so once."""
    assert files.wtmp and files.utmp
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'r+'); "
         "fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
         files.wtmp], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        login = Login(USER, UID, "pts/6", os.getpid(), "127.0.0.1")
        start = time.monotonic()
        record_login(login, time.time(), files, lock_timeout=0.3)
        took = time.monotonic() - start
        assert 0.3 <= took < 2
        assert os.path.getsize(files.wtmp) == 0  # given up
        assert len(read_utmp(files.utmp)) == 1  # the other files were still written
        assert any("lock held by another process" in r.getMessage() for r in caplog.records)
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.communicate(timeout=10)
    record_login(login, time.time(), files, lock_timeout=0.3)  # released: written now
    assert os.path.getsize(files.wtmp) == UTMP_RECORD.size


def test_addresses() -> None:
    assert address_bytes("127.0.0.1") == bytes([127, 0, 0, 1]) + bytes(12)
    assert address_bytes("::ffff:10.1.2.3") == bytes([10, 1, 2, 3]) + bytes(12)
    assert address_bytes("::1") == bytes(15) + b"\x01"
    assert address_bytes("fe80::1%eth0") == bytes.fromhex("fe80" + "00" * 13 + "01")
    assert address_bytes("unknown") == bytes(16)


def test_long_fields_are_cut_to_the_c_sizes(files: AccountingFiles) -> None:
    assert files.utmp
    login = Login("u" * 40, UID, "pts/" + "9" * 40, os.getpid(), "h" * 300)
    record_login(login, 1_700_000_000, files)
    (record,) = read_utmp(files.utmp)
    assert (record.user, record.line, record.host) == ("u" * 32, login.line[:32], "h" * 256)
    assert record.id == login.line.encode()[-4:]


_LAYOUT_C = r"""
#include <stddef.h>
#include <stdio.h>
#include <utmp.h>
#define F(m) printf(#m " %zu %zu\n", offsetof(struct utmp, m), sizeof(((struct utmp *)0)->m))
int main(void) {
    printf("utmp %zu\nlastlog %zu\n", sizeof(struct utmp), sizeof(struct lastlog));
    F(ut_type); F(ut_pid); F(ut_line); F(ut_id); F(ut_user); F(ut_host); F(ut_exit);
    F(ut_session); F(ut_tv); F(ut_addr_v6);
    return 0;
}
"""


def test_layout_matches_the_c_library(tmp_path: Path) -> None:
    """Our struct formats against the compiler's view of <utmp.h> on this machine."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    source = tmp_path / "layout.c"
    source.write_text(_LAYOUT_C)
    subprocess.run([cc, "-o", str(tmp_path / "layout"), str(source)], check=True, timeout=60)
    out = dict(line.split(" ", 1) for line in _run(str(tmp_path / "layout")).splitlines())
    assert int(out["utmp"]) == UTMP_RECORD.size == 384
    assert int(out["lastlog"]) == LASTLOG_RECORD.size == 292
    ours = {"ut_type": (0, 2), "ut_pid": (4, 4), "ut_line": (8, 32), "ut_id": (40, 4),
            "ut_user": (44, 32), "ut_host": (76, 256), "ut_exit": (332, 4),
            "ut_session": (336, 4), "ut_tv": (340, 8), "ut_addr_v6": (348, 16)}
    theirs = {k: tuple(int(x) for x in v.split()) for k, v in out.items() if k.startswith("ut_")}
    assert theirs == ours
    # And our packing puts each field where the table says.
    record = utmp.UtmpRecord(USER_PROCESS, 0x01020304, "L", b"I", "U", "H", 5, 6, 7, 8, 9,
                             b"\xaa" * 16)
    data = record.pack()
    assert data[0:2] == (7).to_bytes(2, sys.byteorder)
    assert data[4:8] == (0x01020304).to_bytes(4, sys.byteorder)
    assert (data[8], data[40], data[44], data[76]) == tuple(b"LIUH")
    assert data[332:336] == (5).to_bytes(2, sys.byteorder) + (6).to_bytes(2, sys.byteorder)
    assert data[336:340] == (7).to_bytes(4, sys.byteorder)
    assert data[340:348] == (8).to_bytes(4, sys.byteorder) + (9).to_bytes(4, sys.byteorder)
    assert data[348:364] == b"\xaa" * 16 and data[364:] == bytes(20)
    assert utmp.UtmpRecord.unpack(data) == record
