"""qsh as a drop-in for ssh under the programs that run it: ssh_config's keywords and ssh's
flags understood, ``qsh -G``, SendEnv/SetEnv against qshd's AcceptEnv, and git, rsync,
OpenSSH's sftp and scp over a real qshd on loopback.

End to end, one daemon serves the module and the tests log in as a throwaway account (root
is needed to make it). The client runs with ``HOME`` in a temporary directory holding
``~/.qsh/config`` with a ``Host qtest`` block, and ``PATH`` starting with a directory whose
``qsh`` runs this checkout (``tests/daemon.py``): so the tools are run exactly as the
README tells users to.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Env, account_daemon

from common.client.config import ConfigError, dump, environment_to_send, resolve

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

#: What Ansible's ssh connection plugin passes by default (ansible-core 2.16), with the
#: options it adds for a key login.
ANSIBLE_ARGS = ["-C", "-o", "ControlMaster=auto", "-o", "ControlPersist=60s",
                "-o", "KbdInteractiveAuthentication=no",
                "-o", "PreferredAuthentications=gssapi-with-mic,gssapi-keyex,hostbased,publickey",
                "-o", "PasswordAuthentication=no", "-o", "ConnectTimeout=10",
                "-o", "ControlPath=/tmp/ansible-cp/%C"]

#: Every ssh_config(5) keyword (OpenSSH 9.x), with a value it accepts.
OPENSSH_KEYWORDS = """AddKeysToAgent no|AddressFamily any|BatchMode yes|BindAddress 127.0.0.1
BindInterface lo|CanonicalDomains example.com|CanonicalizeFallbackLocal yes
CanonicalizeHostname no|CanonicalizeMaxDots 1|CanonicalizePermittedCNAMEs *:*
CASignatureAlgorithms ssh-ed25519|CertificateFile ~/.ssh/c|ChannelTimeout session=1m
CheckHostIP no|Ciphers aes256gcm|ClearAllForwardings no|Compression yes
ConnectionAttempts 2|ConnectTimeout 5|ControlMaster auto|ControlPath ~/.ssh/%C
ControlPersist 10m|DynamicForward 1080|EnableEscapeCommandline no|EnableSSHKeysign no
EscapeChar ~|ExitOnForwardFailure yes|FingerprintHash sha256|ForkAfterAuthentication no
ForwardAgent no|ForwardX11 no|ForwardX11Timeout 1h|ForwardX11Trusted no|GatewayPorts no
GlobalKnownHostsFile /etc/ssh/ssh_known_hosts|GSSAPIAuthentication no
GSSAPIDelegateCredentials no|HashKnownHosts no|HostbasedAcceptedAlgorithms ssh-ed25519
HostbasedAuthentication no|HostKeyAlgorithms ssh-ed25519|HostKeyAlias x|HostName h
IdentitiesOnly yes|IdentityAgent none|IdentityFile ~/.qsh/id|IgnoreUnknown Foo
IPQoS lowdelay|KbdInteractiveAuthentication no|KbdInteractiveDevices pam
KexAlgorithms curve25519-sha256|KnownHostsCommand none|LocalCommand true
LocalForward 8080 h:80|LogLevel INFO|LogVerbose kex.c:*|MACs hmac-sha2-256
NoHostAuthenticationForLocalhost no|NumberOfPasswordPrompts 3|ObscureKeystrokeTiming yes
PasswordAuthentication yes|PermitLocalCommand no|PermitRemoteOpen any|PKCS11Provider none
Port 22|PreferredAuthentications publickey,password|ProxyCommand none|ProxyJump none
ProxyUseFdpass no|PubkeyAcceptedAlgorithms ssh-ed25519|PubkeyAuthentication yes
RekeyLimit 1G|RemoteCommand uptime|RemoteForward 8080 h:80|RequestTTY auto
RequiredRSASize 2048|RevokedHostKeys /dev/null|SecurityKeyProvider internal
SendEnv LANG LC_*|ServerAliveCountMax 3|ServerAliveInterval 10|SessionType default
SetEnv A=b|StdinNull no|StreamLocalBindMask 0177|StreamLocalBindUnlink no
StrictHostKeyChecking ask|SyslogFacility USER|Tag t|TCPKeepAlive yes|Tunnel no
TunnelDevice any:any|UpdateHostKeys no|User u|UserKnownHostsFile ~/.qsh/kh
VerifyHostKeyDNS no|VisualHostKey no|XAuthLocation /usr/bin/xauth"""


def _run_qsh(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([PYTHON, "-m", "qsh", *args], capture_output=True, text=True,
                          cwd=ROOT, env=environ, timeout=60, stdin=subprocess.DEVNULL)


# --- Keywords and flags ---------------------------------------------------------------------


@pytest.mark.parametrize("line", [k for row in OPENSSH_KEYWORDS.splitlines()
                                  for k in row.split("|")])
def test_every_openssh_keyword_is_understood(line: str, tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(f"Host *\n  {line}\n")
    resolve("web1", path=config)


def test_a_typo_is_still_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown keyword ControlMastr"):
        resolve("web1", path=Path("none"), options=["ControlMastr=auto"])


def test_ansibles_default_arguments_are_accepted_and_explained(tmp_path: Path) -> None:
    result = _run_qsh("-G", "-F", "none", *ANSIBLE_ARGS, "web1", home=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "passwordauthentication no" in lines
    assert "preferredauthentications publickey" in lines
    assert "connecttimeout 10" in lines
    assert "compression yes" in lines
    cfg = resolve("web1", path=Path("none"), options=[
        a for a in ANSIBLE_ARGS if a not in ("-o", "-C")])
    assert (cfg.control_master, cfg.control_persist) == ("auto", 60)  # tests/test_control.py
    assert "controlpath /tmp/ansible-cp/" in result.stdout
    assert any(n.startswith("KbdInteractiveAuthentication no: ignored") for n in cfg.notes)


def test_dash_G_prints_the_effective_configuration(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host alias\n  HostName 127.0.0.9\n  Port 2200\n  SendEnv GIT_*\n"
                      "Host *\n  User carol\n  SetEnv A=1\n")
    result = _run_qsh("-G", "-F", str(config), "-p", "2300", "alias", home=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for expected in ("host alias", "hostname 127.0.0.9", "port 2300", "user carol",
                     "sendenv GIT_*", "setenv A=1", "batchmode no"):
        assert expected in lines, (expected, lines)


def test_sshs_dash_T_is_no_pty_unless_a_tunnel_follows(tmp_path: Path) -> None:
    result = _run_qsh("-G", "-F", "none", "-qT", "git@web1", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "requesttty no" in result.stdout.splitlines()
    assert "user git" in result.stdout.splitlines()
    tunnel = _run_qsh("-G", "-F", "none", "-T", "8080:localhost:80", "web1", home=tmp_path)
    assert tunnel.returncode == 0, tunnel.stderr
    assert "requesttty auto" in tunnel.stdout.splitlines()


def test_sshs_flags(tmp_path: Path) -> None:
    """Each of ssh's flags is implemented, accepted with a -v line, or refused with why."""
    ok = _run_qsh("-G", "-F", "none", "-a", "-A", "-x", "-X", "-Y", "-k", "-K", "-g", "-y",
                  "-M", "-n", "-C", "-S", "/tmp/ctl", "-m", "hmac-sha2-256", "-B", "lo",
                  "-b", "127.0.0.1", "-c", "chacha20poly1305", "-e", "none", "web1",
                  home=tmp_path)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert {"bindaddress 127.0.0.1", "ciphers chacha20poly1305", "escapechar none",
            "compression yes"} <= set(lines)
    assert "controlpath /tmp/ctl" in lines and "controlmaster yes" in lines
    for flag, why in (("-W", "host:port expected"),
                      ("-w", "tun/tap"), ("-O", "no ControlPath")):
        refused = _run_qsh("-F", "none", flag, "x", "web1", home=tmp_path)
        assert refused.returncode == 255 and why in refused.stderr, refused.stderr


def test_send_env_selects_by_pattern() -> None:
    cfg = resolve("web1", path=Path("none"), options=["SendEnv=GIT_* LANG", "SetEnv=X=1"])
    sent = environment_to_send(cfg, {"GIT_PROTOCOL": "version=2", "LANG": "C", "HOME": "/"})
    assert sent == [("GIT_PROTOCOL", "version=2"), ("LANG", "C"), ("X", "1")]
    removed = resolve("web1", path=Path("none"), options=["SendEnv=GIT_*", "SendEnv=-GIT_*"])
    assert removed.send_env == []
    assert "sendenv" not in "\n".join(dump(removed))


# --- End to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with account_daemon(["AcceptEnv=LANG GIT_PROTOCOL QX_*"]) as daemon:
        yield daemon


def test_send_env_and_set_env_reach_the_session_when_accepted(env: Env) -> None:
    result = env.run("qsh", "-o", "SendEnv=QX_* NOPE_*", "-o", "SetEnv=QX_SET=2 OTHER=3",
                     "qtest", 'echo "$QX_ONE/$QX_SET/${NOPE_X-unset}/${OTHER-unset}"',
                     QX_ONE="1", NOPE_X="x")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1/2/unset/unset\n"


def test_password_authentication_no_asks_nothing(env: Env, tmp_path: Path) -> None:
    """With no usable key, PasswordAuthentication=no (as Ansible passes it) fails at once."""
    result = env.run("qsh", "-o", "PubkeyAuthentication=no", "-o", "PasswordAuthentication=no",
                     "qtest", "true")
    assert result.returncode == 255
    assert "permission denied" in result.stderr and "password:" not in result.stderr


def test_connection_attempts_retries_a_refused_connect(env: Env) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    started = time.monotonic()
    result = env.run("qsh", "-v", "-p", str(closed), "-o", "ConnectionAttempts=2", "qtest",
                     "true")
    assert result.returncode == 255
    assert "(attempt 2)" in result.stderr and time.monotonic() - started >= 1.0


def _make_repository(env: Env) -> Path:
    bare = env.home / "repo.git"
    env.as_user("git", "init", "-q", "--bare", str(bare))
    return bare


def test_git_protocol_v2_with_a_port_in_an_ssh_url(env: Env, tmp_path: Path) -> None:
    """git with GIT_SSH_COMMAND=qsh: its -G probe finds ssh's options, so ssh:// URLs
    with a port work, and SendEnv=GIT_PROTOCOL gets protocol v2 (the server's AcceptEnv)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    bare = _make_repository(env)
    url = f"ssh://qtest:{env.port}{bare}"
    work = tmp_path / "work"
    work.mkdir()
    git = {"GIT_SSH_COMMAND": "qsh", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    assert env.run("git", "init", "-q", str(work), **git).returncode == 0
    for n in range(3):
        (work / "f").write_text(f"version {n}\n")
        env.run("git", "add", "f", cwd=work, **git)
        assert env.run("git", "commit", "-qm", f"c{n}", cwd=work, **git).returncode == 0
    pushed = env.run("git", "push", "-q", url, "HEAD:refs/heads/main", cwd=work, **git)
    assert pushed.returncode == 0, pushed.stderr
    clone = tmp_path / "clone"
    cloned = env.run("git", "-c", "protocol.version=2", "clone", "-q", "-b", "main", url,
                     str(clone), GIT_TRACE_PACKET="1", **git)
    assert cloned.returncode == 0, cloned.stderr
    assert "< version 2" in cloned.stderr  # the server spoke protocol v2
    log = env.run("git", "log", "--format=%s", cwd=clone).stdout.split()
    assert log == ["c2", "c1", "c0"]
    # Both ways, with the variant given as git's documentation tells users.
    (work / "f").write_text("version 3\n")
    env.run("git", "commit", "-qam", "c3", cwd=work, **git)
    assert env.run("git", "push", "-q", url, "HEAD:refs/heads/main", cwd=work,
                   **git).returncode == 0
    fetched = env.run("git", "pull", "-q", url, "main", cwd=clone, GIT_SSH_VARIANT="ssh", **git)
    assert fetched.returncode == 0, fetched.stderr
    assert (clone / "f").read_text() == "version 3\n"


def test_rsync_up_down_and_incremental(env: Env, tmp_path: Path) -> None:
    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed")
    source = tmp_path / "src"
    source.mkdir()
    for n in range(5):
        (source / f"f{n}").write_bytes(os.urandom(50_000 + n))
    up = env.run("rsync", "-a", "-e", "qsh", f"{source}/", "qtest:data/")
    assert up.returncode == 0, up.stderr
    (source / "f2").write_bytes(os.urandom(1000))
    again = env.run("rsync", "-a", "--stats", "-e", "qsh", f"{source}/", "qtest:data/")
    assert again.returncode == 0, again.stderr
    assert "Number of regular files transferred: 1" in again.stdout, again.stdout
    down = tmp_path / "down"
    got = env.run("rsync", "-a", "-e", "qsh", "qtest:data/", f"{down}/")
    assert got.returncode == 0, got.stderr
    for n in range(5):
        assert (down / f"f{n}").read_bytes() == (source / f"f{n}").read_bytes()


def test_qsh_dash_s_starts_the_sftp_subsystem_and_refuses_unknown_ones(env: Env) -> None:
    if not Path("/usr/lib/openssh/sftp-server").exists():
        pytest.skip("OpenSSH's sftp-server is not installed (apt-get install openssh-sftp-server)")
    # An SSH_FXP_INIT (version 3): sftp-server answers SSH_FXP_VERSION (type 2). Its stdin
    # stays open until the answer is read: sftp-server drops pending output at EOF.
    init = b"\x00\x00\x00\x05\x01\x00\x00\x00\x03"
    process = subprocess.Popen(["qsh", "-s", "qtest", "sftp"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env.environ(), cwd=env.client_home)
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(init)
        process.stdin.flush()
        answer = process.stdout.read(5)
        process.stdin.close()
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()
    assert answer[4:5] == b"\x02", answer
    unknown = env.run("qsh", "-s", "qtest", "nosuch")
    assert unknown.returncode == 255 and "refused to start the subsystem" in unknown.stderr


def test_openssh_sftp_and_scp_over_qsh(env: Env, tmp_path: Path) -> None:
    if shutil.which("sftp") is None or shutil.which("scp") is None:
        pytest.skip("OpenSSH's sftp and scp are not installed (apt-get install openssh-client)")
    if not Path("/usr/lib/openssh/sftp-server").exists():
        pytest.skip("OpenSSH's sftp-server is not installed (apt-get install openssh-sftp-server)")
    data = os.urandom(300_000)
    (tmp_path / "up.bin").write_bytes(data)
    batch = tmp_path / "batch"
    batch.write_text(f"put {tmp_path / 'up.bin'} s.bin\nget s.bin {tmp_path / 'back.bin'}\n")
    sftp = env.run("sftp", "-S", "qsh", "-b", str(batch), "qtest")
    assert sftp.returncode == 0, sftp.stderr
    assert (tmp_path / "back.bin").read_bytes() == data
    assert (env.home / "s.bin").stat().st_uid == pwd.getpwnam(env.user).pw_uid
    up = env.run("scp", "-S", "qsh", str(tmp_path / "up.bin"), "qtest:c.bin")
    assert up.returncode == 0, up.stderr
    down = env.run("scp", "-S", "qsh", "qtest:c.bin", str(tmp_path / "c.bin"))
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "c.bin").read_bytes() == data
