"""qcp's progress meter: one line per file, redrawn in place, as scp draws it.

    report.pdf                     42%   43MB  112.4MB/s   00:01 ETA

With ``-r`` a second line under it keeps the total (files, bytes, rate, elapsed time):
the copy's total size is not known in advance (the receiving side walks the tree as the
files come), so it has no percentage.

It draws on stderr, and only when stderr is a terminal: progress is for the person
watching, and stdout may be redirected to a log where ``\\r`` redraws do not belong (scp
draws on stdout when stdout is a tty; ``qcp ... > log`` then still shows the meter here).
``-q`` or no terminal: no meter at all (the CLI makes none).

Cost: :meth:`advance` is called by the engine for every block moved; it adds two integers
and compares the clock with the next redraw time, and redraws at most ``REDRAWS_PER_SECOND``
times a second, so a fast copy pays for ~10 lines a second however small the blocks.
No library: tqdm and rich are not installed, and the meter is ~150 lines.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable

REDRAWS_PER_SECOND = 10
_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")
#: Columns for everything right of the name: " 100% 1023MB 1023.9MB/s   00:00 ETA".
_STATS_WIDTH = 38


def human_size(n: float) -> str:
    """Bytes with a binary unit, as scp shows them: ``0B``, ``1023B``, ``1.5KB``,
    ``42MB`` (three significant figures at most)."""
    value = float(n)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            if unit == "B" or value >= 100:
                return f"{value:.0f}{unit}"
            return f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def clock(seconds: float) -> str:
    """``mm:ss``, ``h:mm:ss`` past an hour; ``--:--`` when unknown."""
    if seconds < 0 or seconds != seconds or seconds > 99 * 3600:
        return "--:--"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes:02d}:{secs:02d}"


def shown_name(name: str) -> str:
    """The name as a terminal may show it: control characters (a newline in a file name,
    an escape sequence) become ``?``."""
    return "".join(c if c.isprintable() else "?" for c in name)


def file_line(name: str, done: int, size: int, elapsed: float, width: int, *,
              finished: bool = False, moved: int | None = None) -> str:
    """One file's line, exactly ``width - 1`` columns (the last one left free so that a
    full line does not wrap). ``done`` counts from the start of the file (a resumed file
    starts at its offset); ``moved`` is what crossed the connection in ``elapsed``
    (the rate's numerator; ``done`` when None)."""
    moved = done if moved is None else moved
    percent = 100 if size == 0 else min(100, done * 100 // size)
    rate = moved / elapsed if elapsed > 0 else 0.0
    if finished:
        when = f"{clock(elapsed)}    "
    elif rate > 0:
        when = f"{clock((size - done) / rate)} ETA"
    else:
        when = "--:-- ETA"
    stats = f" {percent:3d}% {human_size(done):>6} {human_size(rate) + '/s':>10} {when:>9}"
    room = max(1, width - 1 - len(stats))
    label = shown_name(name)
    if len(label) > room:
        label = "..." + label[-(room - 3):] if room > 3 else label[:room]
    return f"{label:<{room}}{stats}"[:max(1, width - 1)]


def total_line(files: int, done: int, elapsed: float, width: int) -> str:
    rate = done / elapsed if elapsed > 0 else 0.0
    text = (f"total: {files} file{'' if files == 1 else 's'} {human_size(done)} "
            f"{human_size(rate)}/s {clock(elapsed)}")
    return text[:max(1, width - 1)]


class TtyProgress:
    """The engine's ``Progress`` (``common.transfer.Progress``) drawn on a terminal.

    ``write`` gets the bytes to show and ``now`` the clock (both injectable, for tests);
    ``width`` is re-read at each file from the terminal unless fixed.
    """

    def __init__(self, write: Callable[[bytes], object], *, total: bool = False,
                 width: int | None = None, now: Callable[[], float] = time.monotonic,
                 columns: Callable[[], int] | None = None) -> None:
        self._write = write
        self._now = now
        self._columns = columns or (lambda: width or 80)
        self.width = width or self._columns()
        self.show_total = total
        self._name = ""
        self._size = 0
        self._done = 0
        self._moved = 0
        self._began = 0.0
        self._next_draw = 0.0
        self._active = False
        self._files = 0
        self._all_moved = 0
        self._started: float | None = None
        self.redraws = 0

    @classmethod
    def on_terminal(cls, *, total: bool, fd: int = 2) -> TtyProgress | None:
        """A meter on ``fd`` if it is a terminal, else None (no meter)."""
        try:
            if not os.isatty(fd):
                return None
        except OSError:
            return None

        def write(data: bytes) -> None:
            with contextlib.suppress(OSError):  # a vanished terminal must not stop a copy
                while data:
                    data = data[os.write(fd, data):]

        def columns() -> int:
            return shutil.get_terminal_size((80, 24)).columns

        return cls(write, total=total, columns=columns)

    # -- the engine's calls

    def start(self, name: str, size: int, offset: int) -> None:
        now = self._now()
        if self._started is None:
            self._started = now
        self.width = max(20, self._columns())
        self._name, self._size = name, size
        self._done, self._moved = offset, 0
        self._began = now
        self._active = True
        self._draw(now)

    def advance(self, nbytes: int) -> None:
        self._done += nbytes
        self._moved += nbytes
        self._all_moved += nbytes
        now = self._now()
        if now >= self._next_draw:
            self._draw(now)

    def end(self, name: str, ok: bool) -> None:
        if not self._active:
            return
        now = self._now()
        if ok:
            self._files += 1
            self._done = self._size
        self._draw(now, finished=ok)
        self._write(b"\n")  # the file's line stays; the next one starts below
        self._active = False

    def close(self) -> None:
        """Leave the cursor on a fresh line: the final total (``-r``), or the end of a file
        cut short (Ctrl-C, a lost connection), so that the next line is not written over it."""
        if self._active:
            self._write(b"\n")
            self._active = False
        if self.show_total and self._started is not None:
            line = total_line(self._files, self._all_moved, self._now() - self._started,
                              self.width)
            self._write(f"\r{line}\x1b[K\n".encode(errors="replace"))
            self._started = None

    # -- drawing

    def _draw(self, now: float, *, finished: bool = False) -> None:
        self._next_draw = now + 1 / REDRAWS_PER_SECOND
        self.redraws += 1
        line = file_line(self._name, self._done, self._size, now - self._began, self.width,
                         finished=finished, moved=self._moved)
        out = f"\r{line}\x1b[K"
        if self.show_total and self._started is not None:
            total = total_line(self._files, self._all_moved, now - self._started, self.width)
            # The total on the line below, then back up to the file's line.
            out += f"\n\r{total}\x1b[K\x1b[1A\r"
        self._write(out.encode(errors="replace"))
