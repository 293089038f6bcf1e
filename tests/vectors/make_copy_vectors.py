"""Writes tests/vectors/copy.json: every copy-channel message (docs/PROTOCOL.md §10A) with
its exact encoding. Run from the repository root: ``python3 tests/vectors/make_copy_vectors.py``.
The test (tests/test_copy_protocol.py) rebuilds each message from its fields and checks
both directions against the stored bytes, so a change of the wire format shows up there."""

from __future__ import annotations

import json
from pathlib import Path

from common.channels.copy import (
    DOWNLOAD,
    UPLOAD,
    Abort,
    DirEntry,
    Done,
    End,
    EndDir,
    Error,
    Failure,
    FileEntry,
    Finished,
    Have,
    Message,
    OpenRequest,
    Start,
    Status,
    Symlink,
    file_digest,
)
from common.wire import Record

DIGEST = bytes(range(16))
MESSAGES: list[Message] = [
    FileEntry(0, b"report.pdf", 0o644, 1_000_000, 1_700_000_000_000_000_000,
              1_700_000_001_500_000_000, False),
    FileEntry(7, b"caf\xe9 new\nline", 0o600, 0, 0, 0, True),
    DirEntry(1, b"photos", 0o755, 1_600_000_000_000_000_000, 1_600_000_000_000_000_001),
    EndDir(),
    Symlink(2, b"latest", b"../photos/2024", 5, 6),
    Start(7, 4096),
    End(0, DIGEST),
    Abort(3, "file shrank while being read"),
    Failure(b"/srv/missing", 2, "No such file or directory"),
    Done(12, 1),
    Have(7, 4096, DIGEST),
    Status(0),
    Status(4, 28, "No space left on device", b"backup/big.iso"),
    Status(5, 0xFFFFFFFF),
    Finished(12, 1),
    Error("entry 9 out of order (expected 8)"),
]
OPENS = [
    OpenRequest(UPLOAD, (b"~/incoming",), 3, recursive=True),
    OpenRequest(DOWNLOAD, (b"/var/log/syslog", b"notes.txt"), 2, preserve=True, resume=True,
                limit=1_250_000, key=bytes(range(0x20, 0x40))),
]
#: (key, entry, prefix, data): GMAC-AES-256 digests of files (END's, and HAVE's with prefix).
_KEY = bytes(range(0x40, 0x60))
DIGESTS = [
    (_KEY, 0, False, b""),
    (_KEY, 0, True, b""),
    (_KEY, 7, False, b"hello, world\n"),
    (_KEY, 7, True, b"hello, world\n"),
    (_KEY, (1 << 26) - 1, False, bytes(range(256)) * 5),
]


def _fields(obj: Record) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in obj.__slots__:  # (a common.wire.Record: its fields, in order)
        value = getattr(obj, name)
        if isinstance(value, bytes):
            value = {"hex": value.hex()}
        elif isinstance(value, tuple):
            value = [{"hex": v.hex()} for v in value]
        out[name] = value
    return out


def build() -> dict[str, object]:
    return {
        "note": "docs/PROTOCOL.md section 10A; regenerate with tests/vectors/make_copy_vectors.py",
        "messages": [{"type": type(m).__name__, "fields": _fields(m), "encoding": m.encode().hex()}
                     for m in MESSAGES],
        "open": [{"fields": _fields(o), "encoding": o.encode().hex()} for o in OPENS],
        "digests": [{"key": k.hex(), "entry": e, "prefix": p, "data": d.hex(),
                     "digest": file_digest(k, e, d, p).hex()} for k, e, p, d in DIGESTS],
    }


if __name__ == "__main__":
    path = Path(__file__).with_name("copy.json")
    path.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {path}")
