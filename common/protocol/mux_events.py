"""The events the mux hands its application: what the peer did, one record per happening.

On their own because they are the mux's whole output vocabulary: an adapter reads this module
to learn what it must handle, without the machine that produces them.
"""

from __future__ import annotations

from common.wire import Record


class ChannelOpenRequest(Record):
    """The peer wants a channel; answer with accept_channel or reject_channel."""

    __slots__ = ("channel_id", "kind", "payload")
    channel_id: int
    kind: str
    payload: bytes

    def __init__(self, channel_id: int, kind: str, payload: bytes) -> None:
        object.__setattr__(self, "channel_id", channel_id)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "payload", payload)


class ChannelOpened(Record):
    __slots__ = ("channel_id", "payload")
    channel_id: int
    payload: bytes

    def __init__(self, channel_id: int, payload: bytes) -> None:
        object.__setattr__(self, "channel_id", channel_id)
        object.__setattr__(self, "payload", payload)


class ChannelOpenFailed(Record):
    """Our open was refused; the id is already free again."""

    __slots__ = ("channel_id", "reason", "message")  # noqa: RUF023 (field order)
    channel_id: int
    reason: int
    message: str

    def __init__(self, channel_id: int, reason: int, message: str) -> None:
        object.__setattr__(self, "channel_id", channel_id)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "message", message)


class ChannelData(Record):
    """Received bytes: a read-only view of the record's plaintext, not a copy (the record
    layer gives every record a buffer of its own, never reused; :meth:`Mux.handle_message`
    callers must do the same), or a copy when the data is less than half of its record (a
    view would pin the rest). ``bytes(data)`` where a bytes object is needed.

    Call :meth:`Mux.acknowledge` with ``len(data)`` once consumed, or the peer stalls.
    """

    __slots__ = ("channel_id", "data", "ext")
    channel_id: int
    data: bytes | memoryview
    ext: int | None

    def __init__(self, channel_id: int, data: bytes | memoryview, ext: int | None) -> None:
        object.__setattr__(self, "channel_id", channel_id)
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "ext", ext)


class ChannelEof(Record):
    __slots__ = ("channel_id",)
    channel_id: int

    def __init__(self, channel_id: int) -> None:
        object.__setattr__(self, "channel_id", channel_id)


class ChannelClosed(Record):
    """Both sides sent CLOSE; the id is free and may be reused by a later open."""

    __slots__ = ("channel_id",)
    channel_id: int

    def __init__(self, channel_id: int) -> None:
        object.__setattr__(self, "channel_id", channel_id)


class ChannelRequest(Record):
    """If ``want_reply``, answer with :meth:`Mux.reply`; replies go out in request order."""

    __slots__ = ("channel_id", "name", "payload", "want_reply")
    channel_id: int
    name: str
    payload: bytes
    want_reply: bool

    def __init__(self, channel_id: int, name: str, payload: bytes, want_reply: bool) -> None:
        object.__setattr__(self, "channel_id", channel_id)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "payload", payload)
        object.__setattr__(self, "want_reply", want_reply)


class ChannelRequestReply(Record):
    """The answer to our oldest outstanding request on this channel."""

    __slots__ = ("channel_id", "ok", "payload")
    channel_id: int
    ok: bool
    payload: bytes

    def __init__(self, channel_id: int, ok: bool, payload: bytes) -> None:
        object.__setattr__(self, "channel_id", channel_id)
        object.__setattr__(self, "ok", ok)
        object.__setattr__(self, "payload", payload)


class GlobalRequest(Record):
    __slots__ = ("name", "payload", "want_reply")
    name: str
    payload: bytes
    want_reply: bool

    def __init__(self, name: str, payload: bytes, want_reply: bool) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "payload", payload)
        object.__setattr__(self, "want_reply", want_reply)


class GlobalRequestReply(Record):
    __slots__ = ("ok", "payload")
    ok: bool
    payload: bytes

    def __init__(self, ok: bool, payload: bytes) -> None:
        object.__setattr__(self, "ok", ok)
        object.__setattr__(self, "payload", payload)


class ChannelWritable(Record):
    """A window adjust (or the open confirmation) sent everything that was buffered, so a
    writer paused on :meth:`Mux.pending` may resume."""

    __slots__ = ("channel_id",)
    channel_id: int

    def __init__(self, channel_id: int) -> None:
        object.__setattr__(self, "channel_id", channel_id)


Event = (
    ChannelOpenRequest | ChannelOpened | ChannelOpenFailed | ChannelData | ChannelEof
    | ChannelClosed | ChannelRequest | ChannelRequestReply | GlobalRequest
    | GlobalRequestReply | ChannelWritable
)
