"""qshd.privsep: the pre-auth sandbox and the post-auth drop, applied to real processes.

Every test forks (``os.fork`` from the test process) and applies the primitive in the
child; the child then tries what the primitive must forbid and reports the outcome as JSON
over a pipe, while the parent reads the child's ``/proc/<pid>/status`` from outside, where
the child cannot lie about it. The accounts are throwaway system users made with useradd
(we are root) and removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import json
import os
import pwd
import re
import resource
import secrets
import select
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import handshake, make_pair

from common import aio
from common.accounts.keys import HostKey
from common.protocol.auth import AuthRequested
from common.protocol.connection import Connection
from common.protocol.handshake import ClientHandshake, ServerHandshake
from common.protocol.negotiation import Offer
from qshd import privsep
from qshd.privsep import (
    DEFAULT_PREAUTH_DATA_BUDGET,
    DEFAULT_PREAUTH_NOFILE,
    PreauthLimits,
    PrivsepError,
    PrivsepUser,
    ProcStatus,
    become_user,
    ensure_privsep_user,
    proc_status,
    resolve_privsep_user,
    sandbox_preauth,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0,
                                reason="needs root on Linux")

ROOT = Path(__file__).resolve().parent.parent
WAIT = 20.0


def _userdel(name: str) -> None:
    subprocess.run(["userdel", name], capture_output=True, check=False, timeout=60)
    with contextlib.suppress(KeyError):
        grp.getgrnam(name)
        subprocess.run(["groupdel", name], capture_output=True, check=False, timeout=60)


@pytest.fixture(scope="module")
def privsep_user() -> Iterator[PrivsepUser]:
    name = f"qsht{secrets.token_hex(3)}"
    try:
        yield ensure_privsep_user(name)
    finally:
        _userdel(name)


@pytest.fixture()
def login_user() -> Iterator[tuple[pwd.struct_passwd, int]]:
    """A throwaway login account with one supplementary group."""
    name = f"qshu{secrets.token_hex(3)}"
    group = f"qshg{secrets.token_hex(3)}"
    subprocess.run(["groupadd", group], check=True, capture_output=True, timeout=60)
    try:
        subprocess.run(["useradd", "--no-create-home", "--user-group", "-G", group, name],
                       check=True, capture_output=True, timeout=60)
        try:
            yield pwd.getpwnam(name), grp.getgrnam(group).gr_gid
        finally:
            _userdel(name)
    finally:
        subprocess.run(["groupdel", group], capture_output=True, check=False, timeout=60)


def _close_fds_except(keep: set[int]) -> None:
    """What the listener's child does first: nothing of the parent's descriptors leaks into
    the pre-auth process (here: pytest's capture files), so new ones get low numbers."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _read_line(fd: int, deadline: float) -> bytes:
    chunks = b""
    while not chunks.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError("child did not answer in time")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError(f"child ended without an answer: {chunks!r}")
        chunks += chunk
    return chunks


@dataclass
class Forked:
    """What :func:`run_forked` saw: the child's status after ``setup`` and at the end (still
    alive, after ``checks``), its descriptors then, and the results ``checks`` reported."""

    status: ProcStatus
    end_status: ProcStatus
    end_fds: list[int]
    out: dict[str, Any]


def run_forked(setup: Callable[[], Any], checks: Callable[[], dict[str, Any]], *,
               keep: set[int] | None = None,
               during: Callable[[], None] | None = None) -> Forked:
    """Fork; the child runs ``setup`` (the primitive under test) and waits; the parent reads
    the child's /proc status and lets it go on; the child runs ``checks``, sends their
    results back, and waits again so the parent can read its final state before it exits.

    With ``during`` (e.g. a client the child serves), the child does not wait after
    ``setup``: the parent runs ``during`` right after the fork, while the child proceeds.
    (Not from a thread started before the fork: the parent stays single-threaded when it
    forks, as the listener will.)"""
    to_parent_r, to_parent_w = os.pipe()
    to_child_r, to_child_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(to_parent_r)
            os.close(to_child_w)
            _close_fds_except({to_parent_w, to_child_r, *(keep or ())})
            out: dict[str, Any] = {}
            try:
                out["report"] = repr(setup())
            except BaseException as exc:
                out["setup_error"] = f"{type(exc).__name__}: {exc}"
            os.write(to_parent_w, b"R")
            if during is None:
                os.read(to_child_r, 1)
            if "setup_error" not in out:
                out.update(checks())
            os.write(to_parent_w, json.dumps(out).encode() + b"\n")
            os.read(to_child_r, 1)
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(to_parent_w)
    os.close(to_child_r)
    try:
        deadline = time.monotonic() + WAIT
        if during is not None:
            during()
        ready, _, _ = select.select([to_parent_r], [], [], WAIT)
        assert ready and os.read(to_parent_r, 1) == b"R", "child did not get ready"
        status = proc_status(pid)
        if during is None:
            os.write(to_child_w, b"g")
        out = json.loads(_read_line(to_parent_r, deadline))
        end_status = proc_status(pid)
        end_fds = sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd"))
        os.write(to_child_w, b"x")
    finally:
        os.close(to_parent_r)
        os.close(to_child_w)
        _, wstatus = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wstatus) == 0
    return Forked(status, end_status, end_fds, out)


def _outcome(action: Callable[[], object]) -> str:
    """'ok' or the exception's name and errno (for an OSError)."""
    try:
        action()
    except OSError as exc:
        return f"{type(exc).__name__}:{errno.errorcode.get(exc.errno or 0, exc.errno)}"
    except Exception as exc:
        return type(exc).__name__
    return "ok"


def _try_fork() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def _try_thread() -> None:
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()


def _open_many() -> list[Any]:
    """Open sockets until refused: [the highest descriptor number obtained, the refusal]."""
    highest = -1
    opened = []
    refusal = "none"
    try:
        for _ in range(4096):
            try:
                s = socket.socket()
            except OSError as exc:
                refusal = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                break
            opened.append(s)
            highest = max(highest, s.fileno())
    finally:
        for s in opened:
            s.close()
    return [highest, refusal]


def _sandbox_checks(secret: str, writable_fd: int) -> Callable[[], dict[str, Any]]:
    def checks() -> dict[str, Any]:
        return {
            "open_secret": _outcome(lambda: open(secret, "rb").close()),
            "listdir_root": os.listdir("/"),
            "fork": _outcome(_try_fork),
            "thread": _outcome(_try_thread),
            "setuid0": _outcome(lambda: os.setuid(0)),
            "seteuid0": _outcome(lambda: os.seteuid(0)),
            "create_file": _outcome(lambda: open("/x", "w").close()),
            "write_inherited": _outcome(lambda: os.write(writable_fd, b"data")),
            "open_many": _open_many(),
            "small_alloc": _outcome(lambda: bytearray(1 << 20)),
            # The whole limit at once: cannot fit whatever free heap the process inherited
            # (a parent that freed big buffers keeps them in VmData, and so in the limit).
            "big_alloc": _outcome(
                lambda: bytearray(resource.getrlimit(resource.RLIMIT_DATA)[0])),
            "no_new_privs": privsep.no_new_privs(),
            "dumpable": privsep.dumpable(),
            "caps": list(privsep.capabilities()),
            "limits": {name: list(resource.getrlimit(getattr(resource, name)))
                       for name in ("RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_FSIZE",
                                    "RLIMIT_CORE")},
        }
    return checks


def _secret_file(tmp_path: Path) -> str:
    """A root-only file standing in for the host key."""
    secret = tmp_path / "host_key"
    secret.write_bytes(b"not really a key")
    secret.chmod(0o600)
    return str(secret)


# ---------------------------------------------------------------------------------------------
# sandbox_preauth


def test_preauth_sandbox_confines_the_process(tmp_path: Path,
                                              privsep_user: PrivsepUser) -> None:
    secret = _secret_file(tmp_path)
    empty = tmp_path / "empty"  # created by sandbox_preauth
    writable = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o666)
    def setup() -> object:
        os.setgroups([0, grp.getgrnam("adm").gr_gid])  # a daemon with groups loses them
        return sandbox_preauth(privsep_user, str(empty))

    try:
        run = run_forked(setup, _sandbox_checks(secret, writable), keep={writable})
    finally:
        os.close(writable)
    out = run.out
    assert "setup_error" not in out, out
    uid, gid = privsep_user.uid, privsep_user.gid
    # Seen from outside: every id is the privsep account's, nothing else holds.
    for status in (run.status, run.end_status):
        assert status.uids == (uid, uid, uid, uid)
        assert status.gids == (gid, gid, gid, gid)
        assert status.groups == ()
        assert status.no_new_privs == 1
        assert (status.cap_eff, status.cap_prm, status.cap_amb) == (0, 0, 0)
    # Seen from inside.
    assert out["open_secret"] == "FileNotFoundError:ENOENT"  # not even there: chrooted
    assert out["listdir_root"] == []
    assert out["fork"] == "BlockingIOError:EAGAIN"
    assert out["thread"] == "RuntimeError"  # a thread is a process to RLIMIT_NPROC
    assert out["setuid0"] == "PermissionError:EPERM"
    assert out["seteuid0"] == "PermissionError:EPERM"
    assert out["create_file"] == "PermissionError:EACCES"
    assert out["write_inherited"] == "OSError:EFBIG"  # RLIMIT_FSIZE 0
    highest, refusal = out["open_many"]
    assert 8 < highest < DEFAULT_PREAUTH_NOFILE and refusal == "EMFILE"
    assert out["small_alloc"] == "ok"
    assert out["big_alloc"] == "MemoryError"
    assert out["no_new_privs"] is True
    assert out["dumpable"] is False
    assert out["caps"] == [0, 0, 0]
    assert out["limits"] == {"RLIMIT_NPROC": [0, 0],
                             "RLIMIT_NOFILE": [DEFAULT_PREAUTH_NOFILE] * 2,
                             "RLIMIT_FSIZE": [0, 0], "RLIMIT_CORE": [0, 0]}
    assert empty.is_dir() and empty.stat().st_mode & 0o7777 == 0o755
    assert empty.stat().st_uid == 0


def test_preauth_sandbox_with_the_fallback_user(tmp_path: Path) -> None:
    """No such account: the documented fallback (nobody) is used, not root."""
    nobody = pwd.getpwnam("nobody")
    run = run_forked(lambda: sandbox_preauth(f"qshnone{secrets.token_hex(3)}",
                                             str(tmp_path / "empty")),
                     lambda: {"setuid0": _outcome(lambda: os.setuid(0))})
    assert "setup_error" not in run.out, run.out
    assert run.status.uids == (nobody.pw_uid,) * 4
    assert run.status.gids == (nobody.pw_gid,) * 4
    assert run.out["setuid0"] == "PermissionError:EPERM"
    with pytest.raises(PrivsepError, match="does not exist"):
        resolve_privsep_user(f"qshnone{secrets.token_hex(3)}", fallback=None)


def test_preauth_limits_are_configurable(tmp_path: Path, privsep_user: PrivsepUser) -> None:
    limits = PreauthLimits(nofile=32, data_budget=256 << 20)
    run = run_forked(
        lambda: sandbox_preauth(privsep_user, str(tmp_path / "empty"), limits=limits),
        lambda: {"nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
                 "data": list(resource.getrlimit(resource.RLIMIT_DATA)),
                 "alloc_100m": _outcome(lambda: bytearray(100 << 20)),
                 # The whole limit at once: free heap the test process inherited counts in
                 # VmData, so "budget + a little" may fit and prove nothing.
                 "alloc_limit": _outcome(
                     lambda: bytearray(resource.getrlimit(resource.RLIMIT_DATA)[0]))})
    out = run.out
    assert "setup_error" not in out, out
    assert out["nofile"] == [32, 32]
    # The bound is relative to what the forked child had mapped when it was sandboxed.
    assert out["data"][0] == out["data"][1]
    assert abs(out["data"][0] - (run.status.vm_data + (256 << 20))) < 1 << 20
    assert out["alloc_100m"] == "ok"
    assert out["alloc_limit"] == "MemoryError"


@pytest.mark.parametrize("problem", ["not_empty", "group_writable", "not_root", "symlink"])
def test_preauth_refuses_an_unsafe_directory(tmp_path: Path, privsep_user: PrivsepUser,
                                             problem: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    if problem == "not_empty":
        (empty / "f").write_text("x")
    elif problem == "group_writable":
        empty.chmod(0o775)
    elif problem == "not_root":
        os.chown(empty, privsep_user.uid, privsep_user.gid)
    else:
        empty.rmdir()
        (tmp_path / "real").mkdir(mode=0o755)
        empty.symlink_to(tmp_path / "real")
    run = run_forked(lambda: sandbox_preauth(privsep_user, str(empty)), lambda: {})
    assert run.out["setup_error"].startswith("PrivsepError"), run.out
    assert run.status.uids[0] == 0  # nothing was dropped: the caller must exit


@pytest.mark.parametrize("leak", ["directory", "listening_socket"])
def test_preauth_refuses_leaked_descriptors(tmp_path: Path, privsep_user: PrivsepUser,
                                            leak: str) -> None:
    """A directory descriptor would lead out of the chroot (fchdir); a listening socket
    would let the pre-auth process accept other peers' connections."""
    leaked: list[object] = []

    def setup() -> object:
        if leak == "directory":
            leaked.append(os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY))
        else:
            leaked.append(socket.create_server(("127.0.0.1", 0)))
        return sandbox_preauth(privsep_user, str(tmp_path / "empty"))

    run = run_forked(setup, lambda: {})
    expected = "an open directory" if leak == "directory" else "a listening socket"
    assert run.out["setup_error"].startswith("PrivsepError: descriptor"), run.out
    assert run.out["setup_error"].endswith(expected), run.out
    assert run.status.uids[0] == 0


def test_preauth_refuses_a_threaded_process(tmp_path: Path,
                                            privsep_user: PrivsepUser) -> None:
    def setup() -> object:
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait, daemon=True)
        thread.start()
        try:
            return sandbox_preauth(privsep_user, str(tmp_path / "empty"))
        finally:
            stop.set()
            thread.join()

    run = run_forked(setup, lambda: {})
    assert run.out["setup_error"].startswith(
        "PrivsepError: sandbox_preauth in a process with 2 threads"), run.out


def test_preauth_runs_a_real_handshake_within_the_default_limits(
        tmp_path: Path, privsep_user: PrivsepUser) -> None:
    """The defaults must leave room for what a pre-auth process really does: a full handshake
    and a refused password login over TCP on the asyncio adapter, chrooted, as the privsep
    user, in a child forked from a parent that imported everything. Prints what it used
    (the measurement behind the defaults)."""
    key = HostKey.generate("mldsa65", now=time.time())
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    state: dict[str, Any] = {}

    def setup() -> object:
        conn, _ = listener.accept()  # the listener's part: not one byte is read
        listener.close()
        state["sock"] = conn
        return sandbox_preauth(privsep_user, str(tmp_path / "empty"))

    def serve() -> dict[str, Any]:
        users: list[str] = []

        async def on_auth(connection: aio.QsmpConnection, request: AuthRequested) -> bool:
            users.append(request.user)
            state["fds"] = {fd: _kind(fd) for fd in range(64) if _is_open(fd)}  # no /proc
            return False

        async def main() -> None:
            loop = asyncio.get_running_loop()
            core = Connection(ServerHandshake([key], None), require_auth=True,
                              max_auth_attempts=1)
            connection = aio.QsmpConnection(core, loop=loop, on_auth=on_auth)
            await loop.connect_accepted_socket(lambda: connection, state["sock"])
            async with asyncio.timeout(WAIT):
                await connection.wait_closed()
            state["terminated"] = repr(connection.terminated)

        error = _outcome(lambda: asyncio.run(main()))
        return {"users": users, "serve": error, "terminated": state.get("terminated"),
                "fds": state.get("fds")}

    answers: list[str] = []

    async def client() -> None:
        connection = await aio.connect(
            "127.0.0.1", port, handshake=ClientHandshake(Offer(), key.public),
            user="nobody", password=b"wrong", timeout=WAIT)
        answers.append(repr(await connection.wait_authenticated()))
        connection.close()
        await connection.wait_closed()

    # The warmed parent: one handshake in memory first, so that every module the core
    # imports lazily (pycryptodome's ML-DSA, ...) is loaded before the child's chroot, after
    # which nothing can be imported. The listener must do the same before it forks.
    client_core, server_core = make_pair(host_keys=[key], client_seed=None, server_seed=None)
    handshake(client_core, server_core, now=time.time())
    # The child accepts in `setup`, then serves the client the parent runs meanwhile.
    try:
        run = run_forked(setup, serve, keep={listener.fileno()},
                         during=lambda: asyncio.run(client()))
    finally:
        listener.close()
    out = run.out
    assert "setup_error" not in out, out
    assert out["serve"] == "ok", out
    assert out["users"] == ["nobody"]
    assert answers and "AuthFailed" in answers[0]
    assert run.end_status.uids[0] == privsep_user.uid
    # The baseline: VmData when the child was sandboxed (the limit is relative to it).
    limit = int(re.search(r"data_limit=(\d+)", out["report"]).group(1))  # type: ignore[union-attr]
    baseline = limit - DEFAULT_PREAUTH_DATA_BUDGET
    grown = run.end_status.vm_data - baseline
    print(f"\npre-auth handshake: VmData {baseline >> 20} -> "
          f"{run.end_status.vm_data >> 20} MiB (+{grown / 2**20:.1f} MiB), "
          f"VmSize {run.end_status.vm_size >> 20} MiB, VmHWM {run.end_status.vm_hwm >> 20} MiB, "
          f"fds in use mid-login {out['fds']}")
    assert grown < DEFAULT_PREAUTH_DATA_BUDGET / 4  # at least 4x headroom
    # stdio, the socket and aio's duplicate of it for sending, epoll and its self-pipe (2):
    # 8, plus this test's two pipes; the monitor's socket will be one more.
    assert len(out["fds"]) - 2 <= DEFAULT_PREAUTH_NOFILE // 2


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _kind(fd: int) -> str:
    mode = os.fstat(fd).st_mode
    for name in ("S_ISSOCK", "S_ISFIFO", "S_ISCHR", "S_ISREG", "S_ISDIR"):
        if getattr(stat, name)(mode):
            return name[4:].lower()
    return "other"


def test_preauth_sandbox_without_root(tmp_path: Path,
                                      login_user: tuple[pwd.struct_passwd, int]) -> None:
    """A per-user daemon (not root): no chroot and no uid change are possible, and the
    process still gets NO_NEW_PRIVS, no fork, no file growth and the other limits."""
    account, _ = login_user
    secret = _secret_file(tmp_path)
    writable = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o666)

    def setup() -> object:
        os.setgroups([])
        os.setresgid(account.pw_gid, account.pw_gid, account.pw_gid)
        os.setresuid(account.pw_uid, account.pw_uid, account.pw_uid)
        return sandbox_preauth("qshd", str(tmp_path / "never-used"))

    def checks() -> dict[str, Any]:
        return {**_sandbox_checks(secret, writable)(),
                "open_public": _outcome(lambda: open("/etc/passwd", "rb").close())}

    try:
        run = run_forked(setup, checks, keep={writable})
    finally:
        os.close(writable)
    out = run.out
    assert "chrooted=False" in out["report"], out
    assert run.status.uids == (account.pw_uid,) * 4
    assert run.status.no_new_privs == 1
    assert out["open_secret"] == "PermissionError:EACCES"  # file permissions only
    assert out["open_public"] == "ok"  # no chroot: the weaker fallback
    assert out["fork"] == "BlockingIOError:EAGAIN"
    assert out["thread"] == "RuntimeError"
    assert out["setuid0"] == "PermissionError:EPERM"
    assert out["write_inherited"] == "OSError:EFBIG"
    assert out["big_alloc"] == "MemoryError"
    assert out["no_new_privs"] is True and out["dumpable"] is False
    assert not (tmp_path / "never-used").exists()


# ---------------------------------------------------------------------------------------------
# become_user


def _post_auth_checks() -> dict[str, Any]:
    return {
        "setuid0": _outcome(lambda: os.setuid(0)),
        "seteuid0": _outcome(lambda: os.seteuid(0)),
        "setgid0": _outcome(lambda: os.setgid(0)),
        "setgroups": _outcome(lambda: os.setgroups([0])),
        "caps": list(privsep.capabilities()),
        "dumpable": privsep.dumpable(),
        "no_new_privs": privsep.no_new_privs(),
    }


@pytest.mark.parametrize("how", ["groups", "initgroups"])
def test_become_user(login_user: tuple[pwd.struct_passwd, int], how: str) -> None:
    account, extra_gid = login_user
    expected_groups = sorted({account.pw_gid, extra_gid})
    if how == "groups":
        groups = os.getgrouplist(account.pw_name, account.pw_gid)
        assert sorted(groups) == expected_groups

        def setup() -> object:
            return become_user(account.pw_uid, account.pw_gid, groups)
    else:
        def setup() -> object:
            return become_user(account.pw_uid, account.pw_gid, user=account.pw_name)

    run = run_forked(setup, _post_auth_checks)
    out = run.out
    assert "setup_error" not in out, out
    uid, gid = account.pw_uid, account.pw_gid
    for status in (run.status, run.end_status):
        assert status.uids == (uid, uid, uid, uid)
        assert status.gids == (gid, gid, gid, gid)
        assert sorted(status.groups) == expected_groups
        assert (status.cap_eff, status.cap_prm, status.cap_inh, status.cap_amb) == (0, 0, 0, 0)
        assert status.no_new_privs == 0  # the user's session may still run sudo
    assert out["setuid0"] == out["seteuid0"] == out["setgid0"] == "PermissionError:EPERM"
    assert out["setgroups"] == "PermissionError:EPERM"
    assert out["caps"] == [0, 0, 0]
    assert out["dumpable"] is False
    assert out["no_new_privs"] is False


def test_become_user_detects_kept_capabilities(login_user: tuple[pwd.struct_passwd, int]
                                               ) -> None:
    """With PR_SET_KEEPCAPS the kernel keeps the permitted set across the uid change: the
    process could raise CAP_SETUID again and be root. become_user must notice and refuse."""
    account, _ = login_user
    pr_set_keepcaps = 8

    def setup() -> object:
        privsep._libc().prctl(pr_set_keepcaps, 1, 0, 0, 0)
        return become_user(account.pw_uid, account.pw_gid, [account.pw_gid])

    run = run_forked(setup, lambda: {})
    assert run.out["setup_error"].startswith(
        "PrivilegeDropError: capabilities remain after dropping"), run.out
    assert run.status.cap_prm != 0  # what it caught


def test_become_user_refuses_root_unless_asked() -> None:
    run = run_forked(lambda: become_user(0, 0, [0]), lambda: {})
    assert run.out["setup_error"] == "PrivilegeDropError: become_user(0) without allow_root"
    run = run_forked(lambda: become_user(0, 0, [0], allow_root=True),
                     lambda: {"uid": os.getuid()})
    assert "setup_error" not in run.out and run.out["uid"] == 0


def test_become_user_when_not_root(login_user: tuple[pwd.struct_passwd, int]) -> None:
    """A per-user daemon can only be its own user: that passes the checks, another does not."""
    account, _ = login_user
    nobody = pwd.getpwnam("nobody")

    def drop() -> None:
        os.setgroups([])
        os.setresgid(account.pw_gid, account.pw_gid, account.pw_gid)
        os.setresuid(account.pw_uid, account.pw_uid, account.pw_uid)

    def as_self() -> object:
        drop()
        return become_user(account.pw_uid, account.pw_gid, [])

    def as_other() -> object:
        drop()
        return become_user(nobody.pw_uid, nobody.pw_gid, [])

    assert "setup_error" not in run_forked(as_self, lambda: {}).out
    out = run_forked(as_other, lambda: {}).out
    assert out["setup_error"].startswith("PrivilegeDropError: not root"), out


# ---------------------------------------------------------------------------------------------
# ensure_privsep_user


def test_ensure_privsep_user_creates_a_system_account_once() -> None:
    name = f"qsht{secrets.token_hex(3)}"
    try:
        first = ensure_privsep_user(name)
        entry = pwd.getpwnam(name)
        assert (first.uid, first.gid) == (entry.pw_uid, entry.pw_gid)
        assert 0 < entry.pw_uid < 1000  # a system account (below UID_MIN)
        assert grp.getgrgid(entry.pw_gid).gr_name == name  # a group of its own
        assert entry.pw_shell.endswith("nologin")
        assert not os.path.exists(entry.pw_dir)
        again = ensure_privsep_user(name)  # idempotent
        assert again == first
        # The command line a service install runs.
        done = subprocess.run([sys.executable, "-m", "qshd.privsep", "ensure-user", name],
                              capture_output=True, text=True, timeout=60, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"{name} uid={first.uid} gid={first.gid}\n"
    finally:
        _userdel(name)
    with pytest.raises(PrivsepError, match="invalid user name"):
        ensure_privsep_user("-o")



def test_ensure_privsep_user_reuses_a_leftover_group() -> None:
    """A group of the account's name left behind (e.g. by a removed package) would make
    useradd --user-group fail; the account joins it instead."""
    name = f"qsht{secrets.token_hex(3)}"
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True, timeout=60)
    try:
        account = ensure_privsep_user(name)
        assert account.gid == grp.getgrnam(name).gr_gid
    finally:
        _userdel(name)
