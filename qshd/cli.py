"""qshd: the daemon's command line. Loads (or creates) the host key, then serves QSMP:
logins (:mod:`qshd.login`) and shell/command sessions (:mod:`qshd.sessions`).

Exit status: 0 after a clean stop (or a valid config with -t), 1 for a configuration or
start-up error, each reported as one line on stderr.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import socket
import sys
import time
from pathlib import Path

import click

from common.accounts.keys import MAX_PUBLIC_BLOB, HostKey, KeyFileError, PublicKey, atomic_write
from common.accounts.passwd import PasswdError, PasswdFile
from common.aio.memory import tune_allocator
from common.cli import version_option
from common.crypto.secret import harden_process
from common.wire import Reader, Writer

from . import config as config_module
from . import listener as listener_module
from . import loglevel
from .admission import Admission
from .config import ConfigError, ServerConfig
from .install import InstallError
from .login import PasswordSlots

log = logging.getLogger("qshd")


def load_or_create_host_key(path: Path) -> HostKey:
    """A first start creates the key (0600) and says so; later starts load it."""
    if path.exists():
        key = HostKey.load(path)
        log.info("host key %s: %s", path, key.public.fingerprint())
        return key
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = HostKey.generate("mldsa65", now=time.time())
    key.save(path)
    key.save_public(path.with_name(path.name + ".pub"))
    log.info("created host key %s: %s", path, key.public.fingerprint())
    return key


def _setup_logging(to_stderr: bool, debug: int, level_name: str = "INFO",
                   facility: str = "AUTH") -> None:
    """LogLevel and SyslogFacility as sshd's (qshd/loglevel.py); set again once the
    configuration is read."""
    level = loglevel.level_number(level_name, debug)
    handler: logging.Handler
    if to_stderr or not os.path.exists("/dev/log"):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("qshd[%(process)d]: %(message)s"))
    else:
        handler = logging.handlers.SysLogHandler(address="/dev/log",
                                                 facility=loglevel.FACILITIES[facility])
        handler.setFormatter(logging.Formatter("qshd[%(process)d]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _detach(pidfile: Path | None) -> None:
    """Classic double fork: no controlling terminal, not a process-group leader."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if pidfile is not None:  # whole or not at all: init scripts poll for it
        atomic_write(pidfile, f"{os.getpid()}\n".encode(), 0o644)


def public_host_keys(cfg: ServerConfig) -> list[PublicKey]:
    """Load (or create) the host keys and check each pair, in a throwaway child: the
    listener keeps only the public halves, so no process it forks has a private key in its
    memory (each connection's monitor loads them after forking its other children)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        status = 1
        try:
            out = Writer()
            for path in cfg.host_key_paths():
                key = load_or_create_host_key(path)
                if not key.check_pair():
                    raise KeyFileError(f"{path}: the private and public halves do not match")
                out.vbytes(key.public.encode())
            _write_all(write_end, b"K" + out.getvalue())
            status = 0
        except Exception as exc:
            _write_all(write_end, b"E" + one_line(exc).encode("utf-8", "replace"))
        finally:
            logging.shutdown()
            os._exit(status)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as reader:
        while chunk := reader.read(65536):
            chunks.append(chunk)
    os.waitpid(pid, 0)
    data = b"".join(chunks)
    if not data.startswith(b"K"):
        raise KeyFileError(data[1:].decode("utf-8", "replace") or "cannot load the host keys")
    r = Reader(data[1:])
    keys = []
    while r.remaining:
        keys.append(PublicKey.decode(r.vbytes(MAX_PUBLIC_BLOB)))
    return keys


def one_line(exc: Exception) -> str:
    """A failure as the administrator reads it: ``PATH: reason``, not ``[Errno 30] ...``."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@click.command(context_settings={"help_option_names": ["--help"]})
@version_option("qshd")
@click.option("-D", "foreground", is_flag=True, help="Do not detach; stay in the foreground.")
@click.option("-e", "log_stderr", is_flag=True, help="Log to stderr instead of syslog.")
@click.option("-d", "debug", count=True, help="Debug logging (implies -D -e).")
@click.option("-q", "quiet", is_flag=True, help="LogLevel QUIET: log nothing that names a "
              "user, an address, a key or a command.")
@click.option("-f", "config_file", type=click.Path(path_type=Path), default=None,
              help="Configuration file (default /etc/qsh/qshd_config or ~/.qsh/qshd_config).")
@click.option("-p", "port", type=click.IntRange(0, 65535), default=None,
              help="Port to listen on (overrides Port; 0 picks a free one).")
@click.option("-h", "host_key_file", type=click.Path(path_type=Path), multiple=True,
              help="Host key file (overrides HostKey; created on first start).")
@click.option("-o", "options", multiple=True,
              help="Keyword=value, as in qshd_config; wins over the file.")
@click.option("-t", "test_only", is_flag=True,
              help="Check the configuration, host keys and passwd file, then exit.")
@click.option("-T", "dump_config", is_flag=True,
              help="Check the configuration, then print the effective one and exit.")
@click.option("-C", "connection", default=None, metavar="SPEC",
              help="With -T: apply the Match blocks for a connection "
                   "(user=NAME,addr=ADDRESS,lport=PORT[,laddr=ADDRESS]).")
@click.option("--pidfile", type=click.Path(path_type=Path), default=None)
@click.option("--ready-file", type=click.Path(path_type=Path), default=None,
              help="Write the bound port here once listening (for scripts and tests).")
@click.option("--install-service", is_flag=True,
              help="Install qshd as a system service (unit or init script naming this qshd, "
                   "/etc/qsh with a sample config, host key and passwd file, the privsep "
                   "user, the man pages), then exit.")
@click.option("--root", "install_root", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="With --install-service: put the files under this directory "
                                 "(a DESTDIR) and create no account.")
@click.option("--init", "init_system", type=click.Choice(["systemd", "sysv"]), default=None,
              help="With --install-service: which init system (default: the running one).")
def command(foreground: bool, log_stderr: bool, debug: int, quiet: bool,
            config_file: Path | None,
            port: int | None, host_key_file: tuple[Path, ...], options: tuple[str, ...],
            test_only: bool, dump_config: bool, connection: str | None,
            pidfile: Path | None, ready_file: Path | None, install_service: bool,
            install_root: Path | None, init_system: str | None) -> None:
    """The qsh daemon: post-quantum remote shells over QSMP."""
    if install_service:
        from . import install

        if install_root is None and os.geteuid() != 0:
            raise click.ClickException("--install-service needs root (or --root DIR)")
        install.install(install_root.absolute() if install_root else Path("/"), init_system,
                        say=lambda line: click.echo(line, err=True))
        return
    if install_root is not None or init_system is not None:
        raise click.UsageError("--root and --init go with --install-service")
    if debug:
        foreground = log_stderr = True
    if connection is not None and not dump_config:
        raise click.UsageError("-C goes with -T")
    _setup_logging(log_stderr or test_only or dump_config, debug)
    cfg = config_module.load(config_file, options)
    if quiet:
        cfg.log_level = "QUIET"
    _setup_logging(log_stderr or test_only or dump_config, debug, cfg.log_level,
                   cfg.syslog_facility)
    if port is not None:
        cfg.port = port
    if host_key_file:
        cfg.host_keys = list(host_key_file)
    if dump_config:
        if connection is not None:
            cfg = cfg.for_connection(config_module.connection_spec(connection))
        click.echo("\n".join(config_module.dump(cfg)))
        return
    if test_only:
        for path in cfg.host_key_paths():
            if path.exists():
                HostKey.load(path)
        # A passwd file that does not parse would refuse every password login: say so now.
        PasswdFile(cfg.passwd_path()).load()
        for address in cfg.listen_addresses:
            listener_module.check_address(address)
        click.echo("configuration OK", err=True)
        return
    # As -t does: a passwd file that does not parse is refused at start, not found out at
    # the first password login.
    PasswdFile(cfg.passwd_path()).load()
    # Until the listener's handlers are in place (Listener.run unblocks them), a SIGHUP or
    # SIGTERM waits: one that came right after the pidfile or ready file appeared would
    # otherwise kill the daemon with the default action.
    signal.pthread_sigmask(signal.SIG_BLOCK, listener_module.CONTROL_SIGNALS)
    host_keys = public_host_keys(cfg)
    # A detached daemon works from "/": pin the paths given relative to where we started.
    pidfile = pidfile.absolute() if pidfile is not None else None
    ready_file = ready_file.absolute() if ready_file is not None else None
    reexecuted = os.environ.pop(listener_module.REEXEC_ENV, None) is not None
    from . import monitor, postauth, preauth, privsep

    # Resolved once (a missing PrivsepUser is said once, not per connection); not root, the
    # pre-auth process keeps our account (see qshd.8, PROCESS PRIVILEGES).
    privsep_user = privsep.resolve_privsep_user(cfg.privsep_user) if os.geteuid() == 0 \
        else None

    shared = monitor.Shared(host_keys, privsep_user, PasswordSlots.create())

    def serve(sock: socket.socket, peer: tuple[str, int], number: int, startup: int) -> int:
        return monitor.run(cfg, shared, sock, peer, number, startup)

    listener = listener_module.Listener(
        addresses=[(address, cfg.port) for address in cfg.listen_addresses], serve=serve,
        admission=Admission(cfg.admission_settings()), argv=sys.argv[1:])
    listener.bind()  # before detaching: a port in use is reported to whoever started us
    if not foreground and not reexecuted:
        _detach(pidfile)
    elif pidfile is not None:
        pidfile.write_text(f"{os.getpid()}\n")
    tune_allocator()
    preauth.warm_up()
    postauth.warm_up()
    for host, port in listener.addresses:
        log.log(loglevel.NOTICE, "listening on %s port %d", host, port)
    if ready_file is not None:
        ready_file.write_text(f"{listener.port}\n")
    try:
        listener.run()
    finally:
        if pidfile is not None:
            pidfile.unlink(missing_ok=True)


def main() -> None:
    harden_process()  # before the first secret: no core, no ptrace (common/crypto/secret.py)
    try:
        command.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(1)
    except click.ClickException as exc:
        click.echo(f"qshd: {exc.format_message()}", err=True)
        sys.exit(1)
    except (ConfigError, KeyFileError, PasswdError, listener_module.BindError, InstallError,
            OSError) as exc:
        click.echo(f"qshd: {one_line(exc)}", err=True)
        sys.exit(1)
