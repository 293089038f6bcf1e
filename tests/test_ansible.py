"""Ansible drives a host through qsh, with its stock ``ssh`` connection plugin.

Ansible is the biggest user of ssh that nobody types: a process per task, per host, with
its own default arguments (``-C``, ``ControlMaster=auto``, ``ControlPersist=60s``,
``KbdInteractiveAuthentication=no``, ...) that qsh must take as ssh does. The inventory here
is what the README tells users to write: ``ansible_ssh_executable=qsh`` for the commands and
``-S qsh`` for OpenSSH's sftp and scp, which Ansible runs for its file transfers. Each
transfer method (sftp, scp, piped) runs a playbook that pings, runs a command, copies a
10 MB file up, fetches it back and compares checksums at both ends; all of a playbook's
qsh runs share one connection (Ansible's ControlMaster=auto and ControlPersist=60s).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Env, account_daemon

pytest.importorskip("ansible", reason="ansible-core is a test dependency: pip install '.[test]'")

pytestmark = pytest.mark.slow

#: The managed host's Python, run as the throwaway account: the distribution's, since the
#: test's own interpreter may live where that account cannot read (a venv under /root).
REMOTE_PYTHON = "/usr/bin/python3"

PLAYBOOK = """\
- hosts: qtest
  gather_facts: false
  tasks:
    - ping:
    - command: id -un
      register: who
    - copy:
        src: "{source}"
        dest: "{home}/big.bin"
        mode: "0600"
      register: sent
    - stat:
        path: "{home}/big.bin"
        checksum_algorithm: sha256
      register: remote
    - fetch:
        src: "{home}/big.bin"
        dest: "{fetched}"
        flat: true
    - copy:
        dest: "{report}"
        content: "{{{{ {{'who': who.stdout, 'sent': sent.changed,
                       'sha256': remote.stat.checksum}} | to_json }}}}"
      delegate_to: localhost
"""


def ansible_program(name: str) -> str:
    """The ansible command installed beside this interpreter (the test venv's)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not found beside {sys.executable}")
    return found


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    if not os.access(REMOTE_PYTHON, os.X_OK):
        pytest.skip(f"the managed host needs {REMOTE_PYTHON}")
    if shutil.which("sftp") is None or shutil.which("scp") is None:
        pytest.skip("OpenSSH's sftp and scp are needed for Ansible's transfers")
    with account_daemon() as daemon:
        yield daemon


def inventory(env: Env, method: str) -> Path:
    path = env.client_home / f"inventory-{method}"
    path.write_text(
        "[all]\n"
        f"qtest ansible_host=127.0.0.1 ansible_port={env.port} ansible_user={env.user} "
        f"ansible_python_interpreter={REMOTE_PYTHON} "
        "ansible_ssh_executable=qsh ansible_sftp_extra_args='-S qsh' "
        f"ansible_scp_extra_args='-S qsh' ansible_ssh_transfer_method={method}\n")
    return path


def run_ansible(env: Env, program: str, *args: str) -> str:
    result = env.run(ansible_program(program), *args, timeout=240,
                     ANSIBLE_LOCAL_TEMP=str(env.client_home / ".ansible-local"),
                     ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
                     LC_ALL="C.UTF-8")  # Ansible refuses to run in a non-UTF-8 locale
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("method", ["sftp", "scp", "piped"])
def test_a_playbook_copies_and_fetches_under_each_transfer_method(env: Env, method: str,
                                                                   tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(10 * 1024 * 1024))
    tmp_path.chmod(0o755)
    fetched, report = tmp_path / "fetched.bin", tmp_path / "report.json"
    book = tmp_path / "book.yml"
    book.write_text(PLAYBOOK.format(home=env.home, source=source, fetched=fetched, report=report))
    logins = env.logins()
    out = run_ansible(env, "ansible-playbook", "-i", str(inventory(env, method)), str(book))
    # Ansible's ControlMaster=auto/ControlPersist: its dozen qsh (and sftp/scp -S qsh) runs
    # share one connection, the module's first login (or none, if an earlier test's master
    # persists).
    assert env.logins() - logins <= 1, env.log.read_text()[-2000:]
    assert "failed=0" in out and "unreachable=0" in out, out
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    facts = json.loads(report.read_text())
    assert facts == {"who": env.user, "sent": True, "sha256": digest}
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == digest
    on_host = env.home / "big.bin"
    assert hashlib.sha256(on_host.read_bytes()).hexdigest() == digest
    assert on_host.stat().st_uid == pwd.getpwnam(env.user).pw_uid
