"""The base of our value records (:class:`Record`), alone in a module that imports nothing.

Why alone: a run over a shared connection (qsh/entry.py) builds the configuration's records
and nothing of the protocol; from :mod:`common.wire` it would load the packet flags and,
through :mod:`common.errors`, the error codes -- two enums, ~1.3 ms of a ~27 ms run
(issue 18). :mod:`common.wire` re-exports it, so ``from common.wire import Record`` works.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (issue 18)
if TYPE_CHECKING:
    from typing import NoReturn, Self


class Record:
    """A value record: what ``@dataclass(frozen=True, slots=True)`` gives -- equality and a
    hash by value, a repr, no assignment once built -- for a class that names its fields in
    ``__slots__`` (in the order a dataclass would have them: unsorted) and sets them in its
    own ``__init__`` with ``object.__setattr__``.

    Not a dataclass because building one costs about a millisecond at import, and a client
    run imports dozens of such records before it sends a byte (issue 18)."""

    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record) or other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__qualname__}({shown})"

    def replace(self, **changes: object) -> Self:
        """A copy with ``changes`` applied, as ``dataclasses.replace`` makes one: for a
        record whose ``__init__`` takes every field by name (a name that is not one is the
        constructor's TypeError)."""
        return type(self)(**{**{name: getattr(self, name) for name in self.__slots__},
                             **changes})

    def __setattr__(self, name: str, value: object) -> NoReturn:
        from dataclasses import FrozenInstanceError  # only on the way to an error

        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        from dataclasses import FrozenInstanceError  # only on the way to an error

        raise FrozenInstanceError(f"cannot delete field {name!r}")
