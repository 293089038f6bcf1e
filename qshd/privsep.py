"""Privilege primitives for the process that serves one connection (Linux only).

Two moments in a connection's life change what its process may do, and each has one
function here; neither knows anything about the protocol:

* :func:`sandbox_preauth`, before the first byte from the client is read: the process is
  about to parse input from anyone on the internet, so it gives up everything it could
  lose to a parser bug. In this order (OpenSSH's ``sshd-auth`` does the same, for the same
  reasons):

  1. Everything that needs the file system is done first: the privsep account is looked
     up (``pwd`` reads /etc/passwd, which is gone once we are chrooted), libc is loaded
     for ``prctl``/``capget``, ``/proc/self/status`` is read for the memory baseline, and
     the open descriptors are checked: none may be a directory (``fchdir`` would lead out
     of the chroot) or a listening socket (it would accept other peers' connections).
  2. ``chroot`` into an empty directory owned by root and writable by nobody else, then
     ``chdir("/")``. The directory is opened once and checked through that descriptor
     (owner, mode, empty), and the chroot goes through the same descriptor
     (``fchdir`` + ``chroot(".")``), so nothing can swap the path between check and use.
     Being root is needed for the chroot, so it comes before the uid change.
  3. ``setgroups([])``, ``setresgid``, ``setresuid`` to the privsep account: groups first
     and the uid last, because once the uid is gone the process can no longer change its
     groups. Then proof: ``setuid(0)`` and ``setgid(0)`` must fail and no capability may
     remain (``capget``; /proc is not reachable from the chroot).
  4. ``PR_SET_NO_NEW_PRIVS`` (nothing it could exec would gain privileges) and
     ``PR_SET_DUMPABLE 0`` (no core file, no ptrace or /proc/<pid>/mem by other processes
     of the same account). DUMPABLE is set *after* the uid change because the kernel
     resets it on every credential change.
  5. Resource limits, hard and soft alike, so they cannot be raised again:
     ``RLIMIT_NPROC 0`` (no fork; note that a thread is a process to this limit, so the
     process cannot start threads either: no executor), ``RLIMIT_NOFILE`` small,
     ``RLIMIT_FSIZE 0`` (no regular file can grow; Python ignores SIGXFSZ, so a write
     fails with EFBIG instead of killing the process), ``RLIMIT_CORE 0`` and
     ``RLIMIT_DATA`` bounded (see :class:`PreauthLimits` for why DATA and not AS).

  When the process is not root (a per-user daemon) there is nothing to chroot into or
  drop to: steps 2 and 3 are skipped, and 4 and 5 still apply.

  The sandbox is one way: the process can never become a user afterwards (it is not root
  any more), so it must be a child of the connection's privileged monitor, which forks the
  post-auth process after the login, as in OpenSSH. Nothing can be imported after the chroot
  (no file system is left) and several modules of the core are imported lazily on first use
  (pycryptodome's ML-DSA and ML-KEM among them): the parent must be *warmed* before it forks,
  e.g. by one in-memory handshake with its host keys' algorithms (tests/test_privsep.py shows
  that a handshake then runs in the sandbox, and what it fails on otherwise). Logging must
  go to a descriptor opened before (or to the monitor); getaddrinfo and executors are gone
  with the threads.

* :func:`become_user`, once the user is authenticated: the process takes the user's
  supplementary groups, gid and uid (all three ids of each: real, effective and saved,
  so nothing is left to switch back to), verifies that ``setuid(0)`` fails and that no
  capability remains, and raises :class:`PrivilegeDropError` otherwise. The caller must
  then exit at once without serving anything. ``NO_NEW_PRIVS`` is *not* set here: a
  user's session must be able to run ``sudo`` or ``su``.

:func:`proc_status` reads uids, gids, groups, NoNewPrivs and capabilities of any process
from ``/proc/<pid>/status`` (tests, and a parent checking its child), and
:func:`ensure_privsep_user` creates the ``qshd`` system account as a service install would
(``python3 -m qshd.privsep ensure-user``).
"""

from __future__ import annotations

import contextlib
import ctypes
import grp
import logging
import os
import pwd
import resource
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from common.accounts.passwd import InvalidUserName, check_user_name
from common.crypto import secret

__all__ = [
    "DEFAULT_EMPTY_DIR",
    "DEFAULT_PREAUTH_DATA_BUDGET",
    "DEFAULT_PREAUTH_NOFILE",
    "DEFAULT_PRIVSEP_USER",
    "FALLBACK_PRIVSEP_USER",
    "PreauthLimits",
    "PrivilegeDropError",
    "PrivsepError",
    "PrivsepUser",
    "ProcStatus",
    "SandboxReport",
    "become_user",
    "capabilities",
    "dumpable",
    "ensure_privsep_user",
    "no_new_privs",
    "open_empty_dir",
    "proc_status",
    "resolve_privsep_user",
    "sandbox_preauth",
]

log = logging.getLogger("qshd")

#: The account pre-auth processes run as; created by the service install
#: (:func:`ensure_privsep_user`).
DEFAULT_PRIVSEP_USER = "qshd"
#: Used when :data:`DEFAULT_PRIVSEP_USER` does not exist (with a warning). ``nobody`` is
#: shared with other services (NFS squashing, some daemons), which could then signal our
#: pre-auth processes, and we could signal theirs; the dedicated account is better.
FALLBACK_PRIVSEP_USER = "nobody"
#: Where a root daemon's pre-auth processes are chrooted: on tmpfs (recreated at boot,
#: by us if missing), root-owned, mode 0755, empty. sshd uses /run/sshd the same way.
DEFAULT_EMPTY_DIR = "/run/qshd/empty"
EMPTY_DIR_MODE = 0o755

#: The highest descriptor number + 1 a pre-auth process may open. Measured (tests/
#: test_privsep.py, a real handshake and login over TCP in a sandboxed child): 8 in use,
#: stdin/stdout/stderr, the connection's socket and the adapter's duplicate of it for
#: sending, epoll and the event loop's self-pipe (2); the monitor's socket makes 9. 16
#: leaves room without letting a peer make the process hold many.
DEFAULT_PREAUTH_NOFILE = 16
#: How much more private writable memory (RLIMIT_DATA) a pre-auth process may map than it
#: had when it was sandboxed. Measured (same test): a handshake and a refused password
#: login grow VmData by 4-5 MiB, most of it the event loop's 4 MiB receive buffer; 64 MiB
#: is over ten times that. A peer that makes the process want more gets MemoryError, which
#: ends only its own connection.
DEFAULT_PREAUTH_DATA_BUDGET = 64 * 1024 * 1024

_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4
_PR_SET_NAME = 15
_PR_SET_NO_NEW_PRIVS = 38
_PR_GET_NO_NEW_PRIVS = 39
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivsepError(Exception):
    """A privilege step could not be taken (no such account, unsafe directory, a failed
    system call). The process must not go on to serve the connection."""


class PrivilegeDropError(PrivsepError):
    """Privileges remain after they were dropped: root could be regained, a capability is
    left, or an id is not what it was set to. Exit at once (``os._exit``)."""


@dataclass(frozen=True, slots=True)
class PrivsepUser:
    """The account a pre-auth process runs as."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class PreauthLimits:
    """The resource limits :func:`sandbox_preauth` sets (soft and hard).

    ``data_budget`` bounds RLIMIT_DATA at the process's current VmData plus this many bytes
    (None: unlimited). DATA rather than AS: RLIMIT_AS counts address space reserved but never
    usable for data, and how much of it a forked child has depends on its parent's history
    (glibc reserves 64 MiB per thread arena, the parent's thread stacks stay mapped), not on
    what the peer sends; DATA counts private writable mappings and the heap, where anything a
    peer makes us keep ends up. The bound is relative for the same reason: the forked child
    starts with whatever its parent had mapped.
    """

    nofile: int = DEFAULT_PREAUTH_NOFILE
    data_budget: int | None = DEFAULT_PREAUTH_DATA_BUDGET
    nproc: int = 0
    fsize: int = 0
    core: int = 0


@dataclass(frozen=True, slots=True)
class SandboxReport:
    """What :func:`sandbox_preauth` did, for the caller's log line."""

    chrooted: bool
    uid: int
    gid: int
    nofile: int
    data_limit: int | None


@dataclass(frozen=True, slots=True)
class ProcStatus:
    """The privilege-relevant lines of ``/proc/<pid>/status``; ids in the kernel's order
    (real, effective, saved, filesystem), memory in bytes."""

    uids: tuple[int, ...]
    gids: tuple[int, ...]
    groups: tuple[int, ...]
    no_new_privs: int
    cap_eff: int
    cap_prm: int
    cap_inh: int
    cap_amb: int
    threads: int
    vm_data: int
    vm_size: int
    vm_peak: int
    vm_rss: int
    vm_hwm: int


def proc_status(pid: int | str = "self") -> ProcStatus:
    """Parse ``/proc/<pid>/status``. Readable for any process by root, and for a process of
    one's own uid (a non-dumpable process's status stays readable)."""
    fields: dict[str, str] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()

    def ints(key: str) -> tuple[int, ...]:
        return tuple(int(v) for v in fields.get(key, "").split())

    def kib(key: str) -> int:
        value = fields.get(key, "0 kB").split()
        return int(value[0]) * 1024 if value else 0

    return ProcStatus(
        uids=ints("Uid"), gids=ints("Gid"), groups=ints("Groups"),
        no_new_privs=int(fields.get("NoNewPrivs", "0")),
        cap_eff=int(fields.get("CapEff", "0"), 16), cap_prm=int(fields.get("CapPrm", "0"), 16),
        cap_inh=int(fields.get("CapInh", "0"), 16), cap_amb=int(fields.get("CapAmb", "0"), 16),
        threads=int(fields.get("Threads", "1")),
        vm_data=kib("VmData"), vm_size=kib("VmSize"), vm_peak=kib("VmPeak"),
        vm_rss=kib("VmRSS"), vm_hwm=kib("VmHWM"),
    )


# ---------------------------------------------------------------------------------------------
# libc: prctl and capget, which os does not offer


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_capabilities_declared = False


def _libc() -> ctypes.CDLL:
    """The process's one libc handle (common/crypto/secret.py, prctl declared there) with
    capget and capset declared too; called before any chroot (loading needs files)."""
    global _capabilities_declared
    handle = secret.libc()
    if not _capabilities_declared:
        handle.capget.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
        handle.capset.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
        handle.capget.restype = ctypes.c_int
        _capabilities_declared = True
    return handle


def _prctl(option: int, arg: int = 0) -> int:
    result = int(_libc().prctl(option, arg, 0, 0, 0))
    if result == -1:
        err = ctypes.get_errno()
        raise PrivsepError(f"prctl({option}, {arg}): {os.strerror(err)}")
    return result


def set_process_name(name: str) -> None:
    """Name this process by its role (``ps -o comm``, ``top``, ``pgrep qshd-auth``, perf),
    as sshd's processes are told apart; up to 15 bytes are kept. Best effort: a name is a
    convenience, never a reason to fail a connection."""
    buffer = ctypes.create_string_buffer(name.encode()[:15])
    with contextlib.suppress(PrivsepError, OSError):
        _prctl(_PR_SET_NAME, ctypes.addressof(buffer))


def no_new_privs() -> bool:
    """Whether ``PR_SET_NO_NEW_PRIVS`` is set for the calling thread."""
    return _prctl(_PR_GET_NO_NEW_PRIVS) == 1


def dumpable() -> bool:
    """Whether the process may dump core / be ptraced by its own uid."""
    return _prctl(_PR_GET_DUMPABLE) != 0


def not_dumpable() -> None:
    """No core file, no ptrace by the same uid (sshd does this in its monitor too): a
    connection's process holds host keys or session keys and enforces policy."""
    _prctl(_PR_SET_DUMPABLE, 0)


def capabilities() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) capability sets of this process, via ``capget``
    (works in a chroot without /proc)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc().capget(ctypes.byref(header), data) == -1:
        err = ctypes.get_errno()
        raise PrivsepError(f"capget: {os.strerror(err)}")

    def join(name: str) -> int:
        return int(getattr(data[0], name)) | (int(getattr(data[1], name)) << 32)

    return join("effective"), join("permitted"), join("inheritable")


def drop_capabilities() -> None:
    """Clear every capability set, the ambient one first. A daemon that is not root may
    still have been given some (``setpriv --ambient-caps``, a unit's AmbientCapabilities);
    the user's process must keep none."""
    _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
    _libc().prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc().capset(ctypes.byref(header), data) == -1:
        err = ctypes.get_errno()
        raise PrivilegeDropError(f"capset: {os.strerror(err)}")


# ---------------------------------------------------------------------------------------------
# Accounts


def resolve_privsep_user(name: str = DEFAULT_PRIVSEP_USER,
                         fallback: str | None = FALLBACK_PRIVSEP_USER) -> PrivsepUser:
    """The account called ``name``, else ``fallback`` (with a warning), else PrivsepError.
    An account with uid or gid 0 is refused: dropping to it would drop nothing."""
    for candidate in (name, fallback):
        if candidate is None:
            continue
        try:
            entry = pwd.getpwnam(candidate)
        except KeyError:
            continue
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise PrivsepError(f"privilege separation user {candidate!r} has uid or gid 0")
        if candidate != name:
            log.warning("privilege separation user %r does not exist; using %r (create it "
                        "with: python3 -m qshd.privsep ensure-user %s)", name, candidate, name)
        return PrivsepUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    raise PrivsepError(f"privilege separation user {name!r} does not exist"
                       + (f" (nor {fallback!r})" if fallback else ""))


def _nologin_shell() -> str:
    for path in ("/usr/sbin/nologin", "/sbin/nologin"):
        if os.access(path, os.X_OK):
            return path
    return "/bin/false"


def ensure_privsep_user(name: str = DEFAULT_PRIVSEP_USER) -> PrivsepUser:
    """Make sure the privsep account exists, as the service install does: a system account
    (uid below UID_MIN) with a group of its own, no shell, no home, a locked password.
    Idempotent; an existing account is kept as it is (refused if it is uid or gid 0)."""
    try:
        check_user_name(name)
    except InvalidUserName as exc:
        raise PrivsepError(str(exc)) from None
    try:
        return resolve_privsep_user(name, fallback=None)
    except PrivsepError:
        if _lookup(name):
            raise  # exists but unusable (uid 0)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    try:
        grp.getgrnam(name)
        group = ["--gid", name]  # a group of that name exists (left by an earlier account)
    except KeyError:
        group = ["--user-group"]
    argv = [useradd, "--system", *group, "--no-create-home",
            "--home-dir", "/nonexistent", "--shell", _nologin_shell(),
            "--comment", "qshd privilege separation", "--", name]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PrivsepError(f"cannot create user {name!r}: {exc}") from None
    if done.returncode != 0 and not _lookup(name):  # exit 9: created meanwhile by another run
        raise PrivsepError(f"cannot create user {name!r}: useradd exited with "
                           f"{done.returncode}: {done.stderr.strip()[:200]}")
    log.info("created privilege separation user %s", name)
    return resolve_privsep_user(name, fallback=None)


def _lookup(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# The empty directory


def open_empty_dir(path: str = DEFAULT_EMPTY_DIR, *, create: bool = True) -> int:
    """A descriptor of ``path`` after checking, through it, that it is a directory owned by
    root, writable by nobody else, and empty. Created (with its parents, mode 0755) if
    missing and ``create``. Call as root; the caller closes the descriptor."""
    created = False
    if create and not os.path.lexists(path):
        parent = os.path.dirname(path.rstrip("/"))
        try:
            if parent:
                os.makedirs(parent, mode=EMPTY_DIR_MODE, exist_ok=True)
            os.mkdir(path, EMPTY_DIR_MODE)
            created = True
        except FileExistsError:
            pass
        except OSError as exc:
            raise PrivsepError(f"cannot create privilege separation directory {path}: "
                               f"{exc.strerror}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise PrivsepError(f"privilege separation directory {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if created and st.st_uid == 0:
            # The umask may have taken bits away (0700 would lock the account out of its
            # own root); through the descriptor, so a swapped path cannot redirect it.
            os.fchmod(fd, EMPTY_DIR_MODE)
            st = os.fstat(fd)
        if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise PrivsepError(f"privilege separation directory {path} must be owned by "
                               "root and not group or world-writable")
        if os.listdir(fd):
            raise PrivsepError(f"privilege separation directory {path} is not empty")
    except BaseException:
        os.close(fd)
        raise
    return fd


# ---------------------------------------------------------------------------------------------
# Dropping


def _check_dropped(uid: int, gid: int) -> None:
    """Raise PrivilegeDropError unless all ids are (uid, gid) and root cannot be regained."""
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise PrivilegeDropError(f"ids are {os.getresuid()}/{os.getresgid()}, "
                                 f"expected {uid}/{gid}")
    if uid == 0:
        return
    for name, call in (("setuid", os.setuid), ("seteuid", os.seteuid),
                       ("setgid", os.setgid), ("setegid", os.setegid)):
        if name.endswith("gid") and gid == 0:
            continue
        try:
            call(0)
        except PermissionError:
            continue
        raise PrivilegeDropError(f"{name}(0) succeeded after dropping to uid {uid}")
    effective, permitted, _ = capabilities()
    if effective or permitted:
        raise PrivilegeDropError(f"capabilities remain after dropping to uid {uid}: "
                                 f"effective {effective:#x}, permitted {permitted:#x}")


def _check_inherited_fds() -> None:
    """Refuse descriptors a pre-auth process must not hold: a directory (``fchdir`` to it
    leads out of the chroot) or a listening socket (it could accept other peers'
    connections). Whoever forks the process closes what it does not need; this catches a
    leak instead of trusting that."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue  # the descriptor listdir itself used
        if stat.S_ISDIR(mode):
            raise PrivsepError(f"descriptor {fd} is an open directory")
        if stat.S_ISSOCK(mode):
            sock = socket.socket(fileno=fd)
            try:
                listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            except OSError:
                listening = 0
            finally:
                sock.detach()
            if listening:
                raise PrivsepError(f"descriptor {fd} is a listening socket")


def _set_limit(which: int, value: int | None) -> int | None:
    """Set soft = hard = value (None: infinity), never above the current hard limit (which
    a process without CAP_SYS_RESOURCE could not raise). Returns what was set."""
    _, hard = resource.getrlimit(which)
    limit = resource.RLIM_INFINITY if value is None else value
    if hard != resource.RLIM_INFINITY and (limit == resource.RLIM_INFINITY or limit > hard):
        limit = hard
    try:
        resource.setrlimit(which, (limit, limit))
    except (OSError, ValueError) as exc:
        raise PrivsepError(f"setrlimit({which}, {limit}): {exc}") from None
    return None if limit == resource.RLIM_INFINITY else limit


def sandbox_preauth(user: str | tuple[int, int] | PrivsepUser = DEFAULT_PRIVSEP_USER,
                    empty_dir: str = DEFAULT_EMPTY_DIR, *,
                    limits: PreauthLimits | None = None,
                    fallback_user: str | None = FALLBACK_PRIVSEP_USER) -> SandboxReport:
    """Confine the calling process before it reads a byte from an unauthenticated peer (see
    the module docstring for each step and its order). ``user`` is an account name (with
    ``fallback_user`` if it does not exist), a (uid, gid) pair, or a resolved account.

    The process must be single-threaded (NO_NEW_PRIVS is per thread; a thread started
    before would keep running without it): call it in a freshly forked child. Raises
    :class:`PrivsepError` (or its subclass :class:`PrivilegeDropError`) if any step fails;
    the process is then in an unknown state and must exit without serving the peer.
    """
    if not sys.platform.startswith("linux"):
        raise PrivsepError("the pre-auth sandbox needs Linux")
    limits = limits or PreauthLimits()
    before = proc_status()
    if before.threads != 1:
        raise PrivsepError(f"sandbox_preauth in a process with {before.threads} threads")
    _check_inherited_fds()
    _libc()
    capabilities()  # the first call resolves the symbol while files are still there
    chrooted = False
    if os.geteuid() == 0:
        if isinstance(user, PrivsepUser):
            account = user
        elif isinstance(user, tuple):
            account = PrivsepUser(str(user[0]), int(user[0]), int(user[1]))
        else:
            account = resolve_privsep_user(user, fallback_user)
        if account.uid == 0 or account.gid == 0:
            raise PrivsepError("the privilege separation account must not be uid or gid 0")
        fd = open_empty_dir(empty_dir)
        try:
            os.fchdir(fd)
            os.chroot(".")
            os.chdir("/")
        except OSError as exc:
            raise PrivsepError(f"chroot {empty_dir}: {exc.strerror}") from None
        finally:
            os.close(fd)
        chrooted = True
        try:
            os.setgroups([])
            os.setresgid(account.gid, account.gid, account.gid)
            os.setresuid(account.uid, account.uid, account.uid)
        except OSError as exc:
            raise PrivilegeDropError(f"dropping to {account.name}: {exc.strerror}") from None
        _check_dropped(account.uid, account.gid)
        if os.getgroups():
            raise PrivilegeDropError(f"supplementary groups remain: {os.getgroups()}")
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    _prctl(_PR_SET_DUMPABLE, 0)
    _set_limit(resource.RLIMIT_CORE, limits.core)
    _set_limit(resource.RLIMIT_FSIZE, limits.fsize)
    nofile = _set_limit(resource.RLIMIT_NOFILE, limits.nofile)
    data_limit = _set_limit(resource.RLIMIT_DATA,
                            None if limits.data_budget is None
                            else before.vm_data + limits.data_budget)
    _set_limit(resource.RLIMIT_NPROC, limits.nproc)
    return SandboxReport(chrooted, os.getuid(), os.getgid(),
                         nofile if nofile is not None else -1, data_limit)


def become_user(uid: int, gid: int, groups: Sequence[int] | None = None, *,
                user: str | None = None, allow_root: bool = False,
                dumpable: bool = False) -> None:
    """Turn the calling process into the authenticated user, for good: supplementary groups
    (``groups``, or the account's from the group database via ``initgroups(user, gid)``
    when None), then gid, then uid, each with setres*id so the saved id goes too. Then
    verify: every uid and gid is the target, ``setuid(0)``/``seteuid(0)`` (and
    ``setgid(0)`` for a gid other than 0) fail, no effective or permitted capability is
    left. Any failure raises :class:`PrivilegeDropError`: exit without serving.

    ``uid == 0`` (a root login the configuration permits) must be asked for with
    ``allow_root``, so an id that defaulted to 0 by mistake cannot silently keep root.
    A process that is not root can only "become" its own account, which is checked.

    The process is left non-dumpable unless ``dumpable``: it holds the connection's session
    keys, and no other process of the user should be able to ptrace it or read its memory.
    Programs it execs are dumpable again (exec resets the flag).

    Credentials are process-wide (glibc applies set*id to every thread), but other threads
    would run during the switch: call this while the process is single-threaded.
    """
    if uid == 0 and not allow_root:
        raise PrivilegeDropError("become_user(0) without allow_root")
    if os.geteuid() != 0:
        if os.getresuid() != (uid, uid, uid):
            raise PrivilegeDropError(f"not root: cannot become uid {uid}")
        drop_capabilities()
    else:
        try:
            if groups is not None:
                os.setgroups(list(dict.fromkeys(groups)))
            elif user is not None:
                os.initgroups(user, gid)
            else:
                raise PrivilegeDropError("become_user needs groups or a user name")
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        except OSError as exc:
            raise PrivilegeDropError(f"becoming uid {uid}: {exc.strerror}") from None
        if groups is not None and set(os.getgroups()) != set(groups):
            raise PrivilegeDropError(f"groups are {os.getgroups()}, expected {list(groups)}")
    _check_dropped(uid, gid)
    if not dumpable:
        _prctl(_PR_SET_DUMPABLE, 0)


# ---------------------------------------------------------------------------------------------
# Command line: what a service install runs


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m qshd.privsep ensure-user [NAME]``: create the privsep account if missing;
    ``check-dir [PATH]``: create/check the empty chroot directory."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("ensure-user", "check-dir") or len(args) > 2:
        print("usage: python3 -m qshd.privsep ensure-user [NAME] | check-dir [PATH]",
              file=sys.stderr)
        return 2
    try:
        if args[0] == "ensure-user":
            account = ensure_privsep_user(args[1] if len(args) > 1 else DEFAULT_PRIVSEP_USER)
            print(f"{account.name} uid={account.uid} gid={account.gid}")
        else:
            path = args[1] if len(args) > 1 else DEFAULT_EMPTY_DIR
            os.close(open_empty_dir(path))
            print(f"{path}: ok")
    except (PrivsepError, OSError) as exc:
        print(f"qshd.privsep: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
