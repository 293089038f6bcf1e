"""qpasswd end to end: real processes, real files, a real PTY for the prompts.

bcrypt cost 4 (``-c 4``) throughout; the default cost 12 would make each run ~0.25 s slower.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from importtime import imported
from ptyio import read_to_eof, read_until
from ptyprocess import PtyProcess

from common.accounts.passwd import PasswdFile

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SECRET = "s3cret-Pässword"


def qpasswd(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run qpasswd with ``stdin`` piped in (so not a TTY); None means /dev/null."""
    command = [sys.executable, "-m", "qpasswd", *args]
    if stdin is None:
        return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                              cwd=ROOT, env=ENV, timeout=30)
    return subprocess.run(command, input=stdin, capture_output=True, cwd=ROOT, env=ENV,
                          timeout=30)


def _text(result: subprocess.CompletedProcess[bytes]) -> tuple[str, str]:
    return result.stdout.decode(), result.stderr.decode()


def assert_one_line_failure(result: subprocess.CompletedProcess[bytes], *needles: str) -> str:
    out, err = _text(result)
    assert result.returncode == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qpasswd: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


def add(
    path: Path, user: str, password: str = SECRET, *extra: str
) -> subprocess.CompletedProcess[bytes]:
    return qpasswd("-f", str(path), "-c", "4", *extra, "-u", user, stdin=f"{password}\n".encode())


@pytest.fixture()
def pw(tmp_path: Path) -> Path:
    return tmp_path / "passwd"


def test_add_list_change_delete(pw: Path) -> None:
    result = add(pw, "alice")
    out, err = _text(result)
    assert result.returncode == 0, err
    assert "added user alice" in out
    assert SECRET not in out + err
    assert add(pw, "bob", "hunter2").returncode == 0

    listed = qpasswd("-f", str(pw), "-l")
    assert listed.returncode == 0 and listed.stdout.decode().splitlines() == ["alice", "bob"]

    changed = add(pw, "alice", "new password")
    assert changed.returncode == 0 and "changed the password of alice" in changed.stdout.decode()
    pf = PasswdFile(pw)
    assert pf.verify("alice", b"new password") and not pf.verify("alice", SECRET.encode())
    assert pf.verify("bob", b"hunter2")

    deleted = qpasswd("-f", str(pw), "-d", "alice")
    assert deleted.returncode == 0, deleted.stderr
    assert qpasswd("-f", str(pw), "-l").stdout.decode().splitlines() == ["bob"]
    assert pw.stat().st_mode & 0o777 == 0o600


def test_delete_unknown_user_fails(pw: Path) -> None:
    add(pw, "alice")
    before = pw.read_bytes()
    assert_one_line_failure(qpasswd("-f", str(pw), "-d", "bob"), "no user 'bob'")
    assert pw.read_bytes() == before


def test_stdin_reads_exactly_one_line(pw: Path) -> None:
    result = qpasswd("-f", str(pw), "-c", "4", "-u", "alice", stdin=b"first line\r\nsecond\n")
    assert result.returncode == 0, result.stderr
    assert PasswdFile(pw).verify("alice", b"first line")
    # No trailing newline at EOF is still a line.
    assert qpasswd("-f", str(pw), "-c", "4", "-u", "bob", stdin=b"tail").returncode == 0
    assert PasswdFile(pw).verify("bob", b"tail")


@pytest.mark.parametrize(
    ("stdin", "complaint"),
    [
        (None, "no password on standard input"),
        (b"", "no password on standard input"),
        (b"\n", "empty password"),
        (b"x" * 73 + b"\n", "too long"),
    ],
)
def test_bad_stdin_password_refused(pw: Path, stdin: bytes | None, complaint: str) -> None:
    result = qpasswd("-f", str(pw), "-c", "4", "-u", "alice", stdin=stdin)
    assert_one_line_failure(result, complaint)
    assert not pw.exists()


def test_cost_honoured_and_bounded(pw: Path) -> None:
    assert add(pw, "alice").returncode == 0
    assert pw.read_text().split(":", 1)[1].startswith("$2b$04$")
    assert add(pw, "bob", SECRET, "-c", "5").returncode == 0
    assert "bob:$2b$05$" in pw.read_text()
    for bad in ("3", "32", "many"):
        assert_one_line_failure(qpasswd("-f", str(pw), "-c", bad, "-u", "x", stdin=b"p\n"), "-c")


@pytest.mark.parametrize(
    "args",
    [(), ("-l", "-d", "alice"), ("-u", "alice", "-l"), ("-x",), ("-u",)],
)
def test_usage_errors_are_one_line_exit_1(pw: Path, args: tuple[str, ...]) -> None:
    assert_one_line_failure(qpasswd("-f", str(pw), *args, stdin=b"pw\n"))
    assert not pw.exists()


def test_invalid_user_name(pw: Path) -> None:
    assert_one_line_failure(add(pw, "Alice"), "invalid user name 'Alice'")
    assert_one_line_failure(add(pw, "a:b"), "invalid user name")
    assert not pw.exists()


@pytest.mark.parametrize("action", [("-l",), ("-d", "bob"), ("-u", "carol")])
def test_malformed_file_one_line_and_unchanged(pw: Path, action: tuple[str, ...]) -> None:
    add(pw, "bob")
    with pw.open("a") as f:
        f.write("this line is broken\n")
    before = pw.read_bytes()
    result = qpasswd("-f", str(pw), "-c", "4", *action, stdin=b"pw\n")
    assert_one_line_failure(result, f"{pw}:2:")
    assert pw.read_bytes() == before


def test_group_writable_file_refused(pw: Path) -> None:
    add(pw, "bob")
    pw.chmod(0o660)
    before = pw.read_bytes()
    assert_one_line_failure(qpasswd("-f", str(pw), "-l"), "too open")
    assert_one_line_failure(add(pw, "carol"), "too open")
    assert pw.read_bytes() == before and pw.stat().st_mode & 0o777 == 0o660


def test_list_missing_file_fails(pw: Path) -> None:
    assert_one_line_failure(qpasswd("-f", str(pw), "-l"), "no such file")


def test_edit_waits_for_the_lock(pw: Path) -> None:
    """qpasswd blocks while another editor holds <file>.lock, then completes."""
    add(pw, "alice")
    lock_fd = os.open(f"{pw}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        process = subprocess.Popen(
            [sys.executable, "-m", "qpasswd", "-f", str(pw), "-c", "4", "-u", "bob"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=ROOT, env=ENV,
        )
        assert process.stdin is not None
        process.stdin.write(b"pw\n")
        process.stdin.close()
        time.sleep(0.5)
        assert process.poll() is None, "qpasswd did not wait for the lock"
        assert PasswdFile(pw).users() == ["alice"]
    finally:
        os.close(lock_fd)  # releases the lock
    assert process.wait(timeout=30) == 0
    assert PasswdFile(pw).users() == ["alice", "bob"]


def test_concurrent_qpasswd_runs_lose_nothing(pw: Path) -> None:
    """Two concurrent streams of qpasswd processes; every user must survive."""
    failures: list[str] = []

    def worker(prefix: str) -> None:
        for i in range(4):
            result = add(pw, f"{prefix}{i}", f"pw{prefix}{i}")
            if result.returncode != 0:
                failures.append(result.stderr.decode())

    threads = [threading.Thread(target=worker, args=(p,)) for p in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures
    assert sorted(PasswdFile(pw).users()) == sorted(f"{p}{i}" for p in "xy" for i in range(4))


@pytest.mark.skipif(os.geteuid() == 0, reason="as root the default is /etc/qsh/passwd")
def test_default_file_in_home(tmp_path: Path) -> None:
    env = {**ENV, "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "qpasswd", "-c", "4", "-u", "alice"],
                            input=b"pw\n", capture_output=True, cwd=ROOT, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / ".qsh").stat().st_mode & 0o777 == 0o700
    assert PasswdFile(tmp_path / ".qsh" / "passwd").verify("alice", b"pw")


# -- on a terminal --------------------------------------------------------------------------


def _spawn(*args: str) -> PtyProcess:
    return PtyProcess.spawn([sys.executable, "-m", "qpasswd", *args], cwd=str(ROOT), env=ENV,
                            dimensions=(24, 80))


def _echo_is_off(proc: PtyProcess) -> bool:
    return not termios.tcgetattr(proc.fd)[3] & termios.ECHO


def _answer_prompts(proc: PtyProcess, first: str, second: str) -> bytes:
    seen = read_until(proc, b"New password:")
    assert _echo_is_off(proc)
    proc.write(first.encode() + b"\n")
    seen += read_until(proc, b"Retype new password:")
    assert _echo_is_off(proc)
    proc.write(second.encode() + b"\n")
    return seen + read_to_eof(proc)


def test_tty_prompts_twice_without_echo(pw: Path) -> None:
    proc = _spawn("-f", str(pw), "-c", "4", "-u", "alice")
    output = _answer_prompts(proc, SECRET, SECRET)
    assert proc.exitstatus == 0, output
    assert SECRET.encode() not in output
    assert b"added user alice" in output
    assert PasswdFile(pw).verify("alice", SECRET.encode())


def test_tty_mismatch_refused(pw: Path) -> None:
    add(pw, "alice", "old password")
    before = pw.read_bytes()
    proc = _spawn("-f", str(pw), "-c", "4", "-u", "alice")
    output = _answer_prompts(proc, SECRET, SECRET + "x")
    assert proc.exitstatus == 1
    assert b"qpasswd: passwords do not match" in output
    assert SECRET.encode() not in output
    assert pw.read_bytes() == before


def test_tty_empty_password_refused(pw: Path) -> None:
    proc = _spawn("-f", str(pw), "-c", "4", "-u", "alice")
    output = _answer_prompts(proc, "", "")
    assert proc.exitstatus == 1
    assert b"qpasswd: empty password refused" in output
    assert not pw.exists()


def test_tty_with_stdin_flag_does_not_prompt(pw: Path) -> None:
    proc = _spawn("-f", str(pw), "-c", "4", "--stdin", "-u", "alice")
    proc.write(b"piped\n")
    output = read_to_eof(proc)
    assert b"New password" not in output
    assert proc.exitstatus == 0, output
    assert PasswdFile(pw).verify("alice", b"piped")


def test_qpasswd_loads_no_key_or_algorithm_code(pw: Path) -> None:
    """The passwd file needs bounded reads and atomic writes, nothing of the key classes:
    loading them (and the algorithm registry behind them) cost qpasswd ~17 ms per run."""
    assert add(pw, "alice").returncode == 0
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "qpasswd", "-l", "-f",
                             str(pw)], capture_output=True, cwd=ROOT, env=ENV, timeout=30)
    assert result.returncode == 0 and result.stdout == b"alice\n", result.stderr
    loaded = imported(result.stderr.decode())
    heavy = sorted(m for m in loaded
                   if m.startswith(("common.accounts.keys", "common.accounts.public_key",
                                    "common.crypto.registry", "common.crypto.algorithms",
                                    "cryptography.hazmat.primitives.asymmetric")))
    assert not heavy, heavy
