"""The ``qsh`` command's first step: a plain run is served without click -- over a
connection-sharing master before the protocol or the crypto are loaded, or else logged in by
itself through :func:`qsh.run.run`, the body qsh.cli's click command calls; every other run
goes on to :mod:`qsh.cli`, unchanged.

Why a step of its own: tools that run ssh per task (Ansible runs about five per task) start
a client per task and per host, and then what a run costs is its start-up. ssh's mux client
takes 6 ms of CPU, a fresh ssh ~10 ms; importing click alone costs ~6 ms in a clean venv and
~40 ms on a loaded machine (issue 18). Here the command line is read with ssh's grammar
alone (:mod:`qsh.argv`), the configuration resolved as always
(:func:`common.client.config.resolve`), and the session handed to the master
(:func:`common.client.mux_client.shared_session`) or run by qsh.run with the values click
would have given it.

Only the plain case is taken: ``-o -S -l -p -F -t -q -v -s -n -i -b -c -e -C -4 -6`` and
the ignored ``-x -a -A -k -K -g -y -X -Y``. Anything else (``-G -O -M -N -f -W -J -E``,
tunnels, help, an unknown option, a bad port) goes to :mod:`qsh.cli`; so does a run that
qsh.run finds wrong before connecting (an error in the configuration, -4 with -6, a command
too long), which qsh.cli then reads again and reports as before. A missing or silent
master, or a command too long for the control socket, leaves the run to log in by itself.
"""

from __future__ import annotations

import errno
import sys

from common.cli import (
    EXIT_FAILURE,
    LOG_LEVEL_VERBOSITY,
    QUIET_LEVELS,
    leave,
    no_core_dumps,
    no_tls,
    sanitise_std_fds,
    stdin_from_null,
)

from .argv import VALUE_OPTIONS, hoist_options, split_destination, ssh_dash_T

#: ssh's flags that qsh accepts and ignores (qsh.run.IGNORED_FLAGS says why, under -v).
_IGNORED_FLAGS = frozenset("xaAkKgyXY")
#: The options the fast path takes, by the _Args attribute each sets (as click's parameters).
_LIST_VALUES = {"o": "options", "i": "identities"}
_VALUES = {"S": "control_path", "l": "user", "F": "config_file", "b": "bind_address",
           "c": "cipher_spec", "e": "escape_char"}
_FLAGS = {"t": "force_tty", "q": "quiet", "n": "stdin_null", "C": "compression",
          "4": "inet4", "6": "inet6"}
#: The command's bytes the fast path passes on; longer ones go the long way, which says
#: whether they are too long (common.channels.session.MAX_COMMAND).
_COMMAND_LIMIT = 32 * 1024


class _Args:
    def __init__(self) -> None:
        self.options: list[str] = []
        self.extra: list[str] = []
        self.user: str | None = None
        self.port: int | None = None
        self.config_file: str | None = None
        self.control_path: str | None = None
        self.force_tty = False
        self.quiet = False
        self.verbose = 0
        self.stdin_null = False
        self.destination = ""
        self.command: list[str] = []
        # What only a fresh login uses (a shared session has no use for them).
        self.identities: list[str] = []
        self.bind_address: str | None = None
        self.cipher_spec: str | None = None
        self.escape_char: str | None = None
        self.compression = False
        self.subsystem = False
        self.inet4 = False
        self.inet6 = False
        #: ssh's flags qsh ignores, in the order first given (click's, for -v's notes).
        self.ignored: dict[str, bool] = {}


def _parse(argv: list[str]) -> _Args | None:
    """The command line, or None when it is not one the fast path takes."""
    words = hoist_options(ssh_dash_T(argv))
    args = _Args()
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":
            i += 1
            break
        if not word.startswith("-") or word == "-":
            break
        if word.startswith("--"):
            return None  # --help, --version
        j = 1
        while j < len(word):
            letter = word[j]
            if letter in VALUE_OPTIONS:
                value = word[j + 1:]
                if not value:
                    i += 1
                    if i >= len(words):
                        return None
                    value = words[i]
                if letter in _LIST_VALUES:
                    getattr(args, _LIST_VALUES[letter]).append(value)
                elif letter in _VALUES:
                    setattr(args, _VALUES[letter], value)  # the last one, as click keeps it
                elif letter == "p":
                    if not (value.isascii() and value.isdigit()):
                        return None  # click's int() says what is wrong
                    args.port = int(value)
                else:
                    return None
                break
            if letter in _FLAGS:
                setattr(args, _FLAGS[letter], True)
            elif letter == "v":
                args.verbose += 1
            elif letter == "s":
                args.extra.append("SessionType=subsystem")
                args.subsystem = True
            elif letter in _IGNORED_FLAGS:
                args.ignored.setdefault(f"ignored_{letter}", True)
            else:
                return None
            j += 1
        i += 1
    if i >= len(words):
        return None
    if args.control_path is not None:
        args.extra.append(f"ControlPath={args.control_path}")
    args.destination, args.command = words[i], words[i + 1:]
    return args


def shared(argv: list[str]) -> int | None:
    """The exit code of this run's session over a master's connection, or None."""
    args = _parse(argv)
    return None if args is None else _shared(args)


def _shared(args: _Args) -> int | None:
    from common.client.config import ConfigError, resolve

    user, host = split_destination(args.destination)
    try:
        cfg = resolve(host, path=args.config_file or None,
                      options=[*args.extra, *args.options], user=args.user or user,
                      port=args.port)
    except ConfigError:
        return None
    if (cfg.control_path is None or cfg.control_master in ("yes", "ask") or cfg.forwards
            or cfg.fork_after_authentication or cfg.session_type == "none"):
        return None
    command = args.command or ([cfg.remote_command] if cfg.remote_command is not None else [])
    if cfg.session_type == "subsystem" and len(command) != 1:
        return None
    remote = " ".join(command) or None
    if remote is not None and len(remote.encode("utf-8", "surrogateescape")) > _COMMAND_LIMIT:
        return None
    if args.quiet:
        cfg.log_level = "QUIET"
    if args.stdin_null or cfg.stdin_null:
        stdin_from_null()
    verbosity = max(args.verbose, LOG_LEVEL_VERBOSITY.get(cfg.log_level, 0))
    from common.client import mux_client  # (here: a run without ControlPath never needs it)

    return mux_client.shared_session(cfg, remote, force_tty=args.force_tty,
                                     quiet=cfg.log_level in QUIET_LEVELS,
                                     verbose=verbosity > 0)


def fresh(args: _Args) -> int | None:
    """The exit code of this run, logged in by itself through :func:`qsh.run.run` -- what
    qsh.cli calls with the same values from click -- or None when the command line or the
    configuration is wrong: qsh.cli then reads it all again and reports it as always (the
    run made no connection yet, and nothing it did is seen twice)."""
    from . import run

    try:
        return run.run(  # by name: a positional slip among the many flags would type-check
            quiet=args.quiet, inet4=args.inet4, inet6=args.inet6, log_file=None,
            port=args.port, login=args.user, identities=tuple(args.identities),
            config_file=args.config_file, options=tuple(args.options), verbose=args.verbose,
            force_tty=args.force_tty, local_forwards=(), remote_forwards=(),
            dynamic_forwards=(), no_command=False, background=False, print_config=False,
            compression=args.compression, stdin_null=args.stdin_null,
            subsystem=args.subsystem, bind_address=args.bind_address,
            cipher_spec=args.cipher_spec, escape_char=args.escape_char, jump=None,
            stdio_forward=None, master=0, control_path=args.control_path,
            control_command=None, destination=args.destination,
            command=tuple(args.command), echo=print, **args.ignored)
    except (run.UsageError, run.Failure):
        return None
    except (EOFError, KeyboardInterrupt):  # what click's main does with them
        sys.stderr.write("\n")
        sys.stderr.flush()
        return EXIT_FAILURE
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        # As click's main: exit 1, quietly. What is still buffered for the broken pipe
        # would fail again at the interpreter's exit: the descriptors point at /dev/null.
        import contextlib
        import os

        null = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                os.dup2(null, stream.fileno())
        os.close(null)
        return 1


def main(argv: list[str] | None = None) -> None:
    no_core_dumps()
    sanitise_std_fds()
    args = list(sys.argv[1:] if argv is None else argv)
    parsed = _parse(args)
    status = None if parsed is None else _shared(parsed)
    if status is None:
        no_tls()
        if parsed is not None:
            status = fresh(parsed)
        if status is None:
            from .cli import main as full

            full(args)
    leave(status or 0)
