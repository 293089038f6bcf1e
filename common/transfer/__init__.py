"""The qcp engine: copies real files over a qsh connection, both ends (docs/PROTOCOL.md §10A).

The client side runs :func:`upload` or :func:`download` (qcp's command line on top); the
server side runs :func:`serve` for each ``copy`` channel, in the logged-in user's own
process, so every file is opened with that user's rights. The sender streams the tree
without waiting for a round trip per file; the receiver writes each file to a temporary
name, verifies its digest (GMAC, keyed per copy) and renames it into place
(:mod:`common.transfer.receive`).

Per-file problems end up in :attr:`Report.failures` (the other files still copy); only a
failure of the copy as a whole raises :class:`CopyError`. The engine never prints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import secrets
from collections.abc import Sequence
from typing import Protocol

from common import aio
from common.channels.copy import (
    COPY,
    DOWNLOAD,
    FROM_RECEIVER,
    FROM_SENDER,
    KEY_SIZE,
    UPLOAD,
    VERSION,
    DigestKey,
    OpenRequest,
    Status,
)
from common.channels.copy import Failure as FailureMessage
from common.errors import InvalidInput
from common.transfer.base import (
    CopyError,
    CopyOptions,
    Failure,
    Peer,
    Progress,
    Report,
    join,
    printable,
)
from common.transfer.receive import Receiver, partial_name
from common.transfer.send import Sender

__all__ = [
    "Connection",
    "CopyError",
    "CopyOptions",
    "Failure",
    "Progress",
    "Report",
    "download",
    "partial_name",
    "resolve_remote",
    "serve",
    "upload",
]

log = logging.getLogger("qshd")


class Connection(Protocol):
    """Where :func:`upload` and :func:`download` open their channel: a QSMP connection, or
    a connection-sharing master's relay of one (common/client/mux_copy.py)."""

    async def open_channel(self, kind: str, payload: bytes = b"") -> aio.Channel: ...


def _request(direction: int, paths: Sequence[bytes], sources: int,
             options: CopyOptions) -> OpenRequest:
    """A fresh digest key for each copy: drawn after the files exist, so no content can be
    made to collide with another under it."""
    return OpenRequest(direction, tuple(paths), sources, options.recursive, options.preserve,
                       options.resume, options.limit or 0, secrets.token_bytes(KEY_SIZE))


async def _open(connection: Connection, request: OpenRequest) -> aio.Channel:
    try:
        payload = request.encode()
    except ValueError as exc:
        raise CopyError(str(exc)) from None
    try:
        return await connection.open_channel(COPY, payload)
    except aio.ChannelOpenError as exc:
        raise CopyError(f"the server refused the copy: {exc.message}") from None
    except aio.ConnectionLost as exc:
        raise CopyError(f"connection lost: {exc}") from None


async def upload(connection: Connection, sources: Sequence[bytes], target: bytes,
                 options: CopyOptions, progress: Progress | None = None) -> Report:
    """Local ``sources`` to the remote ``target`` (as typed after ``host:``)."""
    if not sources:
        raise CopyError("nothing to copy")
    report = Report()
    request = _request(UPLOAD, (target,), len(sources), options)
    channel = await _open(connection, request)
    peer = Peer(channel, FROM_RECEIVER)

    def on_failure(path: bytes, number: int, reason: str) -> None:
        report.failures.append(Failure(printable(path), reason, False))

    def on_status(status: Status, size: int | None) -> None:
        if status.ok:
            if size is not None:
                report.files += 1
                report.bytes += size
        else:
            report.failures.append(Failure(printable(status.path), status.reason, True))

    sender = Sender(peer, options, DigestKey(request.key), on_failure=on_failure,
                    on_status=on_status, progress=progress)
    try:
        await sender.run([(s, s) for s in sources])
    except InvalidInput as exc:
        peer.fail(exc)
        raise CopyError(f"protocol error from the server: {exc}") from None
    finally:
        report.sent = sender.sent
        channel.close()
    return report


async def download(connection: Connection, sources: Sequence[bytes], target: bytes,
                   options: CopyOptions, progress: Progress | None = None) -> Report:
    """The remote ``sources`` (as typed) to the local ``target``."""
    if not sources:
        raise CopyError("nothing to copy")
    report = Report()
    request = _request(DOWNLOAD, sources, len(sources), options)
    channel = await _open(connection, request)
    peer = Peer(channel, FROM_SENDER)

    def on_failure(path: bytes, number: int, reason: str) -> None:
        report.failures.append(Failure(printable(path), reason, False))

    def on_remote_failure(message: FailureMessage) -> None:
        report.failures.append(Failure(printable(message.path), message.reason, True))

    receiver = Receiver(peer, options, DigestKey(request.key), target, target, len(sources),
                        on_failure=on_failure, on_remote_failure=on_remote_failure,
                        progress=progress)
    try:
        await receiver.run()
    except InvalidInput as exc:
        peer.fail(exc)
        raise CopyError(f"protocol error from the server: {exc}") from None
    finally:
        report.files, report.bytes, report.sent = (receiver.files, receiver.bytes,
                                                   receiver.received)
        channel.close()
    return report


def _home() -> bytes:
    try:
        return os.fsencode(pwd.getpwuid(os.geteuid()).pw_dir) or b"/"
    except KeyError:
        return b"/"


def resolve_remote(path: bytes, home: bytes) -> bytes:
    """A path as typed after ``host:``, as scp's server reads it: empty is the home,
    ``~`` and ``~/x`` are in the home, ``~user/x`` in that user's, relative paths are
    relative to the home, absolute ones stay."""
    if not path:
        return home
    if path.startswith(b"~"):
        user, _, rest = path[1:].partition(b"/")
        base = home
        if user:
            try:
                base = os.fsencode(pwd.getpwnam(os.fsdecode(user)).pw_dir)
            except (KeyError, ValueError):
                return path  # no such user: fails as a missing file would
        return join(base, rest) if rest else base
    if path.startswith(b"/"):
        return path
    return join(home, path)


#: For measurements only (bench/copy.py --profile): a directory named here gets a cProfile
#: of the server's side of each copy, ``serve-PID-N.prof`` (the user's process's event loop
#: thread while the copy runs: the engine, decryption, the socket). Off when unset.
PROFILE_ENV = "QCP_SERVE_PROFILE"


async def serve(channel: aio.Channel) -> None:
    """The server's side of one copy channel, in the logged-in user's own process.
    File problems go back to the client as failures; a broken peer ends the channel."""
    where = os.environ.get(PROFILE_ENV)
    if not where:
        await _serve(channel)
        return
    import cProfile

    profile = cProfile.Profile()
    profile.enable()
    try:
        await _serve(channel)
    finally:
        profile.disable()
        with contextlib.suppress(OSError):
            profile.dump_stats(os.path.join(
                where, f"serve-{os.getpid()}-{channel.connection.number}.prof"))


async def _serve(channel: aio.Channel) -> None:
    number = channel.connection.number
    try:
        request = OpenRequest.decode(channel.payload)
    except InvalidInput as exc:
        # Here, not at the top: the client's side (qcp over a master) needs no protocol
        # code; the server's has it loaded already (common.aio.channel imports it).
        from common.protocol.mux import OpenFailureReason

        log.info("conn=%d: refusing a copy channel: %s", number, exc)
        channel.reject(OpenFailureReason.ADMINISTRATIVELY_PROHIBITED, str(exc))
        return
    channel.accept(bytes([VERSION]))
    options = CopyOptions(request.recursive, request.preserve, request.resume,
                          request.limit or None)
    home = _home()
    what = "download" if request.direction == DOWNLOAD else "upload"
    counts = [0, 0, 0]  # files, bytes, failures

    if request.direction == UPLOAD:
        peer = Peer(channel, FROM_SENDER)
        target = resolve_remote(request.paths[0], home)
        log.debug("conn=%d: copy upload to %r", number, target)
        receiver = Receiver(peer, options, DigestKey(request.key), target, request.paths[0],
                            request.sources, on_failure=lambda path, errno, reason: None)
        try:
            await _served(peer, receiver.run(), number)
        finally:
            counts = [receiver.files, receiver.bytes, receiver.failures]
    else:
        peer = Peer(channel, FROM_RECEIVER)

        def on_failure(path: bytes, errno: int, reason: str) -> None:
            peer.send(FailureMessage(path, errno, reason).encode())

        def on_status(status: Status, size: int | None) -> None:
            if status.ok and size is not None:
                counts[0] += 1
                counts[1] += size
            elif not status.ok:
                counts[2] += 1

        sources = [(resolve_remote(p, home), p) for p in request.paths]
        log.debug("conn=%d: copy download of %r", number, [s for s, _ in sources])
        sender = Sender(peer, options, DigestKey(request.key), on_failure=on_failure,
                        on_status=on_status)
        try:
            await _served(peer, sender.run(sources), number)
        finally:
            counts[2] += sender.failures
    log.info("conn=%d: copy %s: %d files, %d bytes, %d failures", number, what, *counts)


async def _served(peer: Peer, work: object, number: int) -> None:
    try:
        await work  # type: ignore[misc]
    except InvalidInput as exc:
        log.info("conn=%d: copy ended: protocol error from the client: %s", number, exc)
        peer.fail(exc)
    except CopyError as exc:
        log.info("conn=%d: copy ended: %s", number, exc)
        peer.channel.close()

