"""The training loop of a run: schedules, checkpoints, and recovery that applies batches once.

Every batch of the run has a global step id, fixed before training starts (owner by owner,
epoch by epoch), so a retry carries the id of its first try. The lab keeps a consistent
checkpoint — the first part with its momentum, the server's second part (a malicious server's
attack state with it), the owners' detector state, and where training stood — every
``checkpoint_every`` steps; the states stay in the object store (handles), never
passing through the lab unless written to disk. When a call fails because a role died, the lab
lets the backend bring it back, re-pins identities, restores what the restarted role lost, and
replays from the checkpoint. A live server answers the replayed batches it already applied
from its reply cache (by step id) instead of applying them again; a restarted one starts from
the checkpoint, which holds none of them. So every batch is applied exactly once, and
``batches.sent == batches.applied`` checks it. Every owner's detectors, live ones too, go back
to the checkpoint with the rest, so a detector sees each replayed step once. The on-disk format
(``--resume``) is documented in docs/checkpoint.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from actors.backend import Backend, Method
from actors.faults import RoleDiedError, RunLostError
from actors.fedserver import FedServer
from actors.owner import DataOwner, TurnPlan, TurnReport
from actors.owner_host import OwnerHost
from actors.role import Role
from actors.server import ComputeServer
from defences.base import ServerJudgedMalicious, Verdict
from protocol.errors import ConfigError

#: /2 adds the owners' detector state (``checks.OWNER.DETECTOR.KEY`` arrays), a malicious
#: server's attack state (``server.fsha:...``) and a detection record; /1 (weights and
#: counters only) is still read for runs that need nothing more.
CHECKPOINT_FORMAT = "splitwire-checkpoint/2"
READABLE_FORMATS = ("splitwire-checkpoint/1", CHECKPOINT_FORMAT)
SCHEDULES = ("sequential", "splitfed")


@dataclass
class Ledger:
    """What the run reports as ``batches`` and ``restarts``."""

    sent: int = 0  # distinct batches (step ids) sent
    retried: int = 0  # batches sent again after a failure
    restarts: int = 0  # roles brought back


@dataclass(frozen=True)
class Position:
    epoch: int = 0
    owner: int = 0  # the turn: index into the epoch's segments (sequential schedule)
    batch: int = 0  # next batch of that turn's owner's epoch
    step: int = 0  # global id of that batch


@dataclass
class Checkpoint:
    position: Position
    first: Any  # handle: the first part + momentum (sequential) or the round's global model
    server: Any  # handle: the server's checkpoint dict (None for a topology without one)
    loss_sum: float
    loss_batches: int
    losses: list[float] = field(default_factory=list)
    #: Owner host -> handle: its owners' detector state ({owner: {key: array}}); empty when
    #: no owner runs a detector.
    checks: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingSetup:
    """What the trainer drives; the lab builds it (names, hosts, the owners' batch counts)."""

    owners: list[str]
    host_of: dict[str, str]  # owner -> the pool actor hosting it
    batches: list[int]  # batches per epoch of each owner
    server: str | None  # the role with checkpoint()/restore(); None: cannot recover
    fed_server: str | None
    parties: list[str]  # every started role (actor names)
    recoverable: bool = True
    checks: bool = False  # the owners run detectors (a checkpoint without their state is refused)
    # the owners' defences carry state (detectors included, noise or dropout generators): it is
    # part of every checkpoint
    defence_state: bool = False
    #: What a rebuilt server needs before its checkpoint can be restored (a malicious server's
    #: arming: its public data is not in the checkpoint); None: nothing.
    revive_server: Callable[[], None] | None = None


def turns(batches: list[int], turn_batches: int | None) -> list[tuple[int, int, int]]:
    """One epoch of vanilla split learning as turns (owner, first batch, stop batch): owners
    take turns round-robin, ``turn_batches`` batches at a time (None: a whole shard each),
    until every shard is done. Short turns keep label-skewed owners from overwriting each
    other's progress; each turn ends with a hand-off of the first part."""
    size = turn_batches or max(batches, default=1)
    out: list[tuple[int, int, int]] = []
    start = 0
    while start < max(batches, default=0):
        for i, n in enumerate(batches):
            if n <= start:
                continue
            if out and out[-1][0] == i:  # the same owner again (it alone has batches left)
                out[-1] = (i, out[-1][1], min(start + size, n))
            else:
                out.append((i, start, min(start + size, n)))
        start += size
    return out


class Trainer:
    def __init__(self, backend: Backend, setup: TrainingSetup, *, epochs: int, schedule: str,
                 checkpoint_every: int, initial: Any, turn_batches: int | None = None,
                 checkpoint_dir: Path | None = None, fingerprint: dict[str, Any] | None = None,
                 progress: Any = None,
                 on_checkpoint: Callable[[int], None] | None = None) -> None:
        if schedule not in SCHEDULES:
            raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}, got "
                              f"{schedule!r}")
        self.backend, self.setup = backend, setup
        self.epochs, self.schedule = epochs, schedule
        self.every = max(1, checkpoint_every)
        self.dir = checkpoint_dir
        self.fingerprint = fingerprint or {}
        self.progress = progress
        self.on_checkpoint = on_checkpoint
        self.ledger = Ledger()
        #: Set when an owner's detector judged the server malicious: training stopped there.
        self.detection: ServerJudgedMalicious | None = None
        self.failures = 0  # failed calls since the last one that worked
        self.hosts = list(dict.fromkeys(setup.host_of.values()))
        self.ckpt = Checkpoint(Position(), initial, self._server_state(), 0.0, 0,
                               checks=self._check_states())
        self._rewind()
        self.steps_per_epoch = sum(setup.batches)
        self.segments = turns(setup.batches, turn_batches)

    # --- steps and owners ----------------------------------------------------------------
    def first_step(self, epoch: int, owner: int) -> int:
        return epoch * self.steps_per_epoch + sum(self.setup.batches[:owner])

    @property
    def holder(self) -> str:
        """Who holds the first part after the last turn (sequential schedule)."""
        return self.setup.owners[self.segments[-1][0]]

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def _owner_call(self, i: int, method: Method, *args: Any, returns: int = 1) -> Any:
        owner = self.setup.owners[i]
        return self.backend.submit(self.setup.host_of[owner], OwnerHost.owner_call, owner,
                                   method, *args, returns=returns)

    def _server_state(self) -> Any:
        """Checkpoint the server now; a handle to its state (the lab waits only for the
        small counters, so no training frame of the next chunk can overtake it)."""
        if self.setup.server is None:
            return None
        counters, state = self.backend.submit(self.setup.server, ComputeServer.checkpoint_pair,
                                              returns=2)
        self.backend.fetch(counters)
        return self.backend.keep(state, self.setup.server)

    def _check_states(self) -> dict[str, Any]:
        """The owners' defence state now (detectors' evidence, random defences' generators), a
        handle per host (kept like the server's)."""
        if not self.setup.defence_state:
            return {}
        return {h: self.backend.keep(self.backend.submit(h, OwnerHost.check_states), h)
                for h in self.hosts}

    def _restore_checks(self, checks: dict[str, Any]) -> None:
        """Every owner's detectors back to the checkpoint, live ones too: the steps replayed
        from it must not be counted twice."""
        self.backend.call_all([(h, OwnerHost.load_check_states, (state,))
                               for h, state in checks.items()])

    # --- the loop ------------------------------------------------------------------------
    def run(self) -> list[float]:
        """Train to the end, recovering from dead roles; the mean loss of each epoch.

        An owner's detector may judge the server malicious (``ServerJudgedMalicious``):
        training stops at once, :attr:`detection` says who, when and why, and the losses end
        with the partial epoch's mean over the chunks that completed. Resumed from such a
        run (its checkpoint records the verdict), it trains nothing."""
        if self.detection is not None:
            return self.losses
        self._save()
        while self.pos.epoch < self.epochs:
            try:
                if self.schedule == "splitfed":
                    self._round()
                else:
                    self._chunk()
            except RoleDiedError as exc:
                self._recover(exc)
            except ServerJudgedMalicious as exc:
                self.detection = exc
                self.ledger.sent = max(self.ledger.sent, exc.verdict.step + 1)
                if self.loss_batches:
                    self.losses.append(self.loss_sum / self.loss_batches)
                self._save_detection(exc)
                break
        return self.losses

    def _step_plan(self, pos: Position) -> tuple[int, TurnPlan, Position, bool, bool]:
        """The owner whose turn it is at ``pos``, its plan up to the end of its turn or the
        next checkpoint, where training stands after it, whether a checkpoint is due, and
        whether the epoch ends with it."""
        ckpt, segments = self.ckpt, self.segments
        owner, _, seg_stop = segments[pos.owner]
        stop = min(seg_stop, pos.batch + self.every - (pos.step - ckpt.position.step))
        turn_ends = stop >= seg_stop
        epoch_ends = turn_ends and pos.owner == len(segments) - 1
        last_turn = epoch_ends and pos.epoch == self.epochs - 1
        send_to = None
        if turn_ends and not last_turn:
            after = segments[(pos.owner + 1) % len(segments)][0]
            send_to = self.setup.owners[after] if after != owner else None
        due = epoch_ends or pos.step + stop - pos.batch - ckpt.position.step >= self.every
        plan = TurnPlan(pos.epoch, pos.step, pos.batch, stop, keep_state=due, send_to=send_to)
        nxt = Position(pos.epoch, pos.owner, stop, pos.step + stop - pos.batch)
        if turn_ends:
            nxt = Position(pos.epoch, pos.owner + 1,
                           segments[(pos.owner + 1) % len(segments)][1], nxt.step)
        if epoch_ends:
            nxt = Position(pos.epoch + 1, 0, 0, nxt.step)
        return owner, plan, nxt, due, epoch_ends

    def _chunk(self) -> None:
        """Sequential (vanilla) split learning, up to the next checkpoint: the turns of
        owners on one host in a row go in one call (their hand-offs stay in that process).
        Between checkpoints the first part travels only over the wire, owner to owner."""
        first_owner, plan, nxt, due, epoch_ends = self._step_plan(self.pos)
        host = self.setup.host_of[self.setup.owners[first_owner]]
        items = [(self.setup.owners[first_owner], plan)]
        while not due:
            owner, plan, after, due, epoch_ends = self._step_plan(nxt)
            if self.setup.host_of[self.setup.owners[owner]] != host:
                due = epoch_ends = False
                break
            items.append((self.setup.owners[owner], plan))
            nxt = after
        reports_h, state_h = self.backend.submit(
            host, OwnerHost.run_turns, items, self.ckpt.first if self.pass_state else None,
            returns=2)
        reports: list[TurnReport] = self.backend.fetch(reports_h)
        self.pass_state, self.failures = False, 0
        self.loss_sum += sum(r.loss_sum for r in reports)
        self.loss_batches += sum(r.batches for r in reports)
        if epoch_ends:
            self.losses.append(self.loss_sum / max(self.loss_batches, 1))
            self.loss_sum, self.loss_batches = 0.0, 0
        self.pos = nxt
        self.ledger.sent = max(self.ledger.sent, nxt.step)
        if due:
            self.ckpt = Checkpoint(nxt, self.backend.keep(state_h, host), self._server_state(),
                                   self.loss_sum, self.loss_batches, list(self.losses),
                                   self._check_states())
            self._after_checkpoint(epoch_done=epoch_ends)

    def _round(self) -> None:
        """SplitFed: every owner trains its copy from the round's model; the fed server
        averages them. Owners on different pool actors train at once."""
        epoch, fed = self.ckpt.position.epoch, self.setup.fed_server
        self.backend.call(fed, FedServer.begin_round, self.ckpt.first, epoch)
        handles = [
            self._owner_call(i, DataOwner.train_chunk,
                             TurnPlan(epoch, self.first_step(epoch, i), pull_from=fed,
                                      send_to=fed), None, returns=2)[0]
            for i in range(len(self.setup.owners))]
        reports: list[TurnReport] = self.backend.fetch(handles)
        model = self.backend.keep(self.backend.submit(fed, FedServer.close_round), fed)
        loss = sum(r.loss_sum for r in reports) / max(sum(r.batches for r in reports), 1)
        nxt = Position(epoch + 1, 0, 0, self.first_step(epoch + 1, 0))
        self.ledger.sent = max(self.ledger.sent, nxt.step)
        self.losses.append(loss)
        self.pos = nxt
        self.ckpt = Checkpoint(nxt, model, self._server_state(), 0.0, 0, list(self.losses),
                               self._check_states())
        self._after_checkpoint(epoch_done=True)

    def _after_checkpoint(self, epoch_done: bool) -> None:
        if epoch_done:
            self._save()
            if self.progress is not None:
                self.progress.update(1)
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.ckpt.position.step)

    # --- recovery ------------------------------------------------------------------------
    def _rewind(self) -> None:
        """Progress goes back to the last checkpoint (a failure, a resume, the start)."""
        self.pos = self.ckpt.position
        self.loss_sum, self.loss_batches = self.ckpt.loss_sum, self.ckpt.loss_batches
        self.losses = list(self.ckpt.losses)
        self.pass_state = True

    def _recover(self, exc: RoleDiedError) -> None:
        if not self.setup.recoverable:
            raise RunLostError(f"a party died and this protocol cannot recover it ({exc})")
        where = (f"; the last checkpoint is in {self.dir}: continue with --resume {self.dir}"
                 if self.dir is not None else "")
        try:
            revived = self.backend.revive()
        except RunLostError as lost:
            raise RunLostError(f"{lost}{where}") from None
        self.failures += 1
        if not revived and self.failures > 3:  # not a death we can repair: stop cleanly
            raise RunLostError(f"a call keeps failing though every role answers ({exc})"
                               f"{where}")
        self.ledger.restarts += len(revived)
        self._retrust(revived)
        reached = self._reached(revived)
        self.ledger.retried += max(0, reached - self.ckpt.position.step + 1)
        if self.setup.server in revived:
            if self.setup.revive_server is not None:
                self.setup.revive_server()
            self.backend.call(self.setup.server, ComputeServer.restore, self.ckpt.server)
        self._restore_checks(self.ckpt.checks)
        self._rewind()

    def _retrust(self, revived: list[str]) -> None:
        """Re-pin every identity (restarted roles have new keys); live roles forget their
        links with the restarted ones (fresh handshakes, sequence numbers from 0)."""
        calls = [(p, Role.identities, ()) for p in self.setup.parties]
        registry: dict[str, bytes] = {}
        for found in self.backend.call_all(calls):
            registry.update(found)
        self.backend.call_all([(p, Role.trust, (registry,)) for p in self.setup.parties])
        gone = [name for name in registry
                if name in revived or self.setup.host_of.get(name) in revived]
        self.backend.call_all([(p, Role.forget, (gone,)) for p in self.setup.parties
                               if p not in revived])

    def _reached(self, revived: list[str]) -> int:
        """The highest step id sent before the failure, from whoever still knows it."""
        last = [self.ckpt.position.step - 1]
        if self.setup.server and self.setup.server not in revived:
            last.append(self.backend.call(self.setup.server, ComputeServer.last_step))
        live = [h for h in dict.fromkeys(self.setup.host_of.values()) if h not in revived]
        for steps in self.backend.call_all([(h, OwnerHost.each, (DataOwner.last_step,))
                                            for h in live]):
            last.extend(steps)
        return max(last)

    # --- disk ----------------------------------------------------------------------------
    def _save(self) -> None:
        """At every epoch's end (and at a detection): the checkpoint on disk, for
        ``--resume``. Weights, counters and detector state only: no key material (identities
        are made fresh by every run). The format is documented in docs/checkpoint.md."""
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        arrays = {"first": np.asarray(self.backend.fetch(self.ckpt.first))}
        if self.ckpt.server is not None:
            server = self.backend.fetch(self.ckpt.server)
            arrays |= {f"server.{k}": np.asarray(v) for k, v in server.items()}
        for handle in self.ckpt.checks.values():
            for owner, state in self.backend.fetch(handle).items():
                arrays |= {f"checks.{owner}.{k}": np.asarray(v) for k, v in state.items()}
        meta: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT, "config": self.fingerprint,
            "position": asdict(self.ckpt.position), "losses": self.ckpt.losses,
            "ledger": asdict(self.ledger)}
        if self.detection is not None:
            meta["detection"] = self.detection.verdict.to_json() | {
                "owner": self.detection.owner}
        tmp = self.dir / "state.npz.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, self.dir / "state.npz")
        (self.dir / "checkpoint.json.tmp").write_text(json.dumps(meta, indent=1))
        os.replace(self.dir / "checkpoint.json.tmp", self.dir / "checkpoint.json")

    def _save_detection(self, exc: ServerJudgedMalicious) -> None:
        """A detector stopped training: the checkpoint on disk becomes that moment's (the
        detecting owner's first part, the server, the detectors) with the verdict, so a
        resumed run reports the same detection instead of training past it."""
        host = self.setup.host_of.get(exc.owner)
        if self.dir is None or host is None:
            return
        first = self.backend.submit(host, OwnerHost.owner_call, exc.owner,
                                    DataOwner.flat_weights)
        self.ckpt = Checkpoint(self.pos, self.backend.keep(first, host), self._server_state(),
                               self.loss_sum, self.loss_batches, list(self.losses),
                               self._check_states())
        self._save()

    def _read(self, path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """checkpoint.json and state.npz, checked against this run."""
        meta_path, state_path = path / "checkpoint.json", path / "state.npz"
        if not meta_path.is_file() or not state_path.is_file():
            raise ConfigError(f"--resume {path}: no checkpoint.json and state.npz there")
        try:
            meta = json.loads(meta_path.read_text())
            with np.load(state_path, allow_pickle=False) as z:  # never unpickle a file
                arrays = {k: z[k] for k in z.files}
        except (ValueError, OSError) as exc:
            raise ConfigError(f"--resume {path}: unreadable checkpoint ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") not in READABLE_FORMATS:
            raise ConfigError(f"--resume {path}: not a {CHECKPOINT_FORMAT} checkpoint")
        if meta.get("config") != self.fingerprint:
            diff = sorted(k for k in set(self.fingerprint) | set(meta.get("config", {}))
                          if self.fingerprint.get(k) != meta.get("config", {}).get(k))
            raise ConfigError(f"--resume {path}: the checkpoint is of another run "
                              f"(differs in {', '.join(diff)})")
        if self.setup.checks and meta["format"] != CHECKPOINT_FORMAT:
            raise ConfigError(f"--resume {path}: a {meta['format']} checkpoint holds no "
                              f"detector state; this run's detectors need {CHECKPOINT_FORMAT}")
        return meta, arrays

    def resume(self, path: Path) -> None:
        """Continue from a checkpoint written by ``_save`` (checked against this run): the
        first part, the server, the owners' detectors and, if a detector had stopped the
        run, its verdict (training does not start again)."""
        meta, arrays = self._read(path)
        try:
            position = Position(**meta["position"])
            first = arrays["first"]
            server = {k.removeprefix("server."): v for k, v in arrays.items()
                      if k.startswith("server.")}
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"--resume {path}: incomplete checkpoint ({exc})") from None
        if self.setup.server is not None:
            self.backend.call(self.setup.server, ComputeServer.restore, server)
        if self.setup.defence_state:
            self._restore_checks(self._checks_by_host(path, arrays))
        self.ledger = replace(Ledger(), **meta.get("ledger", {}))
        self.ckpt = Checkpoint(position, self.backend.put(first), self._server_state(), 0.0, 0,
                               list(meta.get("losses", [])), self._check_states())
        self._rewind()
        if meta.get("detection") is not None:
            self._resume_detection(path, meta["detection"], first)

    def _checks_by_host(self, path: Path, arrays: dict[str, np.ndarray]
                        ) -> dict[str, dict[str, dict[str, np.ndarray]]]:
        """``checks.OWNER.KEY`` arrays as each host's ``load_check_states`` argument."""
        by_host: dict[str, dict[str, dict[str, np.ndarray]]] = {h: {} for h in self.hosts}
        for key, value in arrays.items():
            if not key.startswith("checks."):
                continue
            owner, _, name = key.removeprefix("checks.").partition(".")
            host = self.setup.host_of.get(owner)
            if host is None or not name:
                raise ConfigError(f"--resume {path}: detector state {key!r} of no owner of "
                                  f"this run")
            by_host[host].setdefault(owner, {})[name] = value
        return by_host

    def _resume_detection(self, path: Path, record: Any, first: np.ndarray) -> None:
        try:
            verdict = Verdict(str(record["detector"]), int(record["step"]),
                              float(record["score"]), str(record["reason"]))
            owner = str(record["owner"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"--resume {path}: unreadable detection record ({exc})") from None
        if owner not in self.setup.host_of:
            raise ConfigError(f"--resume {path}: detection by {owner}, not an owner of this run")
        self.backend.call(self.setup.host_of[owner], OwnerHost.owner_call, owner,
                          DataOwner.adopt, first)
        self.detection = ServerJudgedMalicious(verdict, owner)

    def counters(self) -> dict[str, int]:
        """``batches``: sent, applied (by the server's model), retried."""
        applied = (self.backend.call(self.setup.server, ComputeServer.counters)["applied"]
                   if self.setup.server else self.ledger.sent)
        return {"sent": self.ledger.sent, "applied": applied, "retried": self.ledger.retried}
