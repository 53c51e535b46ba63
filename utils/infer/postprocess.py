"""Inference-side postprocessing: the settings that shape detections, and class-aware NMS (plain and DIoU) of
decoded predictions.

Box names follow utils/core/boxes.py: ``pred_xyxy`` / ``pred_cxcywh`` are in network-input pixels. Mapping boxes
back to the original image is the letterbox's inverse, in utils/infer/preprocess.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor
from torchvision.ops import batched_nms, distance_box_iou

from utils.core.boxes import box_cxcywh_to_xyxy

NmsType = Literal["nms", "diou"]
NMS_TYPES = get_args(NmsType)
PREFIX_PER_MAX_DET = 4  # first NMS pass takes each image's best 4 * max_det candidates


@dataclass(frozen=True)
class PostprocessSettings:
    """How decoded predictions become detections; the detectors take one, and this is where it is validated.

    confidence: keep boxes whose objectness * class probability is at least this; nms_iou: suppress a box that
    overlaps a better box of its class by more than this (IoU, or DIoU for nms_type 'diou'); max_det: at most this
    many detections per image; multi_label: a box may be reported once per class that passes ``confidence``.
    The defaults are predict.py's display settings.
    """
    confidence: float = 0.5
    nms_iou: float = 0.3
    nms_type: NmsType = "nms"
    max_det: int = 300
    multi_label: bool = False

    def __post_init__(self):
        if self.nms_type not in NMS_TYPES:
            raise ValueError(f"nms_type must be one of {NMS_TYPES}, got {self.nms_type!r}")
        if not 0.0 <= self.confidence <= 1.0 or self.max_det < 1:
            raise ValueError(f"need 0 <= confidence <= 1 and max_det >= 1, got {self.confidence} and {self.max_det}")
        if self.nms_type == "diou" and self.nms_iou < 0:
            raise ValueError(f"nms_iou must be >= 0 for DIoU-NMS, got {self.nms_iou}")


DEFAULT_POSTPROCESS = PostprocessSettings()


def diou_nms(boxes_xyxy: Tensor, scores: Tensor, groups: Tensor, *, iou_threshold: float, max_per_group: int,
             block_size: int = 256) -> Tensor:
    """Exact greedy DIoU-NMS (Zheng et al., 2020), class-aware through ``groups``; returns kept indices, best first.

    Greedy rule per group: take the best remaining box, drop every remaining box whose DIoU with it exceeds
    ``iou_threshold``, repeat. This is that exact result, not the approximate Matrix/Fast-NMS variant. Boxes are
    processed best first in blocks of ``block_size``: a block's boxes are first checked against every box kept
    so far (one matrix), then resolved among themselves by iterating ``keep_j = alive_j and no kept i < j
    suppresses j`` to its fixed point, which is the sequential greedy answer (the system is triangular, so the
    fixed point is unique; it takes one pass per link of the longest suppression chain, at most block_size).
    Groups with ``max_per_group`` kept boxes take no more: later boxes would rank below them anyway.
    """
    order = torch.sort(scores, descending=True, stable=True).indices  # (M,) best first
    sorted_boxes, sorted_groups = boxes_xyxy[order], groups[order]
    num_groups = int(sorted_groups.max()) + 1 if order.numel() else 0
    kept_count = torch.zeros(num_groups, dtype=torch.long, device=boxes_xyxy.device)
    kept_positions, kept_boxes, kept_groups = [], sorted_boxes[:0], sorted_groups[:0]
    for start in range(0, order.numel(), block_size):
        block_boxes = sorted_boxes[start:start + block_size]  # (b, 4)
        block_groups = sorted_groups[start:start + block_size]  # (b,)
        alive = kept_count[block_groups] < max_per_group  # (b,)
        if kept_boxes.numel():
            hit = distance_box_iou(kept_boxes, block_boxes) > iou_threshold  # (K, b)
            alive &= ~(hit & (kept_groups[:, None] == block_groups[None, :])).any(dim=0)
        same_group = block_groups[:, None] == block_groups[None, :]
        suppresses = ((distance_box_iou(block_boxes, block_boxes) > iou_threshold) & same_group).triu(diagonal=1)
        keep = alive
        while True:
            updated = alive & ~(suppresses & keep[:, None]).any(dim=0)  # (b,) row i suppresses later column j
            if torch.equal(updated, keep):
                break
            keep = updated
        block_kept = torch.nonzero(keep).squeeze(1)  # (k,) positions within the block
        kept_positions.append(block_kept + start)
        kept_boxes = torch.cat([kept_boxes, block_boxes[block_kept]])
        kept_groups = torch.cat([kept_groups, block_groups[block_kept]])
        kept_count += torch.bincount(block_groups[block_kept], minlength=num_groups)
    positions = torch.cat(kept_positions) if kept_positions else order[:0]
    return order[positions]


def _rank_within_image(scores: Tensor, image_idx: Tensor, *, batch: int) -> Tensor:
    """(M,) position of each candidate in its own image's best-first order (0 = best); ties keep input order."""
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(image_idx[order], stable=True).indices]  # grouped by image, best first within each
    counts = torch.bincount(image_idx, minlength=batch)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device) - starts[image_idx[order]]
    return rank


def non_max_suppression(decoded: Tensor, *, settings: PostprocessSettings) -> list[dict[str, Tensor]]:
    """Class-aware NMS of decoded predictions, all images in one call.

    decoded: (B, N, 5 + C) = pred_cxcywh (input pixels), objectness probability, class probabilities.
    A box's score is obj * its best class probability; boxes with score >= settings.confidence enter NMS.
    With ``multi_label`` every (box, class) pair whose obj * class probability passes the threshold is a
    candidate, so a box can be reported for a second class (the usual choice when measuring mAP).
    nms_type 'nms' suppresses IoU > nms_iou (torchvision batched_nms), 'diou' suppresses DIoU > nms_iou
    (``diou_nms``). Returns per image a dict: ``boxes_xyxy`` (n, 4) input pixels, ``scores`` (n,),
    ``class_ids`` (n,) int64, best score first, at most max_det boxes.
    """
    conf_threshold, nms_iou, max_det = settings.confidence, settings.nms_iou, settings.max_det
    batch, _, channels = decoded.shape
    num_classes = channels - 5
    decoded = decoded.float()
    if settings.multi_label:
        scores = decoded[..., 4:5] * decoded[..., 5:]  # (B, N, C)
        image_idx, box_idx, cand_classes = torch.nonzero(scores >= conf_threshold, as_tuple=True)  # (M,) each
        cand_scores = scores[image_idx, box_idx, cand_classes]  # (M,)
    else:
        class_prob, class_ids = decoded[..., 5:].max(dim=-1)  # (B, N), (B, N)
        scores = decoded[..., 4] * class_prob  # (B, N)
        image_idx, box_idx = torch.nonzero(scores >= conf_threshold, as_tuple=True)  # (M,), (M,)
        cand_scores = scores[image_idx, box_idx]  # (M,)
        cand_classes = class_ids[image_idx, box_idx]  # (M,)
    cand_xyxy = box_cxcywh_to_xyxy(decoded[image_idx, box_idx, :4])  # (M, 4) input pixels
    groups = image_idx * num_classes + cand_classes  # one NMS group per (image, class)
    rank = _rank_within_image(cand_scores, image_idx, batch=batch)  # (M,) 0 = the image's best candidate
    per_image = torch.bincount(image_idx, minlength=batch)  # (B,)
    # Greedy NMS decides a box from better boxes only, so NMS of each image's best `limit` candidates is exact for
    # them; once every image keeps max_det boxes (or has no more candidates) the rest cannot enter the result.
    # This skips most of the O(candidates x kept) work at evaluation thresholds; each retry quadruples `limit`.
    limit = PREFIX_PER_MAX_DET * max_det
    while True:
        prefix = torch.nonzero(rank < limit).squeeze(1)  # (P,)
        if settings.nms_type == "nms":
            keep = prefix[batched_nms(cand_xyxy[prefix], cand_scores[prefix], groups[prefix], nms_iou)]  # best first
        else:
            keep = prefix[diou_nms(cand_xyxy[prefix], cand_scores[prefix], groups[prefix], iou_threshold=nms_iou,
                                   max_per_group=max_det)]
        kept_per_image = torch.bincount(image_idx[keep], minlength=batch)
        if bool(((kept_per_image >= max_det) | (per_image <= limit)).all()):
            break
        limit *= 4
    # Reorder kept boxes by image (stable: best first within an image) and keep each image's first max_det.
    keep = keep[torch.sort(image_idx[keep], stable=True).indices]
    kept_images = image_idx[keep]
    counts = torch.bincount(kept_images, minlength=batch)  # (B,)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(keep.numel(), device=keep.device) - starts[kept_images]
    keep = keep[rank < max_det]
    sizes = counts.clamp(max=max_det).tolist()
    return [{"boxes_xyxy": boxes, "scores": image_scores, "class_ids": ids}
            for boxes, image_scores, ids in zip(cand_xyxy[keep].split(sizes), cand_scores[keep].split(sizes),
                                                cand_classes[keep].split(sizes))]
