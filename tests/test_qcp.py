# ruff: noqa: F811 - "server" is an imported fixture: every test parameter "redefines" it
"""qcp end to end: a real ``python -m qshd`` on 127.0.0.1, real ``python -m qcp``
processes, real files, both directions.

The daemon, the account and the user key are test_qsh_client's ``server`` fixture: as root
the daemon runs as root and qcp logs in as a throwaway system account (so every file the
server side touches is touched with that account's rights); otherwise as ourselves. The
server's files live in a scratch directory owned by the target account; remote paths are
absolute there unless a test is about the home directory.

Covered: 200 MB each way with SHA-256, an empty file, names with spaces, newlines and
non-UTF-8 bytes, -r with symlinks and empty directories, -p, a missing source, an
unwritable destination, a file where a directory is needed, the server killed mid-copy,
SIGINT on qcp mid-copy, --resume sending only the rest, and (as root) a destination the
account may not write.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon import stop_process
from test_qsh_client import (
    ROOT,
    Server,
    _client_env,
    _drain,
    _start_daemon,
    server,  # noqa: F401 - the fixture, shared with test_qsh_client
)

PYTHON = sys.executable
MiB = 1024 * 1024
IS_ROOT = os.geteuid() == 0
Direction = str  # "up": local -> remote; "down": remote -> local
DIRECTIONS = ("up", "down")


# --------------------------------------------------------------------------- helpers


def qcp_command(server: Server, *args: str | bytes | Path, port: str | None = None,
                extra: tuple[str, ...] = ()) -> list[str | bytes | Path]:
    return [PYTHON, "-m", "qcp", "-P", port or server.port, "-i", str(server.key),
            "-o", "StrictHostKeyChecking=yes", *extra, *args]


def remote(server: Server, path: str | bytes | Path) -> bytes:
    """``user@127.0.0.1:path`` as bytes (the path may not be UTF-8)."""
    return f"{server.user}@127.0.0.1:".encode() + os.fsencode(path)


def qcp(server: Server, *args: str | bytes | Path, timeout: float = 120,
        **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(qcp_command(server, *args, **kwargs),  # type: ignore[arg-type]
                          capture_output=True, timeout=timeout, cwd=ROOT,
                          env=_client_env(server.client_home), stdin=subprocess.DEVNULL,
                          start_new_session=True)


def spawn(server: Server, *args: str | bytes | Path, **kwargs: object
          ) -> subprocess.Popen[bytes]:
    return subprocess.Popen(qcp_command(server, *args, **kwargs),  # type: ignore[arg-type]
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            env=_client_env(server.client_home), stdin=subprocess.DEVNULL,
                            start_new_session=True)


def owner(server: Server) -> tuple[int, int]:
    entry = pwd.getpwnam(server.user)
    return entry.pw_uid, entry.pw_gid


def give(server: Server, path: Path) -> Path:
    """Make ``path`` (and everything below it, links included) the target account's."""
    uid, gid = owner(server)
    for top, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.lchown(os.path.join(top, name), uid, gid)
    os.lchown(path, uid, gid)
    return path


@pytest.fixture()
def far(server: Server) -> Iterator[Path]:
    """A fresh directory on the "remote" side, the target account's."""
    path = server.base / "scratch" / uuid.uuid4().hex[:10]
    path.mkdir(parents=True)
    os.chmod(path.parent, 0o755)
    give(server, path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def near(tmp_path: Path) -> Path:
    """A fresh local directory."""
    path = tmp_path / "local"
    path.mkdir()
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        left = size
        block = os.urandom(min(size, 4 * MiB)) if size else b""
        while left:
            f.write(block[:left])
            left -= min(left, len(block))
    return path


def listing(directory: Path) -> list[bytes]:
    return sorted(os.listdir(os.fsencode(directory)))


def copy(server: Server, direction: Direction, sources: list[Path], target: Path,
         *options: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    """qcp ``options`` ``sources`` -> ``target``, the remote side being whichever the
    direction says (the paths are the same files either way: loopback)."""
    if direction == "up":
        return qcp(server, *options, *sources, remote(server, target), **kwargs)
    return qcp(server, *options, *(remote(server, s) for s in sources), target, **kwargs)


def ends(direction: Direction, near: Path, far: Path) -> tuple[Path, Path]:
    """(where the sources are, where the copies go) for a direction."""
    return (near, far) if direction == "up" else (far, near)


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


def stderr_lines(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    return result.stderr.decode(errors="replace").splitlines()


# --------------------------------------------------------------------------- contents


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_200_mb_file_arrives_with_the_same_digest(server: Server, near: Path, far: Path,
                                                  direction: Direction) -> None:
    src_dir, dst_dir = ends(direction, near, far)
    source = give(server, random_file(src_dir / "big.bin", 200 * 1000 * 1000))
    start = time.monotonic()
    result = copy(server, direction, [source], dst_dir / "copy.bin")
    took = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""  # no terminal: no meter, nothing else to say
    assert sha256(dst_dir / "copy.bin") == sha256(source)
    assert listing(dst_dir) == [b"copy.bin"] + ([b"big.bin"] if src_dir == dst_dir else [])
    print(f"200 MB {direction}: {took:.1f} s, {200 / took:.0f} MB/s")


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_empty_file_and_several_sources_into_a_directory(server: Server, near: Path,
                                                         far: Path,
                                                         direction: Direction) -> None:
    src_dir, dst_dir = ends(direction, near, far)
    empty = give(server, random_file(src_dir / "empty", 0))
    small = give(server, random_file(src_dir / "small", 1000))
    out = dst_dir / "out"
    out.mkdir()
    give(server, out)
    result = copy(server, direction, [empty, small], out)
    assert result.returncode == 0, result.stderr
    assert (out / "empty").read_bytes() == b""
    assert (out / "small").read_bytes() == small.read_bytes()
    assert listing(out) == [b"empty", b"small"]


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_names_with_spaces_newlines_and_non_utf8_bytes(server: Server, near: Path, far: Path,
                                                       direction: Direction) -> None:
    src_dir, dst_dir = ends(direction, near, far)
    names = [b"with space", b"new\nline", b"caf\xe9\xff", b"-dash", b"tab\there"]
    sources = []
    for i, name in enumerate(names):
        path = Path(os.fsdecode(os.fsencode(src_dir) + b"/" + name))
        path.write_bytes(b"content %d\n" % i)
        sources.append(give(server, path))
    out = dst_dir / "out"
    out.mkdir()
    give(server, out)
    result = copy(server, direction, sources, out)
    assert result.returncode == 0, result.stderr
    assert listing(out) == sorted(names)
    for i, name in enumerate(names):
        assert Path(os.fsdecode(os.fsencode(out) + b"/" + name)).read_bytes() == (
            b"content %d\n" % i)


def test_download_of_more_sources_than_one_request_holds(server: Server, near: Path,
                                                         far: Path) -> None:
    """1,100 remote sources (more than a copy channel's open request names): all copied."""
    names = [f"file-{i:04d}" for i in range(1100)]
    for name in names:
        (far / name).write_bytes(name.encode())
    give(server, far)
    result = qcp(server, *(remote(server, far / n) for n in names), near)
    assert result.returncode == 0, result.stderr[-300:]
    assert listing(near) == sorted(n.encode() for n in names)
    assert (near / "file-1099").read_bytes() == b"file-1099"


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_recursive_tree_keeps_links_and_empty_directories(server: Server, near: Path,
                                                          far: Path,
                                                          direction: Direction) -> None:
    src_dir, dst_dir = ends(direction, near, far)
    tree = src_dir / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "empty").mkdir()
    (tree / "empty" / "nested-empty").mkdir()
    (tree / "top.txt").write_bytes(b"top")
    random_file(tree / "sub" / "deeper" / "data", 300_000)
    (tree / "sub" / "link-rel").symlink_to("../top.txt")
    (tree / "dangling").symlink_to("/nonexistent/target")
    (tree / "dirlink").symlink_to("sub")
    give(server, tree)
    result = copy(server, direction, [tree], dst_dir / "copy", "-r")
    assert result.returncode == 0, result.stderr
    copied = dst_dir / "copy"
    assert (copied / "top.txt").read_bytes() == b"top"
    assert sha256(copied / "sub" / "deeper" / "data") == sha256(tree / "sub" / "deeper" / "data")
    assert (copied / "empty" / "nested-empty").is_dir()
    assert listing(copied / "empty") == [b"nested-empty"]
    assert os.readlink(copied / "sub" / "link-rel") == "../top.txt"
    assert os.readlink(copied / "dangling") == "/nonexistent/target"
    assert os.readlink(copied / "dirlink") == "sub"  # kept as a link, not followed
    assert listing(copied) == sorted([b"dangling", b"dirlink", b"empty", b"sub", b"top.txt"])
    # Again, now that the target exists: scp's rule puts the tree inside it.
    result = copy(server, direction, [tree], copied, "-r")
    assert result.returncode == 0, result.stderr
    assert (copied / "tree" / "top.txt").read_bytes() == b"top"
    assert os.readlink(copied / "tree" / "dirlink") == "sub"


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_special_files_are_skipped_with_one_line(server: Server, near: Path, far: Path,
                                                 direction: Direction) -> None:
    src_dir, dst_dir = ends(direction, near, far)
    tree = src_dir / "tree"
    tree.mkdir()
    (tree / "plain").write_bytes(b"x")
    os.mkfifo(tree / "fifo")
    give(server, tree)
    result = copy(server, direction, [tree], dst_dir / "copy", "-r", timeout=60)
    assert result.returncode == 1  # as scp: "not a regular file" is a failure
    assert (dst_dir / "copy" / "plain").read_bytes() == b"x"
    assert not (dst_dir / "copy" / "fifo").exists()
    lines = [line for line in stderr_lines(result) if "fifo" in line]
    assert len(lines) == 1 and lines[0].startswith("qcp: "), result.stderr


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_preserve_keeps_modes_and_times(server: Server, near: Path, far: Path,
                                        direction: Direction) -> None:
    src_dir, dst_dir = ends(direction, near, far)
    source = give(server, random_file(src_dir / "kept", 5000))
    os.chmod(source, 0o640)
    os.utime(source, ns=(1_000_000_000_123_456_789, 1_100_000_000_987_654_321))
    tree = src_dir / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "x").write_bytes(b"x")
    os.chmod(tree / "d" / "x", 0o604)
    os.utime(tree / "d" / "x", (1_200_000_000, 1_300_000_000))
    os.chmod(tree / "d", 0o750)
    give(server, tree)
    result = copy(server, direction, [source], dst_dir / "copied", "-p")
    assert result.returncode == 0, result.stderr
    copied = (dst_dir / "copied").stat()
    assert stat.S_IMODE(copied.st_mode) == 0o640
    assert copied.st_mtime_ns // 1000 == 1_100_000_000_987_654  # microseconds at least
    assert int(copied.st_atime) == 1_000_000_000
    result = copy(server, direction, [tree], dst_dir / "tree-copy", "-r", "-p")
    assert result.returncode == 0, result.stderr
    leaf = (dst_dir / "tree-copy" / "d" / "x").stat()
    assert stat.S_IMODE(leaf.st_mode) == 0o604 and int(leaf.st_mtime) == 1_300_000_000
    assert stat.S_IMODE((dst_dir / "tree-copy" / "d").stat().st_mode) == 0o750


def _on_terminal(server: Server, *args: str | bytes | Path) -> tuple[bytes, int | None]:
    """qcp on a pseudo-terminal of 100 columns: everything it drew, and its status."""
    ptyprocess = pytest.importorskip("ptyprocess")
    argv = [os.fsdecode(a) for a in qcp_command(server, *args)]
    child = ptyprocess.PtyProcess.spawn(argv, cwd=str(ROOT), env=_client_env(server.client_home),
                                        dimensions=(24, 100))
    return _drain(child, timeout=60)


def test_progress_meter_on_a_terminal(server: Server, near: Path, far: Path) -> None:
    source = random_file(near / "meter.bin", 6 * MiB)
    out, status = _on_terminal(server, "-l", "24000", source, remote(server, far / "m"))
    assert status == 0, out
    lines = [line for line in out.split(b"\r") if line.strip()]  # (the pty adds \r to \n)
    assert len(lines) >= 5, out  # redrawn in place, about 1.5 s at 3 MB/s
    assert any(b"ETA" in line and b"meter.bin" in line for line in lines), out
    assert b"meter.bin" in lines[-1] and b"100%" in lines[-1] and b"6.0MB" in lines[-1], out
    assert max(len(line.rstrip(b"\n").replace(b"\x1b[K", b"")) for line in lines) < 100
    tree = near / "tree"
    tree.mkdir()
    for name in ("a", "b"):
        random_file(tree / name, 1000)
    out, status = _on_terminal(server, "-r", tree, remote(server, far / "t"))
    assert status == 0, out
    assert b"total: 2 files" in out, out
    out, status = _on_terminal(server, "-q", source, remote(server, far / "q"))
    assert (status, out) == (0, b"")


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_missing_source_fails_alone(server: Server, near: Path, far: Path,
                                    direction: Direction) -> None:
    src_dir, dst_dir = ends(direction, near, far)
    good = give(server, random_file(src_dir / "good", 100))
    missing = src_dir / "missing"
    out = dst_dir / "out"
    out.mkdir()
    give(server, out)
    result = copy(server, direction, [missing, good], out)
    assert result.returncode == 1
    lines = stderr_lines(result)
    assert lines == [f"qcp: {missing}: No such file or directory"], lines
    assert listing(out) == [b"good"]  # the rest still copied


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_destination_file_where_a_directory_is_needed(server: Server, near: Path, far: Path,
                                                      direction: Direction) -> None:
    src_dir, dst_dir = ends(direction, near, far)
    a = give(server, random_file(src_dir / "a", 10))
    b = give(server, random_file(src_dir / "b", 10))
    target = give(server, random_file(dst_dir / "plain-file", 7))
    before = target.read_bytes()
    result = copy(server, direction, [a, b], target)
    assert result.returncode == 1
    assert "not a directory" in result.stderr.decode().lower(), result.stderr
    assert all(line.startswith("qcp: ") for line in stderr_lines(result))
    assert target.read_bytes() == before
    assert sorted(listing(dst_dir)) == sorted(
        [b"plain-file"] + ([b"a", b"b"] if src_dir == dst_dir else []))
    # A path below a regular file: "not a directory" too, and nothing created.
    result = copy(server, direction, [a], target / "below")
    assert result.returncode == 1
    assert "not a directory" in result.stderr.decode().lower(), result.stderr


def test_unwritable_remote_destination(server: Server, near: Path, far: Path) -> None:
    locked = far / "locked"
    locked.mkdir()
    give(server, locked)
    os.chmod(locked, 0o555)  # the account's own directory, but read-only to it
    source = random_file(near / "f", 1000)
    result = copy(server, "up", [source], locked / "f")
    assert result.returncode == 1
    assert stderr_lines(result) == [f"qcp: {locked / 'f'}: Permission denied"], result.stderr
    assert listing(locked) == []


@pytest.mark.skipif(not IS_ROOT, reason="needs root: the daemon must run as root and log in "
                                        "a throwaway account")
def test_daemon_never_writes_as_root(server: Server, near: Path, tmp_path: Path) -> None:
    """The daemon runs as root; the account may not write to a root-owned directory, and
    qcp's upload there fails with "Permission denied" (nothing written as root)."""
    forbidden = server.base / f"root-only-{uuid.uuid4().hex[:6]}"
    forbidden.mkdir(mode=0o755)
    try:
        source = random_file(near / "f", 1000)
        result = copy(server, "up", [source], forbidden / "f")
        assert result.returncode == 1
        assert stderr_lines(result) == [f"qcp: {forbidden / 'f'}: Permission denied"]
        assert listing(forbidden) == []
        # And a file only root may read cannot be fetched either.
        secret = forbidden / "secret"
        secret.write_bytes(b"s")
        secret.chmod(0o600)
        result = copy(server, "down", [secret], near / "got")
        assert result.returncode == 1
        assert stderr_lines(result) == [f"qcp: {secret}: Permission denied"]
        assert not (near / "got").exists()
    finally:
        shutil.rmtree(forbidden, ignore_errors=True)


def test_relative_remote_paths_are_in_the_home(server: Server, near: Path) -> None:
    home = Path(pwd.getpwnam(server.user).pw_dir)
    name = f"qcp-home-{uuid.uuid4().hex[:8]}"
    source = random_file(near / "f", 123)
    try:
        result = qcp(server, source, remote(server, name))
        assert result.returncode == 0, result.stderr
        assert (home / name).read_bytes() == source.read_bytes()
        result = qcp(server, remote(server, name), near / "back")
        assert result.returncode == 0, result.stderr
        assert (near / "back").read_bytes() == source.read_bytes()
        result = qcp(server, source, remote(server, ""))  # host: -> the home, same name
        assert result.returncode == 0, result.stderr
        assert (home / "f").read_bytes() == source.read_bytes()
        result = qcp(server, remote(server, f"~/{name}"), near / "tilde")
        assert result.returncode == 0, result.stderr
        assert (near / "tilde").read_bytes() == source.read_bytes()
    finally:
        (home / name).unlink(missing_ok=True)
        (home / "f").unlink(missing_ok=True)


def test_limit_paces_the_copy(server: Server, near: Path, far: Path) -> None:
    """-l is Kbit/s, as scp's: -l 8000 is 1 MB/s (1,024,000 bytes/s), so 3 MiB take ~3 s."""
    source = random_file(near / "f", 3 * MiB)
    start = time.monotonic()
    result = qcp(server, "-l", "8000", source, remote(server, far / "f"))
    took = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert took >= 2.5, took
    assert sha256(far / "f") == sha256(source)


def test_connection_and_login_failures_are_one_line_exit_1(server: Server, near: Path,
                                                           far: Path, tmp_path: Path) -> None:
    source = random_file(near / "f", 10)
    unknown = tmp_path / "known_hosts"
    result = qcp(server, "-o", f"UserKnownHostsFile={unknown}", source,
                 remote(server, far / "f"))
    assert result.returncode == 1
    assert re.fullmatch(rb"qcp: no \S+ host key is known for \S+ and StrictHostKeyChecking "
                        rb"is yes\n", result.stderr), result.stderr
    from common.accounts.keys import HostKey

    stranger = tmp_path / "stranger"
    HostKey.generate("mldsa65", now=time.time()).save(stranger)
    result = subprocess.run(
        [PYTHON, "-m", "qcp", "-F", "none", "-P", server.port, "-i", str(stranger),
         "-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "StrictHostKeyChecking=yes",
         source, remote(server, far / "f")],
        capture_output=True, timeout=60, cwd=ROOT, env=_client_env(server.client_home),
        stdin=subprocess.DEVNULL, start_new_session=True)
    assert result.returncode == 1
    assert result.stderr.startswith(b"qcp: permission denied")
    assert result.stderr.count(b"\n") == 1, result.stderr
    assert listing(far) == []


# --------------------------------------------------------------------------- interruptions


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@contextlib.contextmanager
def own_daemon(server: Server, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A second daemon like the fixture's (same account, key, host key), whose connection
    processes a test may kill: (port, the listener's pid)."""
    options = ["-o", f"PasswdFile={server.base / 'passwd'}"]
    if not IS_ROOT:
        options += ["-o", f"AuthorizedKeysFile={server.base / 'authorized_keys'}"]
    process, port = _start_daemon(tmp_path, server.host_key, *options)
    from common.accounts.keys import HostKey
    from common.accounts.known_hosts import KnownHosts

    KnownHosts.load(server.known_hosts).add("127.0.0.1", int(port),
                                            HostKey.load(server.host_key).public)
    try:
        yield port, process.pid
    finally:
        stop_process(process)


def writing_into(directory: Path) -> bool:
    """Whether some process holds a file open in ``directory``: the copy's file being
    written, named or not (an O_TMPFILE file shows as ``DIR/#INODE (deleted)``). How a test
    knows the copy is under way before it interrupts it."""
    prefix = os.fsencode(directory) + b"/"
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(os.fsencode(f"/proc/{pid}/fd/{fd}")).startswith(prefix):
                    return True
            except OSError:
                continue
    return False


def _strangers(directory: Path, expected: set[bytes]) -> list[bytes]:
    return [n for n in listing(directory) if n not in expected]


@pytest.mark.parametrize(("direction", "signame"), [
    ("up", "KILL"), ("down", "KILL"), ("up", "TERM")])
def test_server_killed_mid_copy_leaves_no_partial_file(server: Server, near: Path, far: Path,
                                                       tmp_path: Path, direction: Direction,
                                                       signame: str) -> None:
    """Every process of the connection on the server's side is killed mid-copy (the
    listener survives): qcp says so in one line, exits 1, and no temporary file is left
    in the target directory -- also after SIGKILL, where the server's side cannot clean
    up after itself (the file must not have had a name)."""
    src_dir, dst_dir = ends(direction, near, far)
    source = give(server, random_file(src_dir / "src.bin", 64 * MiB))
    known = set(listing(dst_dir))
    daemon_dir = tmp_path / "daemon"
    daemon_dir.mkdir()
    with own_daemon(server, daemon_dir) as (port, listener):
        target = dst_dir / "dst.bin"
        args = ((source, remote(server, target)) if direction == "up"
                else (remote(server, source), target))
        child = spawn(server, "-l", "16000", *args, port=port)  # 2 MB/s: ~30 s in all
        try:
            wait_for(lambda: writing_into(dst_dir), what="a file being written")
            connection = _descendants(listener)
            assert connection, "no connection process under the listener"
            for pid in connection:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.Signals[f"SIG{signame}"])
            _, err = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert child.returncode == 1
    assert err.count(b"\n") == 1 and err.startswith(b"qcp: "), err
    wait_for(lambda: not _strangers(dst_dir, known), timeout=10,
             what=f"no partial file in {dst_dir}: {_strangers(dst_dir, known)}")


@pytest.mark.parametrize(("direction", "signame"), [
    ("up", "INT"), ("down", "INT"), ("up", "TERM"), ("down", "HUP")])
def test_signal_on_qcp_leaves_no_partial_file(server: Server, near: Path, far: Path,
                                              direction: Direction, signame: str) -> None:
    """Ctrl-C (and SIGTERM, SIGHUP) mid-copy: one line, status 1, no file left behind on
    either side, the old target untouched."""
    src_dir, dst_dir = ends(direction, near, far)
    source = give(server, random_file(src_dir / "src.bin", 64 * MiB))
    target = give(server, random_file(dst_dir / "dst.bin", 1000))  # replaced only when whole
    before = target.read_bytes()
    known = set(listing(dst_dir))
    args = ((source, remote(server, target)) if direction == "up"
            else (remote(server, source), target))
    child = spawn(server, "-l", "16000", *args)
    try:
        wait_for(lambda: writing_into(dst_dir), what="a file being written")
        child.send_signal(signal.Signals[f"SIG{signame}"])
        _, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 1
    assert err == f"qcp: killed by signal {signame}\n".encode()
    wait_for(lambda: not _strangers(dst_dir, known), timeout=10,
             what=f"no partial file in {dst_dir}: {_strangers(dst_dir, known)}")
    assert target.read_bytes() == before


def test_qcp_killed_mid_upload_the_server_removes_its_file(server: Server, near: Path,
                                                           far: Path) -> None:
    """A lost connection (qcp SIGKILLed: nothing said goodbye) is the server's side's to
    clean up: its temporary file goes, the old target stays."""
    source = random_file(near / "src.bin", 64 * MiB)
    target = give(server, random_file(far / "dst.bin", 1000))
    before = target.read_bytes()
    child = spawn(server, "-l", "16000", source, remote(server, target))
    try:
        wait_for(lambda: writing_into(far), what="a file being written")
        child.kill()
        child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    wait_for(lambda: listing(far) == [b"dst.bin"], timeout=15,
             what=f"no partial file in {far}: {listing(far)}")
    assert target.read_bytes() == before


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_resume_sends_only_the_rest(server: Server, near: Path, far: Path,
                                    direction: Direction) -> None:
    size = 48 * MiB
    src_dir, dst_dir = ends(direction, near, far)
    source = give(server, random_file(src_dir / "src.bin", size))
    known = set(listing(dst_dir))
    target = dst_dir / "dst.bin"
    args = ((source, remote(server, target)) if direction == "up"
            else (remote(server, source), target))

    def partial_size() -> int:
        names = _strangers(dst_dir, known)
        return max((os.lstat(os.fsencode(dst_dir) + b"/" + n).st_size for n in names),
                   default=0)

    child = spawn(server, "--resume", "-l", "80000", *args)  # 10 MB/s
    try:
        wait_for(lambda: partial_size() >= 12 * MiB, what="12 MiB in the partial file")
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 1 and err == b"qcp: killed by signal INT\n", err
    time.sleep(0.5)  # the server's side ends with the connection
    kept = _strangers(dst_dir, known)
    assert len(kept) == 1 and kept[0] != b"dst.bin", kept  # the partial, under its own name
    have = partial_size()
    assert 12 * MiB <= have < size
    result = qcp(server, "--resume", "-v", *args)
    assert result.returncode == 0, result.stderr
    sent = [int(m) for m in re.findall(rb"sent (\d+) bytes", result.stderr)]
    assert sent, result.stderr
    assert sent[-1] <= size - have + 4 * MiB, (sent, have)  # about the rest, not the whole
    assert sha256(target) == sha256(source)
    assert _strangers(dst_dir, known) == [b"dst.bin"]


def test_resume_of_a_changed_source_starts_over(server: Server, near: Path, far: Path) -> None:
    size = 32 * MiB
    source = random_file(near / "src.bin", size)
    target = far / "dst.bin"
    child = spawn(server, "--resume", "-l", "80000", source, remote(server, target))
    try:
        wait_for(lambda: any(n != b"dst.bin" and os.lstat(
            os.fsencode(far) + b"/" + n).st_size >= 4 * MiB for n in listing(far)),
            what="a partial file")
        child.send_signal(signal.SIGINT)
        child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    random_file(source, size)  # new content, same size
    result = qcp(server, "--resume", "-v", source, remote(server, target))
    assert result.returncode == 0, result.stderr
    assert sha256(target) == sha256(source)
    assert listing(far) == [b"dst.bin"]
