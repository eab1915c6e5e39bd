"""Real captures from short runs, read by real tools: tshark with the shipped dissector, and
python-pcapng's own reader. Also checks docs/wire-format.md against what crossed the wire."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pcapng import FileScanner, blocks

from actors.lab import FULL_KINDS
from protocol.capture import (
    LINKTYPE_SPLITWIRE,
    MAX_CAPLEN,
    Packet,
    link_of,
    read_packets,
    write_capture,
)
from protocol.codecs import codec_names, get_codec
from protocol.frame import DType, FrameHeader, MessageKind, encode_header
from protocol.inspect import describe
from protocol.inspect import main as inspect_main
from tests.wire_runs import captured_run

ROOT = Path(__file__).resolve().parent.parent
DISSECTOR = ROOT / "tools" / "wireshark" / "splitwire.lua"
DOC = (ROOT / "docs" / "wire-format.md").read_text()
FIELDS = ["frame.number", "frame.time_epoch", "frame.len", "frame.cap_len",
          "frame.interface_name", "splitwire.version", "splitwire.codec",
          "splitwire.codec_name", "splitwire.kind", "splitwire.kind_name", "splitwire.dtype",
          "splitwire.dtype_name", "splitwire.ndim", "splitwire.dim", "splitwire.shape",
          "splitwire.sender", "splitwire.receiver", "splitwire.flags", "splitwire.session",
          "splitwire.seq", "splitwire.payload_len", "splitwire.payload_kept",
          "splitwire.payload", "splitwire.malformed"]


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    """An encrypted run, and a secret-shared one whose colluding servers pool their shares."""
    where = tmp_path_factory.mktemp("captures")
    runs = {}
    for protocol, adversaries in (("encrypted", ("eavesdropper",)),
                                  ("secret-shared", ("eavesdropper", "colluding-servers"))):
        path = where / f"wire-{protocol}.pcapng"
        runs[protocol] = (path, captured_run(protocol, path, adversaries))
    return runs


def tshark() -> str:
    found = shutil.which("tshark")
    if found:
        return found
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail("tshark is not installed but CI is set: .ci/run must install it "
                    "(apt-get install -y tshark)")
    pytest.skip("tshark is not installed (apt-get install tshark): the Wireshark dissector is "
                "not checked against the real tool here")


def tshark_rows(path: Path) -> list[dict[str, str]]:
    cmd = [tshark(), "-X", f"lua_script:{DISSECTOR}", "-r", str(path), "-T", "fields",
           "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,", "-E", "quote=n"]
    for field in FIELDS:
        cmd += ["-e", field]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Lua" not in proc.stderr and "error" not in proc.stderr.lower(), proc.stderr
    rows = [dict(zip(FIELDS, line.split("\t"), strict=True))
            for line in proc.stdout.splitlines()]
    return rows


def expected(number: int, packet: Packet) -> dict[str, str]:
    """protocol.inspect's decoding of a packet, spelled as tshark prints each field."""
    d = describe(number, packet)
    row = {"frame.number": str(number + 1), "frame.len": str(d["wire_len"]),
           "frame.cap_len": str(d["kept_len"]), "frame.interface_name": d["interface"]}
    if d["malformed"] is not None:
        return row
    hlen = d["header_len"]
    row.update({
        "splitwire.version": str(d["version"]), "splitwire.codec": str(d["codec"]),
        "splitwire.codec_name": d["codec_name"], "splitwire.kind": str(d["kind"]),
        "splitwire.kind_name": d["kind_name"], "splitwire.dtype": str(d["dtype"]),
        "splitwire.dtype_name": d["dtype_name"], "splitwire.ndim": str(d["ndim"]),
        "splitwire.dim": ",".join(map(str, d["shape"])),
        "splitwire.shape": "x".join(map(str, d["shape"])) or "scalar",
        "splitwire.sender": d["sender"], "splitwire.receiver": d["receiver"],
        "splitwire.flags": "0x00", "splitwire.session": str(d["session"]),
        "splitwire.seq": str(d["seq"]), "splitwire.payload_len": str(d["payload_len"]),
        "splitwire.payload_kept": str(d["payload_kept"]),
        "splitwire.payload": packet.data[hlen:].hex(), "splitwire.malformed": "",
    })
    return row


def assert_tshark_agrees(path: Path) -> int:
    packets = list(read_packets(path))
    rows = tshark_rows(path)
    assert len(rows) == len(packets) > 0
    for i, (row, packet) in enumerate(zip(rows, packets, strict=True)):
        want = expected(i, packet)
        got = {k: row[k] for k in want}
        assert got == want, f"frame {i + 1}"
        assert abs(float(row["frame.time_epoch"]) - packet.time) < 2e-6
        malformed = describe(i, packet)["malformed"] is not None
        assert (row["splitwire.malformed"] != "") == malformed, f"frame {i + 1}"
    return len(rows)


@pytest.mark.e2e
@pytest.mark.parametrize("protocol", ["encrypted", "secret-shared"])
def test_tshark_decodes_every_frame_as_inspect_does(captures, protocol):
    path, records = captures[protocol]
    assert assert_tshark_agrees(path) == len(records)


def forged(kind=MessageKind.CONTROL, dtype=DType.FLOAT32, shape=(1,), codec=0, sender="owner:0",
           receiver="server", seq=3, payload=b"\0\0\0\0"):
    h = FrameHeader(codec=codec, kind=kind, dtype=dtype, shape=shape, sender=sender,
                    receiver=receiver, session=2**64 - 1, seq=seq, payload_len=len(payload))
    return encode_header(h) + payload


def odd_frames() -> list[bytes]:
    """Every kind, dtype and codec once, a scalar, and one frame for each way to be malformed."""
    good = [forged(kind=k, seq=int(k)) for k in MessageKind]
    good += [forged(dtype=d, payload=bytes(np.dtype(DType_NP[d]).itemsize)) for d in DType]
    good += [forged(codec=get_codec(n).codec_id) for n in codec_names(include_hidden=True)]
    good.append(forged(shape=(), payload=b"\1\2\3\4"))
    base = forged(shape=(2, 3), payload=bytes(24))
    bad = []
    for offset, value in [(0, 0x58), (4, 2), (5, 9), (6, 0), (7, 77), (8, 9), (9, 0), (10, 33),
                          (11, 1)]:
        raw = bytearray(base)
        raw[offset] = value
        bad.append(bytes(raw))
    bad.append(base[:20])  # shorter than the fixed header
    bad.append(base[:45])  # header cut
    bad.append(base[:-1])  # truncated payload
    bad.append(base + b"\0")  # trailing byte
    bad.append(forged(sender="owner:0").replace(b"owner:0", b"owner:\n", 1))  # name syntax
    huge = bytearray(forged(shape=(70000, 70000), payload=b""))
    bad.append(bytes(huge))  # a shape no payload can carry
    return good + bad


DType_NP = {DType.FLOAT32: "<f4", DType.FLOAT64: "<f8", DType.INT64: "<i8",
            DType.UINT64: "<u8", DType.UINT8: "u1", DType.INT32: "<i4"}


def test_tshark_names_every_kind_and_marks_malformed_frames(tmp_path):
    frames = odd_frames()
    big = forged(kind=MessageKind.WEIGHTS, shape=(100_000,), payload=bytes(400_000))
    records = [(1.8e9 + i / 1000, len(f), f) for i, f in enumerate(frames)]
    records.append((1.8e9 + 1, len(big), big))  # longer than MAX_CAPLEN: kept as a prefix
    records.append((1.8e9 + 2, len(big), big[:300]))  # snapped by a snaplen
    records.append((1.8e9 + 3, len(big) - 1, big[:300]))  # wire length disagrees with header
    path = tmp_path / "odd.pcapng"
    write_capture(path, records)
    verdicts = [describe(i, p)["malformed"] is not None for i, p in enumerate(read_packets(path))]
    assert verdicts.count(True) == 16 and not any(verdicts[:len(MessageKind)])
    assert assert_tshark_agrees(path) == len(records)


def test_tshark_and_inspect_agree_on_mutated_frames(tmp_path):
    """The fuzzer's mutants, an empty packet and a lone byte: the dissector refuses exactly
    what the decoder refuses, and decodes the rest the same."""
    from tests.test_fuzz_wire import mutate, sample_frames

    rng = random.Random(5)
    seeds = [*sample_frames(), *odd_frames()[:5]]
    mutants = [b"S", b"SPWF"] + [mutate(rng, rng.choice(seeds)) for _ in range(1500)]
    mutants = [m for m in mutants if m]
    path = tmp_path / "mutants.pcapng"
    records = [(1.8e9 + i / 1e4, len(m), m) for i, m in enumerate([b"", *mutants])]
    assert write_capture(path, records) == len(mutants)  # an empty message is not a packet
    assert assert_tshark_agrees(path) == len(mutants)


@pytest.mark.e2e
def test_the_library_reads_the_capture(captures):
    path, records = captures["encrypted"]
    with open(path, "rb") as f:
        found = list(FileScanner(f))
    sections = [b for b in found if isinstance(b, blocks.SectionHeader)]
    idbs = [b for b in found if isinstance(b, blocks.InterfaceDescription)]
    epbs = [b for b in found if isinstance(b, blocks.EnhancedPacket)]
    assert len(sections) == 1 and len(epbs) == len(records)
    assert {b.link_type for b in idbs} == {LINKTYPE_SPLITWIRE}
    names = [b.options["if_name"] for b in idbs]
    assert names == ["owner:0 <-> server"]  # one interface per tapped link
    times = [b.timestamp for b in epbs]
    assert times == sorted(times)
    for epb, (t, wire_len, data) in zip(epbs, records, strict=True):
        assert epb.packet_len == wire_len and epb.captured_len == min(len(data), MAX_CAPLEN)
        assert epb.packet_data == data[:MAX_CAPLEN] and abs(epb.timestamp - t) < 1e-6
        assert epb.interface.options["if_name"] == link_of(data)
        assert epb.interface.timestamp_resolution == 1e-9
    # snaplen at work: big training frames kept as a prefix, inference frames whole up to the
    # most a pcapng packet keeps for Wireshark
    for e in epbs:
        if MessageKind(e.packet_data[6]) in FULL_KINDS:
            assert e.captured_len == min(e.packet_len, MAX_CAPLEN)
        else:
            assert e.captured_len == min(e.packet_len, 512)
    assert any(e.captured_len == MAX_CAPLEN < e.packet_len for e in epbs)
    kinds = {MessageKind(e.packet_data[6]) for e in epbs if e.captured_len == e.packet_len}
    assert MessageKind.PREDICTIONS in kinds and MessageKind.HANDSHAKE in kinds


@pytest.mark.e2e
def test_secret_shared_capture_is_in_interception_order(captures):
    path, records = captures["secret-shared"]
    times = [t for t, _, _ in records]
    # 141 frames in this short run (one OPEN frame a round each way, the owner's and the
    # dealer's): enough for the order to mean something
    assert len(times) > 100 and times == sorted(times)
    assert [p.time for p in read_packets(path)] == sorted(p.time for p in read_packets(path))
    links = {p.interface for p in read_packets(path)}
    assert {"owner:0 <-> server:0", "server:0 <-> server:1", "dealer <-> server:1"} <= links


# --- docs/wire-format.md against what crossed the wire --------------------------------------
def _doc_block_after(marker: str) -> list[str]:
    rest = DOC[DOC.index(marker):]
    block = rest[rest.index("```") + 3:]
    return block[block.index("\n") + 1:block.index("```")].splitlines()


@pytest.mark.e2e
def test_the_docs_inspect_example_is_a_real_capture(captures, capsys):
    path, _ = captures["encrypted"]
    example = _doc_block_after("`python -m protocol.inspect FILE` lists it")
    assert inspect_main([str(path), "--limit", str(len(example) - 1)]) == 0
    real = capsys.readouterr().out.splitlines()
    assert real[0] == example[0]  # the column header
    drop_time = re.compile(r"^(\s*\d+)\s+[\d.]+")
    for doc_line, real_line in zip(example[1:], real[1:len(example)], strict=True):
        assert drop_time.sub(r"\1", doc_line) == drop_time.sub(r"\1", real_line)


def _doc_links(kind: str) -> list[tuple[str, str]]:
    row = re.search(rf"^\| \d+ \| `{kind}` \| ([^|]+) \|", DOC, re.M)
    assert row, f"no row for {kind} in the kinds table"
    pairs = []
    for part in row.group(1).split(","):
        ends = re.split(r"\s*(→|↔)\s*", part.strip())
        if len(ends) == 1:  # "various": no direction given
            ends = [ends[0], "→", ends[0]]
        a, arrow, b = ends[:3]
        pairs.append((a, b))
        if arrow == "↔":
            pairs.append((b, a))
    return pairs


def _fits(pattern: str, name: str) -> bool:
    if pattern in ("any", "anyone", "querier", "various"):
        return True
    if pattern == "owner":
        return name.startswith("owner:")
    if pattern == "server:i":
        return name in ("server:0", "server:1")
    return pattern == name


@pytest.mark.e2e
def test_the_kinds_table_names_every_link_each_kind_crossed(captures):
    seen = set()
    for protocol in captures:
        for p in read_packets(captures[protocol][0]):
            d = describe(0, p)
            if d["malformed"] is None:
                seen.add((d["kind_name"], d["sender"], d["receiver"]))
    assert ("INFER_SHARE", "server:1", "server:0") in seen  # the colluding servers' pooling
    for kind, sender, receiver in sorted(seen):
        pairs = _doc_links(kind)
        assert any(_fits(a, sender) and _fits(b, receiver) for a, b in pairs), \
            f"docs: {kind} {sender} -> {receiver} is not in the table ({pairs})"


def test_the_docs_name_the_kinds_kept_whole():
    sentence = re.search(r"keeps every byte of ([^.]+)\.", DOC)
    assert sentence, "docs must say which kinds the eavesdropper keeps whole"
    named = set(re.findall(r"`([A-Z_]+)`", sentence.group(1)))
    assert named == {k.name for k in FULL_KINDS}
    assert re.search(r"`LOGITS_SHARE`\s+included, is kept as its first `--snaplen` bytes", DOC)


@pytest.mark.e2e
def test_logits_shares_are_snapped_as_the_docs_say(captures):
    path, _ = captures["secret-shared"]
    shares = [p for p in read_packets(path) if p.data[6] == MessageKind.LOGITS_SHARE]
    assert shares and all(len(p.data) == 512 < p.wire_len for p in shares)


def test_the_docs_describe_pcapng_and_the_dissector():
    assert "pcapng" in DOC and f"LINKTYPE_USER0 ({LINKTYPE_SPLITWIRE})" in DOC
    assert "tools/wireshark/splitwire.lua" in DOC and DISSECTOR.exists()
    assert f"{MAX_CAPLEN:,}" in DOC and "STEP" in _doc_block_after("lists it like a packet")[3]
