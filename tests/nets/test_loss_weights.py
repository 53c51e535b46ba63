"""The loss weights: build_loss's weights dict against values worked out by hand, one level per network head,
and the total as that dict applied to the level terms."""
import pytest
import torch

import train
from nets.yolo_training import YOLOLoss, build_loss
from utils.core.model_files import DEFAULT_ANCHORS_MASK, ModelSpec

ANCHORS = [[12, 16], [19, 36], [40, 28], [36, 75], [76, 55], [72, 146], [142, 110], [192, 243], [459, 401]]


def loss_settings(**overrides):
    """build_loss's inputs: train.py's settings with ``overrides``, three classes on the model's default geometry."""
    config = train.TrainConfig(**overrides)
    return config, ModelSpec(class_names=["a", "b", "c"], anchors=ANCHORS,
                             anchors_mask=DEFAULT_ANCHORS_MASK[config.model], anchors_path="")


def level_weights(loc: float, cls: float, conf_by_stride: dict[int, float]) -> dict[str, float]:
    weights = {}
    for stride, conf in conf_by_stride.items():
        weights.update({f"loss_loc_s{stride}": loc, f"loss_cls_s{stride}": cls, f"loss_conf_s{stride}": conf})
    return weights


# YOLOv4 at 416 x 416 with 3 classes: box 0.05, class 3 / 80 = 0.0375, objectness 5 * 416^2 / 416^2 = 5 times the
# level balance 0.4 / 1 / 4, i.e. 2 / 5 / 20, times the focal factor written beside each case.
WEIGHT_CASES = {
    "bce": ({}, 1.0),
    "bce ignores the focal settings": ({"focal_conf_scale": 2.0, "focal_loss_ratio": 3.0}, 1.0),
    "focal mean: ratio 10": ({"focal_loss": True}, 10.0),
    "focal mean: ratio 10 x scale 2": ({"focal_loss": True, "focal_conf_scale": 2.0}, 20.0),
    "focal mean: ratio 3 x scale 2": ({"focal_loss": True, "focal_conf_scale": 2.0, "focal_loss_ratio": 3.0}, 6.0),
    "focal num_pos: scale 2, no ratio": ({"focal_loss": True, "focal_conf_scale": 2.0,
                                         "conf_normalization": "num_pos"}, 2.0),
    "focal to be matched, not yet: scale 1": ({"focal_loss": True, "focal_conf_scale": "match_bce_at_init"}, 10.0),
    # QFL and VFL share focal's rule; the IoU-aware target and focal on the class term alone leave the factor at 1
    "qfl mean: ratio 10": ({"quality_loss": "qfl"}, 10.0),
    "vfl mean: ratio 10 x scale 2": ({"quality_loss": "vfl", "focal_conf_scale": 2.0}, 20.0),
    "qfl num_pos: scale 2, no ratio": ({"quality_loss": "qfl", "focal_conf_scale": 2.0,
                                       "conf_normalization": "num_pos"}, 2.0),
    "vfl to be matched, not yet: scale 1": ({"quality_loss": "vfl", "focal_conf_scale": "match_bce_at_init"}, 10.0),
    "iou target ignores the focal settings": ({"conf_target": "iou", "focal_conf_scale": 2.0}, 1.0),
    "focal on the class term only": ({"focal_cls": True}, 1.0),
    "focal on both terms: ratio 10, class weight unchanged": ({"focal_loss": True, "focal_cls": True}, 10.0),
}


@pytest.mark.parametrize("name", sorted(WEIGHT_CASES))
def test_build_loss_weights_by_hand(name):
    settings, factor = WEIGHT_CASES[name]
    config, spec = loss_settings(model="yolov4", input_shape=[416, 416], **settings)
    expected = level_weights(0.05, 0.0375, {32: 2.0 * factor, 16: 5.0 * factor, 8: 20.0 * factor})
    weights = build_loss(config=config, spec=spec).weights
    assert list(weights) == list(expected)  # level by level, coarsest first
    assert weights == pytest.approx(expected, rel=1e-12)


def test_build_loss_weights_with_a_resolved_scale_and_set_ratios():
    # a scale resolved at init (0.5) replaces the config's "match_bce_at_init": factor 0.5 * 10 = 5
    config, spec = loss_settings(model="yolov4", input_shape=[416, 416], focal_loss=True,
                                 focal_conf_scale="match_bce_at_init")
    assert build_loss(config=config, spec=spec, focal_conf_scale=0.5).weights == pytest.approx(
        level_weights(0.05, 0.0375, {32: 10.0, 16: 25.0, 8: 100.0}), rel=1e-12)
    # tiny (levels 32 and 16) at 208 x 416: objectness 5 * 208 * 416 / 416^2 = 2.5, so 1 and 2.5 after balance
    config, spec = loss_settings(model="yolov4-tiny", input_shape=[208, 416])
    assert build_loss(config=config, spec=spec).weights == pytest.approx(
        level_weights(0.05, 0.0375, {32: 1.0, 16: 2.5}), rel=1e-12)
    # set ratios: objectness 2 x balance x focal 0.5 * 10 = 5: 4 and 10
    config, spec = loss_settings(model="yolov4-tiny", input_shape=[208, 416], box_ratio=0.1, cls_ratio=0.5,
                                 obj_ratio=2.0, focal_loss=True, focal_conf_scale=0.5)
    assert build_loss(config=config, spec=spec).weights == pytest.approx(
        level_weights(0.1, 0.5, {32: 4.0, 16: 10.0}), rel=1e-12)


def test_weight_levels_are_the_networks_heads():
    from nets.yolo import MODELS

    for model, network in MODELS.items():
        config, spec = loss_settings(model=model)
        strides = [int(name.removeprefix("loss_conf_s")) for name in build_loss(config=config, spec=spec).weights
                   if name.startswith("loss_conf_")]
        assert tuple(strides) == network.strides, model


def test_total_applies_the_weights_dict():
    """Any weights dict, here a different weight per term, is what the total applies to the level terms."""
    gen = torch.Generator().manual_seed(7)
    outputs = [torch.randn(2, 3 * 8, 128 // stride, 128 // stride, generator=gen) for stride in (32, 16, 8)]
    targets = torch.tensor([[0, 1, 10.0, 12.0, 60.0, 50.0], [1, 0, 30.0, 20.0, 36.0, 31.0],  # boxes for every level
                            [1, 2, 0.0, 8.0, 120.0, 128.0], [0, 0, 70.0, 70.0, 94.0, 88.0]])  # [img, cls, x1y1x2y2]
    geometry = dict(anchors_px=torch.tensor(ANCHORS, dtype=torch.float32) * 128 / 416,
                    anchors_mask=DEFAULT_ANCHORS_MASK["yolov4"], num_classes=3, input_shape=(128, 128))
    names = [f"{term}_s{stride}" for stride in (32, 16, 8) for term in ("loss_loc", "loss_cls", "loss_conf")]
    weights = {name: 0.1 * (index + 1) for index, name in enumerate(names)}
    terms = YOLOLoss(**geometry, weights=weights)(outputs, targets)
    assert all(float(terms[name]) > 0 for name in names)  # every term counts
    by_hand = 0.0
    for index, name in enumerate(names):
        by_hand += 0.1 * (index + 1) * float(terms[name])
    assert float(terms["loss"]) == pytest.approx(by_hand, rel=1e-6)
