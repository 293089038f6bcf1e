#!/usr/bin/env python3
"""Time every candidate implementation of every primitive qsh uses, on this machine.

``common/algorithms.py`` picks one library per operation by measurement; this script is that
measurement, so the choice can be re-checked on new hardware or new library versions::

    python bench/primitives.py            # ~15 s
    python bench/primitives.py --quick    # ~5 s, noisier

Marks: ``*`` the library call the registry makes on the production path (SYSTEM_RNG),
``r`` the one it makes under a DeterministicRng (tests, vectors). ``qsh:`` rows go through
``registry.usable()`` itself, wrapper included, and are left out of the "fastest" verdict.
Each group ends with its fastest candidate, and a note where the registry uses another one.
The cold-import table matters as much: a one-shot ``qsh`` pays it on every run. Not a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_PC_IMPORT = "pycryptodome would cost a ~30 ms import on every one-shot client"
#: Why the registry does not use the fastest candidate, where it does not.
WHY_NOT_FASTEST = {
    ("ML-KEM-768", "keygen"): _PC_IMPORT,
    ("ML-KEM-1024", "keygen"): _PC_IMPORT,
    ("ML-DSA-65", "keygen"): _PC_IMPORT,
    ("ML-DSA-87", "keygen"): _PC_IMPORT,
    ("ML-DSA-65", "verify"): _PC_IMPORT + " that only verifies the host key",
    ("ML-DSA-87", "verify"): _PC_IMPORT + " that only verifies the host key",
}


@dataclass
class Row:
    primitive: str
    operation: str
    implementation: str
    micros: float
    mark: str  # "*" production path, "r" reproducible path, "" not used
    registry: bool  # measured through registry.usable(): our wrapper included
    size: int = 0  # bytes processed per call, for throughput


class Bench:
    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.rows: list[Row] = []

    def time(self, fn: Callable[[], object]) -> float:
        """Best of five runs sized from a short calibration: microseconds per call."""
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < self.budget / 10:
            fn()
            calls += 1
        number = max(1, int(calls * (self.budget / 5) / elapsed))
        return min(timeit.Timer(fn).repeat(repeat=5, number=number)) / number * 1e6

    def add(
        self,
        primitive: str,
        operation: str,
        implementation: str,
        fn: Callable[[], object],
        *,
        mark: str = "",
        size: int = 0,
    ) -> None:
        micros = self.time(fn)
        registry = implementation.startswith("qsh:")
        self.rows.append(Row(primitive, operation, implementation, micros, mark, registry, size))


# --- KEMs ----------------------------------------------------------------------------------


def bench_mlkem(b: Bench) -> None:
    from Crypto.PublicKey import MLKEM
    from cryptography.hazmat.primitives.asymmetric import mlkem

    _bench_mlkem_set(b, "ML-KEM-768", "mlkem768", mlkem.MLKEM768PrivateKey,
                     mlkem.MLKEM768PublicKey, MLKEM.ML_KEM_768)
    _bench_mlkem_set(b, "ML-KEM-1024", "mlkem1024", mlkem.MLKEM1024PrivateKey,
                     mlkem.MLKEM1024PublicKey, MLKEM.ML_KEM_1024)


def _bench_mlkem_set(
    b: Bench, label: str, wire: str, cg_priv: Any, cg_pub: Any, pc_param: Any
) -> None:
    from Crypto.PublicKey import MLKEM

    from common.crypto import registry
    from common.crypto.rng import SYSTEM_RNG, DeterministicRng

    qsh = registry.kem(wire)
    seed, coins = os.urandom(64), os.urandom(32)
    cg_key = cg_priv.from_seed_bytes(seed)
    pk = cg_key.public_key().public_bytes_raw()
    pc_key = MLKEM.construct(param_set=pc_param, seed=seed)
    _, ct = pc_key._encaps(coins)
    ours = qsh.generate(SYSTEM_RNG)
    our_ct, _ = qsh.encapsulate(ours.public_bytes(), SYSTEM_RNG)
    det = DeterministicRng(b"bench")

    b.add(label, "keygen", "cryptography from_seed_bytes", mark="*r",
          fn=lambda: cg_priv.from_seed_bytes(seed).public_key().public_bytes_raw())
    b.add(label, "keygen", "pycryptodome construct(seed)",
          lambda: MLKEM.construct(param_set=pc_param, seed=seed).ek)
    b.add(label, "keygen", "qsh: generate", lambda: qsh.generate(SYSTEM_RNG))
    b.add(label, "encaps", "cryptography parse pk + encapsulate()", mark="*",
          fn=lambda: cg_pub.from_public_bytes(pk).encapsulate())
    b.add(label, "encaps", "pycryptodome construct(ek) + _encaps(coins)", mark="r",
          fn=lambda: MLKEM.construct(param_set=pc_param, ek=pk)._encaps(coins))
    b.add(label, "encaps", "qsh: encapsulate, SYSTEM_RNG", lambda: qsh.encapsulate(pk, SYSTEM_RNG))
    b.add(label, "encaps", "qsh: encapsulate, DeterministicRng", lambda: qsh.encapsulate(pk, det))
    b.add(label, "decaps", "cryptography decapsulate", lambda: cg_key.decapsulate(ct), mark="*r")
    b.add(label, "decaps", "pycryptodome _decaps", lambda: pc_key._decaps(ct))
    b.add(label, "decaps", "qsh: decapsulate", lambda: ours.decapsulate(our_ct))


def bench_xwing(b: Bench) -> None:
    from Crypto.Protocol.DH import import_x25519_public_key, key_agreement
    from Crypto.PublicKey import ECC, Hybrid
    from cryptography.hazmat.primitives.asymmetric import x25519

    from common.crypto import registry
    from common.crypto.rng import SYSTEM_RNG, DeterministicRng

    label = "X-Wing"
    qsh = registry.kem("mlkem768x25519")
    seed = os.urandom(32)
    theirs = Hybrid._construct(param_set=Hybrid.MLKEM768_X25519, seed=seed)
    pk = theirs._pk
    _, their_ct = theirs._encaps()
    ours = qsh.generate(SYSTEM_RNG)
    our_ct, _ = qsh.encapsulate(ours.public_bytes(), SYSTEM_RNG)
    det = DeterministicRng(b"bench")

    b.add(label, "keygen", "pycryptodome Hybrid",
          lambda: Hybrid._construct(param_set=Hybrid.MLKEM768_X25519, seed=seed))
    b.add(label, "keygen", "ours: cryptography ML-KEM + X25519 + hashlib",
          lambda: qsh.generate(SYSTEM_RNG), mark="*r")
    b.add(label, "encaps", "pycryptodome Hybrid parse pk + _encaps",
          lambda: Hybrid._construct(param_set=Hybrid.MLKEM768_X25519, pk=pk)._encaps())
    b.add(label, "encaps", "ours, SYSTEM_RNG: cryptography", mark="*",
          fn=lambda: qsh.encapsulate(pk, SYSTEM_RNG))
    b.add(label, "encaps", "ours, DeterministicRng: + pycryptodome ML-KEM", mark="r",
          fn=lambda: qsh.encapsulate(pk, det))
    b.add(label, "decaps", "pycryptodome Hybrid", lambda: theirs._decaps(their_ct))
    b.add(label, "decaps", "ours: cryptography + hashlib", mark="*r",
          fn=lambda: ours.decapsulate(our_ct))

    cg_a = x25519.X25519PrivateKey.generate()
    cg_b = x25519.X25519PrivateKey.generate().public_key()
    pc_a = ECC.generate(curve="Curve25519")
    pc_b = import_x25519_public_key(
        ECC.generate(curve="Curve25519").public_key().export_key(format="raw")
    )
    b.add("X25519", "exchange", "cryptography", lambda: cg_a.exchange(cg_b), mark="*r")
    b.add("X25519", "exchange", "pycryptodome",
          lambda: key_agreement(static_priv=pc_a, eph_pub=pc_b, kdf=bytes))


# --- signatures ----------------------------------------------------------------------------


def bench_mldsa(b: Bench) -> None:
    from Crypto.PublicKey import MLDSA
    from cryptography.hazmat.primitives.asymmetric import mldsa

    _bench_mldsa_set(b, "ML-DSA-65", "mldsa65", mldsa.MLDSA65PrivateKey,
                     mldsa.MLDSA65PublicKey, MLDSA.ML_DSA_65)
    _bench_mldsa_set(b, "ML-DSA-87", "mldsa87", mldsa.MLDSA87PrivateKey,
                     mldsa.MLDSA87PublicKey, MLDSA.ML_DSA_87)


def _bench_mldsa_set(
    b: Bench, label: str, wire: str, cg_priv: Any, cg_pub: Any, pc_param: Any
) -> None:
    from Crypto.PublicKey import MLDSA
    from Crypto.Signature import mldsa as pc_mldsa

    from common.crypto import registry
    from common.crypto.rng import SYSTEM_RNG

    message = os.urandom(600)  # about a handshake transcript plus framing
    qsh = registry.signature(wire)
    seed, pk = qsh.generate(SYSTEM_RNG)
    cg_key = cg_priv.from_seed_bytes(seed)
    pc_key = MLDSA.construct(param_set=pc_param, seed=seed)
    signature = qsh.sign(seed, message, SYSTEM_RNG)

    def pc_verify() -> None:
        pc_mldsa.new(MLDSA.construct(param_set=pc_param, pk=pk)).verify(message, signature)

    b.add(label, "keygen", "cryptography from_seed_bytes", mark="*r",
          fn=lambda: cg_priv.from_seed_bytes(seed).public_key().public_bytes_raw())
    b.add(label, "keygen", "pycryptodome construct(seed)",
          lambda: MLDSA.construct(param_set=pc_param, seed=seed).pk)
    b.add(label, "keygen", "qsh: generate", lambda: qsh.generate(SYSTEM_RNG))
    b.add(label, "sign", "cryptography (OpenSSL's randomness only)", lambda: cg_key.sign(message))
    b.add(label, "sign", "pycryptodome, key object cached", mark="*r",
          fn=lambda: pc_mldsa.new(pc_key, randfunc=os.urandom).sign(message))
    b.add(label, "sign", "pycryptodome, construct(seed) every call",
          lambda: pc_mldsa.new(MLDSA.construct(param_set=pc_param, seed=seed),
                               randfunc=os.urandom).sign(message))
    b.add(label, "sign", "qsh: sign", lambda: qsh.sign(seed, message, SYSTEM_RNG))
    b.add(label, "verify", "cryptography parse pk + verify", mark="*r",
          fn=lambda: cg_pub.from_public_bytes(pk).verify(signature, message))
    b.add(label, "verify", "pycryptodome construct(pk) + verify", pc_verify)
    b.add(label, "verify", "qsh: verify", lambda: qsh.verify(pk, message, signature))


# --- AEADs ---------------------------------------------------------------------------------


def bench_aead(b: Bench) -> None:
    from Crypto.Cipher import AES, ChaCha20_Poly1305
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    key, nonce = os.urandom(32), os.urandom(12)
    for size in (1024, 65536):
        _bench_aead_set(b, "AES-256-GCM", "aes256gcm", AESGCM, size, key, nonce,
                        lambda: AES.new(key, AES.MODE_GCM, nonce=nonce))
        _bench_aead_set(b, "ChaCha20-Poly1305", "chacha20poly1305", ChaCha20Poly1305, size,
                        key, nonce, lambda: ChaCha20_Poly1305.new(key=key, nonce=nonce))


def _bench_aead_set(
    b: Bench,
    label: str,
    wire: str,
    cg_cls: Any,
    size: int,
    key: bytes,
    nonce: bytes,
    pc_new: Callable[[], Any],
) -> None:
    from common.crypto import registry

    aad = os.urandom(13)  # the record header
    data = os.urandom(size)
    out = bytearray(size + 16)
    plain = bytearray(size)
    cg = cg_cls(key)
    ctx = registry.aead(wire).new(key)
    sealed = cg.encrypt(nonce, data, aad)

    def pc_seal() -> object:
        cipher = pc_new()
        cipher.update(aad)
        return cipher.encrypt_and_digest(data)

    group = f"{label} {size // 1024} KiB"
    b.add(group, "seal", "cryptography encrypt_into", mark="*r", size=size,
          fn=lambda: cg.encrypt_into(nonce, data, aad, out))
    b.add(group, "seal", "pycryptodome encrypt_and_digest", pc_seal, size=size)
    b.add(group, "seal", "qsh: encrypt_into (the bound method)", size=size,
          fn=lambda: ctx.encrypt_into(nonce, data, aad, out))
    b.add(group, "open", "cryptography decrypt_into", mark="*r", size=size,
          fn=lambda: cg.decrypt_into(nonce, sealed, aad, plain))
    b.add(group, "open", "qsh: decrypt_into (maps InvalidTag)", size=size,
          fn=lambda: ctx.decrypt_into(nonce, sealed, aad, plain))


# --- imports and report --------------------------------------------------------------------

IMPORTS = {
    "cryptography: ML-KEM, ML-DSA, X25519, AEADs": (
        "cryptography.hazmat.primitives.asymmetric.mlkem",
        "cryptography.hazmat.primitives.asymmetric.mldsa",
        "cryptography.hazmat.primitives.asymmetric.x25519",
        "cryptography.hazmat.primitives.ciphers.aead",
    ),
    "pycryptodome: ML-DSA signing": ("Crypto.PublicKey.MLDSA", "Crypto.Signature.mldsa"),
    "pycryptodome: ML-KEM (reproducible encapsulation only)": ("Crypto.PublicKey.MLKEM",),
    "common.crypto.algorithms (all registry.usable() loads)": ("common.crypto.algorithms",),
}


def import_costs() -> list[tuple[str, float]]:
    """Cold import in a fresh interpreter: what a one-shot ``qsh`` pays at startup."""
    results = []
    for label, modules in IMPORTS.items():
        code = (
            "import time, sys; sys.path.insert(0, sys.argv[1]); t = time.perf_counter()\n"
            f"for m in {modules!r}: __import__(m)\n"
            "print((time.perf_counter() - t) * 1000)"
        )
        best = min(
            float(subprocess.check_output([sys.executable, "-c", code, str(ROOT)], text=True))
            for _ in range(3)
        )
        results.append((label, best))
    return results


def report(rows: list[Row], imports: list[tuple[str, float]]) -> None:
    width = 106
    print(f"{'primitive':<25}{'op':<9}{'   implementation':<52}{'µs':>10}{'MB/s':>9}")
    print("-" * width)
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.primitive, row.operation), []).append(row)
    for (primitive, operation), members in groups.items():
        for row in members:
            rate = f"{row.size / row.micros:9.0f}" if row.size else ""
            print(
                f"{primitive:<25}{operation:<9}{row.mark:<3}{row.implementation:<49}"
                f"{row.micros:10.1f}{rate}"
            )
        candidates = [r for r in members if not r.registry]
        fastest = min(candidates, key=lambda r: r.micros)
        production = next((r for r in candidates if "*" in r.mark), None)
        verdict = f"{'':<37}fastest: {fastest.implementation}"
        # 20%: below that, run-to-run noise on a shared 2-core machine decides the winner.
        if production is not None and production.micros > fastest.micros * 1.20:
            why = WHY_NOT_FASTEST.get((primitive, operation), "RE-CHECK THE CHOICE")
            verdict += f"\n{'':<37}registry uses {production.implementation}: {why}"
        print(verdict)
        print()
    print(f"{'cold import':<96}{'ms':>10}")
    print("-" * width)
    for label, ms in imports:
        print(f"{label:<96}{ms:10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, noisier numbers")
    args = parser.parse_args()
    b = Bench(budget=0.03 if args.quick else 0.12)
    bench_mlkem(b)
    bench_xwing(b)
    bench_mldsa(b)
    bench_aead(b)
    report(b.rows, import_costs())


if __name__ == "__main__":
    main()
