"""A seeded mutation fuzzer over the three places hostile bytes enter: the frame decoder, an
endpoint with an established encrypted link, and the capture reader.

Each target gets a fixed number of mutants (seeded, so a failure reproduces) and a time cap of a
few seconds. What must hold: only the project's typed errors come out, no mutant of a sealed
frame is ever accepted, and memory does not grow with the number of mutants.
"""

from __future__ import annotations

import random
import struct
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from protocol.capture import read_packets, write_capture, write_legacy_capture
from protocol.errors import CaptureFileError, FrameError
from protocol.frame import MessageKind, decode_frame, decode_header
from protocol.inspect import describe
from tests.test_encrypted import handshake, parties
from tests.test_frame import make_frame

INTERESTING = [0, 1, 2, 7, 8, 9, 32, 33, 0x7F, 0x80, 0xFE, 0xFF]
INTERESTING_U32 = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 262_144, 64 * 1024 * 1024 + 1]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to three random edits: bit flips, byte and word overwrites, cuts, splices."""
    raw = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(8)
        pos = rng.randrange(len(raw)) if raw else 0
        if op == 0 and raw:
            raw[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and raw:
            raw[pos] = rng.choice(INTERESTING)
        elif op == 2 and len(raw) >= 4:
            at = rng.randrange(len(raw) - 3)
            struct.pack_into("<I", raw, at, rng.choice(INTERESTING_U32))
        elif op == 3:
            del raw[pos:]
        elif op == 4:
            raw += rng.randbytes(rng.randint(1, 16))
        elif op == 5:
            raw.insert(pos, rng.randrange(256))
        elif op == 6 and raw:
            del raw[pos]
        else:
            end = min(len(raw), pos + rng.randint(1, 8))
            raw[pos:end] = rng.randbytes(end - pos)
    return bytes(raw)


def fuzz(seed: int, seeds: list[bytes], check: Callable[[bytes], None], count: int,
         seconds: float = 3.0) -> int:
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    done = 0
    while done < count and time.monotonic() < deadline:
        check(mutate(rng, rng.choice(seeds)))
        done += 1
    return done


def sample_frames() -> list[bytes]:
    return [
        make_frame(np.ones((4, 5), np.float32)),
        make_frame(np.arange(6, dtype=np.int64), kind=MessageKind.LABELS, sender="server:1",
                   receiver="owner:12"),
        make_frame(np.array(3.5, np.float64), kind=MessageKind.CONTROL),
        make_frame(np.zeros((2, 0, 3), np.uint64), kind=MessageKind.OPEN),
    ]


def test_the_decoder_raises_only_frame_errors():
    outcomes = {"ok": 0, "refused": 0}

    def check(data: bytes) -> None:
        for parse in (decode_frame, decode_header):
            try:
                parse(data)
                outcomes["ok"] += 1
            except FrameError:
                outcomes["refused"] += 1

    n = fuzz(1, sample_frames(), check, count=30_000)
    assert n >= 2_000 and outcomes["refused"] > n  # most mutants break something
    assert outcomes["ok"] > 0  # and some (payload bytes) do not: the fuzzer reaches past them


def test_no_mutant_is_accepted_on_an_encrypted_link():
    eps = parties("owner:0", "server")
    a, b = eps["owner:0"], eps["server"]
    handshake(a, b)
    sealed = [a.encode("server", MessageKind.ACTIVATIONS, np.ones((2, 8), np.float32)),
              a.encode("server", MessageKind.LABELS, np.arange(2, dtype=np.int64)),
              a.encode("server", MessageKind.CONTROL, np.array([1.5], np.float32))]
    # the frames themselves are fine (accepted once), so every mutant is a near miss
    for frame in sealed:
        assert b.accept(frame) is not None
    sealed.append(b.encode("owner:0", MessageKind.GRADIENTS, np.ones((2, 8), np.float32)))
    sealed = [bytes(f) for f in sealed]
    seen = set(sealed)
    errors: dict[str, int] = {}

    def check(data: bytes) -> None:
        if data in seen:
            return
        try:
            b.decode(data)
        except FrameError as exc:  # CodecError is a FrameError
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        raise AssertionError(f"a mutant was accepted: {data.hex()}")

    fuzz(2, sealed, check, count=2_000)  # warm caches before measuring
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    n = fuzz(3, sealed, check, count=20_000)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert n >= 1_000 and set(errors) <= {"FrameError", "CodecError"}
    assert errors.get("CodecError", 0) > 0  # mutants reached authentication, and failed it
    assert list(b._windows) == ["owner:0"]  # no forged sender got a window
    assert grown < 256 * 1024, f"heap grew {grown} bytes over {n} mutants"
    # and the link still works
    assert b.accept(a.encode("server", MessageKind.CONTROL, np.array([2.0], np.float32)))


def test_the_capture_reader_raises_only_capture_errors(tmp_path):
    frames = sample_frames()
    records = [(1.7e9 + i, len(f), f) for i, f in enumerate(frames)]
    records.append((1.7e9 + 9, len(frames[0]) + 100, frames[0][:40]))  # a kept prefix
    files = []
    for name, writer in (("c.pcapng", write_capture), ("c.cap", write_legacy_capture)):
        writer(tmp_path / name, records)
        files.append((tmp_path / name).read_bytes())
    path = tmp_path / "mutant"
    results = {"read": 0, "refused": 0}

    def check(data: bytes) -> None:
        path.write_bytes(data)
        try:
            for i, packet in enumerate(read_packets(path)):
                describe(i, packet)  # the inspector's decoding never raises on content
            results["read"] += 1
        except CaptureFileError:
            results["refused"] += 1

    n = fuzz(4, files, check, count=3_000, seconds=4.0)
    assert n >= 50 and results["refused"] > 0 and results["read"] > 0
