"""Coverage instrumentation of ``common`` when a harness runs under atheris, and nothing
when the corpus test imports it (so the replay needs no atheris)."""

from __future__ import annotations

import contextlib


def instrumented(as_script: bool) -> contextlib.AbstractContextManager[object]:
    if not as_script:
        return contextlib.nullcontext()
    import atheris

    return atheris.instrument_imports(include=["common"])  # type: ignore[no-any-return]
