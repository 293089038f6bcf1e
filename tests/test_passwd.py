"""common/passwd.py: the file format, atomic and locked edits, verification, strict modes.

Real files in tmp_path; bcrypt cost 4 everywhere so the whole module runs in about a second.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import bcrypt
import pytest

import common.accounts.passwd as passwd_module
from common.accounts.passwd import (
    InvalidPassword,
    InvalidUserName,
    PasswdError,
    PasswdFile,
    PasswdFileError,
    default_passwd_path,
)

COST = 4
ROOT = Path(__file__).resolve().parents[1]


def _hash(password: bytes, cost: int = COST) -> str:
    return bcrypt.hashpw(password, bcrypt.gensalt(cost)).decode()


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    path.write_text(text)
    path.chmod(mode)


@pytest.fixture()
def pw_path(tmp_path: Path) -> Path:
    return tmp_path / "passwd"


def test_missing_file_is_empty_unless_required(pw_path: Path) -> None:
    pf = PasswdFile(pw_path)
    pf.load()
    assert pf.users() == []
    with pytest.raises(PasswdFileError, match="no such file"):
        pf.load(must_exist=True)


def test_add_change_delete_list(pw_path: Path) -> None:
    pf = PasswdFile(pw_path)
    assert pf.set_password("alice", b"one", cost=COST) is True
    assert pf.set_password("bob", b"two", cost=COST) is True
    assert pf.users() == ["alice", "bob"]
    assert pf.verify("alice", b"one") and pf.verify("bob", b"two")

    assert pf.set_password("alice", b"three", cost=COST) is False
    assert pf.users() == ["alice", "bob"]  # changed in place, order kept
    assert pf.verify("alice", b"three") and not pf.verify("alice", b"one")

    fresh = PasswdFile(pw_path)  # the file, not just the object, holds the change
    assert fresh.users() == ["alice", "bob"] and fresh.verify("alice", b"three")

    assert pf.delete("alice") is True
    assert pf.delete("alice") is False
    assert pf.users() == ["bob"]
    assert PasswdFile(pw_path).users() == ["bob"]


def test_file_format_and_mode(pw_path: Path) -> None:
    PasswdFile(pw_path).set_password("alice", b"secret", cost=COST)
    assert pw_path.stat().st_mode & 0o777 == 0o600
    (line,) = pw_path.read_text().splitlines()
    user, hashed = line.split(":", 1)
    assert user == "alice" and hashed.startswith("$2b$04$")
    assert bcrypt.checkpw(b"secret", hashed.encode())
    assert pw_path.read_text().endswith("\n")


def test_mode_0600_restored_on_rewrite(pw_path: Path) -> None:
    _write(pw_path, f"alice:{_hash(b'a')}\n", mode=0o644)  # readable, not writable: accepted
    PasswdFile(pw_path).set_password("bob", b"b", cost=COST)
    assert pw_path.stat().st_mode & 0o777 == 0o600


def test_cost_is_honoured(pw_path: Path) -> None:
    pf = PasswdFile(pw_path)
    pf.set_password("alice", b"x", cost=5)
    assert pw_path.read_text().split(":", 1)[1].startswith("$2b$05$")
    with pytest.raises(PasswdError, match="cost"):
        pf.set_password("alice", b"x", cost=3)
    with pytest.raises(PasswdError, match="cost"):
        pf.set_password("alice", b"x", cost=32)


def test_comments_and_blank_lines_survive_rewrites(pw_path: Path) -> None:
    original = (
        "# qshd users\n"
        "\n"
        f"alice:{_hash(b'a')}\n"
        "   # indented comment with ünïcödé\n"
        f"carol:{_hash(b'c')}\n"
    )
    _write(pw_path, original)
    pf = PasswdFile(pw_path)
    pf.set_password("bob", b"b", cost=COST)
    pf.delete("carol")
    lines = pw_path.read_text().splitlines()
    assert lines[:2] == ["# qshd users", ""]
    assert lines[2].startswith("alice:")
    assert lines[3] == "   # indented comment with ünïcödé"
    assert lines[4].startswith("bob:")
    assert len(lines) == 5


def test_verify_right_wrong_unknown(pw_path: Path) -> None:
    pf = PasswdFile(pw_path)
    pf.set_password("alice", b"correct horse", cost=COST)
    assert pf.verify("alice", b"correct horse")
    assert not pf.verify("alice", b"correct hors")
    assert not pf.verify("alice", b"")
    assert not pf.verify("mallory", b"correct horse")
    assert not pf.verify("Alice", b"correct horse")  # case-sensitive
    assert not pf.verify("not a valid name", b"correct horse")


def test_unknown_user_costs_a_bcrypt_run_of_the_same_cost(
    pw_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timing must not tell known from unknown users: both run checkpw at the file's cost."""
    _write(pw_path, f"alice:{_hash(b'a', 5)}\nbob:{_hash(b'b', 5)}\ncarol:{_hash(b'c', 4)}\n")
    pf = PasswdFile(pw_path)
    pf.load()
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", spy)
    assert not pf.verify("alice", b"wrong")
    assert not pf.verify("nobody", b"wrong")
    assert not pf.verify("NOT VALID", b"wrong")
    assert len(calls) == 3
    assert [h[:7] for h in calls] == [b"$2b$05$"] * 3  # the most common cost in the file


def test_empty_file_dummy_uses_default_cost(pw_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []

    def spy(password: bytes, hashed: bytes) -> bool:
        seen.append(hashed)
        return False

    monkeypatch.setattr(bcrypt, "checkpw", spy)
    assert not PasswdFile(pw_path).verify("nobody", b"x")
    assert seen and seen[0].startswith(b"$2b$12$")


def test_long_passwords(pw_path: Path) -> None:
    pf = PasswdFile(pw_path)
    with pytest.raises(InvalidPassword, match="72"):
        pf.set_password("alice", b"x" * 73, cost=COST)
    pf.set_password("alice", b"y" * 72, cost=COST)
    assert pf.verify("alice", b"y" * 72)
    # bcrypt would accept the 72-byte prefix; we refuse anything it would silently truncate.
    assert not pf.verify("alice", b"y" * 72 + b"z")
    assert pw_path.read_text().count("\n") == 1


def test_empty_password_refused(pw_path: Path) -> None:
    with pytest.raises(InvalidPassword, match="empty"):
        PasswdFile(pw_path).set_password("alice", b"", cost=COST)
    assert not pw_path.exists()


@pytest.mark.parametrize(
    "name",
    ["", "Alice", "1alice", "-alice", ".alice", "al ice", "al:ice", "al\nice", "a" * 33,
     "alice$", "élise", "al/ice"],
)
def test_invalid_user_names(pw_path: Path, name: str) -> None:
    pf = PasswdFile(pw_path)
    with pytest.raises(InvalidUserName, match="invalid user name"):
        pf.set_password(name, b"x", cost=COST)
    with pytest.raises(InvalidUserName):
        pf.delete(name)
    assert not pw_path.exists()


@pytest.mark.parametrize("name", ["a", "_", "alice", "a.b-c_d", "x" * 32, "user01", "_svc"])
def test_valid_user_names(pw_path: Path, name: str) -> None:
    pf = PasswdFile(pw_path)
    pf.set_password(name, b"x", cost=COST)
    assert pf.users() == [name]


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("alice", "expected 'user:bcrypt-hash'"),
        ("Alice:{h}", "invalid user name"),
        ("alice:", "not a bcrypt hash"),
        ("alice:$1$abc$def", "not a bcrypt hash"),
        ("alice:{h}x", "not a bcrypt hash"),
        ("alice:$2b$03$" + "a" * 53, "not a bcrypt hash"),
        ("bob:{h}", "duplicate user 'bob' (first on line 2)"),
    ],
)
def test_malformed_file_is_refused_and_never_rewritten(
    pw_path: Path, line: str, complaint: str
) -> None:
    text = f"# header\nbob:{_hash(b'b')}\n{line.format(h=_hash(b'a'))}\n"
    _write(pw_path, text)
    before = pw_path.read_bytes()
    pf = PasswdFile(pw_path)
    with pytest.raises(PasswdFileError) as info:
        pf.load()
    message = str(info.value)
    assert message.startswith(f"{pw_path}:3: ") and complaint in message
    assert "\n" not in message
    with pytest.raises(PasswdFileError):
        pf.set_password("carol", b"c", cost=COST)
    with pytest.raises(PasswdFileError):
        pf.delete("bob")
    assert pw_path.read_bytes() == before


def test_non_utf8_line_is_refused(pw_path: Path) -> None:
    pw_path.write_bytes(b"# ok\n# \xff\xfe\n")
    pw_path.chmod(0o600)
    with pytest.raises(PasswdFileError, match=r":2: not UTF-8"):
        PasswdFile(pw_path).load()


def test_accepts_other_bcrypt_variants_and_crlf(pw_path: Path) -> None:
    """htpasswd writes $2y$; a file edited on Windows ends lines with CRLF."""
    h = _hash(b"pw")
    _write(pw_path, f"alice:{h.replace('$2b$', '$2y$', 1)}\r\nbob:{h.replace('$2b$', '$2a$', 1)}\n")
    pf = PasswdFile(pw_path)
    assert pf.users() == ["alice", "bob"]
    assert pf.verify("alice", b"pw") and pf.verify("bob", b"pw")


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_group_or_world_writable_file_is_refused(pw_path: Path, mode: int) -> None:
    _write(pw_path, f"alice:{_hash(b'a')}\n", mode=mode)
    before = pw_path.read_bytes()
    with pytest.raises(PasswdFileError, match="too open"):
        PasswdFile(pw_path).load()
    with pytest.raises(PasswdFileError, match="too open"):
        PasswdFile(pw_path).set_password("bob", b"b", cost=COST)
    assert pw_path.read_bytes() == before
    relaxed = PasswdFile(pw_path, check_mode=False)
    assert relaxed.verify("alice", b"a")


def test_directory_and_symlink_refused(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(PasswdFileError, match="not a regular file"):
        PasswdFile(tmp_path / "dir").load()
    target = tmp_path / "real"
    PasswdFile(target).set_password("alice", b"a", cost=COST)
    link = tmp_path / "link"
    link.symlink_to(target)
    assert PasswdFile(link).users() == ["alice"]  # reading through a link is fine
    with pytest.raises(PasswdFileError, match="symbolic link"):
        PasswdFile(link).set_password("bob", b"b", cost=COST)
    assert link.is_symlink()


def test_unreadable_file_is_one_line_error(pw_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(pw_path, "")
    real_open = os.open

    def deny(path: object, flags: int, *args: int) -> int:
        if Path(str(path)) == pw_path:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(PasswdFileError, match=r"cannot read .*: Permission denied"):
        PasswdFile(pw_path).load()


def test_failed_write_leaves_old_file_intact(
    pw_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pf = PasswdFile(pw_path)
    pf.set_password("alice", b"a", cost=COST)
    before = pw_path.read_bytes()

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(PasswdFileError, match="No space left on device"):
        pf.set_password("bob", b"b", cost=COST)
    with pytest.raises(PasswdFileError):
        pf.delete("alice")
    assert pw_path.read_bytes() == before
    leftovers = sorted(p.name for p in pw_path.parent.iterdir())
    assert leftovers == ["passwd", "passwd.lock"]  # no temporary or partial file
    monkeypatch.undo()
    assert PasswdFile(pw_path).users() == ["alice"]


def test_failed_write_before_rename_keeps_old_file(
    pw_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write cut short (full disk) must not reach the real file either."""
    PasswdFile(pw_path).set_password("alice", b"a", cost=COST)
    before = pw_path.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(PasswdFileError, match="Input/output error"):
        PasswdFile(pw_path).set_password("bob", b"b", cost=COST)
    assert pw_path.read_bytes() == before
    assert sorted(p.name for p in pw_path.parent.iterdir()) == ["passwd", "passwd.lock"]


def test_lock_file_is_private(pw_path: Path) -> None:
    PasswdFile(pw_path).set_password("alice", b"a", cost=COST)
    lock = pw_path.with_name("passwd.lock")
    assert lock.exists() and lock.stat().st_mode & 0o777 == 0o600


_WORKER = textwrap.dedent(
    """
    import sys
    from common.accounts.passwd import PasswdFile
    path, prefix = sys.argv[1], sys.argv[2]
    pf = PasswdFile(path)
    for i in range(10):
        pf.set_password(f"{prefix}{i}", f"pw-{prefix}{i}".encode(), cost=4)
    """
)


def test_concurrent_processes_lose_no_edit(pw_path: Path) -> None:
    """Two processes adding ten users each: without the lock, read-modify-write races drop
    users; with it, all twenty are there."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(pw_path), prefix], env=env)
        for prefix in ("a", "b")
    ]
    assert [w.wait(timeout=60) for w in workers] == [0, 0]
    pf = PasswdFile(pw_path)
    assert sorted(pf.users()) == sorted(f"{p}{i}" for p in "ab" for i in range(10))
    assert pf.verify("a7", b"pw-a7") and pf.verify("b3", b"pw-b3")


def test_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_passwd_path() == Path("/etc/qsh/passwd")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_passwd_path() == tmp_path / ".qsh" / "passwd"


def test_module_stays_sans_io() -> None:
    """common/ never reads the clock, sleeps or opens sockets (DESIGN.md section 1)."""
    tree = ast.parse(Path(passwd_module.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"time", "socket", "asyncio", "datetime", "select", "selectors"}
