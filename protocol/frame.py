"""The versioned binary frame: the only thing that ever crosses SplitWire's wire.

Layout (all integers little-endian; the authoritative description is docs/wire-format.md):

    offset size  field
    0      4     magic            b"SPWF"
    4      1     version          1
    5      1     codec id         see protocol.codecs (0 = plaintext)
    6      1     kind             MessageKind
    7      1     dtype            DType
    8      1     ndim             0..MAX_NDIM
    9      1     sender length    1..MAX_NAME
    10     1     receiver length  1..MAX_NAME
    11     1     flags            reserved, must be 0
    12     8     session id       u64
    20     8     sequence number  u64, per (sender, receiver, session)
    28     4     payload length   u32
    32     4*nd  shape            u32 each
    ..     s+r   sender, receiver ASCII names ([a-z0-9:_.-], matched in full: no newline)
    ..     n     payload          codec output (for plaintext: raw little-endian tensor bytes)

The header (everything before the payload) is what an authenticated codec binds as associated
data, so a flipped bit anywhere in a frame is detected. Nothing here is ever unpickled.
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass

import numpy as np

from protocol.errors import FrameError

MAGIC = b"SPWF"
VERSION = 1
MAX_NDIM = 8
MAX_NAME = 32
#: Largest payload a decoder accepts by default (64 MiB): bigger frames are refused before any
#: allocation, so a hostile length field cannot make a receiver reserve gigabytes.
MAX_PAYLOAD = 64 * 1024 * 1024

_FIXED = struct.Struct("<4sBBBBBBBBQQI")
FIXED_HEADER_SIZE = _FIXED.size  # 32
#: Byte offset of the message kind in the fixed header (magic 4s, version B, codec B, kind B).
KIND_OFFSET = 6


def peek_kind(data: bytes) -> int | None:
    """The kind byte of a frame's fixed header without decoding it (None if too short); a
    tap uses it to pick frames to keep whole, and decodes (with every check) only later."""
    return data[KIND_OFFSET] if len(data) >= FIXED_HEADER_SIZE else None


#: The longest header: eight shape words and two names of MAX_NAME bytes.
MAX_HEADER_SIZE = FIXED_HEADER_SIZE + 4 * MAX_NDIM + 2 * MAX_NAME  # 128
#: The longest frame a decoder with the default limit accepts; captures refuse longer records.
MAX_FRAME_SIZE = MAX_HEADER_SIZE + MAX_PAYLOAD
# Always used with fullmatch: a "$" anchor would also match before a final newline, letting
# "owner:0\n" pass as a name of its own (with its own replay window).
_NAME_RE = re.compile(rb"[a-z0-9:_.\-]+")
#: Codec ids the decoder accepts; protocol.codecs.register_codec adds each codec's id. The
#: package's __init__ imports every built-in codec, so this is full before any frame is decoded.
_CODEC_IDS: set[int] = set()


def register_codec_id(codec_id: int) -> None:
    if not 0 <= codec_id <= 255:
        raise ValueError(f"codec id {codec_id} does not fit in a byte")
    _CODEC_IDS.add(codec_id)


def known_codec_ids() -> frozenset[int]:
    return frozenset(_CODEC_IDS)


class MessageKind(enum.IntEnum):
    """What a frame carries; the receiver dispatches on it."""

    ACTIVATIONS = 1  # cut-layer activations of a training batch (owner -> server)
    LABELS = 2  # labels of that batch (owner -> server: vanilla split learning)
    GRADIENTS = 3  # gradient of the loss w.r.t. the cut layer (server -> owner)
    INFER_ACTIVATIONS = 4  # cut-layer activations of an inference batch (owner -> server)
    PREDICTIONS = 5  # logits for an inference batch (server -> owner)
    QUERY = 6  # raw inputs sent to the owner's public first-part oracle
    QUERY_RESULT = 7  # the oracle's answer: the first part's output for those inputs
    WEIGHTS = 8  # a parameter tensor handed from one owner to the next
    HANDSHAKE = 9  # key exchange material (encrypted codec)
    SHARE = 10  # one additive share of a training batch's activations (owner -> server i)
    CONTROL = 11  # small control messages: a loss, an operation code
    OPEN = 12  # a server's masked shares for one round of a two-party protocol (S0 <-> S1)
    LOGITS_SHARE = 13  # a server's share of the logits (server i -> owner)
    GRAD_SHARE = 14  # a share of dLoss/dlogits (owner -> server i)
    CUT_GRAD_SHARE = 15  # a server's share of the cut-layer gradient (server i -> owner)
    TRIPLE_REQUEST = 16  # the triples a protocol run will need (server 0 -> dealer)
    TRIPLES = 17  # Beaver triple material: plan, seed, corrections (dealer -> server i)
    INFER_SHARE = 18  # one additive share of an inference batch's activations
    STEP = 19  # the global id of the training batch that follows (retries are idempotent)
    MODEL_REQUEST = 20  # an owner asks the fed server for the round's first part (SplitFed)
    QUERY_OUTPUT = 21  # raw inputs sent to the owner's public prediction API (whole model)
    API_ACTIVATIONS = 22  # the prediction API's cut-layer activations (owner -> server)
    API_PREDICTIONS = 23  # the server's logits for them (server -> owner)
    MIDDLE = 24  # u-shaped: the middle's output for a training batch (server -> owner)
    MIDDLE_GRADIENTS = 25  # u-shaped: dLoss/d(middle output), per example (owner -> server)
    INFER_MIDDLE = 26  # u-shaped: the middle's output for an inference batch (server -> owner)


class DType(enum.IntEnum):
    """Tensor element types on the wire; always little-endian."""

    FLOAT32 = 1
    FLOAT64 = 2
    INT64 = 3
    UINT64 = 4
    UINT8 = 5
    INT32 = 6


_NUMPY_OF = {
    DType.FLOAT32: np.dtype("<f4"),
    DType.FLOAT64: np.dtype("<f8"),
    DType.INT64: np.dtype("<i8"),
    DType.UINT64: np.dtype("<u8"),
    DType.UINT8: np.dtype("u1"),
    DType.INT32: np.dtype("<i4"),
}
_DTYPE_OF = {np_dtype.newbyteorder("<"): wire for wire, np_dtype in _NUMPY_OF.items()}


def numpy_dtype(dtype: DType) -> np.dtype:
    return _NUMPY_OF[dtype]


def wire_dtype(array: np.ndarray) -> DType:
    try:
        return _DTYPE_OF[array.dtype.newbyteorder("<")]
    except KeyError:
        choices = ", ".join(str(d) for d in _NUMPY_OF.values())
        raise FrameError(
            f"dtype {array.dtype} cannot go on the wire (choices: {choices})") from None


@dataclass(frozen=True)
class FrameHeader:
    codec: int
    kind: MessageKind
    dtype: DType
    shape: tuple[int, ...]
    sender: str
    receiver: str
    session: int
    seq: int
    payload_len: int
    version: int = VERSION

    @property
    def tensor_nbytes(self) -> int:
        n = numpy_dtype(self.dtype).itemsize
        for d in self.shape:
            n *= d
        return n

    @property
    def link(self) -> tuple[str, str]:
        return (self.sender, self.receiver)


@dataclass(frozen=True)
class Frame:
    header: FrameHeader
    header_bytes: bytes  # the exact encoded header: authenticated as associated data
    payload: memoryview  # a zero-copy view into the received buffer


def _check_name(name: str, role: str) -> bytes:
    raw = name.encode("ascii", errors="replace")
    if not 1 <= len(raw) <= MAX_NAME or not _NAME_RE.fullmatch(raw):
        raise FrameError(f"{role} name {name!r} must be 1-{MAX_NAME} chars of [a-z0-9:_.-]")
    return raw


def encode_header(header: FrameHeader, max_payload: int = MAX_PAYLOAD) -> bytes:
    """Encode a header, validating every field so that no invalid frame is ever produced."""
    shape = header.shape
    if len(shape) > MAX_NDIM:
        raise FrameError(f"tensor has {len(shape)} dimensions; at most {MAX_NDIM} go on the wire")
    if any(d < 0 or d > 0xFFFFFFFF for d in shape):
        raise FrameError(f"shape {shape} has a dimension outside 0..2^32-1")
    if not 0 <= header.payload_len <= max_payload:
        raise FrameError(
            f"payload of {header.payload_len} bytes exceeds the {max_payload}-byte limit"
        )
    if not (0 <= header.session < 2**64 and 0 <= header.seq < 2**64):
        raise FrameError("session and sequence number must fit in 64 bits")
    if header.codec not in _CODEC_IDS:
        raise FrameError(f"unknown codec id {header.codec}")
    s, r = _check_name(header.sender, "sender"), _check_name(header.receiver, "receiver")
    fixed = _FIXED.pack(
        MAGIC, header.version, header.codec, int(header.kind), int(header.dtype), len(shape),
        len(s), len(r), 0, header.session, header.seq, header.payload_len,
    )
    return fixed + struct.pack(f"<{len(shape)}I", *shape) + s + r


def decode_frame(data: bytes | bytearray | memoryview, max_payload: int = MAX_PAYLOAD) -> Frame:
    """Strictly parse one frame; raise FrameError on anything malformed.

    The decoder checks magic, version, codec id, enum values, reserved bits, name syntax and
    that the payload length field matches the bytes that are actually there (no truncation, no
    trailer).
    It does not check the payload against the shape: that is the codec's job, because an
    encrypted payload is longer than the tensor it carries.
    """
    data = memoryview(data).cast("B")  # zero-copy: a 1 MiB payload is never duplicated here
    header, header_len = _parse_header(data, max_payload)
    if len(data) != header_len + header.payload_len:
        short = len(data) < header_len + header.payload_len
        what = "truncated" if short else "trailing bytes after"
        raise FrameError(f"{what} frame: header says {header.payload_len} payload bytes, "
                         f"got {len(data) - header_len}")
    return Frame(header=header, header_bytes=bytes(data[:header_len]),
                 payload=data[header_len:])


def decode_header(data: bytes | bytearray | memoryview,
                  max_payload: int = MAX_PAYLOAD) -> FrameHeader:
    """Parse and validate just the header: for captures that keep a prefix of big frames."""
    return _parse_header(memoryview(data).cast("B"), max_payload)[0]


def _parse_header(data: memoryview, max_payload: int) -> tuple[FrameHeader, int]:
    if len(data) < FIXED_HEADER_SIZE:
        raise FrameError(f"truncated frame: {len(data)} bytes, header alone is {FIXED_HEADER_SIZE}")
    (magic, version, codec, kind, dtype, ndim, slen, rlen, flags, session, seq,
     payload_len) = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic!r}: not a SplitWire frame")
    if version != VERSION:
        raise FrameError(f"unsupported frame version {version} (this build speaks {VERSION})")
    if codec not in _CODEC_IDS:
        raise FrameError(f"unknown codec id {codec}")
    if flags != 0:
        raise FrameError(f"reserved flags byte is {flags:#04x}, must be 0")
    try:
        kind_e, dtype_e = MessageKind(kind), DType(dtype)
    except ValueError as exc:
        raise FrameError(f"invalid header field: {exc}") from None
    if ndim > MAX_NDIM:
        raise FrameError(f"ndim {ndim} exceeds {MAX_NDIM}")
    if not (1 <= slen <= MAX_NAME and 1 <= rlen <= MAX_NAME):
        raise FrameError("sender/receiver name length out of range")
    if payload_len > max_payload:
        raise FrameError(f"oversized frame: payload {payload_len} > limit {max_payload}")
    header_len = FIXED_HEADER_SIZE + 4 * ndim + slen + rlen
    if len(data) < header_len:
        raise FrameError(f"truncated frame: {len(data)} bytes, header needs {header_len}")
    shape = struct.unpack_from(f"<{ndim}I", data, FIXED_HEADER_SIZE)
    nonzero = 1
    for d in shape:
        nonzero *= max(d, 1)
    if nonzero > max_payload:
        # Even an empty tensor (a zero dimension) must not claim 2^64 elements elsewhere:
        # receivers allocate from the shape.
        raise FrameError(f"shape {tuple(shape)} is larger than any payload this link accepts")
    off = FIXED_HEADER_SIZE + 4 * ndim
    sender, receiver = bytes(data[off:off + slen]), bytes(data[off + slen:header_len])
    for raw, role in ((sender, "sender"), (receiver, "receiver")):
        if not _NAME_RE.fullmatch(raw):
            raise FrameError(f"{role} name {raw!r} is not [a-z0-9:_.-]")
    header = FrameHeader(
        codec=codec, kind=kind_e, dtype=dtype_e, shape=tuple(shape), sender=sender.decode(),
        receiver=receiver.decode(), session=session, seq=seq, payload_len=payload_len,
    )
    return header, header_len


def tensor_to_bytes(array: np.ndarray) -> tuple[DType, tuple[int, ...], bytes]:
    """Raw little-endian bytes of a tensor, C order: what a plaintext payload is."""
    dtype = wire_dtype(array)
    arr = np.asarray(array, dtype=numpy_dtype(dtype), order="C")  # keeps 0-d as 0-d
    return dtype, tuple(int(d) for d in arr.shape), arr.tobytes()


def tensor_view(array: np.ndarray) -> tuple[DType, tuple[int, ...], memoryview]:
    """Like tensor_to_bytes, but a zero-copy byte view when the array is already C-ordered LE."""
    dtype = wire_dtype(array)
    arr = np.asarray(array, dtype=numpy_dtype(dtype), order="C")
    return dtype, tuple(int(d) for d in arr.shape), memoryview(arr.reshape(-1).view(np.uint8))


def bytes_to_tensor(raw: bytes, dtype: DType, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of tensor_to_bytes; a length mismatch is a FrameError, never a reshape guess."""
    np_dtype = numpy_dtype(dtype)
    expected = np_dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        raise FrameError(
            f"payload is {len(raw)} bytes, a {dtype.name} tensor {shape} needs {expected}")
    # frombuffer gives a read-only view; copy so receivers own writable memory.
    return np.frombuffer(raw, dtype=np_dtype).reshape(shape).copy()
