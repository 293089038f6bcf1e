"""One way for our small command-line tools (qpasswd, qsh-keygen) to end: click runs without its
own error handling, and every failure becomes one line ``prog: message`` and exit status 1."""

from __future__ import annotations

import os
import sys

import common

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (issue 18)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn, TypeVar

    import click

    F = TypeVar("F", bound=Callable[..., Any])

#: The client programs' ``-v`` count for each LogLevel of the config (ssh's DEBUG1..3: -v..-vvv).
LOG_LEVEL_VERBOSITY = {"DEBUG1": 1, "DEBUG2": 2, "DEBUG3": 3}
QUIET_LEVELS = ("QUIET", "FATAL", "ERROR")
#: What qsh returns for a failure of its own rather than the remote command's: ssh's 255.
EXIT_FAILURE = 255


def sanitise_std_fds() -> None:
    """Give closed fds 0-2 to /dev/null, as ssh does. Otherwise the next file opened (the
    socket, the event loop's epoll) would take the number, and remote output written to
    "fd 1" would land in it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # a lower fd was closed too and took it: keep both filled
                os.dup2(null, fd)
                if null > 2:
                    os.close(null)


def stdin_from_null() -> None:
    """fd 0 from /dev/null (ssh's -n, StdinNull, a process gone to the background)."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


def no_tls() -> None:
    """Mark ``ssl`` absent before asyncio loads: asyncio imports it when it can, which loads
    and initialises OpenSSL's libssl (~2-3 ms of CPU and ~1 MB of RSS at every start,
    bench/README.md), and our clients never speak TLS. A later ``import ssl`` in the process
    fails, as on an interpreter built without OpenSSL."""
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]


def no_core_dumps() -> None:
    """Soft ``RLIMIT_CORE`` 0, the client programs' first act: whatever crashes them, no core
    file. The rest of the hardening (no ptrace, the wipe at exit:
    :func:`common.crypto.secret.harden_process`) loads ctypes, so it waits until the command
    line is parsed and there is something to protect: before the first key, password or
    byte from the network."""
    import resource  # (a C module: a fraction of a millisecond)

    try:  # noqa: SIM105 (contextlib: ~0.5 ms this path has no other use for)
        resource.setrlimit(resource.RLIMIT_CORE,
                           (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    except (ValueError, OSError):
        pass


def leave(status: int) -> NoReturn:
    """End a client program now. Its output is flushed and the ``atexit`` handlers run (the
    terminal put back, secrets wiped, a log file flushed); then ``os._exit`` skips the
    interpreter's finalisation, which tears down every module and object one by one: 10-15 ms
    of CPU and of wall time at the end of each ``qsh host true`` (bench/startup.py), to free
    memory the kernel frees at once anyway. Nothing else is left to wait for: the programs
    join their threads (``asyncio.run`` shuts its executor down) before they get here.
    Under a profiler or a debugger (``python -m cProfile``, bench/startup.py) the exit is
    the usual one: they write their report after the program returns."""
    import atexit

    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(status)
    _flush_stdio()
    atexit._run_exitfuncs()
    _flush_stdio()
    os._exit(status)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said
            pass


def version_line(program: str) -> str:
    """What ``PROGRAM -V`` prints, in the shape of ssh's: program, release, protocol and
    the Python it runs on (the crypto libraries vary with it)."""
    import platform  # only for -V: every other run starts without it

    return (f"{program} {common.__version__} (qsh; QSMP 1; "
            f"Python {platform.python_version()})")


def version_option(program: str) -> Callable[[F], F]:
    """``-V``/``--version`` for every command, printing to stderr as ssh -V does."""
    import click  # (not at import: qsh's shared-connection path never loads click)

    def show(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            click.echo(version_line(program), err=True)
            ctx.exit(0)

    return click.option("-V", "--version", is_flag=True, is_eager=True, expose_value=False,
                        callback=show, help="Print the version and exit.")


def fail(prog: str, message: str) -> NoReturn:
    # Only our own messages reach here; none of them contains a password or a key.
    import click

    click.echo(f"{prog}: {message}", err=True)
    sys.exit(1)


def run(command: click.Command, prog: str, argv: list[str] | None, *,
        errors: tuple[type[BaseException], ...], interrupted: str) -> NoReturn:
    """Run ``command``; ``errors`` are the exceptions whose text is the one-line message."""
    import click

    try:
        status = command.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.UsageError as exc:
        fail(prog, f"{exc.format_message()} (see {prog} --help)")
    except click.ClickException as exc:
        fail(prog, exc.format_message())
    except click.Abort:
        fail(prog, interrupted)
    except OSError as exc:
        fail(prog, exc.strerror or str(exc))
    except errors as exc:
        fail(prog, str(exc))
    sys.exit(status if isinstance(status, int) else 0)
