"""The ``copy`` channel: qcp's sub-protocol, as messages and bounded codecs (docs/PROTOCOL.md §10A).

One channel carries one copy in one direction. The client opens it with an
:class:`OpenRequest` (direction, options, the paths as typed); then the *sender* (the
client for an upload, the server for a download) streams the tree as framed messages in
the channel's data, and the *receiver* answers in the other direction with one
:class:`Status` per entry and, for ``--resume``, one :class:`Have` per file. Nothing waits
for a round trip except a resumed file: statuses come back while later files are sent.

Every message is ``u8 type ‖ u32 length ‖ body``, its length bounded per type before the
body is read. A file's content is *not* framed: after :class:`FileEntry` (or after
:class:`Start` when resuming) exactly ``size - offset`` raw bytes follow in the stream,
then :class:`End` with the digest of the whole file (or :class:`Abort`, when the sender
could not read it all and padded the rest). That keeps the bulk path free of framing and
copies: the sender's reads go to the channel as they are.

The digest is GMAC (AES-256-GCM over the file as associated data, nothing encrypted) under
a key the client draws for each copy (:class:`FileDigest`): a keyed universal hash, 5-20
times faster than SHA-256 here, and as good at its job, which is to prove that what was
written is what was read (the channel itself is already authenticated).

Only encoding, decoding and the name rules live here: no files, no asyncio.
"""

from __future__ import annotations

from typing import ClassVar

from common.crypto.gmac import ONE_SHOT, Gmac, GmacKey
from common.errors import InvalidInput
from common.wire import Reader, Record, Writer

COPY = "copy"
VERSION = 2

UPLOAD = 0  # the client sends files, the server writes them
DOWNLOAD = 1  # the server sends files, the client writes them

FLAG_RECURSIVE = 0x01
FLAG_PRESERVE = 0x02
FLAG_RESUME = 0x04
_FLAGS = FLAG_RECURSIVE | FLAG_PRESERVE | FLAG_RESUME

#: A whole path (the open request's, a failure's): Linux's PATH_MAX.
MAX_PATH = 4096
#: One name component from the peer: NAME_MAX.
MAX_COMPONENT = 255
#: Directory levels below a top-level entry.
MAX_DEPTH = 256
#: Paths in one open request (the mux's 64 KiB payload bound is the real cap).
MAX_PATHS = 1024
#: Sources the client names (upload: counted on the client, for scp's destination rules).
MAX_SOURCES = 1_000_000
#: Entries (files, directories, links) in one copy.
MAX_ENTRIES = 1 << 26
#: One file's size: far above any disk, far below what an off_t or our counters overflow at.
MAX_FILE_SIZE = 1 << 52
#: A failure's reason text.
MAX_REASON = 1024
#: Times, in nanoseconds since the epoch (before 1970 is sent as 0).
MAX_TIME_NS = (1 << 63) - 1
#: The per-copy digest key (AES-256) in the open request, and a digest (the GMAC tag).
KEY_SIZE = 32
DIGEST_SIZE = 16
#: The copy's digest key, set up once per copy (the engine and tests build it from here).
DigestKey = GmacKey
HEADER_SIZE = 5
#: Largest body of any message (a symlink: name + target + fixed fields).
MAX_BODY = 16 * 1024

# Message types: sender -> receiver
FILE = 0x01
DIR = 0x02
END_DIR = 0x03
SYMLINK = 0x04
START = 0x05
END = 0x06
ABORT = 0x07
FAILURE = 0x08
DONE = 0x09
# receiver -> sender
HAVE = 0x11
STATUS = 0x12
FINISHED = 0x13
# either way: a protocol error, the last message before the channel closes
ERROR = 0x1F


def check_name(name: bytes) -> bytes:
    """A name component the peer may create: not empty, no ``/`` or NUL, not ``.`` or
    ``..``, at most :data:`MAX_COMPONENT` bytes. Anything else could escape the
    destination, so it is the peer's protocol error."""
    if not name or len(name) > MAX_COMPONENT:
        raise InvalidInput(f"name of {len(name)} bytes (1..{MAX_COMPONENT} allowed)")
    if b"/" in name or b"\x00" in name or name in (b".", b".."):
        raise InvalidInput("name is '.' or '..' or contains '/' or NUL")
    return name


def check_link_target(target: bytes) -> bytes:
    """A symlink's text: data, never followed by us; only length and NUL are checked."""
    if not target or len(target) >= MAX_PATH or b"\x00" in target:
        raise InvalidInput("symlink target empty, too long or containing NUL")
    return target


def _time(value: int) -> int:
    return min(max(value, 0), MAX_TIME_NS)


def _read_time(r: Reader) -> int:
    value = r.u64()
    if value > MAX_TIME_NS:
        raise InvalidInput("time out of range")
    return value


def _read_entry(r: Reader) -> int:
    entry = r.u32()
    if entry >= MAX_ENTRIES:
        raise InvalidInput(f"entry number {entry} beyond the limit of {MAX_ENTRIES}")
    return entry


def _read_reason(r: Reader) -> str:
    return r.vbytes(MAX_REASON).decode("utf-8", "replace")


def _write_reason(w: Writer, reason: str) -> Writer:
    return w.vbytes(reason.encode("utf-8", "replace")[:MAX_REASON])


def _frame(kind: int, body: bytes) -> bytes:
    return kind.to_bytes(1, "big") + len(body).to_bytes(4, "big") + body


class FileDigest(Gmac):
    """GMAC-AES-256 of one file's bytes (:mod:`common.crypto.gmac`) under the copy's key,
    with the nonce ``u8 prefix ‖ 3 zero bytes ‖ u64 entry``: ``prefix`` is 1 for a resume's
    HAVE (the bytes the receiver already has), 0 for END (the whole file)."""

    __slots__ = ()

    ONE_SHOT = ONE_SHOT

    def __init__(self, key: DigestKey, entry: int, prefix: bool = False) -> None:
        super().__init__(key, bytes([1 if prefix else 0, 0, 0, 0]) + entry.to_bytes(8, "big"))


def file_digest(key: bytes, entry: int, data: bytes, prefix: bool = False) -> bytes:
    """One file's digest in one call (tests, vectors)."""
    digest = FileDigest(DigestKey(key), entry, prefix)
    digest.update(data)
    return digest.digest()


class OpenRequest(Record):
    """CHANNEL_OPEN payload. ``paths``: an upload's one target, a download's sources,
    each exactly as typed after ``host:`` (the server resolves ``~`` and relative
    paths). ``sources``: how many sources the copy has (the receiver's rule "several
    sources need a directory"). ``limit``: bytes per second, 0 = none (the sender's).
    ``key``: the copy's digest key (:class:`FileDigest`), drawn by the client."""

    __slots__ = ("direction", "paths", "sources", "recursive", "preserve", "resume", "limit",  # noqa: RUF023 (field order)
                 "key", "version")

    direction: int
    paths: tuple[bytes, ...]
    sources: int
    recursive: bool
    preserve: bool
    resume: bool
    limit: int
    key: bytes
    version: int

    def __init__(self, direction: int, paths: tuple[bytes, ...], sources: int,
                 recursive: bool = False, preserve: bool = False, resume: bool = False,
                 limit: int = 0, key: bytes = bytes(KEY_SIZE), version: int = VERSION) -> None:
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "paths", paths)
        object.__setattr__(self, "sources", sources)
        object.__setattr__(self, "recursive", recursive)
        object.__setattr__(self, "preserve", preserve)
        object.__setattr__(self, "resume", resume)
        object.__setattr__(self, "limit", limit)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "version", version)

    def encode(self) -> bytes:
        flags = ((FLAG_RECURSIVE if self.recursive else 0)
                 | (FLAG_PRESERVE if self.preserve else 0)
                 | (FLAG_RESUME if self.resume else 0))
        if len(self.paths) > MAX_PATHS or any(len(p) > MAX_PATH for p in self.paths):
            raise ValueError("too many or too long paths for one copy")
        if len(self.key) != KEY_SIZE:
            raise ValueError("the digest key is 32 bytes")
        w = (Writer().u8(self.version).u8(self.direction).u8(flags).u64(self.limit)
             .fixed(self.key).u32(self.sources).u16(len(self.paths)))
        for path in self.paths:
            w.vbytes(path)
        return w.getvalue()

    @classmethod
    def decode(cls, payload: bytes) -> OpenRequest:
        r = Reader(payload)
        version = r.u8()
        if version != VERSION:
            raise InvalidInput(f"copy protocol version {version} (this side speaks {VERSION})")
        direction, flags, limit = r.u8(), r.u8(), r.u64()
        key, sources, count = r.fixed(KEY_SIZE), r.u32(), r.u16()
        if direction not in (UPLOAD, DOWNLOAD):
            raise InvalidInput(f"unknown copy direction {direction}")
        if flags & ~_FLAGS:
            raise InvalidInput(f"unknown copy flags 0x{flags:02x}")
        if count > MAX_PATHS or not 1 <= sources <= MAX_SOURCES:
            raise InvalidInput("path or source count out of range")
        paths = []
        for _ in range(count):
            path = r.vbytes(MAX_PATH)
            if b"\x00" in path:
                raise InvalidInput("path contains NUL")
            paths.append(path)
        r.end()
        if direction == UPLOAD and count != 1:
            raise InvalidInput("an upload names exactly one target")
        if direction == DOWNLOAD and (not count or count != sources):
            raise InvalidInput("a download names every source")
        return cls(direction, tuple(paths), sources, bool(flags & FLAG_RECURSIVE),
                   bool(flags & FLAG_PRESERVE), bool(flags & FLAG_RESUME), limit, key, version)


class FileEntry(Record):
    """A regular file; ``resume``: the sender waits for :class:`Have` before the data."""

    __slots__ = ("entry", "name", "mode", "size", "atime_ns", "mtime_ns",  # noqa: RUF023 (field order)
                 "resume")

    TYPE: ClassVar[int] = FILE
    entry: int
    name: bytes
    mode: int
    size: int
    atime_ns: int
    mtime_ns: int
    resume: bool

    def __init__(self, entry: int, name: bytes, mode: int, size: int, atime_ns: int = 0,
                 mtime_ns: int = 0, resume: bool = False) -> None:
        object.__setattr__(self, "entry", entry)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "atime_ns", atime_ns)
        object.__setattr__(self, "mtime_ns", mtime_ns)
        object.__setattr__(self, "resume", resume)

    def encode(self) -> bytes:
        return _frame(FILE, Writer().u32(self.entry).vbytes(self.name).u32(self.mode & 0o7777)
                      .u64(self.size).u64(_time(self.atime_ns)).u64(_time(self.mtime_ns))
                      .boolean(self.resume).getvalue())

    @classmethod
    def decode(cls, r: Reader) -> FileEntry:
        entry, name = _read_entry(r), check_name(r.vbytes(MAX_COMPONENT))
        mode, size = r.u32(), r.u64()
        if size > MAX_FILE_SIZE:
            raise InvalidInput(f"file size {size} beyond the limit of {MAX_FILE_SIZE}")
        return cls(entry, name, mode & 0o7777, size, _read_time(r), _read_time(r), r.boolean())


class DirEntry(Record):
    """A directory: the entries up to the matching :class:`EndDir` are inside it."""

    __slots__ = ("entry", "name", "mode", "atime_ns", "mtime_ns")  # noqa: RUF023 (field order)

    TYPE: ClassVar[int] = DIR
    entry: int
    name: bytes
    mode: int
    atime_ns: int
    mtime_ns: int

    def __init__(self, entry: int, name: bytes, mode: int, atime_ns: int = 0,
                 mtime_ns: int = 0) -> None:
        object.__setattr__(self, "entry", entry)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "atime_ns", atime_ns)
        object.__setattr__(self, "mtime_ns", mtime_ns)

    def encode(self) -> bytes:
        return _frame(DIR, Writer().u32(self.entry).vbytes(self.name).u32(self.mode & 0o7777)
                      .u64(_time(self.atime_ns)).u64(_time(self.mtime_ns)).getvalue())

    @classmethod
    def decode(cls, r: Reader) -> DirEntry:
        entry, name, mode = _read_entry(r), check_name(r.vbytes(MAX_COMPONENT)), r.u32()
        return cls(entry, name, mode & 0o7777, _read_time(r), _read_time(r))


class EndDir(Record):
    __slots__ = ()

    TYPE: ClassVar[int] = END_DIR

    def encode(self) -> bytes:
        return _frame(END_DIR, b"")

    @classmethod
    def decode(cls, r: Reader) -> EndDir:
        return cls()


class Symlink(Record):
    __slots__ = ("entry", "name", "target", "atime_ns", "mtime_ns")  # noqa: RUF023 (field order)

    TYPE: ClassVar[int] = SYMLINK
    entry: int
    name: bytes
    target: bytes
    atime_ns: int
    mtime_ns: int

    def __init__(self, entry: int, name: bytes, target: bytes, atime_ns: int = 0,
                 mtime_ns: int = 0) -> None:
        object.__setattr__(self, "entry", entry)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "atime_ns", atime_ns)
        object.__setattr__(self, "mtime_ns", mtime_ns)

    def encode(self) -> bytes:
        return _frame(SYMLINK, Writer().u32(self.entry).vbytes(self.name).vbytes(self.target)
                      .u64(_time(self.atime_ns)).u64(_time(self.mtime_ns)).getvalue())

    @classmethod
    def decode(cls, r: Reader) -> Symlink:
        entry, name = _read_entry(r), check_name(r.vbytes(MAX_COMPONENT))
        target = check_link_target(r.vbytes(MAX_PATH))
        return cls(entry, name, target, _read_time(r), _read_time(r))


class Start(Record):
    """Resume only: the data that follows begins at ``offset`` (0: a fresh copy)."""

    __slots__ = ("entry", "offset")

    TYPE: ClassVar[int] = START
    entry: int
    offset: int

    def __init__(self, entry: int, offset: int) -> None:
        object.__setattr__(self, "entry", entry)
        object.__setattr__(self, "offset", offset)

    def encode(self) -> bytes:
        return _frame(START, Writer().u32(self.entry).u64(self.offset).getvalue())

    @classmethod
    def decode(cls, r: Reader) -> Start:
        entry, offset = _read_entry(r), r.u64()
        if offset > MAX_FILE_SIZE:
            raise InvalidInput("resume offset out of range")
        return cls(entry, offset)


class End(Record):
    """The file's data is complete; ``digest`` is the whole file's (:class:`FileDigest`)."""

    __slots__ = ("entry", "digest")  # noqa: RUF023 (field order)

    TYPE: ClassVar[int] = END
    entry: int
    digest: bytes

    def __init__(self, entry: int, digest: bytes) -> None:
        object.__setattr__(self, "entry", entry)
        object.__setattr__(self, "digest", digest)

    def encode(self) -> bytes:
        assert len(self.digest) == DIGEST_SIZE
        return _frame(END, Writer().u32(self.entry).fixed(self.digest).getvalue())

    @classmethod
    def decode(cls, r: Reader) -> End:
        return cls(_read_entry(r), r.fixed(DIGEST_SIZE))


class Abort(Record):
    """The sender could not read the whole file (its data was padded): discard it."""

    __slots__ = ("entry", "reason")

    TYPE: ClassVar[int] = ABORT
    entry: int
    reason: str

    def __init__(self, entry: int, reason: str) -> None:
        object.__setattr__(self, "entry", entry)
        object.__setattr__(self, "reason", reason)

    def encode(self) -> bytes:
        return _frame(ABORT, _write_reason(Writer().u32(self.entry), self.reason).getvalue())

    @classmethod
    def decode(cls, r: Reader) -> Abort:
        return cls(_read_entry(r), _read_reason(r))


class Failure(Record):
    """Something the sender could not send (missing source, special file, unreadable):
    ``path`` as the sender's user would recognise it, ``errno`` 0 when there is none."""

    __slots__ = ("path", "errno", "reason")  # noqa: RUF023 (field order)

    TYPE: ClassVar[int] = FAILURE
    path: bytes
    errno: int
    reason: str

    def __init__(self, path: bytes, errno: int, reason: str) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "errno", errno)
        object.__setattr__(self, "reason", reason)

    def encode(self) -> bytes:
        return _frame(FAILURE, _write_reason(Writer().vbytes(self.path[:MAX_PATH])
                                             .u32(self.errno), self.reason).getvalue())

    @classmethod
    def decode(cls, r: Reader) -> Failure:
        return cls(r.vbytes(MAX_PATH), r.u32(), _read_reason(r))


class Done(Record):
    """The sender's last message: how many entries it sent and failures it reported."""

    __slots__ = ("entries", "failures")

    TYPE: ClassVar[int] = DONE
    entries: int
    failures: int

    def __init__(self, entries: int, failures: int) -> None:
        object.__setattr__(self, "entries", entries)
        object.__setattr__(self, "failures", failures)

    def encode(self) -> bytes:
        return _frame(DONE, Writer().u32(self.entries).u32(self.failures).getvalue())

    @classmethod
    def decode(cls, r: Reader) -> Done:
        return cls(r.u32(), r.u32())


class Have(Record):
    """Resume: the receiver holds ``have`` bytes of the file; ``digest`` is theirs
    (:class:`FileDigest` with ``prefix`` set)."""

    __slots__ = ("entry", "have", "digest")  # noqa: RUF023 (field order)

    TYPE: ClassVar[int] = HAVE
    entry: int
    have: int
    digest: bytes

    def __init__(self, entry: int, have: int, digest: bytes) -> None:
        object.__setattr__(self, "entry", entry)
        object.__setattr__(self, "have", have)
        object.__setattr__(self, "digest", digest)

    def encode(self) -> bytes:
        assert len(self.digest) == DIGEST_SIZE
        return _frame(HAVE, Writer().u32(self.entry).u64(self.have).fixed(self.digest)
                      .getvalue())

    @classmethod
    def decode(cls, r: Reader) -> Have:
        entry, have = _read_entry(r), r.u64()
        if have > MAX_FILE_SIZE:
            raise InvalidInput("resume size out of range")
        return cls(entry, have, r.fixed(DIGEST_SIZE))


class Status(Record):
    """The receiver's word on one entry: ``errno`` 0 is "arrived (and verified)"; else
    ``reason`` and ``path`` (the receiver's, as its user would recognise it)."""

    __slots__ = ("entry", "errno", "reason", "path")  # noqa: RUF023 (field order)

    TYPE: ClassVar[int] = STATUS
    entry: int
    errno: int
    reason: str
    path: bytes

    def __init__(self, entry: int, errno: int = 0, reason: str = "", path: bytes = b"") -> None:
        object.__setattr__(self, "entry", entry)
        object.__setattr__(self, "errno", errno)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "path", path)

    @property
    def ok(self) -> bool:
        return self.errno == 0 and not self.reason

    def encode(self) -> bytes:
        return _frame(STATUS, _write_reason(Writer().u32(self.entry).u32(self.errno),
                                            self.reason).vbytes(self.path[:MAX_PATH]).getvalue())

    @classmethod
    def decode(cls, r: Reader) -> Status:
        return cls(_read_entry(r), r.u32(), _read_reason(r), r.vbytes(MAX_PATH))


class Finished(Record):
    """The receiver's last message, after the sender's :class:`Done` and every status."""

    __slots__ = ("entries", "failures")

    TYPE: ClassVar[int] = FINISHED
    entries: int
    failures: int

    def __init__(self, entries: int, failures: int) -> None:
        object.__setattr__(self, "entries", entries)
        object.__setattr__(self, "failures", failures)

    def encode(self) -> bytes:
        return _frame(FINISHED, Writer().u32(self.entries).u32(self.failures).getvalue())

    @classmethod
    def decode(cls, r: Reader) -> Finished:
        return cls(r.u32(), r.u32())


class Error(Record):
    """A protocol error: the last message before the channel closes."""

    __slots__ = ("reason",)

    TYPE: ClassVar[int] = ERROR
    reason: str

    def __init__(self, reason: str) -> None:
        object.__setattr__(self, "reason", reason)

    def encode(self) -> bytes:
        return _frame(ERROR, _write_reason(Writer(), self.reason).getvalue())

    @classmethod
    def decode(cls, r: Reader) -> Error:
        return cls(_read_reason(r))


Message = (FileEntry | DirEntry | EndDir | Symlink | Start | End | Abort | Failure | Done
           | Have | Status | Finished | Error)

_BY_TYPE: dict[int, type[Message]] = {
    cls.TYPE: cls for cls in (FileEntry, DirEntry, EndDir, Symlink, Start, End, Abort, Failure,
                              Done, Have, Status, Finished, Error)
}
#: What a receiver accepts from a sender, and the other way round.
FROM_SENDER = frozenset({FILE, DIR, END_DIR, SYMLINK, START, END, ABORT, FAILURE, DONE, ERROR})
FROM_RECEIVER = frozenset({HAVE, STATUS, FINISHED, ERROR})


def decode_header(header: bytes, allowed: frozenset[int]) -> tuple[int, int]:
    """``(type, body length)`` of a message header, refused before the body is read if
    the type is unknown here or the length beyond :data:`MAX_BODY`."""
    if len(header) != HEADER_SIZE:
        raise InvalidInput("truncated copy message header")
    kind, length = header[0], int.from_bytes(header[1:5], "big")
    if kind not in allowed:
        raise InvalidInput(f"unexpected copy message type 0x{kind:02x}")
    if length > MAX_BODY:
        raise InvalidInput(f"copy message of {length} bytes exceeds the limit of {MAX_BODY}")
    return kind, length


def decode_body(kind: int, body: bytes) -> Message:
    r = Reader(body)
    message = _BY_TYPE[kind].decode(r)
    r.end()
    return message


def decode_message(data: bytes, allowed: frozenset[int]) -> Message:
    """One whole message (header and body), e.g. for tests and vectors."""
    kind, length = decode_header(data[:HEADER_SIZE], allowed)
    if len(data) != HEADER_SIZE + length:
        raise InvalidInput("copy message length does not match its header")
    return decode_body(kind, data[HEADER_SIZE:])
