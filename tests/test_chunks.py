"""common.aio.chunks.ChunkQueue: the buffer behind every channel read (ReadStream, qcp's
relayed SocketChannel). What it hands out is the chunk as stored wherever it can (a view
stays a view: the copy engine writes records' plaintexts to files from there), joined bytes
only across chunks; its byte count is what flow control reads."""

from __future__ import annotations

from common.aio.chunks import ChunkQueue


def _queue(*chunks: bytes | memoryview) -> ChunkQueue[bytes | memoryview]:
    queue: ChunkQueue[bytes | memoryview] = ChunkQueue()
    for chunk in chunks:
        queue.append(chunk)
    return queue


def test_an_empty_queue_gives_empty_bytes_and_counts_nothing() -> None:
    queue = _queue()
    assert queue.size == 0
    for take in (queue.take(-1), queue.take(5), queue.take(0), queue.take_first(),
                 queue.take_first(3)):
        assert take == b"" and type(take) is bytes
    assert queue.size == 0


def test_the_byte_count_follows_every_append_and_take() -> None:
    queue = _queue(b"0123456789", memoryview(b"abcde"))
    assert queue.size == 15
    queue.take(3)
    assert queue.size == 12
    queue.take_first()
    assert queue.size == 5
    queue.append(b"VWXYZ")
    assert queue.size == 10
    queue.take(-1)
    assert queue.size == 0


def test_an_exact_take_of_a_whole_chunk_is_that_chunk() -> None:
    data = b"0123456789"
    view = memoryview(b"abcde")
    queue = _queue(data, view)
    assert queue.take(10) is data
    assert queue.take(5) is view  # no copy, no new view either
    assert queue.size == 0
    queue.append(view)
    assert queue.take_first() is view


def test_a_partial_take_slices_the_first_chunk_and_the_rest_follows() -> None:
    record = b"0123456789"
    queue = _queue(memoryview(record))
    head = queue.take(3)
    assert isinstance(head, memoryview) and head.obj is record and head == b"012"
    part = queue.take_first(4)
    assert isinstance(part, memoryview) and part.obj is record and part == b"3456"
    rest = queue.take_first()
    assert isinstance(rest, memoryview) and rest.obj is record and rest == b"789"
    queue = _queue(record)
    head = queue.take(3)
    assert type(head) is bytes and head == b"012"  # bytes slice as bytes do: a copy
    assert queue.take(-1) == b"3456789"


def test_a_take_across_chunks_joins_them_into_bytes_and_keeps_the_offset_right() -> None:
    """After a partial read, a take that finishes the first chunk and cuts into a later
    one: the next take starts where that cut was (ReadStream once lost bytes here)."""
    queue = _queue(b"0123456789", memoryview(b"abcde"), b"VWXYZ")
    assert queue.take(3) == b"012"
    across = queue.take(10)
    assert type(across) is bytes and across == b"3456789abc"
    assert queue.take(4) == b"deVW"
    assert queue.take(100) == b"XYZ"  # more than queued: what there is
    assert queue.size == 0


def test_a_take_that_ends_on_a_chunk_boundary_starts_the_next_chunk_at_its_start() -> None:
    """The read that lost bytes in ReadStream: after a partial take, one that takes the
    rest of the first chunk and whole chunks after it must leave no stale offset."""
    queue = _queue(b"0123456789", memoryview(b"abcde"), b"VWXYZ")
    assert queue.take(3) == b"012"
    assert queue.take(12) == b"3456789abcde"
    assert queue.take_first() == b"VWXYZ"
    assert queue.size == 0


def test_a_take_of_the_first_chunk_stops_at_the_first_chunk_or_at_n() -> None:
    queue = _queue(b"0123456789", b"abcde")
    assert queue.take_first(4) == b"0123"
    assert queue.take_first(0) == b""
    assert queue.take_first(100) == b"456789"  # never into the next chunk
    assert queue.take_first() == b"abcde"
    assert queue.size == 0


def test_the_relayed_copy_channel_pauses_the_socket_at_its_limit_and_resumes() -> None:
    """qcp's SocketChannel keeps its queue's byte count under READ_LIMIT (plus one socket
    read) by pausing the socket, and resumes once the engine has taken half: a real
    socketpair, 4 MiB written by the master's end while nothing is read, then read in
    message-sized pieces."""
    import asyncio
    import os
    import socket

    from common.client.mux_copy import READ_LIMIT, SocketChannel

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        control, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        channel = SocketChannel(control)
        ours.setblocking(False)
        theirs.setblocking(False)
        transport, _ = await loop.create_unix_connection(lambda: channel, sock=ours)
        data = os.urandom(4 << 20)
        sending = asyncio.ensure_future(loop.sock_sendall(theirs, data))
        try:
            async with asyncio.timeout(10):
                while transport.is_reading():
                    await asyncio.sleep(0.005)
                assert READ_LIMIT < channel.buffered <= READ_LIMIT + (256 << 10)
                got = [await channel.readexactly(13)]
                resumed = False
                while sum(map(len, got)) < len(data):
                    got.append(await channel.read(64 << 10))
                    resumed = resumed or transport.is_reading()
                    assert channel.buffered <= READ_LIMIT + (256 << 10)
                await sending
            assert resumed and b"".join(got) == data
        finally:
            sending.cancel()
            transport.abort()
            for end in (theirs, control, other):
                end.close()

    asyncio.run(main())
