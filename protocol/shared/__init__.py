"""Layers on additive shares for any supported server part (see protocol.shared.sequence).

    layers, (p0, p1) = from_torch(server_part, frac_bits, input_shape=cut_shape)
    net0, net1 = SharedNet(0, layers, p0), SharedNet(1, layers, p1)
    plan = train_plan(layers, (batch, *cut_shape))       # traced, cached per shape
    logits, cache = yield from net0.forward(store0, x0)  # one party's program
    dx = yield from net0.backward(store0, cache, g0, lr, momentum, grad_scale=batch)
"""

from protocol.shared.convert import encode_params, from_torch, share_params, translate
from protocol.shared.core import Ctx, Layer, PlanRecorder
from protocol.shared.elementwise import Flatten, ReLU
from protocol.shared.linear import Conv2d, Linear
from protocol.shared.pool import AvgPool2d, MaxPool2d
from protocol.shared.sequence import ForwardCache, SharedNet, infer_plan, out_shapes, train_plan

__all__ = ["AvgPool2d", "Conv2d", "Ctx", "Flatten", "ForwardCache", "Layer", "Linear",
           "MaxPool2d", "PlanRecorder", "ReLU", "SharedNet", "encode_params", "from_torch",
           "infer_plan", "out_shapes", "share_params", "train_plan", "translate"]
