"""No traceback reaches a user from any command line: random argv for every command.

Each example runs the command's real ``main`` in a process of its own, inside new network,
PID and mount namespaces: nothing it tries can leave the machine (not even loopback is up
there), whatever it starts, a detached daemon included, dies with the namespace, and the
filesystem is read-only there but for a fresh, empty tmpfs that holds its HOME: it
runs as root, as an administrator would run qshd, and cannot change the machine. It has no
controlling terminal and 15 seconds. What it prints must hold no Python traceback, and it
must end with one of the command's documented exit statuses.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNS = 0x00020000
TIMEOUT = 15.0

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root for network and PID namespaces")


def _main(command: str) -> Callable[[list[str]], object]:
    """The command's console-script entry point, given ``argv`` the way the script is."""
    module, name = {"qsh": ("qsh.entry", "main"), "qcp": ("qcp.cli", "main"),
                    "qshd": ("qshd.cli", "main"), "qpasswd": ("qpasswd.cli", "main"),
                    "qsh-keygen": ("qsh.keygen", "main")}[command]
    entry = getattr(__import__(module, fromlist=[name]), name)

    def run(argv: list[str]) -> object:
        sys.argv = [command, *argv]
        return entry()

    return run


MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18


def _mount(libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None,
           flags: int) -> None:
    if libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(),
                  flags, None) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target}")


def _seal_filesystem(scratch: Path) -> Path:
    """In the new mount namespace: everything read-only but a fresh tmpfs on ``scratch`` (an
    empty directory the test made), which holds HOME. Nothing is mounted over /tmp or /run:
    the interpreter and its packages may live there (a venv in a CI clone under /tmp)."""
    libc = ctypes.CDLL(None, use_errno=True)
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    _mount(libc, "tmpfs", str(scratch), "tmpfs", 0)
    for path in ("/", "/dev", "/sys"):
        _mount(libc, path, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    home = scratch / "home"
    home.mkdir()
    return home


def _confined(run: Callable[[list[str]], object], argv: list[str], output: int,
              scratch: Path) -> None:
    """In the namespaces' first process: seal the filesystem, run, exit."""
    os.setsid()  # no controlling terminal: nothing can prompt
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(output, 1)
    os.dup2(output, 2)
    # pytest's capture replaced these in the parent; the command writes to the real fds.
    sys.stdout = open(1, "w", closefd=False, buffering=1)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False, buffering=1)  # noqa: SIM115
    home = _seal_filesystem(scratch)
    os.chdir(home)
    os.environ.clear()
    os.environ.update(HOME=str(home), PATH="/usr/bin:/bin", LANG="C.UTF-8", TERM="dumb")
    status = 0
    try:
        result = run(argv)
        status = result if isinstance(result, int) else 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        status = 70
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
    os._exit(status)


def _namespaces_parent(run: Callable[[list[str]], object], argv: list[str],
                       output: int, scratch: Path) -> None:
    """Between the test and the namespaces: it waits for their first process, which
    ignores signals it has no handler for (an alarm of its own included), so the time limit
    is kept from here; when that process ends, the kernel ends every other one in there."""
    code = 99
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWNS) != 0:
            os.write(output, b"unshare failed\n")
            os._exit(98)
        inner = os.fork()
        if inner == 0:
            _confined(run, argv, output, scratch)
        os.close(output)
        limit = time.monotonic() + TIMEOUT
        while True:
            done, raw = os.waitpid(inner, os.WNOHANG)
            if done:
                break
            if time.monotonic() > limit:
                os.kill(inner, signal.SIGKILL)
                _, raw = os.waitpid(inner, 0)
                break
            time.sleep(0.02)
        code = os.WEXITSTATUS(raw) if os.WIFEXITED(raw) else 128 + os.WTERMSIG(raw)
    finally:
        os._exit(code)


def run_confined(command: str, argv: list[str]) -> tuple[int, bytes]:
    """(exit status, everything printed)."""
    run = _main(command)
    scratch = Path(tempfile.mkdtemp(prefix="qsh-argv-"))  # a tmpfs is mounted on it in there
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _namespaces_parent(run, argv, write_end, scratch)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + TIMEOUT + 10
    try:
        while time.monotonic() < deadline:
            if select.select([read_end], [], [], 1.0)[0]:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(read_end)
        _, raw = os.waitpid(pid, 0)
        scratch.rmdir()  # empty out here: the tmpfs lived only in the namespace
    status = os.WEXITSTATUS(raw) if os.WIFEXITED(raw) else 128 + os.WTERMSIG(raw)
    return status, b"".join(chunks)


# Words each command knows, and words nobody does; each argv mixes them.
_COMMON = ["-h", "--help", "-V", "-v", "-q", "-p", "-i", "-F", "-o", "--", "-", "none", ".", "/",
           "127.0.0.1", "localhost", "[::1]", "user@host", "a@b:c", "host:/tmp/x", "Port=x",
           "StrictHostKeyChecking=yes", "0", "65536", "-1", "x" * 300, "\x00", "é", "%u"]
WORDS = {
    "qsh": [*_COMMON, "-l", "-t", "-N", "-f", "-T", "-L", "-R", "-D", "-4", "-6", "-E",
            "8080:localhost:80", "1:2", "true"],
    "qcp": [*_COMMON, "-r", "-P", "-l", "--resume", "-p", "src", "dst/", "h:", ":x"],
    "qshd": [*_COMMON, "-t", "-T", "-D", "-e", "-d", "-f", "--pidfile", "--ready-file",
             "--install-service", "--root", "--init", "sysv", "ListenAddress=::1"],
    "qpasswd": [*_COMMON, "-u", "-d", "-f", "-l", "root", "alice", "--stdin"],
    "qsh-keygen": [*_COMMON, "-t", "mldsa65", "-f", "-N", "-C", "-y", "-l", "-R", "-F",
                   "--no-passphrase", "id"],
}
#: Exit statuses each command documents (qsh: the remote status or 255; the rest 0/1/2).
STATUSES = {"qsh": {0, 1, 255}, "qcp": {0, 1}, "qshd": {0, 1}, "qpasswd": {0, 1, 2},
            "qsh-keygen": {0, 1}}


#: Options that take a value, per command: paired with awkward values more often than chance
#: would pair them.
VALUED = {"qsh": ["-p", "-l", "-i", "-F", "-o", "-E", "-T", "-L", "-R", "-D"],
          "qcp": ["-P", "-i", "-F", "-o", "-l"],
          "qshd": ["-f", "-p", "-h", "-o", "--pidfile", "--ready-file", "--root", "--init"],
          "qpasswd": ["-u", "-d", "-f"],
          "qsh-keygen": ["-t", "-f", "-N", "-C", "-R", "-F"]}
VALUES = [".", "/", "..", "", "-", "none", "0", "65536", "x" * 300, "a:b:c:d", "[::1]:0",
          "Port=", "=", "~", "%", "/dev/null", "/etc/passwd", "no-such-file"]


def argv_for(command: str) -> st.SearchStrategy[list[str]]:
    word = st.one_of(st.sampled_from(WORDS[command]),
                     st.text(st.characters(blacklist_categories=("Cs",)), max_size=12))
    pair = st.tuples(st.sampled_from(VALUED[command]), st.sampled_from(VALUES))
    items = st.lists(st.one_of(word.map(lambda w: [w]), pair.map(list)), max_size=5)
    # Most lines need their operands to get past the parser to the work: often add them.
    operands = st.sampled_from([[], *([words] for words in OPERANDS[command])])
    return st.tuples(items, operands).map(
        lambda both: [w for part in both[0] for w in part] + [w for o in both[1] for w in o])


OPERANDS = {"qsh": [["127.0.0.1"], ["h", "true"]], "qcp": [["a", "h:b"], ["h:a", "."]],
            "qshd": [["-t"], ["-D", "-e"]], "qpasswd": [["-u", "alice"]],
            "qsh-keygen": [["-f", "k", "-N", ""]]}


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(WORDS))
def test_random_command_lines_never_show_a_traceback(command: str) -> None:
    @settings(max_examples=int(os.environ.get("QSH_ARGV_EXAMPLES", "100")), deadline=None,
              derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(argv=argv_for(command))
    def check(argv: list[str]) -> None:
        if any("\x00" in word for word in argv):  # no exec could pass a NUL in argv
            return
        status, printed = run_confined(command, argv)
        assert b"Traceback" not in printed, (argv, printed.decode(errors="replace"))
        # Killed at the time limit (a daemon that started, a copy that waits): no failure.
        assert status in STATUSES[command] or status == 128 + signal.SIGKILL, \
            (argv, status, printed.decode(errors="replace"))

    check()


#: Command lines that once ended in a traceback (issue 11): each must stay fixed.
ONCE_BROKEN = [
    ("qsh", ["-F", ".", "127.0.0.1", "true"]),           # IsADirectoryError
    ("qsh", ["a" * 300, "true"]),                          # UnicodeError from the resolver
    ("qshd", ["-t", "-o", "ListenAddress=" + "a" * 300]),  # an address nobody can bind
    ("qshd", ["-D", "-e", "-f", "."]),                     # the config a directory
]


@pytest.mark.parametrize(("command", "argv"), ONCE_BROKEN)
def test_command_lines_that_once_showed_a_traceback(command: str, argv: list[str]) -> None:
    status, printed = run_confined(command, argv)
    assert b"Traceback" not in printed, printed.decode(errors="replace")
    assert status in STATUSES[command] and printed.count(b"\n") >= 1, (status, printed)


def test_qshd_says_plainly_that_it_cannot_write_its_host_key() -> None:
    """First start as root where /etc is read-only: the path and the reason, not Python's
    ``[Errno 30] Read-only file system: '/etc/qsh'``."""
    status, printed = run_confined("qshd", ["-D", "-e"])
    assert (status, printed) == (1, b"qshd: /etc/qsh: Read-only file system\n")
