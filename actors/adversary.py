"""The black-box inversion attack as a role can run it: query the oracle, invert what it holds.

Any role that holds cut-layer activations of owners' private inputs — the eavesdropper (what it
tapped), the compute server (what it decrypted) — mixes this in and implements
``intercepted_activations``. Querying goes over the wire like any customer's query would.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from actors.fit_cores import fit_threads
from actors.nets.descriptor import Shape, SplitNetwork
from attack.base import Rung
from attack.fit_sharing import fit_digest
from attack.ladder import (
    attack_params,
    intercept_point,
    make_adapted_attack,
    make_attack,
    needs_architecture,
    needs_weights,
    trains_locally,
)
from attack.local_oracle import local_answers
from protocol.errors import ConfigError, ShapeError
from protocol.frame import MessageKind


@dataclass(frozen=True)
class Intercepted:
    """Inference activations an adversary holds for one owner, in the owner's sending order."""

    owner: str
    seqs: list[int]
    acts: np.ndarray  # (N, *cut_shape) float32


@dataclass(frozen=True)
class Reconstruction:
    owner: str
    images: np.ndarray  # (N, C, H, W) in [0, 1]
    queries_used: int


def stack(owner: str, items: list[tuple[int, np.ndarray]], cut_shape: Shape) -> Intercepted:
    items = sorted(items, key=lambda item: item[0])
    acts = [a.reshape(-1, *cut_shape) for _, a in items]
    return Intercepted(owner, [s for s, _ in items],
                       np.concatenate(acts) if acts else np.zeros((0, *cut_shape), np.float32))


#: Fewest (activation, image) pairs a decoder is trained on: batch statistics need two.
MIN_FIT = 2
#: The name ``attack`` prepares under when called on its own (not by the lab).
SOLO = "solo"


@dataclass
class Prepared:
    """One adversary's attack between ``prepare_attack`` and ``attack_with``."""

    rung: Rung
    point: str  # the intercept point: "cut" or "output"
    used: int  # oracle queries answered
    trained: bool
    inputs: tuple[np.ndarray, np.ndarray] | None  # what ``fit`` trains on, until it has
    aux: np.ndarray

    def fit(self) -> None:
        if self.inputs is not None:
            self.rung.fit(*self.inputs)
            self.inputs, self.trained = None, True


class InversionAttacker(ABC):
    """Mixin for a ``Role``: the attack, given what the role intercepted."""

    net: SplitNetwork  # the shapes (the architecture is public; the weights are not)

    @abstractmethod
    def intercepted_activations(self, owner: str) -> Intercepted:
        """What this adversary holds of ``owner``'s inference activations."""

    def intercepted_outputs(self, owner: str) -> np.ndarray:
        """The softmax answers to ``owner``'s private inference this adversary holds."""
        raise ConfigError(f"{type(self).__name__} cannot attack the output intercept point")

    def query_outputs(self, owner: str, x: np.ndarray) -> np.ndarray:
        """The whole model's softmax on ``x``, as this adversary can obtain it."""
        raise ConfigError(f"{type(self).__name__} cannot query the prediction API")

    def query_oracle(self, owner: str, x: np.ndarray) -> np.ndarray:
        self.net.check_images(x, "oracle query")
        replies = self.request(owner, [(MessageKind.QUERY, x.astype(np.float32))])
        out = self.expect(replies, MessageKind.QUERY_RESULT, owner).tensor
        if tuple(out.shape[1:]) != self.net.cut_shape or len(out) > len(x):
            raise ShapeError(f"oracle answered {out.shape} to {len(x)} queries")
        return out

    def attack(self, owners: list[str], aux: np.ndarray, epochs: int, seed: int,
               method: str = "mlp", weights: np.ndarray | None = None,
               defences: tuple[str, ...] = ()) -> list[Reconstruction]:
        """Invert every owner's intercepted activations with attack ``method`` (the ladder).

        Black-box methods train through the first owner's oracle on the auxiliary data, with
        whatever the oracle answers (a query budget may cut it short). The white-box methods
        are handed the first part's ``weights`` (their threat model) and the owner's
        ``defences`` (canonical ``--defence`` specs: a mechanism is public, only its random
        draws are secret) and need no queries: ``whitebox`` fits inputs to what it holds,
        ``whitebox-conv`` trains the decoder on its own run of the defended first part.
        ``unsplit`` gets only the first part's architecture (a fresh module of the public
        descriptor, whose weights it redraws): no queries, no auxiliary data, no weights.

        The lab runs the same three steps apart (:meth:`prepare_attack`, :meth:`fit_attack`,
        :meth:`attack_with`) so that adversaries whose fits are identical fit once.
        """
        self.prepare_attack(SOLO, owners, aux, epochs, seed, method, weights, defences)
        return self.attack_with(SOLO, owners, None)

    def prepare_attack(self, adversary: str, owners: list[str], aux: np.ndarray, epochs: int,
                       seed: int, method: str = "mlp", weights: np.ndarray | None = None,
                       defences: tuple[str, ...] = ()) -> str | None:
        """Build the rung and gather what it fits on (the oracle queries happen here).

        The oracle is the first owner's. Returns the fit's digest
        (:func:`attack.fit_sharing.fit_digest`: the rung, its settings and every byte it
        would train on), or None when this rung does not fit. ``adversary`` names the
        prepared attack: one role may play two adversaries.
        """
        point = intercept_point(method)
        inputs: tuple[np.ndarray, np.ndarray] | None = None
        used, trained = 0, False
        if needs_weights(method):
            part = self.net.owner_from(np.asarray(weights)).eval()
            if trains_locally(method):  # a decoder on its own outputs of the known part
                rung = make_attack(method, **self._params(method, epochs, seed))
                if len(aux) >= MIN_FIT:
                    inputs = (local_answers(part, defences, aux, seed), aux)
            else:
                rung = make_adapted_attack(method, defences, part=part,
                                           **self._params(method, None, seed))
                trained = True
        elif needs_architecture(method):
            rung = make_attack(method, architecture=self.net.owner_part,
                               **self._params(method, epochs, seed))
            trained = True
        else:
            rung = make_attack(method, **self._params(method, epochs, seed))
            acts, images = self.collect(owners[0], aux, rung.query_batch, point)
            used = len(images)
            if used >= MIN_FIT:
                inputs = (acts, images)
        self.network.flush()
        prepared = Prepared(rung, point, used, trained, inputs, aux)
        self.__dict__.setdefault("_prepared", {})[adversary] = prepared
        return None if inputs is None else fit_digest(rung, *inputs)

    def fit_attack(self, adversary: str, sharers: int | None = None) -> Rung:
        """Fit the rung ``prepare_attack`` built for ``adversary``; returns it, fitted.
        ``sharers``: how many fits share this node's cores now (``Backend.fit_sharers``); the
        fit takes its share of them as torch threads, or one thread where None."""
        prepared = self._prepared_for(adversary)
        with fit_threads(sharers if prepared.rung.THREAD_INVARIANT else None):
            prepared.fit()
        return prepared.rung

    def attack_with(self, adversary: str, owners: list[str],
                    fitted: Rung | None = None) -> list[Reconstruction]:
        """Reconstruct every owner's inputs with ``adversary``'s prepared rung, or with
        ``fitted``: the same rung fitted on byte-identical inputs (by this role or another)."""
        prepared = self._prepared_for(adversary)
        del self._prepared[adversary]
        if fitted is not None:
            prepared.rung, prepared.trained, prepared.inputs = fitted, True, None
        else:
            prepared.fit()
        out = []
        for owner in owners:
            got = (self.intercepted_outputs(owner) if prepared.point == "output"
                   else self.intercepted_activations(owner).acts)
            if len(got) == 0:  # an owner with no private test images sent nothing
                images = np.zeros((0, *self.net.input_shape), np.float32)
            elif prepared.trained:
                images = prepared.rung.reconstruct(got)
            else:  # too little to train on: the best guess is the mean auxiliary image
                images = np.repeat(prepared.aux.mean(0, keepdims=True), len(got), axis=0)
            out.append(Reconstruction(owner, images.astype(np.float32), prepared.used))
        return out

    def _prepared_for(self, adversary: str) -> Prepared:
        prepared = self.__dict__.get("_prepared", {}).get(adversary)
        if prepared is None:
            raise ConfigError(f"{type(self).__name__}: no attack prepared for {adversary!r}")
        return prepared

    def _params(self, method: str, epochs: int | None, seed: int) -> dict[str, object]:
        """The settings the lab gives a rung, those it takes (a plug-in rung need not take
        ``input_shape`` or ``epochs``)."""
        offered = {"seed": seed, "epochs": epochs, "input_shape": self.net.input_shape}
        takes = attack_params(method)
        return {k: v for k, v in offered.items() if k in takes and v is not None}

    def collect(self, owner: str, aux: np.ndarray, batch: int,
                point: str = "cut") -> tuple[np.ndarray, np.ndarray]:
        """Query the oracle with the auxiliary images until it stops answering.

        The answers are kept: every rung of the ladder this adversary climbs trains on the same
        answers, as a real attacker would, instead of spending a query budget once per rung.
        """
        key = (owner, aux.shape, float(aux.sum()), point)
        cache: dict = self.__dict__.setdefault("_answers", {})
        if key not in cache:
            cache[key] = self._query_all(owner, aux, batch, point)
        return cache[key]

    def _query_all(self, owner: str, aux: np.ndarray, batch: int,
                   point: str) -> tuple[np.ndarray, np.ndarray]:
        ask = self.query_outputs if point == "output" else self.query_oracle
        acts, images = [], []
        for start in range(0, len(aux), batch):
            x = aux[start:start + batch]
            try:
                out = ask(owner, x)
            except ShapeError:  # refused (over budget): no reply came
                break
            acts.append(out)
            images.append(x[: len(out)])
            if len(out) < len(x):  # answered in part: the budget is spent
                break
        if not acts:
            shape = (self.net.classes,) if point == "output" else self.net.cut_shape
            return (np.zeros((0, *shape), np.float32),
                    np.zeros((0, *self.net.input_shape), np.float32))
        return np.concatenate(acts).astype(np.float32), np.concatenate(images)
