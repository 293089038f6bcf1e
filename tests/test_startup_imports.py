"""What the client programs load before they connect (issue 18: start-up cost).

Parsing a command line -- ``import qsh.cli``, ``qsh --help``, ``qcp --help``, a usage error --
must not load asyncio, the crypto libraries or our protocol stack: they cost tens of
milliseconds of CPU at every start, and are needed only once a connection is really made.
Each check runs in a fresh interpreter, so an import added at module level anywhere on the
path shows up here, whichever module adds it.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: This interpreter's library directories, for a child run without site (-S), which cannot
#: find them itself: in a venv, site is what makes sys.prefix the venv (Debian's Python
#: then offers the system's dist-packages, where click is missing or another version is).
SITE_DIRS = site.getsitepackages()
#: Loaded only once a connection is made (or a query like -Q needs them).
HEAVY = ("asyncio", "cryptography", "Crypto", "oqs", "common.crypto", "common.protocol",
         "common.aio", "common.accounts", "common.channels", "common.client.connect",
         "common.transfer", "common.forward")

#: Prints the modules loaded after running ``CODE`` (argv[1]), whatever way it exits.
_PROBE = """
import atexit, sys
atexit.register(lambda: sys.__stderr__.write("MODULES " + " ".join(sorted(sys.modules)) + "\\n"))
exec(sys.argv[1])
"""


def loaded_by(code: str, *args: str, site: bool = True, **env: str
              ) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``site=False``: without ``site`` (``-S``), so that what a machine's ``.pth`` hooks
    import (this one's load typing) is not counted; only a path that needs no third-party
    package can run so. ``env``: set in the child's environment (e.g. its HOME)."""
    flags = [] if site else ["-S"]
    result = subprocess.run([sys.executable, *flags, "-c", _PROBE, code, *args],
                            capture_output=True, text=True, timeout=60, cwd=ROOT,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), **env))
    line = next(ln for ln in result.stderr.splitlines() if ln.startswith("MODULES "))
    return result, set(line.split()[1:])


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if m.startswith(HEAVY)}


@pytest.mark.parametrize("module", ["qsh.cli", "qcp.cli"])
def test_importing_the_command_line_loads_no_protocol_or_crypto(module: str) -> None:
    _, modules = loaded_by(f"import {module}")
    assert module in modules
    assert not heavy(modules), heavy(modules)


@pytest.mark.parametrize(("module", "argv", "status", "shown"), [
    ("qsh", ["--help"], 0, "Usage: "),
    ("qsh", ["-h"], 0, "Usage: "),
    ("qcp", ["--help"], 0, "Usage: "),
    ("qsh", ["-p", "notaport", "host"], 255, "usage: qsh"),  # a usage error
    ("qcp", ["only-one-argument"], 1, "qcp: "),
])
def test_parsing_the_command_line_loads_no_protocol_or_crypto(
        module: str, argv: list[str], status: int, shown: str) -> None:
    code = (f"import runpy, sys; sys.argv[1:] = {argv!r}; "
            f"runpy.run_module({module!r}, run_name='__main__')")
    result, modules = loaded_by(code)
    assert result.returncode == status, result
    assert shown in result.stdout + result.stderr, result
    assert "click" in modules
    assert not heavy(modules), heavy(modules)


#: What a run over a shared connection must not load either: besides all of the above and
#: click, the modules that cost milliseconds to build for nothing this path needs
#: (dataclasses and inspect: a class built at import; typing; pathlib, with the urllib.parse
#: it loads: the configuration's paths are made Paths only when read; getpass, which loads
#: termios and warnings, for the user name; contextlib; common.wire and common.errors, whose
#: enums the configuration's records (common.value_record) have no use for).
NOT_ON_THE_SHARED_PATH = ("click", "dataclasses", "inspect", "typing", "pathlib", "urllib",
                          "getpass", "termios", "warnings", "contextlib",
                          "common.wire", "common.errors")


def test_a_run_over_a_shared_connection_loads_only_what_talks_to_the_master(
        tmp_path: Path) -> None:
    """qsh/entry.py's whole path up to the control socket -- the command line, the
    configuration file (a Host block, tokens, SendEnv, SetEnv) resolved, the session request
    built by mux_client.shared_session -- with only the socket itself left out (no master is
    needed to see what was imported). A module-level import of any of these on that path,
    whichever module adds it, fails here."""
    config = tmp_path / "config"
    config.write_text("Host shared-host\n  HostName 127.0.0.1\n  Port 2200\n"
                      "  ControlMaster auto\n  ControlPath ~/.qsh/cm-%C\n"
                      "  SendEnv LANG LC_*\n  SetEnv FOO=bar\n  User alice\n"
                      "  IdentityFile ~/.qsh/id_%h\n  UserKnownHostsFile ~/.qsh/kh_%h\n")
    # (said at once: qsh ends with os._exit, nothing after its main runs)
    code = ("from common.client import mux_client\n"
            "mux_client.try_session = lambda path, request, verbose: print('SHARED', [path]) or 7\n"
            "from qsh import entry\n"
            f"entry.main(['-F', {str(config)!r}, '-q', 'shared-host', 'true'])\n")
    result, modules = loaded_by(code, site=False)
    assert result.returncode == 7, result  # the path really went to the (absent) master
    assert "SHARED ['" in result.stdout, result
    shown = {m for m in modules if m.startswith(HEAVY + NOT_ON_THE_SHARED_PATH)}
    shown -= {"common.accounts", "common.accounts.patterns"}  # Host patterns, no crypto
    assert not shown, sorted(shown)


@pytest.mark.parametrize("module", ["common.channels.copy", "qsh.escapes"])
def test_the_messages_are_records_not_dataclasses(module: str) -> None:
    """qcp's sub-protocol messages (common/channels/copy.py) and the ``~`` escapes of an
    interactive session (qsh/escapes.py) are Records: the module alone (it and what it
    imports) builds no dataclass, which costs ~1 ms each at every start."""
    # -S, and the libraries' directory on the path without the machine's .pth hooks.
    code = (f"import sys; sys.path += {SITE_DIRS!r}; "
            f"import {module}")
    _, modules = loaded_by(code, site=False)
    assert module in modules
    assert "dataclasses" not in modules


def test_a_fresh_run_does_not_load_tls(tmp_path: Path) -> None:
    """A qsh run that connects by itself loads asyncio, which imports ssl when it can
    (the ssl module and OpenSSL's libssl: ~2-3 ms of CPU, ~1 MB); qsh never speaks TLS, so its
    entry tells the interpreter there is none. The run here connects to a closed port on
    127.0.0.1: asyncio is loaded, the connection refused, and what was loaded is listed."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    # -S, the libraries' directory on the path: this machine's .pth hooks load ssl themselves.
    code = (f"import sys; sys.path += {SITE_DIRS!r}\n"
            "from qsh import entry\n"
            f"entry.main(['-F', 'none', '-p', '{port}', '-o', 'ConnectTimeout=5', "
            f"'-o', 'UserKnownHostsFile={tmp_path / 'kh'}', '127.0.0.1', 'true'])\n")
    result, modules = loaded_by(code, site=False)
    assert result.returncode == 255, result
    assert "asyncio" in modules, result  # the run really went as far as connecting
    assert "_ssl" not in modules


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed once the block ends: nothing listens there


def _both_ways(argv: list[str]) -> dict[str, tuple[subprocess.CompletedProcess[str], set[str]]]:
    """The same command line through qsh/entry.py and through qsh.cli (click)."""
    runs = {}
    for module in ("entry", "cli"):
        code = (f"import sys; sys.path += {SITE_DIRS!r}\n"
                f"from qsh import {module}\n"
                f"{module}.main({argv!r})\n")
        runs[module] = loaded_by(code, site=False)
    return runs


def _shown(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if not ln.startswith("MODULES ")]


def test_a_fresh_run_does_not_load_click(tmp_path: Path) -> None:
    """The most common run, ``qsh host true`` with no master, is read with ssh's grammar
    (qsh/argv.py) and run by qsh.run without click (~6-40 ms of CPU at every start). The
    run connects to a closed port on 127.0.0.1, so it goes as far as connecting; what it
    shows (exit code, -v lines, the error) must be what qsh.cli shows for the same words."""
    argv = ["-F", "none", "-v", "-p", str(_closed_port()), "-o", "ConnectTimeout=5", "-C",
            "-xa", "-K", "-x", "-o", f"UserKnownHostsFile={tmp_path / 'kh'}", "127.0.0.1",
            "true"]
    runs = _both_ways(argv)
    (fast, fast_modules), (full, _) = runs["entry"], runs["cli"]
    assert fast.returncode == full.returncode == 255, fast
    assert "asyncio" in fast_modules, fast  # the run really went as far as connecting
    assert "click" not in fast_modules
    assert _shown(fast) == _shown(full)
    assert any("-x:" in ln for ln in _shown(fast)), fast  # -v shows the ignored flags
    assert fast.stdout == full.stdout


def test_a_plain_client_run_loads_no_handoff_or_tunnel_code(tmp_path: Path) -> None:
    """The handoff codec (common.protocol.handoff: three frozen dataclasses, ~3 ms at every
    start) is qshd's alone, which hands a logged-in connection from its pre-auth process to
    the user's; a client never loads it. The tunnel engine (qsh.tunnels, common.forward:
    ~4 ms) loads for a run with tunnels, a master, or at the first ``~C``."""
    argv = ["-F", "none", "-p", str(_closed_port()), "-o", "ConnectTimeout=5",
            "-o", f"UserKnownHostsFile={tmp_path / 'kh'}", "127.0.0.1", "true"]
    fast, modules = _both_ways(argv)["entry"]
    assert fast.returncode == 255 and "asyncio" in modules, fast  # it went as far as connecting
    assert "common.protocol.handoff" not in modules
    assert not [m for m in modules if m in ("qsh.tunnels", "common.channels.tunnel")
                or m.startswith("common.forward")]
    # Nor the control socket's client (~1.2 ms): without a ControlPath nothing is shared.
    assert not [m for m in modules if m.startswith("common.client.mux")]


def test_a_fresh_run_starts_no_subprocess_to_load_pycryptodome(tmp_path: Path) -> None:
    """pycryptodome's ctypes backend asks ``platform.architecture()`` before its first
    library, which on Linux runs ``file`` on the interpreter (a subprocess: ~3 ms of CPU, ~5
    ms of wall time); common.crypto.pycryptodome answers for it. The crypto is loaded before
    the connection, so a run to a closed port shows it."""
    argv = ["-F", "none", "-p", str(_closed_port()), "-o", "ConnectTimeout=5",
            "-o", f"UserKnownHostsFile={tmp_path / 'kh'}", "127.0.0.1", "true"]
    fast, modules = _both_ways(argv)["entry"]
    assert fast.returncode == 255 and "Crypto.Hash.keccak" in modules, fast
    assert "platform" not in modules


def test_a_fresh_run_with_the_default_algorithms_does_not_load_liboqs(tmp_path: Path) -> None:
    """With the ``oqs`` extra installed, loading liboqs costs 100-250 ms of CPU (its wrapper
    runs gcc and ldconfig to find the library); a run whose offer is all built in (the
    default) never needs it, so it never looks (for ``oqs`` or our wrapper of it: a finder
    in the probe says when either is asked for). The run goes as far as connecting, to a
    closed port on 127.0.0.1."""
    argv = ["-F", "none", "-p", str(_closed_port()), "-o", "ConnectTimeout=5",
            "-o", f"UserKnownHostsFile={tmp_path / 'kh'}", "127.0.0.1", "true"]
    code = (f"import sys; sys.path += {SITE_DIRS!r}\n"
            "class Look:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name in ('oqs', 'common.crypto.oqs'):\n"
            "            sys.stderr.write('LIBOQS LOOKED AT\\n')\n"
            "sys.meta_path.insert(0, Look())\n"
            "from qsh import entry\n"
            f"entry.main({argv!r})\n")
    result, modules = loaded_by(code, site=False)
    assert result.returncode == 255 and "asyncio" in modules, result
    assert "LIBOQS LOOKED AT" not in result.stderr
    # A name that is not built in still looks (and says what is available if it is not).
    code = code.replace("'true']", "'-o', 'KEMs=mceliece348864', 'true']")
    result, _ = loaded_by(code, site=False)
    assert "LIBOQS LOOKED AT" in result.stderr, result
    assert result.returncode == 255, result


@pytest.mark.parametrize("words", [
    ["-4", "-6"],  # a usage error found after parsing: qsh.cli reports it
    ["-s"],  # -s with a command of two words
    ["-o", "NoSuchKeyword=1"],  # an error in the configuration
    ["-o", "Port=99999"],
    ["-vvv", "-tnq", "-T", "-c", "aes256-gcm@openssh.com", "-e", "none", "-b", "127.0.0.1",
     "-i", "/nonexistent/key", "-l", "someone"],
    ["-p", "+1"],  # what click's int() takes is click's to judge
])
def test_a_fresh_run_shows_what_qsh_cli_shows(words: list[str], tmp_path: Path) -> None:
    """Whatever the fast path takes or leaves: the same exit code and the same lines."""
    argv = ["-F", "none", "-p", str(_closed_port()), "-o", "ConnectTimeout=5",
            "-o", f"UserKnownHostsFile={tmp_path / 'kh'}", *words, "127.0.0.1", "echo", "x"]
    runs = _both_ways(argv)
    (fast, _), (full, _) = runs["entry"], runs["cli"]
    assert (fast.returncode, _shown(fast), fast.stdout) == (
        full.returncode, _shown(full), full.stdout)
    assert _shown(fast), fast


def test_a_fresh_run_builds_no_dataclass(tmp_path: Path) -> None:
    """A run that connects by itself builds no dataclass at import: each costs ~0.5-1 ms
    (dataclasses generates and execs code per class) and the module itself ~1.4 ms, and
    nothing else on the path (asyncio, cryptography, pycryptodome) loads it. The protocol's
    records are common.value_record.Records or plain slotted classes instead. The run
    connects to a closed port on 127.0.0.1, so the whole stack up to the socket is loaded."""
    argv = ["-F", "none", "-p", str(_closed_port()), "-o", "ConnectTimeout=5",
            "-o", f"UserKnownHostsFile={tmp_path / 'kh'}", "127.0.0.1", "true"]
    code = (f"import sys; sys.path += {SITE_DIRS!r}\n"
            "from qsh import entry\n"
            f"entry.main({argv!r})\n")
    fast, modules = loaded_by(code, site=False)
    assert fast.returncode == 255 and "asyncio" in modules, fast  # it went as far as connecting
    assert "common.protocol.handshake" in modules and "qsh.session" in modules, fast
    assert "dataclasses" not in modules


def test_a_login_builds_no_dataclass() -> None:
    """The same through a real login (a throwaway account on a qshd of its own, key login,
    ``qtest true``): what loads after the connection is made -- the host key's check, the
    login signature, the session -- builds no dataclass either."""
    from daemon import account_daemon

    with account_daemon() as env:
        code = (f"import sys; sys.path += {SITE_DIRS!r}\n"
                "from qsh import entry\n"
                "entry.main(['qtest', 'true'])\n")
        result, modules = loaded_by(code, site=False, HOME=str(env.client_home))
    assert result.returncode == 0, result
    assert "qsh.session" in modules and "common.protocol.auth" in modules, result
    assert "dataclasses" not in modules
