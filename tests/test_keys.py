"""Key blobs, fingerprints, key files: encoding is canonical, files are private and atomic."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.accounts import keys
from common.accounts.keys import (
    ENCRYPTED_KEY_LABEL,
    HOST_KEY_LABEL,
    HostKey,
    KeyFileError,
    PassphraseRequired,
    PublicKey,
)
from common.crypto.rng import DeterministicRng
from common.errors import InvalidInput, UnknownProtocol

NOW = 1_700_000_000.0

names = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64
)
public_keys = st.builds(
    PublicKey,
    key_id=st.binary(min_size=16, max_size=16),
    expiration=st.integers(min_value=0, max_value=(1 << 64) - 1),
    algorithm=names,
    verification_key=st.binary(min_size=1, max_size=300),
)


def sample_key(vk_size: int = 24, algorithm: str = "mldsa65") -> PublicKey:
    return PublicKey(bytes(range(16)), 2_000_000_000, algorithm, bytes(range(vk_size)))


@pytest.fixture(scope="module")
def host_key() -> HostKey:
    return HostKey.generate("mldsa65", now=NOW, rng=DeterministicRng(b"host key"))


@pytest.fixture
def fast_scrypt(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Cheap scrypt for the many file tests; one test keeps the real cost."""
    monkeypatch.setattr(keys, "SCRYPT_LOG_N", 10)
    yield


# -- PublicKey blob ------------------------------------------------------------------------


def test_known_answer_encoding() -> None:
    expected = (
        b"QSK1"
        + bytes.fromhex("000102030405060708090a0b0c0d0e0f")  # key_id
        + bytes.fromhex("0000000077359400")  # expiration 2_000_000_000
        + b"\x07mldsa65"  # algorithm
        + bytes.fromhex("0000000400010203")  # verification key
    )
    assert sample_key(vk_size=4).encode() == expected


@given(public_keys)
def test_round_trip(key: PublicKey) -> None:
    blob = key.encode()
    assert PublicKey.decode(blob) == key
    assert PublicKey.decode(memoryview(blob)) == key
    assert PublicKey.decode(blob).encode() == blob


def test_every_truncation_is_rejected() -> None:
    blob = sample_key().encode()
    for n in range(len(blob)):
        with pytest.raises(InvalidInput):
            PublicKey.decode(blob[:n])


@pytest.mark.parametrize("extra", [b"\x00", b"trailing"])
def test_trailing_bytes_are_rejected(extra: bytes) -> None:
    with pytest.raises(InvalidInput):
        PublicKey.decode(sample_key().encode() + extra)


def _check_mutant(original: PublicKey, mutant: bytes) -> None:
    """A changed blob is refused, or is a different key whose encoding is exactly the
    mutant (the encoding is canonical, so it cannot alias the original)."""
    try:
        decoded = PublicKey.decode(mutant)
    except InvalidInput:
        return
    assert decoded != original
    assert not decoded.matches(original)
    assert decoded.encode() == mutant
    assert decoded.fingerprint() != original.fingerprint()


def test_every_single_byte_change_exhaustively() -> None:
    original = sample_key(vk_size=8)
    blob = original.encode()
    for i in range(len(blob)):
        for value in {blob[i] ^ 0x01, blob[i] ^ 0x80, 0x00, 0x21, 0x7F, 0xFF} - {blob[i]}:
            _check_mutant(original, blob[:i] + bytes([value]) + blob[i + 1 :])


@given(public_keys, st.data())
def test_single_byte_change_and_truncation_property(key: PublicKey, data: st.DataObject) -> None:
    blob = key.encode()
    i = data.draw(st.integers(0, len(blob) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != blob[i]))
    _check_mutant(key, blob[:i] + bytes([value]) + blob[i + 1 :])
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(InvalidInput):
        PublicKey.decode(blob[:cut])


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(InvalidInput):
        PublicKey.decode(data)
    with contextlib.suppress(InvalidInput):
        PublicKey.decode(b"QSK1" + data)


def test_length_is_bounded_before_reading() -> None:
    head = b"QSK1" + bytes(16) + bytes(8) + b"\x07mldsa65"
    with pytest.raises(InvalidInput, match="exceeds"):
        PublicKey.decode(head + (0xFFFFFFFF).to_bytes(4, "big"))
    with pytest.raises(InvalidInput, match="empty"):
        PublicKey.decode(head + bytes(4))
    with pytest.raises(InvalidInput):
        PublicKey.decode(b"QSK1" + bytes(24) + b"\x03a b" + b"\x00\x00\x00\x01x")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("key_id", bytes(15)),
        ("expiration", -1),
        ("expiration", 1 << 64),
        ("algorithm", ""),
        ("algorithm", "ml dsa"),
        ("algorithm", "é"),
        ("verification_key", b""),
    ],
)
def test_constructor_rejects_bad_fields(field: str, value: object) -> None:
    kwargs: dict[str, object] = {
        "key_id": bytes(16),
        "expiration": 0,
        "algorithm": "mldsa65",
        "verification_key": b"k",
    }
    kwargs[field] = value
    with pytest.raises(ValueError):
        PublicKey(**kwargs)  # type: ignore[arg-type]


# -- fingerprint, expiry, text lines -------------------------------------------------------


def test_fingerprint_format() -> None:
    key = sample_key()
    fp = key.fingerprint()
    expected = base64.b64encode(hashlib.sha3_256(key.encode()).digest()).decode().rstrip("=")
    assert fp == "SHA3-256:" + expected
    assert len(fp) == len("SHA3-256:") + 43
    assert "=" not in fp
    other = PublicKey(key.key_id, key.expiration + 1, key.algorithm, key.verification_key)
    assert other.fingerprint() != fp


def test_expiry_boundary() -> None:
    key = sample_key()
    assert not key.is_expired(0)
    assert not key.is_expired(key.expiration - 0.5)
    assert key.is_expired(key.expiration)
    assert key.is_expired(key.expiration + 1)


@given(public_keys, st.text(alphabet="abc @.-_", max_size=20))
def test_line_round_trip(key: PublicKey, comment: str) -> None:
    line = key.openssh_line(comment)
    assert line.startswith(f"qsh-{key.algorithm} ")
    assert "\n" not in line
    assert PublicKey.parse_line(line) == (key, comment.strip())


def test_line_without_comment_has_no_trailing_space() -> None:
    line = sample_key().openssh_line()
    assert line == line.strip()
    assert len(line.split()) == 2


def test_line_comment_cannot_break_lines() -> None:
    with pytest.raises(ValueError):
        sample_key().openssh_line("a\nqsh-mldsa65 AAAA evil")


@pytest.mark.parametrize(
    "line",
    [
        "",
        "qsh-mldsa65",
        "ssh-ed25519 AAAA",
        "qsh-mldsa87 {b64}",  # type word disagrees with the blob
        "qsh-mldsa65 {b64}!",
        "qsh-mldsa65 ****",
        "qsh-mldsa65 é",
        "qsh-mldsa65 " + "A" * 200_000,
    ],
)
def test_parse_line_rejects(line: str) -> None:
    b64 = base64.b64encode(sample_key().encode()).decode()
    with pytest.raises(InvalidInput):
        PublicKey.parse_line(line.replace("{b64}", b64))


# -- HostKey -------------------------------------------------------------------------------


def test_generate_sign_verify(host_key: HostKey) -> None:
    pub = host_key.public
    assert pub.algorithm == "mldsa65"
    assert len(pub.key_id) == 16
    assert pub.expiration == int(NOW) + keys.DEFAULT_LIFETIME
    sig = host_key.sign(b"message", DeterministicRng(b"sig"))
    assert pub.verify(b"message", sig)
    assert not pub.verify(b"messagE", sig)
    assert host_key.check_pair(DeterministicRng(b"probe"))


def test_generate_is_reproducible_with_a_seeded_rng() -> None:
    a = HostKey.generate(now=NOW, lifetime=60, rng=DeterministicRng(b"x"))
    b = HostKey.generate(now=NOW, lifetime=60, rng=DeterministicRng(b"x"))
    c = HostKey.generate(now=NOW, lifetime=60, rng=DeterministicRng(b"y"))
    assert a == b
    assert a != c
    assert a.public.expiration == int(NOW) + 60


def test_generate_mldsa87() -> None:
    key = HostKey.generate("mldsa87", now=NOW)
    assert key.public.algorithm == "mldsa87"
    assert key.public.verify(b"m", key.sign(b"m"))


def test_generate_rejects_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="unknown signature algorithm"):
        HostKey.generate("rsa", now=NOW)
    with pytest.raises(ValueError):
        HostKey.generate(now=NOW, lifetime=0)


def test_verify_with_unavailable_algorithm() -> None:
    with pytest.raises(UnknownProtocol):
        sample_key(algorithm="nosuchalg").verify(b"m", b"s")


def test_check_pair_detects_mismatched_halves(host_key: HostKey) -> None:
    other = HostKey.generate(now=NOW, rng=DeterministicRng(b"other"))
    assert not HostKey(host_key.public, other.signing_key).check_pair()


def test_repr_hides_the_signing_key(host_key: HostKey) -> None:
    text = repr(host_key)
    assert host_key.signing_key.hex()[:16] not in text
    assert repr(host_key.signing_key)[:20] not in text


def test_private_blob_round_trip_and_truncations(host_key: HostKey) -> None:
    blob = host_key.encode_private()
    assert HostKey.decode_private(blob) == host_key
    for n in range(0, len(blob), 37):
        with pytest.raises(InvalidInput):
            HostKey.decode_private(blob[:n])
    with pytest.raises(InvalidInput):
        HostKey.decode_private(blob + b"\x00")


# -- files ---------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_save_load_round_trip(tmp_path: Path, host_key: HostKey) -> None:
    path = tmp_path / "host_key"
    host_key.save(path)
    assert _mode(path) == 0o600
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == f"-----BEGIN {HOST_KEY_LABEL}-----"
    assert lines[-1] == f"-----END {HOST_KEY_LABEL}-----"
    assert all(len(line) <= 64 for line in lines[1:-1])
    assert all(len(line) == 64 for line in lines[1:-2])
    assert HostKey.load(path) == host_key
    assert HostKey.load_public_part(path) == host_key.public
    assert [p.name for p in tmp_path.iterdir()] == ["host_key"]


def test_save_overwrites_and_resets_mode(tmp_path: Path, host_key: HostKey) -> None:
    path = tmp_path / "host_key"
    path.write_text("old")
    path.chmod(0o644)
    host_key.save(path)
    assert _mode(path) == 0o600
    assert HostKey.load(path) == host_key


def test_load_refuses_a_key_others_can_read(tmp_path: Path, host_key: HostKey) -> None:
    path = tmp_path / "host_key"
    host_key.save(path)
    for mode in (0o644, 0o640, 0o604, 0o620):
        path.chmod(mode)
        with pytest.raises(KeyFileError, match="too open") as info:
            HostKey.load(path)
        assert "\n" not in str(info.value)
        assert str(path) in str(info.value)
    assert HostKey.load(path, check_mode=False) == host_key


@pytest.mark.parametrize(
    "content",
    [
        "",
        "garbage\n",
        "-----BEGIN QSH HOST KEY-----\n-----END QSH HOST KEY-----\n",
        "-----BEGIN QSH HOST KEY-----\nQUJD\n-----END QSH HOST KEY-----\n",
        "-----BEGIN QSH HOST KEY-----\n!!!!\n-----END QSH HOST KEY-----\n",
        "-----BEGIN QSH HOST KEY-----\nQUJD\n-----END QSH ENCRYPTED PRIVATE KEY-----\n",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nQUJD\n-----END OPENSSH PRIVATE KEY-----\n",
        "-----BEGIN QSH ENCRYPTED PRIVATE KEY-----\nQUJD\n"
        "-----END QSH ENCRYPTED PRIVATE KEY-----\n",
    ],
)
def test_malformed_files_give_one_line_errors(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError) as info:
        HostKey.load(path, b"pass")
    assert "\n" not in str(info.value)


def test_damaged_key_file(tmp_path: Path, host_key: HostKey) -> None:
    path = tmp_path / "host_key"
    host_key.save(path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-2] + lines[-1:]) + "\n")  # lose a body line
    with pytest.raises(KeyFileError, match="malformed"):
        HostKey.load(path)
    path.write_bytes(b"\xff\xfe binary")
    with pytest.raises(KeyFileError, match="UTF-8"):
        HostKey.load(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        HostKey.load(tmp_path / "absent")
    with pytest.raises(KeyFileError, match="not a regular file"):
        HostKey.load(tmp_path, check_mode=False)


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge"
    path.write_bytes(b"A" * (keys.MAX_KEY_FILE + 1))
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="too large"):
        HostKey.load(path)


def test_save_public(tmp_path: Path, host_key: HostKey) -> None:
    path = tmp_path / "host_key.pub"
    old_umask = os.umask(0o077)
    try:
        host_key.save_public(path, "root@server")
    finally:
        os.umask(old_umask)
    assert _mode(path) == 0o644
    text = path.read_text()
    assert text.endswith("\n") and text.count("\n") == 1
    assert text.startswith("qsh-mldsa65 ")
    assert PublicKey.load(path) == (host_key.public, "root@server")


def test_public_load_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.pub"
    path.write_text("qsh-mldsa65 AAAA\n")
    with pytest.raises(KeyFileError, match="malformed public key"):
        PublicKey.load(path)
    path.write_text("\n")
    with pytest.raises(KeyFileError, match="exactly one"):
        PublicKey.load(path)


# -- atomicity -----------------------------------------------------------------------------


def _fail(*args: object, **kwargs: object) -> None:
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("step", ["replace", "fsync", "write"])
def test_failed_save_keeps_the_old_file(
    tmp_path: Path, host_key: HostKey, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    path = tmp_path / "host_key"
    host_key.save(path)
    before = path.read_bytes()
    other = HostKey.generate(now=NOW, rng=DeterministicRng(b"new"))
    monkeypatch.setattr(os, step, _fail)
    with pytest.raises(KeyFileError, match="No space left") as info:
        other.save(path)
    monkeypatch.undo()
    assert "\n" not in str(info.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["host_key"]  # no temp file left behind
    assert HostKey.load(path) == host_key


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_save_into_read_only_directory(tmp_path: Path, host_key: HostKey) -> None:
    path = tmp_path / "host_key"
    host_key.save(path)
    before = path.read_bytes()
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(KeyFileError, match="cannot write"):
            HostKey.generate(now=NOW).save(path)
    finally:
        tmp_path.chmod(0o700)
    assert path.read_bytes() == before


# -- passphrases ---------------------------------------------------------------------------


def test_passphrase_round_trip_with_real_cost(tmp_path: Path, host_key: HostKey) -> None:
    path = tmp_path / "id_mldsa65"
    host_key.save(path, b"correct horse")
    assert _mode(path) == 0o600
    text = path.read_text()
    assert text.startswith(f"-----BEGIN {ENCRYPTED_KEY_LABEL}-----\n")
    assert base64.b64encode(host_key.signing_key[:24]).decode()[:24] not in text.replace("\n", "")
    assert HostKey.load(path, b"correct horse") == host_key


def test_wrong_or_missing_passphrase(tmp_path: Path, host_key: HostKey, fast_scrypt: None) -> None:
    path = tmp_path / "id_mldsa65"
    host_key.save(path, b"secret")
    with pytest.raises(KeyFileError, match=r"^incorrect passphrase$"):
        HostKey.load(path, b"Secret")
    with pytest.raises(PassphraseRequired):
        HostKey.load(path)
    with pytest.raises(PassphraseRequired):
        HostKey.load(path, b"")
    # The public half is readable without the passphrase, like ssh-keygen -y.
    assert HostKey.load_public_part(path) == host_key.public
    assert HostKey.load(path, b"secret") == host_key


def test_empty_passphrase_means_unencrypted(tmp_path: Path, host_key: HostKey) -> None:
    path = tmp_path / "k"
    host_key.save(path, b"")
    assert path.read_text().startswith(f"-----BEGIN {HOST_KEY_LABEL}-----")
    assert HostKey.load(path, b"ignored") == host_key


def test_encryption_uses_fresh_salt(host_key: HostKey, fast_scrypt: None) -> None:
    assert host_key.encode_encrypted(b"p") != host_key.encode_encrypted(b"p")


def test_public_half_of_encrypted_file_is_authenticated(
    host_key: HostKey, fast_scrypt: None
) -> None:
    other = HostKey.generate(now=NOW, rng=DeterministicRng(b"swap")).public
    blob = host_key.encode_encrypted(b"p")
    swapped = blob.replace(host_key.public.encode(), other.encode())
    assert swapped != blob
    with pytest.raises(KeyFileError, match="incorrect passphrase"):
        HostKey.decode_encrypted(swapped, b"p")


def test_encrypted_blob_mutations(host_key: HostKey, fast_scrypt: None) -> None:
    blob = host_key.encode_encrypted(b"p", DeterministicRng(b"enc"))
    for n in range(0, len(blob), 97):
        with pytest.raises(InvalidInput):
            HostKey.decode_encrypted(blob[:n], b"p")
    # Flip bytes in the header and in the ciphertext: refused, never a wrong key.
    for i in [*range(60), len(blob) - 1, len(blob) - 20]:
        mutant = blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1 :]
        with pytest.raises((InvalidInput, KeyFileError)):
            HostKey.decode_encrypted(mutant, b"p")


def test_hostile_scrypt_parameters_are_refused(
    tmp_path: Path, host_key: HostKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "SCRYPT_LOG_N", 22)  # 128 * 8 * 2**22 = 4 GiB
    path = tmp_path / "k"
    # Build the file by hand: encoding with these parameters would itself be too costly.
    monkeypatch.setattr(keys, "scrypt_key", lambda *a: bytes(32))
    host_key.save(path, b"p")
    monkeypatch.undo()
    with pytest.raises(KeyFileError, match="memory limit"):
        HostKey.load(path, b"p")


# --- atomic_write never replaces what is not a regular file -------------------------------


def _special_files(tmp_path: Path) -> Iterator[Path]:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    yield fifo
    if os.geteuid() == 0:  # a null device of our own: the real /dev/null must not be risked
        null = tmp_path / "null"
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        yield null


def test_atomic_write_refuses_to_replace_a_device_or_fifo(tmp_path: Path) -> None:
    """``UserKnownHostsFile=/dev/null`` is an ssh idiom; the rename of an atomic write would
    turn /dev/null into a regular file for the whole machine (it did, run as root)."""
    for path in _special_files(tmp_path):
        kind = stat.S_IFMT(path.lstat().st_mode)
        with pytest.raises(keys.KeyFileError, match="not a regular file"):
            keys.atomic_write(path, b"data\n", 0o600)
        assert stat.S_IFMT(path.lstat().st_mode) == kind
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_atomic_write_still_replaces_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")
    keys.atomic_write(path, b"new", 0o600)
    assert path.read_bytes() == b"new"
