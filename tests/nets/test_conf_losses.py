"""The confidence-loss family (nets/conf_losses.py): QFL, VFL, YOLOv5's IoU-aware objectness target and focal on
the class term, each against a computation written here from the papers' / mmdetection's definitions, against the
loop reference (loss_reference.py) with crowded and ignored cells, and the settings that contradict each other."""
import math

import pytest
import torch
from loss_reference import GEOMETRY, assert_matches_reference, make_case, reference_loss
from torchvision.ops import box_iou, sigmoid_focal_loss

import train
from nets.conf_losses import ConfidenceLoss, cell_iou, class_term, paired_box_iou, qfl_ratio, vfl_ratio
from nets.yolo_training import YOLOLoss, build_loss, check_loss_settings
from utils.core.config import ConfigError
from utils.core.model_files import DEFAULT_ANCHORS_MASK, ModelSpec


def bce_by_hand(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-(y log p + (1 - y) log(1 - p)), p = sigmoid(z), in float64 (moderate logits only)."""
    p = torch.sigmoid(logits.double())
    return -(target * torch.log(p) + (1 - target) * torch.log(1 - p))


def random_cells(seed: int, *, count: int = 400):
    """Logits in [-8, 8], a quarter of the cells positive with an IoU in (0, 1], a few positives at IoU 0."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.rand(count, generator=gen, dtype=torch.float64) - 0.5) * 16
    is_obj = torch.rand(count, generator=gen) < 0.25
    iou = torch.where(is_obj, torch.rand(count, generator=gen, dtype=torch.float64).clamp(min=1e-3), 0.0)
    iou[is_obj.nonzero()[:2, 0]] = 0.0  # a positive whose predicted box misses its ground truth
    return logits, is_obj, iou


def test_qfl_elementwise_is_the_papers_formula():
    logits, is_obj, iou = random_cells(0)
    for beta in (2.0, 1.0, 0.5):
        # GFL eq. (4): QFL(sigma) = -|y - sigma|^beta ((1 - y) log(1 - sigma) + y log(sigma)), y the IoU (0: negative)
        expected = (iou - torch.sigmoid(logits)).abs() ** beta * bce_by_hand(logits, iou)
        ours = ConfidenceLoss(quality_loss="qfl", qfl_beta=beta).elementwise(logits, is_obj, iou)
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    # mmdetection's quality_focal_loss: negatives BCE(z, 0) * sigmoid(z)^beta, positives BCE(z, y) * |y - p|^beta
    p = torch.sigmoid(logits)
    negative = bce_by_hand(logits, torch.zeros_like(iou)) * p**2
    positive = bce_by_hand(logits, iou) * (iou - p).abs() ** 2
    expected = torch.where(is_obj, positive, negative)
    torch.testing.assert_close(ConfidenceLoss(quality_loss="qfl").elementwise(logits, is_obj, iou), expected,
                               rtol=1e-10, atol=1e-12)


def test_vfl_elementwise_is_mmdetections_iou_weighted_formula():
    logits, is_obj, iou = random_cells(1)
    for alpha, gamma in ((0.75, 2.0), (0.5, 1.0), (0.25, 0.5)):
        # mmdetection varifocal_loss(iou_weighted=True): weight q * [q > 0] + alpha * |p - q|^gamma * [q <= 0]
        p = torch.sigmoid(logits)
        weight = iou * (iou > 0).double() + alpha * (p - iou).abs() ** gamma * (iou <= 0).double()
        expected = bce_by_hand(logits, iou) * weight
        ours = ConfidenceLoss(quality_loss="vfl", vfl_alpha=alpha, vfl_gamma=gamma).elementwise(logits, is_obj, iou)
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_iou_target_is_yolov5s():
    logits, is_obj, iou = random_cells(2)
    for gr in (1.0, 0.5, 0.0):
        target = torch.where(is_obj, (1.0 - gr) + gr * iou.clamp(min=0), torch.zeros_like(iou))  # YOLOv5 tobj
        expected = bce_by_hand(logits, target)
        ours = ConfidenceLoss(conf_target="iou", iou_target_ratio=gr).elementwise(logits, is_obj, iou)
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    plain = ConfidenceLoss().elementwise(logits, is_obj, None)
    torch.testing.assert_close(ConfidenceLoss(conf_target="iou", iou_target_ratio=0.0).elementwise(logits, is_obj, iou),
                               plain, rtol=0, atol=0)


def test_focal_class_term_is_torchvisions_focal_loss_mean():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 4, generator=gen, dtype=torch.float64) * 3
    labels = torch.tensor([0, 3, 1, 1, 2, 0, 3])
    one_hot = torch.nn.functional.one_hot(labels, 4).double()
    expected = sigmoid_focal_loss(logits, one_hot, alpha=0.25, gamma=2.0, reduction="mean")
    ours = class_term(logits, labels, num_classes=4, label_smoothing=0.0, focal_cls=True)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=0)
    # label smoothing moves the BCE targets, while alpha_t and p_t stay those of the one-hot label
    eps = 0.1
    smoothed = one_hot * (1 - eps) + eps / 2
    p = torch.sigmoid(logits)
    p_t = torch.where(one_hot.bool(), p, 1 - p)
    by_hand = bce_by_hand(logits, smoothed) * torch.where(one_hot.bool(), 0.4, 0.6) * (1 - p_t) ** 1.5
    ours = class_term(logits, labels, num_classes=4, label_smoothing=eps, focal_cls=True, focal_alpha=0.4,
                      focal_gamma=1.5)
    torch.testing.assert_close(ours, by_hand.mean(), rtol=1e-10, atol=0)
    assert torch.equal(class_term(logits, labels, num_classes=4, label_smoothing=eps),
                       torch.nn.functional.binary_cross_entropy_with_logits(logits, smoothed))


def test_modulating_factors_finite_at_extreme_logits():
    logits = torch.tensor([-80.0, -30.0, 0.0, 30.0, 80.0]).repeat(2).requires_grad_(True)
    quality = torch.tensor([0.0] * 5 + [0.7] * 5)
    total = (qfl_ratio(logits, quality, beta=2.0) + vfl_ratio(logits, quality, alpha=0.75, gamma=0.5)).sum()
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(logits.grad).all()


def test_paired_box_iou_is_box_ious_diagonal():
    gen = torch.Generator().manual_seed(4)
    xy = torch.rand(50, 2, 2, generator=gen) * 100
    boxes1 = torch.cat([xy[:, 0], xy[:, 0] + torch.rand(50, 2, generator=gen) * 60], dim=1)
    boxes2 = torch.cat([xy[:, 1], xy[:, 1] + torch.rand(50, 2, generator=gen) * 60], dim=1)
    boxes2[:5] = boxes1[:5]  # identical pairs: IoU 1
    boxes2[5] = torch.tensor([200.0, 200, 210, 210])  # disjoint: 0
    ours = paired_box_iou(boxes1, boxes2)
    torch.testing.assert_close(ours, box_iou(boxes1, boxes2).diagonal(), rtol=1e-6, atol=1e-7)
    assert torch.all(ours[:5] == 1.0) and ours[5] == 0.0 and (ours[6:] > 0).any()
    assert paired_box_iou(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0  # two empty boxes: 0, not NaN


def test_cell_iou_takes_the_larger_iou_of_a_crowded_cell():
    shape = torch.Size((2, 3, 4, 5))
    cells = tuple(torch.tensor(v) for v in ([1, 0, 1, 1], [2, 0, 2, 0], [3, 1, 3, 0], [4, 2, 4, 0]))
    iou = torch.tensor([0.3, 0.6, 0.8, 0.1])  # pairs 0 and 2 share image 1, anchor 2, cell (y 3, x 4)
    expected = torch.zeros(shape)
    for b, a, y, x, value in zip(*cells, iou):
        expected[b, a, y, x] = max(float(expected[b, a, y, x]), float(value))
    assert torch.equal(cell_iou(iou, cells=cells, shape=shape), expected)
    assert expected[1, 2, 3, 4] == pytest.approx(0.8)


# One level of stride 32 at 128 x 128; anchor 0 (32 x 32) suits both ground truths below.
ONE_LEVEL = {"anchors_px": torch.tensor([[32.0, 32.0], [200.0, 10.0], [10.0, 200.0]]), "anchors_mask": [[0, 1, 2]],
             "num_classes": 1, "input_shape": (128, 128)}


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
@pytest.mark.parametrize("arm", ["qfl", "vfl", "iou_obj"])
def test_crowded_cell_target_is_the_larger_iou(arm, order):
    """Zero logits decode, at cell (1, 1), to the box (32, 32, 64, 64): IoU 1 with the first ground truth and
    24^2 / 32^2 = 0.5625 with the second, both centred in that cell; the cell's target is 1 in either order."""
    gts = torch.tensor([[0.0, 0.0, 32, 32, 64, 64], [0.0, 0.0, 36, 36, 60, 60]])[list(order)]
    out = torch.zeros(1, 3 * 6, 4, 4)
    out[0, 4, 1, 1] = z = 0.8  # the positive's objectness logit
    options = {"qfl": {"quality_loss": "qfl"}, "vfl": {"quality_loss": "vfl"}, "iou_obj": {"conf_target": "iou"}}[arm]
    terms = YOLOLoss(**ONE_LEVEL, ignore_threshold=1.01, conf_normalization="num_pos", **options)([out], gts)
    assert int(terms["num_pos"]) == 1
    p = 1 / (1 + math.exp(-z))
    positive = -math.log(p) * {"qfl": (1 - p) ** 2, "vfl": 1.0, "iou_obj": 1.0}[arm]  # y = q = target = 1
    negative = -math.log(0.5) * {"qfl": 0.5**2, "vfl": 0.75 * 0.5**2, "iou_obj": 1.0}[arm]  # 47 cells at z = 0
    assert float(terms["loss_conf_s32"]) == pytest.approx(positive + 47 * negative, rel=1e-6)


FAMILY_CASES = {
    "v4-qfl-mean": {"model": "yolov4", "seed": 21, "quality_loss": "qfl"},
    "v4-qfl-numpos-multi-beta1": {"model": "yolov4", "seed": 22, "quality_loss": "qfl", "qfl_beta": 1.0,
                                  "conf_normalization": "num_pos", "multi_anchor_threshold": 0.25},
    "v4-vfl-mean-smooth": {"model": "yolov4", "seed": 23, "quality_loss": "vfl", "label_smoothing": 0.1},
    "tiny-vfl-numpos-scalexy": {"model": "yolov4-tiny", "seed": 24, "quality_loss": "vfl", "vfl_alpha": 0.5,
                                "vfl_gamma": 1.5, "conf_normalization": "num_pos", "scale_x_y": [1.05, 1.05],
                                "boxes_per_image": (10, 0, 7)},
    "v4-iou-obj": {"model": "yolov4", "seed": 25, "conf_target": "iou"},
    "v4-iou-obj-half-giou": {"model": "yolov4", "seed": 26, "conf_target": "iou", "iou_target_ratio": 0.5,
                             "iou_type": "giou", "ignore_threshold": 0.3},
    "v4-focal-cls": {"model": "yolov4", "seed": 27, "focal_loss": True, "focal_cls": True, "label_smoothing": 0.1},
    "tiny-focal-cls-only": {"model": "yolov4-tiny", "seed": 28, "focal_cls": True, "focal_alpha": 0.4,
                            "focal_gamma": 1.5, "boxes_per_image": (0, 12, 5)},
}
CASE_KEYS = {"model", "seed", "input_shape", "boxes_per_image"}


@pytest.mark.parametrize("name", sorted(FAMILY_CASES))
def test_family_matches_loop_reference(name):
    case = FAMILY_CASES[name]
    outputs, targets, geometry = make_case(**{k: v for k, v in case.items() if k in CASE_KEYS})
    options = {k: v for k, v in case.items() if k not in CASE_KEYS}
    outputs = [out.requires_grad_(True) for out in outputs]
    ours = YOLOLoss(**geometry, **options)(outputs, targets)
    ref = reference_loss(outputs, targets, **geometry, **options)
    assert ref["num_crowded"] > 0 and ref["num_ignored"] > 0  # crowded cells and ignored cells both occur
    assert_matches_reference(ours=ours, ref=ref, outputs=outputs, strides=GEOMETRY[case["model"]][2])


@pytest.mark.parametrize("options", [{"quality_loss": "qfl"}, {"quality_loss": "vfl"}, {"conf_target": "iou"}])
def test_iou_target_sends_no_gradient_to_the_box(options):
    outputs, targets, geometry = make_case(seed=30, model="yolov4-tiny")
    outputs = [out.requires_grad_(True) for out in outputs]
    terms = YOLOLoss(**geometry, **options)(outputs, targets)
    for raw, grad in zip(outputs, torch.autograd.grad(terms["loss_conf"], outputs)):
        per_channel = grad.view(raw.shape[0], 3, 8, *raw.shape[2:]).abs().sum(dim=(0, 1, 3, 4))  # (5 + C,)
        assert per_channel[4] > 0 and float(per_channel.sum() - per_channel[4]) == 0.0


@pytest.mark.parametrize("options", [{"quality_loss": "qfl"}, {"quality_loss": "vfl"}, {"conf_target": "iou"},
                                     {"focal_cls": True, "focal_loss": True}])
def test_empty_targets_and_extreme_logits_stay_finite(options):
    outputs, targets, geometry = make_case(seed=31, model="yolov4")
    extreme = []
    for raw in outputs:
        level = raw.detach().clone().view(raw.shape[0], 3, 8, *raw.shape[2:])
        level[:, :, 2:4] = 100.0
        level[:, :, 4:] = torch.where(level[:, :, 4:] > 0, 50.0, -50.0)
        extreme.append(level.view(raw.shape).requires_grad_(True))
    for case_targets in (targets, torch.zeros(0, 6)):
        terms = YOLOLoss(**geometry, **options)(extreme, case_targets)
        assert all(torch.isfinite(v).all() for v in terms.values())
        assert all(torch.isfinite(g).all() for g in torch.autograd.grad(terms["loss"], extreme))


def loss_settings(**overrides):
    config = train.TrainConfig(**overrides)
    return config, ModelSpec(class_names=["a", "b", "c"], anchors=GEOMETRY["yolov4"][0],
                             anchors_mask=DEFAULT_ANCHORS_MASK[config.model], anchors_path="")


@pytest.mark.parametrize("settings, named", [
    ({"focal_loss": True, "quality_loss": "qfl"}, ("focal_loss", "quality_loss")),
    ({"focal_loss": True, "quality_loss": "vfl"}, ("focal_loss", "quality_loss")),
    ({"quality_loss": "vfl", "conf_target": "iou"}, ("quality_loss", "conf_target")),
    ({"focal_loss": True, "conf_target": "iou"}, ("focal_loss", "conf_target")),
    ({"conf_target": "iou", "iou_target_ratio": 1.5}, ("iou_target_ratio",)),
])
def test_contradictory_settings_are_refused_naming_them(settings, named):
    config, spec = loss_settings(**settings)
    for refuse in (lambda: check_loss_settings(config), lambda: build_loss(config=config, spec=spec)):
        with pytest.raises(ConfigError) as err:
            refuse()
        assert all(f"{name}=" in str(err.value) for name in named), str(err.value)
    with pytest.raises(ConfigError):
        YOLOLoss(anchors_px=torch.tensor(GEOMETRY["yolov4"][0], dtype=torch.float32), anchors_mask=spec.anchors_mask,
                 num_classes=3, input_shape=(416, 416), **settings)
    with pytest.raises(ConfigError, match="quality_loss"):
        ConfidenceLoss(quality_loss="gfl")
