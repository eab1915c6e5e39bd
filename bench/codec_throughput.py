"""Codec throughput: encode + decode through a real Endpoint, next to raw AES-GCM.

    python bench/codecs.py [--repeats 7] [--seconds 0.2]

For 4 KiB, 64 KiB and 1 MiB float32 tensors it times ``Endpoint.encode`` followed by the
receiver's ``Endpoint.decode`` (all checks included) for every registered codec, and, in the same
run, raw ``cryptography`` AESGCM encrypt + decrypt of the same bytes. It prints medians over
``--repeats`` trials and each codec's throughput as a ratio of raw AES-GCM's.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocol.codecs import codec_names
from protocol.endpoint import Endpoint
from protocol.frame import MessageKind

SIZES = {"4 KiB": 4 << 10, "64 KiB": 64 << 10, "1 MiB": 1 << 20}


def per_call(fn: Callable[[], object], seconds: float, repeats: int) -> float:
    """Median seconds per call over ``repeats`` trials of about ``seconds`` each."""
    fn()
    n = 1
    while True:  # calibrate the loop count to the trial length
        t = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t > seconds / 4:
            break
        n *= 2
    n = max(1, int(n * seconds / max(time.perf_counter() - t, 1e-9)))
    trials = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        trials.append((time.perf_counter() - t) / n)
    return statistics.median(trials)


def raw_round_trip(raw: bytes) -> Callable[[], bytes]:
    key, nonce, aad = AESGCM(AESGCM.generate_key(256)), b"\0" * 12, b"\0" * 64
    return lambda: key.decrypt(nonce, key.encrypt(nonce, raw, aad), aad)


def codec_round_trip(codec: str, tensor: np.ndarray) -> Callable[[], object]:
    a, b = linked(codec)
    return lambda: b.decode(a.encode("server", MessageKind.ACTIVATIONS, tensor))


def linked(codec: str) -> tuple[Endpoint, Endpoint]:
    a, b = Endpoint("owner:0", codec, 1), Endpoint("server", codec, 1)
    registry = {"owner:0": a.identity(), "server": b.identity()}
    a.trust(registry)
    b.trust(registry)
    offer = a.handshake_offer("server")
    if offer is not None:
        (answer,) = b.handshake(b.decode(offer))
        a.handshake(a.decode(answer))
    return a, b


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--seconds", type=float, default=0.2)
    args = p.parse_args()
    print(f"# {platform.machine()}, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}; medians of {args.repeats} trials")
    names = codec_names()
    print("| tensor | raw AESGCM enc+dec | " + " | ".join(
        f"{n} enc+dec | {n} / raw" for n in names) + " |")
    print("|---|---|" + "---|---|" * len(names))
    rng = np.random.default_rng(0)
    for label, nbytes in SIZES.items():
        tensor = rng.normal(size=(nbytes // 4 // 256, 256)).astype(np.float32)
        t_raw = per_call(raw_round_trip(tensor.tobytes()), args.seconds, args.repeats)
        cells = [f"{nbytes / t_raw / 1e9:.2f} GB/s"]
        for name in names:
            t = per_call(codec_round_trip(name, tensor), args.seconds, args.repeats)
            cells += [f"{nbytes / t / 1e9:.2f} GB/s", f"{t_raw / t:.0%}"]
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
