"""Load pycryptodome on its ctypes backend.

pycryptodome binds its C code through cffi whenever cffi can be imported, and cffi then
parses C declarations with pycparser at import time: about 27 ms of every `qsh host true`
(bench/sessions.py). Its ctypes backend does the same calls; we make only a handful per
connection (KMAC in the key schedule, ML-DSA signing), so the backend's per-call cost does
not show. Nothing else of ours uses cffi.

The ctypes backend asks ``platform.architecture()`` once, before loading its first library,
only to tell Windows' linkage from the others; on Linux that runs ``file`` on the interpreter
in a subprocess (~3 ms of CPU and ~5 ms of wall time at every client start). We give it the
answer instead.
"""

from __future__ import annotations

import sys


def load() -> None:
    """Import pycryptodome's binding layer with cffi hidden, once, before any Crypto module."""
    if "Crypto.Util._raw_api" in sys.modules:
        return
    missing = object()
    saved = sys.modules.get("cffi", missing)
    sys.modules["cffi"] = None  # type: ignore[assignment]  # makes `import cffi` fail
    try:
        import Crypto.Util._raw_api  # noqa: F401
    finally:
        if saved is missing:
            del sys.modules["cffi"]
        else:
            sys.modules["cffi"] = saved  # type: ignore[assignment]
    cached = getattr(sys.modules["Crypto.Util._raw_api"], "cached_architecture", None)
    if sys.platform.startswith("linux") and isinstance(cached, list) and not cached:
        cached[:] = ["64bit" if sys.maxsize > 2**32 else "32bit", "ELF"]
