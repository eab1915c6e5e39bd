"""Capture files (pcapng, and the old SPWCAP02 format) and the packet-dump inspector."""

from __future__ import annotations

import json
import re
import struct
import time

import numpy as np
import pytest

from actors.eavesdropper import Eavesdropper
from actors.wire import LocalTransport, Network
from protocol.capture import (
    LINKTYPE_SPLITWIRE,
    MAX_CAPLEN,
    read_capture,
    read_packets,
    write_capture,
    write_legacy_capture,
)
from protocol.errors import CaptureFileError
from protocol.frame import MAX_FRAME_SIZE, MessageKind
from protocol.inspect import main as inspect_main
from tests.helpers import mlp_net
from tests.test_frame import make_frame


def frames():
    raw = [
        (100.0, make_frame(np.ones((2, 500), np.float32), seq=0)),
        (100.5, make_frame(np.zeros(2, np.int64), kind=MessageKind.LABELS, seq=1)),
        (101.0, make_frame(np.ones((2, 500), np.float32), sender="server",
                           receiver="owner:0", seq=0)),
        (101.25, make_frame(np.ones(3, np.float32), sender="server:0", receiver="server:1",
                            kind=MessageKind.OPEN)),
    ]
    return [(t, len(f), f) for t, f in raw]


@pytest.mark.parametrize("writer", [write_capture, write_legacy_capture])
def test_round_trip(tmp_path, writer):
    path = tmp_path / "c.pcapng"
    assert writer(path, frames()) == 4
    assert list(read_capture(path)) == frames()
    links = [p.interface for p in read_packets(path)]
    assert links == ["owner:0 <-> server"] * 3 + ["server:0 <-> server:1"]


def test_pcapng_layout(tmp_path):
    """The blocks, read by hand from the pcapng spec: SHB, one IDB per link, EPBs."""
    path = tmp_path / "c.pcapng"
    write_capture(path, frames())
    raw = path.read_bytes()
    assert raw[:4] == b"\x0a\x0d\x0d\x0a" and raw[8:12] == b"\x4d\x3c\x2b\x1a"
    off, kinds, links = 0, [], []
    while off < len(raw):
        block_type, length = struct.unpack_from("<II", raw, off)
        kinds.append(block_type)
        if block_type == 1:  # IDB: link type, reserved, snaplen
            links.append(struct.unpack_from("<HHI", raw, off + 8))
        if block_type == 6:  # EPB: interface, ts high, ts low, captured, original
            iface, hi, lo, cap, orig = struct.unpack_from("<5I", raw, off + 8)
            assert cap == orig and ((hi << 32) | lo) % 1000 == 0  # whole frames, exact ns
        off += length
    assert kinds == [0x0A0D0D0A, 1, 6, 6, 6, 1, 6]  # an IDB just before its link's first packet
    assert links == [(LINKTYPE_SPLITWIRE, 0, MAX_CAPLEN)] * 2


def test_frames_longer_than_wiresharks_limit_keep_a_prefix(tmp_path):
    big = make_frame(np.ones(100_000, np.float32), kind=MessageKind.WEIGHTS)
    path = tmp_path / "c.pcapng"
    write_capture(path, [(5.0, len(big), big)])
    (packet,) = read_packets(path)
    assert packet.wire_len == len(big) > MAX_CAPLEN and packet.data == big[:MAX_CAPLEN]


@pytest.mark.parametrize("damage", ["magic", "cut-header", "cut-frame", "block-length",
                                    "caplen-over-orig", "oversized-orig", "link-type",
                                    "unknown-interface"])
def test_damaged_pcapng_files_raise(tmp_path, damage):
    path = tmp_path / "c.pcapng"
    write_capture(path, frames()[:1])
    raw = bytearray(path.read_bytes())
    idb = struct.unpack_from("<I", raw, 4)[0]  # the IDB follows the SHB
    epb = idb + struct.unpack_from("<I", raw, idb + 4)[0]
    if damage == "magic":
        raw[:4] = b"PCAP"
    elif damage == "cut-header":
        raw = raw[:20]
    elif damage == "cut-frame":
        raw = raw[:-10]
    elif damage == "block-length":
        struct.pack_into("<I", raw, len(raw) - 4, 12)
    elif damage == "caplen-over-orig":
        struct.pack_into("<I", raw, epb + 24, 10)  # original length below the captured one
    elif damage == "oversized-orig":
        struct.pack_into("<I", raw, epb + 24, MAX_FRAME_SIZE + 1)
    elif damage == "link-type":
        struct.pack_into("<H", raw, idb + 8, 1)  # Ethernet
    else:
        struct.pack_into("<I", raw, epb + 8, 5)
    path.write_bytes(bytes(raw))
    with pytest.raises(CaptureFileError):
        list(read_capture(path))


@pytest.mark.parametrize("damage", ["cut-header", "cut-frame", "huge-length", "oversized-wire"])
def test_damaged_legacy_files_raise(tmp_path, damage):
    path = tmp_path / "c.cap"
    write_legacy_capture(path, frames())
    raw = bytearray(path.read_bytes())
    if damage == "cut-header":
        raw = raw[: 8 + 5]
    elif damage == "cut-frame":
        raw = raw[:-10]
    elif damage == "huge-length":
        raw[8 + 12:8 + 16] = (2**31).to_bytes(4, "little")
    else:
        raw[8 + 8:8 + 12] = (MAX_FRAME_SIZE + 1).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(CaptureFileError):
        list(read_capture(path))


def test_oversized_records_raise_instead_of_listing_as_malformed(tmp_path, capsys):
    """A record claiming a frame longer than any valid one is damage (defect 7)."""
    t, _, frame = frames()[0]
    path = tmp_path / "c.cap"
    write_legacy_capture(path, [(t, MAX_FRAME_SIZE + 1, frame[:200])])
    with pytest.raises(CaptureFileError, match="longer than the largest valid frame"):
        list(read_capture(path))
    assert inspect_main([str(path)]) == 2
    assert "largest valid frame" in capsys.readouterr().err
    with pytest.raises(CaptureFileError, match="largest valid frame"):
        write_capture(tmp_path / "w.pcapng", [(t, MAX_FRAME_SIZE + 1, frame[:200])])
    assert not list(tmp_path.glob("w.pcapng*"))  # no half-written file is left


def test_writer_refuses_impossible_records(tmp_path):
    t, n, frame = frames()[0]
    with pytest.raises(CaptureFileError, match="more bytes than were on the wire"):
        write_capture(tmp_path / "c.pcapng", [(t, 10, frame)])
    with pytest.raises(CaptureFileError, match="before the record ahead"):
        write_capture(tmp_path / "c.pcapng", [(t, n, frame), (t - 1, n, frame)])
    with pytest.raises(CaptureFileError, match="capture time"):
        write_capture(tmp_path / "c.pcapng", [(float("nan"), n, frame)])


def test_inspect_lists_frames(tmp_path, capsys):
    path = tmp_path / "c.pcapng"
    write_capture(path, frames())
    assert inspect_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "owner:0 -> server" in out and "server -> owner:0" in out
    assert "ACTIVATIONS" in out and "LABELS" in out and "plaintext" in out
    assert "\n4 frames, " in out


def test_inspect_kind_totals_count_only_that_kind(tmp_path, capsys):
    """The closing line's frames and bytes are of the same frames (defect 6)."""
    path = tmp_path / "c.pcapng"
    recs = [*frames(), (102.0, 7, b"garbage")]
    write_capture(path, recs)
    assert inspect_main([str(path), "--kind", "activations"]) == 0
    out = capsys.readouterr().out
    listed = [line for line in out.splitlines() if " -> " in line and " ACTIVATIONS " in line]
    total = re.search(r"^(\d+) ACTIVATIONS frames, (\d+) bytes \(the file holds (\d+) frames, "
                      r"(\d+) malformed\)$", out, re.M)
    assert total, out
    frames_, bytes_, in_file, bad = map(int, total.groups())
    assert frames_ == len(listed) == 2 and in_file == 5 and bad == 1
    assert bytes_ == sum(n for _, n, f in recs if f[6:7] == bytes([MessageKind.ACTIVATIONS]))
    assert inspect_main([str(path), "--kind", "labels", "--summary"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^1 LABELS frames, {frames()[1][1]} bytes ", out, re.M)
    assert "LABELS=1" in out and "ACTIVATIONS" not in out


def test_inspect_json(tmp_path, capsys):
    path = tmp_path / "c.pcapng"
    write_capture(path, [*frames(), (102.0, 7, b"garbage")])
    assert inspect_main([str(path), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 5 and rows[4]["malformed"] and rows[0]["malformed"] is None
    assert rows[1]["kind_name"] == "LABELS" and rows[1]["shape"] == [2]
    assert rows[3]["interface"] == "server:0 <-> server:1" and rows[3]["codec_name"] == "plaintext"
    assert inspect_main([str(path), "--json", "--summary", "--kind", "ACTIVATIONS"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 2 and summary["frames_in_file"] == 5


def test_inspect_reports_malformed_frames_and_bad_files(tmp_path, capsys):
    path = tmp_path / "c.pcapng"
    write_capture(path, [*frames(), (102.0, 7, b"garbage")])
    assert inspect_main([str(path)]) == 0
    assert "1 malformed" in capsys.readouterr().out
    assert inspect_main([str(tmp_path / "missing.cap")]) == 2
    assert "cannot open" in capsys.readouterr().err
    (tmp_path / "bad.cap").write_bytes(b"hello world")
    assert inspect_main([str(tmp_path / "bad.cap")]) == 2
    for bad in (["--limit", "-1"], ["--kind", "bogus"]):
        with pytest.raises(SystemExit) as exc:
            inspect_main([str(path), *bad])
        assert exc.value.code == 2


def test_snapped_records_list_their_wire_length(tmp_path, capsys):
    t, n, frame = frames()[0]
    path = tmp_path / "c.pcapng"
    write_capture(path, [(t, n, frame[:200]), (t + 1, n + 4, frame[:200])])
    (_, wire_len, kept), _ = list(read_capture(path))
    assert wire_len == n and kept == frame[:200]
    assert inspect_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "ACTIVATIONS" in out and f"{n}" in out and "(kept 200)" in out
    # a prefix whose header does not add up to the frame's length on the wire is malformed
    assert "1 malformed" in out and "the frame on the wire had" in out


# --- interception order (defect 5) ---------------------------------------------------------
class _Relay:
    """A party that, before answering, holds an exchange of its own with a third party."""

    def __init__(self, network: Network, peer: str) -> None:
        self.network, self.peer = network, peer

    def handle(self, frames: list[bytes]) -> list[bytes]:
        time.sleep(0.002)
        self.network.exchange(self.peer, [make_frame(np.ones(1, np.float32), sender="b",
                                                     receiver="c", kind=MessageKind.OPEN)])
        time.sleep(0.002)
        return [make_frame(np.ones(1, np.float32), sender="b", receiver="a",
                           kind=MessageKind.GRADIENTS)]


class _Echo:
    def handle(self, frames: list[bytes]) -> list[bytes]:
        time.sleep(0.002)
        return [make_frame(np.ones(1, np.float32), sender="c", receiver="b",
                           kind=MessageKind.OPEN)]


def test_the_eavesdroppers_capture_is_in_interception_order(tmp_path):
    """a -> b is sent first, but b's own exchange with c finishes (and is mirrored) before it:
    the capture must still list a -> b first, and no timestamp may go backwards."""
    transport = LocalTransport()
    spy = Eavesdropper("eavesdropper", codec="plaintext", session=1, net=mlp_net(0),
                       network=Network("eavesdropper", transport))
    transport.add_tap("eavesdropper", spy.intercept)
    taps = ["eavesdropper"]
    transport.add_party("b", _Relay(Network("b", transport, taps), "c"))
    transport.add_party("c", _Echo())
    Network("a", transport, taps).exchange(
        "b", [make_frame(np.ones(1, np.float32), sender="a", receiver="b")])
    records = spy.capture()
    times = [t for t, _, _ in records]
    assert times == sorted(times)
    kinds = [MessageKind(f[6]).name for _, _, f in records]  # byte 6 of a frame: its kind
    assert kinds == ["ACTIVATIONS", "OPEN", "OPEN", "GRADIENTS"]
    path = tmp_path / "c.pcapng"
    assert write_capture(path, records) == 4
    assert [p.time for p in read_packets(path)] == sorted(p.time for p in read_packets(path))
