"""The eavesdropper: sees every frame's bytes on the wire, and nothing else.

It is given no model, no key and no data of the owners. It keeps every intercepted frame as
the exact bytes that crossed the wire (so a capture is a faithful packet dump), parses them with
the public frame format, and runs the black-box inversion: it queries the owner's public
first-part oracle with its own auxiliary data, trains the inverse network, and reconstructs the
inference activations it intercepted. If payloads are encrypted it is not told to give up: it
reads each payload as the tensor the (cleartext) header claims, as well as the bytes allow.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import numpy as np

from actors.adversary import Intercepted, InversionAttacker, stack
from actors.nets.descriptor import SplitNetwork
from actors.owner import softmax
from actors.role import Role
from actors.wire import Network, TapRecord
from protocol import ring
from protocol.capture import order_records
from protocol.errors import FrameError, ShapeError
from protocol.frame import DType, Frame, MessageKind, decode_frame, numpy_dtype, peek_kind


def best_effort_array(frame: Frame) -> np.ndarray:
    """The payload's bytes as the tensor (dtype and shape) the cleartext header claims."""
    h = frame.header
    raw = bytes(frame.payload[: h.tensor_nbytes]).ljust(h.tensor_nbytes, b"\0")
    return np.frombuffer(raw, dtype=numpy_dtype(h.dtype)).reshape(h.shape)


def best_effort_tensor(frame: Frame) -> np.ndarray:
    """Read a payload as the tensor its header claims, whatever the payload really is.

    A plaintext payload is exactly that tensor; an encrypted one is ciphertext plus a tag, so
    the first ``tensor_nbytes`` bytes are read as if they were the tensor (non-finite values,
    which random bytes produce, become 0). This is what a real sniffer can do without keys.
    """
    arr = best_effort_array(frame).astype(np.float32)
    return np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)


class Eavesdropper(Role, InversionAttacker):
    """A passive tap plus an attacker that may use the public oracle like any customer."""

    def __init__(self, name: str, *, codec: str, session: int, network: Network,
                 net: SplitNetwork, frac_bits: int = ring.DEFAULT_FRAC_BITS,
                 snaplen: int = 0) -> None:
        super().__init__(name, codec, session, network)
        # U-shaped: the tap hands over returned-gradient frames whole; the capture keeps them
        # to ``snaplen`` like any big training frame, the label attacker a ring of the last ones
        # per sender (a sniffer's ring buffer: memory bounded however long the run).
        self.snaplen = snaplen
        self.gradient_frames: dict[str, deque[tuple[float, bytes]]] = {}
        self.net = net  # shapes only: the architecture is public, the frames say it anyway
        self.frac_bits = frac_bits  # a public parameter of the secret-shared protocol
        self.records: list[TapRecord] = []
        self.in_order = True  # records sorted by capture time (mirrors arrive out of order)
        self.unparseable = 0

    # --- the tap -------------------------------------------------------------------------
    def intercept(self, records: list[TapRecord]) -> int:
        # Own copies: a transport may hand over views of shared buffers it wants back.
        for t, n, frame in records:
            data = bytes(frame)
            if len(data) == n and peek_kind(data) == MessageKind.MIDDLE_GRADIENTS:
                self._keep_gradient(t, data)
                if self.snaplen and n > self.snaplen:
                    data = data[: self.snaplen]
            self.records.append((t, n, data))
        self.in_order = False
        return len(self.records)

    def capture(self, start: int = 0, count: int | None = None) -> list[TapRecord]:
        """Intercepted records in interception order (by capture time; a slice, so big captures
        move in chunks)."""
        if not self.in_order:
            order_records(self.records)
            self.in_order = True
        end = len(self.records) if count is None else start + count
        return self.records[start:end]

    def capture_size(self) -> int:
        return len(self.records)

    def _keep_gradient(self, t: float, data: bytes) -> None:
        from actors.ushaped import LABEL_WINDOW

        try:
            sender = decode_frame(data).header.sender
        except FrameError:
            self.unparseable += 1
            return
        # A little slack: mirrors may arrive out of order; the oldest are dropped after sorting.
        ring_ = self.gradient_frames.setdefault(sender, deque(maxlen=LABEL_WINDOW + 16))
        ring_.append((t, data))

    def held_gradients(self, owner: str) -> list[np.ndarray]:
        """U-shaped: the gradients ``owner`` sent back in its last batches, read as the float
        tensors their (cleartext) headers claim: exact in plaintext, ciphertext read as floats
        when encrypted. Oldest first."""
        from actors.ushaped import LABEL_WINDOW

        out = []
        for _, data in sorted(self.gradient_frames.get(owner, ()), key=lambda r: r[0]):
            frame = decode_frame(data)
            if tuple(frame.header.shape[1:]) == self.net.middle_shape:
                out.append(best_effort_tensor(frame))
        return out[-LABEL_WINDOW:]

    def _whole_frames(self, count_bad: bool = True) -> Iterator[Frame]:
        """Every tapped frame kept whole (a snaplen prefix has nothing to invert), parsed with
        the public format; unparseable bytes are skipped (and counted once per pass)."""
        for _, wire_len, data in self.records:
            if len(data) != wire_len:
                continue
            try:
                yield decode_frame(data)
            except FrameError:
                if count_bad:
                    self.unparseable += 1

    def intercepted_activations(self, owner: str) -> Intercepted:
        """The owner's inference activations as well as the tapped bytes give them away.

        Plaintext/encrypted: INFER_ACTIVATIONS frames, read as floats. Secret-shared: the
        INFER_SHARE frames to each server, read as ring elements; where the tap saw both shares
        of a batch it adds them (that is the whole secret), otherwise it has one share.
        """
        plain: list[tuple[int, np.ndarray]] = []
        shares: dict[str, list[tuple[int, np.ndarray]]] = {}
        for frame in self._whole_frames():
            h = frame.header
            if h.sender != owner or tuple(h.shape[1:]) != self.net.cut_shape:
                continue  # not an activation batch of this owner (or a forged shape)
            if h.kind == MessageKind.INFER_ACTIVATIONS:
                plain.append((h.seq, best_effort_tensor(frame)))
            elif h.kind == MessageKind.INFER_SHARE and h.dtype == DType.UINT64:
                shares.setdefault(h.receiver, []).append((h.seq, best_effort_array(frame)))
        if not shares:
            return stack(owner, plain, self.net.cut_shape)
        per_server = [stack_ring(items, self.net.cut_shape) for _, items in sorted(shares.items())]
        seqs, total = per_server[0]
        if len(per_server) == 2 and per_server[1][1].shape == total.shape:
            total = ring.reveal(total, per_server[1][1])
        return Intercepted(owner, seqs, ring.decode(total, self.frac_bits).astype(np.float32))

    def intercepted_outputs(self, owner: str) -> np.ndarray:
        """The answers to the owner's private inference: PREDICTIONS frames to it, as softmax
        probabilities (ciphertext is read as the logits its header claims)."""
        items = []
        for frame in self._whole_frames(count_bad=False):
            h = frame.header
            if (h.kind == MessageKind.PREDICTIONS and h.receiver == owner
                    and tuple(h.shape[1:]) == (self.net.classes,)):
                items.append((h.seq, best_effort_tensor(frame)))
        return _stack_outputs(items, self.net.classes)

    def query_outputs(self, owner: str, x: np.ndarray) -> np.ndarray:
        """Ask the owner's public prediction API, like any customer."""
        replies = self.request(owner, [(MessageKind.QUERY_OUTPUT, x.astype(np.float32))])
        out = self.expect(replies, MessageKind.QUERY_RESULT, owner).tensor
        if tuple(out.shape[1:]) != (self.net.classes,) or len(out) > len(x):
            raise ShapeError(f"prediction API answered {out.shape} to {len(x)} queries")
        return out


def _stack_outputs(items: list[tuple[int, np.ndarray]], classes: int) -> np.ndarray:
    items = sorted(items, key=lambda item: item[0])
    if not items:
        return np.zeros((0, classes), np.float32)
    return softmax(np.concatenate([a.reshape(-1, classes) for _, a in items]))


def stack_ring(items: list[tuple[int, np.ndarray]],
               cut_shape: tuple[int, ...]) -> tuple[list[int], np.ndarray]:
    """Like ``stack``, for uint64 shares (kept exact: no float conversion)."""
    items = sorted(items, key=lambda item: item[0])
    if not items:
        return [], np.zeros((0, *cut_shape), np.uint64)
    return [s for s, _ in items], np.concatenate([a.reshape(-1, *cut_shape) for _, a in items])
