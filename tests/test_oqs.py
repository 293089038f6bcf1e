"""liboqs for real: its algorithms through the registry, and OpenSSL (cryptography) and liboqs
checking each other's ML-KEM and ML-DSA.

Every test here needs liboqs-python and the liboqs C library (``OQS_INSTALL_PATH``; .ci/run
builds it from ../shared/vendor). Without them they skip, saying so; where .ci/run built it
(``QSH_TEST_REQUIRE_LIBOQS=1``) a missing liboqs is a failure instead, so CI cannot quietly
fall back to skipping them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from common.crypto import registry

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = os.environ.get("QSH_TEST_REQUIRE_LIBOQS") == "1"


def _liboqs_or_skip() -> Any:
    """liboqs-python's module, imported our way (common.crypto.oqs), or a skip."""
    try:
        from common.crypto import oqs as algorithms_oqs
    except ImportError as exc:
        if REQUIRED:
            pytest.fail(f"QSH_TEST_REQUIRE_LIBOQS=1 but liboqs is not usable: {exc}")
        pytest.skip(f"liboqs not usable ({exc}): set OQS_INSTALL_PATH, install the oqs extra")
    return algorithms_oqs._oqs


@pytest.fixture(scope="module")
def oqs() -> Any:
    return _liboqs_or_skip()


def test_registry_offers_mceliece_and_slhdsa(oqs: Any) -> None:
    """The build script's algorithms all reach the registry (what -Q and the CLIs see)."""
    kems = registry.available_kems()
    sigs = registry.available_signatures()
    for name in ("mceliece348864", "mceliece460896", "mceliece6688128", "mceliece8192128"):
        assert name in kems
    for family in ("sha2", "shake"):
        for level in (128, 192, 256):
            for variant in "sf":
                assert f"slhdsa-{family}-{level}{variant}" in sigs


def test_importing_liboqs_prints_nothing_even_with_logging_on(oqs: Any) -> None:
    """A fresh interpreter that logs everything to stderr (as ``qsh -vvv`` does) and then
    loads liboqs through the registry writes not one byte to stdout or stderr."""
    code = ("import logging, sys; logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)\n"
            "from common.crypto import registry\n"
            "assert 'mceliece348864' in registry.available_kems()\n"
            "import logging.config\n"
            "logging.config.dictConfig({'version': 1, 'disable_existing_loggers': False})\n"
            "logging.getLogger('oqs.oqs').info('after a reconfiguration')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == (b"", b"")
