"""List the frames of a wire capture like a packet dump: ``python -m protocol.inspect FILE``.

``describe`` is the decoding every output is made from (and what the Wireshark dissector's
fields are tested against): one dict per packet, the header's fields by name, or why the frame
is malformed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from typing import Any

from protocol.capture import Packet, read_packets
from protocol.codecs import codec_by_id
from protocol.errors import FrameError, SplitWireError
from protocol.frame import FIXED_HEADER_SIZE, FrameHeader, MessageKind, decode_frame, decode_header


def header_size(h: FrameHeader) -> int:
    return FIXED_HEADER_SIZE + 4 * len(h.shape) + len(h.sender) + len(h.receiver)


def decode_packet(packet: Packet) -> FrameHeader:
    """The header of a captured frame, checked as strictly as the bytes kept allow.

    A whole frame goes through the decoder; of a kept prefix the header is checked, and its
    payload length must add up to the frame's length on the wire. FrameError if malformed.
    """
    if len(packet.data) == packet.wire_len:
        return decode_frame(packet.data).header
    h = decode_header(packet.data)
    if header_size(h) + h.payload_len != packet.wire_len:
        raise FrameError(f"header says {h.payload_len} payload bytes, the frame on the wire had "
                         f"{packet.wire_len - header_size(h)}")
    return h


def describe(number: int, packet: Packet) -> dict[str, Any]:
    """Everything the capture says about one packet, as plain values."""
    out: dict[str, Any] = {"number": number, "time": packet.time, "interface": packet.interface,
                           "wire_len": packet.wire_len, "kept_len": len(packet.data)}
    try:
        h = decode_packet(packet)
    except FrameError as exc:
        out["malformed"] = str(exc)
        return out
    hlen = header_size(h)
    out.update(
        malformed=None, version=h.version, codec=h.codec, codec_name=codec_by_id(h.codec).name,
        kind=int(h.kind), kind_name=h.kind.name, dtype=int(h.dtype), dtype_name=h.dtype.name,
        ndim=len(h.shape), shape=list(h.shape), sender=h.sender, receiver=h.receiver,
        flags=0, session=h.session, seq=h.seq, payload_len=h.payload_len, header_len=hlen,
        payload_kept=max(0, len(packet.data) - hlen))
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _parser() -> _Parser:
    p = _Parser(prog="python -m protocol.inspect", description=__doc__.splitlines()[0])
    p.add_argument("file", help="a capture written by `python -m actors.simulate --capture FILE` "
                                "(pcapng, or the old SPWCAP02 format)")
    p.add_argument("--limit", type=int, default=None, help="print at most N frames")
    p.add_argument("--kind", default=None, type=str.upper,
                   choices=[k.name for k in MessageKind],
                   help="only frames of this kind (e.g. ACTIVATIONS)")
    p.add_argument("--summary", action="store_true", help="only per-link and per-kind totals")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per frame (JSON Lines); with --summary, the totals")
    return p


class _Totals:
    """What the closing lines report: the frames selected (by --kind, or all) and the file."""

    def __init__(self) -> None:
        self.links: Counter = Counter()
        self.link_bytes: Counter = Counter()
        self.kinds: Counter = Counter()
        self.in_file = self.malformed = self.selected = self.selected_bytes = 0

    def add(self, d: dict[str, Any], selected: bool) -> None:
        self.in_file += 1
        self.malformed += d["malformed"] is not None
        if not selected:
            return
        self.selected += 1
        self.selected_bytes += d["wire_len"]
        if d["malformed"] is None:
            link = (d["sender"], d["receiver"])
            self.links[link] += 1
            self.link_bytes[link] += d["wire_len"]
            self.kinds[d["kind_name"]] += 1

    def to_dict(self, kind: str | None) -> dict[str, Any]:
        return {"kind": kind, "frames": self.selected, "bytes": self.selected_bytes,
                "frames_in_file": self.in_file, "malformed_in_file": self.malformed,
                "links": {f"{s}->{r}": {"frames": n, "bytes": self.link_bytes[(s, r)]}
                          for (s, r), n in sorted(self.links.items())},
                "kinds": dict(sorted(self.kinds.items()))}

    def write(self, out: Any, kind: str | None) -> None:
        if kind is None:
            out.write(f"\n{self.selected} frames, {self.selected_bytes} bytes, "
                      f"{self.malformed} malformed\n")
        else:
            out.write(f"\n{self.selected} {kind} frames, {self.selected_bytes} bytes "
                      f"(the file holds {self.in_file} frames, {self.malformed} malformed)\n")
        for (s, r), n in sorted(self.links.items()):
            out.write(f"  {s} -> {r}: {n} frames, {self.link_bytes[(s, r)]} bytes\n")
        out.write("  kinds: " + ", ".join(f"{k}={n}" for k, n in sorted(self.kinds.items()))
                  + "\n")


def _line(d: dict[str, Any], t0: float) -> str:
    rel = d["time"] - t0
    if d["malformed"] is not None:
        return f"{d['number']:>6} {rel:>10.4f}  malformed frame ({d['wire_len']} B): " \
               f"{d['malformed']}\n"
    shape = "x".join(map(str, d["shape"])) or "scalar"
    kept = "" if d["kept_len"] == d["wire_len"] else f"  (kept {d['kept_len']})"
    return (f"{d['number']:>6} {rel:>10.4f}  {d['sender']:>14} -> {d['receiver']:<14} "
            f"{d['kind_name']:<18} {d['codec_name']:<10} {d['seq']:>6} "
            f"{d['dtype_name'].lower():<7} {shape:<12} {d['wire_len']:>8}{kept}\n")


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 0:
        p.error("--limit must be >= 0")
    out = sys.stdout
    totals = _Totals()
    t0: float | None = None
    printed = 0
    listing = not args.summary
    if listing and not args.json:
        out.write(f"{'#':>6} {'time':>10}  {'sender':>14} -> {'receiver':<14} {'kind':<18} "
                  f"{'codec':<10} {'seq':>6} {'dtype':<7} {'shape':<12} {'bytes':>8}\n")
    try:
        for i, packet in enumerate(read_packets(args.file)):
            t0 = packet.time if t0 is None else t0
            d = describe(i, packet)
            selected = args.kind is None or d.get("kind_name") == args.kind
            totals.add(d, selected)
            if not selected or not listing or (args.limit is not None and printed >= args.limit):
                continue
            out.write(json.dumps(d) + "\n" if args.json else _line(d, t0))
            printed += 1
    except SplitWireError as exc:
        sys.stderr.write(f"python -m protocol.inspect: error: {exc}\n")
        return 2
    if args.json:
        if args.summary:
            out.write(json.dumps(totals.to_dict(args.kind)) + "\n")
    else:
        totals.write(out, args.kind)
    return 0


def _main_cli() -> int:
    try:
        return main()
    except BrokenPipeError:  # `... | head` closed the pipe: not an error for a listing tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(_main_cli())
