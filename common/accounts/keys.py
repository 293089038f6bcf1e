"""Long-term signature keys: the QSMP client key (public) and server key (private), their
binary encoding, and the files they live in.

QSMP rev 1a calls the public half the *client key* (section 5.2) because that is what a client
holds to authenticate a server, and the private half the *server key* (5.3). We call them
:class:`PublicKey` and :class:`HostKey`; user keys reuse the same two classes, since a user key
is the same structure in the opposite direction.

The public key blob is described in public_key.py, the private key file in
private_key_file.py, how files are written in files.py.

Private files are 0600 and loading refuses a file that group or others can access, like OpenSSH.
The signing key lives in a :class:`~common.crypto.secret.Secret` (locked pages, left out of core
dumps, zeroed by :meth:`HostKey.close`). Python cannot wipe ``bytes``: the file's text, its
base64 decoding and the copy each signature backend is handed (:attr:`HostKey.signing_key`)
live until collected; the process-wide measures (no core, no ptrace) cover those
(docs/PROTOCOL.md section 16.9).

File I/O is allowed here: the sans-IO rule forbids sockets and clocks in ``common/``, and a key
file is neither. Time still comes in as ``now``.
"""

from __future__ import annotations

import hmac
import os
import sys
from typing import Protocol

from common.accounts.files import read_text
from common.accounts.private_key_file import (
    CIPHER_NAME,
    ENCRYPTED_MAGIC,
    KDF_NAME,
    MAX_SIGNING_KEY,
    NONCE_SIZE,
    SALT_SIZE,
    SCRYPT_LOG_N,
    SCRYPT_P,
    SCRYPT_R,
    aesgcm,
    armour_text,
    dearmour_text,
    parse_encrypted,
    scrypt_key,
)
from common.accounts.public_key import KEY_ID_SIZE, U64_MAX, signature_scheme
from common.crypto.registry import available_signatures, has_signature, signature
from common.crypto.rng import SYSTEM_RNG, Rng
from common.crypto.secret import Secret, scrub
from common.errors import InvalidInput
from common.wire import Reader, Record, Writer

# isort: split
# re-exported: importers predate the split
from common.accounts.files import MAX_KEY_FILE as MAX_KEY_FILE
from common.accounts.files import KeyFileError as KeyFileError
from common.accounts.files import atomic_write as atomic_write
from common.accounts.files import read_limited as read_limited
from common.accounts.private_key_file import ENCRYPTED_KEY_LABEL as ENCRYPTED_KEY_LABEL
from common.accounts.private_key_file import HOST_KEY_LABEL as HOST_KEY_LABEL
from common.accounts.public_key import LINE_PREFIX as LINE_PREFIX
from common.accounts.public_key import MAX_PUBLIC_BLOB as MAX_PUBLIC_BLOB
from common.accounts.public_key import PublicKey as PublicKey

PRIVATE_MAGIC = b"QSH1"

#: Ten years, the default lifetime of a generated key (leap days ignored on purpose).
DEFAULT_LIFETIME = 10 * 365 * 24 * 3600
DEFAULT_ALGORITHM = "mldsa65"

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


# The armour and passphrase encryption of key files (armour_text, scrypt_key ...):
# private_key_file.py
# PublicKey (its blob, fingerprint, line and .pub file): public_key.py
# KeyFileError, MAX_KEY_FILE and the file helpers (read_limited, atomic_write): files.py
class PassphraseRequired(KeyFileError):
    """The key file is encrypted and no passphrase was given; the CLI should prompt."""


class HostSigner(Protocol):
    """What a server handshake signs with: a :class:`HostKey`, or a stand-in that asks a
    process holding the key (qshd's pre-auth process never holds one)."""

    @property
    def public(self) -> PublicKey: ...

    def sign(self, message: bytes, rng: Rng = ...) -> bytes: ...

#: How many copies kept by a backend a key remembers (the ML-DSA cache holds 8 keys).
_MAX_LENT = 8


class HostKey(Record):
    """The QSMP server key: the public key plus the signing key that goes with it, kept in
    a :class:`Secret` (given as bytes, it is copied in). Frozen; equal when both halves
    are (compared in constant time); its repr shows the public half only."""

    __slots__ = ("_lent", "public", "secret")
    public: PublicKey
    secret: Secret
    _lent: list[bytes]

    def __init__(self, public: PublicKey, signing_key: bytes | bytearray | Secret) -> None:
        object.__setattr__(self, "public", public)
        object.__setattr__(self, "secret", signing_key if isinstance(signing_key, Secret)
                           else Secret(signing_key))
        #: Copies of the signing key a backend kept (its cache of expanded keys): zeroed
        #: by close(), as the backend cannot be asked to.
        object.__setattr__(self, "_lent", [])

    @property
    def signing_key(self) -> bytes:
        """A ``bytes`` copy, for the signature backends (they take nothing else)."""
        return self.secret.bytes()

    def close(self) -> None:
        """Zero the signing key, and the copies a backend kept; the key cannot sign
        afterwards (the caller drops the backend's cache of expanded keys too)."""
        for copy in self._lent:
            scrub(copy)
        self._lent.clear()
        self.secret.close()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HostKey):
            return NotImplemented
        return self.public.matches(other.public) and hmac.compare_digest(
            self.signing_key, other.signing_key
        )

    def __hash__(self) -> int:
        return hash(self.public)

    def __repr__(self) -> str:
        return f"HostKey(public={self.public!r})"

    @classmethod
    def generate(
        cls,
        algorithm: str = DEFAULT_ALGORITHM,
        *,
        now: float,
        lifetime: int = DEFAULT_LIFETIME,
        rng: Rng = SYSTEM_RNG,
    ) -> HostKey:
        """A fresh key valid for ``lifetime`` seconds from ``now``. Raises ValueError for an
        algorithm this machine does not implement (a local mistake, not a peer's)."""
        if not has_signature(algorithm):
            raise ValueError(
                f"unknown signature algorithm {algorithm!r}; "
                f"available: {', '.join(available_signatures())}"
            )
        if lifetime <= 0:
            raise ValueError("lifetime must be positive")
        signing_key, verification_key = signature(algorithm).generate(rng)
        key_id = rng(KEY_ID_SIZE)
        expiration = min(int(now) + lifetime, U64_MAX)
        return cls(PublicKey(key_id, expiration, algorithm, verification_key), signing_key)

    def sign(self, message: bytes, rng: Rng = SYSTEM_RNG) -> bytes:
        key = self.signing_key
        try:
            return signature_scheme(self.public.algorithm).sign(key, message, rng)
        finally:
            # Ours alone (this name and getrefcount's argument): zeroed now. Kept by the
            # backend (its cache): zeroed by close().
            if sys.getrefcount(key) <= 2:
                scrub(key)
            else:
                self._lent.append(key)
                del self._lent[:-_MAX_LENT]

    def check_pair(self, rng: Rng = SYSTEM_RNG) -> bool:
        """Sign and verify a probe message. The file format cannot prove the two halves
        belong together; qshd calls this at startup so a mismatched or corrupted key file is
        reported locally instead of as every client's "verification failure"."""
        probe = b"qsh key pair check" + self.public.key_id
        try:
            return self.public.verify(probe, self.sign(probe, rng))
        except Exception:  # a malformed signing key may make the backend raise anything
            return False

    # -- serialisation -----------------------------------------------------------------

    def encode_private(self) -> bytes:
        return (
            Writer()
            .fixed(PRIVATE_MAGIC)
            .vbytes(self.public.encode())
            .vbytes(self.signing_key)
            .getvalue()
        )

    @classmethod
    def decode_private(cls, blob: bytes | bytearray | memoryview) -> HostKey:
        r = Reader(blob)
        if r.fixed(len(PRIVATE_MAGIC)) != PRIVATE_MAGIC:
            raise InvalidInput("not a qsh private key (bad magic)")
        public = PublicKey.decode(r.vbytes(MAX_PUBLIC_BLOB))
        signing_key = r.vbytes(MAX_SIGNING_KEY)
        try:
            r.end()
            if not signing_key:
                raise InvalidInput("empty signing key")
            return cls(public, signing_key)
        finally:
            scrub(signing_key)  # a fresh copy (Reader.vbytes): the Secret holds it now

    def encode_encrypted(self, passphrase: bytes, rng: Rng = SYSTEM_RNG) -> bytes:
        salt = rng(SALT_SIZE)
        nonce = rng(NONCE_SIZE)
        header = (
            Writer()
            .fixed(ENCRYPTED_MAGIC)
            .name(KDF_NAME)
            .short_bytes(salt)
            .u8(SCRYPT_LOG_N)
            .u8(SCRYPT_R)
            .u8(SCRYPT_P)
            .name(CIPHER_NAME)
            .fixed(nonce)
            .vbytes(self.public.encode())
            .getvalue()
        )
        key = scrypt_key(passphrase, salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P)
        ciphertext = aesgcm(key).encrypt(nonce, self.signing_key, header)
        return header + Writer().vbytes(ciphertext).getvalue()

    @classmethod
    def decode_encrypted(cls, blob: bytes, passphrase: bytes) -> HostKey:
        """Raises InvalidInput for a malformed blob and KeyFileError for a wrong passphrase."""
        public, params, ciphertext, header = parse_encrypted(blob)
        salt, log_n, r, p, nonce = params
        key = scrypt_key(passphrase, salt, log_n, r, p)
        from cryptography.exceptions import InvalidTag

        try:
            signing_key = aesgcm(key).decrypt(nonce, ciphertext, header)
        except InvalidTag:
            raise KeyFileError("incorrect passphrase") from None
        finally:
            scrub(key)
        try:
            if not signing_key:
                raise InvalidInput("empty signing key")
            return cls(public, signing_key)
        finally:
            scrub(signing_key)

    # -- files -------------------------------------------------------------------------

    def save(
        self,
        path: str | os.PathLike[str],
        passphrase: bytes | None = None,
        *,
        rng: Rng = SYSTEM_RNG,
    ) -> None:
        """Write the private key file atomically with mode 0600. An empty passphrase means
        no encryption, as in ssh-keygen ("empty for no passphrase")."""
        if passphrase:
            text = armour_text(ENCRYPTED_KEY_LABEL, self.encode_encrypted(passphrase, rng))
        else:
            text = armour_text(HOST_KEY_LABEL, self.encode_private())
        atomic_write(path, text.encode("ascii"), PRIVATE_MODE)

    def save_public(self, path: str | os.PathLike[str], comment: str = "") -> None:
        """Write the ``.pub`` sidecar (mode 0644: it is meant to be copied around)."""
        line = self.public.openssh_line(comment) + "\n"
        atomic_write(path, line.encode("utf-8"), PUBLIC_MODE)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        passphrase: bytes | None = None,
        *,
        check_mode: bool = True,
    ) -> HostKey:
        """Read a private key file. Refuses a file group or others can access unless
        ``check_mode`` is False; raises :class:`PassphraseRequired` for an encrypted file
        without a passphrase and KeyFileError for everything else that is wrong. A
        passphrase given for an unencrypted file is ignored, as ssh does."""
        text = read_text(path, MAX_KEY_FILE, private=check_mode)
        blob = b""
        try:
            label, blob = dearmour_text(text)
            if label == HOST_KEY_LABEL:
                return cls.decode_private(blob)
            if label == ENCRYPTED_KEY_LABEL:
                if not passphrase:
                    raise PassphraseRequired(f"{path}: key is encrypted; a passphrase is needed")
                return cls.decode_encrypted(blob, passphrase)
        except InvalidInput as exc:
            raise KeyFileError(f"{path}: malformed key file: {exc}") from exc
        finally:
            scrub(blob)  # the decoded file and its text: ours alone, the key is in a Secret
            scrub(text)
        raise KeyFileError(f"{path}: unsupported key file type {label!r}")

    @staticmethod
    def load_public_part(path: str | os.PathLike[str], *, check_mode: bool = True) -> PublicKey:
        """The public key of a private key file, encrypted or not, without a passphrase."""
        text = read_text(path, MAX_KEY_FILE, private=check_mode)
        blob = b""
        try:
            label, blob = dearmour_text(text)
            if label == HOST_KEY_LABEL:
                key = HostKey.decode_private(blob)
                key.close()
                return key.public
            if label == ENCRYPTED_KEY_LABEL:
                return parse_encrypted(blob)[0]
        except InvalidInput as exc:
            raise KeyFileError(f"{path}: malformed key file: {exc}") from exc
        finally:
            scrub(blob)
            scrub(text)
        raise KeyFileError(f"{path}: unsupported key file type {label!r}")
