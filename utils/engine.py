"""One training epoch and one validation-loss pass. AMP and DDP go through the same code path as the CPU."""
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from utils.callbacks import LOSS_TERMS
from utils.distributed import DistInfo, all_reduce_mean


class NonFiniteLossError(RuntimeError):
    """The loss became inf/NaN; the run stops and the last good checkpoint is kept."""


@dataclass
class AmpSettings:
    enabled: bool
    dtype: torch.dtype
    device_type: str


class RunningMeans:
    """Means of the named loss terms over the iterations of an epoch."""

    def __init__(self):
        self.sums = {name: 0.0 for name in LOSS_TERMS}
        self.count = 0

    def update(self, terms: dict[str, Tensor]) -> dict[str, float]:
        """Adds one iteration's terms; returns them as floats (for progress bars)."""
        values = {name: terms[name].detach().item() for name in LOSS_TERMS}
        for name, value in values.items():
            self.sums[name] += value
        self.count += 1
        return values

    def means(self, dist_info: DistInfo, device: torch.device) -> dict[str, float]:
        values = torch.tensor([self.sums[n] / max(self.count, 1) for n in LOSS_TERMS], device=device)
        values = all_reduce_mean(values, dist_info)
        return dict(zip(LOSS_TERMS, values.tolist()))


def _check_finite(terms: dict[str, Tensor], *, epoch: int, iteration: int) -> None:
    if not math.isfinite(terms["loss"].detach().item()):
        shown = ", ".join(f"{n}={terms[n].detach().item():.4g}" for n in LOSS_TERMS)
        raise NonFiniteLossError(f"non-finite loss at epoch {epoch + 1}, iteration {iteration + 1} ({shown}); "
                                 "try a lower init_lr or fp16=False. The last good checkpoint is kept.")


def train_one_epoch(*, model: nn.Module, criterion: nn.Module, loader, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, amp: AmpSettings, device: torch.device, epoch: int,
                    total_epochs: int, start_iteration: int, lr_for_iteration: Callable[[int], float],
                    on_iteration_end: Callable[[int], None], dist_info: DistInfo,
                    max_grad_norm: float | None = None,
                    frozen_modules: tuple[nn.Module, ...] = ()) -> dict[str, float]:
    """Trains one epoch from ``start_iteration`` (non-zero when resuming mid-epoch).

    ``lr_for_iteration(i)`` sets the learning rate before iteration i; ``on_iteration_end(i)`` runs after
    the optimizer step (EMA update; lets the caller save an interrupt checkpoint knowing how far the epoch got).
    ``frozen_modules`` run in eval mode, so their BatchNorm running statistics stay as frozen as their weights.
    """
    model.train()
    for module in frozen_modules:
        module.eval()
    means = RunningMeans()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{total_epochs} train", initial=start_iteration,
               total=start_iteration + len(loader), disable=not dist_info.is_main, dynamic_ncols=True, leave=False)
    for iteration, (images, targets) in enumerate(bar, start=start_iteration):
        lr = lr_for_iteration(iteration)
        images = images.to(device, non_blocking=True)  # (B, 3, H, W)
        targets = targets.to(device, non_blocking=True)  # (N, 6) [img_idx, cls, x1, y1, x2, y2]
        with torch.autocast(device_type=amp.device_type, dtype=amp.dtype, enabled=amp.enabled):
            outputs = model(images)
        terms = criterion(outputs, targets)  # fp32 inside
        _check_finite(terms, epoch=epoch, iteration=iteration)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(terms["loss"]).backward()
        if max_grad_norm:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        values = means.update(terms)
        bar.set_postfix(loss=f"{values['loss']:.3f}", loc=f"{values['loss_loc']:.3f}",
                        conf=f"{values['loss_conf']:.3f}", cls=f"{values['loss_cls']:.3f}", lr=f"{lr:.2e}")
        on_iteration_end(iteration)
    bar.close()
    return means.means(dist_info, device)


@torch.no_grad()
def validation_loss(*, model: nn.Module, criterion: nn.Module, loader, amp: AmpSettings, device: torch.device,
                    epoch: int, total_epochs: int, dist_info: DistInfo) -> dict[str, float]:
    """Mean loss terms over the validation set, model in eval mode (BatchNorm running statistics)."""
    model.eval()
    means = RunningMeans()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{total_epochs} val", disable=not dist_info.is_main,
               dynamic_ncols=True, leave=False)
    for images, targets in bar:
        with torch.autocast(device_type=amp.device_type, dtype=amp.dtype, enabled=amp.enabled):
            outputs = model(images.to(device))
        terms = criterion(outputs, targets.to(device))
        bar.set_postfix(loss=f"{means.update(terms)['loss']:.3f}")
    bar.close()
    return means.means(dist_info, device)
