"""List the frames of a wire capture like a packet dump: ``python -m protocol.inspect FILE``."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

from protocol.capture import read_capture
from protocol.codecs import codec_by_id
from protocol.errors import FrameError, SplitWireError
from protocol.frame import MessageKind, decode_frame, decode_header


def _codec_name(codec_id: int) -> str:
    try:
        return codec_by_id(codec_id).name
    except FrameError:
        return f"codec#{codec_id}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m protocol.inspect", description=__doc__)
    p.add_argument("file", help="a capture written by `python -m actors.simulate --capture FILE`")
    p.add_argument("--limit", type=int, default=None, help="print at most N frames")
    p.add_argument("--kind", default=None, type=str.upper,
                   choices=[k.name for k in MessageKind],
                   help="only frames of this kind (e.g. ACTIVATIONS)")
    p.add_argument("--summary", action="store_true", help="only per-link and per-kind totals")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 0:
        p.error("--limit must be >= 0")
    want = args.kind

    links: Counter = Counter()
    link_bytes: Counter = Counter()
    kinds: Counter = Counter()
    out = sys.stdout
    t0 = None
    printed = bad = total = 0
    if not args.summary:
        out.write(f"{'#':>6} {'time':>10}  {'sender':>14} -> {'receiver':<14} {'kind':<18} "
                  f"{'codec':<10} {'seq':>6} {'dtype':<7} {'shape':<12} {'bytes':>8}\n")
    try:
        for i, (t, wire_len, data) in enumerate(read_capture(args.file)):
            total += 1
            t0 = t if t0 is None else t0
            try:
                # a whole frame is checked strictly; a kept prefix only as far as it goes
                h = decode_frame(data).header if len(data) == wire_len else decode_header(data)
            except FrameError as exc:
                bad += 1
                if not args.summary:
                    out.write(f"{i:>6} {t - t0:>10.4f}  malformed frame ({wire_len} B): {exc}\n")
                continue
            if want and h.kind.name != want:
                continue
            links[(h.sender, h.receiver)] += 1
            link_bytes[(h.sender, h.receiver)] += wire_len
            kinds[h.kind.name] += 1
            if args.summary or (args.limit is not None and printed >= args.limit):
                continue
            shape = "x".join(map(str, h.shape)) or "scalar"
            out.write(f"{i:>6} {t - t0:>10.4f}  {h.sender:>14} -> {h.receiver:<14} "
                      f"{h.kind.name:<18} {_codec_name(h.codec):<10} {h.seq:>6} "
                      f"{h.dtype.name.lower():<7} {shape:<12} {wire_len:>8}"
                      f"{'' if len(data) == wire_len else f'  (kept {len(data)})'}\n")
            printed += 1
    except SplitWireError as exc:
        sys.stderr.write(f"python -m protocol.inspect: error: {exc}\n")
        return 2
    out.write(f"\n{total} frames, {sum(link_bytes.values())} bytes, {bad} malformed\n")
    for (s, r), n in sorted(links.items()):
        out.write(f"  {s} -> {r}: {n} frames, {link_bytes[(s, r)]} bytes\n")
    out.write("  kinds: " + ", ".join(f"{k}={n}" for k, n in sorted(kinds.items())) + "\n")
    return 0


def _main_cli() -> int:
    try:
        return main()
    except BrokenPipeError:  # `... | head` closed the pipe: not an error for a listing tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(_main_cli())
