"""The receiving end of a copy: places every entry under the destination, writes files
to a temporary name, verifies, renames; answers each entry with a status.

Safety. Names from the peer are single components checked by the codec (no ``/``, ``.``,
``..``, NUL); every directory below the destination is opened with ``O_NOFOLLOW`` and
every create is relative to the directory's descriptor (``openat`` and friends), so a
link planted in the destination cannot redirect a write outside it.

Never a wrong file. A file is written to ``.NAME.qcp-XXXXXXXX`` (``O_CREAT|O_EXCL``,
mode 0600) next to its destination, fsynced, its digest checked against the sender's,
then renamed over the destination (atomic; an existing destination is never truncated).
On any failure, cancellation or lost connection the temporary file is removed. With
``--resume`` the file is written to ``.NAME.qcp-partial`` instead, and that is kept on a
failure, for a later ``--resume`` to continue from. A small file (:data:`SMALL`) is checked
in memory before anything is created; a commit thread then writes it the same way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hmac
import os
import secrets
import stat
from collections import deque
from collections.abc import Callable

from common.channels.copy import (
    MAX_DEPTH,
    MAX_PATH,
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
from common.channels.copy import Failure as FailureMessage
from common.errors import InvalidInput
from common.transfer import base
from common.transfer.base import (
    CHUNK,
    SKIPPED,
    CopyOptions,
    Peer,
    Progress,
    join,
    printable,
    reason_of,
)
from common.transfer.commit import (
    BATCH_BYTES,
    BATCH_FILES,
    COMMIT_THREADS,
    MAX_COMMITS,
    SMALL,
    SmallFile,
    commit_batch,
    commit_file,
    current_umask,
    fsync_dir,
    open_temp,
    temp_name,
)

# re-exported: importers predate the split
from common.transfer.commit import partial_name as partial_name
from common.transfer.writer import INLINE, DataWriter, TempFile, hash_file

#: (path as the user would recognise it, errno, reason): a failure this side saw.
OnFailure = Callable[[bytes, int, str], None]
OnRemoteFailure = Callable[[FailureMessage], None]
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_MISMATCH = "checksum mismatch: the file changed while being read, or was damaged in transit"

# Temporary names, the commit (small files in batches), umask, dir fsync: common.transfer.commit.


class _Refused(Exception):
    def __init__(self, number: int, reason: str, display: bytes) -> None:
        super().__init__(reason)
        self.number = number
        self.reason = reason
        self.display = display


class _Skip(Exception):
    """Inside a directory that could not be created: not written, not reported again."""


class _Dir:
    """A directory being received. (Plain classes here, not dataclasses: building one costs
    about a millisecond at every qcp start, issue 18.)"""

    __slots__ = ("created", "display", "entry", "error", "fd", "length", "message")

    def __init__(self, fd: int | None, display: bytes, length: int, entry: int,
                 message: DirEntry, created: bool = False,
                 error: tuple[int, str] | None = None) -> None:
        self.fd = fd  # None: being skipped
        self.display = display
        self.length = length  # of the path below the destination
        self.entry = entry
        self.message = message
        self.created = created
        self.error = error


# The file being written, and the thread that writes it: common.transfer.writer.


class Receiver:
    def __init__(self, peer: Peer, options: CopyOptions, key: DigestKey, target: bytes,
                 display: bytes, sources: int, *, on_failure: OnFailure,
                 on_remote_failure: OnRemoteFailure | None = None,
                 progress: Progress | None = None) -> None:
        self.peer = peer
        self.options = options
        self.key = key
        self.target = target or b"."
        self.display = display or self.target
        self.sources = sources
        self.on_failure = on_failure
        self.on_remote_failure = on_remote_failure
        self.progress = progress
        self.files = 0  # arrived and verified
        self.bytes = 0
        self.received = 0  # file bytes that crossed the connection
        self.failures = 0
        self.entries = 0
        self._umask = current_umask()
        self._stack: list[_Dir] = []
        self._top = 0
        self._target_fd: int | None = None  # the target is an existing directory
        self._parent_fd: int | None = None  # ...else the directory of the new name
        self._target_name = b""
        self._target_error: tuple[int, str] | None = None
        self._temp: TempFile | None = None
        self._dirty: set[int] = set()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._commit_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._commits: deque[tuple[concurrent.futures.Future[list[OSError | None]],
                                   list[tuple[FileEntry, bytes]]]] = deque()
        self._batch: list[SmallFile] = []
        self._batch_bytes = 0

    # -- the destination

    def _open_target(self) -> None:
        target = self.target
        try:
            self._target_fd = os.open(target, _DIR_FLAGS)
            return
        except (FileNotFoundError, NotADirectoryError) as exc:
            missing: OSError = exc
        except PermissionError:
            try:  # a directory we may write into but not list
                self._target_fd = os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                return
            except OSError as exc:
                self._target_error = reason_of(exc)
                return
        except OSError as exc:
            self._target_error = reason_of(exc)
            return
        head, tail = os.path.split(target)
        if self.sources > 1:
            self._target_error = reason_of(missing) if isinstance(missing, FileNotFoundError) \
                else (errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            return
        if not tail:  # "dir/" that is not a directory
            self._target_error = reason_of(missing)
            return
        try:
            self._parent_fd = os.open(head or b".", _DIR_FLAGS)
        except OSError as exc:
            self._target_error = reason_of(exc)
            return
        self._target_name = tail

    def _place(self, name: bytes) -> tuple[int, bytes, bytes]:
        """(directory fd, name in it, path to show) for an entry named ``name``."""
        if self._stack:
            top = self._stack[-1]
            display = join(top.display, name)
            if top.fd is None:
                raise _Skip
            if len(self._stack) > MAX_DEPTH or top.length + 1 + len(name) > MAX_PATH:
                raise _Refused(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), display)
            return top.fd, name, display
        self._top += 1
        if self._target_error is not None:
            raise _Refused(*self._target_error, self.display)
        if self._target_fd is not None:
            return self._target_fd, name, join(self.display, name)
        assert self._parent_fd is not None
        if self._top > 1:  # one source may become a new name, not several
            raise _Refused(errno.ENOTDIR, os.strerror(errno.ENOTDIR), self.display)
        return self._parent_fd, self._target_name, self.display

    def _length(self, name: bytes) -> int:
        return self._stack[-1].length + 1 + len(name) if self._stack else len(name)

    # -- the conversation

    async def run(self) -> None:
        peer = self.peer
        self._open_target()
        try:
            while True:
                message = await peer.message()
                if isinstance(message, FileEntry | DirEntry | Symlink):
                    if message.entry != self.entries:
                        raise InvalidInput(f"entry {message.entry} out of order "
                                           f"(expected {self.entries})")
                    self.entries += 1
                if isinstance(message, FileEntry):
                    await self._file(message)
                elif isinstance(message, DirEntry):
                    self._dir(message)
                elif isinstance(message, EndDir):
                    if not self._stack:
                        raise InvalidInput("end of a directory that was not entered")
                    await self._end_dir(self._stack.pop())
                elif isinstance(message, Symlink):
                    self._symlink(message)
                elif isinstance(message, FailureMessage):
                    if self.on_remote_failure is not None:
                        self.on_remote_failure(message)
                elif isinstance(message, Done):
                    if self._stack:
                        raise InvalidInput("copy done inside a directory")
                    await self._harvest(0)
                    for fd in (self._target_fd, self._parent_fd):
                        if fd is not None and fd in self._dirty:
                            await fsync_dir(fd)
                    peer.send(Finished(self.entries, self.failures).encode())
                    peer.flush()
                    await peer.drain()
                    return
                else:
                    raise InvalidInput(f"unexpected {type(message).__name__} between files")
                await peer.drain()
        finally:
            self._discard()
            # verified files still committing complete (each closes its descriptor)
            self._batch.clear()  # not written yet: nothing to undo
            concurrent.futures.wait([future for future, _ in self._commits])
            self._commits.clear()
            for pool in (self._pool, self._commit_pool):
                if pool is not None:
                    pool.shutdown(wait=False)
            for d in self._stack:
                if d.fd is not None:
                    os.close(d.fd)
            self._stack.clear()
            for fd in (self._target_fd, self._parent_fd):
                if fd is not None:
                    os.close(fd)
            self._target_fd = self._parent_fd = None

    def _status(self, entry: int, display: bytes, error: tuple[int, str] | None) -> None:
        if error is None:
            self.peer.send(Status(entry).encode())
            return
        number, reason = error
        if number == SKIPPED:
            self.peer.send(Status(entry, SKIPPED).encode())
            return
        self.failures += 1
        self.on_failure(display, number, reason)
        self.peer.send(Status(entry, number, reason, display).encode())

    def _discard(self, *, keep: bool | None = None) -> None:
        temp = self._temp
        if temp is None:
            return
        self._temp = None
        kept = bool(temp.name) and (temp.keep if keep is None else keep)
        if temp.writer is not None:
            temp.writer.wait(keep=kept)
        if temp.fd is not None:
            os.close(temp.fd)
        if temp.name and not kept:
            with contextlib.suppress(OSError):
                os.unlink(temp.name, dir_fd=temp.parent)

    def _place_replaceable(self, name: bytes) -> tuple[int, bytes, bytes]:
        """:meth:`_place` for what is committed by a rename, which would put a regular file
        in the place of a device, FIFO or socket there (``qcp f host:/dev/null`` as root
        replaced the machine's /dev/null): such a destination is refused."""
        parent, name, display = self._place(name)
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError:
            return parent, name, display  # absent (or unreadable: the create will say)
        if stat.S_IFMT(st.st_mode) in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO,
                                       stat.S_IFSOCK):
            raise _Refused(errno.EEXIST, "exists and is not a regular file", display)
        return parent, name, display

    # -- directories and links

    def _dir(self, m: DirEntry) -> None:
        try:
            parent, name, display = self._place(m.name)
        except _Skip:
            top = self._stack[-1]
            self._stack.append(_Dir(None, join(top.display, m.name), 0, m.entry, m,
                                    error=(SKIPPED, "")))
            return
        except _Refused as refused:
            self._stack.append(_Dir(None, refused.display, 0, m.entry, m,
                                    error=(refused.number, refused.reason)))
            return
        length = self._length(name)
        created = False
        try:
            try:
                os.mkdir(name, 0o700, dir_fd=parent)
                created = True
                self._dirty.add(parent)
            except FileExistsError:
                pass
            fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
        except OSError as exc:
            error = reason_of(exc)
            if exc.errno == errno.ELOOP:
                error = (errno.ENOTDIR, "Not a directory (a symbolic link)")
            self._stack.append(_Dir(None, display, length, m.entry, m, error=error))
            return
        self._stack.append(_Dir(fd, display, length, m.entry, m, created))

    async def _end_dir(self, d: _Dir) -> None:
        await self._harvest(0)  # every file in it renamed, before its mode, times, fsync
        error = d.error
        if d.fd is not None:
            m = d.message
            try:
                if self.options.preserve:
                    os.chmod(d.fd, m.mode)
                    os.utime(d.fd, ns=(m.atime_ns, m.mtime_ns))
                elif d.created:
                    os.chmod(d.fd, m.mode & 0o777 & ~self._umask)
                if d.fd in self._dirty:
                    self._dirty.discard(d.fd)
                    await fsync_dir(d.fd)
            except OSError as exc:
                error = reason_of(exc)
            finally:
                os.close(d.fd)
        self._status(d.entry, d.display, error)

    def _symlink(self, m: Symlink) -> None:
        try:
            parent, name, display = self._place_replaceable(m.name)
        except _Skip:
            self._status(m.entry, b"", (SKIPPED, ""))
            return
        except _Refused as refused:
            self._status(m.entry, refused.display, (refused.number, refused.reason))
            return
        error = None
        temp = temp_name(name, secrets.token_hex(4).encode())
        try:
            os.symlink(m.target, temp, dir_fd=parent)
            try:
                os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
            except OSError:
                os.unlink(temp, dir_fd=parent)
                raise
            self._dirty.add(parent)
            if self.options.preserve:
                os.utime(name, ns=(m.atime_ns, m.mtime_ns), dir_fd=parent,
                         follow_symlinks=False)
        except OSError as exc:
            error = reason_of(exc)
        self._status(m.entry, display, error)

    # -- files

    def _create(self, parent: int, name: bytes, resume: bool, size: int
                ) -> tuple[int, int]:
        """Open the file to write: (fd, bytes already there for --resume)."""
        if resume:
            partial = partial_name(name)
            try:
                fd = os.open(partial, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            except FileNotFoundError:
                pass
            else:
                self._temp = TempFile(parent, partial, fd, keep=True)
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                    raise OSError(errno.EEXIST, f"{printable(partial)} is not a regular file "
                                  "of ours")
                return fd, st.st_size if st.st_size <= size else 0
            fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=parent)
            self._temp = TempFile(parent, partial, fd, keep=True)
            return fd, 0
        fd, temp = open_temp(parent, name)
        self._temp = TempFile(parent, temp, fd, keep=False)
        return fd, 0

    def _open_big(self, m: FileEntry, parent: int, name: bytes
                  ) -> tuple[int, int, int | None]:
        """(fd, bytes already there for --resume, the existing destination's mode)."""
        existing_mode = None
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
            if stat.S_ISREG(st.st_mode):
                existing_mode = stat.S_IMODE(st.st_mode)
        except FileNotFoundError:
            pass
        fd, have = self._create(parent, name, m.resume, m.size)
        return fd, have, existing_mode

    async def _file(self, m: FileEntry) -> None:
        loop = asyncio.get_running_loop()
        error: tuple[int, str] | None = None
        fd: int | None = None
        existing_mode: int | None = None
        have = 0
        display = b""
        parent, name = -1, b""
        try:
            parent, name, display = self._place_replaceable(m.name)
        except _Skip:
            error = (SKIPPED, "")
        except _Refused as refused:
            error, display = (refused.number, refused.reason), refused.display
        else:
            if m.size <= SMALL and not m.resume:
                await self._small_file(m, parent, name, display)
                return
            try:
                fd, have, existing_mode = self._open_big(m, parent, name)
            except OSError as exc:
                error = reason_of(exc)
                self._discard()
                fd = None
        digest = FileDigest(self.key, m.entry)
        offset = 0
        if m.resume:
            if fd is not None and have:
                prefix, digest = await loop.run_in_executor(None, hash_file, fd, have,
                                                            self.key, m.entry)
            else:
                have = 0
                prefix = FileDigest(self.key, m.entry, prefix=True).digest()
            self.peer.send(Have(m.entry, have, prefix).encode())
            self.peer.flush()
            await self.peer.drain()
            start = await self.peer.message()
            if not isinstance(start, Start) or start.entry != m.entry:
                raise InvalidInput("a resumed file's data must begin with its start")
            if start.offset not in (0, have):
                raise InvalidInput(f"resume offset {start.offset} (we have {have})")
            offset = start.offset
            if not offset:
                digest = FileDigest(self.key, m.entry)
            if fd is not None:
                try:
                    os.ftruncate(fd, offset)
                except OSError as exc:
                    error = reason_of(exc)
                    self._discard()
                    fd = None
        progress = self.progress
        shown = printable(display) if progress is not None else ""
        started = progress is not None and error is None
        if progress is not None and started:
            progress.start(shown, m.size, offset)
        remaining = m.size - offset
        writer = None
        if fd is not None and self._temp is not None:
            pool = None
            if remaining > INLINE and base.FILE_THREADS:
                if self._pool is None:
                    self._pool = concurrent.futures.ThreadPoolExecutor(1, "qcp-write")
                pool = self._pool
            writer = self._temp.writer = DataWriter(pool, fd, digest, offset)
        peer = self.peer
        while remaining:
            data = await peer.raw(remaining if remaining < 4 * CHUNK else 4 * CHUNK)
            n = len(data)
            remaining -= n
            self.received += n
            if writer is not None:
                await writer.write(data)
                if writer.error is not None:
                    error = reason_of(writer.error)
                    self._discard()  # a --resume partial keeps what was written
                    fd = writer = None
            if progress is not None and started:
                progress.advance(n)
        if writer is not None:
            failed = await writer.flush()
            if failed is not None:
                error = reason_of(failed)
                self._discard()
                fd = None
        end = await peer.message()
        if isinstance(end, Abort) and end.entry == m.entry:
            self._discard(keep=False)
            if progress is not None and started:
                progress.end(shown, False)
            return
        if not isinstance(end, End) or end.entry != m.entry:
            raise InvalidInput("a file's data must be followed by its end")
        if fd is not None and error is None:
            if not hmac.compare_digest(digest.digest(), end.digest):
                error = (errno.EIO, _MISMATCH)
                self._discard(keep=False)
            else:
                if progress is not None and started:
                    progress.end(shown, True)  # arrived and verified; committed below
                mode = m.mode if self.options.preserve else (
                    existing_mode if existing_mode is not None
                    else m.mode & 0o777 & ~self._umask)
                await self._commit(fd, parent, name, mode,
                                   (m.atime_ns, m.mtime_ns) if self.options.preserve
                                   else None, m, display)
                return
        if progress is not None and started:
            progress.end(shown, error is None)
        self._status(m.entry, display, error)

    async def _small_file(self, m: FileEntry, parent: int, name: bytes,
                          display: bytes) -> None:
        """A small file: taken whole into memory, its digest checked here, then queued for a
        commit thread, which creates, writes, syncs and renames it (:func:`_write_small`)."""
        progress = self.progress
        shown = printable(display) if progress is not None else ""
        if progress is not None:
            progress.start(shown, m.size, 0)
        peer = self.peer
        parts: list[memoryview] = []
        remaining = m.size
        while remaining:
            data = await peer.raw(remaining)
            parts.append(data)
            remaining -= len(data)
        self.received += m.size
        if progress is not None and m.size:
            progress.advance(m.size)
        end = await peer.message()
        if isinstance(end, Abort) and end.entry == m.entry:
            if progress is not None:
                progress.end(shown, False)
            return
        if not isinstance(end, End) or end.entry != m.entry:
            raise InvalidInput("a file's data must be followed by its end")
        content = b"".join(parts)
        digest = FileDigest(self.key, m.entry)
        digest.update(content)
        if not hmac.compare_digest(digest.digest(), end.digest):
            if progress is not None:
                progress.end(shown, False)
            self._status(m.entry, display, (errno.EIO, _MISMATCH))
            return
        if progress is not None:
            progress.end(shown, True)  # arrived and verified; committed below
        preserve = self.options.preserve
        self._batch.append(SmallFile(
            parent, name, content, m.mode if preserve else None,
            m.mode & 0o777 & ~self._umask, (m.atime_ns, m.mtime_ns) if preserve else None,
            m, display))
        self._batch_bytes += len(content)
        self._dirty.add(parent)
        if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
            self._submit_batch()
            await self._harvest(MAX_COMMITS - 1)
        else:
            await self._harvest(MAX_COMMITS)  # report what is done; no wait

    def _submit(self, job: Callable[[], list[OSError | None]],
                entries: list[tuple[FileEntry, bytes]]) -> None:
        if self._commit_pool is None:
            self._commit_pool = concurrent.futures.ThreadPoolExecutor(COMMIT_THREADS,
                                                                      "qcp-commit")
        self._commits.append((self._commit_pool.submit(job), entries))

    def _submit_batch(self) -> None:
        batch = self._batch
        if not batch:
            return
        self._batch, self._batch_bytes = [], 0
        self._submit(lambda: commit_batch(batch), [(s.message, s.display) for s in batch])

    async def _commit(self, fd: int, parent: int, name: bytes, mode: int,
                      times: tuple[int, int] | None, m: FileEntry, display: bytes) -> None:
        """Hand the verified file to a commit thread (fsync, rename, mode, times) and go
        on with the next: fsyncs of many files then overlap, and the filesystem's journal
        commits them together. Statuses follow as commits complete, in order."""
        temp = self._temp
        assert temp is not None and temp.fd == fd
        self._temp = None  # the commit job owns it now, and closes the descriptor
        self._submit_batch()  # small files before it keep their turn

        def job() -> list[OSError | None]:
            try:
                commit_file(fd, parent, temp.name, name, mode, times)
            except OSError as exc:
                return [exc]
            return [None]

        self._submit(job, [(m, display)])
        self._dirty.add(parent)
        await self._harvest(MAX_COMMITS - 1)

    async def _harvest(self, keep: int) -> None:
        """Report finished commits, in order; wait while more than ``keep`` are pending.
        ``keep`` 0 also sends the batch of small files still gathering (all of it done)."""
        if not keep:
            self._submit_batch()
        commits = self._commits
        while commits:
            future, entries = commits[0]
            if not future.done():
                if len(commits) <= keep:
                    return
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(future)
                continue
            commits.popleft()
            results = future.result()  # a job returns OSErrors; anything else is a bug
            for (m, display), exc in zip(entries, results, strict=True):
                if exc is None:
                    self.files += 1
                    self.bytes += m.size
                    self._status(m.entry, display, None)
                else:
                    self._status(m.entry, display, reason_of(exc))
