"""ssh's ``~`` escapes on the keyboard stream of an interactive session.

:class:`EscapeScanner` is pure (bytes in, bytes and commands out): the rules for when
``~`` is special are subtle enough to deserve tests that need no terminal at all. So is
``~C``'s command line: the scanner collects and edits it (:class:`Echo` says what to show,
:class:`CommandLine` hands over the finished line) and :func:`parse_command` reads it.
"""

from __future__ import annotations

import enum

from common.channels.tunnel import ForwardSpec, parse_forward
from common.value_record import Record

ESCAPE_CHAR = 0x7E  # "~"
#: Bytes after which ``~`` starts an escape (ssh: after CR or LF, and at session start).
_LINE_ENDS = frozenset(b"\r\n")

ESCAPE_HELP = (
    "Supported escape sequences:\r\n"
    " ~.   - terminate connection\r\n"
    " ~C   - open a command line (add or cancel tunnels: -T, -L, -R, -D, -KL, -KR, -KD)\r\n"
    " ~^Z  - suspend qsh\r\n"
    " ~?   - this message\r\n"
    " ~~   - send the escape character by typing it twice\r\n"
    "(Note that escapes are only recognized immediately after newline.)\r\n"
)


# --- Escapes ------------------------------------------------------------------------------


class Escape(enum.Enum):
    DISCONNECT = "."
    HELP = "?"
    SUSPEND = "\x1a"
    #: ``~C``: the prompt is shown; the line follows as :class:`Echo` and :class:`CommandLine`.
    COMMAND = "C"


class Echo(Record):
    """Bytes to show on the terminal for the command line being typed (raw mode: the
    terminal does not echo). A Record, not a dataclass: an interactive session loads this
    module, and a dataclass costs ~1 ms to build at import (issue 18)."""

    __slots__ = ("data",)
    data: bytes

    def __init__(self, data: bytes) -> None:
        object.__setattr__(self, "data", data)


class CommandLine(Record):
    """A finished ``~C`` line (empty when cancelled or left blank: nothing to do)."""

    __slots__ = ("text",)
    text: str

    def __init__(self, text: str) -> None:
        object.__setattr__(self, "text", text)


#: The longest ``~C`` line: what follows is ignored (a spec is far shorter).
MAX_COMMAND_LINE = 512
_ERASE = frozenset(b"\x7f\x08")
_KILL_LINE = 0x15  # ^U
_CANCEL = frozenset(b"\x03\x1b")  # ^C, ESC


class EscapeScanner:
    """ssh's ``~`` escapes on a byte stream (the keyboard, in raw mode).

    ``~`` is special only as the first character of a line: after CR or LF, or at the very
    start of the session. Then the next byte decides: ``.`` disconnect, ``?`` help,
    ``^Z`` suspend, ``~`` a literal ``~``; anything else sends ``~`` and that byte. A
    ``~`` at the end of one read waits for the next read to be decided.

    :meth:`feed` returns the input as a list of bytes to send and :class:`Escape`
    commands, in order, so that what was typed before ``~.`` still goes out.

    After ``~C`` the bytes up to CR or LF are the command line, not sent: each typed
    character comes back as an :class:`Echo`, erase (DEL, ^H) and ^U edit the line, ^C or
    ESC abandon it, and Enter ends it as a :class:`CommandLine`. Then the next ``~`` is
    at a line start again, as after any escape.
    """

    __slots__ = ("at_line_start", "command", "pending")

    def __init__(self) -> None:
        self.at_line_start = True
        self.pending = False  # a line-start "~" waits for its next byte
        self.command: bytearray | None = None  # the ~C line being typed

    def feed(self, data: bytes) -> list[bytes | Escape | Echo | CommandLine]:
        out: list[bytes | Escape | Echo | CommandLine] = []
        start = 0  # beginning of the run of plain bytes not yet emitted
        for i, byte in enumerate(data):
            if self.command is not None:
                self._command_byte(byte, out)
                start = i + 1
                continue
            if self.pending:
                self.pending = False
                command = _ESCAPES.get(byte)
                if command is not None:
                    out.append(command)
                    start = i + 1
                    # After an escape command the line state is as if nothing was typed.
                    self.at_line_start = command is not Escape.DISCONNECT
                    if command is Escape.DISCONNECT:
                        return out  # nothing after ~. is sent
                    if command is Escape.COMMAND:
                        self.command = bytearray()
                    continue
                if byte == ESCAPE_CHAR:
                    out.append(b"~")
                    start = i + 1
                    self.at_line_start = False
                    continue
                # Not an escape: send the held "~" and carry on with this byte.
                out.append(b"~")
                start = i
            elif byte == ESCAPE_CHAR and self.at_line_start:
                if i > start:
                    out.append(data[start:i])
                self.pending = True
                start = i + 1
                continue
            self.at_line_start = byte in _LINE_ENDS
        if start < len(data):
            out.append(data[start:])
        return _merge(out)

    def _command_byte(self, byte: int, out: list[bytes | Escape | Echo | CommandLine]) -> None:
        line = self.command
        assert line is not None
        if byte in _LINE_ENDS:
            self.command = None
            out.append(Echo(b"\r\n"))
            out.append(CommandLine(line.decode("utf-8", errors="replace")))
        elif byte in _CANCEL:
            self.command = None
            out.append(Echo(b"\r\n"))
            out.append(CommandLine(""))
        elif byte in _ERASE:
            if line:
                del line[-1]
                out.append(Echo(b"\b \b"))
        elif byte == _KILL_LINE:
            out.append(Echo(b"\b \b" * len(line)))
            line.clear()
        elif 0x20 <= byte < 0x7F and len(line) < MAX_COMMAND_LINE:
            line.append(byte)
            out.append(Echo(bytes((byte,))))


_ESCAPES = {ord(e.value): e for e in Escape}

COMMAND_HELP = (
    "Commands:\n"
    "      -T[bind_address:]port:host:hostport    Request local forward (-L: the same)\n"
    "      -R[bind_address:]port:host:hostport    Request remote forward\n"
    "      -D[bind_address:]port                  Request dynamic forward\n"
    "      -KL[bind_address:]port                 Cancel local forward (-KT: the same)\n"
    "      -KR[bind_address:]port                 Cancel remote forward\n"
    "      -KD[bind_address:]port                 Cancel dynamic forward"
)


class Command(Record):
    """A parsed ``~C`` line. ``action``: "open" (``spec``), "cancel" (``kind``, ``bind``,
    ``port``), "help", or "none" (an empty line)."""

    __slots__ = ("action", "spec", "kind", "bind", "port")  # noqa: RUF023 (field order)
    action: str
    spec: ForwardSpec | None
    kind: str
    bind: str
    port: int

    def __init__(self, action: str, spec: ForwardSpec | None = None, kind: str = "",
                 bind: str = "", port: int = 0) -> None:
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "bind", bind)
        object.__setattr__(self, "port", port)


_KINDS = {"T": "local", "L": "local", "R": "remote", "D": "dynamic"}


def parse_command(text: str) -> Command:
    """ssh's ``~C`` syntax: ``-L 8080:host:80`` (the space optional), ``-KR 8080``, ``?``
    or ``-h`` for help. ValueError with a one-line reason otherwise."""
    text = text.strip()
    if not text:
        return Command("none")
    if text in ("?", "-h", "help"):
        return Command("help")
    if not text.startswith("-") or len(text) < 2:
        raise ValueError("invalid command (? for help)")
    cancel = text[1] == "K"
    letter = text[2:3] if cancel else text[1]
    kind = _KINDS.get(letter)
    if kind is None:
        raise ValueError(f"unknown command {text.split()[0]!r} (? for help)")
    rest = text[3 if cancel else 2:].strip()
    if not rest:
        raise ValueError("missing forward specification (? for help)")
    if not cancel:
        return Command("open", spec=parse_forward(kind, rest))
    # Cancelling names the listener: [bind_address:]port.
    try:
        spec = parse_forward("dynamic", rest)
    except ValueError:
        raise ValueError(f"bad listener {rest!r}: expected [bind_address:]port") from None
    return Command("cancel", kind=kind, bind=spec.bind, port=spec.port)


def _merge(items: list[bytes | Escape | Echo | CommandLine]
           ) -> list[bytes | Escape | Echo | CommandLine]:
    """Adjacent byte runs as one write (and adjacent echoes)."""
    merged: list[bytes | Escape | Echo | CommandLine] = []
    for item in items:
        if isinstance(item, Echo) and merged and isinstance(merged[-1], Echo):
            merged[-1] = Echo(merged[-1].data + item.data)
        elif isinstance(item, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] = merged[-1] + item
        elif item != b"":
            merged.append(item)
    return merged
