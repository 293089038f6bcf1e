"""The copy engine (common/transfer) on real files over real loopback TCP.

The server is qshd's in-process daemon (:class:`qshd.server.Daemon`: login, then
``serve_channel`` dispatching the ``copy`` kind to :func:`common.transfer.serve`), the
client :func:`common.aio.connect` with a password login, both on 127.0.0.1 in one event
loop. The daemon runs as whoever runs the tests and the client logs in as that user (the
only case in which the in-process server serves copies at all); what a throwaway account
may not write is tested against a real ``python -m qshd`` in tests/test_copy_daemon.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import os
import pwd
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from common import aio, transfer
from common.accounts.keys import HostKey
from common.accounts.passwd import PasswdFile
from common.protocol.handshake import ClientHandshake
from common.protocol.negotiation import Offer
from common.transfer import CopyError, CopyOptions, Report, commit
from common.transfer import base as transfer_base
from qshd.config import ServerConfig
from qshd.server import Daemon

ME = pwd.getpwuid(os.geteuid()).pw_name
PASSWORD = b"copy test 81c3"
HOST_KEY = HostKey.generate("mldsa65", now=time.time())
IS_ROOT = os.geteuid() == 0
MB = 1_000_000
needs_root = pytest.mark.skipif(not IS_ROOT, reason="mounting a tmpfs needs root")


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> ServerConfig:
    directory = tmp_path_factory.mktemp("qshd")
    passwd = directory / "passwd"
    PasswdFile(passwd).set_password(ME, PASSWORD, cost=4)
    return ServerConfig(port=0, listen_addresses=["127.0.0.1"], passwd_file=passwd,
                        permit_root_login="yes")


@contextlib.asynccontextmanager
async def connected(config: ServerConfig) -> AsyncIterator[tuple[Daemon, aio.QsmpConnection]]:
    daemon = Daemon(config, [HOST_KEY])
    await daemon.start()
    try:
        client = await aio.connect("127.0.0.1", daemon.port,
                                   handshake=ClientHandshake(Offer(), HOST_KEY.public),
                                   user=ME, password=PASSWORD)
        assert await client.wait_authenticated() is None
        try:
            yield daemon, client
        finally:
            client.close()
            await client.wait_closed()
    finally:
        await daemon.close()


def copy(config: ServerConfig, direction: str, sources: list[bytes] | list[Path],
         target: bytes | Path, options: CopyOptions | None = None,
         progress: transfer.Progress | None = None) -> Report:
    async def main() -> Report:
        async with connected(config) as (_, client):
            engine = transfer.upload if direction == "up" else transfer.download
            return await engine(client, [bytes(s) if isinstance(s, bytes) else os.fsencode(s)
                                         for s in sources],
                                target if isinstance(target, bytes) else os.fsencode(target),
                                options or CopyOptions(), progress)

    result: Report = run(main())
    return result


def digest(path: Path | bytes) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def leftovers(directory: Path) -> list[str]:
    """Temporary or partial files of ours anywhere below ``directory``."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if b".qcp-" in os.fsencode(p.name))


class Recorder:
    def __init__(self, on_advance: Callable[[int], None] | None = None) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.moved = 0
        self.on_advance = on_advance

    def start(self, name: str, size: int, offset: int) -> None:
        self.events.append(("start", name, size, offset))

    def advance(self, nbytes: int) -> None:
        self.moved += nbytes
        if self.on_advance is not None:
            self.on_advance(self.moved)

    def end(self, name: str, ok: bool) -> None:
        self.events.append(("end", name, ok))


DIRECTIONS = ["up", "down"]


# --------------------------------------------------------------------------- plain files


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("threads", [False, True], ids=["inline", "file-threads"])
def test_50_megabytes_arrive_with_the_same_digest(config: ServerConfig, tmp_path: Path,
                                                  direction: str, threads: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways a big file is read and written: in the event loop (fewer than four CPUs)
    and in a thread of its own (more); the daemon runs in this process, so both ends."""
    monkeypatch.setattr(transfer_base, "FILE_THREADS", threads)
    pools: list[str] = []

    class Recorded(concurrent.futures.ThreadPoolExecutor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            pools.append(self._thread_name_prefix)

    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", Recorded)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(50 * MB))
    target = tmp_path / "out"
    target.mkdir()
    progress = Recorder()
    report = copy(config, direction, [source], target, progress=progress)
    assert report.ok, report.failures
    assert (report.files, report.bytes, report.sent) == (1, 50 * MB, 50 * MB)
    assert digest(target / "big.bin") == digest(source)
    assert progress.moved == 50 * MB
    file_pools = {"qcp-read", "qcp-write"} & set(pools)
    assert file_pools == ({"qcp-read", "qcp-write"} if threads else set()), pools
    assert progress.events == [("start", str(source if direction == "up" else
                                             target / "big.bin"), 50 * MB, 0),
                               ("end", str(source if direction == "up" else
                                           target / "big.bin"), True)]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_empty_file_and_odd_names(config: ServerConfig, tmp_path: Path,
                                  direction: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    names = [b"empty", b"with space", b"new\nline", b"latin1-\xe9t\xe9", b"-dash"]
    for i, name in enumerate(names):
        Path(os.fsdecode(os.fsencode(src) + b"/" + name)).write_bytes(b"x" * i)
    out = tmp_path / "out"
    out.mkdir()
    report = copy(config, direction, [os.fsencode(src) + b"/" + n for n in names], out)
    assert report.ok, report.failures
    assert report.files == len(names)
    assert sorted(os.listdir(os.fsencode(out))) == sorted(names)
    for i, name in enumerate(names):
        assert Path(os.fsdecode(os.fsencode(out) + b"/" + name)).read_bytes() == b"x" * i


def test_an_existing_destination_is_replaced_not_truncated_first(config: ServerConfig,
                                                                 tmp_path: Path) -> None:
    """The old file's inode stays intact (a reader holding it sees the old content), and
    the new one takes its place by rename."""
    source = tmp_path / "new"
    source.write_bytes(b"new content")
    dest = tmp_path / "dest"
    dest.write_bytes(b"old content that is longer")
    dest.chmod(0o640)
    with open(dest, "rb") as held:
        old_inode = os.fstat(held.fileno()).st_ino
        report = copy(config, "up", [source], dest)
        assert report.ok, report.failures
        assert held.read() == b"old content that is longer"
    assert dest.read_bytes() == b"new content"
    assert dest.stat().st_ino != old_inode
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640  # an existing file keeps its mode


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("size", [100, 3 * 1024 * 1024])  # the small-file path and the big one
def test_a_device_or_fifo_destination_is_refused_not_replaced(config: ServerConfig,
                                                              tmp_path: Path, direction: str,
                                                              size: int) -> None:
    """The rename that makes a copy atomic would put a regular file in the place of the
    device: ``qcp f host:/dev/null`` as root replaced the machine's /dev/null. A null
    device of the test's own stands in for it."""
    source = tmp_path / "src"
    source.write_bytes(os.urandom(size))
    targets = [tmp_path / "fifo"]
    os.mkfifo(targets[0])
    if os.geteuid() == 0:
        targets.append(tmp_path / "null")
        os.mknod(targets[1], 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    for target in targets:
        kind = stat.S_IFMT(target.lstat().st_mode)
        report = copy(config, direction, [source], target)
        assert not report.ok
        assert "not a regular file" in str(report.failures), report.failures
        assert stat.S_IFMT(target.lstat().st_mode) == kind
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- trees, -p


def make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "sub" / "file").write_bytes(b"in sub")
    (root / "sub" / "deeper" / "f2").write_bytes(os.urandom(300_000))
    (root / "top").write_bytes(b"top")
    (root / "link-rel").symlink_to("sub/file")
    (root / "link-abs").symlink_to("/etc/passwd")
    (root / "link-dangling").symlink_to("nowhere/at/all")
    os.mkfifo(root / "fifo")


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_recursive_tree_keeps_links_and_empty_dirs_and_skips_a_fifo(
        config: ServerConfig, tmp_path: Path, direction: str) -> None:
    src = tmp_path / "tree"
    src.mkdir()
    make_tree(src)
    out = tmp_path / "out"
    out.mkdir()
    report = copy(config, direction, [src], out, CopyOptions(recursive=True))
    copied = out / "tree"
    assert [(f.path, f.reason, f.remote) for f in report.failures] == [
        (str(src / "fifo"), "not a regular file", direction == "down")]
    assert report.files == 3
    assert (copied / "empty-dir").is_dir() and not list((copied / "empty-dir").iterdir())
    assert os.readlink(copied / "link-rel") == "sub/file"
    assert os.readlink(copied / "link-abs") == "/etc/passwd"
    assert os.readlink(copied / "link-dangling") == "nowhere/at/all"
    assert (copied / "sub" / "deeper" / "f2").read_bytes() == \
        (src / "sub" / "deeper" / "f2").read_bytes()
    assert not (copied / "fifo").exists()
    assert leftovers(tmp_path) == []


def test_recursive_into_a_new_name(config: ServerConfig, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    report = copy(config, "up", [src], tmp_path / "renamed", CopyOptions(recursive=True))
    assert report.ok, report.failures
    assert (tmp_path / "renamed" / "a").read_bytes() == b"a"


def test_directory_without_r_is_refused(config: ServerConfig, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    report = copy(config, "up", [tmp_path / "d"], tmp_path / "out")
    assert [(f.reason, f.remote) for f in report.failures] == [("not a regular file", False)]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_preserve_sets_modes_and_times(config: ServerConfig, tmp_path: Path,
                                       direction: str) -> None:
    src = tmp_path / "tree"
    (src / "d").mkdir(parents=True)
    f = src / "d" / "f"
    f.write_bytes(b"data")
    f.chmod(0o751)
    os.utime(f, ns=(1_000_000_001_000_000_000, 1_100_000_000_123_456_789))
    (src / "d").chmod(0o705)
    os.utime(src / "d", ns=(1_200_000_000_000_000_000, 1_300_000_000_000_000_000))
    out = tmp_path / "out"
    out.mkdir()
    try:
        report = copy(config, direction, [src], out, CopyOptions(recursive=True,
                                                                 preserve=True))
        assert report.ok, report.failures
        st = (out / "tree" / "d" / "f").stat()
        assert stat.S_IMODE(st.st_mode) == 0o751
        assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_001_000_000_000,
                                                    1_100_000_000_123_456_789)
        dst = (out / "tree" / "d").stat()
        assert stat.S_IMODE(dst.st_mode) == 0o705
        assert dst.st_mtime_ns == 1_300_000_000_000_000_000
        # without -p: the umask applies, times are the copy's own
        plain = tmp_path / "plain"
        report = copy(config, direction, [f], plain)
        assert report.ok
        assert stat.S_IMODE(plain.stat().st_mode) == 0o751 & ~current_umask()
        assert plain.stat().st_mtime > time.time() - 60
    finally:
        (src / "d").chmod(0o755)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_missing_source_fails_alone(config: ServerConfig, tmp_path: Path,
                                    direction: str) -> None:
    good = tmp_path / "good"
    good.write_bytes(b"good")
    out = tmp_path / "out"
    out.mkdir()
    report = copy(config, direction, [tmp_path / "missing", good], out)
    assert [(f.path, f.reason, f.remote) for f in report.failures] == [
        (str(tmp_path / "missing"), "No such file or directory", direction == "down")]
    assert report.files == 1 and (out / "good").read_bytes() == b"good"


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_destination_that_is_a_file_when_a_directory_is_needed(
        config: ServerConfig, tmp_path: Path, direction: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    dest = tmp_path / "file"
    dest.write_bytes(b"keep me")
    report = copy(config, direction, [a, b], dest)
    assert [(f.path, f.reason, f.remote) for f in report.failures] == \
        [(str(dest), "Not a directory", direction == "up")] * 2
    assert dest.read_bytes() == b"keep me"
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "x").write_bytes(b"x")
    report = copy(config, direction, [tree], dest, CopyOptions(recursive=True))
    assert [f.reason for f in report.failures] == ["Not a directory"]
    report = copy(config, direction, [a], tmp_path / "missing-dir" / "x")
    assert [f.reason for f in report.failures] == ["No such file or directory"]
    assert dest.read_bytes() == b"keep me" and leftovers(tmp_path) == []


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "qcptest", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@needs_root
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_full_filesystem_leaves_no_partial_file(config: ServerConfig, tmp_path: Path,
                                                direction: str) -> None:
    big, small = tmp_path / "big", tmp_path / "small"
    big.write_bytes(os.urandom(3 * MB))
    small.write_bytes(b"fits")
    with tmpfs(tmp_path / "full", "size=1m") as full:
        report = copy(config, direction, [big, small], full)
        assert [(f.path, f.reason, f.remote) for f in report.failures] == [
            (str(full / "big"), "No space left on device", direction == "up")]
        assert sorted(os.listdir(full)) == ["small"]  # no temporary file left behind
        assert (full / "small").read_bytes() == b"fits"


@needs_root
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_small_files_in_batches_on_a_filling_filesystem(config: ServerConfig, tmp_path: Path,
                                                        direction: str) -> None:
    """Small files are written by commit threads a batch at a time: those that no longer
    fit fail one by one with ENOSPC, each with its own path, and leave nothing; the rest
    arrive whole; a name taken by a directory is refused as before."""
    tree = tmp_path / "tree"
    tree.mkdir()
    contents = {f"f{i:03d}": os.urandom(60_000) for i in range(40)}  # 2.4 MB in all
    for name, data in contents.items():
        (tree / name).write_bytes(data)
    with tmpfs(tmp_path / "full", "size=1m") as full:
        (full / "tree").mkdir()
        (full / "tree" / "f000").mkdir()
        report = copy(config, direction, [tree], full, CopyOptions(recursive=True))
        out = full / "tree"
        arrived = {p.name for p in out.iterdir() if p.is_file()}
        assert 5 < len(arrived) < 39
        for name in arrived:
            assert (out / name).read_bytes() == contents[name]
        failed = {f.path: f.reason for f in report.failures}
        assert failed.pop(str(out / "f000")) == "Is a directory"
        assert set(failed.values()) == {"No space left on device"}
        assert {os.path.basename(p) for p in failed} == set(contents) - arrived - {"f000"}
        assert all(f.remote == (direction == "up") for f in report.failures)
        assert leftovers(full) == []
        assert report.files == len(arrived)


@needs_root
def test_read_only_destination(config: ServerConfig, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"f")
    with tmpfs(tmp_path / "ro", "size=1m,ro") as ro:
        report = copy(config, "up", [f], ro)
        assert [(f.reason, f.remote) for f in report.failures] == [
            ("Read-only file system", True)]


# --------------------------------------------------------------------------- cuts, resume


def cut_after(nbytes: int, direction: str, tmp_path: Path, source: Path, out: Path,
              config: ServerConfig, options: CopyOptions) -> None:
    """Copy ``source`` into ``out`` and drop the TCP connection once ``nbytes`` moved."""
    async def main() -> None:
        async with connected(config) as (_, client):
            progress = Recorder(lambda moved: client.abort() if moved >= nbytes else None)
            engine = transfer.upload if direction == "up" else transfer.download
            with pytest.raises(CopyError, match=r"connection lost|closed"):
                await engine(client, [os.fsencode(source)], os.fsencode(out), options,
                             progress)
            # the receiving side cleans up as it notices; give the server a moment
            for _ in range(100):
                names = [n for n in os.listdir(out) if ".qcp-" in n and "partial" not in n]
                if not names:
                    break
                await asyncio.sleep(0.05)

    run(main())


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_connection_cut_mid_file_leaves_nothing(config: ServerConfig, tmp_path: Path,
                                                direction: str) -> None:
    source = tmp_path / "big"
    source.write_bytes(os.urandom(40 * MB))
    out = tmp_path / "out"
    out.mkdir()
    cut_after(8 * MB, direction, tmp_path, source, out, config, CopyOptions())
    assert os.listdir(out) == []


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_resume_after_a_cut_sends_only_the_rest(config: ServerConfig, tmp_path: Path,
                                                direction: str) -> None:
    source = tmp_path / "big"
    source.write_bytes(os.urandom(40 * MB))
    out = tmp_path / "out"
    out.mkdir()
    options = CopyOptions(resume=True)
    cut_after(8 * MB, direction, tmp_path, source, out, config, options)
    assert os.listdir(out) == [".big.qcp-partial"]
    kept = (out / ".big.qcp-partial").stat().st_size
    assert 0 < kept < 40 * MB
    progress = Recorder()
    report = copy(config, direction, [source], out, options, progress)
    assert report.ok, report.failures
    assert report.sent == 40 * MB - kept and report.bytes == 40 * MB
    assert progress.events[0][3] == kept  # start(name, size, offset)
    assert digest(out / "big") == digest(source)
    assert os.listdir(out) == ["big"]


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_resume_of_a_changed_source_restarts(config: ServerConfig, tmp_path: Path,
                                             direction: str) -> None:
    source = tmp_path / "f"
    data = bytearray(os.urandom(3 * MB))
    source.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".f.qcp-partial").write_bytes(data[: 2 * MB])
    data[100] ^= 1  # the source changed inside what the partial holds
    source.write_bytes(data)
    report = copy(config, direction, [source], out, CopyOptions(resume=True))
    assert report.ok, report.failures
    assert report.sent == 3 * MB
    assert (out / "f").read_bytes() == bytes(data)
    assert os.listdir(out) == ["f"]


def test_a_longer_partial_than_the_source_restarts(config: ServerConfig,
                                                   tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"short")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".f.qcp-partial").write_bytes(b"much longer than the source")
    report = copy(config, "up", [source], out, CopyOptions(resume=True))
    assert report.ok and report.sent == 5
    assert (out / "f").read_bytes() == b"short" and os.listdir(out) == ["f"]


# --------------------------------------------------------------------------- remote paths


def test_remote_paths_resolve_in_the_home(config: ServerConfig, tmp_path: Path) -> None:
    home = os.fsencode(pwd.getpwuid(os.geteuid()).pw_dir)
    assert transfer.resolve_remote(b"", home) == home
    assert transfer.resolve_remote(b"~", home) == home
    assert transfer.resolve_remote(b"~/x/y", home) == home + b"/x/y"
    assert transfer.resolve_remote(b"rel/x", home) == home + b"/rel/x"
    assert transfer.resolve_remote(b"/abs", home) == b"/abs"
    assert transfer.resolve_remote(b"~root/x", home) == \
        os.fsencode(pwd.getpwnam("root").pw_dir) + b"/x"
    assert transfer.resolve_remote(b"~nosuchuserqcp/x", home) == b"~nosuchuserqcp/x"
    name = "qcp-test-" + os.urandom(4).hex()
    source = tmp_path / "f"
    source.write_bytes(b"to the home")
    try:
        report = copy(config, "up", [source], b"~/" + name.encode())
        assert report.ok, report.failures
        assert (Path(os.fsdecode(home)) / name).read_bytes() == b"to the home"
        back = tmp_path / "back"
        report = copy(config, "down", [name.encode()], back)
        assert report.ok and back.read_bytes() == b"to the home"
    finally:
        with contextlib.suppress(FileNotFoundError):
            (Path(os.fsdecode(home)) / name).unlink()


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_named_temporary_files_where_anonymous_ones_are_unavailable(
        config: ServerConfig, tmp_path: Path, direction: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without O_TMPFILE (or /proc) the file is written under ``.NAME.qcp-XXXXXXXX``: it
    must still be removed when the connection is cut, and renamed when it completes."""
    monkeypatch.setattr(commit, "_ANONYMOUS", False)
    source = tmp_path / "big"
    source.write_bytes(os.urandom(20 * MB))
    out = tmp_path / "out"
    out.mkdir()
    seen: list[list[str]] = []

    def look(moved: int) -> None:  # the receiver may lag the sender by a window or more
        if moved >= 4 * MB:
            seen.append(os.listdir(out))

    async def main() -> None:
        async with connected(config) as (_, client):
            engine = transfer.upload if direction == "up" else transfer.download
            report = await engine(client, [os.fsencode(source)], os.fsencode(out),
                                  CopyOptions(), Recorder(look))
            assert report.ok

    run(main())
    assert any(len(names) == 1 and names[0].startswith(".big.qcp-")  # named while written
               for names in seen), seen
    assert os.listdir(out) == ["big"]
    (out / "big").unlink()
    cut_after(8 * MB, direction, tmp_path, source, out, config, CopyOptions())
    assert os.listdir(out) == []


@pytest.mark.parametrize("resume", [False, True])
def test_a_cancelled_download_cleans_up_at_once(config: ServerConfig, tmp_path: Path,
                                                resume: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """What qcp does on SIGINT: cancel the engine's task. Its ``finally`` removes the
    temporary file before the cancellation returns (or keeps the --resume partial)."""
    monkeypatch.setattr(commit, "_ANONYMOUS", False)  # a name, so there is something to see
    source = tmp_path / "big"
    source.write_bytes(os.urandom(20 * MB))
    out = tmp_path / "out"
    out.mkdir()
    during: list[list[str]] = []

    async def main() -> list[str]:
        async with connected(config) as (_, client):
            def look(moved: int) -> None:
                if moved >= 4 * MB and not during:
                    during.append(os.listdir(out))
                    task.cancel()

            task = asyncio.ensure_future(transfer.download(
                client, [os.fsencode(source)], os.fsencode(out), CopyOptions(resume=resume),
                Recorder(look)))
            with pytest.raises(asyncio.CancelledError):
                await task
            return os.listdir(out)

    after = run(main())
    assert len(during[0]) == 1  # the file was there, under its temporary name
    assert after == ([".big.qcp-partial"] if resume else [])


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_limit_paces_the_sender(config: ServerConfig, tmp_path: Path, direction: str) -> None:
    source = tmp_path / "f"
    source.write_bytes(os.urandom(6 * MB))
    started = time.monotonic()
    report = copy(config, direction, [source], tmp_path / "g", CopyOptions(limit=5 * MB))
    elapsed = time.monotonic() - started
    assert report.ok and (tmp_path / "g").read_bytes() == source.read_bytes()
    assert elapsed >= 0.9  # 6 MB at 5 MB/s: the last MiB waits for its turn


def test_resume_ignores_a_partial_that_is_not_ours(config: ServerConfig, tmp_path: Path) -> None:
    """A partial owned by someone else (a shared directory) is neither continued nor
    renamed into place: the file fails with a reason, the stranger's file stays."""
    if not IS_ROOT:
        pytest.skip("giving a file to another uid needs root")
    source = tmp_path / "f"
    source.write_bytes(b"mine, all of it")
    out = tmp_path / "out"
    out.mkdir()
    partial = out / ".f.qcp-partial"
    partial.write_bytes(b"mine")
    os.chown(partial, 4242, 4242)
    report = copy(config, "up", [source], out, CopyOptions(resume=True))
    assert [f.reason for f in report.failures] == [
        ".f.qcp-partial is not a regular file of ours"]
    assert partial.read_bytes() == b"mine" and partial.stat().st_uid == 4242
    assert not (out / "f").exists()
