"""The fast inference path: folded BatchNorm + channels_last equals the plain net, bf16 agrees with fp32, batched
detection equals per-image detection, the copy follows weight updates, ONNX checks use relative tolerances."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import REPO, trained_like_net
from PIL import Image
from torch import nn
from torchvision.ops import box_iou

import utils.infer.onnx_detector as onnx_detector_module
from nets.yolo import build_model
from utils.core.device import resolve_precision
from utils.infer.folding import fold_batchnorm, inference_copy, weights_fingerprint
from yolo import YOLO, PostprocessSettings, onnx_mismatch

BCCD_IMAGES = sorted((REPO / "VOCdevkit" / "VOC2007" / "JPEGImages").glob("BloodImage_0000*.jpg"))[:3]
CLASSES = ["RBC", "WBC", "Platelets"]
CONFIGS = {
    "yolov4-tiny": {"anchors": [[10, 14], [23, 27], [37, 58], [81, 82], [135, 169], [344, 319]],
                    "anchors_mask": [[3, 4, 5], [1, 2, 3]]},
    "yolov4": {"anchors": [[12, 16], [19, 36], [40, 28], [36, 75], [76, 55], [72, 146], [142, 110], [192, 243],
                           [459, 401]], "anchors_mask": [[6, 7, 8], [3, 4, 5], [0, 1, 2]]},
}


def detector_for(net: nn.Module, model: str, *, size: int = 160, **kwargs) -> YOLO:
    config = {"model": model, "class_names": CLASSES, "input_shape": [size, size], **CONFIGS[model]}
    settings = PostprocessSettings(confidence=kwargs.pop("confidence", 0.05), nms_iou=0.5)
    return YOLO.from_model(net, config=config, postprocess_settings=settings, device="cpu", **kwargs)


def load_images() -> list[Image.Image]:
    images = []
    for path in BCCD_IMAGES:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


@pytest.mark.parametrize("model", ["yolov4-tiny", "yolov4"])
def test_folded_channels_last_net_equals_plain_net(model):
    net = trained_like_net(model)
    images = torch.rand(2, 3, 128, 160, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = net(images)  # the oracle: the unfused eval-mode module
        folded = inference_copy(net, dtype=torch.float32, channels_last=True)
        got = folded(images.contiguous(memory_format=torch.channels_last))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # training weights untouched
    for raw_expected, raw_got in zip(expected, got):
        scale = raw_expected.abs().max().item()
        assert (raw_got - raw_expected).abs().max().item() <= 1e-4 * scale


def test_fold_batchnorm_requires_nothing_of_non_convbn_modules():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert isinstance(fold_batchnorm(plain)[0], nn.Conv2d)


def test_detector_paths_agree_in_fp32():
    net = trained_like_net("yolov4-tiny")
    plain = detector_for(net, "yolov4-tiny", precision="fp32", optimize=False)
    fast = detector_for(net, "yolov4-tiny", precision="fp32", optimize=True)
    batch = np.random.default_rng(0).random((2, 3, 160, 160), dtype=np.float32)
    decoded_plain, decoded_fast = plain._decoded(batch), fast._decoded(batch)
    assert onnx_mismatch(got=decoded_fast.numpy(), expected=decoded_plain.numpy())["worst"] <= 1.0


def matched_fraction(reference, other, *, iou: float) -> float:
    """Share of the reference detections that a detection of the same class in ``other`` overlaps above ``iou``."""
    if len(reference) == 0:
        return 1.0
    if len(other) == 0:
        return 0.0
    overlaps = box_iou(torch.from_numpy(reference.boxes_xyxy), torch.from_numpy(other.boxes_xyxy))  # (R, O)
    same_class = torch.from_numpy(reference.class_ids[:, None] == other.class_ids[None, :])
    return float(((overlaps > iou) & same_class).any(dim=1).float().mean())


def test_bf16_detections_agree_with_fp32_on_bccd_images():
    net = trained_like_net("yolov4-tiny")
    fp32 = detector_for(net, "yolov4-tiny", precision="fp32", confidence=0.1)
    bf16 = detector_for(net, "yolov4-tiny", precision="bf16", confidence=0.1)
    for image in load_images():
        reference, reduced = fp32.detect(image), bf16.detect(image)
        assert len(reference) > 50
        # bf16 keeps 8 bits of mantissa: boxes near the threshold may flip, but almost all must stay put.
        assert matched_fraction(reference, reduced, iou=0.9) >= 0.9
        assert abs(len(reduced) - len(reference)) <= 0.05 * len(reference)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batched_detection_equals_per_image(precision):
    net = trained_like_net("yolov4-tiny")
    detector = detector_for(net, "yolov4-tiny", precision=precision)
    images = load_images()
    images[1] = images[1].resize((200, 300))  # different sizes: each keeps its own letterbox
    batched = detector.detect_batch(images)
    for image, together in zip(images, batched):
        alone = detector.detect(image)
        assert len(alone) == len(together) > 0
        # Equal scores (frequent in bf16) may come out in either order, so compare in one canonical order.
        order_alone, order_together = canonical_order(alone), canonical_order(together)
        np.testing.assert_array_equal(alone.class_ids[order_alone], together.class_ids[order_together])
        np.testing.assert_allclose(together.boxes_xyxy[order_together], alone.boxes_xyxy[order_alone],
                                   rtol=1e-4, atol=1e-2)
        np.testing.assert_allclose(together.scores[order_together], alone.scores[order_alone], rtol=1e-4, atol=1e-5)


def canonical_order(detections) -> np.ndarray:
    """Indices sorting detections by score (best first), then class, then box corners."""
    keys = [*detections.boxes_xyxy.T[::-1].round(2), detections.class_ids, -detections.scores]
    return np.lexsort(keys)


def test_inference_copy_follows_weight_updates():
    net = trained_like_net("yolov4-tiny")
    detector = detector_for(net, "yolov4-tiny", precision="fp32")
    batch = np.random.default_rng(0).random((1, 3, 160, 160), dtype=np.float32)
    before = detector.raw_outputs(batch)[0]
    assert torch.equal(detector.raw_outputs(batch)[0], before)  # cached copy reused
    with torch.no_grad():
        net.heads[0].pred.bias.add_(1.0)  # what an optimizer step does: an in-place update
    after = detector.raw_outputs(batch)[0]
    assert torch.allclose(after - before, torch.ones_like(before), atol=1e-4)


def test_weights_fingerprint_changes_with_every_kind_of_weight_update():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.Conv2d(4, 2, 1)))
    seen = [weights_fingerprint(net)]
    net.eval()(torch.rand(1, 3, 8, 8))
    assert weights_fingerprint(net) == seen[0]  # an eval forward changes nothing
    updates = [
        lambda: net.train()(torch.rand(2, 3, 8, 8)),  # BatchNorm's running statistics
        lambda: net[2][0].weight.mul_(2),  # an optimizer step, nested module
        lambda: setattr(net[2][0], "bias", nn.Parameter(torch.zeros(2))),  # a replaced parameter
        lambda: net.load_state_dict({k: v + 1 for k, v in net.state_dict().items()}),
    ]
    for update in updates:
        with torch.no_grad():
            update()
        assert weights_fingerprint(net) not in seen
        seen.append(weights_fingerprint(net))


@pytest.mark.parametrize("native_bf16", [True, False])
def test_resolve_precision(native_bf16, monkeypatch):
    import utils.core.device

    monkeypatch.setattr(utils.core.device, "cpu_has_native_bf16", lambda: native_bf16)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cuda) == "fp32" and resolve_precision("fp16", cuda) == "fp16"
    # bf16 by default only where the CPU computes it in hardware (emulated bf16 is slower than fp32)
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16 else "fp32")
    assert resolve_precision("bf16", cpu) == "bf16" and resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("int8", cpu)


def test_onnx_mismatch_is_relative_on_boxes_and_absolute_on_probabilities():
    expected = np.zeros((1, 2, 8), dtype=np.float32)
    expected[0, 0, :4] = [1764.0, 900.0, 1700.0, 1200.0]  # large boxes, input pixels
    expected[0, :, 4:] = 0.5
    noisy = expected.copy()
    noisy[0, 0, :4] += 0.006  # 3.4e-6 relative: float noise
    assert onnx_mismatch(got=noisy, expected=expected)["worst"] <= 1.0
    shifted = expected.copy()
    shifted[0, 0, 0] += 1.0  # a pixel off
    assert onnx_mismatch(got=shifted, expected=expected)["worst"] > 1.0
    wrong_prob = expected.copy()
    wrong_prob[0, 1, 5] += 1e-3
    assert onnx_mismatch(got=wrong_prob, expected=expected)["worst"] > 1.0
    not_finite = expected.copy()
    not_finite[0, 1, 6] = np.nan
    assert onnx_mismatch(got=not_finite, expected=expected)["worst"] > 1.0


def test_failed_onnx_export_writes_nothing(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    detector = detector_for(trained_like_net("yolov4-tiny"), "yolov4-tiny", size=64)
    monkeypatch.setattr(onnx_detector_module, "onnx_mismatch", lambda *, got, expected: {  # a check that fails
        "box_abs": 1.0, "box_rel": 1.0, "prob_abs": 1.0, "worst": 2.0})
    target = tmp_path / "model.onnx"
    with pytest.raises(ValueError, match="nothing was written"):
        detector.export_onnx(target)
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_name_is_a_user_error(tmp_path):
    from utils.core.config import UserError

    path = tmp_path / "tiny.pth"
    torch.save(build_model(model="yolov4-tiny", num_classes=20, anchors_per_level=3).state_dict(), path)
    with pytest.raises(UserError, match=r"model 'yolov5': choose one of yolov4, yolov4-tiny"):
        YOLO(model_path=str(path), model="yolov5")
