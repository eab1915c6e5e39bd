"""Capture files and the packet-dump inspector."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.capture import MAGIC, read_capture, write_capture
from protocol.errors import CaptureFileError
from protocol.frame import MessageKind
from protocol.inspect import main as inspect_main
from tests.test_frame import make_frame


def frames():
    raw = [
        (100.0, make_frame(np.ones((2, 500), np.float32), seq=0)),
        (100.5, make_frame(np.zeros(2, np.int64), kind=MessageKind.LABELS, seq=1)),
        (101.0, make_frame(np.ones((2, 500), np.float32), sender="server",
                           receiver="owner:0", seq=0)),
    ]
    return [(t, len(f), f) for t, f in raw]


def test_round_trip(tmp_path):
    path = tmp_path / "c.cap"
    assert write_capture(path, frames()) == 3
    assert list(read_capture(path)) == frames()


@pytest.mark.parametrize("damage", ["magic", "cut-header", "cut-frame", "huge-length"])
def test_damaged_files_raise(tmp_path, damage):
    path = tmp_path / "c.cap"
    write_capture(path, frames())
    raw = bytearray(path.read_bytes())
    if damage == "magic":
        raw[:8] = b"PCAPFILE"
    elif damage == "cut-header":
        raw = raw[: len(MAGIC) + 5]
    elif damage == "cut-frame":
        raw = raw[:-10]
    else:
        raw[len(MAGIC) + 12:len(MAGIC) + 16] = (2**31).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(CaptureFileError):
        list(read_capture(path))


def test_inspect_lists_frames(tmp_path, capsys):
    path = tmp_path / "c.cap"
    write_capture(path, frames())
    assert inspect_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "owner:0 -> server" in out and "server -> owner:0" in out
    assert "ACTIVATIONS" in out and "LABELS" in out and "plaintext" in out
    assert "3 frames" in out
    assert inspect_main([str(path), "--kind", "labels", "--summary"]) == 0
    out = capsys.readouterr().out
    assert "1 frames" in out and "LABELS=1" in out


def test_inspect_reports_malformed_frames_and_bad_files(tmp_path, capsys):
    path = tmp_path / "c.cap"
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
    path = tmp_path / "c.cap"
    write_capture(path, [(t, n, frame[:200])])
    ((_, wire_len, kept),) = list(read_capture(path))
    assert wire_len == n and kept == frame[:200]
    assert inspect_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "ACTIVATIONS" in out and f"{n}" in out and "(kept 200)" in out
    with pytest.raises(CaptureFileError):
        write_capture(path, [(t, 10, frame)])  # cannot keep more than was on the wire
