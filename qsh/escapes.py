"""ssh's ``~`` escapes on the keyboard stream of an interactive session.

:class:`EscapeScanner` is pure (bytes in, bytes and commands out): the rules for when
``~`` is special are subtle enough to deserve tests that need no terminal at all.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

ESCAPE_CHAR = 0x7E  # "~"
#: Bytes after which ``~`` starts an escape (ssh: after CR or LF, and at session start).
_LINE_ENDS = frozenset(b"\r\n")

ESCAPE_HELP = (
    "Supported escape sequences:\r\n"
    " ~.   - terminate connection\r\n"
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


@dataclass
class EscapeScanner:
    """ssh's ``~`` escapes on a byte stream (the keyboard, in raw mode).

    ``~`` is special only as the first character of a line: after CR or LF, or at the very
    start of the session. Then the next byte decides: ``.`` disconnect, ``?`` help,
    ``^Z`` suspend, ``~`` a literal ``~``; anything else sends ``~`` and that byte. A
    ``~`` at the end of one read waits for the next read to be decided.

    :meth:`feed` returns the input as a list of bytes to send and :class:`Escape`
    commands, in order, so that what was typed before ``~.`` still goes out.
    """

    at_line_start: bool = True
    pending: bool = False  # a line-start "~" waits for its next byte

    def feed(self, data: bytes) -> list[bytes | Escape]:
        out: list[bytes | Escape] = []
        start = 0  # beginning of the run of plain bytes not yet emitted
        for i, byte in enumerate(data):
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


_ESCAPES = {ord(e.value): e for e in Escape}


def _merge(items: list[bytes | Escape]) -> list[bytes | Escape]:
    """Adjacent byte runs as one write."""
    merged: list[bytes | Escape] = []
    for item in items:
        if isinstance(item, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] = merged[-1] + item
        elif item != b"":
            merged.append(item)
    return merged
