"""Received bytes held as the chunks they arrived in (:class:`ChunkQueue`).

The one buffer behind every channel read: :class:`common.aio.ReadStream` (a channel's
stream) and :class:`common.client.mux_copy.SocketChannel` (qcp's relayed copy channel).
It is the bulk data path of qcp and of every channel, so it copies only where a caller
asks for bytes that span chunks: a whole chunk, or a part of the first one, is handed out
as it is stored (a ``memoryview`` stays a view of its record; slicing ``bytes`` copies,
as ``bytes`` always does). Flow control is the owner's: it reads :attr:`ChunkQueue.size`
and grants or pauses by what it took.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

#: What a queue holds: ``bytes`` only (its takes are ``bytes``), or views as well.
Chunk = TypeVar("Chunk", bytes, bytes | memoryview)


class ChunkQueue(Generic[Chunk]):
    """Chunks in arrival order, a read offset into the first, and their byte count.

    Empty chunks are not to be queued (nothing upstream makes them: an empty read means
    the end of a stream)."""

    __slots__ = ("_chunks", "_offset", "size")

    def __init__(self) -> None:
        self._chunks: deque[Chunk] = deque()
        self._offset = 0  # into _chunks[0]
        #: Bytes queued and not yet taken.
        self.size = 0

    def append(self, data: Chunk) -> None:
        self._chunks.append(data)
        self.size += len(data)

    def take_first(self, n: int = -1) -> Chunk:
        """The rest of the first chunk as it arrived (a read of "the next chunk"), or only
        its next ``n`` bytes if ``0 <= n`` is fewer: the chunk itself, or a slice of it."""
        chunks = self._chunks
        if not chunks:
            return b""
        head = chunks[0]
        offset = self._offset
        rest = len(head) - offset
        if 0 <= n < rest:
            self._offset = offset + n
            self.size -= n
            return head[offset : offset + n]
        chunks.popleft()
        self._offset = 0
        self.size -= rest
        return head[offset:] if offset else head

    def take(self, n: int = -1) -> Chunk:
        """Up to ``n`` bytes (all if ``n < 0``), fewer only if fewer are queued. Within
        the first chunk they are that chunk or a slice of it, as stored; across chunks
        they are joined into new ``bytes``."""
        chunks = self._chunks
        try:
            head = chunks[0]
        except IndexError:  # empty (a try costs nothing until it catches)
            return b""
        offset = self._offset
        available = len(head) - offset
        if n < 0 or n > self.size:
            n = self.size
        if n == available:
            chunks.popleft()
            self._offset = 0
            data = head if not offset else head[offset:]
        elif n < available:
            data = head[offset : offset + n]
            self._offset = offset + n
        else:
            parts = [memoryview(head)[offset:]]
            chunks.popleft()
            self._offset = 0  # into the next chunk now (the old offset was the first's)
            need = n - available
            while need:
                chunk = chunks[0]
                if len(chunk) <= need:
                    parts.append(memoryview(chunk))
                    chunks.popleft()
                    need -= len(chunk)
                else:
                    parts.append(memoryview(chunk)[:need])
                    self._offset = need
                    need = 0
            data = b"".join(parts)
        self.size -= n
        return data
