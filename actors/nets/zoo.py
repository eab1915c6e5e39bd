"""The built-in split networks, and how a user's own network is brought in.

A network is a ``torch.nn.Sequential`` of named layers; a cut is the name of the layer after
which the owner's part ends (``--cut``), so every layer boundary is a split point. The
built-ins are the only place in the lab that holds image sizes and layer widths.

``--model package.module:function`` imports a user's function that returns either a ready
:class:`~actors.nets.descriptor.SplitNetwork`, or ``(sequential, cut)`` where ``cut`` is a
layer name or an index (the owner keeps layers ``[0, cut]``).
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from actors.nets.descriptor import Shape, SplitNetwork, dims
from protocol.errors import ConfigError

DEFAULT_LR = 0.1


@dataclass(frozen=True)
class Builtin:
    """A built-in network: its layers (built under the run's seed), shapes and default cut."""

    layers: Callable[[], OrderedDict[str, nn.Module]]
    input_shape: Shape
    classes: int
    default_cut: str
    about: str
    # The SGD learning rate it trains stably at (momentum 0.9, batch 64). LeNet-5 at 0.1
    # swings by +-3 points from epoch to epoch, so runs that should agree (plaintext and
    # secret-shared) differ by noise alone; at 0.05 it converges as fast and stays put.
    lr: float = 0.1


def _mlp() -> OrderedDict[str, nn.Module]:
    # The OpenMined / He et al. demo network. Layers are created in the order of the old
    # OwnerNet then ServerNet, so a seed gives the very same initial weights as before.
    return OrderedDict([("flatten", nn.Flatten()), ("fc1", nn.Linear(784, 500)),
                        ("relu1", nn.ReLU()), ("fc2", nn.Linear(500, 500)),
                        ("relu2", nn.ReLU()), ("fc3", nn.Linear(500, 10))])


def _cnn() -> OrderedDict[str, nn.Module]:
    # He, Zhang & Lee's MNIST target (LeNet-5 style), layer names as their tables name them.
    return OrderedDict([
        ("conv1", nn.Conv2d(1, 8, 5)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(8, 16, 5)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()), ("fc1", nn.Linear(256, 120)), ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(120, 84)), ("relu4", nn.ReLU()), ("fc3", nn.Linear(84, 10))])


def _cnn_rgb() -> OrderedDict[str, nn.Module]:
    # A smaller cousin of He et al.'s CIFAR-10 target (64-64-128-128-128-128 channels, 2048->
    # 512->10): two blocks of two 3x3 convolutions at 32 and 64 channels, so an epoch of a few
    # thousand 3x32x32 images trains in seconds on one core. Names follow theirs (conv11, ...).
    return OrderedDict([
        ("conv11", nn.Conv2d(3, 32, 3, padding=1)), ("relu11", nn.ReLU()),
        ("conv12", nn.Conv2d(32, 32, 3, padding=1)), ("relu12", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv21", nn.Conv2d(32, 64, 3, padding=1)), ("relu21", nn.ReLU()),
        ("conv22", nn.Conv2d(64, 64, 3, padding=1)), ("relu22", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()), ("fc1", nn.Linear(64 * 8 * 8, 256)), ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(256, 10))])


BUILTINS: dict[str, Builtin] = {
    "mlp": Builtin(_mlp, (1, 28, 28), 10, "relu1",
                   "Linear 784->500 + ReLU at the owner, 500->500->10 at the server"),
    "cnn": Builtin(_cnn, (1, 28, 28), 10, "pool1",
                   "He et al.'s MNIST LeNet-5: conv 5x5x8, pool, conv 5x5x16, pool, 256-120-84-10",
                   lr=0.05),
    "cnn-rgb": Builtin(_cnn_rgb, (3, 32, 32), 10, "pool1",
                       "3x32x32: conv 32, 32, pool, conv 64, 64, pool, 4096-256-10"),
}


def default_lr(net: SplitNetwork) -> float:
    """The learning rate ``net`` trains at unless ``--lr`` says otherwise (user networks: 0.1)."""
    builtin = BUILTINS.get(net.name)
    return builtin.lr if builtin is not None else DEFAULT_LR


def register_network(name: str, builtin: Builtin) -> None:
    """Add a built-in network (``--model NAME``): a new network is one function returning
    its named layers, in a file of its own if you like, plus this one call."""
    if name in BUILTINS or ":" in name:
        raise ConfigError(f"network {name!r} is already registered or not a plain name")
    BUILTINS[name] = builtin


@dataclass(frozen=True)
class ModelSpec:
    """``--model`` and ``--cut`` parsed once: a built-in name or ``module:function``."""

    name: str
    cut: str | None = None
    topology: str = "vanilla"  # or "u-shaped": the owner keeps a tail and the labels
    tail_cut: str | None = None  # u-shaped: the middle's last layer (default: all but the last)

    @property
    def is_builtin(self) -> bool:
        return self.name in BUILTINS

    def __str__(self) -> str:
        text = self.name if self.cut is None else f"{self.name} --cut {self.cut}"
        if self.topology != "vanilla":
            text += f" --topology {self.topology}"
        return text if self.tail_cut is None else f"{text} --tail-cut {self.tail_cut}"


TOPOLOGIES = ("vanilla", "u-shaped")


def parse_model(name: str, cut: str | None = None, topology: str = "vanilla",
                tail_cut: str | None = None) -> ModelSpec:
    if topology not in TOPOLOGIES:
        raise ConfigError(f"unknown --topology {topology!r}: choose one of "
                          f"{', '.join(TOPOLOGIES)}")
    if tail_cut is not None and topology != "u-shaped":
        raise ConfigError("--tail-cut needs --topology u-shaped (a vanilla split has no tail)")
    name = name.strip()
    if name not in BUILTINS and ":" not in name:
        raise ConfigError(f"unknown model {name!r} for --model: choose one of "
                          f"{', '.join(BUILTINS)} or give package.module:function")
    if name in BUILTINS and cut is not None:
        cuts = list(BUILTINS[name].layers())[:-1]
        if cut not in cuts:
            raise ConfigError(f"unknown cut {cut!r} for --model {name}: choose one of "
                              f"{', '.join(cuts)}")
    return ModelSpec(name, cut, topology, tail_cut)


def _seeded(seed: int, make: Callable[[], object]) -> object:
    """``make()`` under ``seed`` without disturbing the caller's random state."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return make()
    finally:
        torch.random.set_rng_state(state)


def split_sequential(name: str, net: nn.Sequential, cut: str | int, input_shape: Shape,
                     classes: int, tail_cut: str | None = None,
                     u_shaped: bool = False) -> SplitNetwork:
    """Cut a sequential network after layer ``cut`` (a name or an index).

    ``u_shaped``: cut a second time after ``tail_cut`` (default: the last layer but one), so
    the server runs the middle and the owner keeps the tail (the final layer to the logits by
    default) and its labels."""
    names = [n for n, _ in net.named_children()]
    if isinstance(cut, int) and not isinstance(cut, bool):
        if not 0 <= cut < len(names) - 1:
            raise ConfigError(f"network {name}: cut index {cut} must be in 0..{len(names) - 2} "
                              "(the server needs at least one layer)")
        index = cut
    elif cut in names[:-1]:
        index = names.index(cut)
    else:
        raise ConfigError(f"unknown cut {cut!r} for network {name}: choose one of "
                          f"{', '.join(names[:-1])}")
    children = list(net.named_children())
    owner = nn.Sequential(OrderedDict(children[:index + 1]))
    if not u_shaped:
        server = nn.Sequential(OrderedDict(children[index + 1:]))
        return SplitNetwork.build(name, owner, server, input_shape, classes, names[index])
    tail_at = _tail_index(name, names, index, tail_cut)
    middle = nn.Sequential(OrderedDict(children[index + 1:tail_at + 1]))
    tail = nn.Sequential(OrderedDict(children[tail_at + 1:]))
    return SplitNetwork.build(name, owner, middle, input_shape, classes, names[index],
                              tail=tail, tail_cut=names[tail_at])


def _tail_index(name: str, names: list[str], cut_index: int, tail_cut: str | None) -> int:
    """Where the middle ends: after ``tail_cut``, which must leave the middle at least one
    layer after ``--cut`` and the owner's tail at least one layer."""
    if tail_cut is None:
        at = len(names) - 2  # default: the tail is the final layer (Linear to the logits)
    elif tail_cut in names[:-1]:
        at = names.index(tail_cut)
    else:
        raise ConfigError(f"unknown --tail-cut {tail_cut!r} for network {name}: choose one of "
                          f"{', '.join(names[cut_index + 1:-1])}")
    if at <= cut_index:
        raise ConfigError(f"--tail-cut {names[at]} must come after --cut {names[cut_index]} "
                          f"(the server's middle needs a layer): choose one of "
                          f"{', '.join(names[cut_index + 1:-1]) or 'none: move --cut earlier'}")
    return at


def cuts(spec: ModelSpec, seed: int = 0, input_shape: Shape | None = None,
         classes: int | None = None) -> list[SplitNetwork]:
    """Every split point of a built-in network, each with its cut shape."""
    if not spec.is_builtin:
        raise ConfigError(f"--list-cuts needs a built-in model ({', '.join(BUILTINS)})")
    layers = list(BUILTINS[spec.name].layers().items())
    # A cut before the first weighted layer would send the raw input: not a split point.
    first = next(i for i, (_, m) in enumerate(layers) if any(True for _ in m.parameters()))
    return [build_network(ModelSpec(spec.name, c), seed, input_shape, classes)
            for c, _ in layers[first:-1]]


def build_network(spec: ModelSpec, seed: int = 0, input_shape: Shape | None = None,
                  classes: int | None = None) -> SplitNetwork:
    """The descriptor for ``spec`` with initial weights drawn from ``seed``.

    ``input_shape``/``classes`` are the dataset's: a network that does not take them is a
    one-line ConfigError naming both shapes (a built-in is not silently reshaped).
    """
    if spec.is_builtin:
        b = BUILTINS[spec.name]
        want_in = b.input_shape if input_shape is None else tuple(input_shape)
        want_classes = b.classes if classes is None else classes
        if want_in != b.input_shape or want_classes != b.classes:
            raise ConfigError(
                f"--model {spec.name} takes {dims(b.input_shape)} inputs and {b.classes} "
                f"classes; the dataset has {dims(want_in)} and {want_classes}")
        net = _seeded(seed, lambda: nn.Sequential(b.layers()))
        return split_sequential(spec.name, net, spec.cut or b.default_cut, b.input_shape,
                                b.classes, spec.tail_cut, spec.topology == "u-shaped")
    return _user_network(spec, seed, input_shape, classes)


def _user_network(spec: ModelSpec, seed: int, input_shape: Shape | None,
                  classes: int | None) -> SplitNetwork:
    module_name, _, fn_name = spec.name.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"--model {spec.name}: cannot import it ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not callable(fn):
        raise ConfigError(f"--model {spec.name}: {fn_name} is not a function")
    if input_shape is None or classes is None:
        raise ConfigError(f"--model {spec.name}: the dataset's input shape is needed")
    made = _seeded(seed, fn)
    if isinstance(made, SplitNetwork):
        net = made if spec.cut is None else None
        if net is None:
            raise ConfigError(f"--model {spec.name} returns a split network: --cut is not used")
        if net.topology != spec.topology:
            raise ConfigError(f"--model {spec.name} returns a {net.topology} split network; "
                              f"--topology {spec.topology} needs it built with a tail")
        found = (net.input_shape, net.classes)
        if found != (tuple(input_shape), classes):
            raise ConfigError(f"--model {spec.name} takes {dims(net.input_shape)} inputs and "
                              f"{net.classes} classes; the dataset has {dims(input_shape)} "
                              f"and {classes}")
        return net
    if (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Sequential)
            and isinstance(made[1], (int, str))):
        seq, cut = made
        return split_sequential(spec.name, seq, spec.cut if spec.cut is not None else cut,
                                tuple(input_shape), classes, spec.tail_cut,
                                spec.topology == "u-shaped")
    raise ConfigError(f"--model {spec.name} must return a SplitNetwork or (nn.Sequential, cut), "
                      f"got {type(made).__name__}")
