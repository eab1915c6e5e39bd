"""SGD with momentum, computed as torch.optim.SGD computes it, without importing torch._dynamo.

Every method of ``torch.optim.Optimizer`` is wrapped by ``torch._disable_dynamo``, whose first
call imports ``torch._dynamo``: 1.6 s of CPU in each process that builds an optimiser (measured
on the 2-core AMD EPYC, torch 2.13), as much as importing torch itself. On Ray every data owner
and plaintext compute server is a process of its own, so a run paid it once per role, and the
test suite once per actor. The roles need none of what the wrapper is for (they never compile).

``MomentumSGD`` is torch's single-tensor SGD (no weight decay, dampening, Nesterov or maximize:
the lab uses none) op for op, so a run trains to the same bits (``tests/test_sgd.py`` checks it
against ``torch.optim.SGD`` over steps, restored buffers included). ``state[p]
["momentum_buffer"]`` is where torch keeps the buffer too, so checkpoints read it the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from attack.adam import PlainOptimizer
from protocol.errors import ConfigError


class MomentumSGD(PlainOptimizer):
    """``torch.optim.SGD(params, lr, momentum)``'s ``zero_grad`` and ``step``, and its state."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0) -> None:
        if not lr >= 0.0 or not momentum >= 0.0:  # also refuses NaN
            raise ConfigError(f"SGD needs lr >= 0 and momentum >= 0, got {lr} and {momentum}")
        super().__init__(params)
        self.lr, self.momentum = float(lr), float(momentum)

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.grad is not None:
                self._update(p, p.grad, self.state[p])

    def _update(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any]) -> None:
        if self.momentum != 0.0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(self.momentum).add_(grad, alpha=1)
            grad = buf
        p.add_(grad, alpha=-self.lr)
