"""qcp over a shared connection (ControlMaster): no key exchange, no login, the same copies.

End to end on loopback: a real qshd with a throwaway account (tests/daemon.py), a real qsh
master (ControlPersist), real ``python -m qcp`` processes. qshd's log counts the logins, so
a copy that logged in by itself instead of riding on the master is seen.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Env, account_daemon
from importtime import imported

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with account_daemon() as daemon:
        yield daemon


@pytest.fixture
def path(env: Env) -> Iterator[Path]:
    """A fresh ControlPath; a master still there at the end is told to exit."""
    control = env.client_home.parent / "cm"
    control.mkdir(mode=0o700, exist_ok=True)
    where = control / uuid.uuid4().hex[:12]
    yield where
    if where.exists():
        qsh(env, "-S", str(where), "-O", "exit", "qtest")


def qsh(env: Env, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "qsh", *args], capture_output=True, text=True,
                          timeout=30, cwd=ROOT, env=env.environ(**extra),
                          stdin=subprocess.DEVNULL)


def master(env: Env, path: Path, *options: str) -> None:
    """A ControlPersist master for qtest at ``path`` (its own command: one login)."""
    started = qsh(env, "-o", "ControlMaster=auto", "-o", "ControlPersist=60", "-o",
                  f"ControlPath={path}", *options, "qtest", "true")
    assert started.returncode == 0, started.stderr
    assert path.exists()


def qcp_argv(path: Path, *args: str | Path) -> list[str]:
    return [PYTHON, "-m", "qcp", "-q", "-o", f"ControlPath={path}", *map(str, args)]


def qcp(env: Env, path: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(qcp_argv(path, *args), capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=env.environ(), stdin=subprocess.DEVNULL)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): digest(p) if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def as_user(env: Env, *argv: str) -> None:
    env.as_user(*argv)


@pytest.fixture
def local(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    return tmp_path


def test_upload_and_download_of_a_file_and_a_tree_ride_on_the_master(
        env: Env, path: Path, local: Path) -> None:
    master(env, path)
    before = env.logins()
    source = local / "data.bin"
    source.write_bytes(os.urandom(700_000))
    top = local / "tree"
    (top / "sub" / "deeper").mkdir(parents=True)
    for i, where in enumerate([top, top / "sub", top / "sub" / "deeper"]):
        (where / f"f{i}").write_bytes(os.urandom(1000 * (i + 1) ** 3))
    (top / "empty").write_bytes(b"")
    name = f"up-{uuid.uuid4().hex[:6]}"

    up = qcp(env, path, "-v", source, f"qtest:{name}.bin")
    assert up.returncode == 0, up.stderr
    assert "debug1: using the shared connection of master" in up.stderr
    up_tree = qcp(env, path, "-r", "-p", top, f"qtest:{name}")
    assert up_tree.returncode == 0, up_tree.stderr
    assert digest(env.home / f"{name}.bin") == digest(source)
    assert tree(env.home / name) == tree(top)

    back = local / "back"
    back.mkdir()
    down = qcp(env, path, f"qtest:{name}.bin", f"qtest:{name}", "-r", back)
    assert down.returncode == 0, down.stderr
    assert digest(back / f"{name}.bin") == digest(source)
    assert tree(back / name) == tree(top)
    assert env.logins() == before  # four copies, not one login among them


def test_server_side_failures_read_as_usual_over_the_master(
        env: Env, path: Path, local: Path) -> None:
    master(env, path)
    before = env.logins()
    missing = f"nothing-here-{uuid.uuid4().hex[:6]}"
    result = qcp(env, path, f"qtest:{missing}", local)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"qcp: {missing}: No such file or directory"]

    locked = f"locked-{uuid.uuid4().hex[:6]}"
    as_user(env, "mkdir", "-m", "0500", locked)
    source = local / "one"
    source.write_bytes(b"x" * 5000)
    denied = qcp(env, path, source, f"qtest:{locked}/one")
    assert denied.returncode == 1
    assert denied.stderr.splitlines() == [f"qcp: {locked}/one: Permission denied"]
    assert env.logins() == before


@pytest.mark.parametrize("upload", [False, True], ids=["download", "upload"])
def test_a_killed_master_mid_copy_ends_qcp_and_keeps_the_good_file(
        env: Env, path: Path, local: Path, upload: bool) -> None:
    master(env, path)
    name = f"big-{uuid.uuid4().hex[:6]}"
    good = local / "target"
    if upload:
        source, target = local / "big", f"qtest:{name}"
        source.write_bytes(os.urandom(8 << 20))
        as_user(env, "sh", "-c", f"echo the good copy > {name}")
        kept = env.home / name
    else:
        as_user(env, "dd", "if=/dev/urandom", f"of={name}", "bs=1M", "count=8",
                "status=none")
        source, target = f"qtest:{name}", good  # type: ignore[assignment]
        good.write_bytes(b"the good copy\n")
        kept = good
    remote_before = sorted(os.listdir(env.home))
    local_before = sorted(os.listdir(local))
    pid = int(qsh(env, "-S", str(path), "-O", "check", "qtest").stderr.split("pid=")[1]
              .split(")")[0])
    # 2 MB/s: the copy is under way for seconds when the master goes.
    copy = subprocess.Popen(qcp_argv(path, "-l", "16000", source, target),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env.environ(), stdin=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        assert copy.poll() is None, copy.communicate()
        os.kill(pid, signal.SIGKILL)
        _, err = copy.communicate(timeout=20)
    finally:
        if copy.poll() is None:
            copy.kill()
            copy.wait()
    assert copy.returncode == 1, err
    assert err.splitlines() == ["qcp: connection lost: the control master went away"], err
    assert kept.read_bytes() == b"the good copy\n"
    assert sorted(os.listdir(local)) == local_before  # no temporary left here
    deadline = time.monotonic() + 10  # the server's side ends with the connection
    while sorted(os.listdir(env.home)) != remote_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(os.listdir(env.home)) == remote_before


def test_a_master_that_cannot_carry_copies_is_passed_by(
        env: Env, path: Path, local: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    # A master that refuses every client (ControlMaster ask: qsh cannot ask).
    started = qsh(env, "-o", "ControlMaster=ask", "-o", "ControlPersist=60", "-S", str(path),
                  "qtest", "true")
    assert started.returncode == 0, started.stderr
    source = local / "f"
    source.write_bytes(os.urandom(10_000))
    name = f"fallback-{uuid.uuid4().hex[:6]}"
    before = env.logins()
    result = qcp(env, path, "-v", source, f"qtest:{name}")
    assert result.returncode == 0, result.stderr
    assert "the master refused: ControlMaster ask" in result.stderr
    assert digest(env.home / name) == digest(source)
    assert env.logins() == before + 1  # its own login
    qsh(env, "-S", str(path), "-O", "exit", "qtest")

    # A master of a qsh from before copies were shared: this checkout, without NEW_COPY.
    old = tmp_path_factory.mktemp("old-qsh")
    for package in ("common", "qsh"):
        shutil.copytree(ROOT / package, old / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    wire = old / "common" / "client" / "mux_wire.py"
    text = wire.read_text()
    assert "TYPES = frozenset(range(1, 15))" in text
    wire.write_text(text.replace("TYPES = frozenset(range(1, 15))",
                                 "TYPES = frozenset(range(1, 13))"))
    started = subprocess.run(
        [PYTHON, "-m", "qsh", "-o", "ControlMaster=auto", "-o", "ControlPersist=60", "-S",
         str(path), "qtest", "true"], capture_output=True, text=True, timeout=30, cwd=old,
        env=env.environ(PYTHONPATH=str(old)), stdin=subprocess.DEVNULL)
    assert started.returncode == 0, started.stderr
    before = env.logins()
    again = qcp(env, path, "-v", source, f"qtest:{name}.2")
    assert again.returncode == 0, again.stderr
    assert "cannot carry copies" in again.stderr
    assert digest(env.home / f"{name}.2") == digest(source)
    assert env.logins() == before + 1


def test_an_interrupted_download_resumes_over_the_master(env: Env, path: Path,
                                                         local: Path) -> None:
    master(env, path)
    before = env.logins()
    name = f"resume-{uuid.uuid4().hex[:6]}"
    size = 6 << 20
    as_user(env, "dd", "if=/dev/urandom", f"of={name}", "bs=1M", "count=6", "status=none")
    partial = local / f".{name}.qcp-partial"
    copy = subprocess.Popen(qcp_argv(path, "--resume", "-l", "16000", f"qtest:{name}", local),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env.environ(), stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while (not partial.exists() or partial.stat().st_size < 1 << 20) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        copy.send_signal(signal.SIGINT)
        _, err = copy.communicate(timeout=20)
    finally:
        if copy.poll() is None:
            copy.kill()
            copy.wait()
    assert copy.returncode == 1, err
    had = partial.stat().st_size
    assert 0 < had < size
    rest = qcp(env, path, "-v", "--resume", f"qtest:{name}", local)
    assert rest.returncode == 0, rest.stderr
    sent = int(rest.stderr.split("sent ")[-1].split(" bytes")[0])
    assert sent == size - had, rest.stderr
    assert digest(local / name) == digest(env.home / name)
    assert not partial.exists()
    assert env.logins() == before


def test_qcp_with_control_persist_becomes_the_master(env: Env, path: Path,
                                                     local: Path) -> None:
    """ControlMaster auto + ControlPersist: the first qcp makes the master (one login, as
    scp's ssh would), later qcp and qsh runs ride on it."""
    source = local / "f"
    source.write_bytes(os.urandom(50_000))
    name = f"made-{uuid.uuid4().hex[:6]}"
    sharing = ["-o", "ControlMaster=auto", "-o", "ControlPersist=30"]
    before = env.logins()
    first = qcp(env, path, *sharing, source, f"qtest:{name}.1")
    assert first.returncode == 0, first.stderr
    assert path.exists(), "no master was made"
    second = qcp(env, path, *sharing, f"qtest:{name}.1", local / "back")
    assert second.returncode == 0, second.stderr
    assert digest(local / "back") == digest(source) == digest(env.home / f"{name}.1")
    command = qsh(env, "-S", str(path), "qtest", "echo over the master")
    assert command.stdout == "over the master\n", command.stderr
    assert env.logins() == before + 1

    made = path.with_name(path.name + "-yes")
    yes = qcp(env, made, "-o", "ControlMaster=yes", "-o", "ControlPersist=30", source,
              f"qtest:{name}.3")
    again = qcp(env, made, "-o", "ControlMaster=yes", "-o", "ControlPersist=30", source,
                f"qtest:{name}.4")
    assert yes.returncode == again.returncode == 0, yes.stderr + again.stderr
    assert made.exists()
    qsh(env, "-S", str(made), "-O", "exit", "qtest")
    assert env.logins() == before + 2  # yes: one master, and the copies ride on it

    plain = qcp(env, path.with_name(path.name + "-no"), "-o", "ControlMaster=no", source,
                f"qtest:{name}.2")  # no master there, none to make: a login of its own
    assert plain.returncode == 0, plain.stderr
    assert not path.with_name(path.name + "-no").exists()
    assert env.logins() == before + 3


def test_the_master_refuses_a_copy_request_without_a_socket(env: Env, path: Path) -> None:
    """NEW_COPY must come with one socket (none, or a file in its place, is an ERROR for
    that client alone) and an open the connection can make; the master goes on serving."""
    import array
    import socket
    import struct

    from common.client import mux_wire as wire

    master(env, path)
    small = wire.frame(wire.NEW_COPY, b"\x02" + bytes(60))

    def answer(fds: list[int], request: bytes = small) -> tuple[int, bytes]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.recv(13)  # the hello
            sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                      array.array("i", fds))] if fds else [])
            data = b""
            while chunk := sock.recv(1000):
                data += chunk
            assert len(data) >= 5, data
            length, kind = struct.unpack(">IB", data[:5])
            return kind, data[5:4 + length]

    kind, body = answer([])
    assert (kind, wire.decode_string(body)) == (wire.ERROR,
                                                "the copy request came without its socket")
    with open(os.devnull) as null:
        kind, body = answer([null.fileno()])
    assert kind == wire.ERROR
    ours, theirs = socket.socketpair()
    with ours, theirs:  # an open the connection cannot make: over the mux's 64 KiB
        kind, body = answer([theirs.fileno()], wire.frame(wire.NEW_COPY, bytes(70_000)))
    assert kind == wire.ERROR and "exceeds" in wire.decode_string(body)
    alive = qsh(env, "-S", str(path), "qtest", "echo still here")
    assert alive.stdout == "still here\n", alive.stderr


def test_the_progress_meter_over_the_master(env: Env, path: Path, local: Path) -> None:
    ptyprocess = pytest.importorskip("ptyprocess")
    from ptyio import read_to_eof

    master(env, path)
    before = env.logins()
    name = f"meter-{uuid.uuid4().hex[:6]}"
    as_user(env, "dd", "if=/dev/urandom", f"of={name}", "bs=1M", "count=4", "status=none")
    argv = [PYTHON, "-m", "qcp", "-o", f"ControlPath={path}", "-l", "24000",
            f"qtest:{name}", str(local)]
    child = ptyprocess.PtyProcess.spawn(argv, cwd=str(ROOT), env=env.environ(),
                                        dimensions=(24, 100))
    out = read_to_eof(child, timeout=30)
    assert child.exitstatus == 0, out
    lines = [line for line in out.split(b"\r") if line.strip()]
    assert len(lines) >= 3, out  # redrawn in place while it runs (about 1.3 s)
    assert name.encode() in lines[-1] and b"100%" in lines[-1], out
    assert digest(local / name) == digest(env.home / name)
    assert env.logins() == before


#: What a copy over a master never uses (issue 18): the key exchange, the record layer and
#: the connection core, the key and login code, the algorithm registry and its
#: implementations (only the GMAC digest, common.crypto.gmac, is needed), the adapter's
#: connection and client, click (qcp/cli.py parse_argv reads the command line), dataclasses
#: (~1 ms to build each) and ssl (asyncio's, for TLS qcp never speaks).
NOT_LOADED_OVER_A_MASTER = (
    "click", "common.protocol.handshake", "common.protocol.transport",
    "common.protocol.record", "common.protocol.connection", "common.protocol.auth",
    "common.protocol.negotiation", "common.protocol.schedule", "common.crypto.registry",
    "common.crypto.suites", "common.crypto.algorithms", "common.crypto.pycryptodome",
    "common.crypto.oqs", "common.accounts.keys", "common.aio.connection",
    "common.aio.client", "common.aio.server", "common.client.connect", "Crypto", "oqs",
    "common.protocol", "dataclasses", "_ssl")


@pytest.mark.parametrize("upload", [True, False], ids=["upload", "download"])
def test_a_copy_over_the_master_loads_no_protocol_stack(env: Env, path: Path, local: Path,
                                                        upload: bool) -> None:
    """A real qcp over a real master: ``-X importtime`` lists every module it loaded, and
    none of the stack a login needs is among them (they cost qcp ~110 ms of CPU at every
    run, for nothing a relayed copy does)."""
    master(env, path)
    before = env.logins()
    name = f"light-{uuid.uuid4().hex[:6]}"
    if upload:
        source = local / name
        source.write_bytes(os.urandom(3000))
        args: tuple[str | Path, ...] = (source, f"qtest:{name}")
    else:
        as_user(env, "dd", "if=/dev/urandom", f"of={name}", "bs=3000", "count=1",
                "status=none")
        source = env.home / name
        args = (f"qtest:{name}", local)
    result = subprocess.run([PYTHON, "-X", "importtime", *qcp_argv(path, *args)[1:]],
                            capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env=env.environ(), stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    copied = env.home / name if upload else local / name
    assert digest(copied) == digest(source)
    assert env.logins() == before  # it really rode on the master
    loaded = imported(result.stderr)
    assert "common.transfer" in loaded  # the probe sees the engine's own imports
    heavy = sorted(m for m in loaded
                   if m.split(".")[0] in NOT_LOADED_OVER_A_MASTER
                   or m.startswith(NOT_LOADED_OVER_A_MASTER))
    assert not heavy, " ".join(heavy)


@pytest.mark.parametrize("argv", [
    ["f", "h:"], ["-r", "-p", "-q", "d", "h:x"], ["-rpq", "-vvv", "d", "h:x"], ["h:f", "h:g", "."],
    ["-P", "2200", "-i", "k1", "-ik2", "-l", "800", "f", "h:"], ["-P2200", "-l1", "f", "h:"],
    ["-F", "none", "-o", "A=1", "-oB=2", "-J", "j1", "-J", "j2", "f", "h:"],
    ["h:a", "-r", "local", "--resume", "-v"], ["--", "-r", "h:"], ["-", "h:"],
    ["-o", "-q", "f", "h:"], ["-P", " 12 ", "f", "h:"], ["", "h:"], ["-rv", "-P", "+1_0", "f"],
    # Left to click (None), each an error or help there:
    ["-h"], ["--help"], ["-V"], ["--version"], ["--res", "f", "h:"], ["-x", "f", "h:"],
    ["-P", "port", "f", "h:"], ["-l", "0", "f", "h:"], ["-l", str(100 * 1024 * 1024 + 1)],
    ["f", "h:", "-o"], [], ["-r"], ["-5", "f", "h:"], ["--resume=1", "f", "h:"],
    ["only-one"], ["a", "b"], ["h:a", "g:b", "."], ["h:a", "local", "h:b"],  # no copy (plan)
])
def test_qcp_reads_its_command_line_as_the_click_command_does(argv: list[str]) -> None:
    """qcp/cli.py's parse_argv (no click) gives the run the same arguments as the click
    command would, or leaves the command line to click (help, version, every error)."""
    import click

    from qcp.cli import UsageProblem, click_command, parse_argv, plan

    mine = parse_argv(list(argv))
    try:
        with click_command().make_context("qcp", list(argv)) as ctx:
            theirs: dict[str, object] | None = dict(ctx.params)
        assert theirs is not None
        plan(theirs["paths"])  # type: ignore[arg-type]
    except (click.exceptions.Exit, click.ClickException, UsageProblem):  # help; an error
        theirs = None
    assert mine == theirs
