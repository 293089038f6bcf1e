"""The record layer's sealing paths agree byte for byte (common/protocol/record.py).

:meth:`RecordSealer.seal_parts` gathers the plaintext into the record's own buffer and
encrypts it in place; these tests hold it to :meth:`RecordSealer.seal` (out of place) for
every AEAD we register, so an AEAD library that stopped supporting in-place operation would
fail here rather than put wrong records on the wire.
"""

from __future__ import annotations

import os

import pytest

from common.crypto.registry import aead as aead_named
from common.crypto.suites import DEFAULT_AEADS
from common.protocol.record import RecordOpener, RecordSealer
from common.protocol.schedule import DirectionKeys
from common.wire import HEADER_SIZE, Flag, decode_header

KEYS = DirectionKeys(bytes(range(32)), bytes(range(100, 112)), bytes(32))

SPLITS = [
    [b""],
    [b"\x05\x00\x00", b"hdr12", b"x" * 1000, bytes(7)],
    [b"\x05\x00\x00", b"", memoryview(os.urandom(256 * 1024)), b""],
    [bytearray(b"\x05\x00\x01"), memoryview(os.urandom(1 << 20))[5:], bytes(1)],
    [os.urandom(n) for n in (1, 2, 3, 4096, 65537)],
]


@pytest.mark.parametrize("name", DEFAULT_AEADS)
@pytest.mark.parametrize("parts", SPLITS, ids=[f"split{i}" for i in range(len(SPLITS))])
def test_seal_parts_is_seal_of_the_concatenation(name: str, parts: list[bytes]) -> None:
    aead = aead_named(name)
    gathered, joined = RecordSealer(aead, KEYS, 41), RecordSealer(aead, KEYS, 41)
    plaintext = b"".join(bytes(p) for p in parts)
    for _ in range(2):  # and the sequence moves on the same way
        record = gathered.seal_parts(Flag.ENCRYPTED_MESSAGE, parts)
        assert record == joined.seal(Flag.ENCRYPTED_MESSAGE, plaintext)
        assert gathered.sequence == joined.sequence
        assert gathered.bytes_sealed == joined.bytes_sealed
    opener = RecordOpener(aead, KEYS, 42)
    header = decode_header(record[:HEADER_SIZE], 1 << 21)
    view = memoryview(record)
    assert opener.open(header, view[:HEADER_SIZE], view[HEADER_SIZE:]) == plaintext


@pytest.mark.parametrize("name", DEFAULT_AEADS)
def test_seal_parts_leaves_its_inputs_alone(name: str) -> None:
    source = bytearray(os.urandom(300_000))
    before = bytes(source)
    RecordSealer(aead_named(name), KEYS).seal_parts(Flag.ENCRYPTED_MESSAGE,
                                                    [b"\x05\x00\x00", memoryview(source)])
    assert source == before
