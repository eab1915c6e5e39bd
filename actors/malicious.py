"""Malicious compute servers: the feature-space hijacking attack (FSHA) on the lab's wire.

Every role here speaks the normal protocol, frame for frame and kind for kind; only what it
computes differs (attack/fsha.py does the attack itself):

- :class:`MaliciousServer` (plaintext, encrypted: it decrypts to compute) answers each training
  batch with FSHA's gradient instead of the task's. It still trains its own second part on the
  (hijacked) activations and the labels it is sent, so the ``CONTROL`` loss it returns is a
  real cross-entropy and its inference answers are its classifier's, not noise.
- :class:`MaliciousShareServer` is server 0 of the secret-shared protocol on its own. It holds
  only a share of each batch, so it runs FSHA on what it has (a share decoded as if it were the
  activations) and adds the result to its share of the cut-layer gradient; the two-party
  program itself it runs honestly (a broken program would be noticed at once).
- :class:`ColludingShareServer` is either server when both are malicious and pool their
  shares: server 1 hands server 0 its share of each training batch (the ``COLLUDE`` control
  the honest-but-curious colluders already use, with a flag) and sends the owner a zero share
  of the gradient, so the gradient the owner reveals is exactly the one server 0 chose.

Each keeps an attack curve: every ``curve_every`` training steps the decoder's reconstructions
of the batch it just received, which the lab scores against the true images of that batch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from actors.adversary import Reconstruction
from actors.fsha_pilot import DEFAULT_PILOT, parse_pilot
from actors.mpc_roles import SERVER0, SERVER1, Op, ShareServer, _to_ring, owner_index
from actors.nets.descriptor import SplitNetwork
from actors.server import ComputeServer
from attack.base import Rung
from attack.fsha import FeatureSpaceHijacker, fresh_copy
from protocol import ring
from protocol.errors import ConfigError, ShapeError
from protocol.frame import MessageKind as K

MALICIOUS_SERVER = "malicious-server"
MALICIOUS_COLLUDING = "malicious-colluding-servers"
MALICIOUS = (MALICIOUS_SERVER, MALICIOUS_COLLUDING)
#: Points on the attack curve over a run (plus the run's last step).
CURVE_POINTS = 10
#: FSHA's settings in the lab. The authors train with Adam at 1e-5 for ~10,000 steps; the
#: lab's owner trains by SGD at lr 0.1 with momentum 0.9 (a step ~10^4 times larger than their
#: client's), so the server scales its gradient down (the authors' own knob, their loss
#: weight), its critic learns ten times faster and takes three steps per owner batch, and it
#: pre-trains its decoder on its public data before the owner connects (offline work; nothing
#: the owner can see). The pilot is held still (rate 0 in the warm-up and after): a fixed
#: target feature space, the owner part's initial one where the pilot starts there (below).
#: Trained with the decoder (the authors' way) on the rendered letters, the pilot leaves the
#: owner's initial weights and the owner never catches it up: on the default ``mlp`` its
#: features of the private digits stay ~0.5 (relative distance) from the pilot's, which the
#: decoder inverts at SSIM 0.86-0.94, and FSHA plateaus at SSIM ~0.70 (7,500-25,000 steps,
#: bench/fsha_steps.py). Held still, the owner stays within ~0.3-0.4 of it: 0.80 at the default
#: 630 steps, 0.74-0.87 up to 10,000 (bench/fsha_steps.py; ``--train-pilot``: the plateau).
LAB_SETTINGS: dict[str, Any] = {"grad_scale": 1e-3, "lr": 1e-3, "lr_critic": 1e-3,
                                "gp_weight": 500.0, "warmup": 500, "critic_steps": 3,
                                "pilot_lr": 0.0, "warmup_pilot_lr": 0.0}
#: COLLUDE's third code word: 0 (what honest colluders send) asks for the inference shares,
#: this asks for the last training batch's share.
COLLUDE_TRAINING = 1


def pilot_encoder(net: SplitNetwork, start: str, seed: int) -> torch.nn.Module:
    """A new pilot encoder with the owner part's layers (the descriptor's): the first part's
    initial weights (``start`` "initial") or the attacker's own draw ("fresh", seed + 1)."""
    return net.owner_part() if start == "initial" else fresh_copy(net.owner, seed + 1)


@dataclass(frozen=True)
class CurvePoint:
    step: int  # global training step id of the batch (0-based)
    images: np.ndarray  # the decoder's reconstruction of that batch (B, C, H, W)


class _Hijacking:
    """What the malicious roles share: the attack, its curve, and the final reconstruction."""

    fsha: FeatureSpaceHijacker | None = None
    curve_every = 1
    curve: list[CurvePoint]
    total_steps = 0
    pilot = DEFAULT_PILOT

    def arm(self, aux: np.ndarray, seed: int, total_steps: int,
            settings: dict[str, Any] | None = None, pilot: str = DEFAULT_PILOT) -> None:
        """Build the attack on the public data ``aux`` before training starts (its warm-up
        runs here, before the owner's first batch). ``pilot`` names a PILOTS choice;
        ``settings`` override LAB_SETTINGS after the choice's own."""
        choice = parse_pilot(pilot)
        net = self.net  # type: ignore[attr-defined]
        params = LAB_SETTINGS | choice.settings | (settings or {})
        self.fsha = FeatureSpaceHijacker(
            net.input_shape, net.cut_shape, np.asarray(aux, np.float32), seed=seed,
            encoder_factory=functools.partial(pilot_encoder, net, choice.start, seed), **params)
        self.pilot = choice.name
        self.total_steps = max(1, int(total_steps))
        self.curve_every = max(1, self.total_steps // CURVE_POINTS)
        self.curve = []

    def _hijack(self, h: np.ndarray, step: int) -> np.ndarray:
        if self.fsha is None:
            raise ShapeError(f"{type(self).__name__} was not armed before training")
        grad = self.fsha.step(h)
        if (step + 1) % self.curve_every == 0 or step + 1 == self.total_steps:
            self.curve.append(CurvePoint(step, self.fsha.reconstruct(h)))
        return grad

    def attack_curve(self) -> list[CurvePoint]:
        return list(self.curve)

    # --- the server's private checkpoint: the attack goes on after a restart ---------------
    def hijack_state(self) -> dict[str, np.ndarray]:
        """FSHA's state (``attack.fsha``: pilot, decoder, critic, optimisers, generator, step
        count) and the attack curve so far, under ``fsha:`` keys; empty when not armed."""
        if self.fsha is None:
            return {}
        out = {f"fsha:{k}": v for k, v in self.fsha.state_dict().items()}
        out |= {f"fsha:curve.{i}": p.images for i, p in enumerate(self.curve)}
        return out | {"fsha:curve.steps": np.array([p.step for p in self.curve], np.int64)}

    def restore_hijack(self, state: dict[str, np.ndarray]) -> None:
        """Continue the attack from :meth:`hijack_state`'s output. The public data is not in
        the checkpoint: a rebuilt server is armed again first (``hijack_lab.arm``'s re-arm)."""
        inner = {k[len("fsha:"):]: v for k, v in state.items() if k.startswith("fsha:")}
        if self.fsha is None or not inner:
            raise ConfigError("a malicious server's checkpoint is restored on an armed server "
                              f"and holds its attack state (armed: {self.fsha is not None}, "
                              f"attack state: {bool(inner)})")
        steps = [int(s) for s in inner.pop("curve.steps", np.zeros(0, np.int64))]
        images = [inner.pop(f"curve.{i}", None) for i in range(len(steps))]
        if any(im is None for im in images):
            raise ConfigError("a malicious server's checkpoint lacks curve images")
        self.fsha.load_state_dict(inner)
        self.curve = [CurvePoint(s, np.asarray(im, np.float32))
                      for s, im in zip(steps, images, strict=True)]

    def fsha_state(self) -> dict[str, Any]:
        return {"steps": self.fsha.steps if self.fsha else 0, "pilot": self.pilot,
                **(self.fsha.last if self.fsha else {})}

    def prepare_attack(self, adversary: str, owners: list[str], aux: np.ndarray, epochs: int,
                       seed: int, method: str = "mlp", weights: np.ndarray | None = None,
                       defences: tuple[str, ...] = ()) -> str | None:
        """Nothing to prepare and nothing to fit: FSHA's decoder trained during training."""
        del adversary, owners, aux, epochs, seed, method, weights, defences
        return None

    def attack_with(self, adversary: str, owners: list[str],
                    fitted: Rung | None = None) -> list[Reconstruction]:
        """FSHA needs no oracle and no inverse network of the ladder: its decoder, trained on
        public data alone, inverts what it holds of each owner's private inference."""
        del adversary, fitted
        if self.fsha is None:
            raise ShapeError(f"{type(self).__name__} was not armed before training")
        return [Reconstruction(o, self.fsha.reconstruct(self._held(o)), 0) for o in owners]

    def _held(self, owner: str) -> np.ndarray:
        return self.intercepted_activations(owner).acts  # type: ignore[attr-defined]


class MaliciousServer(_Hijacking, ComputeServer):
    """The one-server protocols' compute server, running FSHA (see the module's docstring).

    Its checkpoint holds the attack too, so a server killed by ``--chaos`` (or a resumed run)
    goes on hijacking from where it stood instead of starting over."""

    def checkpoint(self) -> dict[str, np.ndarray]:
        return super().checkpoint() | self.hijack_state()

    def restore(self, state: dict[str, np.ndarray]) -> None:
        super().restore(state)
        self.restore_hijack(state)

    def train_step(self, h: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        grad = self._hijack(h, self.last_seen)
        # Its own classifier on what it is sent: a plausible loss, and inference answers.
        self.model.train()
        self.opt.zero_grad()
        loss = F.cross_entropy(self.model(torch.from_numpy(h.astype(np.float32))),
                               torch.from_numpy(y))
        loss.backward()
        self.opt.step()
        self.steps += 1
        return grad, float(loss.detach())


class MaliciousShareServer(_Hijacking, ShareServer):
    """Secret-shared server 0 acting alone: FSHA on its share, added to its gradient share."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.batches_seen = 0  # training batches (SHARE frames): the owner's step ids
        self._offset: dict[str, np.ndarray] = {}

    def _training_view(self, owner: str, share: np.ndarray) -> np.ndarray:
        """What this server can make of a training batch: its share, decoded."""
        return ring.decode(_to_ring(share), self.model.frac_bits)

    def _lead(self, owner: str, kind: K, share: np.ndarray) -> list[bytes]:
        if kind == K.SHARE:
            h = self._training_view(owner, share)
            grad = self._hijack(h.astype(np.float32), self.batches_seen)
            self.batches_seen += 1
            # The owner divides the revealed gradient by B (it sends the summed loss's).
            self._offset[owner] = ring.encode(grad.astype(np.float64) * len(share),
                                              self.model.frac_bits)
        return super()._lead(owner, kind, share)

    def drive(self, proto: Any, op: Op, owner_idx: int, store: Any) -> object:
        out = super().drive(proto, op, owner_idx, store)
        if op == Op.BACKWARD:
            offset = self._offset.pop(f"owner:{owner_idx}", None)
            if offset is not None and offset.shape == np.shape(out):
                return self._gradient_share(_to_ring(out), offset)
        return out

    def _gradient_share(self, honest: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """Alone it cannot cancel server 1's share: it can only add to the task's gradient."""
        return honest + offset  # uint64: wraps modulo 2^64, as shares do


class ColludingShareServer(MaliciousShareServer):
    """Either server when both are malicious: server 0 sees the activations and decides the
    whole gradient; server 1 hands over its training shares and returns a zero gradient share.

    ``colluding`` stays True: at the end server 0 inverts the pooled inference shares."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.colluding = True
        self.last_training_share: dict[str, np.ndarray] = {}

    def on_message(self, msg: Any) -> list[bytes]:
        if self.party == 1 and msg.kind == K.SHARE:
            self.last_training_share[msg.sender] = _to_ring(msg.tensor).copy()
        return super().on_message(msg)

    def _training_view(self, owner: str, share: np.ndarray) -> np.ndarray:
        code = np.array([Op.COLLUDE, owner_index(owner), COLLUDE_TRAINING], np.int64)
        other = self.expect(self.request(SERVER1, [(K.CONTROL, code)]), K.SHARE, SERVER1).tensor
        if other.shape != share.shape:
            raise ShapeError("the colluding server holds a share of another batch")
        return ring.decode(ring.reveal(_to_ring(share), _to_ring(other)), self.model.frac_bits)

    def _gradient_share(self, honest: np.ndarray, offset: np.ndarray) -> np.ndarray:
        return offset  # server 1 sends zeros: the owner reveals exactly FSHA's gradient

    def _control(self, sender: str, code: np.ndarray) -> list[bytes]:
        op = int(code[0]) if code.size else -1
        if self.party == 1 and op == Op.CUT_GRAD:
            result = self.results.pop((sender, Op.CUT_GRAD), None)
            if result is None:
                raise ShapeError(f"{sender} asked for CUT_GRAD before it was computed")
            return [self.reply(sender, K.CUT_GRAD_SHARE, np.zeros_like(_to_ring(result)))]
        if (self.party == 1 and sender == SERVER0 and op == Op.COLLUDE and code.size == 3
                and int(code[2]) == COLLUDE_TRAINING):
            owner = f"owner:{int(code[1])}"
            share = self.last_training_share.get(owner)
            if share is None:
                raise ShapeError(f"no training share of {owner} to hand over")
            return [self.reply(SERVER0, K.SHARE, share)]
        return super()._control(sender, code)

    def _held(self, owner: str) -> np.ndarray:
        if self.party != 0:
            raise ShapeError("server 0 inverts the pooled shares")
        return super()._held(owner)


__all__ = ["MALICIOUS", "MALICIOUS_COLLUDING", "MALICIOUS_SERVER", "ColludingShareServer",
           "CurvePoint", "MaliciousServer", "MaliciousShareServer", "SERVER0", "SERVER1"]
