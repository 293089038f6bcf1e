"""Sizes and time limits the adapter's modules share: one place to read and tune them."""

from __future__ import annotations

#: One receive buffer per event loop. Large, so that one ``recv_into`` can carry several
#: 256 KiB records and the per-call cost is paid per megabytes, not per record.
RECEIVE_BUFFER_SIZE = 4 * 1024 * 1024
#: :meth:`Channel.drain` waits while more than this many written bytes are still waiting
#: for the peer's window (they are referenced, not copied, so this bounds memory only).
CHANNEL_HIGH_WATER = 4 * 1024 * 1024
#: The socket transport's own buffer limits (asyncio's 64 KiB default is smaller than
#: one record, which would pause writers after every write).
TRANSPORT_HIGH_WATER = 8 * 1024 * 1024
TRANSPORT_LOW_WATER = 2 * 1024 * 1024
#: Our send queue's limits (sealed records the kernel has not taken yet).
WRITE_HIGH_WATER = 8 * 1024 * 1024
WRITE_LOW_WATER = 2 * 1024 * 1024
#: A server stops reading its socket while more than this many bytes of ours wait for the
#: peer (our queue plus the transport's buffer), and reads again once they are down to the
#: low mark. Every answer the peer can ask for -- keep-alive responses, request replies,
#: window adjusts, rekey offers -- is produced by reading, so a peer that sends and never
#: reads is throttled whatever it asks for, not only on channel data (sshd does the same).
#: Channel data is bounded by the peer's windows, so an honest client, which always reads,
#: only ever sees a short pause. A client does not gate its reading: if both ends did,
#: two bulk transfers in opposite directions could stop each other.
READ_PAUSE_HIGH_WATER = WRITE_HIGH_WATER
READ_PAUSE_LOW_WATER = WRITE_LOW_WATER
#: A server connection that has not been admitted (``Connection.pre_auth``: in the
#: handshake, or established but not logged in) runs on a small fixed budget: it reads at
#: most this much per receive call...
PRE_AUTH_READ_SIZE = 16 * 1024
#: ...and stops reading while more than this many bytes of its replies wait for the peer,
#: until they are down to the low mark. With the core's bound on a record before login
#: (``connection.max_preauth_record_body``, ~128 KiB) that keeps such a connection's
#: buffers to a few hundred KiB however it floods (the server's own handshake packets, up
#: to 1.4 MB with McEliece, still go out: reading merely waits for them).
PRE_AUTH_SEND_HIGH_WATER = 64 * 1024
PRE_AUTH_SEND_LOW_WATER = 16 * 1024
#: How long a closing connection may take to flush its last records to a slow peer.
CLOSE_FLUSH_TIMEOUT = 10.0
#: How long a connection that ended with an error of ours keeps reading (and dropping) what
#: the peer still sends, so that the kernel never resets it under our error record.
LINGER_TIMEOUT = 2.0
#: Buffers per sendmsg call (IOV_MAX is 1024 on Linux).
_IOV_BATCH = 512
#: False falls back to transport.writelines (e.g. to compare).
_ZERO_COPY_SEND = True
MALLOC_TRIM_THRESHOLD = 64 * 1024 * 1024
#: Seconds from TCP connect to a complete handshake (the TOFU prompt included).
DEFAULT_CONNECT_TIMEOUT = 60.0
