"""The codec registry: lookups by name and id, clear errors, and the plaintext codec."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.codecs import (
    Codec,
    PlaintextCodec,
    codec_by_id,
    codec_names,
    get_codec,
    register_codec,
)
from protocol.errors import CodecError, FrameError
from protocol.frame import Frame, decode_frame
from tests.test_frame import make_frame


def test_plaintext_is_registered():
    assert "plaintext" in codec_names()
    assert get_codec("plaintext") is PlaintextCodec
    assert codec_by_id(0) is PlaintextCodec


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown codec 'bogus'; choices: .*plaintext"):
        get_codec("bogus")


def test_unknown_id_is_a_frame_error():
    with pytest.raises(FrameError, match="unknown codec id 250"):
        codec_by_id(250)


def test_duplicate_id_refused():
    class Clash(PlaintextCodec):
        name = "clash"
        codec_id = 0

    with pytest.raises(ValueError, match="taken by 'plaintext'"):
        register_codec(Clash)
    assert "clash" not in codec_names()


def test_plaintext_payload_is_the_raw_tensor_and_length_is_checked():
    t = np.arange(12, dtype=np.float32).reshape(3, 4)
    frame = decode_frame(make_frame(t))
    codec: Codec = PlaintextCodec("server")
    out = bytearray(t.nbytes)
    codec.open_into(frame, memoryview(out))
    assert bytes(out) == t.tobytes()
    short = Frame(frame.header, frame.header_bytes, frame.payload[:-4])
    with pytest.raises(CodecError):
        codec.open_into(short, memoryview(out))
