"""Darknet .cfg/.weights support, checked against OpenCV's DNN module (an independent darknet implementation).

Each oracle test writes a .weights file of random values in darknet layout for a cfg (the layout computed here
from the cfg alone), runs it in cv2.dnn.readNetFromDarknet and in the project (yolo.YOLO with cfg_path) on the same
input tensor, and compares OpenCV's [yolo] outputs with the project's decoded boxes and scores on every level,
then the final detections on BCCD images.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, small_run
from PIL import Image

from nets.darknet_cfg import CfgError, read_cfg
from nets.darknet_weights import (default_class_names, read_darknet_checkpoint, set_bn_eps, tensor_layout,
                                  write_darknet_model, write_weights)
from nets.yolo import build_model, init_weights
from utils.infer.checkpoint import load_weights
from utils.infer.preprocess import preprocess_image
from yolo import YOLO, PostprocessSettings

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
    detector = YOLO(model_path=str(weights_path), cfg_path=str(cfg_path), device="cpu",
                    postprocess_settings=PostprocessSettings(confidence=0.5, nms_iou=0.45),
                    precision="fp32")  # OpenCV computes in fp32: compare like with like
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
            detector.postprocess_settings = replace(detector.postprocess_settings,
                                                    confidence=float((top[gap] + top[gap + 1]) / 2))
            assert detector.postprocess_settings.confidence > OPENCV_CLASS_THRESH
        ours = detector.detect(image)
        boxes, scores, class_ids = opencv_detections(theirs, image_hw=(image.height, image.width), info=info,
                                                     confidence=detector.postprocess_settings.confidence,
                                                     nms_iou=detector.postprocess_settings.nms_iou)
        print(f"{name} {image_path.name}: {len(ours)} detections (OpenCV {len(scores)}) at confidence "
              f"{detector.postprocess_settings.confidence:.4f}")
        assert len(ours) == len(scores) > 0
        np.testing.assert_array_equal(ours.class_ids, class_ids)
        np.testing.assert_allclose(ours.scores, scores, atol=SCORE_TOL)
        np.testing.assert_allclose(ours.boxes_xyxy, boxes, atol=0.05)  # original pixels
    return reports


def test_yolov4_tiny_matches_opencv(tmp_path):
    run_oracle(tmp_path, "yolov4-tiny", cfg_text("yolov4-tiny.cfg"), seed=1)


def test_custom_3_classes_matches_opencv(tmp_path):
    text = cfg_text("yolov4-tiny-custom.cfg", classes="3", filters="24", width="416", height="320")
    custom = read_cfg_text(tmp_path, text)
    assert (custom.num_classes, custom.input_shape, custom.anchors_mask) == (3, [320, 416], [[3, 4, 5], [0, 1, 2]])
    run_oracle(tmp_path, "yolov4-tiny-custom-3", text, seed=2)


@pytest.mark.slow
def test_yolov4_matches_opencv(tmp_path):
    run_oracle(tmp_path, "yolov4", cfg_text("yolov4.cfg", width="416", height="416"), seed=3)


def read_cfg_text(tmp_path: Path, text: str, name: str = "x.cfg"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return read_cfg(path)


def tiny_pair(tmp_path: Path, *, seed: int = 5, **replace: str) -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg_path, weights_path = tmp_path / "tiny.cfg", tmp_path / "tiny.weights"
    cfg_path.write_text(cfg_text("yolov4-tiny.cfg", **replace), encoding="utf-8")
    write_random_weights(cfg_path, weights_path, seed=seed)
    return cfg_path, weights_path


def conv_floats(shape: tuple[int, int, int, bool]) -> int:
    filters, in_channels, size, batch_normalize = shape
    return filters * (4 if batch_normalize else 1) + filters * in_channels * size * size


def test_float_counts_match_the_published_files():
    for name, floats in (("yolov4.cfg", 64_429_405), ("yolov4-tiny.cfg", 6_062_814)):
        assert sum(map(conv_floats, conv_shapes(CFG_DIR / name))) == floats  # this file's own layout
        layout = tensor_layout(read_cfg(CFG_DIR / name))
        assert sum(shape.numel() for conv in layout for _, shape in conv) == floats  # the project's
    assert 20 + 4 * floats == 24_251_276  # the published yolov4-tiny.weights, int64 seen header
    # yolov4.conv.137 (darknet partial, layers 0-136) is the first 92 [convolutional] sections.
    assert 20 + 4 * sum(map(conv_floats, conv_shapes(CFG_DIR / "yolov4.cfg")[:92])) == 170_038_676


def test_cfg_settings_are_read():
    tiny = read_cfg(CFG_DIR / "yolov4-tiny.cfg")
    assert (tiny.model, tiny.num_classes, tiny.input_shape, tiny.scale_x_y) == ("yolov4-tiny", 80, [416, 416],
                                                                                [1.05, 1.05])
    assert tiny.anchors_mask == [[3, 4, 5], [1, 2, 3]] and tiny.anchors[5] == [344.0, 319.0]
    full = read_cfg(CFG_DIR / "yolov4.cfg")
    assert (full.model, full.input_shape, full.scale_x_y) == ("yolov4", [608, 608], [1.05, 1.1, 1.2])
    assert full.anchors_mask == [[6, 7, 8], [3, 4, 5], [0, 1, 2]]  # coarsest level first, as the project orders
    assert full.conv_modules[-2:] == ["heads.0.conv", "heads.0.pred"] and len(full.conv_modules) == 110


def test_cfg_of_another_network_names_the_first_differing_section(tmp_path):
    text = cfg_text("yolov4-tiny.cfg").replace("groups=2\ngroup_id=1\n", "", 1)  # a plain route: not CSP-tiny
    line = text.splitlines().index("[route]") + 1
    with pytest.raises(CfgError, match=rf"section 5 \[route\] \(line {line}\) differs from yolov4-tiny \(layer 3\): "
                                       r"has layers=\(2,\) groups=1 group_id=0, expected .*groups=2 group_id=1"):
        read_cfg_text(tmp_path, text)
    text = cfg_text("yolov4.cfg").replace("activation=mish", "activation=leaky", 1)
    with pytest.raises(CfgError, match=r"section 2 \[convolutional\] \(line \d+\) differs from yolov4 \(layer 0\): "
                                       r"has .*activation=leaky, expected .*activation=mish"):
        read_cfg_text(tmp_path, text)
    with pytest.raises(CfgError, match=r"filters=255, but its \[yolo\] section needs .* = 24"):
        read_cfg_text(tmp_path, cfg_text("yolov4-tiny-custom.cfg", classes="3"))
    with pytest.raises(CfgError, match=r"section 2 \[convolutional\] \(line \d+\) .*has a malformed value"):
        read_cfg_text(tmp_path, cfg_text("yolov4-tiny.cfg").replace("filters=32\n", "filters=3x2\n", 1))
    with pytest.raises(CfgError, match=r"section 40 \[convolutional\] .* one section too many"):
        read_cfg_text(tmp_path, cfg_text("yolov4-tiny.cfg") + "[convolutional]\nfilters=3\n")
    with pytest.raises(CfgError, match="must start with a \\[net\\] section"):
        read_cfg_text(tmp_path, "[convolutional]\nfilters=3\n")


def test_wrong_float_count_is_reported(tmp_path):
    cfg_path, weights_path = tiny_pair(tmp_path)
    data = weights_path.read_bytes()
    for extra, count in ((data[:-4], 6_062_813), (data + b"\0\0\0\0", 6_062_815)):
        weights_path.write_bytes(extra)
        with pytest.raises(ValueError, match=f"cfg needs 6062814 floats after the header, file has {count}"):
            read_darknet_checkpoint(weights_path=weights_path, cfg_path=cfg_path)
    with pytest.raises(ValueError, match="the matching .cfg is needed"):
        YOLO(model_path=str(weights_path), device="cpu")


def test_header_with_int32_seen_is_read(tmp_path):
    cfg_path, weights_path = tiny_pair(tmp_path)
    data = weights_path.read_bytes()
    old = read_darknet_checkpoint(weights_path=weights_path, cfg_path=cfg_path)
    weights_path.write_bytes(np.array([0, 1, 0, 777], "<i4").tobytes() + data[20:])  # version 0.1: int32 seen
    new = read_darknet_checkpoint(weights_path=weights_path, cfg_path=cfg_path)
    assert (old["seen"], new["seen"]) == (12345, 777)
    assert all(torch.equal(old["model"][key], new["model"][key]) for key in old["model"])


def test_weights_round_trip_is_exact(tmp_path):
    cfg_path, weights_path = tiny_pair(tmp_path)
    checkpoint = read_darknet_checkpoint(weights_path=weights_path, cfg_path=cfg_path)
    net = build_model(model="yolov4-tiny", num_classes=80)
    load_weights(net, weights_path, model="yolov4-tiny", checkpoint=checkpoint)
    set_bn_eps(net, checkpoint["bn_eps"])
    write_weights(net, tmp_path / "again.weights", model="yolov4-tiny", seen=checkpoint["seen"])
    assert (tmp_path / "again.weights").read_bytes() == weights_path.read_bytes()
    again = read_darknet_checkpoint(weights_path=tmp_path / "again.weights", cfg_path=cfg_path)["model"]
    assert again.keys() == net.state_dict().keys()
    assert all(torch.equal(again[key], tensor) for key, tensor in net.state_dict().items())


def random_project_net(*, model: str, num_classes: int, seed: int) -> torch.nn.Module:
    """A project model with trained-looking BN statistics, small variances included (where BN eps matters)."""
    torch.manual_seed(seed)
    net = build_model(model=model, num_classes=num_classes)
    init_weights(net)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.uniform_(1e-4, 1e-2)
                module.running_mean.normal_(0.0, 0.1)
                module.weight.copy_(module.running_var.sqrt() * torch.empty_like(module.weight).uniform_(0.8, 1.2))
                module.bias.normal_(0.0, 0.1)
            elif isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, (0.5 if module.bias is not None else 1.2) / fan_in ** 0.5)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.5)
    return net.eval()


def test_project_model_written_as_darknet_runs_the_same_in_opencv(tmp_path):
    """A model of this project (BN eps 1e-5, small variances) -> .weights + .cfg -> OpenCV computes what the project
    computes; read back, every tensor is bit-identical but the variances, which carry the eps difference."""
    config = {"model": "yolov4-tiny", "class_names": ["RBC", "WBC", "Platelets"], "input_shape": [320, 320],
              "anchors": [[12.0, 16.0], [19.0, 36.0], [40.0, 28.0], [36.0, 75.0], [76.0, 55.0], [72.0, 146.0]],
              "anchors_mask": [[3, 4, 5], [0, 1, 2]], "scale_x_y": [1.05, 1.1]}
    net = random_project_net(model="yolov4-tiny", num_classes=3, seed=7)
    weights_path = write_darknet_model(net, weights_path=tmp_path / "bccd.weights", config=config)
    cfg_path = weights_path.with_suffix(".cfg")
    assert read_cfg(cfg_path).config(class_names=config["class_names"]) == config
    read_back = read_darknet_checkpoint(weights_path=weights_path, cfg_path=cfg_path)["model"]
    for key, tensor in net.state_dict().items():
        if key.endswith("running_var"):
            torch.testing.assert_close(read_back[key], tensor + 9e-6, rtol=1e-6, atol=0)
        else:
            assert torch.equal(read_back[key], tensor), key

    detector = YOLO.from_model(net, config=config, postprocess_settings=PostprocessSettings(nms_iou=0.45),
                               device="cpu", precision="fp32",
                               optimize=False)  # the written files against the unfolded fp32 net (OpenCV's precision):
    # small BN variances make folding's own rounding visible, which this test is not about
    opencv = cv2.dnn.readNetFromDarknet(str(cfg_path), str(weights_path))
    image_chw, _ = preprocess_image(Image.open(IMAGES[0]).convert("RGB"), config["input_shape"], True)
    report = compare_levels(project_levels(detector, image_chw), opencv_levels(opencv, image_chw))
    print("project model -> darknet files: " + "; ".join(
        f"xy {r['xy']:.1e}, wh rel {r['wh_rel']:.1e}, obj {r['obj']:.1e}, cls {r['cls']:.1e}" for r in report))
    for r in report:
        assert r["xy"] < XY_TOL and r["wh_rel"] < WH_REL_TOL and r["obj"] < SCORE_TOL and r["cls"] < SCORE_TOL, r


def test_partial_file_loads_the_leading_layers_as_start_weights(tmp_path):
    cfg_path, weights_path = tiny_pair(tmp_path)
    full = read_darknet_checkpoint(weights_path=weights_path, cfg_path=cfg_path)["model"]
    backbone_floats = sum(map(conv_floats, conv_shapes(cfg_path)[:15]))  # conv1, conv2, 3 CSP blocks, conv3
    partial_path = tmp_path / "tiny.conv.29"  # darknet's partial-file naming: read as darknet since a cfg is given
    partial_path.write_bytes(weights_path.read_bytes()[:20 + 4 * backbone_floats])
    with pytest.raises(ValueError, match=f"cfg needs 6062814 floats after the header, file has {backbone_floats}"):
        YOLO(model_path=str(partial_path), cfg_path=str(cfg_path), device="cpu")
    torch.manual_seed(0)
    net = build_model(model="yolov4-tiny", num_classes=3)
    before = {key: tensor.clone() for key, tensor in net.state_dict().items()}
    report = load_weights(net, partial_path, model="yolov4-tiny", strict=False, cfg_path=cfg_path)
    assert report.loaded and all(key.startswith("backbone.") for key in report.loaded)
    for key, tensor in net.state_dict().items():
        expected = full[key] if key.startswith("backbone.") else before[key]
        assert torch.equal(tensor, expected), key
    with torch.device("meta"), pytest.raises(ValueError, match="holds a yolov4-tiny model, not yolov4"):
        load_weights(build_model(model="yolov4", num_classes=3), partial_path, model="yolov4", strict=False,
                     cfg_path=cfg_path)
    partial_path.write_bytes(weights_path.read_bytes()[:20 + 4 * backbone_floats + 4])  # not on a layer boundary
    with pytest.raises(ValueError, match="nor the end of one of its"):
        load_weights(net, partial_path, model="yolov4-tiny", strict=False, cfg_path=cfg_path)


def test_predict_and_get_map_take_darknet_files(tmp_path, capsys):
    import get_map
    import predict

    # Small anchors: the export check's absolute tolerance (1e-4 px) is below float32 resolution for huge boxes.
    cfg_path, weights_path = tiny_pair(tmp_path, width="128", height="128", anchors="2,3, 4,5, 6,7, 8,9, 10,11, 12,13")
    common = [f"--model_path={weights_path}", f"--cfg_path={cfg_path}", "--device=cpu"]
    onnx_path = tmp_path / "tiny.onnx"
    assert predict.main(["--mode=export_onnx", f"--onnx_save_path={onnx_path}", *common])["worst"] <= 1.0
    results = predict.main(["--mode=predict", f"--image_paths={[str(IMAGES[0])]}", f"--save_dir={tmp_path / 'out'}",
                            "--confidence=0.3", *common])
    assert results[0]["detections"].class_names[0] in default_class_names(80)  # COCO names for an 80-class cfg
    year = tmp_path / "VOCdevkit" / "VOC2007"
    (year / "ImageSets" / "Main").mkdir(parents=True)
    (year / "ImageSets" / "Main" / "test.txt").write_text("BloodImage_00000\n")
    for sub, suffix in (("JPEGImages", ".jpg"), ("Annotations", ".xml")):
        (year / sub).mkdir()
        source = REPO / "VOCdevkit" / "VOC2007" / sub / f"BloodImage_00000{suffix}"
        (year / sub / source.name).write_bytes(source.read_bytes())
    get_map.main(["--map_mode=1", f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}", f"--map_out_path={tmp_path / 'map'}",
                  *common])
    assert (tmp_path / "map" / "detection-results" / "BloodImage_00000.txt").read_text().strip()


def test_training_starts_from_darknet_weights_and_writes_them(tmp_path):

    import train

    cfg_path, weights_path = tiny_pair(tmp_path / "start")  # 80 classes: the 3-class heads' outputs are not loaded
    run = train.main(small_run(tmp_path, "--unfreeze_epoch=1", f"--model_path={weights_path}",
                               f"--cfg_path={cfg_path}", "--save_darknet=True"))
    start = read_darknet_checkpoint(weights_path=weights_path, cfg_path=cfg_path)["model"]
    assert run.net.backbone.conv1.conv.weight.shape == start["backbone.conv1.conv.weight"].shape
    logs = tmp_path / "logs"
    written = sorted(path.name for path in logs.iterdir() if path.suffix in (".weights", ".cfg"))
    assert written[:2] == ["best_epoch_weights.cfg", "best_epoch_weights.weights"] and len(written) == 4
    ours = YOLO(model_path=str(logs / "best_epoch_weights.pth"), device="cpu", optimize=False)
    theirs = YOLO(model_path=str(logs / "best_epoch_weights.weights"), cfg_path=str(logs / "best_epoch_weights.cfg"),
                  device="cpu", optimize=False)
    assert (theirs.class_names, theirs.anchors, theirs.input_shape) == (["class_0", "class_1", "class_2"],
                                                                         ours.anchors, ours.input_shape)
    image_chw, _ = preprocess_image(Image.open(IMAGES[0]).convert("RGB"), ours.input_shape, True)
    torch.testing.assert_close(theirs.decode(theirs.raw_outputs(image_chw[None])),
                               ours.decode(ours.raw_outputs(image_chw[None])), rtol=1e-4, atol=1e-5)
