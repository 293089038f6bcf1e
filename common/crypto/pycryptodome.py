"""Load pycryptodome on its ctypes backend.

pycryptodome binds its C code through cffi whenever cffi can be imported, and cffi then
parses C declarations with pycparser at import time: about 27 ms of every `qsh host true`
(bench/sessions.py). Its ctypes backend does the same calls; we make only a handful per
connection (KMAC in the key schedule, ML-DSA signing), so the backend's per-call cost does
not show. Nothing else of ours uses cffi.
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
