"""A slow, plain loop reference of YOLOLoss, written from the semantics stated in the module docstring
of nets/yolo_training.py, not from its code: one ground truth, one positive and one image at a time.

Everything is computed in float64 from the same raw head outputs, so gradients flow back to them and
can be compared with the vectorised loss. Only torch, math and torchvision.ops (IoU losses, box_iou)
are used; nothing is imported from nets/ or utils/.

Head layout (per level): (B, A * (5 + C), H, W), anchor-major, channels per anchor tx, ty, tw, th, obj,
classes. Decoded box: cx = (sigmoid(tx) * s - (s - 1) / 2 + grid_x) * stride_x, w = anchor_w * exp(tw),
with tw clamped at 10 from above as the decoder documents.

Also the random cases the loss tests share (make_case): head outputs, ground truths with crowded cells.
"""
import math

import torch
from torch import Tensor
from torchvision.ops import box_iou, complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

MAX_WH_LOGIT = 10.0
YOLOV4_ANCHORS = [[12, 16], [19, 36], [40, 28], [36, 75], [76, 55], [72, 146], [142, 110], [192, 243], [459, 401]]
YOLOV4_MASK = [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
TINY_ANCHORS = [[10, 14], [23, 27], [37, 58], [81, 82], [135, 169], [344, 319]]
TINY_MASK = [[3, 4, 5], [1, 2, 3]]
GEOMETRY = {"yolov4": (YOLOV4_ANCHORS, YOLOV4_MASK, (32, 16, 8)), "yolov4-tiny": (TINY_ANCHORS, TINY_MASK, (32, 16))}
BALANCE = {32: 0.4, 16: 1.0, 8: 4.0}
IOU_LOSS = {"ciou": complete_box_iou_loss, "diou": distance_box_iou_loss, "giou": generalized_box_iou_loss}


def make_case(*, seed: int, model: str, num_classes: int = 3, batch: int = 3, input_shape=(128, 128),
              boxes_per_image=(6, 9, 0), crowded: bool = True):
    """Random head outputs and targets; the last image has no objects by default; every fourth box is small;
    a few ground truths get a near-duplicate (same image, shape and cell) to make crowded cells."""
    gen = torch.Generator().manual_seed(seed)
    anchors_list, mask, strides = GEOMETRY[model]
    in_h, in_w = input_shape
    anchors = torch.tensor(anchors_list, dtype=torch.float32) * (in_w / 416)
    rows = []
    for img, count in enumerate(boxes_per_image):
        for _ in range(count):
            wh = torch.rand(2, generator=gen) * torch.tensor([in_w * 0.8, in_h * 0.8]) + 4
            if len(rows) % 4 == 2:  # small boxes too, down to the smallest (tiny: unused) anchor
                wh = torch.rand(2, generator=gen) * 8 + 3
            cxcy = torch.rand(2, generator=gen) * torch.tensor([in_w, in_h])
            x1y1 = torch.maximum(cxcy - wh / 2, torch.zeros(2))
            x2y2 = torch.minimum(cxcy + wh / 2, torch.tensor([in_w, in_h], dtype=torch.float32))
            cls = torch.randint(num_classes, (1,), generator=gen).float()
            box = torch.round(torch.cat([x1y1, x2y2]) * 4) / 4  # exact in fp32 and fp64
            rows.append(torch.cat([torch.tensor([float(img)]), cls, box]))
            if crowded and len(rows) % 3 == 1:
                rows.append(torch.cat([rows[-1][:1], (rows[-1][1:2] + 1) % num_classes,
                                       rows[-1][2:] + torch.tensor([0.25, 0.25, 0.0, 0.0])]))
    targets = torch.stack(rows) if rows else torch.zeros(0, 6)
    depth = len(mask[0]) * (5 + num_classes)
    outputs = [torch.randn(batch, depth, in_h // s, in_w // s, generator=gen) for s in strides]
    return outputs, targets, dict(anchors_px=anchors, anchors_mask=mask, num_classes=num_classes,
                                  input_shape=input_shape)


def bce_with_logits(logits: Tensor, target: Tensor) -> Tensor:
    """Elementwise binary cross-entropy from logits, the usual stable form."""
    return logits.clamp(min=0) - logits * target + torch.log1p(torch.exp(-logits.abs()))


def decode_box_xyxy(txywh: Tensor, *, grid_x, grid_y, anchor_w, anchor_h, stride_x: float, stride_y: float,
                    scale: float) -> Tensor:
    """Logits (..., 4) -> pred_xyxy_px (..., 4); grid and anchor arguments broadcast against (...)."""
    offset_x = torch.sigmoid(txywh[..., 0]) * scale - (scale - 1) / 2
    offset_y = torch.sigmoid(txywh[..., 1]) * scale - (scale - 1) / 2
    cx = (offset_x + grid_x) * stride_x
    cy = (offset_y + grid_y) * stride_y
    w = torch.exp(txywh[..., 2].clamp(max=MAX_WH_LOGIT)) * anchor_w
    h = torch.exp(txywh[..., 3].clamp(max=MAX_WH_LOGIT)) * anchor_h
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def shape_iou(w: float, h: float, anchor_w: float, anchor_h: float) -> float:
    inter = min(w, anchor_w) * min(h, anchor_h)
    return inter / (w * h + anchor_w * anchor_h - inter)


def assign_anchors(gts: list[list[float]], anchors: list[tuple[float, float]], usable: list[int],
                   multi_anchor_threshold: float | None) -> list[list[int]]:
    """For each ground truth, the global anchors it is positive for."""
    assigned = []
    for _, _, x1, y1, x2, y2 in gts:
        ious = {k: shape_iou(x2 - x1, y2 - y1, *anchors[k]) for k in usable}
        best = usable[0]
        for k in usable:
            if ious[k] > ious[best]:
                best = k
        chosen = {best}
        if multi_anchor_threshold is not None:
            chosen |= {k for k in usable if ious[k] > multi_anchor_threshold}
        assigned.append(sorted(chosen))
    return assigned


def reference_loss(outputs: list[Tensor], targets: Tensor, *, anchors_px, anchors_mask: list[list[int]],
                   num_classes: int, input_shape: tuple[int, int], label_smoothing: float = 0.0,
                   focal_loss: bool = False, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                   focal_cls: bool = False, quality_loss: str = "none", qfl_beta: float = 2.0, vfl_alpha: float = 0.75,
                   vfl_gamma: float = 2.0, conf_target: str = "one", iou_target_ratio: float = 1.0,
                   focal_loss_ratio: float = 10.0, conf_normalization: str = "mean", iou_type: str = "ciou",
                   ignore_threshold: float = 0.5, multi_anchor_threshold: float | None = None,
                   scale_x_y: list[float] | None = None, box_ratio: float = 0.05, cls_ratio: float | None = None,
                   obj_ratio: float | None = None) -> dict[str, Tensor | int]:
    """Same keys as YOLOLoss's output, plus diagnostics ``num_ignored``, ``num_pairs`` and ``num_crowded``.

    The confidence losses with IoU targets, written from their papers: for each positive cell the IoU of its
    decoded box (no gradient) with its ground truth, the largest where ground truths share the cell;
    QFL (Li et al. 2020) BCE(z, y) |y - sigmoid(z)|^beta with y that IoU (0 elsewhere); VFL (Zhang et al. 2021,
    mmdetection's iou_weighted) BCE(z, q) times q on cells with q > 0 and alpha sigmoid(z)^gamma elsewhere;
    YOLOv5's objectness BCE(z, (1 - gr) + gr IoU) on positive cells. ``focal_cls``: each class BCE element
    times alpha_t (1 - p_t)^gamma, p_t against the one-hot label.
    """
    anchors = [(float(w), float(h)) for w, h in torch.as_tensor(anchors_px, dtype=torch.float64).view(-1, 2).tolist()]
    usable = sorted({k for mask in anchors_mask for k in mask})
    in_h, in_w = input_shape
    scales = list(scale_x_y) if scale_x_y else [1.0] * len(anchors_mask)
    cls_ratio = num_classes / 80 if cls_ratio is None else cls_ratio
    obj_ratio = 5 * in_h * in_w / 416**2 if obj_ratio is None else obj_ratio
    gts = targets.double().tolist()  # rows [img, cls, x1, y1, x2, y2], xyxy input pixels
    gt_anchors = assign_anchors(gts, anchors, usable, multi_anchor_threshold)
    depth = 5 + num_classes
    zero = outputs[0].new_zeros((), dtype=torch.float64)

    result, conf_sums, kept_counts, strides = {}, [], [], []
    num_pos = num_ignored = num_pairs = num_crowded = 0
    for level, (raw, mask) in enumerate(zip(outputs, anchors_mask)):
        raw = raw.double()
        batch, _, height, width = raw.shape
        stride_y, stride_x = in_h / height, in_w / width
        stride = round(stride_y)
        strides.append(stride)
        loc_terms, cls_terms, cell_of_pair, iou_of_cell = [], [], [], {}
        for n, (img, cls, x1, y1, x2, y2) in enumerate(gts):
            for k in gt_anchors[n]:
                if k not in mask:
                    continue
                a = mask.index(k)
                gx = min(max(math.floor((x1 + x2) / 2 / stride_x), 0), width - 1)
                gy = min(max(math.floor((y1 + y2) / 2 / stride_y), 0), height - 1)
                b = int(img)
                logits = raw[b, a * depth:(a + 1) * depth, gy, gx]  # (5 + C,)
                pred_xyxy = decode_box_xyxy(logits[:4], grid_x=gx, grid_y=gy, anchor_w=anchors[k][0],
                                            anchor_h=anchors[k][1], stride_x=stride_x, stride_y=stride_y,
                                            scale=scales[level])
                gt_xyxy = torch.tensor([x1, y1, x2, y2], dtype=torch.float64)
                loc_terms.append(IOU_LOSS[iou_type](pred_xyxy[None], gt_xyxy[None], reduction="sum"))
                cls_target = torch.full((num_classes,), label_smoothing / 2, dtype=torch.float64)
                cls_target[int(cls)] = 1.0 - label_smoothing / 2
                cls_bce = bce_with_logits(logits[5:], cls_target)
                if focal_cls:
                    is_label = torch.arange(num_classes) == int(cls)
                    p = torch.sigmoid(logits[5:])
                    p_t = torch.where(is_label, p, 1 - p)
                    cls_bce = cls_bce * torch.where(is_label, focal_alpha, 1 - focal_alpha) * (1 - p_t) ** focal_gamma
                cls_terms.append(cls_bce.sum())
                cell_of_pair.append((b, a, gy, gx))
                iou = float(box_iou(pred_xyxy.detach()[None], gt_xyxy[None])[0, 0])
                iou_of_cell[(b, a, gy, gx)] = max(iou, iou_of_cell.get((b, a, gy, gx), 0.0))
        num_pairs += len(cell_of_pair)
        positive_cells = set(cell_of_pair)
        num_crowded += len(cell_of_pair) - len(positive_cells)
        num_pos += len(positive_cells)
        tag = f"s{stride}"
        result[f"loss_loc_{tag}"] = sum(loc_terms) / len(loc_terms) if loc_terms else zero
        result[f"loss_cls_{tag}"] = sum(cls_terms) / (len(cls_terms) * num_classes) if cls_terms else zero

        conf_sum, kept_count = zero, 0
        for b in range(batch):
            image = raw[b].view(len(mask), depth, height, width)
            ignored = torch.zeros(len(mask), height, width, dtype=torch.bool)
            with torch.no_grad():
                grid_y, grid_x = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                                torch.arange(width, dtype=torch.float64), indexing="ij")
                anchor_wh = torch.tensor([anchors[k] for k in mask], dtype=torch.float64)  # (A, 2)
                cells_xyxy = decode_box_xyxy(image[:, :4].permute(0, 2, 3, 1), grid_x=grid_x, grid_y=grid_y,
                                             anchor_w=anchor_wh[:, 0, None, None], anchor_h=anchor_wh[:, 1, None, None],
                                             stride_x=stride_x, stride_y=stride_y, scale=scales[level])  # (A, H, W, 4)
                for img, _, x1, y1, x2, y2 in gts:
                    if int(img) != b:
                        continue
                    gt_xyxy = torch.tensor([[x1, y1, x2, y2]], dtype=torch.float64)
                    iou = box_iou(cells_xyxy.reshape(-1, 4), gt_xyxy).view(len(mask), height, width)
                    ignored |= iou > ignore_threshold
            is_obj = torch.zeros(len(mask), height, width, dtype=torch.bool)
            iou_map = torch.zeros(len(mask), height, width, dtype=torch.float64)
            for cb, a, gy, gx in positive_cells:
                if cb == b:
                    is_obj[a, gy, gx] = True
                    iou_map[a, gy, gx] = iou_of_cell[(cb, a, gy, gx)]
            kept = is_obj | ~ignored
            num_ignored += int((~kept).sum())
            conf_logits = image[:, 4]  # (A, H, W)
            p = torch.sigmoid(conf_logits)
            if quality_loss == "qfl":
                conf_loss = bce_with_logits(conf_logits, iou_map) * (iou_map - p).abs() ** qfl_beta
            elif quality_loss == "vfl":
                conf_loss = bce_with_logits(conf_logits, iou_map) * torch.where(iou_map > 0, iou_map,
                                                                                vfl_alpha * p**vfl_gamma)
            elif conf_target == "iou":
                target = torch.where(is_obj, 1 - iou_target_ratio + iou_target_ratio * iou_map, 0.0)
                conf_loss = bce_with_logits(conf_logits, target)
            else:
                conf_loss = bce_with_logits(conf_logits, is_obj.double())
            if focal_loss:
                alpha_t = torch.where(is_obj, focal_alpha, 1.0 - focal_alpha)
                one_minus_p_t = torch.where(is_obj, torch.sigmoid(-conf_logits), torch.sigmoid(conf_logits))
                conf_loss = conf_loss * alpha_t * one_minus_p_t**focal_gamma
            conf_sum = conf_sum + conf_loss[kept].sum()
            kept_count += int(kept.sum())
        conf_sums.append(conf_sum)
        kept_counts.append(kept_count)

    for stride, conf_sum, kept_count in zip(strides, conf_sums, kept_counts):
        norm = kept_count if conf_normalization == "mean" else num_pos
        result[f"loss_conf_s{stride}"] = conf_sum / max(norm, 1)

    total = zero
    for stride in strides:
        # focal_loss_ratio rescales the focal *mean* only; a num_pos-normalised focal sum is left as it is
        modulated = focal_loss or quality_loss != "none"
        focal_weight = focal_loss_ratio if modulated and conf_normalization == "mean" else 1.0
        conf_weight = obj_ratio * BALANCE.get(stride, 1.0) * focal_weight
        total = total + (box_ratio * result[f"loss_loc_s{stride}"] + cls_ratio * result[f"loss_cls_s{stride}"]
                         + conf_weight * result[f"loss_conf_s{stride}"])
    for name in ("loss_loc", "loss_conf", "loss_cls"):
        result[name] = sum(result[f"{name}_s{stride}"] for stride in strides)
    result["loss"] = total
    result["num_pos"] = num_pos
    result.update(num_ignored=num_ignored, num_pairs=num_pairs, num_crowded=num_crowded)
    return result


def assert_matches_reference(*, ours: dict, ref: dict, outputs: list[Tensor], strides: list[int]) -> None:
    """Every term of YOLOLoss (per level and summed) equals the reference's, and so do the gradients of a random
    combination of them (each term's gradient counts) with respect to the head outputs."""
    names = [f"{term}_s{s}" for term in ("loss_loc", "loss_cls", "loss_conf") for s in strides]
    names += ["loss_loc", "loss_cls", "loss_conf", "loss"]
    assert set(ours) == set(names) | {"num_pos"}
    for key in names:
        assert ours[key].dtype == torch.float32
        torch.testing.assert_close(ours[key].double(), ref[key].detach(), rtol=2e-5, atol=1e-6, msg=key)
    assert int(ours["num_pos"]) == ref["num_pos"]
    weights = torch.rand(len(names), generator=torch.Generator().manual_seed(99)) + 0.5
    ours_grads = torch.autograd.grad(sum(w * ours[k] for w, k in zip(weights, names)), outputs)
    ref_grads = torch.autograd.grad(sum(w.double() * ref[k] for w, k in zip(weights, names)), outputs)
    for level, (g_ours, g_ref) in enumerate(zip(ours_grads, ref_grads)):
        scale = float(g_ref.abs().max())
        assert scale > 0
        torch.testing.assert_close(g_ours, g_ref.float(), rtol=1e-4, atol=1e-5 * scale, msg=f"grad level {level}")
