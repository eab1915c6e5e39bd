"""Wire captures: every intercepted frame, in order, in a length-prefixed binary file.

Format (documented in docs/wire-format.md):

    file   := MAGIC record*
    MAGIC  := b"SPWCAP02"                      (8 bytes; the two digits are the format version)
    record := time:f64le  wire_len:u32le  kept_len:u32le  frame:kept_len bytes

``time`` is the capture timestamp in seconds since the Unix epoch; ``frame`` is the bytes that
crossed the wire, all ``wire_len`` of them or, as pcap's snaplen does, the first ``kept_len``
(decode a whole frame with ``protocol.frame.decode_frame``, a kept prefix's header with
``decode_header``). Like a pcap file it holds what a sniffer saw, so it never contains anything
that was not on the wire: no keys.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from protocol.errors import CaptureFileError
from protocol.frame import MAX_PAYLOAD

MAGIC = b"SPWCAP02"
_RECORD = struct.Struct("<dII")
#: A record longer than the largest valid frame can only be corruption.
MAX_RECORD = MAX_PAYLOAD + 4096


Record = tuple[float, int, bytes]  # (time, length on the wire, bytes kept)


def write_capture(path: str | Path, records: Iterable[Record]) -> int:
    """Write records to ``path``; returns how many were written."""
    n = 0
    with open(path, "wb") as f:
        f.write(MAGIC)
        for t, wire_len, frame in records:
            if len(frame) > wire_len:
                raise CaptureFileError("a record cannot keep more bytes than were on the wire")
            f.write(_RECORD.pack(t, wire_len, len(frame)))
            f.write(frame)
            n += 1
    return n


def read_capture(path: str | Path) -> Iterator[Record]:
    """Yield (time, wire length, kept bytes) records; CaptureFileError on anything malformed."""
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
            t, wire_len, length = _RECORD.unpack(head)
            if length > MAX_RECORD or length > wire_len:
                raise CaptureFileError(f"{path}: record {index} claims {length} of {wire_len} "
                                       "bytes")
            frame = f.read(length)
            if len(frame) < length:
                raise CaptureFileError(f"{path}: record {index} truncated")
            yield t, wire_len, frame
            index += 1
