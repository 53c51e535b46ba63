"""get_map.py as a user runs it: modes 0-4 on text files and a stub detector, its settings and the errors that
stop it, against the golden files and hand-computed values."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import GOLDEN_AP, assert_truncated_equal, golden_coco_json, load_golden, pycocotools_direct
from PIL import Image

import get_map
from utils.core.config import ConfigError, UserError
from utils.eval.evaluation import predict_images
from utils.eval.utils_map import DetBox, GTBox, evaluate_detections, write_detection_files, write_ground_truth_files
from utils.infer.postprocess import PostprocessSettings


def write_golden_map_out(map_out: Path) -> None:
    write_ground_truth_files(map_out_path=map_out, gt=load_golden("groundtruths", detections=False))
    write_detection_files(map_out_path=map_out, dets=load_golden("detections", detections=True))


def test_get_map_mode3_and_mode4_from_text_files(tmp_path, capsys):
    map_out = tmp_path / "map_out"
    write_golden_map_out(map_out)
    get_map.main(["--map_mode=3", f"--map_out_path={map_out}", "--MINOVERLAP=0.3"])
    saved = json.loads((map_out / "results.json").read_text())
    assert_truncated_equal(saved["map"], GOLDEN_AP[0.3][1])
    assert_truncated_equal(saved["map_voc07"], GOLDEN_AP[0.3][0])
    assert saved["per_class"]["person"]["n_gt"] == 15 and "coco" not in saved
    assert {"ap", "ap_voc07", "n_gt"} <= set(saved["per_class"]["person"])
    assert "mAP@0.3" in capsys.readouterr().out

    get_map.main(["--map_mode=4", f"--map_out_path={map_out}"])
    saved = json.loads((map_out / "results.json").read_text())
    assert_truncated_equal(saved["map"], GOLDEN_AP[0.5][1])
    expected = pycocotools_direct(*golden_coco_json())
    assert [saved["coco"][k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")] == pytest.approx(expected, abs=1e-12)


def test_modes_3_and_4_refuse_a_missing_half_instead_of_scoring_zero(tmp_path):
    map_out = tmp_path / "map_out"
    with pytest.raises(UserError, match=r"map_out_path .*map_out: no such folder; map_mode 0 writes the ground truth "
                                        r"and the detections there \(or map_mode 2 and map_mode 1\)"):
        get_map.main(["--map_mode=3", f"--map_out_path={map_out}"])
    write_ground_truth_files(map_out_path=map_out, gt=load_golden("groundtruths", detections=False))
    with pytest.raises(UserError, match=r"map_out/detection-results: no such folder; map_mode 1 \(or 0\) writes the "
                                        r"detections of the image set there"):
        get_map.main(["--map_mode=3", f"--map_out_path={map_out}"])
    assert not (map_out / "results.json").exists()
    dets = load_golden("detections", detections=True)
    write_detection_files(map_out_path=map_out, dets={i: boxes for i, boxes in dets.items() if i != "00003"})
    with pytest.raises(UserError, match=r"no detection file for 1 of the 7 evaluated images, e.g. '00003'; run "
                                        r"map_mode 1 \(or 0\) for this image set"):
        get_map.main(["--map_mode=4", f"--map_out_path={map_out}"])

    only_dets = tmp_path / "only_dets"
    write_detection_files(map_out_path=only_dets, dets=dets)
    with pytest.raises(UserError, match=r"only_dets/ground-truth: no such folder; map_mode 2 \(or 0\) writes"):
        get_map.main(["--map_mode=4", f"--map_out_path={only_dets}"])
    (only_dets / "ground-truth").mkdir()
    with pytest.raises(UserError, match=r"ground-truth: holds no ground-truth files; map_mode 2 \(or 0\) writes"):
        get_map.main(["--map_mode=3", f"--map_out_path={only_dets}"])
    write_ground_truth_files(map_out_path=only_dets, gt={i: [] for i in dets})  # background images only
    with pytest.raises(UserError, match=r"the 7 evaluated images hold no ground-truth object, so there is no AP"):
        get_map.main(["--map_mode=3", f"--map_out_path={only_dets}"])
    assert not (only_dets / "results.json").exists()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match=r"map_out_path .*a_file: is a file, not a folder"):
        get_map.main(["--map_mode=2", f"--map_out_path={tmp_path / 'a_file'}"])


def test_settings_types_and_errors(tmp_path):
    map_out = tmp_path / "map_out"
    write_golden_map_out(map_out)
    # Typed overrides: int, float and bool words convert; the result matches the golden AP at IoU 0.1.
    results = get_map.main(["--map_mode=3", f"--map_out_path={map_out}", "--MINOVERLAP=0.1", "--map_vis=no",
                            "--classes_path=none"])
    assert_truncated_equal(results["map"], GOLDEN_AP[0.1][1])
    with pytest.raises(ConfigError, match="unknown setting 'unknown_key'"):
        get_map.main(["--unknown_key=1", f"--map_out_path={map_out}"])
    with pytest.raises(ConfigError, match=r"did you mean map_mode"):
        get_map.main(["--mapmode=1"])
    for bad, key in [("--map_mode=0.5", "map_mode"), ("--map_vis=maybe", "map_vis"),
                     ("--MINOVERLAP=high", "MINOVERLAP"), ("--input_shape=416", "input_shape"),
                     ("--input_shape=[416.5,416]", "input_shape")]:
        with pytest.raises(ConfigError, match=f"--{key}=.*: expected"):
            get_map.main([bad, "--map_mode=3", f"--map_out_path={map_out}"])
    with pytest.raises(ConfigError, match="--key=value"):
        get_map.main(["map_mode=1"])
    for mode in (-1, 5):
        with pytest.raises(ConfigError, match=f"--map_mode={mode}: expected one of 0, 1, 2, 3, 4"):
            get_map.main([f"--map_mode={mode}", f"--map_out_path={map_out}"])


class FakeDetector:
    """Stands in for yolo.YOLO: one fixed box for every image, on whichever engine backend=auto picks."""

    class_names = ["RBC", "WBC"]
    device = torch.device("cpu")
    torch_compile = False
    instances: list = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.seen_sizes = []
        FakeDetector.instances.append(self)

    def openvino_detector(self, *, precision: str):
        return self

    def detect(self, image):
        assert image.mode == "RGB"
        self.seen_sizes.append(image.size)
        return types.SimpleNamespace(boxes_xyxy=np.array([[10.0, 10.0, 29.0, 29.0]]), scores=np.array([0.9]),
                                     class_ids=np.array([0]))


def make_voc(root: Path, extensions: tuple[str, str] = (".jpg", ".jpg")) -> None:
    year = root / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True)
    (year / "ImageSets/Main/test.txt").write_text("img_b\nimg_a\n")
    for ext, (image_id, (x1, y1)) in zip(extensions, {"img_a": (10, 10), "img_b": (40, 40)}.items()):
        Image.new("RGB", (64, 64)).save(year / "JPEGImages" / f"{image_id}{ext}",
                                        format="PNG" if ext.lower() == ".png" else "JPEG")
        (year / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><object><name>RBC</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x1 + 19}</xmax><ymax>{y1 + 19}</ymax></bndbox></object></annotation>")


def test_predict_images_uses_detector_interface(tmp_path):
    make_voc(tmp_path)
    path = tmp_path / "VOC2007" / "JPEGImages" / "img_a.jpg"
    predictions = predict_images(detector=FakeDetector(), image_paths={"img_a": path})
    assert predictions.dets == {"img_a": [DetBox("RBC", 0.9, 10.0, 10.0, 29.0, 29.0)]}
    assert predictions.unreadable == {}


def test_get_map_mode0_with_stub_detector(tmp_path, monkeypatch):
    make_voc(tmp_path / "VOCdevkit")
    monkeypatch.setitem(sys.modules, "yolo", types.SimpleNamespace(YOLO=FakeDetector))
    monkeypatch.setattr(FakeDetector, "instances", [])
    map_out = tmp_path / "map_out"
    results = get_map.main(["--map_mode=0", f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}",
                            f"--map_out_path={map_out}"])
    # Defaults reach the detector: settings from the checkpoint, current post-processing.
    assert FakeDetector.instances[0].kwargs == {
        "model_path": "logs/best_epoch_weights.pth", "classes_path": None, "anchors_path": None, "anchors_mask": None,
        "model": None, "input_shape": None, "letterbox_image": True,
        "postprocess_settings": PostprocessSettings(confidence=0.001, nms_iou=0.5, nms_type="nms", multi_label=False),
        "device": "auto", "precision": "auto", "cfg_path": None, "torch_compile": False}
    # The same-score tie is ranked in sorted image order: img_a TP, img_b FP -> recall 1/2, precision 1 then 1/2.
    assert results["map"] == pytest.approx(0.5) and results["map_voc07"] == pytest.approx(6 / 11)
    saved = json.loads((map_out / "results.json").read_text())
    assert saved["per_class"]["WBC"]["ap"] is None and saved["per_class"]["RBC"]["n_gt"] == 2
    assert set(saved["coco"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert saved["coco"]["AP50"] == pytest.approx(51 / 101)  # 101-point recall grid: 0 .. 0.5 at precision 1
    for png in ("ap_per_class.png", "pr_curves/pr_RBC.png", "ground_truth_stats.png"):
        assert (map_out / png).stat().st_size > 0


def test_modes_1_and_2_write_one_half_each_and_the_second_evaluates(tmp_path, monkeypatch, capsys):
    make_voc(tmp_path / "VOCdevkit")
    monkeypatch.setitem(sys.modules, "yolo", types.SimpleNamespace(YOLO=FakeDetector))
    monkeypatch.setattr(FakeDetector, "instances", [])
    map_out = tmp_path / "map_out"
    args = [f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}", f"--map_out_path={map_out}"]
    assert get_map.main(["--map_mode=1", "--map_vis=true", *args]) is None
    assert "lacks the ground truth; run mode 2, then mode 3 or 4" in capsys.readouterr().out
    assert sorted(p.name for p in (map_out / "detection-results").iterdir()) == ["img_a.txt", "img_b.txt"]
    assert not (map_out / "ground-truth").exists()  # mode 1 reads the XMLs only to draw them
    assert sorted(p.name for p in (map_out / "images-optional").iterdir()) == ["img_a.jpg", "img_b.jpg"]
    results = get_map.main(["--map_mode=2", *args])
    assert len(FakeDetector.instances) == 1  # mode 2 predicts nothing
    # The same hand-computed values as mode 0 on this set: img_a TP, img_b FP at the same score.
    assert results["map"] == pytest.approx(0.5) and results["map_voc07"] == pytest.approx(6 / 11)
    assert "coco" not in results and not (map_out / "ap_per_class.png").exists()  # COCO AP and plots: modes 0 / 4


def test_get_map_detector_settings_and_image_extensions(tmp_path, monkeypatch):
    make_voc(tmp_path / "VOCdevkit", extensions=(".JPG", ".png"))
    monkeypatch.setitem(sys.modules, "yolo", types.SimpleNamespace(YOLO=FakeDetector))
    monkeypatch.setattr(FakeDetector, "instances", [])
    map_out = tmp_path / "map_out"
    results = get_map.main(["--map_mode=0", f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}", f"--map_out_path={map_out}",
                            "--input_shape=[320,288]", "--letterbox_image=false", "--multi_label=true",
                            "--nms_type=diou", "--device=cpu", "--confidence=0.25", "--nms_iou=0.45"])
    kwargs = FakeDetector.instances[0].kwargs
    assert kwargs["input_shape"] == [320, 288] and kwargs["letterbox_image"] is False
    assert kwargs["device"] == "cpu"
    assert kwargs["postprocess_settings"] == PostprocessSettings(confidence=0.25, nms_iou=0.45, nms_type="diou",
                                                                 multi_label=True)
    assert FakeDetector.instances[0].seen_sizes == [(64, 64), (64, 64)]  # img_b.png and img_a.JPG were both read
    assert results["map"] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="--nms_type=soft: expected one of 'nms', 'diou'"):
        get_map.main(["--map_mode=1", f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}", "--nms_type=soft",
                      f"--map_out_path={map_out}"])

    (tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages" / "img_b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"test\.txt: image id 'img_b' \(1 of 2 ids\) has no image"):
        get_map.main(["--map_mode=1", f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}", f"--map_out_path={tmp_path / 'x'}"])
    assert len(FakeDetector.instances) == 1  # the missing image is found before a detector is built
    # Mode 2 reads only the XMLs, so a missing image does not stop it.
    get_map.main(["--map_mode=2", f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}", f"--map_out_path={tmp_path / 'gt'}"])
    assert sorted(p.name for p in (tmp_path / "gt" / "ground-truth").iterdir()) == ["img_a.txt", "img_b.txt"]


def test_an_image_set_of_unreadable_images_is_an_error(tmp_path, monkeypatch):
    make_voc(tmp_path / "VOCdevkit")
    for image in (tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages").iterdir():
        image.write_bytes(b"not an image")
    monkeypatch.setitem(sys.modules, "yolo", types.SimpleNamespace(YOLO=FakeDetector))
    with pytest.raises(UserError, match=r"none of the 2 images of the image set can be read: cannot decode image "
                                        r".*img_b.jpg: .*; fix or remove it$"):
        get_map.main(["--map_mode=0", f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}",
                      f"--map_out_path={tmp_path / 'map_out'}"])


def test_a_classes_file_naming_other_classes_is_refused(tmp_path):
    """get_map.py with a checkpoint and another dataset's classes file of the same length: refused by name."""
    import torch

    from nets.yolo import build_model

    make_voc(tmp_path / "VOCdevkit")
    config = {"model": "yolov4-tiny", "class_names": ["RBC", "WBC", "Platelets"], "input_shape": [64, 64],
              "anchors": [[10.0, 14.0], [23.0, 27.0], [37.0, 58.0], [81.0, 82.0], [135.0, 169.0], [344.0, 319.0]],
              "anchors_mask": [[3, 4, 5], [1, 2, 3]]}
    torch.save({"model": build_model(model="yolov4-tiny", num_classes=3).state_dict(), "config": config},
               tmp_path / "tiny.pth")
    (tmp_path / "abc.txt").write_text("a\nb\nc\n")
    with pytest.raises(UserError, match=r"abc.txt: class 0 is 'a', but checkpoint .*tiny.pth was trained with 'RBC'"):
        get_map.main(["--map_mode=1", f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}", "--device=cpu",
                      f"--model_path={tmp_path / 'tiny.pth'}", f"--classes_path={tmp_path / 'abc.txt'}",
                      f"--map_out_path={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()


def test_plots_survive_a_class_with_ground_truth_but_no_detections(tmp_path):
    from utils.eval.map_plots import plot_ap_bars, plot_pr_curves

    gt = {"a": [GTBox("cat", 0, 0, 9, 9), GTBox("dog", 20, 20, 29, 29)]}
    dets = {"a": [DetBox("cat", 0.9, 0, 0, 9, 9)]}
    results = evaluate_detections(gt=gt, dets=dets, class_names=["cat", "dog"])
    assert results["per_class"]["dog"]["ap"] == 0.0
    paths = plot_pr_curves(results=results, out_dir=tmp_path)
    assert sorted(p.name for p in paths) == ["pr_cat.png", "pr_dog.png"]
    plot_ap_bars(results=results, out_dir=tmp_path)
