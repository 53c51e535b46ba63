"""How much of the confidence loss comes from easy negatives: the Focal Loss paper's argument, on your data.

The paper's point: with 100,000 easy negatives and 100 hard examples, the easy ones carry most of the plain
BCE loss (about 40x the hard ones' share) although each is nearly solved; focal loss's (1 - p_t)^gamma
shrinks them. Here an easy negative is a kept negative cell (not positive, not ignored) whose predicted
objectness p = sigmoid(logit) is below ``easy_below`` (0.1). Shares are ratios of sums over the kept
cells, so the loss's normalisation (mean over cells or per positive) and any constant weight cancel.
Feed it ``YOLOLoss.confidence_samples(outputs, targets)``, or ``confidence_samples_over`` a whole image set,
at initialisation and after training.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from nets.yolo_training import focal_ratio


@torch.no_grad()
def confidence_samples_over(*, forward, criterion, dataset, batch_size: int = 8) -> tuple[Tensor, Tensor]:
    """(K,) objectness logits and (K,) positive flags of every kept cell over all images of ``dataset``.

    ``forward`` maps a (B, 3, H, W) float batch to the network's raw level outputs; cells, and whether they
    are positive, negative or ignored, come from ``criterion``'s (a YOLOLoss) own assignment. Returned on the CPU.
    """
    from utils.data.dataloader import yolo_collate

    logits, positive = [], []
    for start in range(0, len(dataset), batch_size):
        images, targets = yolo_collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        batch_logits, batch_positive = criterion.confidence_samples(forward(images), targets)
        logits.append(batch_logits.float().cpu())
        positive.append(batch_positive.cpu())
    if not logits:
        return torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    return torch.cat(logits), torch.cat(positive)


def easy_negative_share(*, logits: Tensor, positive: Tensor, alpha: float, gamma: float,
                        easy_below: float = 0.1) -> dict[str, float | int]:
    """Shares of the easy negatives among (K,) kept cells with objectness ``logits`` and ``positive`` flags.

    ``count_share``: easy negatives / kept cells; ``bce_share``: their part of the summed plain BCE;
    ``focal_share``: their part of the summed alpha_t (1 - p_t)^gamma BCE at this ``alpha`` and ``gamma``.
    Shares are NaN without cells (or without loss).
    """
    logits = torch.as_tensor(logits).detach().reshape(-1).double()  # float64: sums over millions of cells
    positive = torch.as_tensor(positive).detach().reshape(-1).bool()
    if logits.shape != positive.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and positive {tuple(positive.shape)} differ in shape")
    easy = ~positive & (torch.sigmoid(logits) < easy_below)
    bce = F.binary_cross_entropy_with_logits(logits, positive.double(), reduction="none")
    focal = bce * focal_ratio(logits, positive, alpha=alpha, gamma=gamma)

    def share(loss: Tensor) -> float:
        total = float(loss.sum())
        return float(loss[easy].sum()) / total if total > 0 else math.nan

    cells = int(logits.numel())
    return {"cells": cells, "easy_negatives": int(easy.sum()),
            "count_share": int(easy.sum()) / cells if cells else math.nan,
            "bce_share": share(bce), "focal_share": share(focal)}
