"""Writing one large file's data as it arrives: in batches, by a thread while the event
loop receives (and decrypts) the next records where CPUs are to spare, within a bounded
amount in flight, else by the event loop itself;
and, for --resume, the digest of what a partial file already holds. On its own because it
is the data path of a big copy, tuned by its own sizes, apart from the receiver's protocol.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
from collections import deque

from common.channels.copy import DigestKey, FileDigest
from common.transfer.base import CHUNK, finished


class TempFile:
    """The file being written, so whatever ends the copy can clean it up."""

    __slots__ = ("fd", "keep", "name", "parent", "writer")

    def __init__(self, parent: int, name: bytes, fd: int | None, keep: bool,
                 writer: DataWriter | None = None) -> None:
        self.parent = parent
        self.name = name  # b"": anonymous (O_TMPFILE), nothing to remove
        self.fd = fd
        self.keep = keep  # a --resume partial: kept on failure
        self.writer = writer


def hash_file(fd: int, length: int, key: DigestKey, entry: int
               ) -> tuple[bytes, FileDigest]:
    """HAVE's digest of the first ``length`` bytes, and the whole file's digest fed with
    them (to go on with the rest): one read for both."""
    prefix, digest = FileDigest(key, entry, prefix=True), FileDigest(key, entry)
    position = 0
    while position < length:
        data = os.pread(fd, min(CHUNK, length - position), position)
        if not data:
            break
        prefix.update(data)
        digest.update(data)
        position += len(data)
    return prefix.digest(), digest


#: A file's data goes to the writer thread in batches of this size (4 MiB rather than 1:
#: a quarter of the hand-offs, measured 5-10% faster for 512 MiB here)...
BATCH = 4 * 1024 * 1024
#: ...with at most this much handed over and not yet written (the window refills meanwhile).
IN_FLIGHT = 16 * 1024 * 1024
#: Files up to this size are written by the event loop itself: a thread would cost more
#: (and every file is, where ``base.FILE_THREADS`` says a thread would not pay).
INLINE = 1024 * 1024


class DataWriter:
    """Hashes and writes one file's data in order. With a pool (``base.FILE_THREADS``, four
    CPUs or more) in a thread of its own, while the event loop goes on receiving (and
    decrypting) the next records; without one (small files, fewer CPUs) inline."""

    def __init__(self, pool: concurrent.futures.ThreadPoolExecutor | None, fd: int,
                 digest: FileDigest, position: int) -> None:
        self.pool = pool
        self.fd = fd
        self.digest = digest
        self.position = position
        self.error: OSError | None = None
        self._batch: list[memoryview] = []
        self._batch_size = 0
        self._jobs: deque[tuple[concurrent.futures.Future[None], int]] = deque()
        self._in_flight = 0

    def _run(self, buffers: list[memoryview], position: int) -> None:
        if self.error is not None:
            return
        try:
            for buffer in buffers:
                self.digest.update(buffer)
            while buffers:
                n = os.pwritev(self.fd, buffers, position)
                position += n
                while buffers and n >= len(buffers[0]):
                    n -= len(buffers.pop(0))
                if n:
                    buffers[0] = buffers[0][n:]
        except OSError as exc:
            self.error = exc

    def _submit(self) -> None:
        if not self._batch:
            return
        buffers, size = self._batch, self._batch_size
        self._batch, self._batch_size = [], 0
        if self.pool is None:
            self._run(buffers, self.position)
        else:
            self._jobs.append((self.pool.submit(self._run, buffers, self.position), size))
            self._in_flight += size
        self.position += size

    async def write(self, data: memoryview) -> None:
        self._batch.append(data)
        self._batch_size += len(data)
        if self._batch_size >= BATCH or len(self._batch) >= 256:
            self._submit()
        while self._in_flight > IN_FLIGHT:
            await self._oldest()

    async def _oldest(self) -> None:
        future, size = self._jobs[0]
        await finished(future)  # stays listed until done, for wait()
        self._jobs.popleft()
        self._in_flight -= size

    async def flush(self) -> OSError | None:
        self._submit()
        while self._jobs:
            await self._oldest()
        return self.error

    def wait(self, *, keep: bool = False) -> None:
        """Block until no job runs: before the descriptor is closed, whatever ended the
        copy (a number reused by another open must never receive our writes). ``keep``:
        the file is a --resume partial, so what arrived and is not written yet (up to a
        batch) is written now, here, for the next --resume to start after it."""
        concurrent.futures.wait([future for future, _ in self._jobs])
        self._jobs.clear()
        if keep and self._batch and self.error is None:
            self._run(self._batch, self.position)
        self._batch.clear()
        self.error = self.error or OSError(errno.ECANCELED, "cancelled")
