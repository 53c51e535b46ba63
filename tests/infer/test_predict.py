"""yolo.YOLO settings resolution and box mapping, and every predict.py mode end to end (CPU, yolov4-tiny, 128 px)."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image
from torch import nn

import predict
from nets.compat import PUBLISHED_TO_OURS
from nets.yolo import build_model, init_weights
from utils.core.config import UserError, resolve_config, settings_of
from utils.core.model_files import get_anchors
from utils.infer.preprocess import preprocess_image
from yolo import YOLO, Detections, OnnxYOLO, PostprocessSettings, onnx_mismatch

BCCD_IMAGE = REPO / "VOCdevkit" / "VOC2007" / "JPEGImages" / "BloodImage_00000.jpg"
CLASSES = ["RBC", "WBC", "Platelets"]
TINY_ANCHORS = [[10.0, 14.0], [23.0, 27.0], [37.0, 58.0], [81.0, 82.0], [135.0, 169.0], [344.0, 319.0]]


def tiny_config(**overrides) -> dict:
    config = {"model": "yolov4-tiny", "class_names": CLASSES, "anchors": [[w * 0.5, h * 0.5] for w, h in TINY_ANCHORS],
              "anchors_mask": [[3, 4, 5], [1, 2, 3]], "input_shape": [128, 128], "scale_x_y": [1.05, 1.05]}
    return {**config, **overrides}


def biased_tiny_net(seed: int = 0) -> nn.Module:
    """Random yolov4-tiny whose heads predict objects of class 0 everywhere (obj, class logits +2)."""
    torch.manual_seed(seed)
    net = build_model(model="yolov4-tiny", num_classes=len(CLASSES))
    init_weights(net)
    with torch.no_grad():
        for head in net.heads:
            bias = head.pred.bias.view(net.anchors_per_level, -1)  # (A, 5 + C), a view
            bias[:, 4] = 2.0
            bias[:, 5] = 2.0
    return net.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save({"model": biased_tiny_net().state_dict(), "config": tiny_config()}, path)
    return path


def decoded_of(detector, image: Image.Image) -> torch.Tensor:
    image_chw, _ = preprocess_image(image, detector.input_shape, True)
    return detector.decode(detector.raw_outputs(image_chw[None]))


def test_yolo_reads_settings_from_checkpoint_config(checkpoint):
    detector = YOLO(model_path=str(checkpoint), device="cpu")
    config = tiny_config()
    assert detector.class_names == CLASSES and detector.model_name == "yolov4-tiny"
    assert detector.anchors == config["anchors"] and detector.anchors_mask == config["anchors_mask"]
    assert detector.input_shape == [128, 128] and detector.scale_x_y == [1.05, 1.05]
    assert detector.postprocess_settings == PostprocessSettings(confidence=0.5, nms_iou=0.3)
    with Image.open(BCCD_IMAGE) as image:
        image_chw, _ = preprocess_image(image, [128, 128], True)
        detections = detector.detect(image)
    raw = detector.raw_outputs(image_chw[None])
    decoded = detector.decode(raw)
    assert decoded.shape == (1, 3 * (4 * 4 + 8 * 8), 5 + 3)
    # Config's scale_x_y and anchors are used: first cell, first anchor (anchor 3 = (40.5, 41)) of the stride-32 level.
    assert decoded[0, 0, 0].item() == pytest.approx((torch.sigmoid(raw[0][0, 0, 0, 0]).item() * 1.05 - 0.025) * 32,
                                                    rel=1e-5)
    assert decoded[0, 0, 2].item() == pytest.approx(40.5 * math.exp(raw[0][0, 2, 0, 0].item()), rel=1e-5)
    assert isinstance(detections, Detections) and len(detections) > 0
    assert detections.boxes_xyxy.dtype == np.float32 and detections.class_ids.dtype == np.int64
    assert set(detections.class_names) <= set(CLASSES)
    assert json.loads(json.dumps(detections.to_dicts()))[0]["class_name"] in CLASSES


def test_yolo_arguments_override_checkpoint(checkpoint, tmp_path):
    (tmp_path / "anchors.txt").write_text("1,2, 3,4, 5,6, 7,8, 9,10, 11,12\n")
    detector = YOLO(model_path=str(checkpoint), anchors_path=str(tmp_path / "anchors.txt"),
                    anchors_mask=[[2, 3, 4], [0, 1, 5]], input_shape=[96, 160], device="cpu",
                    postprocess_settings=PostprocessSettings(confidence=0.25, nms_iou=0.6, nms_type="diou"))
    assert detector.class_names == CLASSES
    assert detector.anchors == [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12]]
    assert detector.anchors_mask == [[2, 3, 4], [0, 1, 5]] and detector.input_shape == [96, 160]
    settings = detector.postprocess_settings
    assert (settings.confidence, settings.nms_iou, settings.nms_type) == (0.25, 0.6, "diou")
    with Image.open(BCCD_IMAGE) as image:
        image_chw, _ = preprocess_image(image, [96, 160], True)
    raw = detector.raw_outputs(image_chw[None])
    decoded = detector.decode(raw)
    assert decoded.shape == (1, 3 * (3 * 5 + 6 * 10), 8)
    # The coarse level's first anchor is anchor 2 = (5, 6): w = 5 * exp(tw), h = 6 * exp(th) over its 3 x 5 cells.
    torch.testing.assert_close(decoded[0, :15, 2], 5.0 * torch.exp(raw[0][0, 2].flatten()))
    torch.testing.assert_close(decoded[0, :15, 3], 6.0 * torch.exp(raw[0][0, 3].flatten()))


def test_yolo_from_published_state_dict_with_explicit_arguments(tmp_path):
    net = biased_tiny_net(seed=1)
    ours_to_published = {ours: theirs for theirs, ours in PUBLISHED_TO_OURS["yolov4-tiny"].items()}
    published = {}
    for key, tensor in net.state_dict().items():
        prefix = max((p for p in ours_to_published if key.startswith(p)), key=len)
        published[ours_to_published[prefix] + key[len(prefix):]] = tensor
    assert "yolo_headP5.1.weight" in published
    bare = tmp_path / "published.pth"
    torch.save(published, bare)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES))
    detector = YOLO(model_path=str(bare), model="yolov4-tiny", classes_path=str(tmp_path / "classes.txt"),
                    input_shape=[128, 128], device="cpu")
    assert detector.anchors == get_anchors(str(REPO / "model_data" / "yolo_tiny_anchors.txt"))
    assert detector.scale_x_y is None
    reference = YOLO.from_model(net, config=tiny_config(anchors=detector.anchors, scale_x_y=None))
    with Image.open(BCCD_IMAGE) as image:
        torch.testing.assert_close(decoded_of(detector, image), decoded_of(reference, image))
    recognised = YOLO(model_path=str(bare), classes_path=str(tmp_path / "classes.txt"), device="cpu")
    assert recognised.model_name == "yolov4-tiny"  # from the keys, without model=
    with pytest.raises(ValueError, match="keys are those of a yolov4-tiny model, not yolov4; set model=yolov4-tiny"):
        YOLO(model_path=str(bare), model="yolov4", classes_path=str(tmp_path / "classes.txt"), device="cpu")


def test_a_classes_file_must_name_the_checkpoints_classes(checkpoint, tmp_path):
    """Another dataset's file of the same length would relabel every detection: names are compared, in order."""
    for name, text in (("abc", "a\nb\nc\n"), ("reordered", "RBC\nPlatelets\nWBC\n"), ("same", "RBC\nWBC\nPlatelets\n")):
        (tmp_path / f"{name}.txt").write_text(text)
    with pytest.raises(UserError, match=r"abc.txt: class 0 is 'a', but checkpoint .*tiny.pth was trained with 'RBC' "
                                        r"there \(its classes: RBC, WBC, Platelets\); leave classes_path unset"):
        YOLO(model_path=str(checkpoint), classes_path=str(tmp_path / "abc.txt"), device="cpu")
    with pytest.raises(UserError, match=r"reordered.txt: class 1 is 'Platelets', but .* with 'WBC' there"):
        YOLO(model_path=str(checkpoint), classes_path=str(tmp_path / "reordered.txt"), device="cpu")
    voc = REPO / "model_data" / "voc_classes.txt"
    with pytest.raises(UserError, match=r"voc_classes.txt lists 20 classes, but checkpoint .*tiny.pth was trained "
                                        r"on 3 \(RBC, WBC, Platelets\)"):
        YOLO(model_path=str(checkpoint), classes_path=str(voc), device="cpu")
    same = YOLO(model_path=str(checkpoint), classes_path=str(tmp_path / "same.txt"), device="cpu")
    assert same.class_names == CLASSES


def test_a_bare_state_dict_takes_the_classes_file_its_heads_fit(tmp_path):
    """No names are stored with a bare state_dict, so the classes file is taken as given; its length must be the
    heads' class count: 3 * (5 + 3) = 24 output channels per level here."""
    torch.save(biased_tiny_net().state_dict(), tmp_path / "bare.pth")
    (tmp_path / "abc.txt").write_text("a\nb\nc\n")
    (tmp_path / "two.txt").write_text("a\nb\n")
    detector = YOLO(model_path=str(tmp_path / "bare.pth"), classes_path=str(tmp_path / "abc.txt"), device="cpu")
    assert detector.class_names == ["a", "b", "c"]
    with pytest.raises(UserError, match=r"classes file .*two.txt lists 2 classes, but checkpoint .*bare.pth predicts "
                                        r"3; pass the classes file it was trained with \(--classes_path\)"):
        YOLO(model_path=str(tmp_path / "bare.pth"), classes_path=str(tmp_path / "two.txt"), device="cpu")
    with pytest.raises(UserError, match=r"the default classes file .*voc_classes.txt lists 20 classes, but checkpoint "
                                        r".*bare.pth predicts 3"):
        YOLO(model_path=str(tmp_path / "bare.pth"), device="cpu")  # the default classes of a published state_dict


def test_a_folder_as_model_path_names_its_checkpoints(checkpoint, tmp_path):
    with pytest.raises(UserError, match=r"model_path .*ckpt\d*: is a folder, not a checkpoint file; give a file in it "
                                        r"\(it holds tiny.pth\)"):
        YOLO(model_path=str(checkpoint.parent), device="cpu")
    with pytest.raises(UserError, match=r"it holds no .pth, .pt or .weights file"):
        YOLO(model_path=str(tmp_path), device="cpu")


class FixedHead(nn.Module):
    """A one-level 'network' whose output is fixed: one confident box at cell (x 0, y) of a 2 x 2 grid."""

    def __init__(self, cell_y: int = 1):
        super().__init__()
        raw = torch.full((1, 5 + 2, 2, 2), -10.0)  # (B, A * (5 + C), H, W) with A = 1, C = 2
        raw[0, 0:4, cell_y, 0] = 0.0  # tx = ty = 0 -> centre of the cell; tw = th = 0 -> the anchor's size
        raw[0, 4, cell_y, 0] = 10.0
        raw[0, 6, cell_y, 0] = 10.0  # class 1
        self.raw = nn.Parameter(raw)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [self.raw.expand(images.shape[0], -1, -1, -1)]


def test_detections_in_original_pixels_for_non_square_image():
    config = {"class_names": ["x", "y"], "anchors": [[20.0, 10.0]], "anchors_mask": [[0]], "input_shape": [64, 64]}
    net = FixedHead()
    net.train()
    detector = YOLO.from_model(net, config=config)
    detections = detector.detect(Image.new("RGB", (200, 100)))
    assert net.training  # from_model restores the caller's mode
    # Input box: centre (0.5 * 32, 1.5 * 32) = (16, 48), size 20 x 10 -> (6, 43, 26, 53). Letterbox of 200 x 100
    # into 64 x 64: 64 x 32 at dy = 16, 3.125 original pixels per input pixel -> (18.75, 84.375, 81.25, 115.625),
    # y2 clipped to the image height 100.
    np.testing.assert_allclose(detections.boxes_xyxy, [[18.75, 84.375, 81.25, 100.0]], atol=1e-4)
    assert detections.class_ids.tolist() == [1] and detections.class_names == ["y"]
    assert detections.scores[0] == pytest.approx(1 / (1 + math.exp(-10)) ** 2, rel=1e-6)
    stretched = YOLO.from_model(net, config=config, letterbox_image=False)
    # Plain resize: x * 200 / 64, y * 100 / 64 -> (18.75, 67.1875, 81.25, 82.8125).
    np.testing.assert_allclose(stretched.detect(Image.new("RGB", (200, 100))).boxes_xyxy,
                               [[18.75, 67.1875, 81.25, 82.8125]], atol=1e-4)


def test_box_wholly_in_letterbox_padding_is_dropped():
    config = {"class_names": ["x", "y"], "anchors": [[20.0, 10.0]], "anchors_mask": [[0]], "input_shape": [64, 64]}
    # 200 x 40 into 64 x 64: 64 x 12 at dy = 26; the box (6, 11, 26, 21) lies in the top padding.
    boxed = YOLO.from_model(FixedHead(cell_y=0), config=config)
    assert len(boxed.detect(Image.new("RGB", (200, 40)))) == 0
    stretched = YOLO.from_model(FixedHead(cell_y=0), config=config, letterbox_image=False)
    np.testing.assert_allclose(stretched.detect(Image.new("RGB", (200, 40))).boxes_xyxy,
                               [[18.75, 11 * 40 / 64, 81.25, 21 * 40 / 64]], atol=1e-4)


def run_main(args: list[str], checkpoint: Path) -> object:
    return predict.main([f"--model_path={checkpoint}", "--device=cpu", *args])


def test_predict_mode_saves_drawn_images(checkpoint, tmp_path):
    gray = tmp_path / "gray.png"
    Image.new("L", (90, 60), 100).save(gray)
    results = run_main([f"--image_paths={[str(BCCD_IMAGE), str(gray)]}", f"--save_dir={tmp_path / 'out'}",
                        "--crop=True", "--count=True"], checkpoint)
    assert [Path(r["output"]).name for r in results] == ["BloodImage_00000.png", "gray.png"]
    with Image.open(tmp_path / "out" / "BloodImage_00000.png") as drawn, Image.open(BCCD_IMAGE) as original:
        assert drawn.size == original.size
        assert np.abs(np.asarray(drawn, dtype=int) - np.asarray(original, dtype=int)).max() > 0  # something drawn
    assert len(results[0]["detections"]) > 0
    assert len(list((tmp_path / "out" / "crop" / "BloodImage_00000").glob("crop_*.png"))) > 0


def test_dir_predict_writes_images_and_json(checkpoint, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(BCCD_IMAGE).save(folder / "a.jpg")
    Image.new("RGB", (50, 80), (200, 30, 30)).save(folder / "b.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    report = run_main(["--mode=dir_predict", f"--dir_origin_path={folder}", f"--dir_save_path={tmp_path / 'out'}"],
                      checkpoint)
    saved = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert sorted(saved["images"]) == ["a.jpg", "b.png"] and list(saved["skipped"]) == ["broken.jpg"]
    assert saved["class_names"] == CLASSES and len(saved["images"]["a.jpg"]) > 0
    record = saved["images"]["a.jpg"][0]
    assert set(record) == {"class_id", "class_name", "score", "box_xyxy"}
    assert 0 <= record["box_xyxy"][0] <= record["box_xyxy"][2] <= 640
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["a.png", "b.png"]


def test_video_mode_headless_writes_output(checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    source = tmp_path / "in.avi"
    writer = cv2.VideoWriter(str(source), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    for i in range(5):
        writer.write(np.full((64, 96, 3), 40 * i, dtype=np.uint8))
    writer.release()
    out = tmp_path / "out" / "video.mp4"
    frames = run_main(["--mode=video", f"--video_path={source}", f"--video_save_path={out}"], checkpoint)
    assert frames == 5
    capture = cv2.VideoCapture(str(out))
    read = 0
    while capture.read()[0]:
        read += 1
    size = (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    capture.release()
    assert read == 5 and size == (96, 64)


def test_fps_mode_prints_the_split(checkpoint, capsys):
    stats = run_main(["--mode=fps", "--test_interval=2"], checkpoint)
    printed = capsys.readouterr().out
    assert "FPS" in printed and "forward" in printed and "postprocess" in printed
    assert stats["fps"] > 0 and stats["total_ms"] == pytest.approx(
        stats["preprocess_ms"] + stats["forward_ms"] + stats["postprocess_ms"])


def test_heatmap_mode_writes_png(checkpoint, tmp_path):
    out = tmp_path / "heat.png"
    run_main(["--mode=heatmap", f"--heatmap_save_path={out}"], checkpoint)
    with Image.open(out) as heat, Image.open(BCCD_IMAGE) as original:
        assert heat.size == original.size and heat.mode == "RGB"
    detector = YOLO(model_path=str(checkpoint), device="cpu")
    with Image.open(BCCD_IMAGE) as image:
        heat = detector.heatmap(image)
        decoded = decoded_of(detector, image)
    assert heat.shape == (480, 640) and 0.0 <= heat.min() <= heat.max() <= 1.0
    assert heat.max() <= decoded[0, :, 4].max().item() + 1e-6  # an interpolated max of objectness probabilities


def test_export_onnx_and_predict_onnx(checkpoint, tmp_path):
    import onnxruntime

    onnx_path = tmp_path / "model.onnx"
    mismatch = run_main(["--mode=export_onnx", f"--onnx_save_path={onnx_path}", "--onnx_dynamic_batch=True"],
                        checkpoint)
    assert mismatch["worst"] <= 1.0 and mismatch["prob_abs"] <= 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # the temporary file was renamed, not left
    detector = YOLO(model_path=str(checkpoint), device="cpu", precision="fp32", optimize=False)  # the plain net
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with Image.open(BCCD_IMAGE) as image, Image.open(BCCD_IMAGE) as other:
        batch = np.stack([preprocess_image(im, [128, 128], True)[0] for im in (image, other.resize((200, 300)))])
        expected = detector.decode(detector.raw_outputs(batch)).numpy()
    got = session.run(None, {"images": batch})[0]
    assert onnx_mismatch(got=got, expected=expected)["worst"] <= 1.0
    onnx_detector = OnnxYOLO(onnx_path=str(onnx_path))
    assert onnx_detector.class_names == CLASSES and onnx_detector.input_shape == [128, 128]
    results = run_main(["--mode=predict_onnx", f"--onnx_save_path={onnx_path}", f"--image_paths={[str(BCCD_IMAGE)]}",
                        f"--save_dir={tmp_path / 'out'}"], checkpoint)
    assert (tmp_path / "out" / "BloodImage_00000.png").is_file() and len(results[0]["detections"]) > 0
    (tmp_path / "abc.txt").write_text("a\nb\nc\n")
    with pytest.raises(UserError, match=r"abc.txt: class 0 is 'a', but ONNX model .*model.onnx was trained with 'RBC'"):
        OnnxYOLO(onnx_path=str(onnx_path), classes_path=str(tmp_path / "abc.txt"))


class Foreign(nn.Module):
    """Stands in for a network exported elsewhere: any input -> (B, N, outputs) or a feature map."""

    def __init__(self, outputs: int | None):
        super().__init__()
        self.conv, self.outputs = nn.Conv2d(3, 8, 3), outputs

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.conv(images)
        return features if self.outputs is None else features.flatten(2)[:, :self.outputs].transpose(1, 2)


def foreign_onnx(path: Path, *, hw: int, outputs: int | None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's notice
        torch.onnx.export(Foreign(outputs), (torch.rand(1, 3, hw, hw),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"])
    return path


def test_an_onnx_file_of_another_project_is_named_as_such(tmp_path):
    odd_size = foreign_onnx(tmp_path / "odd.onnx", hw=100, outputs=7)
    with pytest.raises(UserError, match=r"odd.onnx: its input 'x' has shape \[1, 3, 100, 100\], not \[batch, 3, h, w\] "
                                        r"with fixed h and w, multiples of 32; it was not exported by this project; "
                                        r"export a checkpoint with python predict.py --mode=export_onnx") as err:
        OnnxYOLO(onnx_path=str(odd_size))
    assert "input_shape" not in str(err.value)  # no input_shape was given
    feature_map = foreign_onnx(tmp_path / "map.onnx", hw=64, outputs=None)
    with pytest.raises(UserError, match=r"its output 'y' has shape \[1, 8, 62, 62\], not \[batch, boxes, "
                                        r"5 \+ classes\]"):
        OnnxYOLO(onnx_path=str(feature_map), classes_path=str(REPO / "model_data" / "bccd_classes.txt"))
    # Shaped as ours but without metadata: 7 outputs per box = 5 + 2 classes, taken from a classes file of 2.
    fitting = foreign_onnx(tmp_path / "fits.onnx", hw=64, outputs=7)
    with pytest.raises(UserError, match=r"fits.onnx: has no class names in its metadata, so it was not exported by "
                                        r"this project; .*; or pass classes_path"):
        OnnxYOLO(onnx_path=str(fitting))
    with pytest.raises(UserError, match=r"bccd_classes.txt lists 3 classes, but ONNX model .*fits.onnx predicts 2"):
        OnnxYOLO(onnx_path=str(fitting), classes_path=str(REPO / "model_data" / "bccd_classes.txt"))
    (tmp_path / "two.txt").write_text("a\nb\n")
    detector = OnnxYOLO(onnx_path=str(fitting), classes_path=str(tmp_path / "two.txt"))
    assert detector.class_names == ["a", "b"] and detector.input_shape == [64, 64]


@pytest.mark.parametrize("args, named", [
    (["--image_paths=['missing_image.jpg']"], "missing_image.jpg"),
    (["--mode=video", "--video_path=missing_video.mp4"], "missing_video.mp4"),
    (["--mode=dir_predict", "--dir_origin_path=missing_dir"], "missing_dir"),
    (["--mode=predict_onnx", "--onnx_save_path=missing.onnx", f"--image_paths={[str(BCCD_IMAGE)]}"], "missing.onnx"),
    (["--mode=fps", "--fps_image_path=missing_fps.jpg"], "missing_fps.jpg"),
    (["--mode=nonsense"], "--mode=nonsense: expected one of 'predict', 'video'"),
])
def test_missing_inputs_give_a_clear_message(checkpoint, args, named):
    with pytest.raises(SystemExit) as exit_info:
        run_main(args, checkpoint)
    assert isinstance(exit_info.value.code, str) and named in exit_info.value.code


def test_missing_or_unreadable_checkpoint(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        predict.main([f"--model_path={tmp_path / 'nope.pth'}", f"--image_paths={[str(BCCD_IMAGE)]}"])
    assert "nope.pth" in exit_info.value.code
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(SystemExit) as exit_info:
        predict.main([f"--model_path={bad}", f"--image_paths={[str(BCCD_IMAGE)]}"])
    assert "bad.pth" in exit_info.value.code


def test_command_line_postprocess_settings_reach_both_backends(checkpoint):
    cfg = resolve_config(settings_of(vars(predict)), [
        f"--model_path={checkpoint}", "--device=cpu", "--confidence=0.25", "--nms_iou=0.45", "--max_det=7",
        "--nms_type=diou", "--letterbox_image=False", "--backend=onnxruntime"])
    expected = PostprocessSettings(confidence=0.25, nms_iou=0.45, nms_type="diou", max_det=7)
    onnx_detector = predict.build_detector(cfg)
    assert isinstance(onnx_detector, OnnxYOLO)  # YOLO.onnx_detector hands its settings on
    torch_detector = predict.build_detector(cfg, allow_onnx=False)
    for detector in (onnx_detector, torch_detector):
        assert detector.postprocess_settings == expected and detector.letterbox_image is False
