"""YOLOLoss: location, confidence and class terms; the confidence loss plain BCE, focal, QFL, VFL or BCE with an
IoU-aware target (nets/conf_losses.py).

Conventions
- ``outputs``: the model's raw head outputs, coarsest level first, each (B, A * (5 + C), H, W) logits.
- ``targets``: (N, 6) ``[img_idx, cls, x1, y1, x2, y2]``, boxes xyxy in network-input pixels.
- Assignment: each ground truth goes to the anchor of best shape IoU (anchors listed in no level's
  mask cannot predict anything and take no part), at cell floor(cx / stride, cy / stride) of that
  anchor's level; an anchor listed in two masks (YOLOv4-tiny's anchor 3) is positive on both levels.
  Optionally (``multi_anchor_threshold``) every other anchor with shape IoU above it is positive too.
- Crowded cells: when two ground truths land on the same image, anchor and cell, both are kept:
  each contributes its own location and class term against that cell's prediction, and the cell's
  objectness target is 1. Nothing is overwritten or dropped.
- Ignore: a negative cell whose decoded box has IoU > ``ignore_threshold`` with any ground truth of
  its image is left out of the confidence term.
- Terms (unweighted, summed over levels; per level as ``loss_loc_s32`` etc.):
  ``loss_loc`` = mean over positives of 1 - CIoU (or DIoU / GIoU);
  ``loss_cls`` = mean BCE-with-logits over positives x classes, label smoothing moves the targets to
  1 - eps/2 and eps/2; times alpha_t * (1 - p_t)^gamma with ``focal_cls``;
  ``loss_conf`` = BCE-with-logits over kept cells (positives and non-ignored negatives), times
  alpha_t * (1 - p_t)^gamma with focal loss; or QFL / VFL against the positives' IoU (``quality_loss``), or BCE
  against YOLOv5's IoU-aware target (``conf_target='iou'``): the formulas in nets/conf_losses.py.
  ``conf_normalization='mean'`` (default, the reference recipe) averages over kept cells per level;
  ``'num_pos'`` (the Focal Loss paper) sums and divides by the number of positive cells of the batch.
- Weights: one dict keyed by term name (``loss_weights``; ``build_loss`` makes it from the training settings),
  held by the loss and applied only in ``weighted_total``: box 0.05, class C / 80, objectness
  5 * (H * W) / 416^2 * balance[stride] (balance 0.4 / 1.0 / 4 for stride 32 / 16 / 8) * the focal factor
  (``focal_conf_factor``): 1 for plain BCE and the IoU-aware target; for the modulated losses (focal, QFL, VFL)
  ``focal_conf_scale`` (1, or computed at the start of training: utils/train/conf_at_init.py), times
  ``focal_loss_ratio`` (10) with 'mean' normalisation, which the reference recipe uses to bring the focal mean back
  to the scale of the plain BCE mean. The class term's weight does not change with ``focal_cls``.
"""
import torch
from torch import Tensor, nn
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

# focal_ratio: also imported from here (utils/compare/easy_negatives.py, tests)
from nets.conf_losses import (ConfidenceLoss, cell_iou, check_conf_settings, class_term, focal_ratio,  # noqa: F401
                               paired_box_iou)
from nets.ignore import cells_overlapping
from utils.core.boxes import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, wh_iou
from utils.core.decode import decode_level_xyxy_planes, decode_txywh, level_strides, split_levels

IOU_LOSSES = {"ciou": complete_box_iou_loss, "diou": distance_box_iou_loss, "giou": generalized_box_iou_loss}
BALANCE_BY_STRIDE = {32: 0.4, 16: 1.0, 8: 4.0}
HEAD_STRIDES = (32, 16, 8)  # level l's stride, coarsest first: the heads of both networks in nets/yolo.py
LOSS_TERMS = ("loss", "loss_loc", "loss_conf", "loss_cls")  # the total and its three named terms
# train.py's settings that make a run's confidence term plain BCE with 0/1 targets, its reference at init
PLAIN_BCE = {"focal_loss": False, "quality_loss": "none", "conf_target": "one", "focal_conf_scale": 1.0}


def focal_conf_factor(*, focal_loss: bool, conf_normalization: str, focal_loss_ratio: float = 10.0,
                      focal_conf_scale: float = 1.0, quality_loss: str = "none") -> float:
    """The factor on the confidence term's weight: the one place it is computed.

    1 for plain BCE (and BCE with the IoU-aware target). For a modulated loss (focal, or the quality losses QFL
    and VFL: ``quality_loss``), ``focal_conf_scale`` times ``focal_loss_ratio`` under 'mean' normalisation;
    a sum divided by the number of positives (the Focal Loss paper's) is not rescaled by the ratio.
    """
    if not (focal_loss or quality_loss != "none"):
        return 1.0
    return focal_conf_scale * (focal_loss_ratio if conf_normalization == "mean" else 1.0)


def loss_weights(*, num_levels: int, input_shape: tuple[int, int], num_classes: int, focal_factor: float = 1.0,
                 box_ratio: float = 0.05, cls_ratio: float | None = None,
                 obj_ratio: float | None = None) -> dict[str, float]:
    """Every level term's weight in the total, keyed by term name (``loss_loc_s32``, ``loss_conf_s32``, ...),
    levels coarsest first: ``box_ratio`` on location, ``cls_ratio`` (None: C / 80) on class, and on confidence
    ``obj_ratio`` (None: 5 * (h * w) / 416^2) x the level's balance x ``focal_factor`` (focal_conf_factor)."""
    if num_levels > len(HEAD_STRIDES):
        raise ValueError(f"{num_levels} levels: the networks have at most {len(HEAD_STRIDES)}")
    cls_ratio = num_classes / 80 if cls_ratio is None else cls_ratio
    obj_ratio = 5 * input_shape[0] * input_shape[1] / 416**2 if obj_ratio is None else obj_ratio
    weights = {}
    for stride in HEAD_STRIDES[:num_levels]:
        weights[f"loss_loc_s{stride}"] = box_ratio
        weights[f"loss_cls_s{stride}"] = cls_ratio
        weights[f"loss_conf_s{stride}"] = obj_ratio * BALANCE_BY_STRIDE[stride] * focal_factor
    return weights


class YOLOLoss(nn.Module):
    """``weights``: loss_weights' dict (build_loss makes it from the training settings); None: loss_weights'
    defaults for these classes, input and levels, with focal_conf_factor's defaults when ``focal_loss``."""

    def __init__(self, *, anchors_px: Tensor, anchors_mask: list[list[int]], num_classes: int,
                 input_shape: tuple[int, int], label_smoothing: float = 0.0, focal_loss: bool = False,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, focal_cls: bool = False,
                 quality_loss: str = "none", qfl_beta: float = 2.0, vfl_alpha: float = 0.75, vfl_gamma: float = 2.0,
                 conf_target: str = "one", iou_target_ratio: float = 1.0, conf_normalization: str = "mean",
                 iou_type: str = "ciou", ignore_threshold: float = 0.5, multi_anchor_threshold: float | None = None,
                 scale_x_y: list[float] | None = None, weights: dict[str, float] | None = None):
        super().__init__()
        if iou_type not in IOU_LOSSES:
            raise ValueError(f"iou_type must be one of {sorted(IOU_LOSSES)}, got {iou_type!r}")
        if conf_normalization not in ("mean", "num_pos"):
            raise ValueError(f"conf_normalization must be 'mean' or 'num_pos', got {conf_normalization!r}")
        self.register_buffer("anchors_px", torch.as_tensor(anchors_px, dtype=torch.float32).view(-1, 2))
        self.anchors_mask = [list(mask) for mask in anchors_mask]
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.label_smoothing = label_smoothing
        self.focal_loss, self.focal_alpha, self.focal_gamma = focal_loss, focal_alpha, focal_gamma
        self.focal_cls = focal_cls
        self.conf_loss = ConfidenceLoss(focal_loss=focal_loss, focal_alpha=focal_alpha, focal_gamma=focal_gamma,
                                        quality_loss=quality_loss, qfl_beta=qfl_beta, vfl_alpha=vfl_alpha,
                                        vfl_gamma=vfl_gamma, conf_target=conf_target,
                                        iou_target_ratio=iou_target_ratio)
        self.conf_normalization = conf_normalization
        self.iou_loss = IOU_LOSSES[iou_type]
        self.ignore_threshold = ignore_threshold
        self.multi_anchor_threshold = multi_anchor_threshold
        self.scale_x_y = list(scale_x_y) if scale_x_y else [1.0] * len(anchors_mask)
        if weights is None:
            weights = loss_weights(num_levels=len(anchors_mask), input_shape=self.input_shape, num_classes=num_classes,
                                   focal_factor=focal_conf_factor(focal_loss=focal_loss, quality_loss=quality_loss,
                                                                  conf_normalization=conf_normalization))
        self.weights = dict(weights)
        usable = torch.zeros(len(self.anchors_px), dtype=torch.bool)
        usable[[a for mask in self.anchors_mask for a in mask]] = True
        self.register_buffer("usable_anchors", usable)
        # level_anchor_index[l][k]: position of global anchor k in level l's mask, -1 where absent
        index = torch.full((len(anchors_mask), len(self.anchors_px)), -1, dtype=torch.long)
        for level, mask in enumerate(self.anchors_mask):
            index[level, mask] = torch.arange(len(mask))
        self.register_buffer("level_anchor_index", index)

    def match_anchors(self, gt_wh_px: Tensor) -> tuple[Tensor, Tensor]:
        """Positive (ground truth, global anchor) pairs, as two (P,) index tensors."""
        shape_iou = wh_iou(gt_wh_px, self.anchors_px)  # (N, K)
        shape_iou = shape_iou.masked_fill(~self.usable_anchors, -1.0)
        is_pair = torch.zeros_like(shape_iou, dtype=torch.bool)
        is_pair[torch.arange(len(gt_wh_px), device=gt_wh_px.device), shape_iou.argmax(1)] = True
        if self.multi_anchor_threshold is not None:
            is_pair |= shape_iou > self.multi_anchor_threshold
        gt_index, anchor_index = is_pair.nonzero(as_tuple=True)
        return gt_index, anchor_index

    def weighted_total(self, terms: dict[str, Tensor], tags: list[str]) -> Tensor:
        """The one place where the loss weights are applied: level by level (``tags``: "s32", ... in level order),
        location, class and confidence term each times its entry of ``self.weights``."""
        total, weight = 0.0, self.weights
        for tag in tags:
            loc, cls, conf = f"loss_loc_{tag}", f"loss_cls_{tag}", f"loss_conf_{tag}"
            total = total + (weight[loc] * terms[loc] + weight[cls] * terms[cls] + weight[conf] * terms[conf])
        return total

    def forward(self, outputs: list[Tensor], targets: Tensor) -> dict[str, Tensor]:
        device = outputs[0].device
        with torch.autocast(device_type=device.type, enabled=False):
            return self._forward_fp32([out.float() for out in outputs], targets.to(device=device, dtype=torch.float32))

    def _prepare_targets(self, targets: Tensor) -> dict[str, Tensor]:
        """Target tensors shared by all levels: image indices, classes, boxes, positive (gt, anchor) pairs."""
        img_idx, gt_xyxy_px = targets[:, 0].long(), targets[:, 2:6]
        gt_cxcywh_px = box_xyxy_to_cxcywh(gt_xyxy_px)
        pair_gt, pair_anchor = self.match_anchors(gt_cxcywh_px[:, 2:])
        return {"img_idx": img_idx, "cls": targets[:, 1].long(), "gt_xyxy_px": gt_xyxy_px,
                "gt_cxcywh_px": gt_cxcywh_px, "pair_gt": pair_gt, "pair_anchor": pair_anchor}

    def _assign_level(self, level: Tensor, level_index: int, prepared: dict[str, Tensor]) -> dict:
        """Positives of one level (as index tensors), its objectness targets and the kept-cell mask.

        level: (B, A, H, W, 5 + C) logits. Returns gt_i, anchor_i, img_i, cell_y, cell_x (each (P_l,)),
        is_obj and kept ((B, A, H, W) bool), stride_yx and the level's anchors (A, 2).
        """
        mask = self.anchors_mask[level_index]
        height, width = level.shape[2:4]
        stride_yx = level_strides(feature_hw=(height, width), input_shape=self.input_shape)
        anchors_px = self.anchors_px[mask]  # (A, 2)
        local_anchor = self.level_anchor_index[level_index][prepared["pair_anchor"]]  # (P,)
        on_level = local_anchor >= 0
        gt_i, anchor_i = prepared["pair_gt"][on_level], local_anchor[on_level]  # (P_l,)
        img_i = prepared["img_idx"][gt_i]
        cell_x = (prepared["gt_cxcywh_px"][gt_i, 0] / stride_yx[1]).floor().long().clamp(0, width - 1)
        cell_y = (prepared["gt_cxcywh_px"][gt_i, 1] / stride_yx[0]).floor().long().clamp(0, height - 1)
        is_obj = torch.zeros(level.shape[:4], dtype=torch.bool, device=level.device)  # (B, A, H, W)
        is_obj[img_i, anchor_i, cell_y, cell_x] = True
        ignored = self.ignore_mask(level, anchors_px, level_index, prepared)
        return {"gt_i": gt_i, "anchor_i": anchor_i, "img_i": img_i, "cell_y": cell_y, "cell_x": cell_x,
                "is_obj": is_obj, "kept": is_obj | ~ignored, "stride_yx": stride_yx, "anchors_px": anchors_px}

    def _forward_fp32(self, outputs: list[Tensor], targets: Tensor) -> dict[str, Tensor]:
        prepared = self._prepare_targets(targets)
        terms, conf_sums, kept_counts, tags = {}, [], [], []
        num_pos = outputs[0].new_zeros(())
        for level_index, raw in enumerate(outputs):
            level = split_levels(raw, len(self.anchors_mask[level_index]))  # (B, A, H, W, 5 + C)
            a = self._assign_level(level, level_index, prepared)
            tag = f"s{round(a['stride_yx'][0])}"
            tags.append(tag)

            pred_pos = level[a["img_i"], a["anchor_i"], a["cell_y"], a["cell_x"]]  # (P_l, 5 + C)
            pred_pos_cxcywh_px = decode_txywh(
                pred_pos[:, :4], grid_xy=torch.stack([a["cell_x"], a["cell_y"]], dim=-1).to(pred_pos),
                anchor_wh_px=a["anchors_px"][a["anchor_i"]], stride_yx=a["stride_yx"],
                scale_x_y=self.scale_x_y[level_index])
            gt_pos_xyxy_px = prepared["gt_xyxy_px"][a["gt_i"]]  # (P_l, 4)
            if len(a["gt_i"]):
                terms[f"loss_loc_{tag}"] = self.iou_loss(box_cxcywh_to_xyxy(pred_pos_cxcywh_px), gt_pos_xyxy_px,
                                                         reduction="mean")
                terms[f"loss_cls_{tag}"] = class_term(
                    pred_pos[:, 5:], prepared["cls"][a["gt_i"]], num_classes=self.num_classes,
                    label_smoothing=self.label_smoothing, focal_cls=self.focal_cls, focal_alpha=self.focal_alpha,
                    focal_gamma=self.focal_gamma)
            else:  # keeps the graph connected so DDP and GradScaler see every parameter
                terms[f"loss_loc_{tag}"] = terms[f"loss_cls_{tag}"] = pred_pos.sum() * 0.0

            conf_logits = level[..., 4]  # (B, A, H, W)
            iou = None
            if self.conf_loss.needs_iou:  # the target: detached, so no gradient reaches the box through it
                pred_pos_xyxy_px = box_cxcywh_to_xyxy(pred_pos_cxcywh_px.detach())
                iou = cell_iou(paired_box_iou(pred_pos_xyxy_px, gt_pos_xyxy_px), shape=conf_logits.shape,
                               cells=(a["img_i"], a["anchor_i"], a["cell_y"], a["cell_x"]))
            conf_loss = self.conf_loss.elementwise(conf_logits, a["is_obj"], iou)
            conf_sums.append((conf_loss * a["kept"]).sum())
            kept_counts.append(a["kept"].sum())
            num_pos = num_pos + a["is_obj"].sum()

        for tag, conf_sum, kept_count in zip(tags, conf_sums, kept_counts):
            norm = kept_count if self.conf_normalization == "mean" else num_pos
            terms[f"loss_conf_{tag}"] = conf_sum / norm.clamp(min=1)

        for name in ("loss_loc", "loss_conf", "loss_cls"):
            terms[name] = sum(terms[f"{name}_{tag}"] for tag in tags)
        terms["loss"] = self.weighted_total(terms, tags)
        terms["num_pos"] = num_pos.detach()
        return terms

    @torch.no_grad()
    def confidence_samples(self, outputs: list[Tensor], targets: Tensor) -> tuple[Tensor, Tensor]:
        """Objectness logits of every kept cell and whether it is positive, with the training assignment.

        Returns (K,) logits and (K,) bool over all levels: what the confidence term sums over, for
        loss-distribution analyses such as the Focal Loss paper's Figure 4.
        """
        outputs = [out.float() for out in outputs]
        prepared = self._prepare_targets(targets.to(outputs[0].device, torch.float32))
        logits, positive = [], []
        for level_index, raw in enumerate(outputs):
            level = split_levels(raw, len(self.anchors_mask[level_index]))
            a = self._assign_level(level, level_index, prepared)
            logits.append(level[..., 4][a["kept"]])
            positive.append(a["is_obj"][a["kept"]])
        return torch.cat(logits), torch.cat(positive)

    @torch.no_grad()
    def ignore_mask(self, level: Tensor, anchors_px: Tensor, level_index: int, prepared: dict[str, Tensor]) -> Tensor:
        """(B, A, H, W) True where a cell's decoded box overlaps a ground truth of its image above the threshold."""
        pred_xyxy_planes_px = decode_level_xyxy_planes(level.detach(), anchors_px=anchors_px,
                                                       input_shape=self.input_shape,
                                                       scale_x_y=self.scale_x_y[level_index])  # (4, B, A, H, W)
        return cells_overlapping(pred_xyxy_planes_px, prepared["gt_xyxy_px"], prepared["img_idx"],
                                 threshold=self.ignore_threshold, scale_x_y=self.scale_x_y[level_index],
                                 input_shape=self.input_shape)


def settings_focal_factor(config, *, focal_conf_scale: float | None = None) -> float:
    """focal_conf_factor of training settings (a train.TrainConfig). ``focal_conf_scale``: the scale the run
    resolved (utils/train/conf_at_init.py); None: the config's number, or 1 where the config asks for the scale
    to be matched at init (the focal term unmatched)."""
    if focal_conf_scale is None:
        focal_conf_scale = 1.0 if isinstance(config.focal_conf_scale, str) else config.focal_conf_scale
    return focal_conf_factor(focal_loss=config.focal_loss, quality_loss=config.quality_loss,
                             conf_normalization=config.conf_normalization, focal_loss_ratio=config.focal_loss_ratio,
                             focal_conf_scale=focal_conf_scale)


def modulated_conf(config) -> bool:
    """Whether training settings (a train.TrainConfig) reweight the confidence BCE (focal, QFL or VFL): the arms
    whose factor focal_conf_factor gives and whose ``focal_conf_scale="match_bce_at_init"`` matches them to
    plain BCE (``PLAIN_BCE``) at init."""
    return config.focal_loss or config.quality_loss != "none"


def check_loss_settings(config) -> None:
    """A ConfigError, naming both settings, for training settings (a train.TrainConfig) whose confidence loss
    contradicts itself (focal_loss with a quality_loss, ...: nets.conf_losses.check_conf_settings). build_loss
    checks too (YOLOLoss does); calling this where settings are resolved refuses them before any work."""
    check_conf_settings(focal_loss=config.focal_loss, quality_loss=config.quality_loss,
                        conf_target=config.conf_target, iou_target_ratio=config.iou_target_ratio)


def build_loss(*, config, spec, focal_conf_scale: float | None = None) -> YOLOLoss:
    """The one place a YOLOLoss and its weights are made from training settings (a train.TrainConfig) and a
    utils.core.model_files.ModelSpec; ``focal_conf_scale`` as for settings_focal_factor."""
    weights = loss_weights(num_levels=len(spec.anchors_mask), input_shape=tuple(config.input_shape),
                           num_classes=len(spec.class_names),
                           focal_factor=settings_focal_factor(config, focal_conf_scale=focal_conf_scale),
                           box_ratio=config.box_ratio, cls_ratio=config.cls_ratio, obj_ratio=config.obj_ratio)
    return YOLOLoss(anchors_px=torch.tensor(spec.anchors), anchors_mask=spec.anchors_mask,
                    num_classes=len(spec.class_names), input_shape=tuple(config.input_shape),
                    label_smoothing=config.label_smoothing, focal_loss=config.focal_loss,
                    focal_alpha=config.focal_alpha, focal_gamma=config.focal_gamma, focal_cls=config.focal_cls,
                    quality_loss=config.quality_loss, qfl_beta=config.qfl_beta, vfl_alpha=config.vfl_alpha,
                    vfl_gamma=config.vfl_gamma, conf_target=config.conf_target,
                    iou_target_ratio=config.iou_target_ratio,
                    conf_normalization=config.conf_normalization, iou_type=config.iou_type,
                    ignore_threshold=config.ignore_threshold, multi_anchor_threshold=config.multi_anchor_threshold,
                    scale_x_y=config.scale_x_y, weights=weights)
