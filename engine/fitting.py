"""The one loop that fits LoRA factors by gradient descent through a frozen base network: pass one's
--refine (self-supervised pairs from the clip itself) and the benchmarks' ceiling and chain LoRAs (pairs
with HR frames) all call fit_factors with their own pairs."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .lora import lora_applied
from .losses import charbonnier

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]


def fit_factors(base: torch.nn.Module, start: Factors, pairs: Callable[[], tuple[torch.Tensor, torch.Tensor]], steps: int, lr: float,
                held_out: tuple[torch.Tensor, torch.Tensor] | None = None, check_every: int = 5) -> Factors:
    """Factors fitted from `start` by Adam on the Charbonnier loss of base + LoRA (inputs) against targets,
    one batch of pairs() per step. With held_out (inputs, targets), the result is the checked step (every
    `check_every` steps and the last) with the lowest held-out loss, `start` included: fitting then never
    returns factors that do worse on the held-out pairs than where it began. Without, the last step."""
    params = {k: (a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()) for k, (a, b) in start.items()}
    opt = torch.optim.Adam([t for pair in params.values() for t in pair], lr=lr)

    def snapshot() -> Factors:
        return {n: (a.detach().clone(), b.detach().clone()) for n, (a, b) in params.items()}

    def held_loss() -> float:
        with torch.no_grad():
            return charbonnier(base(held_out[0]), held_out[1]).item()

    with lora_applied(base, params):  # Adam updates these very tensors in place
        best, best_loss = (snapshot(), held_loss()) if held_out is not None else (None, None)
        for step in range(1, steps + 1):
            inputs, targets = pairs()
            loss = charbonnier(base(inputs), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if held_out is not None and (step % check_every == 0 or step == steps) and (current := held_loss()) < best_loss:
                best, best_loss = snapshot(), current
        return best if held_out is not None else snapshot()
