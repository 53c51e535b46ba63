"""One training epoch and one validation-loss pass. AMP and DDP go through the same code path as the CPU."""
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from nets.yolo_training import LOSS_TERMS
from utils.core.config import UserError
from utils.core.distributed import DistInfo, all_reduce_mean


class NonFiniteLossError(UserError):
    """The loss became inf/NaN; the run stops and the last good checkpoint is kept."""


@dataclass
class AmpSettings:
    """Autocast (enabled, dtype, device_type) and the activation memory layout of training.

    channels_last: the model's weights and each batch are stored NHWC, the layout oneDNN (CPU) and cuDNN
    convolutions prefer; numerically the same convolutions.
    """
    enabled: bool
    dtype: torch.dtype
    device_type: str
    channels_last: bool = False

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


@dataclass
class LoopTimes:
    """Where a training epoch's loop spent its wall-clock seconds: waiting for the next batch from the loader
    (data) and the rest of each iteration (step: moving the batch, forward, loss, backward, optimizer, EMA). A data
    share well above zero means the loader does not keep up with the steps."""
    data_seconds: float = 0.0
    step_seconds: float = 0.0

    def row(self) -> dict[str, float]:
        return {"data_seconds": round(self.data_seconds, 2), "step_seconds": round(self.step_seconds, 2)}


class RunningMeans:
    """Means of the named loss terms over the iterations of an epoch.

    ``state()`` and ``RunningMeans(state)`` carry the sums of an interrupted epoch over a resume: the sums go on
    from the same float values, so the resumed epoch's means equal an uninterrupted epoch's to the bit."""

    def __init__(self, state: dict | None = None):
        self.sums = {name: 0.0 for name in LOSS_TERMS}
        self.count = 0
        if state:
            self.sums.update(state["sums"])
            self.count = state["count"]

    def state(self) -> dict:
        return {"sums": dict(self.sums), "count": self.count}

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


def check_finite_all_ranks(terms: dict[str, Tensor], *, epoch: int, iteration: int, dist_info: DistInfo) -> None:
    """Raises NonFiniteLossError on every rank when the loss of any rank is inf/NaN, with the same message.

    Each rank writes its loss terms into its own row of a (world_size, terms) table and one all-reduce sums the
    table, so every rank sees every rank's terms (a few floats per iteration). Ranks then stop together before
    the backward pass, and none is left waiting in a DDP collective.
    """
    values = torch.stack([terms[name].detach().float() for name in LOSS_TERMS])  # (T,)
    table = values[None]  # (world_size, T)
    if dist_info.enabled:
        table = torch.zeros(dist_info.world_size, len(LOSS_TERMS), device=values.device)
        table[dist_info.rank] = values
        dist.all_reduce(table)
    finite = torch.isfinite(table).all(dim=1).tolist()
    if all(finite):
        return
    bad = finite.index(False)
    where = f" on rank {bad}" if dist_info.enabled else ""
    shown = ", ".join(f"{name}={value:.4g}" for name, value in zip(LOSS_TERMS, table[bad].tolist()))
    raise NonFiniteLossError(f"non-finite loss at epoch {epoch + 1}, iteration {iteration + 1}{where} ({shown}); "
                             "try a lower init_lr or fp16=False. The last good checkpoint is kept.")


def train_one_epoch(*, model: nn.Module, criterion: nn.Module, loader, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, amp: AmpSettings, device: torch.device, epoch: int,
                    total_epochs: int, start_iteration: int, lr_for_iteration: Callable[[int], float],
                    on_iteration_end: Callable[[int], None], dist_info: DistInfo,
                    frozen_modules: tuple[nn.Module, ...] = (), means: RunningMeans | None = None,
                    times: LoopTimes | None = None) -> dict[str, float]:
    """Trains one epoch from ``start_iteration`` (non-zero when resuming mid-epoch).

    ``means`` gathers the loss terms (the sums of the iterations before ``start_iteration`` when resuming); the
    caller may keep it to save them on an interrupt. Under DDP each rank adds its own terms.

    ``lr_for_iteration(i)`` sets the learning rate before iteration i; ``on_iteration_end(i)`` runs after
    the optimizer step (EMA update; lets the caller save an interrupt checkpoint knowing how far the epoch got).
    ``frozen_modules`` run in eval mode, so their BatchNorm running statistics stay as frozen as their weights.
    ``times`` adds up the seconds spent waiting for batches and in the steps (LoopTimes).
    """
    model.train()
    if amp.channels_last:
        model.to(memory_format=torch.channels_last)  # a no-op once the weights have that layout
    for module in frozen_modules:
        module.eval()
    means = RunningMeans() if means is None else means
    times = LoopTimes() if times is None else times
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{total_epochs} train", initial=start_iteration,
               total=start_iteration + len(loader), disable=not dist_info.is_main, dynamic_ncols=True, leave=False)
    waited_from = time.perf_counter()
    for iteration, (images, targets) in enumerate(bar, start=start_iteration):
        fetched = time.perf_counter()
        times.data_seconds += fetched - waited_from
        lr = lr_for_iteration(iteration)
        images = images.to(device, non_blocking=True, memory_format=amp.memory_format)  # (B, 3, H, W)
        targets = targets.to(device, non_blocking=True)  # (N, 6) [img_idx, cls, x1, y1, x2, y2]
        with torch.autocast(device_type=amp.device_type, dtype=amp.dtype, enabled=amp.enabled):
            outputs = model(images)
        terms = criterion(outputs, targets)  # fp32 inside
        check_finite_all_ranks(terms, epoch=epoch, iteration=iteration, dist_info=dist_info)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(terms["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
        values = means.update(terms)
        bar.set_postfix(loss=f"{values['loss']:.3f}", loc=f"{values['loss_loc']:.3f}",
                        conf=f"{values['loss_conf']:.3f}", cls=f"{values['loss_cls']:.3f}", lr=f"{lr:.2e}")
        on_iteration_end(iteration)
        waited_from = time.perf_counter()
        times.step_seconds += waited_from - fetched
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
