"""YOLOv4 / YOLOv4-tiny networks: parameter counts, output shapes and head layout, initialisation."""
import math
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES
from torch import nn

from nets.yolo import build_model, init_weights

COMPAT = FIXTURES / "compat"
LISTS = {"yolov4": COMPAT / "yolov4_voc20_state_dict.txt", "yolov4-tiny": COMPAT / "yolov4_tiny_voc20_state_dict.txt"}
# The published parameter counts of the two models with 20 classes.
PUBLISHED_PARAMS = {"yolov4": 64_040_001, "yolov4-tiny": 5_918_006}


def parameter_count_from_list(path: Path) -> int:
    """Sum of the sizes of the learnable tensors in a published state_dict listing (BN running stats excluded)."""
    total = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        key, shape = line.split("\t")
        if key.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked"):
            continue
        total += math.prod(int(n) for n in shape.split(","))
    return total


@pytest.mark.parametrize("model", ["yolov4", "yolov4-tiny"])
def test_parameter_count(model):
    assert parameter_count_from_list(LISTS[model]) == PUBLISHED_PARAMS[model]
    net = build_model(model=model, num_classes=20)
    assert sum(p.numel() for p in net.parameters()) == PUBLISHED_PARAMS[model]


def seeded_net(model: str):
    torch.manual_seed(0)
    net = build_model(model=model, num_classes=20)
    init_weights(net, obj_prior=0.01)
    return net.eval()


@pytest.fixture(scope="module")
def yolov4():
    return seeded_net("yolov4")


@pytest.fixture(scope="module")
def yolov4_tiny():
    return seeded_net("yolov4-tiny")


@pytest.mark.parametrize("hw", [(416, 416), (320, 416)])
def test_output_shapes_yolov4(yolov4, hw):
    with torch.inference_mode():
        outputs = yolov4(torch.randn(1, 3, *hw))
    h, w = hw
    assert [tuple(o.shape) for o in outputs] == [(1, 75, h // s, w // s) for s in (32, 16, 8)]


@pytest.mark.parametrize("hw", [(416, 416), (320, 416)])
def test_output_shapes_tiny(yolov4_tiny, hw):
    with torch.inference_mode():
        outputs = yolov4_tiny(torch.randn(2, 3, *hw))
    h, w = hw
    assert [tuple(o.shape) for o in outputs] == [(2, 75, h // s, w // s) for s in (32, 16)]


@pytest.mark.parametrize("model", ["yolov4", "yolov4-tiny"])
def test_obj_prior_channel_layout(model, request):
    """With the head's 1x1 weights zeroed, each output channel is its bias. Per anchor the channels are
    x, y, w, h, obj, 20 classes, so exactly channels a * 25 + 4 carry the prior -log(99) and the rest are 0."""
    net = request.getfixturevalue("yolov4" if model == "yolov4" else "yolov4_tiny")
    saved = [head.pred.weight.detach().clone() for head in net.heads]
    try:
        with torch.no_grad():
            for head in net.heads:
                head.pred.weight.zero_()
        with torch.inference_mode():
            outputs = net(torch.randn(1, 3, 64, 64))
    finally:
        with torch.no_grad():
            for head, weight in zip(net.heads, saved):
                head.pred.weight.copy_(weight)
    prior = -math.log(99.0)
    for out in outputs:
        assert out.shape[1] == 3 * 25
        for channel in range(75):
            expected = prior if channel % 25 == 4 else 0.0
            assert torch.allclose(out[0, channel], torch.full_like(out[0, channel], expected), atol=1e-6), channel


def test_init_without_prior_zero_bias():
    net = build_model(model="yolov4-tiny", num_classes=20)
    init_weights(net)
    for head in net.heads:
        assert torch.equal(head.pred.bias, torch.zeros_like(head.pred.bias))


@torch.no_grad()
def test_init_weights_statistics():
    torch.manual_seed(0)
    net = build_model(model="yolov4-tiny", num_classes=20)
    init_weights(net, conv_std=0.02)
    conv = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, nn.Conv2d)])
    assert abs(float(conv.mean())) < 1e-3
    assert float(conv.std()) == pytest.approx(0.02, rel=0.01)
    bn_weight = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, nn.BatchNorm2d)])
    bn_bias = torch.cat([m.bias.flatten() for m in net.modules() if isinstance(m, nn.BatchNorm2d)])
    assert float(bn_weight.mean()) == pytest.approx(1.0, abs=2e-3)
    assert float(bn_weight.std()) == pytest.approx(0.02, rel=0.1)
    assert torch.equal(bn_bias, torch.zeros_like(bn_bias))
    # every conv individually, so a missed layer would show
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d) and module.weight.numel() >= 10_000:
            assert float(module.weight.std()) == pytest.approx(0.02, rel=0.05), name


def test_build_model_rejects_unknown():
    with pytest.raises(ValueError, match="unknown model"):
        build_model(model="yolov5", num_classes=20)
