"""The ``session`` channel: what a shell or a command needs, as channel requests.

SSH's connection protocol (RFC 4254 section 6) is the model; the encodings are ours (the
Writer/Reader conventions of docs/PROTOCOL.md). A session channel carries stdin as data,
stdout as data, stderr as extended data of type 1, and these requests::

    client -> server
      "pty-req"        text term | u32 columns | u32 rows | u32 width_px | u32 height_px
      "env"            name variable | text value
      "shell"          (empty; a server ignores any payload)
      "exec"           text command
      "subsystem"      name subsystem         (e.g. "sftp"; the server's Subsystem command)
      "window-change"  u32 columns | u32 rows | u32 width_px | u32 height_px
      "signal"         name signal            (e.g. "INT", "TERM", "HUP", "KILL")
    server -> client
      "exit-status"    u32 status
      "exit-signal"    name signal | boolean core_dumped | text message

Only decoding and encoding live here: no processes, no terminals.
"""

from __future__ import annotations

import signal as _signal

from common.errors import InvalidInput
from common.wire import Reader, Record, Writer, cut_utf8

SESSION = "session"
MAX_TERM = 64
#: A command travels in one channel request, whose payload the mux caps at 64 KiB.
MAX_COMMAND = 64 * 1024 - 4
MAX_ENV_VALUE = 32 * 1024
MAX_DIMENSION = 100_000
MAX_MESSAGE = 1024

PTY_REQ = "pty-req"
ENV = "env"
SHELL = "shell"
EXEC = "exec"
SUBSYSTEM = "subsystem"
WINDOW_CHANGE = "window-change"
SIGNAL = "signal"
EXIT_STATUS = "exit-status"
EXIT_SIGNAL = "exit-signal"

#: Signals a client may send, by SSH name (without "SIG").
SIGNALS: dict[str, int] = {
    name: int(getattr(_signal, "SIG" + name))
    for name in ("ABRT", "ALRM", "FPE", "HUP", "ILL", "INT", "KILL", "PIPE", "QUIT",
                 "SEGV", "TERM", "USR1", "USR2", "WINCH", "CONT", "STOP", "TSTP",
                 "BUS", "SYS", "TRAP", "XCPU", "XFSZ", "VTALRM", "PROF", "TTIN", "TTOU",
                 "URG", "IO")
    if hasattr(_signal, "SIG" + name)
}
SIGNAL_NAMES: dict[int, str] = {number: name for name, number in SIGNALS.items()}


class WindowSize(Record):
    __slots__ = ("columns", "rows", "width_px", "height_px")  # noqa: RUF023 (field order)
    columns: int
    rows: int
    width_px: int
    height_px: int

    def __init__(self, columns: int, rows: int, width_px: int = 0, height_px: int = 0) -> None:
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "width_px", width_px)
        object.__setattr__(self, "height_px", height_px)

    def encode(self, w: Writer) -> Writer:
        return w.u32(self.columns).u32(self.rows).u32(self.width_px).u32(self.height_px)

    @classmethod
    def decode(cls, r: Reader) -> WindowSize:
        size = cls(r.u32(), r.u32(), r.u32(), r.u32())
        if max(size.columns, size.rows, size.width_px, size.height_px) > MAX_DIMENSION:
            raise InvalidInput("window size out of range")
        return size


class PtyRequest(Record):
    __slots__ = ("term", "size")  # noqa: RUF023 (field order)
    term: str
    size: WindowSize

    def __init__(self, term: str, size: WindowSize) -> None:
        object.__setattr__(self, "term", term)
        object.__setattr__(self, "size", size)

    def encode(self) -> bytes:
        return self.size.encode(Writer().text(self.term)).getvalue()

    @classmethod
    def decode(cls, payload: bytes) -> PtyRequest:
        r = Reader(payload)
        term = r.text(MAX_TERM)
        if not term.isprintable():
            raise InvalidInput("terminal type is not printable")
        size = WindowSize.decode(r)
        r.end()
        return cls(term, size)


class ExitSignal(Record):
    __slots__ = ("signal", "core_dumped", "message")  # noqa: RUF023 (field order)
    signal: str
    core_dumped: bool
    message: str

    def __init__(self, signal: str, core_dumped: bool = False, message: str = "") -> None:
        object.__setattr__(self, "signal", signal)
        object.__setattr__(self, "core_dumped", core_dumped)
        object.__setattr__(self, "message", message)

    def encode(self) -> bytes:
        return (Writer().name(self.signal).boolean(self.core_dumped)
                .vbytes(cut_utf8(self.message, MAX_MESSAGE)).getvalue())

    @classmethod
    def decode(cls, payload: bytes) -> ExitSignal:
        r = Reader(payload)
        result = cls(r.name(), r.boolean(), r.text(MAX_MESSAGE))
        r.end()
        return result


def encode_env(name: str, value: str) -> bytes:
    return Writer().name(name).text(value).getvalue()


def decode_env(payload: bytes) -> tuple[str, str]:
    r = Reader(payload)
    name, value = r.name(), r.text(MAX_ENV_VALUE)
    r.end()
    if "=" in name:
        raise InvalidInput("environment variable name contains '='")
    return name, value


def encode_subsystem(name: str) -> bytes:
    return Writer().name(name).getvalue()


def decode_subsystem(payload: bytes) -> str:
    r = Reader(payload)
    name = r.name()
    r.end()
    return name


def encode_exec(command: str) -> bytes:
    return Writer().text(command).getvalue()


def decode_exec(payload: bytes) -> str:
    r = Reader(payload)
    command = r.text(MAX_COMMAND)
    r.end()
    if "\x00" in command:
        raise InvalidInput("command contains a NUL byte")
    return command


def encode_window_change(size: WindowSize) -> bytes:
    return size.encode(Writer()).getvalue()


def decode_window_change(payload: bytes) -> WindowSize:
    r = Reader(payload)
    size = WindowSize.decode(r)
    r.end()
    return size


def encode_signal(name: str) -> bytes:
    if name not in SIGNALS:
        raise ValueError(f"unknown signal {name!r}")
    return Writer().name(name).getvalue()


def decode_signal(payload: bytes) -> int:
    """The signal number on this machine; an unknown name is the peer's error."""
    r = Reader(payload)
    name = r.name()
    r.end()
    if name not in SIGNALS:
        raise InvalidInput(f"unknown signal {name!r}")
    return SIGNALS[name]


def encode_exit_status(status: int) -> bytes:
    return Writer().u32(status & 0xFFFFFFFF).getvalue()


def decode_exit_status(payload: bytes) -> int:
    r = Reader(payload)
    status = r.u32()
    r.end()
    return status


def exit_code_for_signal(name: str) -> int:
    """What a shell reports for a command killed by ``name``: 128 + its number (ssh too).
    A name outside our table is looked up in this machine's signals before giving up."""
    number = SIGNALS.get(name)
    if number is None:
        number = int(getattr(_signal, "SIG" + name, 0))
    return 128 + number
