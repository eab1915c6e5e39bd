"""The feature-space hijacking attack (FSHA; Pasquini, Ateniese & Bernaschi, CCS 2021).

A *malicious* compute server does not train the task. On its own auxiliary ("public") images
it trains an autoencoder: a pilot encoder ``tilde_f`` with the cut's output shape and a decoder
back to the input. A discriminator ``D`` on cut space learns to tell the owner's activations
from the pilot's (WGAN-GP critic). Every training batch the owner sends is answered with the
gradient of ``mean(D(h))`` w.r.t. the owner's activations ``h``: the owner, believing it is the
task's gradient, moves its first part so that its features look like the pilot's. Once they
do, the decoder, trained only on public data, inverts the owner's features: private inputs
come back without a single oracle query.

Losses as in the authors' code (WGAN variant): the owner's loss ``mean(D(f(x_priv)))``; the
autoencoder's ``MSE(decoder(tilde_f(x_pub)), x_pub)``; the critic's
``mean(D(tilde_f(x_pub))) - mean(D(f(x_priv))) + gp * GP``. Everything here is plain torch
on numpy arrays: no Ray, no wire, no knowledge of the lab's roles.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from copy import deepcopy
from typing import Any

import numpy as np
import torch
from torch import nn

from attack.base import check_images, check_input_shape
from attack.conv import build_decoder
from protocol.errors import ConfigError, ShapeError

__all__ = ["FeatureSpaceHijacker", "default_discriminator", "default_encoder", "fresh_copy"]

#: Hidden width of the default flat encoder / critic: small enough for one CPU thread.
HIDDEN = 256


def default_encoder(input_shape: tuple[int, int, int], cut_shape: tuple[int, ...]) -> nn.Module:
    """A pilot network from the shapes alone: an MLP for a flat cut, convolutions for a map."""
    colours, height, width = input_shape
    if len(cut_shape) == 3:
        c_cut, h_cut, w_cut = cut_shape
        # Two 3x3 convolutions and a resize to the cut's map; the final ReLU matches cuts
        # taken after an activation only loosely, which is all the critic needs to start from.
        return nn.Sequential(
            nn.Conv2d(colours, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d((h_cut, w_cut)),
            nn.Conv2d(32, c_cut, 3, padding=1))
    out = math.prod(cut_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(colours * height * width, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, out), nn.Unflatten(1, tuple(cut_shape)))


def fresh_copy(module: nn.Module, seed: int) -> nn.Module:
    """The same architecture with new weights drawn from ``seed``: the attacker knows the
    owner part's layers (the lab's descriptor), never its weights."""
    copy = deepcopy(module)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for layer in copy.modules():
            reset = getattr(layer, "reset_parameters", None)
            if callable(reset):
                reset()
    return copy


def default_discriminator(cut_shape: tuple[int, ...]) -> nn.Module:
    """The critic on cut space; no BatchNorm (the gradient penalty is per example)."""
    if len(cut_shape) == 3:
        c_cut, h_cut, w_cut = cut_shape
        side = (math.ceil(h_cut / 4), math.ceil(w_cut / 4))
        return nn.Sequential(
            nn.Conv2d(c_cut, 32, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(64 * side[0] * side[1], 1))
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(cut_shape), HIDDEN),
                         nn.LeakyReLU(0.2), nn.Linear(HIDDEN, HIDDEN), nn.LeakyReLU(0.2),
                         nn.Linear(HIDDEN, 1))


class FeatureSpaceHijacker:
    """FSHA's server side: answer owner batches with the critic's gradient, and invert.

    ``aux`` is the attacker's public data (N, C, H, W) in [0, 1]. ``encoder_factory``, if
    given, builds the pilot (the authors' pilot mirrors the client's network; the lab passes a
    freshly initialised copy of the owner part's architecture); it must map (B, *input_shape)
    to (B, *cut_shape). ``grad_scale`` multiplies the gradient sent back (the authors' ``alpha``
    scaling of the owner's adversarial loss). ``warmup`` autoencoder steps on ``aux`` run at
    construction: offline preparation the server can do before the owner connects.
    ``warmup_pilot_lr`` is the pilot's rate during that warm-up (None: ``lr``) and ``pilot_lr``
    its rate afterwards; both 0 keep the pilot at its starting weights, a fixed target feature
    space (only the decoder learns).
    """

    def __init__(
        self, input_shape: tuple[int, int, int], cut_shape: tuple[int, ...], aux: np.ndarray,
        *, seed: int, lr: float = 1e-3, lr_critic: float = 1e-4, gp_weight: float = 500.0,
        grad_scale: float = 1.0, batch_size: int = 64, warmup: int = 0, critic_steps: int = 1,
        pilot_lr: float | None = None, warmup_pilot_lr: float | None = None,
        encoder_factory: Callable[[], nn.Module] | None = None,
    ) -> None:
        shape = check_input_shape(input_shape, "FSHA")
        assert shape is not None
        self.input_shape = shape
        self.cut_shape = tuple(int(d) for d in cut_shape)
        if not self.cut_shape or min(self.cut_shape) < 1:
            raise ConfigError(f"FSHA cut_shape must be positive sizes, got {cut_shape}")
        pilot_lr = lr if pilot_lr is None else pilot_lr
        warmup_pilot_lr = lr if warmup_pilot_lr is None else warmup_pilot_lr
        if (lr <= 0 or lr_critic <= 0 or gp_weight < 0 or batch_size < 2 or warmup < 0
                or critic_steps < 1 or not pilot_lr >= 0 or not warmup_pilot_lr >= 0):
            raise ConfigError(f"FSHA needs lr, lr_critic > 0, gp_weight >= 0, batch_size >= 2, "
                              f"warmup >= 0, critic_steps >= 1; got lr={lr} "
                              f"lr_critic={lr_critic} gp_weight={gp_weight} "
                              f"batch_size={batch_size} warmup={warmup} "
                              f"critic_steps={critic_steps}, pilot_lr={pilot_lr}, "
                              f"warmup_pilot_lr={warmup_pilot_lr} (both >= 0)")
        if not math.isfinite(grad_scale) or grad_scale <= 0:
            raise ConfigError(f"FSHA grad_scale must be a finite number > 0, got {grad_scale}")
        x = check_images(aux, "FSHA auxiliary images")
        if tuple(x.shape[1:]) != self.input_shape or len(x) < 2:
            raise ShapeError(f"FSHA auxiliary images must be (N >= 2, "
                             f"{', '.join(map(str, self.input_shape))}), got {x.shape}")
        self.aux = torch.from_numpy(np.ascontiguousarray(x))
        self.gp_weight, self.grad_scale, self.batch_size = gp_weight, grad_scale, batch_size
        self.critic_steps = critic_steps
        self.gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.encoder = (encoder_factory() if encoder_factory is not None
                            else default_encoder(self.input_shape, self.cut_shape))
            self.decoder = build_decoder(self.cut_shape, self.input_shape)
            self.critic = default_discriminator(self.cut_shape)
        self._check_encoder()
        self.decoder.start_at(float(x.mean()))
        self.opt_ae = torch.optim.Adam([{"params": list(self.encoder.parameters())},
                                        {"params": list(self.decoder.parameters())}], lr=lr)
        self.pilot_lr = pilot_lr
        self.opt_critic = torch.optim.Adam(self.critic.parameters(), lr=lr_critic)
        self.steps = 0
        self._perm = torch.randperm(len(self.aux), generator=self.gen)
        self._cursor = 0
        self.last: dict[str, float] = {}
        self.opt_ae.param_groups[0]["lr"] = warmup_pilot_lr
        for _ in range(warmup):
            self._autoencoder_step(self._aux_batch(batch_size))
        # After the warm-up the pilot may learn at its own rate: 0 freezes the target feature
        # space, so the owner chases a fixed target instead of a moving one.
        self.opt_ae.param_groups[0]["lr"] = pilot_lr

    def _check_encoder(self) -> None:
        with torch.no_grad():
            out = self.encoder(torch.zeros(2, *self.input_shape))
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, *self.cut_shape):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"FSHA encoder maps (2, {self.input_shape}) to {got}, not the "
                              f"cut's (2, {self.cut_shape})")

    def _aux_batch(self, n: int) -> torch.Tensor:
        """The next ``n`` auxiliary images, reshuffled each pass."""
        if self._cursor + n > len(self.aux):
            self._perm = torch.randperm(len(self.aux), generator=self.gen)
            self._cursor = 0
        idx = self._perm[self._cursor:self._cursor + n]
        self._cursor += n
        return self.aux[idx]

    def _autoencoder_step(self, x_pub: torch.Tensor) -> torch.Tensor:
        """One step of pilot + decoder on the reconstruction loss; returns the pilot's z."""
        self.encoder.train()
        self.decoder.train()
        self.opt_ae.zero_grad()
        # A pilot at rate 0 does not move: skip its backward pass (the same numbers, faster).
        with torch.set_grad_enabled(self.opt_ae.param_groups[0]["lr"] > 0):
            z_pub = self.encoder(x_pub)
        loss = nn.functional.mse_loss(self.decoder(z_pub), x_pub)
        loss.backward()
        self.opt_ae.step()
        self.last["autoencoder_mse"] = float(loss.detach())
        return z_pub.detach()

    def _gradient_penalty(self, z_priv: torch.Tensor, z_pub: torch.Tensor) -> torch.Tensor:
        """WGAN-GP: (||grad D(mix)|| - 1)^2 on random interpolates between the two spaces."""
        shape = (len(z_priv),) + (1,) * (z_priv.ndim - 1)
        alpha = torch.rand(shape, generator=self.gen)
        mix = (alpha * z_priv + (1 - alpha) * z_pub).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.critic(mix).sum(), mix, create_graph=True)
        return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()

    def check_cut(self, h: np.ndarray) -> torch.Tensor:
        arr = np.asarray(h)
        if arr.ndim != 1 + len(self.cut_shape) or tuple(arr.shape[1:]) != self.cut_shape or (
                len(arr) < 1) or arr.dtype.kind != "f":
            raise ShapeError(f"FSHA expects float activations (B, "
                             f"{', '.join(map(str, self.cut_shape))}), got {arr.dtype} "
                             f"{arr.shape}")
        return torch.from_numpy(np.nan_to_num(arr.astype(np.float32)))

    def step(self, h: np.ndarray) -> np.ndarray:
        """The owner's batch of cut activations -> the gradient to send back (same shape).

        The gradient is d mean(D(h)) / dh under the critic as it stands (before this step's
        update, as in the authors' single tape); then the autoencoder takes one step on an
        auxiliary batch of the same size and the critic ``critic_steps`` (the authors: one;
        more make the critic's gradient a better guide when the owner's steps are large).
        """
        z_priv = self.check_cut(h).requires_grad_(True)
        self.critic.train()
        owner_loss = self.critic(z_priv).mean()
        (grad,) = torch.autograd.grad(owner_loss, z_priv)
        n = max(2, min(len(z_priv), self.batch_size))
        z_pub = self._autoencoder_step(self._aux_batch(n))
        z_priv_d = z_priv.detach()
        if len(z_priv_d) != n:  # the critic compares equal-sized batches
            z_priv_d = z_priv_d[torch.randint(len(z_priv_d), (n,), generator=self.gen)]
        for k in range(self.critic_steps):
            if k:  # further critic steps: fresh public features, same private batch
                with torch.no_grad():
                    z_pub = self.encoder(self._aux_batch(n))
            loss, wasserstein = self._critic_step(z_priv_d, z_pub)
        self.steps += 1
        self.last.update(owner_loss=float(owner_loss.detach()), critic_loss=float(loss.detach()),
                         wasserstein=float(wasserstein.detach()))
        return (grad * self.grad_scale).numpy().astype(np.float32)

    def _critic_step(self, z_priv: torch.Tensor,
                     z_pub: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.opt_critic.zero_grad()
        wasserstein = self.critic(z_pub).mean() - self.critic(z_priv).mean()
        loss = wasserstein + self.gp_weight * self._gradient_penalty(z_priv, z_pub)
        loss.backward()
        self.opt_critic.step()
        return loss, wasserstein

    # --- checkpoints: everything the attack has learnt, as named arrays (no pickle) ----------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Pilot, decoder and critic (parameters and buffers), both Adam optimisers (moments,
        step counts, learning rates), the generator, the auxiliary order and cursor, the step
        count and the last losses: :meth:`load_state_dict` continues the attack exactly."""
        out: dict[str, np.ndarray] = {}
        for part, module in self._modules().items():
            out |= {f"{part}.{k}": v.detach().numpy().copy()
                    for k, v in module.state_dict().items()}
        for part, opt in self._optimisers().items():
            saved = opt.state_dict()
            for index, slots in saved["state"].items():
                out |= {f"{part}.state.{index}.{k}": torch.as_tensor(v).numpy().copy()
                        for k, v in slots.items()}
            out |= {f"{part}.lr.{g}": np.array(group["lr"], np.float64)
                    for g, group in enumerate(saved["param_groups"])}
        out |= {f"last.{k}": np.array(v, np.float64) for k, v in self.last.items()}
        return out | {"gen": self.gen.get_state().numpy().copy(),
                      "perm": self._perm.numpy().copy(),
                      "cursor": np.array(self._cursor, np.int64),
                      "steps": np.array(self.steps, np.int64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Continue from :meth:`state_dict`'s output (same shapes; ``ConfigError`` if not)."""
        try:
            for part, module in self._modules().items():
                module.load_state_dict(_under(state, f"{part}."))
            for part, opt in self._optimisers().items():
                saved = opt.state_dict()
                slots: dict[int, dict[str, torch.Tensor]] = {}
                for key, value in _under(state, f"{part}.state.").items():
                    index, _, slot = key.partition(".")
                    slots.setdefault(int(index), {})[slot] = value
                saved["state"] = slots
                for g, group in enumerate(saved["param_groups"]):
                    group["lr"] = float(state[f"{part}.lr.{g}"])
                opt.load_state_dict(saved)
            self.gen.set_state(torch.from_numpy(np.array(state["gen"], np.uint8)))
            perm = torch.from_numpy(np.array(state["perm"], np.int64))
            if sorted(perm.tolist()) != list(range(len(self.aux))):
                raise ValueError(f"an order of {len(perm)} auxiliary images for {len(self.aux)}")
            self._perm, self._cursor = perm, int(state["cursor"])
            self.steps = int(state["steps"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"FSHA: unusable checkpointed state ({exc})") from None
        self.last = {k: float(v) for k, v in _under(state, "last.", tensors=False).items()}

    def _modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "decoder": self.decoder, "critic": self.critic}

    def _optimisers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_ae": self.opt_ae, "opt_critic": self.opt_critic}

    @torch.no_grad()
    def reconstruct(self, h: np.ndarray, batch: int = 500) -> np.ndarray:
        """(N, *cut_shape) activations -> (N, C, H, W) images in [0, 1] through the decoder."""
        z = self.check_cut(h) if len(h) else torch.zeros(0, *self.cut_shape)
        self.decoder.eval()
        out = [self.decoder(z[i:i + batch]) for i in range(0, len(z), batch)]
        if not out:
            return np.zeros((0, *self.input_shape), np.float32)
        return torch.cat(out).clamp(0, 1).numpy().astype(np.float32)


def _under(state: dict[str, np.ndarray], prefix: str, tensors: bool = True) -> dict[str, Any]:
    """The entries of ``state`` under ``prefix``, prefix removed (as tensors by default)."""
    return {k[len(prefix):]: torch.from_numpy(np.array(v)) if tensors else v
            for k, v in state.items() if k.startswith(prefix)}
