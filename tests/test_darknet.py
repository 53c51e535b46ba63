"""Darknet .cfg/.weights support, checked against OpenCV's DNN module (an independent darknet implementation).

Each oracle test writes a .weights file of random values in darknet layout for a cfg (the layout computed here
from the cfg alone), runs it in cv2.dnn.readNetFromDarknet and in the project (yolo.YOLO with cfg_path) on the same
input tensor, and compares OpenCV's [yolo] outputs with the project's decoded boxes and scores on every level,
then the final detections on BCCD images.
"""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from nets.darknet_cfg import CfgError, read_cfg
from nets.darknet_weights import read_darknet_checkpoint, write_weights
from nets.yolo import build_model, init_weights
from utils.checkpoint import load_weights
from utils.postprocess import preprocess_image
from yolo import YOLO

REPO = Path(__file__).resolve().parents[1]
CFG_DIR = REPO / "model_data" / "darknet"
IMAGES = [REPO / "VOCdevkit" / "VOC2007" / "JPEGImages" / f"BloodImage_0000{i}.jpg" for i in (0, 1)]
OPENCV_CLASS_THRESH = 0.2  # OpenCV's [yolo] layer zeroes obj * class scores at or below this
XY_TOL, WH_REL_TOL, SCORE_TOL = 1e-5, 1e-4, 2e-5  # box centres (fractions of the input); box sizes; probabilities


def cfg_text(name: str, **replace: str) -> str:
    """A vendored cfg with every ``key=value`` line of the given keys replaced (``filters`` only where it is 255)."""
    text = (CFG_DIR / name).read_text(encoding="utf-8")
    for key, value in replace.items():
        pattern = r"^filters\s*=\s*255\s*$" if key == "filters" else rf"^{key}\s*=.*$"
        text = re.sub(pattern, f"{key}={value}", text, flags=re.MULTILINE)
    return text


def conv_shapes(cfg_path: Path) -> list[tuple[int, int, int, bool]]:
    """(filters, in_channels, size, batch_normalize) of every [convolutional] section, by following the channel
    counts through the cfg (independent of the project's model code)."""
    sections = []
    for line in cfg_path.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("["):
            sections.append((line[1:-1], {}))
        elif "=" in line:
            key, value = line.split("=", 1)
            sections[-1][1][key.strip()] = value.strip()
    channels, convs = [], []
    previous = int(sections[0][1].get("channels", 3))
    for index, (kind, opts) in enumerate(sections[1:]):
        if kind == "convolutional":
            convs.append((int(opts["filters"]), previous, int(opts["size"]), opts.get("batch_normalize") == "1"))
            out = int(opts["filters"])
        elif kind == "route":
            refs = [int(v) for v in opts["layers"].split(",")]
            out = sum(channels[r if r >= 0 else index + r] for r in refs) // int(opts.get("groups", 1))
        else:  # shortcut, maxpool, upsample, yolo keep the channel count
            out = previous
        channels.append(out)
        previous = out
    return convs


def write_random_weights(cfg_path: Path, weights_path: Path, *, seed: int) -> None:
    """Random darknet weights with realistic scales: positive BN variances, conv weights ~ N(0, gain^2 / fan_in)."""
    rng = np.random.default_rng(seed)
    parts = [np.array([0, 2, 5], "<i4").tobytes(), np.array([12345], "<i8").tobytes()]
    for filters, in_channels, size, batch_normalize in conv_shapes(cfg_path):
        if batch_normalize:
            bn = np.stack([rng.normal(0.0, 0.1, filters), rng.uniform(0.8, 1.2, filters),
                           rng.normal(0.0, 0.1, filters), rng.uniform(0.5, 1.5, filters)])
            parts.append(bn.astype("<f4").tobytes())
        else:
            parts.append(rng.normal(0.0, 0.5, filters).astype("<f4").tobytes())
        fan_in = in_channels * size * size
        gain = 1.2 if batch_normalize else 0.5  # head logits of a few units: exp(tw) stays far from overflow
        parts.append((rng.standard_normal(filters * fan_in, dtype=np.float32) * np.float32(gain / np.sqrt(fan_in)))
                     .astype("<f4").tobytes())
    weights_path.write_bytes(b"".join(parts))


def opencv_levels(net: cv2.dnn.Net, image_chw: np.ndarray) -> list[np.ndarray]:
    """OpenCV's [yolo] outputs: per level (H * W * A, 5 + C) rows of cx, cy, w, h (fractions of the input),
    objectness, objectness * class probability (0 at or below OPENCV_CLASS_THRESH); cell-major, anchor-minor."""
    net.setInput(image_chw[None].astype(np.float32))
    return [np.asarray(out) for out in net.forward(net.getUnconnectedOutLayersNames())]


def project_levels(detector: YOLO, image_chw: np.ndarray) -> list[np.ndarray]:
    """The project's decoded output split per level and put in OpenCV's row order and units."""
    decoded = detector.decode(detector.raw_outputs(image_chw[None]))[0].numpy()  # (N, 5 + C)
    height, width = detector.input_shape
    levels, start = [], 0
    for mask, stride in zip(detector.anchors_mask, detector.net.strides):
        grid_h, grid_w, anchors = height // stride, width // stride, len(mask)
        level = decoded[start:start + anchors * grid_h * grid_w].reshape(anchors, grid_h, grid_w, -1)
        start += anchors * grid_h * grid_w
        rows = level.transpose(1, 2, 0, 3).reshape(grid_h * grid_w * anchors, -1).copy()  # cell-major
        rows[:, [0, 2]] /= width
        rows[:, [1, 3]] /= height
        rows[:, 5:] *= rows[:, 4:5]
        levels.append(rows)
    return levels


def compare_levels(ours: list[np.ndarray], theirs: list[np.ndarray]) -> list[dict]:
    """Per level: max abs differences of box centres (fractions of the input), objectness and the class scores
    OpenCV keeps; max relative difference of box sizes (exp(tw) makes large boxes' absolute errors large)."""
    by_rows = {len(level): level for level in theirs}
    report = []
    for level in ours:
        other = by_rows[len(level)]
        kept = other[:, 5:] > 0
        report.append({"rows": len(level), "xy": float(np.abs(level[:, :2] - other[:, :2]).max()),
                       "wh_rel": float((np.abs(level[:, 2:4] - other[:, 2:4]) / other[:, 2:4]).max()),
                       "obj": float(np.abs(level[:, 4] - other[:, 4]).max()),
                       "cls": float(np.abs(level[:, 5:][kept] - other[:, 5:][kept]).max()) if kept.any() else 0.0,
                       "cls_dropped_max": float(level[:, 5:][~kept].max()) if (~kept).any() else 0.0,
                       "kept": int(kept.sum())})
    return report


def opencv_detections(theirs: list[np.ndarray], *, image_hw, info, confidence: float, nms_iou: float):
    """Final detections from OpenCV's outputs: best class per box, score threshold, class-aware NMS
    (cv2.dnn.NMSBoxesBatched), boxes mapped back through the letterbox into original-image pixels and clipped;
    a box wholly in the letterbox padding is dropped (as yolo.YOLO documents)."""
    rows = np.concatenate(theirs)
    height, width = info.input_hw
    class_ids = rows[:, 5:].argmax(1)
    scores = rows[:, 5:].max(1)
    keep = scores >= confidence
    rows, class_ids, scores = rows[keep], class_ids[keep], scores[keep]
    xywh = np.stack([(rows[:, 0] - rows[:, 2] / 2) * width, (rows[:, 1] - rows[:, 3] / 2) * height,
                     rows[:, 2] * width, rows[:, 3] * height], axis=1)
    picked = np.asarray(cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), class_ids.tolist(), confidence,
                                                nms_iou), dtype=np.int64).reshape(-1)
    (new_h, new_w), (dx, dy) = info.resized_hw, info.offset_xy
    xyxy = np.concatenate([xywh[picked, :2], xywh[picked, :2] + xywh[picked, 2:]], axis=1)
    xyxy = (xyxy - np.array([dx, dy, dx, dy])) * np.array([image_hw[1] / new_w, image_hw[0] / new_h] * 2)
    xyxy = np.clip(xyxy, 0, np.array([image_hw[1], image_hw[0]] * 2))
    inside = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])  # boxes wholly in the letterbox padding go
    xyxy, scores, class_ids = xyxy[inside], scores[picked][inside], class_ids[picked][inside]
    order = np.argsort(-scores, kind="stable")
    return xyxy[order], scores[order], class_ids[order]


def run_oracle(tmp_path: Path, name: str, text: str, *, seed: int) -> list[dict]:
    cfg_path, weights_path = tmp_path / f"{name}.cfg", tmp_path / f"{name}.weights"
    cfg_path.write_text(text, encoding="utf-8")
    write_random_weights(cfg_path, weights_path, seed=seed)
    detector = YOLO(model_path=str(weights_path), cfg_path=str(cfg_path), device="cpu", confidence=0.5, nms_iou=0.45)
    net = cv2.dnn.readNetFromDarknet(str(cfg_path), str(weights_path))  # OpenCV's importer needs files
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    reports = []
    for index, image_path in enumerate(IMAGES):
        image = Image.open(image_path).convert("RGB")
        image_chw, info = preprocess_image(image, detector.input_shape, True)
        theirs = opencv_levels(net, image_chw)
        report = compare_levels(project_levels(detector, image_chw), theirs)
        print(f"{name} {image_path.name}: " + "; ".join(
            f"level {i} ({r['rows']} rows): xy {r['xy']:.1e}, wh rel {r['wh_rel']:.1e}, obj {r['obj']:.1e}, "
            f"cls {r['cls']:.1e} "
            f"({r['kept']} kept)" for i, r in enumerate(report)))
        for r in report:
            assert r["xy"] < XY_TOL and r["wh_rel"] < WH_REL_TOL and r["obj"] < SCORE_TOL and r["cls"] < SCORE_TOL, r
            assert r["cls_dropped_max"] <= OPENCV_CLASS_THRESH + SCORE_TOL, r
        assert sum(r["kept"] for r in report) > 0, "the random model scores nothing above OpenCV's threshold"
        reports.append(report)
        if index == 0:
            # A confidence in a wide gap of OpenCV's scores, so float noise cannot move a box across it.
            top = np.sort(np.concatenate([level[:, 5:].max(1) for level in theirs]))[::-1][:100]
            gap = 20 + int(np.argmax(top[20:-1] - top[21:]))
            detector.confidence = float((top[gap] + top[gap + 1]) / 2)
            assert detector.confidence > OPENCV_CLASS_THRESH
        ours = detector.detect(image)
        boxes, scores, class_ids = opencv_detections(theirs, image_hw=(image.height, image.width), info=info,
                                                     confidence=detector.confidence, nms_iou=detector.nms_iou)
        print(f"{name} {image_path.name}: {len(ours)} detections (OpenCV {len(scores)}) at confidence "
              f"{detector.confidence:.4f}")
        assert len(ours) == len(scores) > 0
        np.testing.assert_array_equal(ours.class_ids, class_ids)
        np.testing.assert_allclose(ours.scores, scores, atol=SCORE_TOL)
        np.testing.assert_allclose(ours.boxes_xyxy, boxes, atol=0.05)  # original pixels
    return reports


def test_yolov4_tiny_matches_opencv(tmp_path):
    run_oracle(tmp_path, "yolov4-tiny", cfg_text("yolov4-tiny.cfg"), seed=1)


def test_custom_3_classes_matches_opencv(tmp_path):
    text = cfg_text("yolov4-tiny-custom.cfg", classes="3", filters="24", width="320", height="320")
    assert read_cfg_text(tmp_path, text).num_classes == 3
    run_oracle(tmp_path, "yolov4-tiny-custom-3", text, seed=2)


@pytest.mark.slow
def test_yolov4_matches_opencv(tmp_path):
    run_oracle(tmp_path, "yolov4", cfg_text("yolov4.cfg", width="416", height="416"), seed=3)


def read_cfg_text(tmp_path: Path, text: str, name: str = "x.cfg"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return read_cfg(path)
