"""One client session: known_hosts, the handshake over TCP, the report."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from common import aio, suites
from common.errors import ErrorCode, QsmpError, RemoteReportedError
from common.handshake import ClientHandshake
from common.keys import PublicKey
from common.known_hosts import KnownHosts, host_pattern
from common.negotiation import ChaffPolicy, Offer

from .cli import ClientOptions, QshError

CHANGED_KEY_WARNING = """\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
The host key of {host} is not the one in {path}.
Someone could be eavesdropping on you right now (man-in-the-middle attack),
or the host key has just been changed. If you know it was changed, remove the old key
with an editor and connect again."""


def _offer(opts: ClientOptions) -> Offer:
    base = Offer()
    kems = opts.kems or tuple(k for k in base.kems if k in suites.available_kems())
    aeads = opts.ciphers or base.aeads
    for name in kems:
        if name not in suites.available_kems():
            raise QshError(f"unknown KEM {name!r}; available: {', '.join(suites.available_kems())}")
    for name in aeads:
        if name not in suites.available_aeads():
            raise QshError(f"unknown cipher {name!r}; available: "
                           f"{', '.join(suites.available_aeads())}")
    chaff = ChaffPolicy(enabled=True) if opts.chaff else base.chaff
    return Offer(kems=kems, signatures=base.signatures, aeads=aeads, chaff=chaff)


async def run_session(opts: ClientOptions, ask: Callable[[str], str]) -> None:
    known = KnownHosts.load(opts.known_hosts)
    found = known.lookup(opts.host, opts.port, default_port=2022)
    trusted: PublicKey | None = found.matching[0].key if found.matching else None
    pattern = host_pattern(opts.host, opts.port)

    refusal: list[str] = []

    async def on_host_key(key: PublicKey) -> bool:
        """Trust on first use. Never raises: the adapter treats False as a rejection."""
        mode = opts.strict_host_key_checking
        if mode == "yes":
            refusal.append(f"no {key.algorithm} host key is known for {pattern} and "
                           "StrictHostKeyChecking is yes")
            return False
        if mode == "ask":
            answer = await asyncio.to_thread(
                ask,
                f"The authenticity of host '{pattern}' can't be established.\n"
                f"{key.algorithm} key fingerprint is {key.fingerprint()}.\n"
                "Are you sure you want to continue connecting (yes/no)? ",
            )
            if answer.lower() != "yes":
                refusal.append("host key verification failed")
                return False
        known.add(opts.host, opts.port, key, default_port=2022)
        print(f"Warning: permanently added '{pattern}' ({key.algorithm}) to the list of "
              "known hosts.", file=sys.stderr)
        return True

    handshake = ClientHandshake(_offer(opts), trusted, step_timeout=opts.connect_timeout)
    try:
        connection = await aio.connect(opts.host, opts.port, handshake=handshake,
                                       on_host_key=on_host_key, timeout=opts.connect_timeout)
    except OSError as exc:
        raise QshError(f"connect to host {opts.host} port {opts.port}: "
                       f"{exc.strerror or exc}") from None
    except TimeoutError:
        raise QshError(f"connect to host {opts.host} port {opts.port}: timed out") from None
    except QsmpError as exc:
        if refusal:
            raise QshError(refusal[0]) from None
        if trusted is not None and exc.code in (ErrorCode.KEY_UNRECOGNIZED,
                                                ErrorCode.VERIFY_FAILURE):
            print(CHANGED_KEY_WARNING.format(host=pattern, path=opts.known_hosts),
                  file=sys.stderr)
            raise QshError("host key verification failed") from None
        where = "server" if isinstance(exc, RemoteReportedError) else "qsh"
        raise QshError(f"{where}: {exc.message}") from None
    suite, host_key = connection.suite, connection.host_key
    assert suite is not None and host_key is not None  # set once established
    print(f"Connected to {pattern}: {suite.kem}, {suite.signature}, {suite.aead}; "
          f"host key {host_key.fingerprint()}", file=sys.stderr)
    connection.close()
    await connection.wait_closed()
