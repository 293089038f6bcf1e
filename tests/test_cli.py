"""End to end: real qshd and qsh processes on 127.0.0.1, real files."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.accounts.keys import HostKey, PublicKey

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parents[1]


def _start_qshd(tmp: Path, host_key: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    """A daemon that lets this test's user in with :func:`_user_key` (AuthorizedKeysFile
    in ``tmp``; as root, PermitRootLogin allows keys only)."""
    ready = tmp / f"port-{time.monotonic_ns()}"
    authorized = tmp / "authorized_keys"
    if not authorized.exists():
        authorized.write_text(_user_key(tmp).public.openssh_line("test") + "\n")
        authorized.chmod(0o600)
    process = subprocess.Popen(
        [PYTHON, "-m", "qshd", "-D", "-e", "-p", "0", "-o", "ListenAddress=127.0.0.1",
         "-h", str(host_key), "-o", f"AuthorizedKeysFile={authorized}",
         "-o", "PermitRootLogin=prohibit-password", "-o", f"PasswdFile={tmp / 'passwd'}",
         "--ready-file", str(ready), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ready.exists() and ready.read_text().strip():
            return process, ready.read_text().strip()
        if process.poll() is not None:
            raise AssertionError(f"qshd exited: {process.stderr.read().decode()}")  # type: ignore[union-attr]
        time.sleep(0.05)
    process.kill()
    raise AssertionError("qshd did not start")


def _user_key(tmp: Path) -> HostKey:
    """This test directory's user key, in ``tmp/id_test`` (made on first use)."""
    path = tmp / "id_test"
    if not path.exists():
        HostKey.generate("mldsa65", now=time.time()).save(path)
    return HostKey.load(path)


def _stop(process: subprocess.Popen[bytes]) -> str:
    process.terminate()
    _, err = process.communicate(timeout=20)
    return err.decode()


@pytest.fixture()
def daemon(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    process, port = _start_qshd(tmp_path, tmp_path / "host_key")
    yield port, tmp_path
    _stop(process)


def _env(tmp: Path) -> dict[str, str]:
    """The client's HOME is the test's directory: the tester's ~/.qsh is left alone."""
    return {**os.environ, "HOME": str(tmp)}


def _qsh(port: str, known_hosts: Path, *args: str) -> subprocess.CompletedProcess[str]:
    tmp = known_hosts.parent
    return subprocess.run(
        [PYTHON, "-m", "qsh", "-p", port, "-i", str(tmp / "id_test"),
         "-o", f"UserKnownHostsFile={known_hosts}", *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=_env(tmp),
    )


def test_first_contact_then_known(daemon: tuple[str, Path]) -> None:
    port, tmp = daemon
    known = tmp / "known_hosts"
    first = _qsh(port, known, "-o", "StrictHostKeyChecking=accept-new", "127.0.0.1", "true")
    assert first.returncode == 0, first.stderr
    assert "permanently added" in first.stderr
    assert f"[127.0.0.1]:{port}" in known.read_text()
    fingerprint = (tmp / "host_key.pub").read_text().split()[1]
    assert fingerprint  # the daemon wrote its public key beside the private one
    second = _qsh(port, known, "-v", "-o", "StrictHostKeyChecking=yes", "127.0.0.1", "true")
    assert second.returncode == 0, second.stderr
    assert "connected to" in second.stderr and "mlkem768x25519" in second.stderr
    assert "permanently added" not in second.stderr


@pytest.mark.parametrize("answer", ["yes", "no"])
def test_first_contact_prompt_on_a_terminal(daemon: tuple[str, Path], answer: str) -> None:
    """The TOFU question is asked on the controlling terminal with the fingerprint; "yes"
    records the key, anything else refuses with 255 and records nothing."""
    ptyprocess = pytest.importorskip("ptyprocess")
    port, tmp = daemon
    known = tmp / "known_hosts"
    child = ptyprocess.PtyProcessUnicode.spawn(
        [PYTHON, "-m", "qsh", "-p", port, "-i", str(tmp / "id_test"),
         "-o", f"UserKnownHostsFile={known}", "127.0.0.1", "echo", "logged-in"],
        env=_env(tmp))
    seen = ""
    deadline = time.monotonic() + 30
    while "(yes/no)?" not in seen and time.monotonic() < deadline:
        seen += child.read(1024)
    key_blob = (tmp / "host_key.pub").read_text().split()[1]
    assert "can't be established" in seen and "(yes/no)?" in seen
    expected_fingerprint = PublicKey.load(tmp / "host_key.pub")[0].fingerprint()
    assert expected_fingerprint in seen.replace("\r\n", " ").replace("\n", " ")
    child.write(answer + "\n")
    rest = ""
    with contextlib.suppress(EOFError):
        while True:
            rest += child.read(1024)
    child.wait()
    if answer == "yes":
        assert child.exitstatus == 0, rest
        assert "logged-in" in rest and known.exists() and key_blob in known.read_text()
    else:
        assert child.exitstatus == 255, rest
        assert "host key verification failed" in rest and not known.exists()


def test_unknown_key_refused_when_strict(daemon: tuple[str, Path]) -> None:
    port, tmp = daemon
    result = _qsh(port, tmp / "known_hosts", "-o", "StrictHostKeyChecking=yes", "127.0.0.1")
    assert result.returncode == 255
    assert result.stderr.strip().endswith("StrictHostKeyChecking is yes")
    assert not (tmp / "known_hosts").exists()


def test_no_tty_and_ask_fails_cleanly(daemon: tuple[str, Path]) -> None:
    port, tmp = daemon
    result = subprocess.run(
        [PYTHON, "-m", "qsh", "-p", port, "-o", f"UserKnownHostsFile={tmp / 'kh'}",
         "127.0.0.1"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        start_new_session=True,  # no controlling terminal: the prompt cannot be asked
    )
    assert result.returncode == 255
    assert "host key verification failed" in result.stderr


def test_changed_host_key_is_a_loud_refusal(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    process, port = _start_qshd(tmp_path, tmp_path / "key_a")
    try:
        first = _qsh(port, known, "-o", "StrictHostKeyChecking=accept-new", "127.0.0.1",
                     "true")
        assert first.returncode == 0, first.stderr
    finally:
        _stop(process)
    # Same address, different key: what a man in the middle would present.
    process, port2 = _start_qshd(tmp_path, tmp_path / "key_b", )
    try:
        text = known.read_text().replace(f"[127.0.0.1]:{port}", f"[127.0.0.1]:{port2}")
        known.write_text(text)
        result = _qsh(port2, known, "-o", "StrictHostKeyChecking=accept-new", "127.0.0.1",
                      "true")
    finally:
        _stop(process)
    assert result.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr
    assert known.read_text() == text  # nothing was overwritten
    # As ssh does: the new key's fingerprint, the old key's file and line, and the command
    # that removes it -- which, run as printed, makes the next connection a first contact.
    presented = HostKey.load(tmp_path / "key_b").public.fingerprint()
    assert f"fingerprint {presented}." in result.stderr
    assert f"Offending mldsa65 key in {known}:1\n" in result.stderr
    advice = f"  qsh-keygen -f {known} -R '[127.0.0.1]:{port2}'\n"
    assert advice in result.stderr, result.stderr
    wrapper = tmp_path / "bin" / "qsh-keygen"  # this checkout's, whatever is installed
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {PYTHON} -m qsh.keygen "$@"\n')
    wrapper.chmod(0o755)
    removed = subprocess.run(advice.strip(), shell=True, capture_output=True, text=True,
                             timeout=60, env={**os.environ, "PATH": f"{tmp_path}/bin:"
                                              + os.environ["PATH"]}, cwd=ROOT)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == (f"# Host [127.0.0.1]:{port2} found: line 1\n{known} updated.\n"
                              f"Original contents retained as {known}.old\n")
    assert known.read_text() == "" and (tmp_path / "known_hosts.old").read_text() == text


def test_connection_refused_is_one_line(tmp_path: Path) -> None:
    _user_key(tmp_path)
    result = _qsh("1", tmp_path / "kh", "127.0.0.1")
    assert result.returncode == 255
    assert result.stderr == "qsh: connect to host 127.0.0.1 port 1: Connection refused\n"


def test_usage_and_config_errors_are_one_line_255(tmp_path: Path) -> None:
    """Click would exit 2 on a usage error; qsh keeps ssh's 255 for all of its own. A usage
    error is followed by the usage line, as ssh's is; a configuration error is one line."""
    for args, lines in (([], 2), (["-p"], 2), (["-Q", "host"], 2),
                        (["-o", "NoSuchOption=1", "host"], 1),
                        (["-F", str(tmp_path / "missing"), "host"], 1)):
        result = subprocess.run([PYTHON, "-m", "qsh", *args], capture_output=True, text=True,
                                timeout=60, env=_env(tmp_path))
        assert result.returncode == 255, (args, result.stderr)
        assert result.stderr.startswith("qsh: ") and result.stderr.count("\n") == lines, args
        if lines == 2:
            assert result.stderr.splitlines()[1].startswith("usage: qsh "), args


def test_qshd_config_check(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_text("Port 2222\nKEMs mlkem768x25519,mlkem1024\nCiphers aes256gcm\n")
    ok = subprocess.run([PYTHON, "-m", "qshd", "-t", "-f", str(good)], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad"
    bad.write_text("Port 2222\nKEMs rsa1024\n")
    result = subprocess.run([PYTHON, "-m", "qshd", "-t", "-f", str(bad)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and f"{bad}:2" in result.stderr
    typo = tmp_path / "typo"
    typo.write_text("Prot 22\n")
    result = subprocess.run([PYTHON, "-m", "qshd", "-t", "-f", str(typo)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and "unknown keyword" in result.stderr


def test_qshd_creates_host_key_0600_and_logs_fingerprint(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "host_key"
    process, _ = _start_qshd(tmp_path, key)
    log = _stop(process)
    assert key.stat().st_mode & 0o777 == 0o600
    fingerprint = log.split("created host key")[1].split(": ", 1)[1].split()[0]
    assert fingerprint.startswith("SHA3-256:")
    # A second start loads the same key and logs the same fingerprint.
    process, _ = _start_qshd(tmp_path, key)
    assert fingerprint in _stop(process)


def test_qcp_not_yet_available_says_so() -> None:
    result = subprocess.run([PYTHON, "-m", "qcp", "a", "b"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("qcp: ") and result.stderr.count("\n") == 1


def test_qshd_detaches_writes_its_pidfile_and_stops_cleanly(tmp_path: Path) -> None:
    """Without -D the daemon detaches (the command returns at once), records its pid, keeps
    serving, and removes the pidfile when told to stop: what initrc/qshd.init relies on."""
    import asyncio
    import os
    import signal

    from common import aio
    from common.protocol.handshake import ClientHandshake
    from common.protocol.negotiation import Offer

    pidfile, ready = tmp_path / "qshd.pid", tmp_path / "port"
    started = subprocess.run(
        [PYTHON, "-m", "qshd", "-p", "0", "-o", "ListenAddress=127.0.0.1",
         "-h", str(tmp_path / "host_key"), "--pidfile", str(pidfile), "--ready-file", str(ready)],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent,
    )
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 30
    while not (ready.exists() and ready.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    try:
        # A new session, of which it is not the leader (the double fork): it can never
        # acquire a controlling terminal.
        assert os.getsid(pid) not in (os.getsid(0), pid)
        port = int(ready.read_text())

        async def handshake() -> str:
            conn = await aio.connect("127.0.0.1", port,
                                     handshake=ClientHandshake(Offer(), None),
                                     on_host_key=lambda key: asyncio.sleep(0, True))
            assert conn.host_key is not None
            fingerprint = conn.host_key.fingerprint()
            conn.close()
            return fingerprint

        fingerprint = asyncio.run(handshake())
        assert fingerprint == PublicKey.load(tmp_path / "host_key.pub")[0].fingerprint()
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pidfile.exists()
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.05)


@pytest.mark.parametrize(("module", "program"), [
    ("qsh", "qsh"), ("qshd", "qshd"), ("qcp", "qcp"), ("qpasswd", "qpasswd"),
    ("qsh.keygen", "qsh-keygen")])
def test_every_command_has_dash_V_and_help(module: str, program: str) -> None:
    """ssh's habits: -V on stderr with exit 0; -h and --help (qshd keeps sshd's -h for a
    host key, so only --help there)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    version = subprocess.run([PYTHON, "-m", module, "-V"], capture_output=True, text=True,
                             timeout=60, env=env, cwd=ROOT)
    assert version.returncode == 0 and version.stdout == ""
    assert version.stderr.startswith(f"{program} ") and "(qsh; QSMP 1; Python 3." in \
        version.stderr and version.stderr.count("\n") == 1, version.stderr
    for flag in (["--help"] if module == "qshd" else ["-h", "--help"]):
        helped = subprocess.run([PYTHON, "-m", module, flag], capture_output=True, text=True,
                                timeout=60, env=env, cwd=ROOT)
        assert helped.returncode == 0 and helped.stdout.startswith("Usage: "), helped
