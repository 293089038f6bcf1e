"""What a ``python -X importtime`` run loaded, read from its stderr: the tests that keep a
command's start-up lean (a run over a master, qpasswd) assert on this set."""

from __future__ import annotations


def imported(stderr: str) -> set[str]:
    """The module names of every ``import time:`` line."""
    return {line.split("|")[-1].strip() for line in stderr.splitlines()
            if line.startswith("import time:")}
