"""Wire captures: every intercepted frame, in interception order, as a standard pcapng file.

A capture is what a sniffer saw, in the format Wireshark, tshark, tcpdump, scapy and dpkt read
(docs/wire-format.md has the details, tools/wireshark/splitwire.lua is the dissector):

* one **Enhanced Packet Block** per frame: its original length (the bytes on the wire) and its
  captured bytes (all of them or, as snaplen dictates, a prefix), with a nanosecond timestamp;
  packets appear in timestamp order, which is the order they were intercepted;
* one **Interface Description Block** per tapped link, named after the two parties its frames
  name (``"owner:0 <-> server"``); a frame whose header cannot be parsed goes to ``"unparsed"``;
* link type ``LINKTYPE_USER0`` (147), which the dissector registers for.

Wireshark refuses a captured length above 262,144 bytes on a user link type, so a packet keeps
at most that many bytes of a frame (``MAX_CAPLEN``); its original length is always recorded.

Files are written and read with python-pcapng (Apache-2.0, pure Python, no dependencies): of the
maintained libraries it is the one whose reader exposes each packet's original length and
interface and raises on a damaged file; dpkt's reader keeps only the first interface and drops
the original length, and scapy's reader stops quietly at damage (and scapy is GPL-2.0, a large
dependency for writing one block type). The previous private format (``SPWCAP02``) is still
read, so old captures stay inspectable; it is no longer written.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pcapng import FileScanner, FileWriter, blocks

from protocol.errors import CaptureFileError, FrameError
from protocol.frame import MAX_FRAME_SIZE, decode_header

#: pcapng link type of SplitWire frames: LINKTYPE_USER0 (DLT_USER0), reserved for private use.
LINKTYPE_SPLITWIRE = 147
#: The most bytes of a frame a packet keeps: Wireshark's limit for user link types.
MAX_CAPLEN = 262_144
#: if_tsresol 9: timestamps count nanoseconds since the Unix epoch.
TSRESOL_NS = 9
UNPARSED = "unparsed"
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
LEGACY_MAGIC = b"SPWCAP02"
_LEGACY_RECORD = struct.Struct("<dII")

Record = tuple[float, int, bytes]  # (time, length on the wire, bytes kept)


@dataclass(frozen=True)
class Packet:
    """One captured frame as read back from a file."""

    time: float  # seconds since the Unix epoch
    wire_len: int  # the frame's length on the wire
    data: bytes  # the bytes kept: the whole frame or a prefix
    interface: str  # the tapped link, e.g. "owner:0 <-> server"

    @property
    def record(self) -> Record:
        return (self.time, self.wire_len, self.data)


def link_of(frame: bytes | bytearray | memoryview) -> str:
    """The link a frame crossed, as the two names its header carries ("a <-> b", sorted)."""
    try:
        h = decode_header(frame)
    except FrameError:
        return UNPARSED
    a, b = sorted((h.sender, h.receiver))
    return f"{a} <-> {b}"


def order_records(records: list[Record]) -> None:
    """Sort records into interception order, in place: by capture time, ties kept as they are.

    Taps are fed from many places at once (each party mirrors an exchange when it finishes, and
    on Ray from other processes), so records can arrive later than others stamped after them.
    """
    records.sort(key=_record_time)


def _record_time(record: Record) -> float:
    return record[0]


def _check_record(index: int, t: float, wire_len: int, kept: int, last: float) -> None:
    if kept > wire_len:
        raise CaptureFileError(f"record {index} keeps {kept} bytes of a {wire_len}-byte frame: "
                               "a record cannot keep more bytes than were on the wire")
    if wire_len > MAX_FRAME_SIZE:
        raise CaptureFileError(f"record {index} is a {wire_len}-byte frame, longer than the "
                               f"largest valid frame ({MAX_FRAME_SIZE} bytes)")
    if not (math.isfinite(t) and 0 <= t < 2**64 / 1e9):
        raise CaptureFileError(f"record {index} has an invalid capture time {t!r}")
    if t < last:
        raise CaptureFileError(f"record {index} is stamped {t:.9f}, before the record ahead of "
                               f"it ({last:.9f}): order them first (order_records)")


def write_capture(path: str | Path, records: Iterable[Record]) -> int:
    """Write records (in interception order) to ``path`` as pcapng; returns how many were
    written (every record but empty messages, which carry no frame).

    The file appears only once it is complete: a failure leaves no half-written capture.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".part")
    try:
        with open(partial, "wb") as f:
            n = _write_pcapng(f, records)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return n


def _write_pcapng(f: IO[bytes], records: Iterable[Record]) -> int:
    shb = blocks.SectionHeader(options={"shb_userappl": "SplitWire"})
    writer = FileWriter(f, shb)
    interfaces: dict[str, int] = {}
    last, n = 0.0, 0
    for index, (t, wire_len, frame) in enumerate(records):
        _check_record(index, t, wire_len, len(frame), last)
        last = t
        if not wire_len:
            continue  # an empty message carries no frame, and pcapng writers refuse it
        name = link_of(frame)
        if name not in interfaces:  # an IDB may come anywhere before its first packet
            idb = shb.new_member(
                blocks.InterfaceDescription, link_type=LINKTYPE_SPLITWIRE, snaplen=MAX_CAPLEN,
                options={"if_name": name, "if_tsresol": bytes([TSRESOL_NS]),
                         "if_description": f"SplitWire frames on the link {name}"})
            writer.write_block(idb)
            interfaces[name] = idb.interface_id
        ns = round(t * 1e9)
        writer.write_block(shb.new_member(
            blocks.EnhancedPacket, interface_id=interfaces[name], timestamp_high=ns >> 32,
            timestamp_low=ns & 0xFFFFFFFF, packet_data=bytes(frame[:MAX_CAPLEN]),
            packet_len=wire_len))
        n += 1
    return n


def read_capture(path: str | Path) -> Iterator[Record]:
    """Yield (time, wire length, kept bytes) records; CaptureFileError on anything malformed."""
    for packet in read_packets(path):
        yield packet.record


def read_packets(path: str | Path) -> Iterator[Packet]:
    """Yield every packet of a pcapng capture (or an old SPWCAP02 one), strictly checked."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise CaptureFileError(f"cannot open capture {path}: {exc.strerror}") from None
    with f:
        magic = f.read(len(LEGACY_MAGIC))
        f.seek(0)
        if magic == LEGACY_MAGIC:
            yield from _read_legacy(f, path)
        elif magic[:4] == PCAPNG_MAGIC:
            yield from _read_pcapng(f, path)
        else:
            raise CaptureFileError(f"{path} is not a SplitWire capture (neither pcapng nor "
                                   "SPWCAP02)")


def _next_block(scanner: Iterator[Any], path: str | Path, index: int) -> Any:
    try:
        return next(scanner, None)
    except Exception as exc:  # noqa: BLE001 - the library's parser meets hostile bytes here
        # python-pcapng raises its own PcapngLoadError family, but on some damage also
        # ValueError, KeyError, struct.error or TypeError (seen by fuzzing): all mean the same.
        raise CaptureFileError(f"{path}: damaged pcapng after packet {index} "
                               f"({type(exc).__name__}: {exc})") from None


def _read_pcapng(f: IO[bytes], path: str | Path) -> Iterator[Packet]:
    scanner = iter(FileScanner(f))
    index = 0
    while (block := _next_block(scanner, path, index)) is not None:
        if isinstance(block, blocks.EnhancedPacket):
            yield _packet(block, path, index)
            index += 1
        elif isinstance(block, (blocks.SimplePacket, blocks.ObsoletePacket)):
            raise CaptureFileError(f"{path}: packet {index} is not an Enhanced Packet Block "
                                   "(no interface or timestamp)")
        # Section headers, interfaces, statistics and unknown blocks carry no frame.


def _packet(block: Any, path: str | Path, index: int) -> Packet:
    iface = block.section.interfaces.get(block.interface_id)
    if iface is None:
        raise CaptureFileError(f"{path}: packet {index} names interface {block.interface_id}, "
                               "which no Interface Description Block describes")
    if iface.link_type != LINKTYPE_SPLITWIRE:
        raise CaptureFileError(f"{path}: packet {index} has link type {iface.link_type}, not "
                               f"SplitWire's {LINKTYPE_SPLITWIRE} (LINKTYPE_USER0)")
    try:
        t = float(block.timestamp)
        name = iface.options.get("if_name") or UNPARSED
    except Exception as exc:  # noqa: BLE001 - a malformed tsresol or name option
        raise CaptureFileError(f"{path}: packet {index} has a damaged interface "
                               f"({type(exc).__name__}: {exc})") from None
    data = bytes(block.packet_data)
    wire_len = block.packet_len
    if wire_len < len(data):
        raise CaptureFileError(f"{path}: packet {index} keeps {len(data)} bytes of a "
                               f"{wire_len}-byte frame")
    if wire_len > MAX_FRAME_SIZE:
        raise CaptureFileError(f"{path}: packet {index} is a {wire_len}-byte frame, longer "
                               f"than the largest valid frame ({MAX_FRAME_SIZE} bytes)")
    return Packet(t, wire_len, data, str(name))


def _read_legacy(f: IO[bytes], path: str | Path) -> Iterator[Packet]:
    """SPWCAP02: magic, then records of time:f64le wire_len:u32le kept_len:u32le frame."""
    f.read(len(LEGACY_MAGIC))
    index = 0
    while head := f.read(_LEGACY_RECORD.size):
        if len(head) < _LEGACY_RECORD.size:
            raise CaptureFileError(f"{path}: record {index} header truncated")
        t, wire_len, length = _LEGACY_RECORD.unpack(head)
        if length > wire_len:
            raise CaptureFileError(f"{path}: record {index} claims {length} of {wire_len} bytes")
        if wire_len > MAX_FRAME_SIZE:
            raise CaptureFileError(f"{path}: record {index} is a {wire_len}-byte frame, longer "
                                   f"than the largest valid frame ({MAX_FRAME_SIZE} bytes)")
        frame = f.read(length)
        if len(frame) < length:
            raise CaptureFileError(f"{path}: record {index} truncated")
        yield Packet(t, wire_len, frame, link_of(frame))
        index += 1


def write_legacy_capture(path: str | Path, records: Iterable[Record]) -> int:
    """Write the old SPWCAP02 format: only for tests of the legacy reader."""
    n = 0
    with open(path, "wb") as f:
        f.write(LEGACY_MAGIC)
        for t, wire_len, frame in records:
            f.write(_LEGACY_RECORD.pack(t, wire_len, len(frame)))
            f.write(frame)
            n += 1
    return n
