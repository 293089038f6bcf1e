"""The ``qsh`` command's first step: a run that a connection-sharing master can serve goes to
it before click, the protocol or the crypto are loaded; every other run goes on to
:mod:`qsh.cli`, unchanged.

Why a step of its own: tools that run ssh per task (Ansible runs about five per task) use
connection sharing so that a run costs no login, and then what a run costs is its start-up.
ssh's mux client takes 6 ms of CPU; ours took ~100 ms, most of it importing click and the
modules behind the full command line (issue 18). Here the command line is read with ssh's
grammar alone (:mod:`qsh.argv`), the configuration resolved as always
(:func:`common.client.config.resolve`), and the session handed to the master
(:func:`common.client.mux_client.shared_session`).

Only the plain case is taken: options whose meaning the shared session covers (``-o -S -l
-p -F -t -q -v -s -n``, and those a shared session has no use for: ``-i -b -c -e -C -x -a
-A -k -K -4 -6 -g -y -X -Y``). Anything else (``-G -O -M -N -f -W -J -E``, tunnels, help,
an unknown option, a bad port, an error in the configuration, a command too long for the
control socket) and a missing or silent master go to :mod:`qsh.cli`, which reports errors
as before and logs in by itself.
"""

from __future__ import annotations

import sys

from common.cli import (
    LOG_LEVEL_VERBOSITY,
    QUIET_LEVELS,
    no_core_dumps,
    sanitise_std_fds,
    stdin_from_null,
)

from .argv import VALUE_OPTIONS, hoist_options, split_destination, ssh_dash_T

#: Flags of ssh's that a shared session has no use for (the connection is made already).
_HARMLESS_FLAGS = frozenset("CxaAkK46gyXY")
_HARMLESS_VALUES = frozenset("ibce")
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
                if letter == "o":
                    args.options.append(value)
                elif letter == "S":
                    args.control_path = value  # the last -S, as click keeps it
                elif letter == "l":
                    args.user = value
                elif letter == "p":
                    if not value.isdigit():
                        return None
                    args.port = int(value)
                elif letter == "F":
                    args.config_file = value
                elif letter not in _HARMLESS_VALUES:
                    return None
                break
            if letter == "t":
                args.force_tty = True
            elif letter == "q":
                args.quiet = True
            elif letter == "v":
                args.verbose += 1
            elif letter == "s":
                args.extra.append("SessionType=subsystem")
            elif letter == "n":
                args.stdin_null = True
            elif letter not in _HARMLESS_FLAGS:
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
    if args is None:
        return None
    from common.client import mux_client
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
    return mux_client.shared_session(cfg, remote, force_tty=args.force_tty,
                                     quiet=cfg.log_level in QUIET_LEVELS,
                                     verbose=verbosity > 0)


def main(argv: list[str] | None = None) -> None:
    no_core_dumps()
    sanitise_std_fds()
    args = list(sys.argv[1:] if argv is None else argv)
    status = shared(args)
    if status is None:
        # asyncio imports ssl when it can: the ssl module and OpenSSL's libssl, ~2-3 ms of
        # CPU and ~1 MB of RSS at every start (measured: bench/README.md). qsh never speaks
        # TLS (asyncio works without it), so it is marked absent; a later "import ssl" in
        # this process fails, as on an interpreter built without OpenSSL.
        sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
        from .cli import main as full

        full(args)
    sys.exit(status)
