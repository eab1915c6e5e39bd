"""Adam, computed as torch.optim.Adam computes it on CPU, without importing torch._dynamo.

Building any ``torch.optim`` optimiser imports ``torch._dynamo`` (its methods are wrapped by
``torch._disable_dynamo``): about 1.3 s of CPU per process on the 2-core AMD EPYC (torch 2.13),
paid by every adversary's worker for its inverse network and by the validator's, none of which
ever compiles. ``actors.nets.sgd`` does the same for the roles' SGD.

``Adam`` is torch's single-tensor Adam (the CPU default: no foreach, fused, AMSGrad, weight
decay or maximize, which these fits do not use) op for op, so a fit ends on the same bits
(``tests/test_adam.py`` checks it against ``torch.optim.Adam`` over many steps). The attacks that
need more of torch's Adam (AMSGrad in UnSplit, FSHA's parameter groups) keep torch's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch

from protocol.errors import ConfigError


class PlainOptimizer(ABC):
    """What the plain optimisers share with ``torch.optim.Optimizer``: a parameter list, a
    per-parameter ``state`` and ``zero_grad``; ``step`` updates each parameter that has a
    gradient (``_update``), without autograd."""

    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        self.params = list(params)
        self.state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)

    def zero_grad(self) -> None:
        for p in self.params:  # torch's default (set_to_none=True)
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.grad is not None:
                self._update(p, p.grad, self.state[p])

    @abstractmethod
    def _update(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any]) -> None:
        """Update ``p`` in place from ``grad``, keeping what it needs in ``state``."""


class Adam(PlainOptimizer):
    """``torch.optim.Adam(params, lr, betas, eps)``'s ``zero_grad`` and ``step``."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        beta1, beta2 = betas
        if not (lr >= 0.0 and eps >= 0.0 and 0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ConfigError(f"Adam needs lr >= 0, eps >= 0 and betas in [0, 1), got lr={lr}, "
                              f"betas={betas}, eps={eps}")
        super().__init__(params)
        if not self.params:
            raise ConfigError("Adam got an empty parameter list")
        self.lr, self.beta1, self.beta2, self.eps = float(lr), beta1, beta2, float(eps)

    def _update(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any]) -> None:
        if not state:
            state["step"] = 0.0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        # torch counts steps in a float32 tensor and reads it back with .item(): the same float
        # while below 2^24 steps.
        step = state["step"] = state["step"] + 1.0
        exp_avg.lerp_(grad, 1 - self.beta1)
        exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        bias_correction1 = 1 - self.beta1 ** step
        bias_correction2 = 1 - self.beta2 ** step
        step_size = self.lr / bias_correction1
        denom = (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(self.eps)
        p.addcdiv_(exp_avg, denom, value=-step_size)
