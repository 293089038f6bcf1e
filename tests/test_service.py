"""qshd as a system service: ``qshd --install-service`` into a temporary root, the unit
checked by ``systemd-analyze verify``, the sample configuration, and the SysV init script
driven for real (start, status, reload, stop, and a start that fails)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.accounts.keys import HostKey
from qshd.config import ServerConfig, parse

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "qshd", "--install-service", "--root", str(root),
                           *args], capture_output=True, text=True, timeout=120, env=ENV,
                          cwd=ROOT)


def test_install_service_into_a_root(tmp_path: Path) -> None:
    """Everything in place with the right modes, the unit naming this installation's qshd;
    a second run keeps the administrator's files and rewrites only the unit."""
    done = install(tmp_path, "--init", "systemd")
    assert done.returncode == 0, done.stderr
    etc = tmp_path / "etc" / "qsh"
    unit = tmp_path / "etc" / "systemd" / "system" / "qshd.service"
    assert stat.S_IMODE((etc / "passwd").stat().st_mode) == 0o600
    assert stat.S_IMODE((etc / "host_key").stat().st_mode) == 0o600
    assert (etc / "qshd_config").read_bytes() == (ROOT / "initrc" / "qshd_config").read_bytes()
    HostKey.load(etc / "host_key")
    exec_start = re.search(r"^ExecStart=(\S+) ", unit.read_text(), re.M)
    assert exec_start is not None
    daemon = Path(exec_start.group(1))
    assert daemon.name == "qshd" and os.access(daemon, os.X_OK), daemon
    assert "/usr/local/bin/qshd" not in unit.read_text() or daemon == Path("/usr/local/bin/qshd")
    assert (tmp_path / "usr/local/share/man/man8/qshd.8").exists()
    # Again: nothing of the administrator's is replaced.
    (etc / "qshd_config").write_text("Port 2200\n")
    key_before = (etc / "host_key").read_bytes()
    again = install(tmp_path, "--init", "systemd")
    assert again.returncode == 0, again.stderr
    assert (etc / "qshd_config").read_text() == "Port 2200\n"
    assert (etc / "host_key").read_bytes() == key_before
    assert f"kept {etc / 'qshd_config'}" in again.stderr


def test_the_installed_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    assert install(tmp_path, "--init", "systemd").returncode == 0
    unit = tmp_path / "etc" / "systemd" / "system" / "qshd.service"
    # --man=no: the pages went under the temporary root, where man does not look.
    checked = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                             text=True, timeout=120, cwd=tmp_path)
    assert checked.returncode == 0 and "qshd.service" not in checked.stderr, checked.stderr


def _config_source() -> str:
    """qshd/config/, where the keyword table and the grammar's keywords live."""
    return "".join(p.read_text() for p in sorted((ROOT / "qshd" / "config").glob("*.py")))


def test_the_sample_config_shows_every_keyword_at_its_default() -> None:
    """Uncommented, the sample must parse to the defaults; and no keyword qshd knows may be
    missing from it."""
    text = (ROOT / "initrc" / "qshd_config").read_text()
    shown = {m.group(1).lower() for m in re.finditer(r"^#\s?([A-Z][A-Za-z]+)", text, re.M)}
    known = set(re.findall(r'keyword == "([a-z]+)"', _config_source()))
    assert known and not known - shown, f"missing from the sample: {sorted(known - shown)}"
    uncommented = "\n".join(line[1:] if re.match(r"#[A-Z]", line) else line
                            for line in text.splitlines())
    parsed, default = parse(uncommented), ServerConfig()
    assert parsed.port == default.port and parsed.listen_addresses == default.listen_addresses
    assert parsed.admission_settings() == default.admission_settings()
    assert parsed.transport_settings() == default.transport_settings()
    for name in ("allow_chaff", "privsep_user", "authorized_keys_files", "permit_root_login",
                 "password_authentication", "pubkey_authentication", "max_auth_tries",
                 "login_grace_time", "tunnel_policy", "first_message_timeout"):
        assert getattr(parsed, name) == getattr(default, name), name


def test_every_keyword_is_documented_in_qshd_config_5_and_printed_by_dash_T() -> None:
    """qshd_config(5) holds the configuration reference (qshd(8) points to it): each keyword
    qshd knows has an entry there, and ``qshd -T`` prints each one (Include and Match are
    structure, not settings)."""
    from qshd.config import dump

    known = set(re.findall(r'keyword == "([a-z]+)"', _config_source()))
    page = (ROOT / "man" / "qshd_config.5").read_text()
    documented = {m.lower() for m in re.findall(r"\\fB([A-Za-z]+)\\fR", page)}
    for line in re.findall(r"^\.BR? (.*)$", page, re.M):
        documented |= {word.lower() for word in re.findall(r"[A-Za-z]+", line)}
    assert not known - documented, f"not in qshd_config.5: {sorted(known - documented)}"
    printed = {line.split()[0] for line in dump(ServerConfig(allow_users=("a",),
                                                             allow_groups=("g",),
                                                             deny_users=("b",),
                                                             deny_groups=("h",)))}
    missing = known - printed - {"include", "match"}
    assert not missing, f"not printed by qshd -T: {sorted(missing)}"
    assert "CONFIGURATION" in (ROOT / "man" / "qshd.8").read_text()
    assert ".B AllowChaff" not in (ROOT / "man" / "qshd.8").read_text()  # moved, not copied


# --- the SysV init script, for real --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def test_the_init_script_starts_reloads_and_stops_qshd(tmp_path: Path) -> None:
    script = tmp_path / "etc" / "init.d" / "qshd"
    assert install(tmp_path, "--init", "sysv").returncode == 0
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    wrapper = tmp_path / "qshd"  # this checkout's qshd, whatever is installed
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {PYTHON} -m qshd "$@"\n')
    wrapper.chmod(0o755)
    port = _free_port()
    config = tmp_path / "qshd_config"
    config.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path}/etc/qsh/host_key\n"
                      f"PasswdFile {tmp_path}/etc/qsh/passwd\n")
    pidfile = tmp_path / "qshd.pid"
    env = {**ENV, "QSHD_DAEMON": str(wrapper), "QSHD_CONFIG": str(config),
           "QSHD_PIDFILE": str(pidfile)}

    def run(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(script), action], capture_output=True, text=True,
                              timeout=60, env=env, stdin=subprocess.DEVNULL)

    assert run("status").returncode == 3
    started = run("start")
    try:
        assert started.returncode == 0, started.stderr
        pid = int(pidfile.read_text())
        assert _listening(port)
        status = run("status")
        assert status.returncode == 0 and f"running (pid {pid})" in status.stdout
        assert run("start").stdout == "qshd is already running\n"
        # A broken configuration is refused and the daemon carries on as it was.
        config.write_text(config.read_text() + "NoSuchKeyword yes\n")
        refused = run("reload")
        assert refused.returncode == 1 and "unknown keyword" in refused.stderr
        config.write_text("\n".join(config.read_text().splitlines()[:-1]) + "\n")
        reloaded = run("reload")
        assert reloaded.returncode == 0, reloaded.stderr
        deadline = time.monotonic() + 20  # re-executed in place: same pid, same port
        while not _listening(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _listening(port) and int(pidfile.read_text()) == pid
        os.kill(pid, 0)
    finally:
        stopped = run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not pidfile.exists() and not _listening(port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert run("status").returncode == 3
    # A port in use: start fails, with qshd's own reason.
    with socket.create_server(("127.0.0.1", port)):
        failed = run("start")
    assert failed.returncode == 1
    assert f"cannot listen on 127.0.0.1 port {port}: Address already in use" in failed.stderr
    assert not pidfile.exists()


def test_a_stop_during_a_reload_is_not_lost(tmp_path: Path) -> None:
    """``systemctl reload qshd; systemctl stop qshd`` in quick succession: the stop arrives
    while the reload's configuration check runs. The listener used to re-execute anyway,
    and the new one, knowing nothing of the stop, kept serving."""
    ready = tmp_path / "port"
    daemon = subprocess.Popen(
        [PYTHON, "-m", "qshd", "-D", "-e", "-p", "0", "-o", "ListenAddress=127.0.0.1",
         "-o", f"PasswdFile={tmp_path}/passwd", "-h", str(tmp_path / "hk"),
         "--ready-file", str(ready)], env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (ready.exists() and ready.read_text().strip()):
            assert daemon.poll() is None and time.monotonic() < deadline, "qshd did not start"
            time.sleep(0.05)
        daemon.send_signal(signal.SIGHUP)
        time.sleep(0.2)  # the check (a `qshd -t` of its own) is running now
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("the listener carried on after SIGTERM during a reload")
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.stderr is not None
    assert "listener stopped" in daemon.stderr.read()


def test_a_reload_right_after_start_is_not_fatal(tmp_path: Path) -> None:
    """``systemctl start qshd && systemctl reload qshd``: the SIGHUP can come as soon as the
    ready file (or pidfile) is there, before the listener's handlers are. It used to kill
    the daemon (SIGHUP's default action)."""
    for attempt in range(3):
        ready = tmp_path / f"port{attempt}"
        daemon = subprocess.Popen(
            [PYTHON, "-m", "qshd", "-D", "-e", "-p", "0", "-o", "ListenAddress=127.0.0.1",
             "-o", f"PasswdFile={tmp_path}/passwd", "-h", str(tmp_path / "hk"),
             "--ready-file", str(ready)], env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not (ready.exists() and ready.read_text().strip()):
                assert daemon.poll() is None and time.monotonic() < deadline
                time.sleep(0.001)
            daemon.send_signal(signal.SIGHUP)
            port = int(ready.read_text())
            deadline = time.monotonic() + 20
            while not _listening(port) or time.monotonic() < deadline - 18:
                assert daemon.poll() is None, f"qshd died of the SIGHUP ({daemon.returncode})"
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            daemon.terminate()
            daemon.wait(timeout=20)
