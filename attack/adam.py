"""Adam, computed as torch.optim.Adam(fused=True) computes it on CPU, without importing
torch._dynamo.

Building any ``torch.optim`` optimiser imports ``torch._dynamo`` (its methods are wrapped by
``torch._disable_dynamo``): about 1.3 s of CPU per process on the 2-core AMD EPYC (torch 2.13),
paid by every adversary's worker for its inverse network and by the validator's, none of which
ever compiles. ``actors.nets.sgd`` does the same for the roles' SGD.

``Adam`` is torch's fused Adam (one ``torch._fused_adam_`` call over every parameter with a
gradient; no AMSGrad, weight decay or maximize, which these fits do not use), so a fit ends on
the same bits as with ``torch.optim.Adam(..., fused=True)`` (``tests/test_adam.py`` checks it over
many steps). Fused rather than torch's default single-tensor loop: one pass over each tensor
instead of six, 0.6 ms a step against 4.4 ms for the inverse network's 1.3 M parameters (2026-12-
04, AMD EPYC), which was a fifth of an attack fit. The same update in other rounding: a fit
differs from the single-tensor one in the last bits (2e-7 after 50 steps). The attacks that need
more of torch's Adam (AMSGrad in UnSplit, FSHA's parameter groups) keep torch's.
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
    per-parameter ``state``, ``zero_grad`` and ``step`` (which updates each parameter that has a
    gradient, without autograd)."""

    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        self.params = list(params)
        self.state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)

    def zero_grad(self) -> None:
        for p in self.params:  # torch's default (set_to_none=True)
            p.grad = None

    @abstractmethod
    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""


class Adam(PlainOptimizer):
    """``torch.optim.Adam(params, lr, betas, eps, fused=True)``'s ``zero_grad`` and ``step``."""

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

    @torch.no_grad()
    def step(self) -> None:
        params, grads, avgs, squares, steps = [], [], [], [], []
        for p in self.params:
            if p.grad is None:
                continue  # left alone, its step count too (as torch does)
            state = self.state[p]
            if not state:
                # torch keeps the step count in a float32 tensor (CPU): the same float
                # while below 2^24 steps.
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            avgs.append(state["exp_avg"])
            squares.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(params, grads, avgs, squares, [], steps, lr=self.lr,
                           beta1=self.beta1, beta2=self.beta2, weight_decay=0.0, eps=self.eps,
                           amsgrad=False, maximize=False)
