"""The public half of a long-term key (QSMP's client key): its canonical blob, its
fingerprint, the one-line text of ``.pub`` files and known_hosts, and signature checks. On its
own because the handshake, known_hosts and authorized_keys need only this half, and the
private key file's format (HostKey's) is built on top of it.

Public key blob (used in the handshake, in ``.pub`` files and in ``known_hosts``)::

    magic        4 bytes   b"QSK1"
    key_id      16 bytes   random; identifies the key (spec: "Key ID")
    expiration   u64       seconds since 1970-01-01 UTC (see below)
    algorithm    u8 len + printable ASCII, <= 64 bytes: the signature's wire name
    verify_key   u32 len + bytes, 1..65536 bytes

All integers are big-endian (common/wire.py). The encoding is canonical: every byte is
accounted for and trailing bytes are refused, so two different blobs never decode to the same
key and a fingerprint identifies exactly one key.

Deviations from the spec, and why:

* ``expiration`` counts from the Unix epoch, not 1900: every OS clock, file timestamp and
  library speaks Unix time, and a second epoch is a standing invitation to off-by-70-years bugs.
* The spec's 40-byte "configuration" (a whole protocol string) becomes just the signature
  algorithm's name. KEM and AEAD are negotiated per connection now (DESIGN.md section 2); the
  only thing a long-term key is bound to is its signature scheme.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from common.accounts.files import MAX_KEY_FILE, KeyFileError, read_text
from common.crypto.registry import signature
from common.crypto.suites import Signature
from common.errors import InvalidInput, UnknownProtocol
from common.wire import MAX_NAME_LENGTH, Reader, Record, Writer

PUBLIC_MAGIC = b"QSK1"
KEY_ID_SIZE = 16
MAX_VERIFICATION_KEY = 64 * 1024
#: magic + key id + expiration + name + vbytes length + key.
MAX_PUBLIC_BLOB = 4 + KEY_ID_SIZE + 8 + 1 + MAX_NAME_LENGTH + 4 + MAX_VERIFICATION_KEY
U64_MAX = (1 << 64) - 1
LINE_PREFIX = "qsh-"
FINGERPRINT_PREFIX = "SHA3-256:"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{what} is not valid base64") from exc


class PublicKey(Record):
    """The QSMP client key: what a peer needs to check our signatures, and nothing secret."""

    __slots__ = (  # noqa: RUF023 (field order)
        "key_id", "expiration", "algorithm", "verification_key")
    key_id: bytes
    expiration: int
    algorithm: str
    verification_key: bytes

    def __init__(self, key_id: bytes, expiration: int, algorithm: str,
                 verification_key: bytes) -> None:
        object.__setattr__(self, "key_id", key_id)
        object.__setattr__(self, "expiration", expiration)
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "verification_key", verification_key)
        self.__post_init__()

    def __post_init__(self) -> None:
        # Constructed locally with bad values is our bug (ValueError); decode() only ever
        # builds valid instances because the Reader enforces the same bounds.
        if len(self.key_id) != KEY_ID_SIZE:
            raise ValueError(f"key_id must be {KEY_ID_SIZE} bytes")
        if not 0 <= self.expiration <= U64_MAX:
            raise ValueError("expiration out of the u64 range")
        if not (
            0 < len(self.algorithm) <= MAX_NAME_LENGTH
            and all(0x21 <= ord(c) <= 0x7E for c in self.algorithm)
        ):
            raise ValueError("algorithm must be a short printable-ASCII name")
        if not 0 < len(self.verification_key) <= MAX_VERIFICATION_KEY:
            raise ValueError("verification key is empty or too large")

    def encode(self) -> bytes:
        return (
            Writer()
            .fixed(PUBLIC_MAGIC)
            .fixed(self.key_id)
            .u64(self.expiration)
            .name(self.algorithm)
            .vbytes(self.verification_key)
            .getvalue()
        )

    @classmethod
    def decode(cls, blob: bytes | bytearray | memoryview) -> PublicKey:
        """Parse a blob from the wire or a file; raise InvalidInput on anything malformed."""
        r = Reader(blob)
        if r.fixed(len(PUBLIC_MAGIC)) != PUBLIC_MAGIC:
            raise InvalidInput("not a qsh public key (bad magic)")
        key_id = r.fixed(KEY_ID_SIZE)
        expiration = r.u64()
        algorithm = r.name()
        verification_key = r.vbytes(MAX_VERIFICATION_KEY)
        r.end()
        if not verification_key:
            raise InvalidInput("empty verification key")
        return cls(key_id, expiration, algorithm, verification_key)

    def fingerprint(self) -> str:
        """OpenSSH-style, so users compare it the way they already compare SHA256:... ."""
        digest = hashlib.sha3_256(self.encode()).digest()
        return FINGERPRINT_PREFIX + b64(digest).rstrip("=")

    def is_expired(self, now: float) -> bool:
        """The key is valid strictly before ``expiration`` (like a certificate's notAfter
        taken as exclusive); ``now`` is passed in because ``common/`` never reads the clock."""
        return now >= self.expiration

    def matches(self, other: PublicKey) -> bool:
        """Same key in every field: a reused key_id with another key must not pass."""
        return hmac.compare_digest(self.encode(), other.encode())

    @property
    def line_type(self) -> str:
        return LINE_PREFIX + self.algorithm

    def verify(self, message: bytes, sig: bytes) -> bool:
        """True only for a valid signature. Raises UnknownProtocol when this machine has no
        implementation of the key's algorithm (e.g. an SLH-DSA key without liboqs)."""
        return signature_scheme(self.algorithm).verify(self.verification_key, message, sig)

    def openssh_line(self, comment: str = "") -> str:
        """``qsh-<alg> <base64 blob> [comment]``, the shape of ``.pub`` and known_hosts keys."""
        if "\n" in comment or "\r" in comment:
            raise ValueError("a key comment cannot contain a line break")
        line = f"{self.line_type} {b64(self.encode())}"
        comment = comment.strip()
        return f"{line} {comment}" if comment else line

    @classmethod
    def parse_line(cls, line: str) -> tuple[PublicKey, str]:
        """Parse ``qsh-<alg> <base64> [comment]``; return the key and the comment.

        The type word must agree with the blob's algorithm, so a line cannot claim one
        algorithm in text while carrying another. Raises InvalidInput.
        """
        parts = line.strip().split(None, 2)
        if len(parts) < 2:
            raise InvalidInput("expected '<type> <base64 key> [comment]'")
        key_type, encoded = parts[0], parts[1]
        if not key_type.startswith(LINE_PREFIX):
            raise InvalidInput(f"unknown key type {key_type[:40]!r}")
        # Bound the text before decoding it, as the Reader bounds binary lengths.
        if len(encoded) > (MAX_PUBLIC_BLOB + 2) // 3 * 4:
            raise InvalidInput("public key too large")
        key = cls.decode(unb64(encoded, "public key"))
        if key_type != key.line_type:
            raise InvalidInput(f"key type {key_type!r} does not match the key ({key.algorithm})")
        return key, parts[2] if len(parts) > 2 else ""

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> tuple[PublicKey, str]:
        """Read a ``.pub`` file (one openssh_line); return the key and its comment."""
        text = read_text(path, MAX_KEY_FILE)
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if len(lines) != 1:
            raise KeyFileError(f"{path}: expected exactly one public key line")
        try:
            return cls.parse_line(lines[0])
        except InvalidInput as exc:
            raise KeyFileError(f"{path}: malformed public key: {exc}") from exc


def signature_scheme(name: str) -> Signature:
    try:
        return signature(name)
    except KeyError:
        raise UnknownProtocol(f"signature algorithm {name!r} is not available") from None
