"""qshd: the daemon's command line. Loads (or creates) the host key, then serves QSMP:
logins (:mod:`qshd.login`) and shell/command sessions (:mod:`qshd.sessions`).

Exit status: 0 after a clean stop (or a valid config with -t), 1 for a configuration or
start-up error, each reported as one line on stderr.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
import signal
import sys
import time
from pathlib import Path

import click

from common.accounts.keys import HostKey, KeyFileError
from common.accounts.passwd import PasswdError, PasswdFile

from . import config as config_module
from .config import ConfigError, ServerConfig

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


def _setup_logging(to_stderr: bool, debug: int) -> None:
    level = logging.DEBUG if debug else logging.INFO
    handler: logging.Handler
    if to_stderr or not os.path.exists("/dev/log"):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("qshd[%(process)d]: %(message)s"))
    else:
        handler = logging.handlers.SysLogHandler(address="/dev/log")
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
    if pidfile is not None:
        pidfile.write_text(f"{os.getpid()}\n")


async def _serve(cfg: ServerConfig, host_keys: list[HostKey], ready: Path | None) -> None:
    from .server import Daemon

    daemon = Daemon(cfg, host_keys)
    await daemon.start()
    if ready is not None:
        ready.write_text(f"{daemon.port}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await daemon.close()


@click.command(context_settings={"help_option_names": ["--help"]})
@click.option("-D", "foreground", is_flag=True, help="Do not detach; stay in the foreground.")
@click.option("-e", "log_stderr", is_flag=True, help="Log to stderr instead of syslog.")
@click.option("-d", "debug", count=True, help="Debug logging (implies -D -e).")
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
@click.option("--pidfile", type=click.Path(path_type=Path), default=None)
@click.option("--ready-file", type=click.Path(path_type=Path), default=None,
              help="Write the bound port here once listening (for scripts and tests).")
def command(foreground: bool, log_stderr: bool, debug: int, config_file: Path | None,
            port: int | None, host_key_file: tuple[Path, ...], options: tuple[str, ...],
            test_only: bool,
            pidfile: Path | None, ready_file: Path | None) -> None:
    """The qsh daemon: post-quantum remote shells over QSMP."""
    if debug:
        foreground = log_stderr = True
    _setup_logging(log_stderr or test_only, debug)
    cfg = config_module.load(config_file, options)
    if port is not None:
        cfg.port = port
    if host_key_file:
        cfg.host_keys = list(host_key_file)
    if test_only:
        for path in cfg.host_key_paths():
            if path.exists():
                HostKey.load(path)
        # A passwd file that does not parse would refuse every password login: say so now.
        PasswdFile(cfg.passwd_path()).load()
        click.echo("configuration OK", err=True)
        return
    keys = [load_or_create_host_key(p) for p in cfg.host_key_paths()]
    # A detached daemon works from "/": pin the paths given relative to where we started.
    pidfile = pidfile.absolute() if pidfile is not None else None
    ready_file = ready_file.absolute() if ready_file is not None else None
    if not foreground:
        _detach(pidfile)
    elif pidfile is not None:
        pidfile.write_text(f"{os.getpid()}\n")
    try:
        asyncio.run(_serve(cfg, keys, ready_file))
    finally:
        if pidfile is not None:
            pidfile.unlink(missing_ok=True)


def main() -> None:
    try:
        command.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(1)
    except click.ClickException as exc:
        click.echo(f"qshd: {exc.format_message()}", err=True)
        sys.exit(1)
    except (ConfigError, KeyFileError, PasswdError, OSError) as exc:
        click.echo(f"qshd: {exc}", err=True)
        sys.exit(1)
