"""How a private key file is made, around the bytes HostKey encodes: the PEM-like armour,
and the passphrase encryption (scrypt, then AES-256-GCM) with the bounds that keep a
hostile file from costing gigabytes. On its own so that the key classes read as keys, and
the cryptography of a file at rest can be reviewed in one place.

Private key file (``HostKey.save``), PEM-like armour around base64 wrapped at 64 columns::

    -----BEGIN QSH HOST KEY-----            blob: b"QSH1" | public blob (vbytes)
    ...                                           | signing key (vbytes)
    -----END QSH HOST KEY-----

With a passphrase the armour is ``QSH ENCRYPTED PRIVATE KEY`` around::

    b"QSE1" | kdf name "scrypt" | salt (u8 len, 16) | log2(N) u8 | r u8 | p u8
            | cipher name "aes256gcm" | nonce (12) | public blob (vbytes)
            | AES-256-GCM(signing key) (vbytes)

The AEAD key is ``scrypt(passphrase, salt, N=2**15, r=8, p=1)``; everything before the
ciphertext is the associated data, so the public half stays readable without the passphrase (as
in OpenSSH: ``-y`` and fingerprints need no prompt) yet cannot be swapped. The scrypt parameters
are stored so they can be raised later without breaking old files, and are bounded on read so a
hostile file cannot make us allocate gigabytes.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from common.accounts.public_key import MAX_PUBLIC_BLOB, PublicKey, b64, unb64
from common.errors import InvalidInput
from common.wire import Reader

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENCRYPTED_MAGIC = b"QSE1"
MAX_SIGNING_KEY = 64 * 1024

HOST_KEY_LABEL = "QSH HOST KEY"
ENCRYPTED_KEY_LABEL = "QSH ENCRYPTED PRIVATE KEY"
_ARMOUR_WIDTH = 64

KDF_NAME = "scrypt"
CIPHER_NAME = "aes256gcm"
SALT_SIZE = 16
NONCE_SIZE = 12
SCRYPT_LOG_N = 15
SCRYPT_R = 8
SCRYPT_P = 1
#: hashlib.scrypt's memory ceiling; N=2**15, r=8 needs 32 MiB.
SCRYPT_MAXMEM = 64 * 1024 * 1024


_ScryptParams = tuple[bytes, int, int, int, bytes]


def parse_encrypted(blob: bytes) -> tuple[PublicKey, _ScryptParams, bytes, bytes]:
    r = Reader(blob)
    if r.fixed(len(ENCRYPTED_MAGIC)) != ENCRYPTED_MAGIC:
        raise InvalidInput("not an encrypted qsh private key (bad magic)")
    if r.name() != KDF_NAME:
        raise InvalidInput("unsupported key derivation function")
    salt = r.short_bytes()
    if len(salt) < SALT_SIZE:
        raise InvalidInput("salt too short")
    log_n, r_param, p = r.u8(), r.u8(), r.u8()
    # Bounded so a hostile file cannot ask for gigabytes or hours: scrypt needs about
    # 128 * r * N bytes, and p multiplies the time.
    if not (1 <= log_n <= 22 and 1 <= r_param <= 32 and 1 <= p <= 16):
        raise InvalidInput("scrypt parameters out of range")
    if 128 * r_param * ((1 << log_n) + 2) + 128 * r_param * p > SCRYPT_MAXMEM:
        raise InvalidInput("scrypt parameters exceed the memory limit")
    if r.name() != CIPHER_NAME:
        raise InvalidInput("unsupported cipher")
    nonce = r.fixed(NONCE_SIZE)
    public = PublicKey.decode(r.vbytes(MAX_PUBLIC_BLOB))
    header = bytes(blob[: len(blob) - r.remaining])
    ciphertext = r.vbytes(MAX_SIGNING_KEY + 16)
    r.end()
    return public, (salt, log_n, r_param, p, nonce), ciphertext, header


def scrypt_key(passphrase: bytes, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    try:
        return hashlib.scrypt(
            passphrase, salt=salt, n=1 << log_n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=32
        )
    except (ValueError, MemoryError) as exc:
        raise InvalidInput(f"scrypt failed: {exc}") from exc


def aesgcm(key: bytes) -> AESGCM:
    # Imported lazily: only passphrase-protected keys need it, and CLI startup time counts.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


# -- armour ------------------------------------------------------------------------------


def armour_text(label: str, blob: bytes) -> str:
    body = b64(blob)
    lines = [body[i : i + _ARMOUR_WIDTH] for i in range(0, len(body), _ARMOUR_WIDTH)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""])


def dearmour_text(text: str) -> tuple[str, bytes]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        raise InvalidInput("no armoured key found")
    first, last = lines[0], lines[-1]
    if not (first.startswith("-----BEGIN ") and first.endswith("-----")):
        raise InvalidInput("missing BEGIN line")
    label = first[len("-----BEGIN ") : -len("-----")]
    if last != f"-----END {label}-----":
        raise InvalidInput("missing or mismatched END line")
    return label, unb64("".join(lines[1:-1]), "key body")

