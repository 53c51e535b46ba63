"""The baseline that bench_speed.py prints the loss speed-up against: YOLOLoss's algorithm (default options:
best-anchor assignment, CIoU, BCE, 'mean' normalisation, no focal loss, no label smoothing) written the way the
public PyTorch YOLOv4 implementations write it, for speed parity with them: a loop over levels and images,
vectorised within an image, the ignore IoU as one dense (cells x boxes) tensor per image.

It is not a test oracle (tests/nets/loss_reference.py is); the benchmark checks that it gives YOLOLoss's value.
"""
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou, complete_box_iou_loss

from utils.core.boxes import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, wh_iou


def parity_reference_loss(criterion, outputs: list[Tensor], targets: Tensor) -> Tensor:
    """Weighted total loss for raw head outputs (B, A * (5 + C), H, W), coarsest first, and targets (N, 6)
    ``[img_idx, cls, x1, y1, x2, y2]`` (boxes xyxy in input pixels); ``criterion`` supplies the geometry and
    weights (a YOLOLoss)."""
    input_h, input_w = criterion.input_shape
    all_anchors_px = criterion.anchors_px  # (K, 2)
    usable = criterion.usable_anchors  # (K,)
    total = outputs[0].new_zeros(())
    for level_index, raw in enumerate(outputs):
        mask = criterion.anchors_mask[level_index]
        batch, _, height, width = raw.shape
        stride_x, stride_y = input_w / width, input_h / height
        level = raw.view(batch, len(mask), -1, height, width).permute(0, 1, 3, 4, 2).contiguous()  # (B,A,H,W,5+C)
        anchors_px = all_anchors_px[mask]  # (A, 2)
        ys, xs = torch.meshgrid(torch.arange(height, dtype=raw.dtype, device=raw.device),
                                torch.arange(width, dtype=raw.dtype, device=raw.device), indexing="ij")
        pred_cx = (torch.sigmoid(level[..., 0]) + xs) * stride_x  # (B, A, H, W)
        pred_cy = (torch.sigmoid(level[..., 1]) + ys) * stride_y
        pred_w = torch.exp(level[..., 2].clamp(-10, 10)) * anchors_px[:, 0, None, None]
        pred_h = torch.exp(level[..., 3].clamp(-10, 10)) * anchors_px[:, 1, None, None]
        pred_xyxy_px = box_cxcywh_to_xyxy(torch.stack([pred_cx, pred_cy, pred_w, pred_h], dim=-1))  # (B,A,H,W,4)
        loc_sum, cls_sum, num_pairs = raw.new_zeros(()), raw.new_zeros(()), 0
        conf_sum, kept_count = raw.new_zeros(()), 0
        for image in range(batch):
            rows = targets[targets[:, 0] == image]
            obj = torch.zeros(len(mask), height, width, dtype=torch.bool, device=raw.device)
            kept = torch.ones(len(mask), height, width, dtype=torch.bool, device=raw.device)
            if len(rows):
                gt_xyxy_px = rows[:, 2:6]
                gt_cxcywh_px = box_xyxy_to_cxcywh(gt_xyxy_px)
                best = wh_iou(gt_cxcywh_px[:, 2:], all_anchors_px).masked_fill(~usable, -1.0).argmax(dim=1)  # (M,)
                local = torch.tensor([mask.index(k) if k in mask else -1 for k in best.tolist()], device=raw.device)
                on_level = local >= 0
                anchor_i = local[on_level]
                cell_x = (gt_cxcywh_px[on_level, 0] / stride_x).floor().long().clamp(0, width - 1)
                cell_y = (gt_cxcywh_px[on_level, 1] / stride_y).floor().long().clamp(0, height - 1)
                obj[anchor_i, cell_y, cell_x] = True
                ious = box_iou(pred_xyxy_px[image].reshape(-1, 4), gt_xyxy_px)  # (A*H*W, M) dense
                kept = obj | ~(ious.amax(dim=1) > criterion.ignore_threshold).view(len(mask), height, width)
                if on_level.any():
                    pos_xyxy = pred_xyxy_px[image, anchor_i, cell_y, cell_x]  # (P, 4)
                    loc_sum = loc_sum + complete_box_iou_loss(pos_xyxy, gt_xyxy_px[on_level], reduction="sum")
                    cls_target = F.one_hot(rows[on_level, 1].long(), criterion.num_classes).to(raw)
                    cls_sum = cls_sum + F.binary_cross_entropy_with_logits(
                        level[image, anchor_i, cell_y, cell_x, 5:], cls_target, reduction="sum")
                    num_pairs += int(on_level.sum())
            conf_bce = F.binary_cross_entropy_with_logits(level[image, ..., 4], obj.to(raw), reduction="none")
            conf_sum = conf_sum + conf_bce[kept].sum()
            kept_count += int(kept.sum())
        loc = loc_sum / max(num_pairs, 1)
        cls = cls_sum / max(num_pairs * criterion.num_classes, 1)
        conf = conf_sum / max(kept_count, 1)
        weight, tag = criterion.weights, f"s{round(stride_y)}"
        total = (total + weight[f"loss_loc_{tag}"] * loc + weight[f"loss_cls_{tag}"] * cls
                 + weight[f"loss_conf_{tag}"] * conf)
    return total
