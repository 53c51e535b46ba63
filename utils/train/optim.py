"""Optimizer with weight decay only on conv weights, batch-size learning-rate scaling, and the
per-iteration schedule (linear warmup, then cosine or step decay)."""
import math

import torch
from torch import nn

NOMINAL_BATCH_SIZE = 64  # learning rates in the config are for this batch size


def scaled_lr(lr: float, *, batch_size: int) -> float:
    """Linear scaling rule: lr for ``batch_size`` given an lr tuned for the nominal batch of 64."""
    return lr * batch_size / NOMINAL_BATCH_SIZE


def build_optimizer(net: nn.Module, *, optimizer_type: str, lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """SGD (Nesterov), Adam or AdamW; BatchNorm parameters and biases get no weight decay."""
    decay, no_decay = [], []
    for module in net.modules():
        for name, param in module.named_parameters(recurse=False):
            is_conv_weight = name == "weight" and not isinstance(module, nn.modules.batchnorm._BatchNorm)
            (decay if is_conv_weight else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if optimizer_type == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if optimizer_type == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=(momentum, 0.999))
    if optimizer_type == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
    raise ValueError(f"optimizer_type must be 'sgd', 'adam' or 'adamw', got {optimizer_type!r}")


def lr_at(progress: float, *, total: float, lr: float, min_lr: float, warmup: float, decay_type: str,
          step_count: int = 10) -> float:
    """Learning rate after ``progress`` epochs (fractional, updated every iteration) of ``total``.

    Linear warmup from 0.1 * lr over ``warmup`` epochs, then ``cos`` (cosine to min_lr) or ``step``
    (``step_count`` equal steps, geometric from lr to min_lr).
    """
    if warmup > 0 and progress < warmup:
        return lr * (0.1 + 0.9 * progress / warmup)
    span = max(total - warmup, 1e-9)
    done = min(max((progress - warmup) / span, 0.0), 1.0)
    if decay_type == "cos":
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * done))
    if decay_type == "step":
        step = min(int(done * step_count), step_count - 1)
        return lr * (min_lr / lr) ** (step / (step_count - 1))
    raise ValueError(f"lr_decay_type must be 'cos' or 'step', got {decay_type!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
