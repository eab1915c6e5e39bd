"""The frame: round trips, and strict rejection of everything malformed."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import FrameError
from protocol.frame import (
    FIXED_HEADER_SIZE,
    MAX_NDIM,
    DType,
    FrameHeader,
    MessageKind,
    bytes_to_tensor,
    decode_frame,
    encode_header,
    tensor_to_bytes,
)

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789:_.-", min_size=1, max_size=32)
DTYPES = {DType.FLOAT32: np.float32, DType.FLOAT64: np.float64, DType.INT64: np.int64,
          DType.UINT64: np.uint64, DType.UINT8: np.uint8, DType.INT32: np.int32}


def make_frame(tensor: np.ndarray, sender: str = "owner:0", receiver: str = "server",
               kind: MessageKind = MessageKind.ACTIVATIONS, seq: int = 7,
               session: int = 0xABCDEF) -> bytes:
    dtype, shape, raw = tensor_to_bytes(tensor)
    header = FrameHeader(codec=0, kind=kind, dtype=dtype, shape=shape, sender=sender,
                         receiver=receiver, session=session, seq=seq, payload_len=len(raw))
    return encode_header(header) + raw


@settings(max_examples=150, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    dtype=st.sampled_from(list(DTYPES)),
    sender=NAMES, receiver=NAMES,
    kind=st.sampled_from(list(MessageKind)),
    seq=st.integers(0, 2**64 - 1), session=st.integers(0, 2**64 - 1),
    data=st.data(),
)
def test_round_trip(shape, dtype, sender, receiver, kind, seq, session, data):
    n = int(np.prod(shape)) if shape else 1
    raw = data.draw(st.binary(min_size=n * np.dtype(DTYPES[dtype]).itemsize,
                              max_size=n * np.dtype(DTYPES[dtype]).itemsize))
    tensor = np.frombuffer(raw, DTYPES[dtype]).reshape(tuple(shape))
    frame = decode_frame(make_frame(tensor, sender, receiver, kind, seq, session))
    h = frame.header
    assert (h.sender, h.receiver, h.kind, h.seq, h.session) == (sender, receiver, kind, seq,
                                                                 session)
    assert h.dtype == dtype and h.shape == tuple(shape)
    back = bytes_to_tensor(frame.payload, h.dtype, h.shape)
    assert back.tobytes() == tensor.tobytes()


def test_big_endian_input_goes_out_little_endian():
    t = np.arange(6, dtype=">f4").reshape(2, 3)
    frame = decode_frame(make_frame(t))
    assert frame.payload == np.arange(6, dtype="<f4").tobytes()


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, 10_000))
def test_every_truncation_is_rejected(cut):
    data = make_frame(np.ones((3, 5), np.float32))
    cut = cut % len(data)
    with pytest.raises(FrameError):
        decode_frame(data[:cut])


def test_trailing_bytes_rejected():
    with pytest.raises(FrameError, match="trailing"):
        decode_frame(make_frame(np.ones(4, np.float32)) + b"\0")


def test_oversized_frame_rejected_before_reading_payload():
    data = bytearray(make_frame(np.ones(4, np.float32)))
    struct.pack_into("<I", data, 28, 2**31)  # payload length field claims 2 GiB
    with pytest.raises(FrameError, match="oversized"):
        decode_frame(bytes(data))
    with pytest.raises(FrameError, match="oversized"):
        decode_frame(make_frame(np.ones(100, np.float32)), max_payload=64)


@pytest.mark.parametrize(
    "offset,value,match",
    [(0, 0x58, "magic"), (4, 9, "version"), (6, 0, "invalid header"), (6, 200, "invalid header"),
     (7, 0, "invalid header"), (7, 99, "invalid header"), (8, MAX_NDIM + 1, "ndim"),
     (9, 0, "name length"), (10, 40, "name length"), (11, 1, "reserved")],
)
def test_corrupt_header_fields_rejected(offset, value, match):
    data = bytearray(make_frame(np.ones((2, 2), np.float32)))
    data[offset] = value
    with pytest.raises(FrameError, match=match):
        decode_frame(bytes(data))


def test_bad_name_bytes_rejected():
    data = bytearray(make_frame(np.ones(2, np.float32), sender="abc"))
    start = FIXED_HEADER_SIZE + 4  # ndim 1: one shape word, then the sender name
    data[start] = ord("A")  # upper case is outside the name alphabet
    with pytest.raises(FrameError, match="sender"):
        decode_frame(bytes(data))


@pytest.mark.parametrize("name", ["", "Owner", "a b", "x" * 33, "ünï"])
def test_encoder_refuses_bad_names(name):
    with pytest.raises(FrameError):
        make_frame(np.ones(1, np.float32), sender=name)


def test_encoder_refuses_too_many_dims_and_unsupported_dtype():
    with pytest.raises(FrameError, match="dimensions"):
        make_frame(np.ones((1,) * (MAX_NDIM + 1), np.float32))
    with pytest.raises(FrameError, match="cannot go on the wire"):
        make_frame(np.ones(3, np.complex64))
    with pytest.raises(FrameError, match="cannot go on the wire"):
        make_frame(np.array(["a"], dtype=object))


def test_payload_length_must_match_shape():
    with pytest.raises(FrameError, match="needs"):
        bytes_to_tensor(b"\0" * 7, DType.FLOAT32, (2,))


@settings(max_examples=300, deadline=None)
@given(junk=st.binary(max_size=200))
def test_random_bytes_never_crash_the_decoder(junk):
    try:
        decode_frame(junk)
    except FrameError:
        pass


def _rename(frame: bytes, old: bytes, new: bytes) -> bytes:
    """The frame with a name replaced, its length byte fixed: what a forger writes by hand."""
    raw = bytearray(frame.replace(old, new, 1))
    role = 9 if frame.index(old) == FIXED_HEADER_SIZE + 4 * frame[8] else 10
    raw[role] += len(new) - len(old)
    return bytes(raw)


@pytest.mark.parametrize("name", ["owner:0\n", "server\n", "\nserver"])
def test_names_with_a_newline_are_refused(name):
    """Names are matched in full: a "$" anchor let a final newline through (defect 1)."""
    with pytest.raises(FrameError, match="name"):
        make_frame(np.ones(1, np.float32), sender=name)
    good = make_frame(np.ones(1, np.float32), sender="owner:0", receiver="server")
    for old in (b"owner:0", b"server"):
        new = name.encode() if name.strip() == old.decode() else old + b"\n"
        with pytest.raises(FrameError, match="name"):
            decode_frame(_rename(good, old, new))


def test_decoder_refuses_unknown_codec_ids():
    """The decoder itself checks the codec id, as the spec says (defect 3)."""
    from protocol.codecs import codec_by_id
    from protocol.frame import known_codec_ids

    assert known_codec_ids() == {0, 1, 2, 3}
    data = bytearray(make_frame(np.ones(2, np.float32)))
    for codec in range(256):
        data[5] = codec
        if codec in known_codec_ids():
            assert decode_frame(bytes(data)).header.codec == codec_by_id(codec).codec_id
        else:
            with pytest.raises(FrameError, match="codec id"):
                decode_frame(bytes(data))
    with pytest.raises(FrameError, match="codec id"):
        encode_header(FrameHeader(codec=9, kind=MessageKind.CONTROL, dtype=DType.FLOAT32,
                                  shape=(1,), sender="a", receiver="b", session=0, seq=0,
                                  payload_len=4))
