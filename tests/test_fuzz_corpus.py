"""Replay every seed of every fuzz corpus through its harness, as an ordinary test.

The harnesses (fuzz/fuzz_*.py) import without atheris: only running one as a script sets
the fuzzer up. Each ``TestOneInput`` raises on anything the core's contract forbids (an
exception escaping a decoder that is not a QsmpError, anything escaping
``Connection.receive_data``, a broken invariant), so a clean replay here means the seeds,
including reproducers of past bugs once they are added to a corpus, still pass.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "fuzz" / "corpus"
HARNESSES = ("wire", "mux", "transport", "handshake_server", "handshake_client", "auth")

if str(ROOT) not in sys.path:  # fuzz/ is not an installed package
    sys.path.insert(0, str(ROOT))


def _harness(name: str) -> ModuleType:
    return importlib.import_module(f"fuzz.fuzz_{name}")


def test_every_harness_has_a_corpus() -> None:
    scripts = {p.stem.removeprefix("fuzz_") for p in (ROOT / "fuzz").glob("fuzz_*.py")}
    corpora = {p.name for p in CORPUS.iterdir() if p.is_dir()}
    assert scripts == set(HARNESSES)
    assert corpora == set(HARNESSES)


@pytest.mark.parametrize("name", HARNESSES)
def test_corpus_replays_cleanly(name: str) -> None:
    harness = _harness(name)
    seeds = sorted(p for p in (CORPUS / name).iterdir() if p.is_file())
    assert len(seeds) >= 5, f"fuzz/corpus/{name} has too few seeds"
    for seed in seeds:
        data = seed.read_bytes()
        try:
            harness.TestOneInput(data)
        except Exception as exc:
            exc.add_note(f"replaying fuzz/corpus/{name}/{seed.name}")
            raise


@pytest.mark.parametrize("name", HARNESSES)
def test_harness_survives_trivial_inputs(name: str) -> None:
    harness = _harness(name)
    for data in (b"", b"\x00", b"\xff" * 64, bytes(range(256))):
        harness.TestOneInput(data)
