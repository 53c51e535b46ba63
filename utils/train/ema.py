"""An exponential moving average (EMA) of a model's weights, with a warm-up of its decay.

After every optimizer step: ema = d_t * ema + (1 - d_t) * weights, with d_t = decay * (1 - exp(-t / tau)) at
update t (1, 2, ...). Early on d_t is small, so the average follows the fast-changing weights instead of
remembering the random initialisation; later it smooths the last ~1 / (1 - d_t) steps.

Buffers: floating-point buffers (BatchNorm running mean and variance) are averaged with the same d_t as the
weights; integer buffers (num_batches_tracked) are copied. The running statistics are themselves a function
of the weights that produced them, so averaging them pairs the averaged weights with statistics of the same
mix of recent weights; copying would pair them with the statistics of the latest weights only.

The update is ``ema.lerp_(weights, 1 - d_t)``, which leaves an entry bit-for-bit unchanged when the weights
equal it: a frozen backbone stays exactly frozen in the average.
"""
import copy
import math

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or DataParallel) wrapper; the model itself otherwise."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


class ModelEMA:
    """Keeps ``self.module``, an averaged copy of a model, in eval mode and without gradients."""

    def __init__(self, model: nn.Module, *, decay: float, tau: float, updates: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if tau <= 0:
            raise ValueError(f"EMA tau must be positive, got {tau}")
        self.module = copy.deepcopy(unwrap(model)).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    def decay_at(self, updates: int) -> float:
        """d_t of the ``updates``-th update."""
        return self.decay * (1.0 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Folds the model's current weights and buffers into the average (call after each optimizer step)."""
        self.updates += 1
        weight = 1.0 - self.decay_at(self.updates)
        current = unwrap(model).state_dict()
        for name, average in self.module.state_dict().items():
            value = current[name].detach()
            if average.dtype.is_floating_point:
                average.lerp_(value.to(average.dtype), weight)
            else:
                average.copy_(value)

    def state_dict(self) -> dict:
        """What a checkpoint needs besides the averaged weights (which it stores as its inference ``model``)."""
        return {"updates": self.updates, "decay": self.decay, "tau": self.tau}

    def load(self, *, weights: dict[str, torch.Tensor], state: dict) -> None:
        """Restores the average and its update count from a checkpoint (decay and tau stay the configured ones)."""
        self.module.load_state_dict(weights)
        self.updates = int(state["updates"])
