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


# --------------------------------------------------------------------------- qsh-keygen, -Q

SLH_DSA = tuple(f"slhdsa-{family}-{level}{variant}" for family in ("sha2", "shake")
                for level in (128, 192, 256) for variant in "sf")
MCELIECE = ("mceliece348864", "mceliece460896", "mceliece6688128", "mceliece8192128")


def _run(module: str, *args: str, liboqs: bool) -> subprocess.CompletedProcess[str]:
    """A real CLI, with liboqs as found by this run or with it made unfindable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not liboqs:
        env["OQS_INSTALL_PATH"] = "/nonexistent"
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, env=env)


def test_keygen_makes_every_slhdsa_key(oqs: Any, tmp_path: Path) -> None:
    for name in ("slhdsa-sha2-128s", "slhdsa-shake-256f"):
        path = tmp_path / name
        result = _run("qsh.keygen", "-t", name, "-N", "", "-f", str(path), liboqs=True)
        assert result.returncode == 0, result.stderr
        assert path.with_name(name + ".pub").read_text().startswith(f"qsh-{name} ")
    listed = _run("qsh.keygen", "--help", liboqs=True).stdout
    for name in SLH_DSA:
        assert name in listed


def test_keygen_says_which_algorithms_need_liboqs(tmp_path: Path) -> None:
    """Without liboqs, an SLH-DSA key is refused with the reason, not "invalid choice"."""
    result = _run("qsh.keygen", "-t", "slhdsa-sha2-128s", "-N", "", "-f", str(tmp_path / "k"),
                  liboqs=False)
    assert result.returncode == 1
    assert result.stderr.startswith("qsh-keygen: slhdsa-sha2-128s needs liboqs"), result.stderr
    assert not (tmp_path / "k").exists()
    assert "need liboqs" in " ".join(_run("qsh.keygen", "--help", liboqs=False).stdout.split())


def _listing(kind: str, liboqs: bool) -> tuple[dict[str, str], str]:
    result = _run("qsh", "-Q", kind, liboqs=liboqs)
    assert result.returncode == 0, result.stderr
    lines = [line.split(None, 1) for line in result.stdout.splitlines()]
    return {name: source for name, source in lines}, result.stderr


def test_query_lists_algorithms_and_their_library(oqs: Any) -> None:
    kems, note = _listing("kem", liboqs=True)
    assert kems["mlkem768x25519"].startswith("OpenSSL")
    for name in MCELIECE:
        assert kems[name].startswith("liboqs 0.")
    assert note == ""
    sigs, _ = _listing("sig", liboqs=True)
    assert "pycryptodome" in sigs["mldsa65"] and "OpenSSL" in sigs["mldsa65"]
    for name in SLH_DSA:
        assert sigs[name].startswith("liboqs 0.")
    ciphers, _ = _listing("cipher", liboqs=True)
    assert set(ciphers) == {"aes256gcm", "chacha20poly1305"}


def test_query_without_liboqs_names_what_is_missing() -> None:
    kems, note = _listing("kem", liboqs=False)
    assert set(kems) == {"mlkem768x25519", "mlkem768", "mlkem1024"}
    assert "mceliece348864" in note and "liboqs" in note
    sigs, note = _listing("signature", liboqs=False)
    assert set(sigs) == {"mldsa65", "mldsa87"} and "slhdsa-sha2-128s" in note
    bad = _run("qsh", "-Q", "nonsense", liboqs=False)
    assert bad.returncode == 255 and "kem" in bad.stderr
