"""YOLOLoss against hand-computed values, torchvision's focal loss and the loop reference in loss_reference.py."""
import math

import pytest
import torch
import torch.nn.functional as F
from loss_reference import (GEOMETRY, TINY_ANCHORS, TINY_MASK, YOLOV4_ANCHORS, YOLOV4_MASK, assert_matches_reference,
                            assign_anchors, decode_box_xyxy, make_case, reference_loss)
from torchvision.ops import box_iou, complete_box_iou_loss, sigmoid_focal_loss

from nets.yolo_training import YOLOLoss, focal_ratio
from utils.core.boxes import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from utils.core.decode import decode_level, decode_level_xyxy_planes, split_levels


# One level of stride 32 at a 128x128 input (4x4 cells), three anchors of very different shapes so that
# square-ish ground truths always pick anchor 0 (32x32 px).
ONE_LEVEL = dict(anchors_px=torch.tensor([[32.0, 32.0], [200.0, 10.0], [10.0, 200.0]]), anchors_mask=[[0, 1, 2]],
                 num_classes=1, input_shape=(128, 128))


def one_level_output(cell_xy: tuple[int, int], txywh: tuple[float, float, float, float]) -> torch.Tensor:
    """(1, 3 * 6, 4, 4) zero logits except the box logits of anchor 0 at cell (x, y)."""
    out = torch.zeros(1, 3 * 6, 4, 4)
    for channel, value in enumerate(txywh):
        out[0, channel, cell_xy[1], cell_xy[0]] = value
    return out


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def ciou_by_hand(*, iou: float, centre_dist2: float, diag2: float, w_gt: float, h_gt: float, w: float, h: float) -> float:
    v = 4 / math.pi**2 * (math.atan(w_gt / h_gt) - math.atan(w / h)) ** 2
    alpha = v / (1 - iou + v)
    return iou - centre_dist2 / diag2 - alpha * v


# Pair 1: pred cxcywh (48, 48, 64, 32) -> xyxy (16, 32, 80, 64); gt xyxy (32, 32, 64, 64), same centre.
#   inter 32*32 = 1024, union 64*32 + 32*32 - 1024 = 2048, IoU = 0.5; centre distance 0.
#   v = 4/pi^2 (atan(1) - atan(2))^2 = 0.405285 * 0.103523 = 0.041956; alpha = v / (0.5 + v) = 0.077416
#   CIoU = 0.5 - 0 - 0.077416 * 0.041956 = 0.496752  -> loss 0.503248
# Pair 2: pred (56, 48, 32, 32) -> (40, 32, 72, 64); gt (32, 32, 64, 64), same shape so v = 0.
#   inter 24*32 = 768, union 1280, IoU = 0.6; centre distance^2 = 8^2 = 64;
#   enclosing box (32, 32, 72, 64): diagonal^2 = 40^2 + 32^2 = 2624; CIoU = 0.6 - 64/2624 = 0.575610 -> loss 0.424390
# Pair 3: pred (36, 16, 32, 32) -> (20, 0, 52, 32); gt (36, 16, 84, 32) (48 x 16, centre (60, 24)).
#   inter 16*16 = 256, union 1024 + 768 - 256 = 1536, IoU = 1/6; centre distance^2 = 24^2 + 8^2 = 640;
#   enclosing (20, 0, 84, 32): diagonal^2 = 64^2 + 32^2 = 5120, ratio 0.125;
#   v = 4/pi^2 (atan(3) - atan(1))^2 = 0.405285 * 0.214969 = 0.087123; alpha = v / (5/6 + v) = 0.094652
#   CIoU = 0.166667 - 0.125 - 0.094652 * 0.087123 = 0.033420 -> loss 0.966580
CIOU_PAIRS = [
    ((1, 1), (0.0, 0.0, math.log(2.0), 0.0), [32, 32, 64, 64],
     dict(iou=0.5, centre_dist2=0.0, diag2=1.0, w_gt=32, h_gt=32, w=64, h=32), 0.503248),
    ((1, 1), (logit(0.75), 0.0, 0.0, 0.0), [32, 32, 64, 64],
     dict(iou=0.6, centre_dist2=64.0, diag2=2624.0, w_gt=32, h_gt=32, w=32, h=32), 0.424390),
    ((1, 0), (logit(0.125), 0.0, 0.0, 0.0), [36, 16, 84, 32],
     dict(iou=1 / 6, centre_dist2=640.0, diag2=5120.0, w_gt=48, h_gt=16, w=32, h=32), 0.966580),
]


@pytest.mark.parametrize("cell_xy, txywh, gt_xyxy, hand, rounded_loss", CIOU_PAIRS)
def test_ciou_hand_computed(cell_xy, txywh, gt_xyxy, hand, rounded_loss):
    expected = 1 - ciou_by_hand(**hand)
    assert expected == pytest.approx(rounded_loss, abs=1e-6)
    targets = torch.tensor([[0.0, 0.0, *gt_xyxy]])
    terms = YOLOLoss(**ONE_LEVEL)([one_level_output(cell_xy, txywh)], targets)
    assert int(terms["num_pos"]) == 1
    assert float(terms["loss_loc_s32"]) == pytest.approx(expected, abs=2e-6)


def test_ciou_hand_values_match_torchvision():
    pred_xyxy = torch.tensor([[16.0, 32, 80, 64], [40, 32, 72, 64], [20, 0, 52, 32]], dtype=torch.float64)
    gt_xyxy = torch.tensor([[32.0, 32, 64, 64], [32, 32, 64, 64], [36, 16, 84, 32]], dtype=torch.float64)
    expected = torch.tensor([1 - ciou_by_hand(**pair[3]) for pair in CIOU_PAIRS], dtype=torch.float64)
    torch.testing.assert_close(complete_box_iou_loss(pred_xyxy, gt_xyxy), expected, rtol=0, atol=1e-6)


REFERENCE_CASES = {
    "v4-plain-mean": dict(model="yolov4", seed=0),
    "v4-focal-mean-smooth": dict(model="yolov4", seed=1, focal_loss=True, label_smoothing=0.1),
    "v4-focal-numpos-multi": dict(model="yolov4", seed=2, focal_loss=True, conf_normalization="num_pos",
                                  multi_anchor_threshold=0.25, focal_alpha=0.4, focal_gamma=1.5),
    "v4-scalexy-numpos-giou": dict(model="yolov4", seed=3, conf_normalization="num_pos", scale_x_y=[1.05, 1.1, 1.2],
                                   iou_type="giou", ignore_threshold=0.3),
    "v4-nonsquare-diou": dict(model="yolov4", seed=4, input_shape=(96, 160), iou_type="diou", label_smoothing=0.05),
    "tiny-plain": dict(model="yolov4-tiny", seed=5, boxes_per_image=(10, 0, 7)),
    "tiny-focal-all": dict(model="yolov4-tiny", seed=6, focal_loss=True, conf_normalization="num_pos",
                           multi_anchor_threshold=0.2, scale_x_y=[1.05, 1.05], label_smoothing=0.1,
                           boxes_per_image=(0, 12, 5)),
}
CASE_KEYS = {"model", "seed", "input_shape", "boxes_per_image"}


def run_both(case: dict):
    outputs, targets, geometry = make_case(**{k: v for k, v in case.items() if k in CASE_KEYS})
    options = {k: v for k, v in case.items() if k not in CASE_KEYS}
    outputs = [out.requires_grad_(True) for out in outputs]
    ours = YOLOLoss(**geometry, **options)(outputs, targets)
    ref = reference_loss(outputs, targets, **geometry, **options)
    return outputs, targets, geometry, ours, ref


@pytest.mark.parametrize("name", sorted(REFERENCE_CASES))
def test_loss_matches_loop_reference(name):
    case = REFERENCE_CASES[name]
    outputs, targets, geometry, ours, ref = run_both(case)
    # the case really exercises what it is meant to
    assert ref["num_crowded"] > 0
    assert ref["num_ignored"] > 0
    if case.get("multi_anchor_threshold"):
        assert ref["num_pairs"] > len(targets)
    assert_matches_reference(ours=ours, ref=ref, outputs=outputs, strides=GEOMETRY[case["model"]][2])


def test_tiny_shared_anchor_positive_on_both_levels():
    """YOLOv4-tiny at 416: a gt shaped exactly like anchor 3 (81x82) is positive on both levels; one shaped like
    the unused anchor 0 (10x14) goes to anchor 1, local index 0 of the stride-16 level."""
    loss = YOLOLoss(anchors_px=torch.tensor(TINY_ANCHORS, dtype=torch.float32), anchors_mask=TINY_MASK,
                    num_classes=2, input_shape=(416, 416))
    outputs = [torch.zeros(1, 21, 13, 13, requires_grad=True), torch.zeros(1, 21, 26, 26, requires_grad=True)]
    # centre (200.5, 100) -> cell (6, 3) at stride 32, cell (12, 6) at stride 16
    shared = torch.tensor([[0.0, 1.0, 200.5 - 40.5, 100.0 - 41.0, 200.5 + 40.5, 100.0 + 41.0]])
    terms = loss(outputs, shared)
    assert int(terms["num_pos"]) == 2
    grads = torch.autograd.grad(terms["loss_loc_s32"] + terms["loss_loc_s16"], outputs)
    assert set(grads[0].nonzero()[:, 1].tolist()) <= {0, 1, 2, 3}  # local anchor 0 of [3, 4, 5]
    assert {tuple(idx) for idx in grads[0].nonzero()[:, 2:].tolist()} == {(3, 6)}
    assert set(grads[1].nonzero()[:, 1].tolist()) <= {14, 15, 16, 17}  # local anchor 2 of [1, 2, 3]
    assert {tuple(idx) for idx in grads[1].nonzero()[:, 2:].tolist()} == {(6, 12)}

    unused_shape = torch.tensor([[0.0, 0.0, 100.0, 100.0, 110.0, 114.0]])  # centre (105, 107) -> cell (6, 6) at s16
    terms = loss(outputs, unused_shape)
    assert int(terms["num_pos"]) == 1
    assert float(terms["loss_loc_s32"].detach()) == 0.0
    grads = torch.autograd.grad(terms["loss_loc_s16"], outputs[1])[0]
    assert set(grads.nonzero()[:, 1].tolist()) <= {0, 1, 2, 3}
    assert {tuple(idx) for idx in grads.nonzero()[:, 2:].tolist()} == {(6, 6)}
    assert assign_anchors([[0, 0, 100, 100, 110, 114]], [tuple(a) for a in TINY_ANCHORS], [1, 2, 3, 4, 5], None) == [[1]]


def crowd_free_case(*, num_classes: int = 2):
    """YOLOv4 geometry at 128x128 with ground truths shaped exactly like an anchor, centred in a cell, so that the
    objectness targets are known by construction: returns outputs, targets, geometry and the (B, A, H, W) targets
    per level."""
    anchors = torch.tensor(YOLOV4_ANCHORS, dtype=torch.float32)
    # (image, global anchor, level, cell x, cell y); level 0 = stride 32 (4x4), 1 = 16 (8x8), 2 = 8 (16x16)
    placements = [(0, 7, 0, 1, 2), (0, 4, 1, 5, 3), (1, 1, 2, 9, 12), (1, 2, 2, 3, 3), (1, 6, 0, 0, 0)]
    strides, sizes = (32, 16, 8), (4, 8, 16)
    rows = []
    obj_targets = [torch.zeros(2, 3, s, s) for s in sizes]
    for img, anchor, level, gx, gy in placements:
        cx, cy = (gx + 0.5) * strides[level], (gy + 0.5) * strides[level]
        w, h = anchors[anchor].tolist()
        rows.append([img, anchor % num_classes, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        obj_targets[level][img, YOLOV4_MASK[level].index(anchor), gy, gx] = 1.0
    gen = torch.Generator().manual_seed(3)
    outputs = [torch.randn(2, 3 * (5 + num_classes), s, s, generator=gen) * 2 for s in sizes]
    geometry = dict(anchors_px=anchors, anchors_mask=YOLOV4_MASK, num_classes=num_classes, input_shape=(128, 128))
    return outputs, torch.tensor(rows), geometry, obj_targets


def obj_logits(raw: torch.Tensor, num_classes: int) -> torch.Tensor:
    b, _, h, w = raw.shape
    return raw.view(b, 3, 5 + num_classes, h, w)[:, :, 4]  # (B, A, H, W)


@pytest.mark.parametrize("normalization", ["mean", "num_pos"])
def test_focal_conf_equals_torchvision_sigmoid_focal_loss(normalization):
    outputs, targets, geometry, obj_targets = crowd_free_case()
    terms = YOLOLoss(**geometry, focal_loss=True, focal_alpha=0.25, focal_gamma=2.0, ignore_threshold=1.01,
                     conf_normalization=normalization)(outputs, targets)
    num_pos = sum(int(t.sum()) for t in obj_targets)
    assert int(terms["num_pos"]) == num_pos == 5
    for raw, target, stride in zip(outputs, obj_targets, (32, 16, 8)):
        expected = sigmoid_focal_loss(obj_logits(raw, 2), target, alpha=0.25, gamma=2.0, reduction="sum")
        expected = expected / (target.numel() if normalization == "mean" else num_pos)
        torch.testing.assert_close(terms[f"loss_conf_s{stride}"], expected, rtol=1e-5, atol=1e-7)


def test_plain_conf_equals_bce_mean():
    outputs, targets, geometry, obj_targets = crowd_free_case()
    terms = YOLOLoss(**geometry, ignore_threshold=1.01)(outputs, targets)
    for raw, target, stride in zip(outputs, obj_targets, (32, 16, 8)):
        expected = F.binary_cross_entropy_with_logits(obj_logits(raw, 2).double(), target.double())
        torch.testing.assert_close(terms[f"loss_conf_s{stride}"].double(), expected, rtol=1e-6, atol=0)


def test_focal_gamma0_alpha_half_is_half_bce():
    outputs, targets, geometry, _ = crowd_free_case()
    plain = YOLOLoss(**geometry)(outputs, targets)
    focal = YOLOLoss(**geometry, focal_loss=True, focal_alpha=0.5, focal_gamma=0.0)(outputs, targets)
    for stride in (32, 16, 8):
        torch.testing.assert_close(focal[f"loss_conf_s{stride}"], 0.5 * plain[f"loss_conf_s{stride}"], rtol=0, atol=1e-7)
    for key in ("loss_loc", "loss_cls"):
        assert torch.equal(focal[key], plain[key])


def test_focal_ratio_elementwise():
    logits = torch.tensor([-60.0, -20, -5, -1, -0.1, 0, 0.1, 1, 5, 20, 60], dtype=torch.float64).repeat(2)
    is_positive = torch.arange(len(logits)) < len(logits) // 2
    target = is_positive.double()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    ratio = focal_ratio(logits, is_positive, alpha=0.25, gamma=2.0)
    # torchvision forms 1 - p_t by subtraction: rounds to 0 at |logit| = 60, loses ~1e-7 relative at 20
    moderate = logits.abs() <= 20
    expected = sigmoid_focal_loss(logits, target, alpha=0.25, gamma=2.0, reduction="none")
    torch.testing.assert_close((ratio * bce)[moderate], expected[moderate], rtol=1e-6, atol=0)
    # 1 - p_t = 1 - sigmoid(z_t) = 1 / (1 + exp(z_t)) with z_t = logit for positives, -logit for negatives
    logit_t = torch.where(is_positive, logits, -logits)
    one_minus_p_t = 1 / (1 + torch.exp(logit_t))
    for alpha, gamma in [(0.25, 0.0), (0.5, 0.5), (0.75, 2.0), (0.25, 5.0)]:
        by_hand = torch.where(is_positive, alpha, 1 - alpha) * one_minus_p_t**gamma
        torch.testing.assert_close(focal_ratio(logits, is_positive, alpha=alpha, gamma=gamma), by_hand,
                                   rtol=1e-9, atol=0)
    leaf = logits.float().requires_grad_(True)
    focal_ratio(leaf, is_positive, alpha=0.25, gamma=0.5).sum().backward()
    assert torch.isfinite(leaf.grad).all()


def test_empty_targets():
    outputs, _, geometry = make_case(seed=11, model="yolov4", boxes_per_image=(0, 0, 0))
    outputs = [out.requires_grad_(True) for out in outputs]
    for focal in (False, True):
        terms = YOLOLoss(**geometry, focal_loss=focal)(outputs, torch.zeros(0, 6))
        assert int(terms["num_pos"]) == 0
        assert float(terms["loss_loc"].detach()) == 0.0 and float(terms["loss_cls"].detach()) == 0.0
        assert torch.isfinite(terms["loss"])
        ref = reference_loss(outputs, torch.zeros(0, 6), **geometry, focal_loss=focal)
        torch.testing.assert_close(terms["loss"].double(), ref["loss"].detach(), rtol=1e-5, atol=0)
        grads = torch.autograd.grad(terms["loss"], outputs)
        for raw, grad in zip(outputs, grads):
            per_channel = grad.view(3, 3, 8, *raw.shape[2:]).abs().sum(dim=(0, 1, 3, 4))  # (5 + C,)
            assert per_channel[4] > 0 and float(per_channel.sum() - per_channel[4]) == 0.0


def extreme_outputs(outputs: list[torch.Tensor], *, wh_logit: float, num_classes: int = 3) -> list[torch.Tensor]:
    extreme = []
    for raw in outputs:
        b, _, h, w = raw.shape
        level = raw.detach().clone().view(b, 3, 5 + num_classes, h, w)
        level[:, :, 2:4] = wh_logit
        level[:, :, 4] = torch.where(level[:, :, 4] > 0, 50.0, -50.0)
        level[:, :, 5:] = torch.where(level[:, :, 5:] > 0, 50.0, -50.0)
        extreme.append(level.view(b, -1, h, w).requires_grad_(True))
    return extreme


@pytest.mark.parametrize("focal", [False, True])
def test_extreme_logits_finite(focal):
    outputs, targets, geometry = make_case(seed=12, model="yolov4")
    outputs = extreme_outputs(outputs, wh_logit=100.0)
    terms = YOLOLoss(**geometry, focal_loss=focal, focal_gamma=0.5)(outputs, targets)
    assert all(torch.isfinite(v).all() for v in terms.values())
    for grad in torch.autograd.grad(terms["loss"], outputs):
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize("txywh", [(0.0, 0.0, -30.0, -30.0), (0.0, 0.0, 0.0, -30.0), (0.0, 0.0, -30.0, 0.0)])
def test_collapsed_box_logits_finite(txywh):
    """Very negative w/h logits: exp(tw) * anchor is far below one ulp of the box centre, so the decoded
    box's x2 - x1 (or y2 - y1) is exactly 0 in fp32; loss and gradients must still be finite."""
    out = one_level_output((1, 1), txywh).requires_grad_(True)
    terms = YOLOLoss(**ONE_LEVEL)([out], torch.tensor([[0.0, 0.0, 32, 32, 64, 64]]))
    assert torch.isfinite(terms["loss"])
    assert torch.isfinite(torch.autograd.grad(terms["loss"], out)[0]).all()


def test_bf16_autocast_outputs():
    outputs, targets, geometry = make_case(seed=13, model="yolov4-tiny")
    outputs_bf16 = [out.to(torch.bfloat16).requires_grad_(True) for out in outputs]
    loss = YOLOLoss(**geometry, focal_loss=True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        terms = loss(outputs_bf16, targets)
    assert terms["loss"].dtype == torch.float32 and torch.isfinite(terms["loss"])
    ref = reference_loss([out.float() for out in outputs_bf16], targets, **geometry, focal_loss=True)
    torch.testing.assert_close(terms["loss"].double(), ref["loss"].detach(), rtol=1e-4, atol=0)
    for grad in torch.autograd.grad(terms["loss"], outputs_bf16):
        assert grad.dtype == torch.bfloat16 and torch.isfinite(grad).all()


def test_rejects_unknown_options():
    _, _, geometry = make_case(seed=0, model="yolov4")
    with pytest.raises(ValueError, match="iou_type"):
        YOLOLoss(**geometry, iou_type="eiou")
    with pytest.raises(ValueError, match="conf_normalization"):
        YOLOLoss(**geometry, conf_normalization="sum")


def test_confidence_samples_are_the_conf_term_cells():
    outputs, targets, geometry = make_case(seed=14, model="yolov4")
    options = dict(conf_normalization="num_pos", focal_loss=False)
    loss = YOLOLoss(**geometry, **options)
    logits, positive = loss.confidence_samples(outputs, targets)
    ref = reference_loss(outputs, targets, **geometry, **options)
    total_cells = sum(out.numel() // (5 + geometry["num_classes"]) for out in outputs)
    assert ref["num_ignored"] > 0
    assert len(logits) == len(positive) == total_cells - ref["num_ignored"]
    assert int(positive.sum()) == ref["num_pos"]
    conf_sum = F.binary_cross_entropy_with_logits(logits.double(), positive.double(), reduction="sum")
    torch.testing.assert_close(conf_sum / ref["num_pos"], ref["loss_conf"], rtol=1e-5, atol=0)


def only_method(method: str) -> dict[str, float]:
    """A PAIR_COST for nets.ignore under which cells_overlapping always picks ``method``."""
    return {name: 0.0 if name == method else 1e12 for name in ("windowed", "banded", "dense")}


@pytest.mark.parametrize("method", ["windowed", "banded", "dense"])
@pytest.mark.parametrize("chunk_elements", [1, 3 * 50, 1 << 30])
@pytest.mark.parametrize("scale_x_y", [1.0, 1.2])
def test_ignore_test_equals_iou_over_all_cells(method, chunk_elements, scale_x_y, monkeypatch):
    """Every method (windowed: only cells near a ground truth; banded: bands of rows against the ground truths
    reaching them; dense: all, in blocks) must equal torchvision's IoU over all cells, in pieces of any size (1: one
    ground truth, or one box, per piece)."""
    import nets.ignore as ignore

    monkeypatch.setattr(ignore, "PAIR_COST", only_method(method))
    monkeypatch.setattr(ignore, "IGNORE_CHUNK_ELEMENTS", chunk_elements)
    monkeypatch.setattr(ignore, "IGNORE_BANDS", 2 if chunk_elements == 3 * 50 else 16)  # 2: bands of 2 rows on 3 rows
    gen = torch.Generator().manual_seed(3)
    input_shape, strides = (96, 128), (32, 8)
    gt_xy = torch.rand(14, 2, generator=gen) * torch.tensor([128.0, 96.0])
    gt_wh = torch.rand(14, 2, generator=gen) ** 2 * 120 + 1  # 1 to 121 px, mostly small
    gt_xyxy = torch.cat([gt_xy, gt_xy + gt_wh], dim=1)  # some reach past the image
    gt_img = torch.tensor([0] * 6 + [1] * 8)  # image 2 has no ground truth
    hits = {}
    for stride in strides:
        height, width = 96 // stride, 128 // stride
        # Centres anywhere in their cell widened by scale_x_y (as decoding places them), sizes like the ground truths.
        grid_x = torch.arange(width).view(1, 1, 1, width).expand(3, 3, height, width)
        grid_y = torch.arange(height).view(1, 1, height, 1).expand(3, 3, height, width)
        offset = torch.rand(2, 3, 3, height, width, generator=gen) * scale_x_y - (scale_x_y - 1) / 2
        pred_cxcywh = torch.stack([(grid_x + offset[0]) * stride, (grid_y + offset[1]) * stride,
                                   *(torch.rand(2, 3, 3, height, width, generator=gen) ** 2 * 120 + 1)], dim=-1)
        # Near the edge of the window: a copy of each ground truth moved by 0.32 of its width (IoU 0.515), at
        # anchor 0 of the cell its centre falls in.
        moved = box_xyxy_to_cxcywh(gt_xyxy) + torch.tensor([1.0, 0.0, 0.0, 0.0]) * 0.32 * gt_wh[:, :1]  # (G, 4)
        inside = (moved[:, 0] < 128) & (moved[:, 1] < 96)
        cell_x, cell_y = (moved[inside, 0] // stride).long(), (moved[inside, 1] // stride).long()
        pred_cxcywh[gt_img[inside], 0, cell_y, cell_x] = moved[inside]
        pred_xyxy = box_cxcywh_to_xyxy(pred_cxcywh)  # (3, 3, H, W, 4)
        for threshold in (0.0, 0.1, 0.3, 0.5, 0.7):
            dense = torch.stack([  # torchvision over every cell and ground truth of each image
                (box_iou(pred_xyxy[b].reshape(-1, 4), gt_xyxy[gt_img == b]) > threshold).any(dim=1)
                for b in range(3)]).view(3, 3, height, width)
            above = ignore.cells_overlapping(pred_xyxy.permute(4, 0, 1, 2, 3), gt_xyxy, gt_img, threshold=threshold, scale_x_y=scale_x_y,
                                             input_shape=input_shape)
            assert torch.equal(above, dense), (stride, threshold)
            hits[threshold] = hits.get(threshold, 0) + int(dense.sum())
    assert all(hits[t] > 0 for t in (0.0, 0.1, 0.3, 0.5)), hits  # the cases are not all empty


def test_loss_unchanged_by_ignore_method_and_chunking(monkeypatch):
    import nets.ignore as ignore

    anchors, mask, strides = GEOMETRY["yolov4"]
    gen = torch.Generator().manual_seed(5)
    outputs = [torch.randn(3, 3 * 8, 128 // s, 128 // s, generator=gen) for s in strides]
    boxes_xy = torch.rand(12, 2, generator=gen) * 100
    targets = torch.cat([torch.arange(3).repeat(4)[:, None].float(), torch.randint(3, (12, 1), generator=gen).float(),
                         boxes_xy, boxes_xy + 4 + torch.rand(12, 2, generator=gen) * 24], dim=1)
    loss = YOLOLoss(anchors_px=torch.tensor(anchors, dtype=torch.float32), anchors_mask=mask, num_classes=3,
                    input_shape=(128, 128))
    whole = loss(outputs, targets)
    monkeypatch.setattr(ignore, "IGNORE_CHUNK_ELEMENTS", 1)  # one box or one ground truth per piece
    for method in ("windowed", "banded", "dense"):
        monkeypatch.setattr(ignore, "PAIR_COST", only_method(method))
        chunked = loss(outputs, targets)
        assert all(torch.equal(whole[name], chunked[name]) for name in whole)


@pytest.mark.parametrize("scale_x_y", [1.0, 1.1])
def test_coordinate_planes_decode_like_the_reference_and_decode_level(scale_x_y):
    """The ignore test's decoder reads the head's channel planes; it must give the test reference's boxes (a loop
    of plain formulas, tw clamped) and exactly decode_level's, whose layout the rest of the project uses."""
    gen = torch.Generator().manual_seed(8)
    anchors_px = torch.tensor([[12.0, 16.0], [19.0, 36.0], [40.0, 28.0]])
    raw = torch.randn(2, 3 * 7, 5, 6, generator=gen) * 3  # (B, A * (5 + C), H, W), input 160 x 192: stride 32
    raw[0, 2, 1, 1] = 40.0  # a w logit far above the clamp
    level = split_levels(raw, 3)  # (B, A, H, W, 7)
    planes = decode_level_xyxy_planes(level, anchors_px=anchors_px, input_shape=(160, 192), scale_x_y=scale_x_y)
    grid_x, grid_y = torch.arange(6.0).view(1, 1, 1, 6), torch.arange(5.0).view(1, 1, 5, 1)
    expected = decode_box_xyxy(level[..., :4], grid_x=grid_x, grid_y=grid_y, anchor_w=anchors_px[:, 0, None, None],
                               anchor_h=anchors_px[:, 1, None, None], stride_x=32.0, stride_y=32.0, scale=scale_x_y)
    torch.testing.assert_close(planes.permute(1, 2, 3, 4, 0), expected, rtol=1e-6, atol=1e-4)
    channel_last = box_cxcywh_to_xyxy(decode_level(level, anchors_px=anchors_px, input_shape=(160, 192),
                                                   scale_x_y=scale_x_y))
    assert torch.equal(planes.permute(1, 2, 3, 4, 0), channel_last)
