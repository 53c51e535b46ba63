"""The confidence and class losses YOLOLoss can train with, elementwise on logits z (p = sigmoid(z)).

Confidence term, per cell of a level (B, A, H, W); t, y, q are the cell's targets (0 on negative cells):
- plain BCE: BCE_with_logits(z, t), t = 1 on positive cells.
- focal (Lin et al. 2017): BCE_with_logits(z, t) * alpha_t * (1 - p_t)^gamma, t = 1 on positive cells.
- ``quality_loss="qfl"``, Quality Focal Loss (Generalized Focal Loss, Li et al. 2020):
  BCE_with_logits(z, y) * |y - p|^beta, y = IoU on positive cells.
- ``quality_loss="vfl"``, Varifocal Loss (VarifocalNet, Zhang et al. 2021; mmdetection's iou_weighted form):
  BCE_with_logits(z, q) * (q where q > 0, alpha * p^gamma where q = 0), q = IoU on positive cells.
- ``conf_target="iou"``, YOLOv5's IoU-aware objectness: BCE_with_logits(z, t), t = (1 - gr) + gr * IoU on positive
  cells (gr: ``iou_target_ratio``).
IoU: plain IoU of a positive's decoded predicted box, detached (a target, not a path for gradients), with its ground
truth, both xyxy in input pixels. A crowded cell (two ground truths on one image, anchor and cell) takes the larger.
The modulating factors are not detached, as in the papers and mmdetection.

Class term, over positives x classes: BCE_with_logits, times alpha_t * (1 - p_t)^gamma with ``focal_cls``.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from utils.core.config import ConfigError

QUALITY_LOSSES = ("none", "qfl", "vfl")
CONF_TARGETS = ("one", "iou")


def focal_ratio(logits: Tensor, is_positive: Tensor, *, alpha: float, gamma: float) -> Tensor:
    """alpha_t * (1 - p_t)^gamma, elementwise, from logits.

    (1 - p_t) is sigmoid(-z_t) with z_t the logit of p_t; raising it to gamma through logsigmoid keeps
    the value and its gradient finite even where p_t rounds to 1 and gamma < 1.
    """
    alpha_t = torch.where(is_positive, alpha, 1.0 - alpha)
    logit_t = torch.where(is_positive, logits, -logits)
    return alpha_t * torch.exp(gamma * F.logsigmoid(-logit_t))


def qfl_ratio(logits: Tensor, quality: Tensor, *, beta: float) -> Tensor:
    """|y - sigmoid(z)|^beta, elementwise (Quality Focal Loss's modulating factor)."""
    return (quality - torch.sigmoid(logits)).abs().pow(beta)


def vfl_ratio(logits: Tensor, quality: Tensor, *, alpha: float, gamma: float) -> Tensor:
    """q where q > 0, alpha * sigmoid(z)^gamma where q = 0, elementwise (Varifocal Loss's weight, iou_weighted).

    sigmoid(z)^gamma goes through logsigmoid, as focal_ratio does, so it stays finite for any logit and gamma."""
    return torch.where(quality > 0, quality, alpha * torch.exp(gamma * F.logsigmoid(logits)))


def paired_box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """(N,) IoU of row i of one (N, 4) xyxy tensor with row i of the other: the diagonal of box_iou without its
    N x N matrix. Two empty boxes give 0."""
    top_left = torch.maximum(boxes1_xyxy[:, :2], boxes2_xyxy[:, :2])
    bottom_right = torch.minimum(boxes1_xyxy[:, 2:], boxes2_xyxy[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    area1 = (boxes1_xyxy[:, 2:] - boxes1_xyxy[:, :2]).clamp(min=0).prod(dim=1)
    area2 = (boxes2_xyxy[:, 2:] - boxes2_xyxy[:, :2]).clamp(min=0).prod(dim=1)
    union = area1 + area2 - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def cell_iou(iou: Tensor, *, cells: tuple[Tensor, Tensor, Tensor, Tensor], shape: torch.Size) -> Tensor:
    """(B, A, H, W): each positive pair's ``iou`` ((P,)) at its cell (``cells``: image, anchor, y, x index tensors,
    each (P,)), the larger where two pairs share a cell, 0 on every other cell."""
    img, anchor, cell_y, cell_x = cells
    flat_index = ((img * shape[1] + anchor) * shape[2] + cell_y) * shape[3] + cell_x
    flat = iou.new_zeros(shape.numel()).scatter_reduce(0, flat_index, iou, reduce="amax", include_self=True)
    return flat.view(shape)


def check_conf_settings(*, focal_loss: bool, quality_loss: str, conf_target: str, iou_target_ratio: float) -> None:
    """Refuses, naming both settings, a choice of confidence loss that contradicts itself. The names are train.py's
    settings and YOLOLoss's arguments alike; called by YOLOLoss (so by build_loss, at the start of every run)."""
    if quality_loss not in QUALITY_LOSSES:
        raise ConfigError(f"quality_loss={quality_loss!r}: choose one of {', '.join(map(repr, QUALITY_LOSSES))}")
    if conf_target not in CONF_TARGETS:
        raise ConfigError(f"conf_target={conf_target!r}: choose one of {', '.join(map(repr, CONF_TARGETS))}")
    if focal_loss and quality_loss != "none":
        raise ConfigError(f"focal_loss=True and quality_loss={quality_loss!r} both reweight the confidence term: "
                          f"choose one (focal_loss=False, or quality_loss='none')")
    if quality_loss != "none" and conf_target != "one":
        raise ConfigError(f"quality_loss={quality_loss!r} and conf_target={conf_target!r}: the quality loss sets its "
                          f"own target (the IoU); leave conf_target='one'")
    if focal_loss and conf_target != "one":
        raise ConfigError(f"focal_loss=True and conf_target={conf_target!r}: focal loss's alpha_t (1 - p_t)^gamma "
                          f"is defined for 0/1 targets; for IoU targets use quality_loss='qfl' or 'vfl'")
    if not 0.0 <= iou_target_ratio <= 1.0:
        raise ConfigError(f"iou_target_ratio={iou_target_ratio}: needs 0 <= gr <= 1")


@dataclass(frozen=True)
class ConfidenceLoss:
    """The confidence loss of one run: which one (module docstring) and its parameters."""
    focal_loss: bool = False
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    quality_loss: str = "none"
    qfl_beta: float = 2.0
    vfl_alpha: float = 0.75
    vfl_gamma: float = 2.0
    conf_target: str = "one"
    iou_target_ratio: float = 1.0

    def __post_init__(self):
        check_conf_settings(focal_loss=self.focal_loss, quality_loss=self.quality_loss, conf_target=self.conf_target,
                            iou_target_ratio=self.iou_target_ratio)

    @property
    def needs_iou(self) -> bool:
        """Whether the loss needs the positives' IoU (cell_iou)."""
        return self.quality_loss != "none" or self.conf_target == "iou"

    def elementwise(self, logits: Tensor, is_obj: Tensor, iou: Tensor | None) -> Tensor:
        """(B, A, H, W) loss of every cell (the caller keeps and normalises); ``iou``: cell_iou when needs_iou."""
        if self.quality_loss == "qfl":
            return F.binary_cross_entropy_with_logits(logits, iou, reduction="none") * qfl_ratio(
                logits, iou, beta=self.qfl_beta)
        if self.quality_loss == "vfl":
            return F.binary_cross_entropy_with_logits(logits, iou, reduction="none") * vfl_ratio(
                logits, iou, alpha=self.vfl_alpha, gamma=self.vfl_gamma)
        if self.conf_target == "iou":
            gr = self.iou_target_ratio
            target = torch.where(is_obj, (1.0 - gr) + gr * iou.clamp(min=0), 0.0)
            return F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        # plain BCE and focal: the operations (and their order) of the loss before the quality losses existed
        conf_loss = F.binary_cross_entropy_with_logits(logits, is_obj.to(logits), reduction="none")
        if self.focal_loss:
            conf_loss = conf_loss * focal_ratio(logits, is_obj, alpha=self.focal_alpha, gamma=self.focal_gamma)
        return conf_loss


def class_term(logits: Tensor, labels: Tensor, *, num_classes: int, label_smoothing: float, focal_cls: bool = False,
               focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> Tensor:
    """Mean over positives x classes of BCE_with_logits(logits (P, C), one-hot ``labels`` (P,) smoothed to
    1 - eps/2 and eps/2); with ``focal_cls`` each element times alpha_t * (1 - p_t)^gamma, p_t taken against the
    one-hot (unsmoothed) label."""
    one_hot = F.one_hot(labels, num_classes)
    cls_target = one_hot.to(logits)
    cls_target = cls_target * (1.0 - label_smoothing) + label_smoothing / 2
    if not focal_cls:
        return F.binary_cross_entropy_with_logits(logits, cls_target)
    loss = F.binary_cross_entropy_with_logits(logits, cls_target, reduction="none")
    return (loss * focal_ratio(logits, one_hot.bool(), alpha=focal_alpha, gamma=focal_gamma)).mean()
