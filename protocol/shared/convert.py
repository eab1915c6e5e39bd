"""A torch server part -> layers on shares and each party's parameter shares.

The module is traced with torch.fx, so an ``nn.Sequential``, a module of named children and
a ``forward`` written with functional forms (``torch.relu``, ``torch.flatten(x, 1)``,
``x.view(x.size(0), -1)``, ``F.max_pool2d``) all translate, as long as the graph is a chain
(each step consumes the previous step's output). Anything else is refused before training
with one ConfigError line naming the layer.

BatchNorm: folded into the Linear/Conv2d right before it (scale and shift from its running
statistics) when the model is translated for inference (``train=False``: a revealed or frozen
model). Training refuses it: the folded form would train a different parametrisation than
torch's (no batch statistics, no separate gamma/beta), so it is not offered silently.
Dropout and Identity are the identity in inference and refused in training (Dropout).
"""

from __future__ import annotations

import copy
import dataclasses
import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from protocol import ring
from protocol.errors import ConfigError
from protocol.shared.core import Layer, Params
from protocol.shared.elementwise import Flatten, ReLU
from protocol.shared.linear import Conv2d, Linear
from protocol.shared.pool import AvgPool2d, MaxPool2d
from protocol.shared.sequence import out_shapes

SUPPORTED = ("Linear, Conv2d, ReLU, MaxPool2d, AvgPool2d, Flatten; BatchNorm, Dropout and "
             "Identity for inference")
Plain = dict[str, np.ndarray]


def from_torch(module: nn.Module, frac_bits: int = ring.DEFAULT_FRAC_BITS, *,
               train: bool = True, input_shape: tuple[int, ...] | None = None
               ) -> tuple[list[Layer], tuple[list[Params], list[Params]]]:
    """Translate a torch server part; returns (layers, (party 0's shares, party 1's shares)).

    ``input_shape``: the per-example cut shape; when given, the translated layers' output
    shape is checked against a dry run of the module.
    """
    layers, plain = translate(module, train=train)
    if input_shape is not None:
        check_against_torch(module, layers, input_shape)
    return layers, share_params(plain, frac_bits)


def translate(module: nn.Module, *, train: bool = True) -> tuple[list[Layer], list[Plain]]:
    """Layers and their plaintext parameters (float64, in the layers' layouts)."""
    layers: list[Layer] = []
    plain: list[Plain] = []
    for name, op in _chain(module):
        if isinstance(op, nn.BatchNorm1d | nn.BatchNorm2d):
            _fold_batchnorm(name, op, layers, plain, train)
            continue
        if isinstance(op, nn.Dropout | nn.Identity):
            if train and isinstance(op, nn.Dropout):
                raise ConfigError(f"layer '{name}' (Dropout) cannot be trained on shares")
            continue
        layer, params = _convert(name, op)
        layers.append(layer)
        plain.append(params)
    if not layers:
        raise ConfigError("the server part has no layers to compute on shares")
    return _pool_before_relu(layers, plain)


def _pool_before_relu(layers: list[Layer], plain: list[Plain]
                      ) -> tuple[list[Layer], list[Plain]]:
    """ReLU then MaxPool2d -> MaxPool2d then ReLU: the same values (max is monotone), and the
    ReLU's comparisons run on the pooled tensor, a quarter of the size for a 2x2 pool. The
    gradient is torch's too, except where a pooled value is exactly 0 (ReLU's derivative at
    0 is 1 on shares, 0 in torch)."""
    layers, plain = list(layers), list(plain)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], ReLU) and isinstance(layers[i + 1], MaxPool2d):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
            plain[i], plain[i + 1] = plain[i + 1], plain[i]
    return layers, plain


def share_params(plain: list[Plain], frac_bits: int = ring.DEFAULT_FRAC_BITS
                 ) -> tuple[list[Params], list[Params]]:
    p0: list[Params] = []
    p1: list[Params] = []
    for params in plain:
        shares = {n: ring.share(ring.encode(v, frac_bits)) for n, v in params.items()}
        p0.append({n: s[0] for n, s in shares.items()})
        p1.append({n: s[1] for n, s in shares.items()})
    return p0, p1


def encode_params(plain: list[Plain], frac_bits: int = ring.DEFAULT_FRAC_BITS) -> list[Params]:
    """Public (revealed) weights, encoded: what ``SharedNet.reveal`` returns."""
    return [{n: ring.encode(v, frac_bits) for n, v in p.items()} for p in plain]


def check_against_torch(module: nn.Module, layers: list[Layer],
                        input_shape: tuple[int, ...]) -> None:
    batch = (2, *input_shape)
    ours = out_shapes(tuple(layers), batch)[-1]
    with torch.no_grad():
        theirs = tuple(copy.deepcopy(module).eval()(torch.zeros(batch)).shape)
    if ours != theirs:
        raise ConfigError(f"translated server part gives {ours} for input {batch}, "
                          f"torch gives {theirs}")


# --- the chain of steps ------------------------------------------------------------------------
_RELU_FUNCS = (torch.relu, F.relu, torch.relu_)
_FLATTEN_FUNCS = (torch.flatten,)


_LEAVES = (nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.MaxPool2d, nn.AvgPool2d,
           nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Identity)


def _is_size(node: fx.Node) -> bool:
    return (node.op == "call_method" and node.target == "size") or (
        node.op == "call_function" and node.target in (getattr, operator.getitem))


def _chain(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The module's steps, as (name, module), functional forms turned into modules."""
    if isinstance(module, _LEAVES):  # one layer alone (fx would trace into its parameters)
        return [(type(module).__name__, module)]
    try:
        graph = fx.symbolic_trace(module)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "not a plain chain"
        raise ConfigError(f"server part {type(module).__name__} is not a traceable chain of "
                          f"layers ({type(exc).__name__}: {exc})") from None
    current: fx.Node | None = None
    steps = []
    for node in graph.graph.nodes:
        if node.op == "placeholder":
            if current is not None:
                raise ConfigError("the server part takes more than one input")
            current = node
        elif node.op == "output":
            if node.args[0] is not current:
                raise ConfigError("the server part's output is not its last layer's")
        elif node.op == "get_attr":
            raise ConfigError(f"'{node.target}' is used outside a layer: only a chain of "
                              "layers runs on shares")
        elif not _is_size(node):
            inputs = [n for n in node.all_input_nodes if not _is_size(n)]
            if inputs != [current]:
                raise ConfigError(f"'{node.name}' does not take the previous layer's output "
                                  "alone: only a chain of layers runs on shares")
            steps.append((_step_name(node), _as_module(graph, node)))
            current = node
    return steps


def _step_name(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


def _as_module(graph: fx.GraphModule, node: fx.Node) -> nn.Module:
    if node.op == "call_module":
        return graph.get_submodule(str(node.target))
    args, kwargs = node.args[1:], dict(node.kwargs)
    fn_or_method = node.target
    if fn_or_method in _RELU_FUNCS or fn_or_method in ("relu", "relu_"):
        return nn.ReLU()
    if fn_or_method in _FLATTEN_FUNCS or fn_or_method == "flatten":
        return nn.Flatten(*args, **kwargs) if args or kwargs else nn.Flatten(0)
    if fn_or_method in ("view", "reshape") and len(args) == 2 and args[-1] == -1:
        return nn.Flatten()  # x.view(x.size(0), -1)
    if fn_or_method is F.max_pool2d:
        return nn.MaxPool2d(*args, **kwargs)
    if fn_or_method is F.avg_pool2d:
        return nn.AvgPool2d(*args, **kwargs)
    name = getattr(fn_or_method, "__name__", str(fn_or_method))
    raise ConfigError(f"layer '{node.name}' ({name}) is not supported on shares; "
                      f"supported: {SUPPORTED}")


# --- one step ----------------------------------------------------------------------------------
def _pair(v: int | tuple[int, ...], what: str, name: str) -> tuple[int, int]:
    if isinstance(v, str):
        raise ConfigError(f"layer '{name}': {what}={v!r} is not supported on shares (use ints)")
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2:
        raise ConfigError(f"layer '{name}': {what}={v} is not a 2-d value")
    return int(pair[0]), int(pair[1])


def _float(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).numpy().copy()


def _convert(name: str, op: nn.Module) -> tuple[Layer, Plain]:
    if isinstance(op, nn.Linear):
        params = {"weight": np.ascontiguousarray(_float(op.weight).T)}
        if op.bias is not None:
            params["bias"] = _float(op.bias)
        return Linear(op.in_features, op.out_features, op.bias is not None), params
    if isinstance(op, nn.Conv2d):
        return _conv(name, op)
    if isinstance(op, nn.ReLU):
        return ReLU(), {}
    if isinstance(op, nn.Flatten):
        if op.start_dim != 1 or op.end_dim != -1:
            raise ConfigError(f"layer '{name}': only Flatten(start_dim=1) runs on shares")
        return Flatten(), {}
    if isinstance(op, nn.MaxPool2d):
        return _maxpool(name, op), {}
    if isinstance(op, nn.AvgPool2d):
        return _avgpool(name, op), {}
    raise ConfigError(f"layer '{name}' ({type(op).__name__}) is not supported on shares; "
                      f"supported: {SUPPORTED}")


def _conv(name: str, op: nn.Conv2d) -> tuple[Layer, Plain]:
    padding = (0, 0) if op.padding == "valid" else _pair(op.padding, "padding", name)
    if op.groups != 1 or tuple(op.dilation) != (1, 1) or op.padding_mode != "zeros":
        raise ConfigError(f"layer '{name}': Conv2d on shares needs groups=1, dilation=1 and "
                          "zero padding")
    layer = Conv2d(op.in_channels, op.out_channels, _pair(op.kernel_size, "kernel", name),
                   _pair(op.stride, "stride", name), padding, op.bias is not None)
    w = _float(op.weight)
    params = {"weight": np.ascontiguousarray(w.reshape(w.shape[0], -1).T)}
    if op.bias is not None:
        params["bias"] = _float(op.bias)
    return layer, params


def _maxpool(name: str, op: nn.MaxPool2d) -> MaxPool2d:
    if (_pair(op.padding, "padding", name) != (0, 0) or _pair(op.dilation, "dilation", name)
            != (1, 1) or op.ceil_mode or op.return_indices):
        raise ConfigError(f"layer '{name}': MaxPool2d on shares needs padding=0, dilation=1, "
                          "ceil_mode=False")
    kernel = _pair(op.kernel_size, "kernel", name)
    return MaxPool2d(kernel, _pair(op.stride or kernel, "stride", name))


def _avgpool(name: str, op: nn.AvgPool2d) -> AvgPool2d:
    padding = _pair(op.padding, "padding", name)
    if op.ceil_mode or (not op.count_include_pad and padding != (0, 0)):
        raise ConfigError(f"layer '{name}': AvgPool2d on shares needs ceil_mode=False and a "
                          "fixed divisor (count_include_pad=True)")
    kernel = _pair(op.kernel_size, "kernel", name)
    return AvgPool2d(kernel, _pair(op.stride or kernel, "stride", name), padding,
                     int(op.divisor_override or 0))


def _fold_batchnorm(name: str, bn: nn.Module, layers: list[Layer], plain: list[Plain],
                    train: bool) -> None:
    kind = type(bn).__name__
    if train:
        raise ConfigError(f"layer '{name}' ({kind}) cannot be trained on shares: it is folded "
                          "into the layer before it for inference only")
    if not layers or not isinstance(layers[-1], Linear | Conv2d) or bn.running_mean is None:
        raise ConfigError(f"layer '{name}' ({kind}) must follow a Linear or Conv2d and track "
                          "running statistics to be folded")
    scale = 1.0 / np.sqrt(_float(bn.running_var) + bn.eps)
    if bn.affine:
        scale = scale * _float(bn.weight)
    shift = -_float(bn.running_mean) * scale + (_float(bn.bias) if bn.affine else 0.0)
    params = plain[-1]
    bias = params.get("bias", np.zeros(scale.shape))
    plain[-1] = {"weight": params["weight"] * scale[None, :], "bias": bias * scale + shift}
    layers[-1] = dataclasses.replace(layers[-1], bias=True)
