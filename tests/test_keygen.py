"""qsh-keygen end to end: real processes, real key files, a real PTY for the prompts."""

from __future__ import annotations

import os
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from ptyio import read_to_eof, read_until
from ptyprocess import PtyProcess

from common.accounts.keys import HostKey, KeyFileError, PassphraseRequired, PublicKey

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def keygen(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run qsh-keygen with stdin on /dev/null: never a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "qsh.keygen", *args], stdin=subprocess.DEVNULL,
        capture_output=True, text=True, cwd=ROOT, env=env or ENV, timeout=60,
    )


def assert_one_line_failure(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qsh-keygen: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def plain_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One unencrypted key shared by the read-only tests (generation is the slow part)."""
    path = tmp_path_factory.mktemp("keys") / "id_mldsa65"
    result = keygen("-f", str(path), "--no-passphrase", "-C", "alice@example")
    assert result.returncode == 0, result.stderr
    return path


def test_generate_files_and_modes(plain_key: Path) -> None:
    pub = plain_key.with_name("id_mldsa65.pub")
    assert plain_key.stat().st_mode & 0o777 == 0o600
    assert pub.stat().st_mode & 0o777 == 0o644
    key = HostKey.load(plain_key)
    assert key.public.algorithm == "mldsa65"
    assert key.check_pair()
    public, comment = PublicKey.load(pub)
    assert public.matches(key.public)
    assert comment == "alice@example"
    assert pub.read_text().startswith("qsh-mldsa65 ")


def test_generate_reports_fingerprint_and_paths(tmp_path: Path) -> None:
    path = tmp_path / "k"
    result = keygen("-f", str(path), "-N", "", "-t", "mldsa87", "-C", "ops key")
    assert result.returncode == 0, result.stderr
    public, _ = PublicKey.load(tmp_path / "k.pub")
    assert public.algorithm == "mldsa87"
    assert f"{tmp_path / 'k.pub'}" in result.stdout
    assert f"{public.fingerprint()} ops key (mldsa87)" in result.stdout
    assert HostKey.load(path).public.matches(public)  # -N '' means unencrypted


def test_default_comment_is_user_at_host(tmp_path: Path) -> None:
    import getpass
    import socket

    assert keygen("-f", str(tmp_path / "k"), "--no-passphrase").returncode == 0
    _, comment = PublicKey.load(tmp_path / "k.pub")
    assert comment == f"{getpass.getuser()}@{socket.gethostname()}"


def test_passphrase_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "enc"
    result = keygen("-f", str(path), "-N", "correct horse", "-C", "c")
    assert result.returncode == 0, result.stderr
    assert "correct horse" not in result.stdout + result.stderr
    with pytest.raises(PassphraseRequired):
        HostKey.load(path)
    with pytest.raises(KeyFileError, match="incorrect passphrase"):
        HostKey.load(path, b"wrong")
    key = HostKey.load(path, b"correct horse")
    assert key.public.matches(PublicKey.load(tmp_path / "enc.pub")[0])
    # -l and -y need no passphrase: the public half is stored in the clear.
    listed = keygen("-l", "-f", str(path))
    assert listed.returncode == 0 and listed.stdout.split()[0] == key.public.fingerprint()
    shown = keygen("-y", "-f", str(path))
    assert shown.returncode == 0
    assert PublicKey.parse_line(shown.stdout)[0].matches(key.public)


def test_fingerprint_of_private_and_public_files(plain_key: Path) -> None:
    expected = PublicKey.load(plain_key.with_name("id_mldsa65.pub"))[0].fingerprint()
    for path in (plain_key, plain_key.with_name("id_mldsa65.pub")):
        result = keygen("-l", "-f", str(path))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{expected} alice@example (mldsa65)"


def test_print_public_line(plain_key: Path) -> None:
    result = keygen("-y", "-f", str(plain_key))
    assert result.returncode == 0, result.stderr
    assert result.stdout == plain_key.with_name("id_mldsa65.pub").read_text()
    renamed = keygen("-y", "-f", str(plain_key), "-C", "other")
    key, comment = PublicKey.parse_line(renamed.stdout)
    assert comment == "other" and key.matches(HostKey.load(plain_key).public)


def test_print_public_refuses_open_private_key(tmp_path: Path, plain_key: Path) -> None:
    loose = tmp_path / "loose"
    loose.write_bytes(plain_key.read_bytes())
    loose.chmod(0o644)
    assert_one_line_failure(keygen("-y", "-f", str(loose)), "too open")
    # -l only reads the public half, so it still works.
    assert keygen("-l", "-f", str(loose)).returncode == 0


def test_print_public_of_a_public_file_is_explained(plain_key: Path) -> None:
    pub = plain_key.with_name("id_mldsa65.pub")
    assert_one_line_failure(keygen("-y", "-f", str(pub)), "not a private key file")


def test_refuses_to_overwrite_without_terminal(plain_key: Path) -> None:
    before = plain_key.read_bytes(), plain_key.with_name("id_mldsa65.pub").read_bytes()
    result = keygen("-f", str(plain_key), "--no-passphrase")
    assert_one_line_failure(result, "already exists")
    assert (plain_key.read_bytes(), plain_key.with_name("id_mldsa65.pub").read_bytes()) == before


def test_refuses_to_prompt_without_terminal(tmp_path: Path) -> None:
    assert_one_line_failure(keygen("-f", str(tmp_path / "k")), "-N or --no-passphrase")
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("-l", "-y"), "cannot be used together"),
        (("-N", "x", "--no-passphrase"), "cannot be used together"),
        (("-t", "rsa"), "-t"),
        (("--bogus",), "bogus"),
    ],
)
def test_usage_errors(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    assert_one_line_failure(keygen("-f", str(tmp_path / "k"), *args), needle)
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize("flag", ["-l", "-y"])
def test_missing_or_malformed_file(tmp_path: Path, flag: str) -> None:
    assert_one_line_failure(keygen(flag, "-f", str(tmp_path / "absent")), "absent")
    junk = tmp_path / "junk"
    junk.write_text("not a key\n")
    junk.chmod(0o600)
    assert_one_line_failure(keygen(flag, "-f", str(junk)), "junk")


def test_missing_directory_is_one_line(tmp_path: Path) -> None:
    assert_one_line_failure(
        keygen("-f", str(tmp_path / "no" / "such" / "k"), "--no-passphrase"), "cannot write"
    )


def test_default_location(tmp_path: Path) -> None:
    env = {**ENV, "HOME": str(tmp_path)}
    result = keygen("--no-passphrase", env=env)
    assert result.returncode == 0, result.stderr
    directory = tmp_path / ".qsh"
    assert directory.stat().st_mode & 0o777 == 0o700
    assert (directory / "id_mldsa65").stat().st_mode & 0o777 == 0o600
    assert (directory / "id_mldsa65.pub").exists()
    listed = keygen("-l", env=env)  # -l defaults to the same file
    assert listed.returncode == 0
    assert listed.stdout.split()[0] == HostKey.load(directory / "id_mldsa65").public.fingerprint()


# -- on a terminal --------------------------------------------------------------------------


def _spawn(*args: str) -> PtyProcess:
    return PtyProcess.spawn([sys.executable, "-m", "qsh.keygen", *args], cwd=str(ROOT), env=ENV,
                            dimensions=(24, 80))


def _passphrases(proc: PtyProcess, first: str, second: str) -> bytes:
    seen = read_until(proc, b"Enter passphrase (empty for no passphrase):")
    assert not termios.tcgetattr(proc.fd)[3] & termios.ECHO
    proc.write(first.encode() + b"\n")
    seen += read_until(proc, b"Enter same passphrase again:")
    assert not termios.tcgetattr(proc.fd)[3] & termios.ECHO
    proc.write(second.encode() + b"\n")
    return seen + read_to_eof(proc, 30)


def test_tty_passphrase_prompts(tmp_path: Path) -> None:
    path = tmp_path / "k"
    proc = _spawn("-f", str(path), "-C", "c")
    output = _passphrases(proc, "tty secret", "tty secret")
    assert proc.exitstatus == 0, output
    assert b"tty secret" not in output
    assert HostKey.load(path, b"tty secret").public.matches(PublicKey.load(f"{path}.pub")[0])


def test_tty_passphrase_mismatch_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "k"
    proc = _spawn("-f", str(path))
    output = _passphrases(proc, "one", "two")
    assert proc.exitstatus == 1
    assert b"qsh-keygen: passphrases do not match" in output
    assert not path.exists() and not Path(f"{path}.pub").exists()


@pytest.mark.parametrize(("answer", "replaced"), [(b"n", False), (b"y", True)])
def test_tty_overwrite_question(tmp_path: Path, answer: bytes, replaced: bool) -> None:
    path = tmp_path / "k"
    assert keygen("-f", str(path), "--no-passphrase").returncode == 0
    before = path.read_bytes()
    proc = _spawn("-f", str(path), "--no-passphrase")
    read_until(proc, b"Overwrite (y/n)?")
    proc.write(answer + b"\n")
    output = read_to_eof(proc, 30)
    assert proc.exitstatus == (0 if replaced else 1), output
    assert (path.read_bytes() != before) is replaced
    if not replaced:
        assert b"qsh-keygen: " in output and b"not overwritten" in output


# --- known_hosts: -F and -R, as ssh-keygen ------------------------------------------------


def _known_hosts(tmp_path: Path, plain_key: Path) -> tuple[Path, str]:
    line = PublicKey.load(plain_key.with_name(plain_key.name + ".pub"))[0].openssh_line("")
    body = line.strip()  # "qsh-<alg> <base64>"
    path = tmp_path / "known_hosts"
    path.write_text(f"# mine\nweb1,[10.0.0.1]:2200 {body}\n[127.0.0.1]:2222 {body}\n")
    return path, body


def test_dash_F_shows_a_hosts_lines_with_their_numbers(tmp_path: Path, plain_key: Path) -> None:
    path, body = _known_hosts(tmp_path, plain_key)
    result = keygen("-f", str(path), "-F", "[127.0.0.1]:2222")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"# Host [127.0.0.1]:2222 found: line 3\n[127.0.0.1]:2222 {body}\n"
    missing = keygen("-f", str(path), "-F", "nowhere")
    assert_one_line_failure(missing, f"host nowhere not found in {path}")


def test_dash_R_takes_out_only_that_host(tmp_path: Path, plain_key: Path) -> None:
    """From a line shared with another host only the name goes; the rest of the file stays,
    and the old contents are kept as FILE.old."""
    path, body = _known_hosts(tmp_path, plain_key)
    before = path.read_text()
    result = keygen("-f", str(path), "-R", "web1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"# Host web1 found: line 2\n{path} updated.\n"
                             f"Original contents retained as {path}.old\n")
    assert path.read_text() == (f"# mine\n[10.0.0.1]:2200 {body}\n"
                                f"[127.0.0.1]:2222 {body}\n")
    assert (tmp_path / "known_hosts.old").read_text() == before
    again = keygen("-f", str(path), "-R", "web1")
    assert again.returncode == 0 and again.stdout == f"Host web1 not found in {path}\n"


@pytest.mark.parametrize("host", ["[127.0.0.1]", "[::1]:", ""])
def test_dash_R_refuses_a_malformed_host(tmp_path: Path, plain_key: Path, host: str) -> None:
    path, _body = _known_hosts(tmp_path, plain_key)
    before = path.read_text()
    assert_one_line_failure(keygen("-f", str(path), "-R", host), "is not a host name")
    assert path.read_text() == before


# --- issue 14: hashed host names --------------------------------------------------------


def test_dash_H_hashes_plain_names_and_keeps_wildcards(tmp_path: Path, plain_key: Path) -> None:
    from common.accounts.known_hosts import KnownHosts

    path, body = _known_hosts(tmp_path, plain_key)
    with path.open("a") as f:
        f.write(f"*.corp.example {body}\n")
    before = path.read_text()
    key = PublicKey.parse_line(body)[0]
    result = keygen("-f", str(path), "-H")
    assert result.returncode == 0, result.stderr
    assert "1 line(s) with wildcards or negation left unhashed" in result.stderr
    assert (tmp_path / "known_hosts.old").read_text() == before
    text = path.read_text()
    assert "web1" not in text and "127.0.0.1" not in text and "10.0.0.1" not in text
    assert text.startswith("# mine\n") and f"*.corp.example {body}\n" in text
    assert text.count("|1|") == 3  # "web1,[10.0.0.1]:2200" became two lines
    known = KnownHosts.load(path)
    for host, port in (("web1", 2022), ("127.0.0.1", 2222),
                       ("10.0.0.1", 2200), ("x.corp.example", 2022)):
        assert known.check(host, port, key) == "match", host
    assert known.check("web3", 2022, key) == "unknown"
    again = keygen("-f", str(path), "-H")  # nothing left to hash: unchanged
    assert again.returncode == 0 and path.read_text() == text
    found = keygen("-f", str(path), "-F", "web1")
    assert found.returncode == 0 and "|1|" in found.stdout
    removed = keygen("-f", str(path), "-R", "web1")
    assert removed.returncode == 0
    assert KnownHosts.load(path).check("web1", 2022, key) == "unknown"
    assert KnownHosts.load(path).check("127.0.0.1", 2222, key) == "match"


def test_hashed_names_are_openssh_compatible(tmp_path: Path, plain_key: Path) -> None:
    """A line hashed by OpenSSH's ssh-keygen -H is found by qsh, and one hashed by qsh is
    found by ssh-keygen -F: the format is OpenSSH's |1|salt|HMAC-SHA1."""
    import shutil

    from common.accounts.patterns import hash_host, patterns_match

    if shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH's ssh-keygen is not installed")
    ed25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    theirs = tmp_path / "openssh_known_hosts"
    theirs.write_text(f"[db.example]:2222 {ed25519}\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(theirs)], check=True, capture_output=True)
    hashed = theirs.read_text().split()[0]
    assert hashed.startswith("|1|")
    assert patterns_match((hashed,), ("[db.example]:2222",))
    assert not patterns_match((hashed,), ("[db.example]:2223",))
    ours = tmp_path / "ours"
    ours.write_text(f"{hash_host('web.example')} {ed25519}\n")
    found = subprocess.run(["ssh-keygen", "-F", "web.example", "-f", str(ours)],
                           capture_output=True, text=True)
    assert found.returncode == 0 and "web.example" in found.stdout
