"""The eavesdropper: sees every frame's bytes on the wire, and nothing else.

It is given no model, no key and no data of the owners. It keeps every intercepted frame as
the exact bytes that crossed the wire (so a capture is a faithful packet dump), parses them with
the public frame format, and runs the black-box inversion: it queries the owner's public
first-part oracle with its own auxiliary data, trains the inverse network, and reconstructs the
inference activations it intercepted. If payloads are encrypted it is not told to give up: it
reads each payload as the tensor the (cleartext) header claims, as well as the bytes allow.
"""

from __future__ import annotations

import numpy as np

from actors.adversary import Intercepted, InversionAttacker, stack
from actors.role import Role
from actors.wire import Network, TapRecord
from protocol.errors import FrameError
from protocol.frame import Frame, MessageKind, decode_frame, numpy_dtype


def best_effort_tensor(frame: Frame) -> np.ndarray:
    """Read a payload as the tensor its header claims, whatever the payload really is.

    A plaintext payload is exactly that tensor; an encrypted one is ciphertext plus a tag, so
    the first ``tensor_nbytes`` bytes are read as if they were the tensor (non-finite values,
    which random bytes produce, become 0). This is what a real sniffer can do without keys.
    """
    h = frame.header
    dtype = numpy_dtype(h.dtype)
    raw = bytes(frame.payload[: h.tensor_nbytes]).ljust(h.tensor_nbytes, b"\0")
    arr = np.frombuffer(raw, dtype=dtype).reshape(h.shape).astype(np.float32)
    return np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)


class Eavesdropper(Role, InversionAttacker):
    """A passive tap plus an attacker that may use the public oracle like any customer."""

    def __init__(self, name: str, *, codec: str, session: int, network: Network) -> None:
        super().__init__(name, codec, session, network)
        self.records: list[TapRecord] = []
        self.unparseable = 0

    # --- the tap -------------------------------------------------------------------------
    def intercept(self, records: list[TapRecord]) -> int:
        self.records.extend(records)
        return len(self.records)

    def capture(self, start: int = 0, count: int | None = None) -> list[TapRecord]:
        """Intercepted records in arrival order (a slice, so big captures move in chunks)."""
        end = len(self.records) if count is None else start + count
        return self.records[start:end]

    def capture_size(self) -> int:
        return len(self.records)

    def intercepted_activations(self, owner: str) -> Intercepted:
        items: list[tuple[int, np.ndarray]] = []
        for _, data in self.records:
            try:
                frame = decode_frame(data)
            except FrameError:
                self.unparseable += 1
                continue
            h = frame.header
            if h.kind == MessageKind.INFER_ACTIVATIONS and h.sender == owner:
                items.append((h.seq, best_effort_tensor(frame)))
        return stack(owner, items)
