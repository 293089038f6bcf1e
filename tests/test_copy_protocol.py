"""The copy channel's codec (common/channels/copy.py): vectors, bounds, and hostile peers.

A hostile peer here is a real client or server on 127.0.0.1 that speaks the copy protocol
by hand (frames built with the codec, names and numbers no honest side would send), against
the real engine on the other end. Whatever it sends, nothing outside the destination may
change and the copy ends with a clear error.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import aio, transfer
from common.accounts.keys import HostKey
from common.channels import copy as cc
from common.channels.copy import (
    COPY,
    DOWNLOAD,
    FROM_RECEIVER,
    FROM_SENDER,
    UPLOAD,
    DirEntry,
    Done,
    End,
    EndDir,
    FileEntry,
    OpenRequest,
    Status,
    Symlink,
)
from common.errors import InvalidInput
from common.protocol.handshake import ClientHandshake, ServerHandshake
from common.protocol.negotiation import Offer
from common.transfer import CopyError, CopyOptions
from common.wire import Reader

VECTORS = Path(__file__).resolve().parent / "vectors" / "copy.json"
HOST_KEY = HostKey.generate("mldsa65", now=time.time())
WRONG_DIGEST = bytes(cc.DIGEST_SIZE)


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


# --------------------------------------------------------------------------- vectors


def _value(v: Any) -> Any:
    if isinstance(v, dict):
        return bytes.fromhex(v["hex"])
    if isinstance(v, list):
        return tuple(_value(x) for x in v)
    return v


def test_vectors_encode_and_decode_both_ways() -> None:
    data = json.loads(VECTORS.read_text())
    classes = {cls.__name__: cls for cls in (
        cc.FileEntry, cc.DirEntry, cc.EndDir, cc.Symlink, cc.Start, cc.End, cc.Abort,
        cc.Failure, cc.Done, cc.Have, cc.Status, cc.Finished, cc.Error)}
    assert {v["type"] for v in data["messages"]} == set(classes)
    for vector in data["messages"]:
        message = classes[vector["type"]](**{k: _value(v) for k, v in vector["fields"].items()})
        encoding = bytes.fromhex(vector["encoding"])
        assert message.encode() == encoding, vector["type"]
        allowed = FROM_SENDER | FROM_RECEIVER
        assert cc.decode_message(encoding, allowed) == message
    for vector in data["open"]:
        request = OpenRequest(**{k: _value(v) for k, v in vector["fields"].items()})
        assert request.encode().hex() == vector["encoding"]
        assert OpenRequest.decode(bytes.fromhex(vector["encoding"])) == request
    for vector in data["digests"]:
        key, content = bytes.fromhex(vector["key"]), bytes.fromhex(vector["data"])
        assert cc.file_digest(key, vector["entry"], content, vector["prefix"]).hex() \
            == vector["digest"]


def test_file_digest_is_gmac_and_streams_like_one_shot() -> None:
    """END's digest is AES-256-GCM's tag with nothing encrypted and the file as associated
    data (docs/PROTOCOL.md §10A); fed in pieces past the one-shot size it is the same."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, data = bytes(range(32)), os.urandom(3 * cc.FileDigest.ONE_SHOT + 5)
    nonce = bytes(4) + (9).to_bytes(8, "big")
    assert cc.file_digest(key, 9, data) == AESGCM(key).encrypt(nonce, b"", data)
    streamed = cc.FileDigest(cc.DigestKey(key), 9)
    for i in range(0, len(data), 100_000):
        streamed.update(memoryview(data)[i:i + 100_000])
    assert streamed.digest() == cc.file_digest(key, 9, data)
    prefix = AESGCM(key).encrypt(b"\x01" + nonce[1:], b"", data[:10])
    assert cc.file_digest(key, 9, data[:10], prefix=True) == prefix
    assert cc.file_digest(bytes(32), 9, data) != cc.file_digest(key, 9, data)


def test_a_file_entry_byte_by_byte() -> None:
    """The layout of docs/PROTOCOL.md §10A, spelled out once."""
    encoded = FileEntry(1, b"ab", 0o100644, 5, 6, 7, True).encode()
    assert encoded == bytes.fromhex(
        "01" "00000027"  # type FILE, body length 39
        "00000001" "00000002" "6162" "000001a4"  # entry, name "ab", mode 0644 (type bits dropped)
        "0000000000000005" "0000000000000006" "0000000000000007" "01")  # size, times, resume


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("name", [b"", b".", b"..", b"../../x", b"/etc/x", b"a/b", b"a\x00b",
                                  b"x" * 256])
def test_names_that_could_escape_are_refused(name: bytes) -> None:
    for message in (FileEntry(0, name, 0o644, 1), DirEntry(0, name, 0o755),
                    Symlink(0, name, b"t")):
        with pytest.raises(InvalidInput):
            cc.decode_message(message.encode(), FROM_SENDER)


def test_names_at_the_limit_and_odd_bytes_pass() -> None:
    for name in (b"x" * 255, b"...", b".hidden", b"new\nline", b"\xff\xfe", b" "):
        decoded = cc.decode_message(FileEntry(0, name, 0, 0).encode(), FROM_SENDER)
        assert isinstance(decoded, FileEntry) and decoded.name == name


def test_sizes_counts_and_lengths_are_bounded() -> None:
    with pytest.raises(InvalidInput, match="file size"):
        cc.decode_message(FileEntry(0, b"f", 0, cc.MAX_FILE_SIZE + 1).encode(), FROM_SENDER)
    with pytest.raises(InvalidInput, match="entry number"):
        cc.decode_message(FileEntry(cc.MAX_ENTRIES, b"f", 0, 1).encode(), FROM_SENDER)
    with pytest.raises(InvalidInput, match="symlink target"):
        cc.decode_message(Symlink(0, b"l", b"x" * cc.MAX_PATH).encode(), FROM_SENDER)
    with pytest.raises(InvalidInput, match="symlink target"):
        cc.decode_message(Symlink(0, b"l", b"a\x00").encode(), FROM_SENDER)
    # the header's length is refused before any body is read
    with pytest.raises(InvalidInput, match="exceeds the limit"):
        cc.decode_header(bytes([cc.FILE]) + (cc.MAX_BODY + 1).to_bytes(4, "big"), FROM_SENDER)
    with pytest.raises(InvalidInput, match="unexpected copy message type"):
        cc.decode_header(bytes([cc.STATUS, 0, 0, 0, 0]), FROM_SENDER)  # wrong direction
    with pytest.raises(InvalidInput, match="unexpected copy message type"):
        cc.decode_header(bytes([0x77, 0, 0, 0, 0]), FROM_SENDER | FROM_RECEIVER)
    with pytest.raises(InvalidInput, match="trailing"):
        cc.decode_message(cc._frame(cc.DONE, Done(1, 0).encode()[5:] + b"\x00"), FROM_SENDER)
    with pytest.raises(InvalidInput, match="time out of range"):
        body = bytearray(DirEntry(0, b"d", 0).encode()[5:])
        body[-8:] = (1 << 63).to_bytes(8, "big")
        cc.decode_body(cc.DIR, bytes(body))


@pytest.mark.parametrize("payload, match", [
    (b"\x01" + bytes(60), "version"),
    (OpenRequest(UPLOAD, (b"t",), 1).encode()[:1] + b"\x05" + bytes(60), "direction"),
    (OpenRequest(UPLOAD, (b"t",), 1).encode().replace(b"\x00\x00", b"\x00\x80", 1), "flags"),
    (OpenRequest(UPLOAD, (b"a", b"b"), 1).encode(), "exactly one target"),
    (OpenRequest(DOWNLOAD, (b"a",), 2).encode(), "every source"),
    (OpenRequest(UPLOAD, (b"t",), 0).encode(), "count out of range"),
    (OpenRequest(UPLOAD, (b"t",), 1).encode() + b"x", "trailing"),
    (OpenRequest(UPLOAD, (b"a\x00b",), 1).encode(), "NUL"),
])
def test_open_requests_out_of_bounds(payload: bytes, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        OpenRequest.decode(payload)


def test_open_request_path_length_is_bounded_before_copying() -> None:
    payload = bytearray(OpenRequest(UPLOAD, (b"t",), 1).encode())
    payload[-5:-1] = (cc.MAX_PATH + 1).to_bytes(4, "big")  # the path's length field
    with pytest.raises(InvalidInput, match="exceeds the limit"):
        OpenRequest.decode(bytes(payload))
    with pytest.raises(ValueError):
        OpenRequest(UPLOAD, (b"x" * (cc.MAX_PATH + 1),), 1).encode()
    assert Reader(b"").remaining == 0


# --------------------------------------------------------------------------- hostile client


async def _serve_copy(connection: aio.QsmpConnection, channel: aio.Channel) -> None:
    await transfer.serve(channel)


async def _read_messages(channel: aio.Channel, allowed: frozenset[int]) -> list[Any]:
    """Everything the other side says until it closes (protocol errors included)."""
    messages: list[Any] = []
    while True:
        try:
            header = await asyncio.wait_for(channel.readexactly(cc.HEADER_SIZE), 10)
        except (asyncio.IncompleteReadError, aio.ConnectionLost):
            return messages
        kind, length = cc.decode_header(header, allowed)
        messages.append(cc.decode_body(kind, await channel.readexactly(length)))


async def hostile_upload(target: Path, frames: list[bytes], *, sources: int = 1,
                         resume: bool = False) -> list[Any]:
    server = await aio.serve("127.0.0.1", 0, make_handshake=lambda: ServerHandshake([HOST_KEY]),
                             on_channel=_serve_copy)
    try:
        client = await aio.connect("127.0.0.1", server.port,
                                   handshake=ClientHandshake(Offer(), HOST_KEY.public))
        request = OpenRequest(UPLOAD, (os.fsencode(target),), sources, recursive=True,
                              resume=resume)
        channel = await client.open_channel(COPY, request.encode())
        for frame in frames:
            channel.write(frame)
        answers = await _read_messages(channel, FROM_RECEIVER)
        client.close()
        await client.wait_closed()
        return answers
    finally:
        server.close(connections=True)
        await server.wait_closed()


def test_a_cut_keeps_every_byte_that_arrived_in_the_resume_partial(tmp_path: Path) -> None:
    """The receiver hands a file's data to its writer thread in batches (4 MiB); when the
    connection ends mid-file, a --resume partial also gets what arrived but was not handed
    over yet, so that the next --resume sends only the rest."""
    dest = tmp_path / "dest"
    dest.mkdir()
    partial = dest / ".big.qcp-partial"
    data = os.urandom(1536 * 1024)  # not a whole number of batches (1 MiB before, now 4)

    async def main() -> int:
        server = await aio.serve("127.0.0.1", 0,
                                 make_handshake=lambda: ServerHandshake([HOST_KEY]),
                                 on_channel=_serve_copy)
        try:
            client = await aio.connect("127.0.0.1", server.port,
                                       handshake=ClientHandshake(Offer(), HOST_KEY.public))
            request = OpenRequest(UPLOAD, (os.fsencode(dest),), 1, resume=True)
            channel = await client.open_channel(COPY, request.encode())
            channel.write(FileEntry(0, b"big", 0o644, 10 * len(data), resume=True).encode())
            header = await asyncio.wait_for(channel.readexactly(cc.HEADER_SIZE), 10)
            kind, length = cc.decode_header(header, FROM_RECEIVER)
            have = cc.decode_body(kind, await channel.readexactly(length))
            assert isinstance(have, cc.Have) and have.have == 0
            channel.write(cc.Start(0, 0).encode() + data)
            await channel.drain()
            client.close()  # mid-file: its records are flushed, then the connection ends
            await client.wait_closed()
            for _ in range(100):  # the server's side notices, keeps the partial
                if partial.exists() and partial.stat().st_size == len(data):
                    break
                await asyncio.sleep(0.05)
            return partial.stat().st_size
        finally:
            server.close(connections=True)
            await server.wait_closed()

    assert run(main()) == len(data)
    assert partial.read_bytes() == data
    assert os.listdir(dest) == [partial.name]


def tree_snapshot(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.lstat().st_size if not p.is_dir() else -1)
                  for p in root.rglob("*"))


def _raw_file(entry: int, name: bytes, data: bytes) -> bytes:
    """A file as an honest sender frames it, under the default (zero) key of a hand-made
    OpenRequest."""
    return (FileEntry(entry, name, 0o644, len(data)).encode() + data
            + End(entry, cc.file_digest(bytes(cc.KEY_SIZE), entry, data)).encode())


@pytest.mark.parametrize("name", [b"../../x", b"/etc/x", b"..", b".", b"", b"a/../../x",
                                  b"ok\x00", b"x" * 300])
def test_hostile_sender_names_are_refused_and_nothing_is_written(tmp_path: Path,
                                                                 name: bytes) -> None:
    dest = tmp_path / "a" / "b" / "dest"
    dest.mkdir(parents=True)
    before = tree_snapshot(tmp_path)
    answers = run(hostile_upload(dest, [_raw_file(0, name, b"evil"), Done(1, 0).encode()]))
    assert len(answers) == 1 and isinstance(answers[0], cc.Error), answers
    assert "name" in answers[0].reason or "limit of 255" in answers[0].reason
    assert tree_snapshot(tmp_path) == before


@pytest.mark.parametrize("frames, match", [
    ([FileEntry(0, b"f", 0, 1 << 60).encode()], "file size"),
    ([FileEntry(cc.MAX_ENTRIES, b"f", 0, 1).encode()], "entry number"),
    ([FileEntry(5, b"f", 0, 0).encode()], "out of order"),
    ([bytes([cc.FILE]) + (1 << 31).to_bytes(4, "big")], "exceeds the limit"),
    ([bytes([cc.HAVE, 0, 0, 0, 0])], "unexpected copy message type"),
    ([EndDir().encode()], "not entered"),
    ([DirEntry(0, b"d", 0o755).encode(), Done(1, 0).encode()], "inside a directory"),
    ([FileEntry(0, b"f", 0, 0).encode(), Done(1, 0).encode()], "followed by its end"),
])
def test_hostile_sender_numbers_are_refused(tmp_path: Path, frames: list[bytes],
                                            match: str) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    answers = run(hostile_upload(dest, frames))
    assert isinstance(answers[-1], cc.Error) and match in answers[-1].reason, answers
    assert [p for p in tree_snapshot(tmp_path) if not p[0].startswith("dest")] == []
    assert [n for n in os.listdir(dest) if n != "d"] == []


def test_a_planted_link_does_not_redirect_writes(tmp_path: Path) -> None:
    """A link named like a later directory or file: the directory is refused (not
    followed), the file replaces the link; nothing appears where the link pointed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"precious")
    dest = tmp_path / "dest"
    dest.mkdir()
    frames = [
        Symlink(0, b"evil-dir", os.fsencode(outside)).encode(),
        DirEntry(1, b"evil-dir", 0o755).encode(),
        _raw_file(2, b"victim", b"overwritten"),
        EndDir().encode(),
        Symlink(3, b"evil-file", os.fsencode(outside / "victim")).encode(),
        _raw_file(4, b"evil-file", b"overwritten"),
        Done(5, 0).encode(),
    ]
    answers = run(hostile_upload(dest, frames))
    statuses = {m.entry: m for m in answers if isinstance(m, Status)}
    assert statuses[0].ok and statuses[3].ok and statuses[4].ok
    assert statuses[1].reason.startswith("Not a directory")
    assert statuses[2].errno == transfer.base.SKIPPED
    assert isinstance(answers[-1], cc.Finished)
    assert (outside / "victim").read_bytes() == b"precious"
    assert os.listdir(outside) == ["victim"]
    assert (dest / "evil-file").read_bytes() == b"overwritten"
    assert not (dest / "evil-file").is_symlink()


def test_too_deep_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    depth = cc.MAX_DEPTH + 3
    frames = [DirEntry(i, b"d", 0o755).encode() for i in range(depth)]
    frames += [EndDir().encode()] * depth + [Done(depth, 0).encode()]
    answers = run(hostile_upload(dest, frames))
    failed = [m for m in answers if isinstance(m, Status) and not m.ok
              and m.errno != transfer.base.SKIPPED]
    assert [m.reason for m in failed] == ["File name too long"]
    assert isinstance(answers[-1], cc.Finished)


# --------------------------------------------------------------------------- hostile server


async def hostile_download(target: Path, act: Callable[[aio.Channel], Awaitable[None]]
                           ) -> transfer.Report:
    async def on_channel(connection: aio.QsmpConnection, channel: aio.Channel) -> None:
        channel.accept(bytes([cc.VERSION]))
        await act(channel)
        await _read_messages(channel, FROM_RECEIVER)

    server = await aio.serve("127.0.0.1", 0, make_handshake=lambda: ServerHandshake([HOST_KEY]),
                             on_channel=on_channel)
    try:
        client = await aio.connect("127.0.0.1", server.port,
                                   handshake=ClientHandshake(Offer(), HOST_KEY.public))
        try:
            return await transfer.download(client, [b"whatever"], os.fsencode(target),
                                           CopyOptions(recursive=True))
        finally:
            client.close()
            await client.wait_closed()
    finally:
        server.close(connections=True)
        await server.wait_closed()


@pytest.mark.parametrize("name", [b"../../etc/x", b"/etc/x", b".."])
def test_hostile_server_names_are_refused(tmp_path: Path, name: bytes) -> None:
    dest = tmp_path / "a" / "dest"
    dest.mkdir(parents=True)
    before = tree_snapshot(tmp_path)

    async def act(channel: aio.Channel) -> None:
        channel.write(_raw_file(0, name, b"evil") + Done(1, 0).encode())

    with pytest.raises(CopyError, match="protocol error from the server: name"):
        run(hostile_download(dest, act))
    assert tree_snapshot(tmp_path) == before


def test_hostile_server_huge_size_then_silence_is_refused(tmp_path: Path) -> None:
    async def act(channel: aio.Channel) -> None:
        channel.write(FileEntry(0, b"f", 0o644, 1 << 62).encode())

    with pytest.raises(CopyError, match="file size"):
        run(hostile_download(tmp_path, act))
    assert os.listdir(tmp_path) == []


def test_hostile_server_wrong_digest_leaves_nothing(tmp_path: Path) -> None:
    async def act(channel: aio.Channel) -> None:
        channel.write(FileEntry(0, b"f", 0o644, 4).encode() + b"data"
                      + End(0, WRONG_DIGEST).encode() + Done(1, 0).encode())

    report = run(hostile_download(tmp_path, act))
    assert [(f.reason, f.remote) for f in report.failures] == [
        ("checksum mismatch: the file changed while being read, or was damaged in transit",
         False)]
    assert os.listdir(tmp_path) == []


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(sorted(FROM_SENDER | FROM_RECEIVER)))
def test_any_body_decodes_or_is_invalid_input(body: bytes, kind: int) -> None:
    """Whatever the bytes, a decoder returns a message or raises InvalidInput: never a
    struct or index error, never a name that could escape."""
    try:
        message = cc.decode_body(kind, body)
    except InvalidInput:
        return
    name = getattr(message, "name", None)
    if name is not None:
        assert cc.check_name(name) == name


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_open_payload_decodes_or_is_invalid_input(payload: bytes) -> None:
    try:
        request = OpenRequest.decode(payload)
    except InvalidInput:
        return
    assert OpenRequest.decode(request.encode()) == request
