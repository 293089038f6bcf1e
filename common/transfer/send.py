"""The sending end of a copy: walks the sources, streams metadata and data, and collects
the receiver's statuses as they come back (no round trip per file)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Sequence

from common.channels.copy import (
    MAX_DEPTH,
    Abort,
    DigestKey,
    DirEntry,
    Done,
    End,
    EndDir,
    FileDigest,
    FileEntry,
    Finished,
    Have,
    Start,
    Status,
    Symlink,
)
from common.transfer import base
from common.transfer.base import (
    CHUNK,
    MAX_OUTSTANDING,
    SKIPPED,
    CopyError,
    CopyOptions,
    Peer,
    Progress,
    finished,
    join,
    printable,
    reason_of,
)

#: (path as the user would recognise it, errno or 0, reason): a failure this side saw.
OnFailure = Callable[[bytes, int, str], None]
#: (status, the entry's size or None for a directory or link): the receiver's word.
OnStatus = Callable[[Status, "int | None"], None]

_ZEROS = bytes(CHUNK)
NOT_REGULAR = "not a regular file"


class Sender:
    def __init__(self, peer: Peer, options: CopyOptions, key: DigestKey, *,
                 on_failure: OnFailure, on_status: OnStatus,
                 progress: Progress | None = None) -> None:
        self.peer = peer
        self.key = key
        self.options = options
        self.on_failure = on_failure
        self.on_status = on_status
        self.progress = progress
        self.entries = 0
        self.failures = 0
        self.sent = 0  # file bytes put on the channel
        self._outstanding: dict[int, int | None] = {}
        self._room = asyncio.Event()
        self._room.set()
        self._haves: dict[int, asyncio.Future[Have]] = {}
        self._started = time.monotonic()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    # -- the receiver's answers

    async def _read_answers(self) -> Finished:
        while True:
            message = await self.peer.message()
            if isinstance(message, Status):
                if message.entry not in self._outstanding:
                    raise CopyError(f"status for entry {message.entry}, which is not in flight")
                size = self._outstanding.pop(message.entry)
                if message.errno != SKIPPED:
                    self.on_status(message, size)
                if len(self._outstanding) < MAX_OUTSTANDING:
                    self._room.set()
            elif isinstance(message, Have):
                future = self._haves.pop(message.entry, None)
                if future is None:
                    raise CopyError(f"resume answer for entry {message.entry}, not asked for")
                future.set_result(message)
            elif isinstance(message, Finished):
                if self._outstanding:
                    raise CopyError("the receiver finished with entries still in flight")
                return message
            else:  # pragma: no cover - decode_header refuses other types
                raise CopyError(f"unexpected {type(message).__name__}")

    # -- walking

    async def run(self, sources: Sequence[tuple[bytes, bytes]]) -> Finished:
        """``sources``: (path to open, path to show). Returns the receiver's summary.
        The walk and the receiver's answers run side by side: an error in either (the
        receiver's protocol error, a lost connection) ends both."""
        answers = asyncio.ensure_future(self._read_answers())
        walk = asyncio.ensure_future(self._walk(sources))
        try:
            await asyncio.wait((answers, walk), return_when=asyncio.FIRST_COMPLETED)
            if answers.done() and not walk.done():
                answers.result()  # raises what ended it
                raise CopyError("the receiver finished before the sender")
            walk.result()
            return await answers
        finally:
            for task in (walk, answers):
                if not task.done():
                    task.cancel()
            await asyncio.gather(walk, answers, return_exceptions=True)
            for future in self._haves.values():
                future.cancel()
            if self._pool is not None:
                self._pool.shutdown(wait=False)

    async def _walk(self, sources: Sequence[tuple[bytes, bytes]]) -> None:
        for path, display in sources:
            await self._top(path, display)
        self.peer.send(Done(self.entries, self.failures).encode())
        self.peer.flush()
        await self.peer.drain()

    def _fail(self, display: bytes, exc: OSError | None, reason: str = "") -> None:
        self.failures += 1
        number = 0
        if exc is not None:
            number, reason = reason_of(exc)
        self.on_failure(display, number, reason)

    async def _top(self, path: bytes, display: bytes) -> None:
        try:
            st = os.stat(path)  # scp follows a link named on the command line
        except OSError as exc:
            self._fail(display, exc)
            return
        name = os.path.basename(os.path.normpath(path))
        if name in (b"", b".", b".."):
            name = os.path.basename(os.path.realpath(path))
        if not name:
            self._fail(display, None, "cannot copy the root directory as a whole")
            return
        if stat.S_ISREG(st.st_mode):
            await self._file(path, name, display, follow=True)
        elif stat.S_ISDIR(st.st_mode):
            if not self.options.recursive:
                self._fail(display, None, NOT_REGULAR)
                return
            await self._dir(path, name, display, st, 0)
        else:
            self._fail(display, None, NOT_REGULAR)

    async def _entry(self, size: int | None) -> int:
        while len(self._outstanding) >= MAX_OUTSTANDING:
            self._room.clear()
            self.peer.flush()  # the statuses we wait for answer what is queued here
            await self._room.wait()
        entry = self.entries
        self.entries += 1
        self._outstanding[entry] = size
        return entry

    async def _dir(self, path: bytes, name: bytes, display: bytes, st: os.stat_result,
                   depth: int) -> None:
        if depth > MAX_DEPTH:
            self._fail(display, None, "too deep")
            return
        try:
            with os.scandir(path) as it:
                names = sorted(e.name for e in it)
        except OSError as exc:
            self._fail(display, exc)
            return
        entry = await self._entry(None)
        self.peer.send(DirEntry(entry, name, st.st_mode, st.st_atime_ns, st.st_mtime_ns)
                       .encode())
        for child in names:
            child_path, child_display = join(path, child), join(display, child)
            try:
                cst = os.lstat(child_path)
            except OSError as exc:
                self._fail(child_display, exc)
                continue
            if stat.S_ISREG(cst.st_mode):
                await self._file(child_path, child, child_display, follow=False)
            elif stat.S_ISDIR(cst.st_mode):
                await self._dir(child_path, child, child_display, cst, depth + 1)
            elif stat.S_ISLNK(cst.st_mode):
                try:
                    target = os.readlink(child_path)
                except OSError as exc:
                    self._fail(child_display, exc)
                    continue
                link = await self._entry(None)
                self.peer.send(Symlink(link, child, target, cst.st_atime_ns, cst.st_mtime_ns)
                               .encode())
            else:
                self._fail(child_display, None, NOT_REGULAR)
        self.peer.send(EndDir().encode())
        await self.peer.drain()

    async def _file(self, path: bytes, name: bytes, display: bytes, *, follow: bool) -> None:
        flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            self._fail(display, exc)
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self._fail(display, None, NOT_REGULAR)
                return
            await self._send_file(fd, st, name, display)
        finally:
            os.close(fd)

    async def _send_file(self, fd: int, st: os.stat_result, name: bytes,
                         display: bytes) -> None:
        size = st.st_size
        resume = self.options.resume and size > 0
        entry = await self._entry(size)
        digest = FileDigest(self.key, entry)
        offset = 0
        have: asyncio.Future[Have] | None = None
        if resume:
            have = asyncio.get_running_loop().create_future()
            self._haves[entry] = have
        self.peer.send(FileEntry(entry, name, st.st_mode, size, st.st_atime_ns,
                                 st.st_mtime_ns, resume).encode())
        if have is not None:
            self.peer.flush()
            await self.peer.drain()
            answer = await have
            if 0 < answer.have <= size:
                prefix = await asyncio.get_running_loop().run_in_executor(
                    None, _hash_prefix, fd, answer.have, self.key, entry)
                if prefix is not None and hmac.compare_digest(prefix[0], answer.digest):
                    digest, offset = prefix[1], answer.have
            self.peer.send(Start(entry, offset).encode())
        progress = self.progress
        shown = printable(display) if progress is not None else ""
        if progress is not None:
            progress.start(shown, size, offset)
        remaining = size - offset
        problem = ""
        limit = self.options.limit
        threaded = remaining > CHUNK and base.FILE_THREADS
        if threaded and self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, "qcp-read")
        reader = _Reader(self._pool if threaded else None, fd, digest, offset,
                         remaining, CHUNK if limit else READ_SIZE)
        try:
            while remaining:
                try:
                    data = await reader.next()
                except OSError as exc:
                    problem = reason_of(exc)[1]
                    break
                if not data:
                    problem = "file shrank while being read"
                    break
                self.peer.send(data)
                n = len(data)
                remaining -= n
                self.sent += n
                if progress is not None:
                    progress.advance(n)
                await self.peer.drain()
                if limit:
                    ahead = self.sent / limit - (time.monotonic() - self._started)
                    if ahead > 0:
                        self.peer.flush()
                        await asyncio.sleep(ahead)
        finally:
            reader.wait()
        if problem:
            while remaining:  # the receiver expects the declared size: pad, then abort
                n = min(CHUNK, remaining)
                self.peer.send(_ZEROS[:n] if n < CHUNK else _ZEROS)
                remaining -= n
                await self.peer.drain()
            self._outstanding.pop(entry, None)
            self._room.set()
            self.peer.send(Abort(entry, problem).encode())
            self._fail(display, None, problem)
        else:
            self.peer.send(End(entry, digest.digest()).encode())
        if progress is not None:
            progress.end(shown, not problem)


#: Chunks read (and digested) ahead of the one being sent, by a thread of their own...
READ_AHEAD = 4
#: ...each this large, unless the copy is paced (-l), which sends CHUNKs: a job per 4 MiB
#: rather than per 1 MiB halves the hand-offs' cost (a thread woken, the GIL passed back
#: and forth); measured 5-10% faster for 512 MiB on this machine.
READ_SIZE = 4 * CHUNK


class _Reader:
    """Reads and hashes one file's chunks in order: with a pool (``base.FILE_THREADS``)
    ahead of the event loop, which meanwhile encrypts and sends the previous ones; without
    one, a chunk at a time when asked. A short read is the file's end (the
    caller reports a file that shrank); later chunks are then not asked for."""

    def __init__(self, pool: concurrent.futures.ThreadPoolExecutor | None, fd: int,
                 digest: FileDigest, position: int, length: int, size: int) -> None:
        self.pool = pool
        self.size = size  # of a read in the thread
        self.fd = fd
        self.digest = digest
        self.position = position
        self.left = length  # not yet asked for
        self._jobs: deque[concurrent.futures.Future[bytes]] = deque()

    def _read(self, n: int, position: int) -> bytes:
        data = os.pread(self.fd, n, position)
        self.digest.update(data)
        return data if len(data) == n else data[:0]

    async def next(self) -> bytes:
        if self.pool is None:
            n = min(CHUNK, self.left)
            self.left -= n
            self.position += n
            return self._read(n, self.position - n)
        while self.left and len(self._jobs) < READ_AHEAD:
            n = min(self.size, self.left)
            self._jobs.append(self.pool.submit(self._read, n, self.position))
            self.left -= n
            self.position += n
        data = await finished(self._jobs[0])  # listed until done, for wait()
        self._jobs.popleft()
        if not data:
            self.left = 0
        return data

    def wait(self) -> None:
        """Block until no read runs: before the descriptor is closed."""
        self.left = 0
        if self._jobs:
            concurrent.futures.wait(self._jobs)
            self._jobs.clear()


def _hash_prefix(fd: int, length: int, key: DigestKey, entry: int
                 ) -> tuple[bytes, FileDigest] | None:
    """The first ``length`` bytes' digest as HAVE's, and the whole file's digest fed with
    them (to go on with the rest); None if the file is shorter now. One read for both."""
    prefix, digest = FileDigest(key, entry, prefix=True), FileDigest(key, entry)
    position = 0
    while position < length:
        data = os.pread(fd, min(CHUNK, length - position), position)
        if not data:
            return None
        prefix.update(data)
        digest.update(data)
        position += len(data)
    return prefix.digest(), digest

