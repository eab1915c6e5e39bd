"""The secret-shared protocol's parties: two compute servers on shares, a dealer, an owner.

Server 0 drives every two-party protocol (protocol.mpc): it asks the dealer for the triples the
run will consume (the dealer hands server 1 its part first), tells server 1 which program to
start, and then each round is one exchange: its masked shares out, server 1's back. Server 1
answers; it never initiates. The owner sends one share of each batch to each server, gets back
one share of the logits from each, and is the only party that ever sees a revealed value.
"""

from __future__ import annotations

import enum
import itertools
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch

from actors.adversary import Intercepted, InversionAttacker, stack
from actors.nets.descriptor import SplitNetwork
from actors.owner import DataOwner
from actors.role import Role
from actors.wire import Network
from actors.wrap_watch import WrapWatch
from attack.base import Rung
from protocol import beaver, mpc, ring, shared
from protocol.beaver import TripleSpec, TripleStore
from protocol.endpoint import Message
from protocol.errors import ShapeError
from protocol.frame import MAX_PAYLOAD
from protocol.frame import MessageKind as K

SERVER0, SERVER1, DEALER = "server:0", "server:1", "dealer"
#: A plan bigger than this many ring elements is refused: a dealer must not be made to
#: allocate without bound by one request.
MAX_PLAN_ELEMENTS = 20_000_000
_KINDS = beaver.KINDS  # "mul", "matmul", "and", "conv", "convgrad", "bitmul": a row's kind is
#                         its index here
#: Words of one OPEN frame at most: a round larger than a frame's payload travels in pieces.
OPEN_FRAME_WORDS = (MAX_PAYLOAD - 1024) // 8


class Op(enum.IntEnum):
    """Operation codes carried in CONTROL frames of the secret-shared protocol."""

    LOGITS = 1  # owner -> server 1: send me your logits share
    CUT_GRAD = 2  # owner -> server 1: send me your share of the cut-layer gradient
    FORWARD = 3  # server 0 -> server 1: start the training forward program
    BACKWARD = 4  # ... the backward program and SGD step
    INFER = 5  # ... the inference program
    REVEAL = 6  # ... open the trained weights to both servers
    COLLUDE = 7  # server 0 -> server 1: hand over your inference shares (colluding servers)


def owner_index(name: str) -> int:
    try:
        return int(name.split(":")[1])
    except (IndexError, ValueError):
        raise ShapeError(f"{name!r} is not an owner name") from None


# --- plans on the wire ------------------------------------------------------------------------
#: kind, a (first 2 dims), b (2), a's mask reference (3), b's mask reference (3), then a's
#: dims 3 and 4 and a convolution's geometry (kh, kw, sh, sw, ph, pw): unused dims are -1,
#: an unused geometry 0.
PLAN_COLUMNS = 19


def _ref_row(ref: tuple[int, str, bool] | None) -> list[int]:
    return [-1, 0, 0] if ref is None else [ref[0], "ab".index(ref[1]), int(ref[2])]


def _ref(row: list[int], before: int) -> tuple[int, str, bool] | None:
    index, field_, transpose = row
    if index == -1:
        return None
    if not 0 <= index < before or field_ not in (0, 1) or transpose not in (0, 1):
        raise ShapeError(f"bad mask reference {row}")
    return (index, "ab"[field_], bool(transpose))


def _dims(values: list[int]) -> tuple[int, ...]:
    """A shape padded with -1: the -1s must all trail."""
    n = values.index(-1) if -1 in values else len(values)
    if any(v != -1 for v in values[n:]):
        raise ShapeError(f"bad triple shape {values}")
    return tuple(values[:n])


def encode_plan(plan: list[TripleSpec], request_id: int) -> np.ndarray:
    rows = [[request_id] + [0] * (PLAN_COLUMNS - 1)]
    for s in plan:
        if len(s.a) > 4 or len(s.b) > 2:
            raise ShapeError(f"triple spec {s} does not fit the plan's wire format")
        a = (*s.a, -1, -1, -1)[:4]
        b = (*s.b, -1)[:2]
        rows.append([_KINDS.index(s.kind), *a[:2], *b, *_ref_row(s.a_ref), *_ref_row(s.b_ref),
                     *a[2:], *(s.geometry or (0,) * 6)])
    return np.array(rows, dtype=np.int64)


def decode_plan(arr: np.ndarray) -> tuple[int, list[TripleSpec]]:
    if (arr.ndim != 2 or arr.shape[1] != PLAN_COLUMNS or len(arr) < 2
            or arr.dtype != np.int64):
        raise ShapeError(f"a triple plan is an int64 (n, {PLAN_COLUMNS}) array, "
                         f"got {arr.dtype} {arr.shape}")
    plan, total = [], 0
    for i, row in enumerate(arr[1:].tolist()):
        kind = row[0]
        if not 0 <= kind < len(_KINDS):
            raise ShapeError(f"bad triple spec {row}")
        a, b = _dims(row[1:3] + row[11:13]), _dims(row[3:5])
        geometry = tuple(row[13:19]) if _KINDS[kind] in beaver.CONV_KINDS else ()
        if not geometry and any(row[13:19]):
            raise ShapeError(f"bad triple spec {row}")
        spec = TripleSpec(_KINDS[kind], a, b, _ref(row[5:8], i), _ref(row[8:11], i), geometry)
        beaver.check_refs(spec, plan)
        total += 2 * int(np.prod(a)) + int(np.prod(b)) + int(np.prod(spec.c))
        plan.append(spec)
    if total > MAX_PLAN_ELEMENTS:
        raise ShapeError(f"triple plan of {total} elements exceeds {MAX_PLAN_ELEMENTS}")
    return int(arr[0, 0]), plan


class PhaseClock:
    """Seconds a role spends per phase; what the secret-shared run's time goes to.

    - ``busy``: handling frames (everything a role does on a message), whose parts are
    - ``compute``: the two-party program's own arithmetic (``deal`` for the dealer);
    - ``compute_waited``: server 1's part of that its next message had to wait for (server 1
      replies first and computes after, so the rest overlaps with the wire and server 0);
    - ``encoding``: framing, sealing and checking frames (the endpoint's encode and accept);
    - ``peer`` / ``dealer``: server 0 waiting for server 1's reply (wire both ways and server
      1's handling) or for the dealer's triples, encoding excluded.

    Those are wall seconds: on a machine with fewer cores than busy roles a phase also counts
    the time its thread waited for a core. ``<phase>_cpu`` (for ``CPU_PHASES``) is the CPU time
    of the thread that ran it, so wall minus CPU is that wait: on two cores, three busy
    processes (two servers and the dealer) take turns.
    """

    #: Phases whose thread CPU time is kept beside their wall time (the others wait).
    CPU_PHASES = frozenset({"busy", "compute", "deal", "encoding"})

    def __init__(self, role: Role) -> None:
        self.seconds: Counter = Counter()
        endpoint = role.endpoint
        # The endpoint is the one place every frame passes through, both ways.
        endpoint.encode = self.timed("encoding", endpoint.encode)
        endpoint.accept = self.timed("encoding", endpoint.accept)

    @contextmanager
    def clock(self, phase: str) -> Iterator[None]:
        t, c = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - t
            if phase in self.CPU_PHASES:
                self.seconds[f"{phase}_cpu"] += time.thread_time() - c

    @contextmanager
    def waiting(self, phase: str) -> Iterator[None]:
        """Time spent waiting on another party: the encoding done meanwhile is not counted."""
        t, coded = time.perf_counter(), self.seconds["encoding"]
        try:
            yield
        finally:
            self.seconds[phase] += (time.perf_counter() - t) - (self.seconds["encoding"] - coded)

    def timed(self, phase: str, fn: Callable) -> Callable:
        def wrapper(*args: object, **kwargs: object) -> object:
            with self.clock(phase):
                return fn(*args, **kwargs)
        return wrapper

    def report(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in sorted(self.seconds.items())}


def phase_report(phases: dict[str, dict[str, float]]) -> dict[str, object]:
    """``results.json`` ``mpc`` ``seconds``: each role's phases, and the transport, estimated
    as server 0's wait for server 1 less server 1's time handling frames."""
    s0, s1 = phases.get(SERVER0, {}), phases.get(SERVER1, {})
    transport = max(s0.get("peer", 0.0) - s1.get("busy", 0.0), 0.0)
    return {**phases, "transport_estimate": round(transport, 3)}


def timing_report(backend: object, roles: tuple[str, ...]) -> dict[str, object]:
    """What ``results.json`` ``mpc`` adds about time: the ring kernel server 0 uses and the
    seconds per phase of each role in ``roles`` (the two servers and the dealer)."""
    phases = backend.call_all([(name, ShareServer.phase_seconds, ()) for name in roles])
    return {"kernel": backend.call(SERVER0, ShareServer.ring_kernel),
            "seconds": phase_report(dict(zip(roles, phases, strict=True)))}


class Dealer(Role):
    """The crypto provider: correlated randomness only; it never sees data or model shares."""

    # It deals the next step's triples while the servers compute this one (ShareServer's
    # prefetch): given equal priority it takes a core from a server in mid-round, and the
    # other server then waits for that round.
    cpu_nice = 4

    def __init__(self, name: str, *, codec: str, session: int, network: Network) -> None:
        super().__init__(name, codec, session, network)
        self.triples_dealt = 0
        self.timing = PhaseClock(self)

    def handle(self, frames: list[bytes]) -> list[bytes]:
        with self.timing.clock("busy"):
            return super().handle(frames)

    def on_message(self, msg: Message) -> list[bytes]:
        if msg.kind == K.TRIPLE_REQUEST and msg.sender == SERVER0:
            _, plan = decode_plan(msg.tensor)
            with self.timing.clock("deal"):
                dealt = beaver.deal(plan)
            self.request(SERVER1, [
                (K.TRIPLES, msg.tensor),
                (K.TRIPLES, np.frombuffer(dealt.seed1, np.uint8)),
                (K.TRIPLES, dealt.corrections)])
            self.triples_dealt += len(plan)
            return [self.reply(SERVER0, K.TRIPLES, np.frombuffer(dealt.seed0, np.uint8))]
        return super().on_message(msg)

    def phase_seconds(self) -> dict[str, float]:
        return self.timing.report()


class ShareServer(Role, InversionAttacker):
    """One of the two compute servers: holds shares of the server part, computes on shares.

    As an adversary it is honest but curious: it keeps the shares of inference activations it
    received, and can attack them alone (``attack_with``) or pooled with the other server
    (``attack_with_colluding``).
    """

    def __init__(self, name: str, *, party: int, codec: str, session: int, network: Network,
                 net: SplitNetwork, layers: tuple[shared.Layer, ...],
                 params: list[dict[str, np.ndarray]], frac_bits: int, lr: float,
                 momentum: float) -> None:
        super().__init__(name, codec, session, network)
        self.net = net
        self.party = party
        self.peer = SERVER1 if party == 0 else SERVER0
        # The server part as a sequence of layers on shares (protocol.shared), translated from
        # the descriptor's torch module; every plan is traced from these layers.
        self.layers = tuple(layers)
        self.model = shared.SharedNet(party, self.layers, list(params), frac_bits)
        self.lr, self.momentum = lr, momentum
        self.public: list[dict[str, np.ndarray]] | None = None  # revealed (--reveal-model)
        self.pending: dict[tuple[str, K], np.ndarray] = {}  # (owner, kind) -> share received
        self.results: dict[tuple[str, Op], np.ndarray] = {}  # party 1: shares owners collect
        self.caches: dict[str, tuple[shared.ForwardCache, TripleStore]] = {}
        self.seen: dict[str, list[tuple[int, np.ndarray]]] = {}  # owner -> inference shares
        self.stores: dict[int, TripleStore] = {}  # party 1: dealt triples by request id
        self.rounds = 0
        self.timing = PhaseClock(self)  # seconds per phase (see ``phase_seconds``)
        self.colluding = False
        self._request_ids = itertools.count(1)
        # party 1's running program: generator, the round it is in, the shares received so far
        self._proto: mpc.Proto | None = None
        self._current: mpc.Open | None = None
        self._inbox: list[np.ndarray] = []  # pieces of server 0's round received so far
        self._on_done: Callable[[object], None] | None = None
        self._worker: Future | None = None  # party 1's next-round computation
        self._rounds: ThreadPoolExecutor | None = None  # its one thread, made on first use
        self._failure: BaseException | None = None
        self._prefetched: tuple | None = None  # party 0: (plan, request id, pending exchange)

    # --- messages ----------------------------------------------------------------------------
    def handle(self, frames: list[bytes]) -> list[bytes]:
        with self.timing.clock("busy"):
            try:
                with self.timing.clock("compute_waited"):
                    self._join()  # party 1 may still be computing the round from the last message
            except ShapeError as exc:  # that program is lost; say so in the counts, carry on
                self.endpoint.stats.dropped[type(exc).__name__] += 1
            return super().handle(frames)

    def on_message(self, msg: Message) -> list[bytes]:
        kind, sender = msg.kind, msg.sender
        if kind in (K.SHARE, K.GRAD_SHARE, K.INFER_SHARE):
            self.require_owner(msg)
            owner_index(sender)
            self._check_share(msg.tensor, kind)
            if kind == K.INFER_SHARE:
                self.seen.setdefault(sender, []).append((msg.seq, msg.tensor))
            if self.party == 1:
                self.pending[(sender, kind)] = msg.tensor
                return []
            return self._lead(sender, kind, msg.tensor)
        if kind == K.CONTROL and msg.tensor.dtype == np.int64 and msg.tensor.size >= 1:
            return self._control(sender, msg.tensor)
        if self.party == 1 and sender == SERVER0 and kind == K.OPEN:
            return self._follow(msg.tensor)
        if self.party == 1 and sender == DEALER and kind == K.TRIPLES:
            return self._receive_triples(msg.tensor)
        return super().on_message(msg)

    def _check_share(self, t: np.ndarray, kind: K) -> None:
        # GRAD_SHARE: d loss / d (the server part's output): logits, or a u-shaped middle's
        out_shape = self.net.middle_shape if self.net.tail is not None else (self.net.classes,)
        shape = out_shape if kind == K.GRAD_SHARE else self.net.cut_shape
        if t.dtype != np.uint64 or tuple(t.shape[1:]) != shape or len(t) < 1:
            raise ShapeError(f"{kind.name} must be uint64 (B, {', '.join(map(str, shape))}), "
                             f"got {t.dtype} {t.shape}")

    # --- server 0: leads each protocol -------------------------------------------------------
    def _train_plan(self, batch: int) -> list[TripleSpec]:
        return list(shared.train_plan(self.layers, (batch, *self.net.cut_shape)))

    def _infer_plan(self, batch: int) -> list[TripleSpec]:
        return list(shared.infer_plan(self.layers, (batch, *self.net.cut_shape),
                                      public_weights=self.public is not None))

    def _lead(self, owner: str, kind: K, share: np.ndarray) -> list[bytes]:
        idx = owner_index(owner)
        if kind == K.SHARE:
            plan = self._train_plan(len(share))
            store = self._triples(plan)
            self._prefetch(plan)  # the next step's, dealt while this one computes
            logits, cache = self.drive(self.model.forward(store, share), Op.FORWARD, idx, store)
            self.caches[owner] = (cache, store)
            return [self.reply(owner, K.LOGITS_SHARE, logits)]
        if kind == K.GRAD_SHARE:
            cache, store = self._cache(owner, len(share))
            dh = self.drive(self.model.backward(store, cache, share, self.lr, self.momentum,
                                                grad_scale=len(share)), Op.BACKWARD, idx, None)
            return [self.reply(owner, K.CUT_GRAD_SHARE, dh)]
        plan = self._infer_plan(len(share))
        store = self._triples(plan)
        self._prefetch(plan)
        logits = self.drive(self._infer(store, share), Op.INFER, idx, store)
        return [self.reply(owner, K.LOGITS_SHARE, logits)]

    def _cache(self, owner: str, batch: int) -> tuple[shared.ForwardCache, TripleStore]:
        entry = self.caches.pop(owner, None)
        if entry is None or entry[0].batch != batch:
            raise ShapeError(f"gradient share from {owner} without a matching forward pass")
        return entry

    def _infer(self, store: TripleStore, share: np.ndarray) -> mpc.Proto:
        return self.model.infer(store, share, self.public)

    def _prefetch(self, plan: list[TripleSpec]) -> None:
        """Ask the dealer now for the triples of the next, like-shaped run: asked as this run
        takes its own, the dealer deals them during the whole step (its forward, the owner's
        turn, its backward), when the servers wait on each other (the offline phase,
        overlapped)."""
        request_id = next(self._request_ids)
        pending = self.request_async(DEALER, [(K.TRIPLE_REQUEST, encode_plan(plan, request_id))])
        self._prefetched = (plan, request_id, pending)

    def _triples(self, plan: list[TripleSpec]) -> TripleStore:
        prefetched, self._prefetched = self._prefetched, None
        with self.timing.waiting("dealer"):
            if prefetched is not None and prefetched[0] == plan:
                _, request_id, pending = prefetched
                replies = self.complete(pending)
            else:
                if prefetched is not None:  # a different shape came (the epoch's last batch)
                    self.complete(prefetched[2])
                request_id = next(self._request_ids)
                replies = self.request(DEALER, [(K.TRIPLE_REQUEST,
                                                 encode_plan(plan, request_id))])
        seed = self.expect(replies, K.TRIPLES, DEALER).tensor
        if seed.dtype != np.uint8 or seed.shape != (32,):
            raise ShapeError("dealer's seed must be 32 bytes")
        store = TripleStore(0, plan, seed.tobytes())
        store.request_id = request_id
        return store

    def drive(self, proto: mpc.Proto, op: Op, owner_idx: int,
              store: TripleStore | None) -> object:
        """Run a program with server 1, one exchange per round; returns this party's result."""
        with self.timing.clock("compute"):
            msg = next(proto)
        start = np.array([op, owner_idx, getattr(store, "request_id", 0)], np.int64)
        items = [(K.CONTROL, start)]
        while True:
            items += [(K.OPEN, piece) for piece in pack_round(msg)]
            with self.timing.waiting("peer"):
                replies = self.request(self.peer, items)
            theirs = unpack_round(msg, [m.tensor for m in replies
                                        if m.kind == K.OPEN and m.sender == self.peer])
            self.rounds += 1
            try:
                with self.timing.clock("compute"):
                    msg = proto.send(mpc.combine(msg, theirs))
            except StopIteration as done:
                return done.value
            items = []

    def reveal_model(self) -> None:
        """Open the trained server part to both servers (deployment inference)."""
        opened = self.drive(self.model.reveal(), Op.REVEAL, 0, None)
        self.public = opened

    # --- server 1: follows -------------------------------------------------------------------
    def _control(self, sender: str, code: np.ndarray) -> list[bytes]:
        try:
            op = Op(int(code[0]))
        except ValueError:
            raise ShapeError(f"unknown operation code {int(code[0])}") from None
        if op in (Op.LOGITS, Op.CUT_GRAD) and self.party == 1:
            result = self.results.pop((sender, op), None)
            if result is None:
                raise ShapeError(f"{sender} asked for {op.name} before it was computed")
            kind = K.LOGITS_SHARE if op == Op.LOGITS else K.CUT_GRAD_SHARE
            return [self.reply(sender, kind, result)]
        if sender != SERVER0 or self.party != 1 or code.size != 3:
            raise ShapeError(f"{self.name} refuses operation {op.name} from {sender}")
        if op == Op.COLLUDE:
            owner = f"owner:{int(code[1])}"
            got = stack(owner, self.seen.get(owner, []), self.net.cut_shape)
            return [self.reply(SERVER0, K.INFER_SHARE, _to_ring(got.acts))]
        self._start(op, f"owner:{int(code[1])}", int(code[2]))
        return []

    def _start(self, op: Op, owner: str, request_id: int) -> None:
        if self._proto is not None:
            raise ShapeError(f"{op.name} started while another program is running")
        proto, done = self._program(op, owner, request_id)
        with self.timing.clock("compute"):
            first = next(proto)
        self._proto, self._on_done, self._current, self._inbox = proto, done, first, []

    def _program(self, op: Op, owner: str, request_id: int
                 ) -> tuple[mpc.Proto, Callable[[object], None]]:
        def put(key: Op) -> Callable[[object], None]:
            return lambda value: self.results.__setitem__((owner, key), value)

        if op == Op.REVEAL:
            return self.model.reveal(), lambda w: setattr(self, "public", w)
        if op == Op.BACKWARD:
            g = self._take(owner, K.GRAD_SHARE)
            cache, store = self._cache(owner, len(g))
            return (self.model.backward(store, cache, g, self.lr, self.momentum,
                                        grad_scale=len(g)), put(Op.CUT_GRAD))
        store = self.stores.pop(request_id, None)
        if store is None:
            raise ShapeError(f"no triples dealt for request {request_id}")
        for stale in [i for i in self.stores if i < request_id]:  # prefetched, never used
            del self.stores[stale]
        if op == Op.FORWARD:
            h = self._take(owner, K.SHARE)

            def done(value: object) -> None:
                logits, cache = value
                self.results[(owner, Op.LOGITS)] = logits
                self.caches[owner] = (cache, store)
            return self.model.forward(store, h), done
        if op == Op.INFER:
            return self._infer(store, self._take(owner, K.INFER_SHARE)), put(Op.LOGITS)
        raise ShapeError(f"{op.name} is not a program")

    def _take(self, owner: str, kind: K) -> np.ndarray:
        share = self.pending.pop((owner, kind), None)
        if share is None:
            raise ShapeError(f"no {kind.name} from {owner} to compute on")
        return share

    def _follow(self, share: np.ndarray) -> list[bytes]:
        if self._current is None:
            raise ShapeError("OPEN received with no program running")
        mine = self._current
        self._inbox.append(share)
        if sum(p.size for p in self._inbox) < round_words(mine):
            return []  # a round too large for one frame: more pieces to come
        pieces, self._inbox = self._inbox, []
        opened = mpc.combine(mine, unpack_round(mine, pieces))
        # Reply first, compute the next round after: server 0 computes its next round at the
        # same time, instead of waiting for ours. One long-lived thread takes every round: a
        # new thread's start() cost ~150 us before each reply, a hand-off to it ~13 us.
        if self._rounds is None:
            self._rounds = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-rounds")
            weakref.finalize(self, self._rounds.shutdown, wait=False)
        self._worker = self._rounds.submit(self._advance, opened)
        return [self.reply(SERVER0, K.OPEN, piece) for piece in pack_round(mine)]

    def _advance(self, opened: list[np.ndarray]) -> None:
        # This thread's only write to the clock; the main thread waits on it first (_join).
        with self.timing.clock("compute"):
            try:
                self._current = self._proto.send(opened)
            except StopIteration as done:
                self._on_done(done.value)
                self._proto = self._current = self._on_done = None
            except BaseException as exc:  # noqa: BLE001 - surfaced by the next _join
                self._failure = exc
                self._proto = self._current = self._on_done = None

    def _join(self) -> None:
        if self._worker is not None:
            self._worker.result()  # _advance keeps its failure for below: never raises
            self._worker = None
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise ShapeError(f"{self.name}'s last protocol round failed: {failure!r}")

    def _receive_triples(self, t: np.ndarray) -> list[bytes]:
        if t.dtype == np.int64:
            self._plan = decode_plan(t)
        elif t.dtype == np.uint8 and t.shape == (32,):
            self._seed = t.tobytes()
        elif t.dtype == np.uint64:
            request_id, plan = self._plan
            self.stores[request_id] = TripleStore(1, plan, self._seed, t)
        else:
            raise ShapeError(f"unexpected triple material {t.dtype} {t.shape}")
        return []

    # --- the curious server's view -----------------------------------------------------------
    def intercepted_activations(self, owner: str) -> Intercepted:
        own = stack(owner, self.seen.get(owner, []), self.net.cut_shape)
        if not self.colluding:  # one share alone, read as if it were the activations
            return Intercepted(owner, own.seqs, ring.decode(_to_ring(own.acts),
                                                             self.model.frac_bits))
        replies = self.request(SERVER1, [(K.CONTROL, np.array([Op.COLLUDE, owner_index(owner),
                                                               0], np.int64))])
        other = self.expect(replies, K.INFER_SHARE, SERVER1).tensor
        if other.shape != own.acts.shape:
            raise ShapeError("the colluding server holds shares of other batches")
        total = ring.reveal(_to_ring(own.acts), other)
        return Intercepted(owner, own.seqs, ring.decode(total, self.model.frac_bits))

    def attack_with_colluding(self, adversary: str, owners: list[str],
                              fitted: Rung | None = None) -> list:
        """``attack_with`` on the activations both servers' shares reveal together."""
        self.colluding = True
        try:
            return self.attack_with(adversary, owners, fitted)
        finally:
            self.colluding = False

    def wire_rounds(self) -> int:
        return self.rounds

    def phase_seconds(self) -> dict[str, float]:
        """Seconds per phase so far (see ``PhaseClock``)."""
        return self.timing.report()

    def ring_kernel(self) -> str:
        """The exact ring-product kernel this server's process chose (protocol.ring)."""
        return ring.kernel_name()


def _to_ring(a: np.ndarray) -> np.ndarray:
    """Shares are uint64 all the way (``stack`` keeps the dtype; an empty stack is float)."""
    return np.ascontiguousarray(a, dtype=np.uint64)


def _round_head(mine: mpc.Open) -> np.ndarray:
    return np.array([len(mine.arrays), *(a.size for a in mine.arrays)], np.uint64)


def round_words(mine: mpc.Open) -> int:
    """Words a round's OPEN frames carry in all: its head, then every array."""
    return 1 + len(mine.arrays) + sum(a.size for a in mine.arrays)


def pack_round(mine: mpc.Open) -> list[np.ndarray]:
    """One round's masked shares as OPEN frames' tensors: a head (the number of arrays and
    each one's size, so a peer out of step is told apart from one in step) and every array
    flattened, in order; one frame a round unless it exceeds a frame's payload. One frame,
    not one per array: each frame costs its header, seal, check and tap record at both ends,
    and a ReLU level opens four arrays."""
    flat = np.concatenate([_round_head(mine), *(a.reshape(-1) for a in mine.arrays)])
    return [flat[i:i + OPEN_FRAME_WORDS] for i in range(0, flat.size, OPEN_FRAME_WORDS)]


def unpack_round(mine: mpc.Open, theirs: list[np.ndarray]) -> list[np.ndarray]:
    """The peer's OPEN frames split like this party's round; a head or size other than this
    party's own round's means the protocols are out of step."""
    if not theirs or any(t.dtype != np.uint64 or t.ndim != 1 for t in theirs):
        raise ShapeError("the peer's round does not match this party's (protocols out of step)")
    flat = theirs[0] if len(theirs) == 1 else np.concatenate(theirs)
    head = _round_head(mine)
    if flat.size != round_words(mine) or not np.array_equal(flat[:head.size], head):
        raise ShapeError("the peer's round does not match this party's (protocols out of step)")
    sizes = [a.size for a in mine.arrays]
    parts = np.split(flat[head.size:], np.cumsum(sizes)[:-1])
    return [p.reshape(a.shape) for p, a in zip(parts, mine.arrays, strict=True)]


class SharingOwner(DataOwner):
    """A data owner that sends each batch as two additive shares, one to each server.

    It keeps its labels: it reconstructs only the logits, computes the loss gradient itself,
    and sends it back as shares; only it ever sees the revealed cut-layer gradient.
    """

    def __init__(self, name: str, *, frac_bits: int, **kwargs: object) -> None:
        super().__init__(name, server=SERVER0, **kwargs)
        self.frac_bits = frac_bits
        self.index = owner_index(name)
        self.wraps = WrapWatch(frac_bits)  # revealed values only a truncation wrap explains

    def _shares(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return ring.share(ring.encode(x, self.frac_bits))

    def _collect(self, kind: K, first: np.ndarray, op: Op) -> np.ndarray:
        replies = self.request(SERVER0, [(kind, first)])
        out_kind = K.LOGITS_SHARE if op == Op.LOGITS else K.CUT_GRAD_SHARE
        s0 = self.expect(replies, out_kind, SERVER0).tensor
        replies = self.request(SERVER1, [(K.CONTROL, np.array([op], np.int64))])
        s1 = self.expect(replies, out_kind, SERVER1).tensor
        if s0.shape != s1.shape or s0.dtype != np.uint64 or s1.dtype != np.uint64:
            raise ShapeError("the servers' shares do not fit together")
        return ring.decode(ring.reveal(s0, s1), self.frac_bits)

    def remote_step(self, h: np.ndarray, y: np.ndarray,
                    step: int = 0) -> tuple[np.ndarray, float]:
        h0, h1 = self._shares(h)
        self.request(SERVER1, [(K.SHARE, h1)])
        revealed = self._collect(K.SHARE, h0, Op.LOGITS)
        self.wraps.check(revealed, "logits", step)
        logits = torch.from_numpy(revealed).requires_grad_(True)
        # The summed loss's gradient (entries ~1) survives fixed point far better than the
        # mean's (~1/B); the servers divide their learning rate by B to match.
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y), reduction="sum")
        loss.backward()
        g0, g1 = self._shares(logits.grad.numpy())
        self.request(SERVER1, [(K.GRAD_SHARE, g1)])
        dh = self._collect(K.GRAD_SHARE, g0, Op.CUT_GRAD) / len(y)
        self.wraps.check(dh, "cut-layer gradient", step)
        return dh, float(loss.detach()) / len(y)

    def remote_logits(self, h: np.ndarray) -> np.ndarray:
        h0, h1 = self._shares(h)
        self.request(SERVER1, [(K.INFER_SHARE, h1)])
        logits = self._collect(K.INFER_SHARE, h0, Op.LOGITS)
        self.wraps.check(logits, "inference logits", None)
        return logits

    def wrap_report(self) -> dict[str, object]:
        """What this owner flagged (actors.wrap_watch): its name, the count and the first."""
        return self.wraps.report(self.name)
