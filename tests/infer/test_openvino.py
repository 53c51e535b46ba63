"""The OpenVINO backend: its raw outputs and detections equal PyTorch fp32's, it compiles once per input shape and
follows weight updates, get_map.py scores a trained run as PyTorch does, and backend=auto falls back to PyTorch
without the openvino package.

Tolerances: raw head outputs within 1e-4 of each level's largest magnitude (the folded PyTorch copy's bound in
test_inference.py; measured 3e-6 for yolov4-tiny, 7e-6 for YOLOv4); detections: the same number and classes, every
box within 0.5 px of one of the same class (measured within 1e-3 px)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES, REPO, VOC, detector_config, ids, small_run, trained_like_net
from PIL import Image

import get_map
import predict
import train
from utils.core.config import UserError, resolve_config, settings_of
from utils.core.device import cpu_has_native_bf16
from utils.infer import backends, openvino_detector
from utils.infer.openvino_detector import OpenVinoYOLO, output_convolutions
from utils.infer.preprocess import preprocess_image
from yolo import YOLO, PostprocessSettings

needs_openvino = pytest.mark.skipif(not backends.openvino_installed(), reason="the openvino package is not installed")
BCCD_IMAGE = REPO / "VOCdevkit" / "VOC2007" / "JPEGImages" / "BloodImage_00000.jpg"


def torch_detector(net, model: str, *, input_shape: list[int], **kwargs) -> YOLO:
    return YOLO.from_model(net, config=detector_config(model, input_shape=input_shape), device="cpu",
                           postprocess_settings=PostprocessSettings(confidence=0.05, nms_iou=0.5), **kwargs)


def assert_raw_outputs_close(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(got) == len(expected)
    for raw_got, raw_expected in zip(got, expected):
        assert raw_got.shape == raw_expected.shape and raw_got.dtype == torch.float32
        scale = raw_expected.abs().max().item()
        assert (raw_got - raw_expected).abs().max().item() <= 1e-4 * scale


def assert_same_detections(got_xyxy: np.ndarray, got_classes: np.ndarray, expected_xyxy: np.ndarray,
                           expected_classes: np.ndarray) -> None:
    """The same number of boxes, and each box (pixels, x1 y1 x2 y2) within 0.5 px of a box of its class in the
    other list, both ways."""
    assert len(got_xyxy) == len(expected_xyxy) > 0
    distance = np.abs(got_xyxy[:, None, :] - expected_xyxy[None, :, :]).max(axis=2)  # (G, E) worst coordinate
    distance[got_classes[:, None] != expected_classes[None, :]] = np.inf
    assert distance.min(axis=1).max() <= 0.5 and distance.min(axis=0).max() <= 0.5
    assert sorted(got_classes.tolist()) == sorted(expected_classes.tolist())


@needs_openvino
@pytest.mark.parametrize("model", ["yolov4-tiny", "yolov4"])
def test_raw_outputs_equal_torch_fp32_on_random_weights(model):
    net = trained_like_net(model)
    images = np.random.default_rng(1).random((2, 3, 64, 96), dtype=np.float32)
    with torch.inference_mode():
        expected = net(torch.from_numpy(images))  # the oracle: the eval-mode module, BatchNorm unfolded
    detector = torch_detector(net, model, input_shape=[64, 96]).openvino_detector(precision="fp32")
    assert detector.precision == "fp32" and detector.engine == "OpenVINO"
    assert_raw_outputs_close(detector.raw_outputs(images), expected)


@needs_openvino
@pytest.mark.parametrize("model, levels", [("yolov4-tiny", 2), ("yolov4", 3)])
def test_the_output_convolutions_are_the_heads_prediction_convolutions(model, levels):
    detector = torch_detector(trained_like_net(model), model, input_shape=[64, 96]).openvino_detector(precision="fp32")
    names = output_convolutions(detector._network())
    # ONNX names nodes after the module path: nets/yolo.py's heads[i].pred, the 1x1 convolution of each level
    assert sorted(names) == [f"/heads.{i}/pred/Conv/WithoutBiases" for i in range(levels)]


@needs_openvino
@pytest.mark.skipif(not cpu_has_native_bf16(), reason="OpenVINO runs bf16 only where the CPU computes it natively")
def test_bf16_runs_every_convolution_in_bf16_but_the_prediction_convolutions():
    net = trained_like_net("yolov4-tiny")
    images = np.random.default_rng(1).random((1, 3, 64, 96), dtype=np.float32)
    detector = torch_detector(net, "yolov4-tiny", input_shape=[64, 96]).openvino_detector(precision="bf16")
    detector.raw_outputs(images)
    compiled, _ = detector._compiled[(1, 3, 64, 96)]
    ran_in = {op.get_friendly_name(): op.get_rt_info()["runtimePrecision"].astype(str)  # OpenVINO's own record
              for op in compiled.get_runtime_model().get_ordered_ops()
              if op.get_rt_info()["layerType"].astype(str) == "Convolution"}
    assert len(ran_in) == 21  # yolov4-tiny's 21 convolutions, BatchNorm and activations fused into them
    assert {name for name, precision in ran_in.items() if precision == "f32"} == {
        "/heads.0/pred/Conv/WithoutBiases", "/heads.1/pred/Conv/WithoutBiases"}
    assert {precision for precision in ran_in.values()} == {"f32", "bf16"}


@needs_openvino
@pytest.mark.skipif(not cpu_has_native_bf16(), reason="OpenVINO runs bf16 only where the CPU computes it natively")
def test_a_prediction_convolution_left_in_bf16_is_said(monkeypatch, capsys):
    images = np.random.default_rng(1).random((1, 3, 64, 96), dtype=np.float32)
    net = trained_like_net("yolov4-tiny")
    torch_detector(net, "yolov4-tiny", input_shape=[64, 96]).openvino_detector(precision="bf16").raw_outputs(images)
    assert "note:" not in capsys.readouterr().out  # the attribute taken: nothing to say
    ignored = {**openvino_detector.KEEP_PRECISION, "value": "dynamic:bf16"}  # an entry the CPU plugin does not act on
    monkeypatch.setattr(openvino_detector, "KEEP_PRECISION", ignored)
    detector = torch_detector(net, "yolov4-tiny", input_shape=[64, 96]).openvino_detector(precision="bf16")
    detector.raw_outputs(images)
    detector.raw_outputs(np.concatenate([images, images]))  # a second compilation: said once
    printed = capsys.readouterr().out
    assert printed.count("ran the prediction convolutions in bf16") == 1
    assert "/heads.0/pred/Conv/WithoutBiases" in printed and "--precision=fp32" in printed


@needs_openvino
def test_raw_outputs_and_detections_on_a_bccd_image_equal_torch_fp32():
    net = trained_like_net("yolov4-tiny")
    plain = torch_detector(net, "yolov4-tiny", input_shape=[480, 640], precision="fp32", optimize=False)
    detector = plain.openvino_detector(precision="fp32")
    with Image.open(BCCD_IMAGE) as image:
        rgb = image.convert("RGB")
    image_chw, _ = preprocess_image(rgb, [480, 640], True)
    with torch.inference_mode():
        expected = net(torch.from_numpy(image_chw[None]))
    assert_raw_outputs_close(detector.raw_outputs(image_chw[None]), expected)
    got, reference = detector.detect(rgb), plain.detect(rgb)
    assert len(reference) > 20  # enough boxes of several classes to compare
    assert_same_detections(got.boxes_xyxy, got.class_ids, reference.boxes_xyxy, reference.class_ids)
    assert got.class_names == [CLASSES[c] for c in got.class_ids]


class CountingCore:
    """An openvino.Core that records the input shape of every model it compiles."""

    def __init__(self, core):
        self.core, self.shapes = core, []

    def compile_model(self, model, *args, **kwargs):
        self.shapes.append(tuple(model.inputs[0].get_partial_shape().to_shape()))
        return self.core.compile_model(model, *args, **kwargs)


@needs_openvino
def test_compiled_once_per_input_shape_and_again_after_a_weight_update():
    net = trained_like_net("yolov4-tiny")
    detector = torch_detector(net, "yolov4-tiny", input_shape=[64, 64]).openvino_detector(precision="fp32")
    counting = CountingCore(detector._core)
    detector._core = counting
    one, two = (np.random.default_rng(i).random((n, 3, 64, 64), dtype=np.float32) for i, n in ((0, 1), (1, 2)))
    for images in (one, one, two, two, one):
        detector.raw_outputs(images)
    assert counting.shapes == [(1, 3, 64, 64), (2, 3, 64, 64)]
    with torch.no_grad():  # an optimizer step: the next call converts the new weights and compiles again
        net.heads[0].pred.bias.add_(0.5)
        expected = net(torch.from_numpy(one))
    assert_raw_outputs_close(detector.raw_outputs(one), expected)
    assert counting.shapes == [(1, 3, 64, 64), (2, 3, 64, 64), (1, 3, 64, 64)]


RELEASE_THEN_SPAWN = """
import gc, signal, subprocess, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from nets.yolo import build_model
from utils.core.model_files import DEFAULT_ANCHORS_MASK, DEFAULT_ANCHORS_PATH, get_anchors
from yolo import YOLO
signal.signal(signal.SIGCHLD, lambda *_: None)  # as torch's DataLoader does once it has had workers
config = {"model": "yolov4-tiny", "class_names": ["a", "b"], "input_shape": [64, 64],
          "anchors": get_anchors(str(DEFAULT_ANCHORS_PATH["yolov4-tiny"])),
          "anchors_mask": DEFAULT_ANCHORS_MASK["yolov4-tiny"]}
detectors = [YOLO.from_model(build_model(model="yolov4-tiny", num_classes=2).eval(), config=config,
                             device="cpu").openvino_detector() for _ in range(2)]
for detector in detectors:
    detector.raw_outputs(np.zeros((1, 3, 64, 64), np.float32))
del detector
detectors.pop(0)  # released in the order they were made, as two scored runs are
detectors.pop(0)
gc.collect()
print(subprocess.run([sys.executable, "-c", "pass"]).returncode, "alive")
"""


@needs_openvino
def test_releasing_detectors_leaves_child_processes_safe_to_wait_for():
    """Two OpenVINO detectors made and released in that order, then a child process ends: the parent handles
    SIGCHLD on a signal stack that must still exist (one Core per detector left the thread on a freed one, and
    the parent died with SIGSEGV: the test suite and compare_focal.py's next run)."""
    done = subprocess.run([sys.executable, "-c", RELEASE_THEN_SPAWN, str(REPO)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["0", "alive"]


@needs_openvino
def test_get_map_openvino_scores_a_trained_run_as_torch_does(tmp_path):
    train.main(small_run(tmp_path, "--unfreeze_epoch=1", "--init_lr=0.64", "--warmup_epochs=1"))
    year = tmp_path / "VOCdevkit" / "VOC2007"  # the run's train and val images as a VOC image set
    (year / "ImageSets" / "Main").mkdir(parents=True)
    for folder in ("JPEGImages", "Annotations"):
        (year / folder).symlink_to(VOC / folder)
    (year / "ImageSets" / "Main" / "run.txt").write_text("\n".join(ids("train", 4) + ids("val", 2)) + "\n")
    results = {}
    # fp32 on both: OpenVINO's default is bf16 on CPUs with native bf16, whose detections differ a little (the
    # README's gate table)
    for backend, precision in (("torch", "fp32"), ("openvino", "fp32")):
        out = tmp_path / f"map_{backend}"
        get_map.main([f"--model_path={tmp_path / 'logs' / 'last_epoch_weights.pth'}", f"--backend={backend}",
                      f"--precision={precision}", f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}",
                      "--image_set_path=VOC2007/ImageSets/Main/run.txt", f"--map_out_path={out}", "--device=cpu"])
        results[backend] = json.loads((out / "results.json").read_text())["map"]
    assert results["torch"] > 0.01  # detections that score: a mismatch would move the mAP
    assert abs(results["openvino"] - results["torch"]) <= 0.002
    for image_id in ids("train", 4) + ids("val", 2):
        boxes = {}
        for backend in ("torch", "openvino"):
            rows = [line.split() for line in (tmp_path / f"map_{backend}" / "detection-results" /
                                              f"{image_id}.txt").read_text().splitlines()]
            kept = [row for row in rows if float(row[1]) >= 0.1]  # well above the 0.001 threshold and the max_det cut
            boxes[backend] = (np.array([[float(v) for v in row[2:]] for row in kept]).reshape(-1, 4),
                              np.array([CLASSES.index(row[0]) for row in kept]))
        if len(boxes["torch"][0]):
            assert_same_detections(*boxes["openvino"], *boxes["torch"])
        else:
            assert len(boxes["openvino"][0]) == 0


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    path = tmp_path / "tiny.pth"
    torch.save({"model": trained_like_net("yolov4-tiny").state_dict(),
                "config": detector_config("yolov4-tiny", input_shape=[64, 64])}, path)
    return path


def script_detector(checkpoint: Path, *args: str):
    return predict.build_detector(resolve_config(settings_of(vars(predict)), [
        f"--model_path={checkpoint}", "--device=cpu", "--confidence=0.3", "--batch_size=3", *args]))


@needs_openvino
def test_auto_runs_openvino_at_the_users_precision_and_says_so_once(checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(backends, "_announced", set())
    first, second = script_detector(checkpoint), script_detector(checkpoint)
    assert isinstance(first, OpenVinoYOLO) and isinstance(second, OpenVinoYOLO)
    assert first.precision == ("bf16" if cpu_has_native_bf16() else "fp32")  # OpenVINO's default on this CPU
    assert first.postprocess_settings.confidence == 0.3 and first.batch_size == 3
    assert capsys.readouterr().out.count("backend auto: openvino") == 1
    for precision in ("fp32", "bf16"):
        detector = script_detector(checkpoint, f"--precision={precision}")
        assert isinstance(detector, OpenVinoYOLO) and detector.precision == precision
    assert type(script_detector(checkpoint, "--backend=torch")) is YOLO


def test_auto_falls_back_to_torch_without_openvino(checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(backends, "_announced", set())
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    detector = script_detector(checkpoint)
    assert type(detector) is YOLO
    assert "backend auto: torch (OpenVINO is not installed" in capsys.readouterr().out
    with pytest.raises(UserError, match="the openvino package is not installed; pip install openvino"):
        script_detector(checkpoint, "--backend=openvino")
    assert backends.auto_backend(torch.device("cuda"))[0] == "torch"  # OpenVINO is a CPU engine here


@needs_openvino
@pytest.mark.parametrize("backend, precision", [("auto", "auto"), ("torch", "auto"), ("torch", "fp32"),
                                                ("openvino", "auto"), ("openvino", "fp32"), ("onnxruntime", "auto")])
def test_scoring_label_names_what_the_detector_runs(checkpoint, backend, precision):
    detector = backends.on_backend(YOLO(model_path=str(checkpoint), device="cpu", precision=precision),
                                   backend=backend, precision=precision)
    label = backends.scoring_label(torch.device("cpu"), backend=backend, precision=precision)
    assert label == f"{detector.precision} on {detector.engine}"  # the oracle: the detector built for real
