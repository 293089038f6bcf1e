#!/usr/bin/env python3
"""What a forked CPython process costs at the least (issue 8): the floor under qshd's CPU per
login and idle session memory, whatever qshd's own code does.

    python bench/fork_floor.py                 # 50 forks, 50 idle children
    python bench/fork_floor.py --children 10

A parent that has loaded what qshd's listener loads (asyncio, the crypto libraries, qshd's
modules; then ``gc.freeze()`` as the listener does) measures:

* ``fork()`` + ``_exit(0)`` in the child, reaped: CPU of parent and child together, per fork
  (page tables, copy-on-write faults of the child's few writes, exit);
* N children that each run an asyncio event loop waiting on one socket, nothing else: their
  PSS and private memory (``/proc/PID/smaps_rollup``), the least a per-connection process
  holds while idle (qshd's monitor and user's process do more: a handshake, a login, a
  session);
* for comparison, a fresh ``python3 -I -S`` that sleeps (what an exec'd helper would hold).

Benchmarks are never unit tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.sessions import smaps_rollup  # noqa: E402


def _load_like_the_listener() -> None:
    sys.modules["ssl"] = None  # type: ignore[assignment]  # as qshd and qsh run
    import asyncio  # noqa: F401

    import common.crypto.pycryptodome as pycryptodome

    pycryptodome.load()
    import common.aio
    import common.channels.session
    import common.crypto.algorithms
    import common.protocol.connection  # noqa: F401
    import qshd.listener
    import qshd.monitor
    import qshd.postauth  # noqa: F401


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def fork_exit_cost(n: int) -> float:
    """Seconds of CPU (parent + child) per fork of this process whose child exits at once."""
    self0, kids0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    self1, kids1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return (_cpu(self1) - _cpu(self0) + _cpu(kids1) - _cpu(kids0)) / n


def _idle_child(sock: socket.socket) -> None:
    import asyncio

    async def wait() -> None:
        reader, _ = await asyncio.open_connection(sock=sock)
        await reader.read(1)  # EOF when the parent closes its end

    asyncio.run(wait())


def smaps(pid: int) -> dict[str, int]:
    values = smaps_rollup(pid)
    if values is None:
        raise RuntimeError(f"process {pid} ended before it was measured")
    return values


def idle_children(n: int) -> list[dict[str, int]]:
    """PSS and private memory of ``n`` idle asyncio children, held at once."""
    ends: list[socket.socket] = []
    pids: list[int] = []
    try:
        for _ in range(n):
            ours, theirs = socket.socketpair()
            pid = os.fork()
            if pid == 0:
                for end in ends:  # only its own socket: the others' EOF must not wait on it
                    end.close()
                ours.close()
                try:
                    _idle_child(theirs)
                finally:
                    os._exit(0)
            theirs.close()
            ends.append(ours)
            pids.append(pid)
        time.sleep(1.0)  # each child is in its event loop
        return [smaps(pid) for pid in pids]
    finally:
        for end in ends:
            end.close()
        deadline = time.monotonic() + 30
        for pid in pids:
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                time.sleep(0.01)


def fresh_interpreter() -> dict[str, int]:
    """A fresh ``python3 -I -S`` that sleeps: what an exec'd helper process would hold."""
    child = subprocess.Popen([sys.executable, "-I", "-S", "-c",
                              "import time; time.sleep(30)"])
    try:
        time.sleep(0.5)
        return smaps(child.pid)
    finally:
        child.kill()
        child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forks", type=int, default=50)
    parser.add_argument("--children", type=int, default=50)
    args = parser.parse_args()
    _load_like_the_listener()
    gc.collect()
    gc.freeze()
    parent = smaps(os.getpid())
    print(f"fork floor: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; the parent (listener's imports) "
          f"RSS {parent['Rss'] / 1024:.1f} MiB")
    costs = [fork_exit_cost(args.forks) for _ in range(3)]
    print(f"  fork + _exit, reaped: {1000 * statistics.median(costs):.2f} ms of CPU per fork "
          f"(parent + child; median of 3 x {args.forks})")
    held = idle_children(args.children)
    pss = statistics.median(v["Pss"] for v in held) / 1024
    dirty = statistics.median(v["Private_Dirty"] for v in held) / 1024
    print(f"  {args.children} idle asyncio children held at once: PSS {pss:.2f} MiB each, "
          f"private dirty {dirty:.2f} MiB (medians)")
    fresh = fresh_interpreter()
    print(f"  a fresh python3 -I -S, sleeping: PSS {fresh['Pss'] / 1024:.2f} MiB, private "
          f"dirty {fresh['Private_Dirty'] / 1024:.2f} MiB")


if __name__ == "__main__":
    main()
