"""Wire captures: every intercepted frame, in order, in a length-prefixed binary file.

Format (documented in docs/wire-format.md):

    file   := MAGIC record*
    MAGIC  := b"SPWCAP01"                      (8 bytes; the two digits are the format version)
    record := time:f64le  length:u32le  frame:length bytes

``time`` is the capture timestamp in seconds since the Unix epoch; ``frame`` is the exact bytes
that crossed the wire (decode with ``protocol.frame.decode_frame``). Like a pcap file it holds
what a sniffer saw, so it never contains anything that was not on the wire: no keys.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from protocol.errors import CaptureFileError
from protocol.frame import MAX_PAYLOAD

MAGIC = b"SPWCAP01"
_RECORD = struct.Struct("<dI")
#: A record longer than the largest valid frame can only be corruption.
MAX_RECORD = MAX_PAYLOAD + 4096


def write_capture(path: str | Path, records: Iterable[tuple[float, bytes]]) -> int:
    """Write records to ``path``; returns how many were written."""
    n = 0
    with open(path, "wb") as f:
        f.write(MAGIC)
        for t, frame in records:
            f.write(_RECORD.pack(t, len(frame)))
            f.write(frame)
            n += 1
    return n


def read_capture(path: str | Path) -> Iterator[tuple[float, bytes]]:
    """Yield (time, frame bytes) records; CaptureFileError on anything malformed."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise CaptureFileError(f"cannot open capture {path}: {exc.strerror}") from None
    with f:
        if f.read(len(MAGIC)) != MAGIC:
            raise CaptureFileError(f"{path} is not a SplitWire capture (bad magic)")
        index = 0
        while True:
            head = f.read(_RECORD.size)
            if not head:
                return
            if len(head) < _RECORD.size:
                raise CaptureFileError(f"{path}: record {index} header truncated")
            t, length = _RECORD.unpack(head)
            if length > MAX_RECORD:
                raise CaptureFileError(f"{path}: record {index} claims {length} bytes")
            frame = f.read(length)
            if len(frame) < length:
                raise CaptureFileError(f"{path}: record {index} truncated")
            yield t, frame
            index += 1
