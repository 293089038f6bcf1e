#!/usr/bin/env python3
"""The floor under qcp's download: the least a Python program doing the same job takes (issue 9).

    python bench/copy_floor.py SRC DST                      # every variant, 3 rounds, + cp
    python bench/copy_floor.py SRC DST --variants 1t-1m,2t-256k --rounds 5
    python bench/copies.py --parts 1 --floor --openssh system --openssh /opt/openssh-10.5
    python bench/copy_floor.py serve                        # a listener, prints its port
    python bench/copy_floor.py get PORT SRC DST [--variant 1t-1m]

Why: issue 9 asks a 1 GiB ``qcp host:f d`` to be twice as fast as ``scp host:f d``. On this
machine (2 cores, a Firecracker VM where the kernel's first touch of tmpfs pages is slow) qcp
is at 1.7-2.0x. This says whether 2x is within reach of *any* Python implementation here, or
whether qcp leaves time on the table: ``bench/copies.py --floor`` runs it in the same
interleaved rounds as ``qcp host:f d`` and ``scp host:f d``, with the ratios against scp.

What it does is what every encrypted one-file download must do, and nothing else: two
processes over one loopback TCP connection. The *server* (a listener that forks one process
per connection, as qshd does, so that the interpreter's start and the imports are paid
before the copy, and its CPU is counted as bench/copies.py counts a daemon's) reads the file
into reused buffers (``os.preadv``), seals it with AES-256-GCM (cryptography's ``AESGCM``,
``encrypt_into`` a reused buffer) in fixed-size records and sends them; the *client* (the
process a user would start: its interpreter start and imports are in the timing, as qcp's and
scp's are) receives each record whole (``recv_into``, ``MSG_WAITALL``), opens it
(``decrypt_into``), writes it into a temporary file in the destination directory, fsyncs it
and renames it over the destination at the end. Left out, because qcp's cost for them is not
the question here: a key exchange and login (the client sends a fresh random key in the
clear, with the path and the variant, in one request), any framing (records are of a fixed
size, the last one shorter: the length of every record follows from the file's size, which
is the associated data of every record, so a changed size fails the first record), any
digest beyond the AEAD tags, progress, errors reported to the peer (any failure ends the
connection and the client exits 1).

Variants (``--variant``, named ``<threads>-<record size>[-aio|-blk][-lowat][-falloc]``, e.g.
``1t-1m``, ``2t-256k-aio``):

- ``1t``: one thread on each side: read, seal, send (or receive, open, write) in turn;
- ``2t``: a reader thread on the server and a writer thread on the client, handing filled
  buffers over bounded queues, as qcp does: the kernel's copies (file read, file write)
  release the GIL and overlap with the AEAD and the socket copies on the other core;
- ``aio``: the client's and the server's socket ends on asyncio's event loop
  (``sock_recv_into``/``sock_sendall``), file I/O inline (qcp's transport is asyncio);
- the record size, ``256k`` (qcp's) or ``1m``;
- ``blk``: blocking sockets with the kernel's timeouts (``SO_RCVTIMEO``/``SO_SNDTIMEO``)
  instead of Python's socket timeouts (a non-blocking socket and a ``poll`` before each
  call, where ``MSG_WAITALL`` returns what has arrived): one ``recv_into`` per record;
- ``lowat``: the client's socket wakes it only once a whole record has arrived
  (``SO_RCVLOWAT``, record + tag), not at each segment (blocking: one ``recv_into``;
  ``aio``: the loop sees the socket readable only then);
- ``falloc``: one more thread on the client, allocating the temporary file's pages
  (``posix_fallocate``, 8 MiB at a time) ahead of the writes: on this VM the first touch of a
  fresh page is the largest single cost of the copy, and this moves it to the other core (not
  something qcp does today: a measure of what it would give).

Run alone, it times every variant (and ``cp SRC DST``, the no-crypto, no-network floor: the
copy into fresh tmpfs pages that every tool pays) in interleaved rounds, checks every result
(size and SHA-256) and prints the medians with the CPU of each side. A benchmark, not a test:
nothing asserts a speed. Loopback only. Keep SRC and DST in /dev/shm for the numbers issue 9
is about (the disk out of the picture). Every wait has a timeout (60 s), every queue a limit.

Found here (December 2026, 1 GiB, load ~1.5, three ``copies.py --floor --rounds 5`` runs):
the fastest is the simplest, ``1t-1m``: 0.66-0.72 s, 1.23-1.28 CPU s for both ends (client
~0.67, server ~0.58), 3.6-4.0x scp (9.2 and 10.5) where qcp was 1.4-1.9x; threads, asyncio,
blocking sockets, SO_RCVLOWAT and preallocation do not make it faster (within the noise or
slower); 256 KiB records cost ~0.2 s more than 1 MiB ones in every shape; ``cp`` takes 0.46 s.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import signal
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    # Imported where used: the client's start-up (timed) imports only what the copy needs
    # (asyncio alone is ~20 ms; argparse, dataclasses, pathlib, subprocess ~35 ms together).
    import asyncio
    import subprocess
    from pathlib import Path

HERE = os.path.abspath(__file__)
HOST = "127.0.0.1"
KiB = 1024
MiB = 1024 * KiB
TAG = 16
#: The request: key (32), record size (4), flags (1: THREADS, 2: AIO, 4: BLOCKING), path
#: length (2), path.
REQUEST = struct.Struct("!32sIBH")
THREADS, AIO, BLOCKING = 1, 2, 4
#: Buffers in flight between a thread and its peer thread (each a record): the queues' limit.
DEPTH = 4
#: Every wait: the copy of 1 GiB takes about a second; a peer stuck for this long is dead.
TIMEOUT = 60.0
VARIANTS = ("1t-256k", "2t-256k", "1t-1m", "2t-1m", "1t-256k-aio", "2t-256k-aio",
            "1t-1m-aio", "2t-1m-aio", "1t-1m-blk", "1t-1m-lowat", "1t-1m-blk-lowat",
            "2t-1m-falloc")
#: ``-falloc``: the preallocating thread's step (tmpfs holds the inode's lock for each call).
FALLOC_CHUNK = 8 * MiB


class Variant(NamedTuple):
    threads: bool
    record: int
    aio: bool
    falloc: bool = False
    lowat: bool = False
    blocking: bool = False

    @classmethod
    def parse(cls, name: str) -> Variant:
        parts = name.split("-")
        extra = set(parts[2:])
        if len(parts) < 2 or parts[0] not in ("1t", "2t") or parts[1] not in ("256k", "1m") \
                or not extra <= {"aio", "falloc", "lowat", "blk"} \
                or len(extra) != len(parts) - 2 or {"aio", "blk"} <= extra:
            raise ValueError(f"unknown variant {name!r} (e.g. {', '.join(VARIANTS)})")
        return cls(parts[0] == "2t", 256 * KiB if parts[1] == "256k" else MiB,
                   "aio" in extra, "falloc" in extra, "lowat" in extra, "blk" in extra)

    @property
    def flags(self) -> int:
        return (THREADS if self.threads else 0) | (AIO if self.aio else 0) | \
            (BLOCKING if self.blocking else 0)


def _blocking(conn: socket.socket) -> None:
    """``blk``: blocking mode with the kernel's timeouts rather than Python's."""
    conn.settimeout(None)
    timeval = struct.pack("@ll", int(TIMEOUT), 0)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _nonce(seq: int) -> bytes:
    return seq.to_bytes(12, "big")


def _records(size: int, record: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of each record of a file of ``size`` bytes (none for an empty file)."""
    for offset in range(0, size, record):
        yield offset, min(record, size - offset)


# --- the server: a listener, one forked process per copy ---------------------------------------


def _read_request(conn: socket.socket) -> tuple[bytes, int, int, bytes]:
    head = conn.recv(REQUEST.size, socket.MSG_WAITALL)
    if len(head) != REQUEST.size:
        raise ConnectionError("short request")
    key, record, flags, length = REQUEST.unpack(head)
    if not 1 <= record <= 16 * MiB or not 1 <= length <= 4096:
        raise ValueError("request out of bounds")
    path = conn.recv(length, socket.MSG_WAITALL)
    if len(path) != length:
        raise ConnectionError("short request")
    return key, record, flags, path


def _sealed(fd: int, size: int, aead: AESGCM, record: int, ad: bytes) -> Iterator[memoryview]:
    """The file's sealed records, read when asked for; each view is valid until the next."""
    plain, sealed = bytearray(record), bytearray(record + TAG)
    pview, sview = memoryview(plain), memoryview(sealed)
    for seq, (offset, length) in enumerate(_records(size, record)):
        if os.preadv(fd, [pview[:length]], offset) != length:
            raise OSError("the file shrank")
        aead.encrypt_into(_nonce(seq), pview[:length], ad, sview[:length + TAG])
        yield sview[:length + TAG]


def _reader(fd: int, size: int, record: int, free: queue.Queue[bytearray],
            full: queue.Queue[tuple[bytearray, int] | None]) -> None:
    """The server's reader thread: fills free buffers from the file, in order."""
    try:
        for offset, length in _records(size, record):
            buf = free.get(timeout=TIMEOUT)
            if os.preadv(fd, [memoryview(buf)[:length]], offset) != length:
                raise OSError("the file shrank")
            full.put((buf, length), timeout=TIMEOUT)
    finally:
        full.put(None, timeout=TIMEOUT)


def _start_reader(fd: int, size: int, record: int
                  ) -> tuple[queue.Queue[bytearray], queue.Queue[tuple[bytearray, int] | None],
                             threading.Thread]:
    free: queue.Queue[bytearray] = queue.Queue(DEPTH)
    full: queue.Queue[tuple[bytearray, int] | None] = queue.Queue(DEPTH + 1)
    for _ in range(DEPTH):
        free.put(bytearray(record))
    reader = threading.Thread(target=_reader, args=(fd, size, record, free, full), daemon=True)
    reader.start()
    return free, full, reader


def _sealed_read_ahead(fd: int, size: int, aead: AESGCM, record: int, ad: bytes
                       ) -> Iterator[memoryview]:
    """:func:`_sealed`, the file read ahead by a thread of its own (``2t``)."""
    free, full, reader = _start_reader(fd, size, record)
    sview = memoryview(bytearray(record + TAG))
    seq = 0
    while (item := full.get(timeout=TIMEOUT)) is not None:
        buf, length = item
        aead.encrypt_into(_nonce(seq), memoryview(buf)[:length], ad, sview[:length + TAG])
        free.put(buf)
        yield sview[:length + TAG]
        seq += 1
    reader.join(TIMEOUT)
    if seq != len(range(0, size, record)):
        raise OSError("the reader failed")


async def _send_aio(conn: socket.socket, records: Iterator[memoryview]) -> None:
    """The records through the event loop's socket calls (``aio``; the reader thread's
    queue waits block the loop, which has nothing else to do)."""
    import asyncio

    loop = asyncio.get_running_loop()
    for view in records:
        await loop.sock_sendall(conn, view)


def serve_one(conn: socket.socket) -> None:
    """One copy, in the forked process: the request, the size, then the sealed records."""
    conn.settimeout(TIMEOUT)
    key, record, flags, path = _read_request(conn)
    if flags & BLOCKING:
        _blocking(conn)
    aead = AESGCM(key)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        ad = size.to_bytes(8, "big")
        conn.sendall(ad)
        records = (_sealed_read_ahead if flags & THREADS else _sealed)(fd, size, aead, record,
                                                                        ad)
        if flags & AIO:
            import asyncio

            conn.setblocking(False)
            asyncio.run(_send_aio(conn, records))
        else:
            for view in records:
                conn.sendall(view)
    finally:
        os.close(fd)


def serve(listener: socket.socket) -> None:
    """Accept forever (until SIGTERM): fork one process per connection and reap it, so the
    listener's ``cutime + cstime`` holds every copy's CPU."""
    listener.settimeout(0.05)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                listener.close()
                serve_one(conn)
                conn.shutdown(socket.SHUT_WR)
                status = 0
            except Exception as e:  # the copy's end: one line, no traceback
                print(f"copy_floor serve: {type(e).__name__}: {e}", file=sys.stderr)
            finally:
                os._exit(status)
        conn.close()


# --- the client: receive, open, write, fsync, rename -------------------------------------------


def _recv_record(conn: socket.socket, view: memoryview) -> None:
    got = conn.recv_into(view, len(view), socket.MSG_WAITALL)
    while got < len(view):  # MSG_WAITALL is cut short by a signal or the peer's end
        more = conn.recv_into(view[got:], len(view) - got)
        if not more:
            raise ConnectionError("the server ended the copy early")
        got += more


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


class _Inline:
    """Where the opened records go with one thread (``1t``): one reused buffer, written at once."""

    def __init__(self, fd: int, record: int) -> None:
        self.fd = fd
        self.plain = memoryview(bytearray(record))

    def take(self, aead: AESGCM, seq: int, sealed: memoryview, length: int, ad: bytes) -> bool:
        aead.decrypt_into(_nonce(seq), sealed, ad, self.plain[:length])
        _write_all(self.fd, self.plain[:length])
        return True

    def end(self) -> None:
        pass


def _writer(fd: int, free: queue.Queue[bytearray],
            full: queue.Queue[tuple[bytearray, int] | None], failed: list[BaseException]
            ) -> None:
    """The client's writer thread: writes full buffers in order, gives them back."""
    try:
        while (item := full.get(timeout=TIMEOUT)) is not None:
            buf, length = item
            _write_all(fd, memoryview(buf)[:length])
            free.put(buf)
    except BaseException as e:  # handed to the main thread, which raises it
        failed.append(e)


class _Writer:
    """The client's writer thread and the two bounded queues it shares with the main one."""

    def __init__(self, fd: int, record: int) -> None:
        self.free: queue.Queue[bytearray] = queue.Queue(DEPTH)
        self.full: queue.Queue[tuple[bytearray, int] | None] = queue.Queue(DEPTH + 1)
        for _ in range(DEPTH):
            self.free.put(bytearray(record))
        self.failed: list[BaseException] = []
        self.thread = threading.Thread(target=_writer,
                                       args=(fd, self.free, self.full, self.failed),
                                       daemon=True)
        self.thread.start()

    def take(self, aead: AESGCM, seq: int, sealed: memoryview, length: int, ad: bytes) -> bool:
        """Opens the record into a free buffer for the thread; False once the thread failed."""
        buf = self.free.get(timeout=TIMEOUT)
        aead.decrypt_into(_nonce(seq), sealed, ad, memoryview(buf)[:length])
        self.full.put((buf, length), timeout=TIMEOUT)
        return not self.failed

    def end(self) -> None:
        self.full.put(None, timeout=TIMEOUT)
        self.thread.join(TIMEOUT)
        if self.failed:
            raise self.failed[0]


def _receive(conn: socket.socket, size: int, aead: AESGCM, record: int, ad: bytes,
             sink: _Inline | _Writer) -> None:
    sview = memoryview(bytearray(record + TAG))
    try:
        for seq, (_, length) in enumerate(_records(size, record)):
            _recv_record(conn, sview[:length + TAG])
            if not sink.take(aead, seq, sview[:length + TAG], length, ad):
                break
    finally:
        sink.end()


async def _receive_aio(conn: socket.socket, size: int, aead: AESGCM, record: int, ad: bytes,
                       sink: _Inline | _Writer) -> None:
    """As :func:`_receive`, the socket on the event loop (``aio``)."""
    import asyncio

    loop = asyncio.get_running_loop()
    sview = memoryview(bytearray(record + TAG))
    try:
        for seq, (_, length) in enumerate(_records(size, record)):
            await _recv_aio(loop, conn, sview[:length + TAG])
            if not sink.take(aead, seq, sview[:length + TAG], length, ad):
                break
    finally:
        sink.end()


async def _recv_aio(loop: asyncio.AbstractEventLoop, conn: socket.socket,
                    view: memoryview) -> None:
    got = 0
    while got < len(view):
        more = await loop.sock_recv_into(conn, view[got:])
        if not more:
            raise ConnectionError("the server ended the copy early")
        got += more


def _preallocate(fd: int, size: int) -> None:
    """``-falloc``'s thread: allocate the file's pages ahead of the writes, so that the
    first touch of each fresh page (slow here) is paid on the other core, in parallel."""
    with contextlib.suppress(OSError):  # an optimisation: the writes allocate what is left
        for offset in range(0, size, FALLOC_CHUNK):
            os.posix_fallocate(fd, offset, min(FALLOC_CHUNK, size - offset))


def get(port: int, src: str, dst: str, variant: Variant) -> None:
    """Download ``src`` from the server on ``port`` into ``dst`` (a file name)."""
    key = secrets.token_bytes(32)
    path = os.fsencode(src)
    conn = socket.create_connection((HOST, port), timeout=TIMEOUT)
    if variant.blocking:
        _blocking(conn)
    head, name = os.path.split(dst)
    tmp = os.path.join(head, f".{name}.floor-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    prealloc: threading.Thread | None = None
    try:
        with conn:
            conn.sendall(REQUEST.pack(key, variant.record, variant.flags, len(path)) + path)
            ad = bytearray(8)
            _recv_record(conn, memoryview(ad))
            size = int.from_bytes(ad, "big")
            aead = AESGCM(key)
            record, ad_ = variant.record, bytes(ad)
            if variant.lowat:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, record + TAG)
            if variant.falloc:
                prealloc = threading.Thread(target=_preallocate, args=(fd, size), daemon=True)
                prealloc.start()
            sink = (_Writer if variant.threads else _Inline)(fd, record)
            if variant.aio:
                import asyncio

                conn.setblocking(False)
                asyncio.run(_receive_aio(conn, size, aead, record, ad_, sink))
            else:
                _receive(conn, size, aead, record, ad_, sink)
        if prealloc is not None:
            prealloc.join(TIMEOUT)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, dst)
    except BaseException:
        if prealloc is not None:
            prealloc.join(TIMEOUT)
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --- the listener as bench/copies.py's Server, and the stand-alone benchmark ------------------


class FloorServer:
    """``copy_floor.py serve`` as a private daemon: what bench/copies.py's ``run_timed`` needs
    (:class:`bench.sessions.Server`): the listener's pid, its CPU and its reaped children's,
    and a wait until every copy's process has been reaped."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> FloorServer:
        import subprocess

        self.process = subprocess.Popen([self.python, str(HERE), "serve"],
                                        stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.strip().isdigit():
            self.close()
            raise RuntimeError("copy_floor.py serve did not start")
        self.port = int(line)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        import subprocess

        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            if self.process.stdout is not None:
                self.process.stdout.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _stat(self) -> list[str]:
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()

    def server_cpu(self) -> float:
        fields = self._stat()
        return sum(int(fields[i]) for i in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")

    def wait_reaped(self, timeout: float = 15.0) -> bool:
        import time

        deadline = time.monotonic() + timeout
        while any(_parent(int(p)) == self.pid for p in os.listdir("/proc") if p.isdigit()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def command(self, src: Path, dst: Path, variant: str) -> list[str]:
        """The client's command line: one download of ``src`` into ``dst``."""
        return [self.python, str(HERE), "get", str(self.port), str(src), str(dst),
                "--variant", variant]


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


class Runs:
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.client: list[float] = []
        self.server: list[float] = []


def bench(src: Path, dst: Path, variants: list[str], rounds: int) -> None:
    import statistics
    import subprocess
    import time

    size, digest = src.stat().st_size, _sha256(src)
    print(f"copy floor: {size // MiB} MiB, {rounds} round(s), {os.cpu_count()} CPUs, load "
          f"average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    results = {name: Runs() for name in [*variants, "cp"]}
    with FloorServer() as server:
        for _ in range(rounds):
            for name, runs in results.items():
                dst.unlink(missing_ok=True)
                command = ["cp", str(src), str(dst)] if name == "cp" else \
                    server.command(src, dst, name)
                cpu0, server0 = _children_cpu(), server.server_cpu()
                start = time.perf_counter()
                # Pipes, as bench/copies.py's run_timed: a bare wait with a timeout polls,
                # sleeping up to 50 ms between looks, which would round every time up.
                done = subprocess.run(command, capture_output=True, timeout=600)
                runs.seconds.append(time.perf_counter() - start)
                if done.returncode != 0:
                    raise RuntimeError(f"{name} exited {done.returncode}: "
                                       f"{done.stderr.decode(errors='replace').strip()[-400:]}")
                runs.client.append(_children_cpu() - cpu0)
                if not server.wait_reaped():
                    raise RuntimeError("the server's copy did not end")
                runs.server.append(server.server_cpu() - server0)
                if dst.stat().st_size != size or _sha256(dst) != digest:
                    raise RuntimeError(f"{name}: the copy differs from the source")
                print(f"    {name:12} {runs.seconds[-1]:6.2f} s  CPU client "
                      f"{runs.client[-1]:5.2f} s server {runs.server[-1]:5.2f} s", flush=True)
    dst.unlink(missing_ok=True)
    print("medians:")
    for name, runs in results.items():
        median = statistics.median(runs.seconds)
        print(f"    {name:12} {median:6.2f} s {size / median / 1e6:7.1f} MB/s  CPU client "
              f"{statistics.median(runs.client):5.2f} s server "
              f"{statistics.median(runs.server):5.2f} s")
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end")


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        listener = socket.create_server((HOST, 0))
        print(listener.getsockname()[1], flush=True)
        serve(listener)
        return 0
    if argv[:1] == ["get"]:  # no argparse: its import is in the client's timed start-up
        if len(argv) not in (4, 6) or not argv[1].isdigit() or argv[4:5] not in ([], ["--variant"]):
            print("usage: copy_floor.py get PORT SRC DST [--variant VARIANT]", file=sys.stderr)
            return 2
        try:
            get(int(argv[1]), argv[2], argv[3], Variant.parse(argv[5] if argv[4:] else "1t-1m"))
        except (OSError, ValueError, InvalidTag) as e:
            print(f"copy_floor get: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        return 0
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated (default {','.join(VARIANTS)})")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    for name in variants:
        Variant.parse(name)
    bench(args.src, args.dst, variants, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
