"""qcp: copy files to or from a host over one QSMP connection, with scp's habits.

``qcp [-r] [-p] [-q] [-v] [-P PORT] [-i KEY] [-l LIMIT] [-F CONFIG] [-J JUMP] [-o OPT=VAL]
[--resume] SRC... DST``

Which argument is remote is decided as scp decides (:func:`parse_location`). Exactly one
side is remote: every remote argument names the same ``[user@]host``. Login, host-key
trust, the config file and ``-o`` options are qsh's (:mod:`common.client`). With a
ControlPath whose master answers, the copy rides on that master's connection instead
(:mod:`common.client.mux_copy`: no key exchange, no login); with ControlMaster auto/yes and
ControlPersist, a qcp that finds none first runs qsh to make one (:func:`start_master`).

Exit status: 0 when every file arrived and verified; 1 for everything else -- a file that
failed (one line ``qcp: PATH: REASON`` each, the others still copied), a usage error, a
connection that could not be made or was lost, a signal. scp also exits 1 for all of them;
qsh's 255 for "the connection failed" would read as a file error to scripts written for
scp. Click would exit 2 on a usage error, so it runs with ``standalone_mode=False``.

Startup is lazy as in qsh: a command line in qcp's grammar (:func:`parse_argv`, by hand)
runs without click; help, ``-V``, anything unknown or malformed goes to the click command
(:func:`click_command`), which reads it and says what is wrong exactly as before. asyncio,
the crypto code and the copy engine load once the arguments are known to be good; over a
ControlMaster, no handshake, transport or key code at all (``qcp --help`` loads none).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from common.cli import (
    LOG_LEVEL_VERBOSITY,
    QUIET_LEVELS,
    leave,
    no_core_dumps,
    no_tls,
    sanitise_std_fds,
)
from common.value_record import Record

if TYPE_CHECKING:
    import click

    from common import aio
    from common.client.config import ClientConfig
    from common.client.program import StopSignals, Ui
    from common.transfer import Connection, CopyOptions, Report

    from .progress import TtyProgress

EXIT_FAILURE = 1
#: scp's bounds for -l (Kbit/s).
MAX_LIMIT_KBPS = 100 * 1024 * 1024


class Failure(Exception):
    """What ends a run before any copy, as one line ``qcp: MESSAGE`` and exit 1 (what
    click's own errors look like under :func:`main`)."""


class UsageProblem(Failure):
    """A command line that names no copy qcp can make (one line, exit 1)."""


class Location(Record):
    """One SRC or DST: ``host`` None for a local path. ``path`` is bytes as typed (argv's
    bytes, which need not be UTF-8); for a remote one, everything after the colon (empty:
    the remote home)."""

    __slots__ = ("path", "host", "user")  # noqa: RUF023 (field order)
    path: bytes
    host: str | None
    user: str | None

    def __init__(self, path: bytes, host: str | None = None, user: str | None = None
                 ) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "user", user)

    @property
    def remote(self) -> bool:
        return self.host is not None


def _remote_colon(arg: str) -> int | None:
    """The index of the colon that makes ``arg`` remote, or None, by scp's rule: a leading
    colon is part of a file name; a ``/`` before any colon makes the path local (so
    ``./a:b`` and ``/x/a:b`` are local); ``[addr]:`` and ``user@[addr]:`` bracket an IPv6
    address, whose own colons do not count."""
    if arg.startswith(":"):
        return None
    bracketed = arg.startswith("[")
    for i, char in enumerate(arg):
        if char == "@" and arg[i + 1:i + 2] == "[":
            bracketed = True
        if char == "]" and bracketed and arg[i + 1:i + 2] == ":":
            return i + 1
        if char == ":" and not bracketed:
            return i
        if char == "/":
            return None
    return None


def parse_location(arg: str) -> Location:
    """``[user@]host:path``, ``[user@][addr]:path`` or a local path. The user is what
    comes before the last ``@`` of the host part (as scp), the brackets are dropped from
    an address."""
    colon = _remote_colon(arg)
    if colon is None:
        return Location(os.fsencode(arg))
    user_host, path = arg[:colon], arg[colon + 1:]
    user, at, host = user_host.rpartition("@")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise UsageProblem(f"no host name in {arg!r}")
    if at and not user:
        raise UsageProblem(f"empty user name in {arg!r}")
    return Location(os.fsencode(path), host, user if at else None)


class Plan(Record):
    """What one qcp run does: ``upload`` local sources to ``target`` on the host, or
    download remote sources into the local ``target``."""

    __slots__ = ("upload", "host", "user", "sources", "target")  # noqa: RUF023 (field order)
    upload: bool
    host: str
    user: str | None
    sources: tuple[bytes, ...]
    target: bytes

    def __init__(self, *, upload: bool, host: str, user: str | None,
                 sources: tuple[bytes, ...], target: bytes) -> None:
        object.__setattr__(self, "upload", upload)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "user", user)
        object.__setattr__(self, "sources", sources)
        object.__setattr__(self, "target", target)


def plan(paths: tuple[str, ...]) -> Plan:
    """SRC... DST to a :class:`Plan`, or :class:`UsageProblem`."""
    if len(paths) < 2:
        raise UsageProblem("need at least one SRC and a DST")
    *sources, target = (parse_location(p) for p in paths)
    remote = [loc for loc in (*sources, target) if loc.remote]
    if not remote:
        raise UsageProblem("no remote path: name one as [user@]host:path "
                           "(local copies are not supported; use cp)")
    if target.remote and any(s.remote for s in sources):
        raise UsageProblem("copies between two remote hosts are not supported")
    if not target.remote and not all(s.remote for s in sources):
        raise UsageProblem("local and remote sources cannot be mixed in one copy")
    first = remote[0]
    for loc in remote[1:]:
        if (loc.host, loc.user) != (first.host, first.user):
            raise UsageProblem("all remote paths must name the same [user@]host")
    for loc in sources:
        if not loc.path and not loc.remote:
            raise UsageProblem("empty source path")
    assert first.host is not None
    return Plan(upload=target.remote, host=first.host, user=first.user,
                sources=tuple(s.path for s in sources), target=target.path)


#: What one copy channel's open request holds (common.channels.copy.MAX_PATHS paths and
#: common.protocol.mux.MAX_PAYLOAD bytes, less its fixed fields); kept here so that parsing
#: the command line loads no protocol code. tests/test_qcp_cli.py checks they agree.
OPEN_MAX_PATHS = 1024
OPEN_MAX_BYTES = 64 * 1024 - 49


def download_batches(sources: tuple[bytes, ...], *, max_paths: int = OPEN_MAX_PATHS,
                     max_bytes: int = OPEN_MAX_BYTES) -> list[tuple[bytes, ...]]:
    """A download names every source in its channel's open request, which has room for
    ``max_paths`` paths of ``max_bytes`` in all (4 bytes of length each): more sources are
    copied over several channels of the same connection, in order. No batch is left with
    a single source when there are several, so that each batch keeps scp's rule "several
    sources need a directory" (a lone source would instead take the target's name)."""
    batches: list[list[bytes]] = [[]]
    used = 0
    for path in sources:
        cost = 4 + len(path)
        if batches[-1] and (len(batches[-1]) >= max_paths or used + cost > max_bytes):
            batches.append([])
            used = 0
        batches[-1].append(path)
        used += cost
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-1].insert(0, batches[-2].pop())
    return [tuple(batch) for batch in batches]


def limit_bytes_per_second(kbps: int | None) -> int | None:
    """-l as scp reads it: Kbit/s, with 1 Kbit = 1024 bits."""
    if kbps is None:
        return None
    return max(1, kbps * 1024 // 8)


#: The options that take a value, by letter, and their keyword in :func:`copy`; the flags.
_VALUED = {"P": "port", "i": "identities", "l": "limit", "F": "config_file", "o": "options",
           "J": "jump"}
_FLAGS = {"r": "recursive", "p": "preserve", "q": "quiet", "v": "verbose"}


def parse_argv(argv: list[str]) -> dict[str, object] | None:
    """qcp's command line as the click command reads it, without click (~10 ms of CPU at
    every run): :func:`copy`'s keyword arguments, or None for anything else -- help,
    ``-V``, an unknown option, a value missing or malformed, paths that name no copy
    (:func:`plan`) -- which the click command then reads and reports as it always has.
    Options and paths may be mixed, and ``--`` ends the options, as with click; a repeated
    option keeps its last value, except ``-i`` and ``-o`` (every one, in order) and ``-v``
    (counted)."""
    found: dict[str, object] = {"recursive": False, "preserve": False, "port": None,
                                "identities": (), "limit": None, "quiet": False,
                                "verbose": 0, "config_file": None, "options": (),
                                "jump": None, "resume": False}
    paths: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--":
            paths.extend(args)
            break
        if arg == "--resume":
            found["resume"] = True
            continue
        if not arg.startswith("-") or arg == "-":
            paths.append(arg)
            continue
        if arg.startswith("--"):
            return None  # --help, --version, a misspelling: click's to say
        cluster = arg[1:]
        while cluster:
            letter, cluster = cluster[0], cluster[1:]
            if letter in _FLAGS:
                name = _FLAGS[letter]
                found[name] = found[name] + 1 if name == "verbose" else True  # type: ignore[operator]
                continue
            if letter not in _VALUED:
                return None
            value = cluster or next(args, None)
            cluster = ""
            if value is None:
                return None
            name = _VALUED[letter]
            if name in ("identities", "options"):
                found[name] = (*found[name], value)  # type: ignore[misc]
            elif name in ("port", "limit"):
                try:
                    number = int(value)
                except ValueError:
                    return None
                if name == "limit" and not 1 <= number <= MAX_LIMIT_KBPS:
                    return None
                found[name] = number
            else:
                found[name] = value
    try:
        plan(tuple(paths))
    except UsageProblem:
        return None  # said by the click command's run, as every other usage error
    found["paths"] = tuple(paths)
    return found


def click_command() -> click.Command:
    """The click command: qcp's grammar as the help shows it, and every error message of
    a command line :func:`parse_argv` leaves to it. Built on first use (click's import is
    most of a parse)."""
    import click

    from common.cli import version_option

    @click.command(context_settings={"help_option_names": ["-h", "--help"]})
    @version_option("qcp")
    @click.option("-r", "recursive", is_flag=True, help="Copy directories recursively.")
    @click.option("-p", "preserve", is_flag=True,
                  help="Keep modes, access and modification times.")
    @click.option("-P", "port", type=int, default=None, metavar="PORT",
                  help="Port to connect to (default 2022).")
    @click.option("-i", "identities", multiple=True, metavar="KEY",
                  help="Identity (private key) file; repeatable, tried in order.")
    @click.option("-l", "limit", type=click.IntRange(1, MAX_LIMIT_KBPS), default=None,
                  metavar="LIMIT", help="Limit the bandwidth to LIMIT Kbit/s.")
    @click.option("-q", "quiet", is_flag=True, help="No progress meter, no warnings.")
    @click.option("-v", "verbose", count=True, help="Verbose; repeat for more (up to -vvv).")
    @click.option("-F", "config_file", default=None, metavar="CONFIG",
                  help="Configuration file (default ~/.qsh/config; 'none' for none).")
    @click.option("-o", "options", multiple=True, metavar="OPT=VAL",
                  help="Option as in the configuration file; repeatable.")
    @click.option("-J", "jump", default=None, metavar="[USER@]HOST[:PORT][,...]",
                  help="Reach the host through these jump hosts (ProxyJump), as scp -J.")
    @click.option("--resume", is_flag=True,
                  help="Continue interrupted copies from their partial files.")
    @click.argument("paths", nargs=-1, required=True, metavar="SRC... DST")
    def command(recursive: bool, preserve: bool, port: int | None,
                identities: tuple[str, ...], limit: int | None, quiet: bool, verbose: int,
                config_file: str | None, options: tuple[str, ...], jump: str | None,
                resume: bool, paths: tuple[str, ...]) -> int:
        """Copy SRC... to DST, one side being [user@]host:path, over QSMP."""
        return copy(recursive, preserve, port, identities, limit, quiet, verbose,
                    config_file, options, jump, resume, paths)

    return command


def copy(recursive: bool, preserve: bool, port: int | None, identities: tuple[str, ...],
         limit: int | None, quiet: bool, verbose: int, config_file: str | None,
         options: tuple[str, ...], jump: str | None, resume: bool,
         paths: tuple[str, ...]) -> int:
    """Copy SRC... to DST, one side being [user@]host:path, over QSMP: the run, however
    its command line was read (:func:`parse_argv` or the click command)."""
    what = plan(paths)  # first: a usage error loads nothing more
    from common.client.config import ConfigError, resolve

    try:
        cfg = resolve(what.host, path=config_file,
                      options=[*([f"ProxyJump={jump}"] if jump is not None else []),
                               *options], user=what.user, port=port,
                      identity_files=identities)
    except ConfigError as exc:
        raise Failure(str(exc)) from None
    verbosity = max(verbose, LOG_LEVEL_VERBOSITY.get(cfg.log_level, 0))
    quiet = quiet or cfg.log_level in QUIET_LEVELS
    from common.transfer import CopyOptions

    copy_options = CopyOptions(recursive=recursive, preserve=preserve, resume=resume,
                               limit=limit_bytes_per_second(limit))
    given = [*(["-F", config_file] if config_file is not None else []),
             *(["-p", str(port)] if port is not None else []),
             *(item for key in identities for item in ("-i", key)),
             *(["-J", jump] if jump is not None else []),
             *(item for option in options for item in ("-o", option)),
             *(["-v"] * min(verbose, 3)), *(["-q"] if quiet else [])]
    if not start_master(cfg, given, what):
        return EXIT_FAILURE
    if cfg.control_master == "yes" and cfg.control_persist is not None:
        cfg.control_master = "auto"  # the master it made (or found) is this copy's to use
    return _run(cfg, what, copy_options, verbosity, quiet=quiet)


def master_command(cfg: ClientConfig, given: list[str], what: Plan) -> list[str] | None:
    """The qsh that makes this host's ControlMaster, as scp's ssh would make one: for
    ``ControlMaster auto`` or ``yes`` with ``ControlPersist`` (without it a master would
    end with this copy); None otherwise. Its own options come first (qsh, as ssh, keeps
    the first value of a keyword), the command line's after; its command is ``true``."""
    if (cfg.control_path is None or cfg.control_persist is None
            or cfg.control_master not in ("auto", "yes")):
        return None
    persist = "yes" if not cfg.control_persist else f"{cfg.control_persist:g}"
    destination = f"{what.user}@{what.host}" if what.user is not None else what.host
    return [sys.executable, "-m", "qsh", "-n", "-o", "ControlMaster=auto",
            "-o", "ControlPath=" + cfg.control_path.replace("%", "%%"),
            "-o", f"ControlPersist={persist}", *given, "--", destination, "true"]


def start_master(cfg: ClientConfig, given: list[str], what: Plan) -> bool:
    """Make the ControlMaster :func:`master_command` asks for, unless one answers already;
    False when it failed (qsh has said why on stderr). Before any event loop: its login's
    prompts are qsh's, on this terminal."""
    argv = master_command(cfg, given, what)
    if argv is None:
        return True
    import subprocess

    from common.client import mux_client, mux_wire

    assert cfg.control_path is not None
    try:
        opened = mux_client.open_master(cfg.control_path)
    except (mux_client.MuxUnusable, mux_wire.MuxError, OSError, EOFError):
        return True  # something is there; the copy finds out (and says so under -v)
    if opened is not None:
        opened[0].close()
        return True
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          check=False)
    return done.returncode == 0


def _run(cfg: ClientConfig, what: Plan, options: CopyOptions, verbosity: int, *,
         quiet: bool) -> int:
    from common.client import dial, mux_copy

    if (cfg.control_path is None or not mux_copy.usable(cfg.control_path, cfg.control_master)
            or not os.path.exists(cfg.control_path)):  # a login of our own: dial.py
        dial.start(cfg)
    # Before the first secret (a key file, a password) and the first byte from the network:
    # no ptrace, the wipe at exit. Not earlier: it loads ctypes (common/cli.py no_core_dumps).
    from common.crypto.secret import harden_process

    harden_process()
    # The reporting of every client program, not the login stack: over a ControlMaster no
    # handshake, transport or key code is loaded at all (run_copy loads them for a login).
    from common.client import program, terminal

    from .progress import TtyProgress

    program.setup_logging(verbosity)
    ui = program.Ui(verbosity, quiet=quiet, prompter=terminal.TtyPrompter(), program="qcp")
    progress = None if quiet else TtyProgress.on_terminal(total=options.recursive)
    report = program.run_program(run_copy(cfg, ui, what, options, progress), ui, verbosity)
    if report is None:
        return EXIT_FAILURE
    for failure in report.failures:
        ui.error(f"{failure.path}: {failure.reason}")
    ui.note(1, f"{report.files} file{'' if report.files == 1 else 's'} copied, "
               f"{report.bytes} bytes; sent {report.sent} bytes of file data")
    return 0 if report.ok else EXIT_FAILURE


async def run_copy(cfg: ClientConfig, ui: Ui, what: Plan, options: CopyOptions,
                   progress: TtyProgress | None) -> Report:
    """Copy over the ControlMaster's connection when the configuration names one that
    answers (no login), else log in; the engine's :class:`Report`, or :class:`QshError`
    for a failure that ended the whole copy.

    SIGINT/SIGTERM/SIGHUP cancel this task (:class:`StopSignals`, as for qsh), so the
    engine's ``finally`` removes its temporary file (or keeps the ``--resume`` partial) and
    the connection is closed before qcp exits 1 with one line.
    """
    from common.client import mux_copy, terminal
    from common.client.program import StopSignals
    from common.client.terminal import saved_blocking_modes

    connection: aio.QsmpConnection | None = None
    shared: mux_copy.SharedConnection | None = None
    with StopSignals() as stop, saved_blocking_modes():
        try:
            if mux_copy.usable(cfg.control_path, cfg.control_master):
                assert cfg.control_path is not None
                shared = mux_copy.SharedConnection(cfg.control_path, cfg.host,
                                                   note=lambda line: ui.note(1, line))
                try:
                    return await _copy(shared, cfg, what, options, progress, stop)
                except mux_copy.Unshared as exc:  # nothing was copied: log in ourselves
                    ui.note(1, f"not using control socket {cfg.control_path}: {exc}")
                    shared = None
            from common.client.connect import login

            connection = await login(cfg, ui)
            return await _copy(connection, cfg, what, options, progress, stop)
        finally:
            if progress is not None:
                progress.close()
            terminal.restore_all()
            if shared is not None:
                await shared.close()
            if connection is not None:
                from common.client.connect import close_connection

                await close_connection(connection)


async def _copy(connection: Connection, cfg: ClientConfig, what: Plan, options: CopyOptions,
                progress: TtyProgress | None, stop: StopSignals) -> Report:
    """The copy over a logged-in connection or a master's (:mod:`common.client.mux_copy`,
    whose :class:`~common.client.mux_copy.Unshared` goes up untouched)."""
    from common import aio, transfer
    from common.client.program import DisconnectError, QshError, describe_end

    try:
        if what.upload:
            report = await transfer.upload(connection, what.sources, what.target, options,
                                           progress)
        else:
            report = transfer.Report()
            for batch in download_batches(what.sources):
                part = await transfer.download(connection, batch, what.target, options,
                                               progress)
                report.files += part.files
                report.bytes += part.bytes
                report.sent += part.sent
                report.failures.extend(part.failures)
    except transfer.CopyError as exc:
        stop.check()  # the cancellation ended the copy: say why, not how
        raise QshError(str(exc)) from None
    except aio.ConnectionLost as exc:
        end = describe_end(exc.terminated) if exc.terminated is not None else str(exc)
        raise DisconnectError(f"connection to {cfg.host} closed: {end}") from None
    stop.check()  # a signal the engine absorbed: still not a finished copy
    return report


def main(argv: list[str] | None = None) -> None:
    no_core_dumps()  # first; the rest of the hardening comes before the first secret
    sanitise_std_fds()
    args = list(sys.argv[1:] if argv is None else argv)
    no_tls()
    try:
        parsed = parse_argv(args)
        if parsed is not None:
            status: object = copy(**parsed)  # type: ignore[arg-type]
        else:
            status = _with_click(args)
    except Failure as exc:
        sys.stderr.write(f"qcp: {exc}\n")
        status = EXIT_FAILURE
    except KeyboardInterrupt:
        status = EXIT_FAILURE
    if not isinstance(status, int):  # --help returns None
        status = 0
    leave(status)


def _with_click(args: list[str]) -> object:
    """The click command's run: its own errors as one line each, exit 1 (not click's 2)."""
    import click

    try:
        return click_command().main(args, prog_name="qcp", standalone_mode=False)
    except click.exceptions.Abort:
        return EXIT_FAILURE
    except click.ClickException as exc:
        click.echo(f"qcp: {exc.format_message()}", err=True)
        return EXIT_FAILURE


if __name__ == "__main__":
    main()
