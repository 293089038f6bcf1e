"""qsh's command line as ssh reads it, before click sees it: the destination's ``user@``,
options written after the destination, and ssh's ``-T``. No click here (nor anything else
heavy): the shared-connection fast path (:mod:`qsh.entry`) reads the command line with
this alone.
"""

from __future__ import annotations

import re


def split_destination(destination: str) -> tuple[str | None, str]:
    """``user@host`` -> (user, host); the last ``@`` splits, as in ssh, so a user name
    may itself contain one."""
    user, sep, host = destination.rpartition("@")
    return (user if sep else None), host


VALUE_OPTIONS = frozenset("pliFoTLRDEbBcemJOSwWPIQ")
FLAG_OPTIONS = frozenset("vtNfq46hVGCaAxXYkKgnsyM")


def _is_tunnel(word: str) -> bool:
    """``[bind:]port:host:hostport`` by its shape (parsed properly later): three or four
    fields once bracketed IPv6 addresses are set aside, the last a port number."""
    fields = re.sub(r"\[[^\]]*\]", "h", word).split(":")
    return len(fields) in (3, 4) and fields[-1].isdigit() and fields[-3].isdigit()


def ssh_dash_T(argv: list[str]) -> list[str]:
    """ssh's ``-T`` (no pseudo-terminal) takes no value, qsh's ``-T`` takes a tunnel: a -T
    whose value is not shaped like a tunnel is ssh's, and becomes ``-o RequestTTY=no``, so
    ``ssh -T git@host`` and ``ssh -qT host cmd`` habits (and scripts) work unchanged. Only
    the options before the destination and right after it are looked at."""
    out: list[str] = []
    i, seen_destination = 0, False
    while i < len(argv):
        word = argv[i]
        if word == "--":
            break
        if not word.startswith("-") or word == "-":
            if seen_destination:
                break  # the remote command starts here
            seen_destination = True
            out.append(word)
            i += 1
            continue
        if word.startswith("--"):
            out.append(word)
            i += 1
            continue
        flags, pending, took_next = "", word[1:], False
        while pending:
            letter, pending = pending[0], pending[1:]
            if letter not in VALUE_OPTIONS:
                flags += letter
                continue
            value = pending or (argv[i + 1] if i + 1 < len(argv) else None)
            if letter == "T" and value is not None and not _is_tunnel(value):
                out += ([f"-{flags}"] if flags else []) + ["-o", "RequestTTY=no"]
                flags = ""
                continue  # what is left of the cluster is more letters
            out.append(f"-{flags}{letter}{pending}")
            flags, took_next = "", not pending and i + 1 < len(argv)
            if took_next:
                out.append(argv[i + 1])
            break
        if flags:
            out.append(f"-{flags}")
        i += 2 if took_next else 1
    return out + argv[i:]


def hoist_options(argv: list[str]) -> list[str]:
    """Move options written right after the destination in front of it, as ssh does:
    ``qsh host -t top`` means ``qsh -t host top``. The command starts at the first word
    after the destination that is not an option (or after ``--``), so in ``qsh host ls -l``
    the ``-l`` stays with ``ls``."""
    def option_length(i: int) -> int:
        """How many words the option cluster at argv[i] takes (0: not an option)."""
        word = argv[i]
        if not word.startswith("-") or word in ("-", "--"):
            return 0
        if word.startswith("--"):
            return 1  # --help
        for j, letter in enumerate(word[1:], start=1):
            if letter in VALUE_OPTIONS:
                return 1 if j + 1 < len(word) else 2
            if letter not in FLAG_OPTIONS:
                return 1  # unknown: hoisted all the same, so that click reports it
        return 1

    i = 0
    while i < len(argv):  # skip the options before the destination
        if argv[i] == "--":
            return argv
        n = option_length(i)
        if not n:
            break
        i += n
    if i >= len(argv):
        return argv
    destination = i
    moved: list[str] = []
    j = destination + 1
    while j < len(argv):
        if argv[j] == "--":
            j += 1
            break
        n = option_length(j)
        if not n:
            break
        moved.extend(argv[j:j + n])
        j += n
    rest = argv[j:]
    return [*argv[:destination], *moved, "--", argv[destination], *rest]
