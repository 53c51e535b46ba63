"""--dataset on every tool: one small generated dataset written here as a VOC devkit, a YOLO-txt and a COCO-json
dataset (from its XMLs, independent of the converter) gives the trainer the same boxes, the evaluator the same
ground truth, get_map.py and kmeans_for_anchors.py the same numbers; COCO AP on the COCO json is pycocotools' on
that file. Expected values come from the XMLs parsed here and from the VOC annotation-file path of each tool."""
from __future__ import annotations

import json
import shutil
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHAPES_CLASSES, pycocotools_direct, write_shapes_voc

import get_map
import kmeans_for_anchors
import predict
import train
from utils.core.config import UserError
from utils.train.settings import resolve_training_config

SPLITS = {"train": range(0, 10), "val": range(10, 13), "test": range(13, 16)}
CATEGORY_IDS = {"circle": 3, "square": 7}  # COCO category ids need not be 0..N-1
# The json's "area" (a mask's, in COCO) sorts objects into small / medium / large, not the box: squares are medium
# there (4 x 660 px > 32^2) though their boxes are small, so only scoring against the json itself gives these APm.
JSON_AREA = {"circle": 1.0, "square": 4.0}
WIDTH, HEIGHT = 128, 96  # write_shapes_voc's image size
TINY = ["--model=yolov4-tiny", "--input_shape=[32,32]", "--anchors_path=auto", "--freeze_train=False",
        "--unfreeze_batch_size=4", "--num_workers=0", "--mosaic=False", "--mixup=False", "--fp16=False",
        "--unfreeze_epoch=1"]


def xml_objects(year: Path, stem: str) -> list[tuple[str, list[float]]]:
    root = ET.parse(year / "Annotations" / f"{stem}.xml").getroot()
    return [(obj.findtext("name"), [float(obj.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
            for obj in root.iter("object")]


def expected_boxes(year: Path, split: str) -> dict[str, np.ndarray]:
    """image stem -> (n, 5) [x1, y1, x2, y2, class index] of its XML: what every format must give."""
    return {f"shape_{i:03d}": np.array([[*box, SHAPES_CLASSES.index(name)] for name, box in
                                        xml_objects(year, f"shape_{i:03d}")], dtype=np.float64).reshape(-1, 5)
            for i in SPLITS[split]}


def write_formats(root: Path) -> dict[str, Path]:
    """The shapes dataset as VOC (image lists added), YOLO txt (data.yaml) and COCO json (category ids 3 and 7,
    image ids from 1000); returns format -> dataset folder."""
    year = write_shapes_voc(root, images=16) / "VOC2007"
    (year / "ImageSets" / "Main").mkdir(parents=True)
    yolo, coco = root / "yolo", root / "coco"
    (coco / "annotations").mkdir(parents=True)
    for split, indices in SPLITS.items():
        (year / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"shape_{i:03d}\n" for i in indices))
        for folder in (yolo / "images" / split, yolo / "labels" / split, coco / "images" / split):
            folder.mkdir(parents=True)
        images, annotations = [], []
        for i in indices:
            stem = f"shape_{i:03d}"
            shutil.copy(year / "JPEGImages" / f"{stem}.jpg", yolo / "images" / split)
            shutil.copy(year / "JPEGImages" / f"{stem}.jpg", coco / "images" / split)
            objects = xml_objects(year, stem)
            (yolo / "labels" / split / f"{stem}.txt").write_text("".join(
                f"{SHAPES_CLASSES.index(name)} {(x1 + x2) / 2 / WIDTH!r} {(y1 + y2) / 2 / HEIGHT!r} "
                f"{(x2 - x1) / WIDTH!r} {(y2 - y1) / HEIGHT!r}\n" for name, (x1, y1, x2, y2) in objects))
            images.append({"id": 1000 + i, "file_name": f"{stem}.jpg", "width": WIDTH, "height": HEIGHT})
            annotations += [{"id": len(annotations) + 1, "image_id": 1000 + i, "category_id": CATEGORY_IDS[name],
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": JSON_AREA[name] * (x2 - x1) * (y2 - y1),
                             "iscrowd": 0}
                            for name, (x1, y1, x2, y2) in objects]
        categories = [{"id": CATEGORY_IDS[name], "name": name} for name in SHAPES_CLASSES]
        (coco / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}))
    (yolo / "data.yaml").write_text("train: images/train\nval: images/val\ntest: images/test\n"
                                    f"names: [{', '.join(SHAPES_CLASSES)}]\n")
    return {"voc": root / "VOCdevkit", "yolo": yolo, "coco": coco}


class ColourDetector:
    """Stands in for yolo.YOLO: finds the red circles and blue squares write_shapes_voc paints (one box per
    connected blob, scored by its area), so the mAP is well above zero."""

    class_names = list(SHAPES_CLASSES)

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def detect(self, image):
        rgb = np.asarray(image).astype(np.int64)
        boxes, scores, class_ids = [], [], []
        for class_id, (high, low) in enumerate(((0, 2), (2, 0))):  # circle: red over blue; square: blue over red
            mask = ((rgb[..., high] - rgb[..., low]) > 100).astype(np.uint8)
            count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
            for x, y, w, h, area in stats[1:count].tolist():
                if area >= 20:
                    boxes.append([x, y, x + w - 1, y + h - 1])
                    scores.append(min(1.0, area / 700))
                    class_ids.append(class_id)
        return types.SimpleNamespace(boxes_xyxy=np.array(boxes, float).reshape(-1, 4), scores=np.array(scores),
                                     class_ids=np.array(class_ids, np.int64))


@pytest.fixture(scope="module")
def formats(module_tmp) -> tuple[Path, dict[str, Path]]:
    return module_tmp, write_formats(module_tmp)


@pytest.fixture(scope="module")
def trained(formats) -> dict[str, dict]:
    """A few steps from each format with the in-training mAP on: the boxes the loader got and the ground truth the
    evaluator scored (captured where it is scored)."""
    root, paths = formats
    out = {}
    for fmt, path in paths.items():
        scored = []
        with pytest.MonkeyPatch.context() as patch:
            import utils.eval.evaluation as evaluation

            real = evaluation.score_detections
            patch.setattr(evaluation, "score_detections", lambda **kw: scored.append(kw["gt"]) or real(**kw))
            run = train.main([f"--dataset={path}", *TINY, "--eval_flag=True", "--eval_period=1",
                              f"--save_dir={root / ('logs_' + fmt)}"])
        loader = {Path(p).stem: boxes for p, boxes in zip(run.train_set.image_paths, run.train_set.boxes_list)}
        out[fmt] = {"run": run, "loader": loader, "gt": scored[-1]}
    return out


def test_the_trainer_gets_the_xml_boxes_from_every_format(formats, trained):
    root, paths = formats
    expected = expected_boxes(paths["voc"] / "VOC2007", "train")
    for fmt, got in trained.items():
        assert sorted(got["loader"]) == sorted(expected), fmt
        for stem, boxes in expected.items():
            np.testing.assert_allclose(got["loader"][stem], boxes, atol=1e-4, err_msg=f"{fmt} {stem}")
        config = got["run"].run_config
        assert config["dataset"] == str(paths[fmt]) and config["dataset_format"] == "auto"
        assert config["class_names"] == list(SHAPES_CLASSES) and config["classes_path"] is None
        saved = json.loads((root / f"logs_{fmt}" / "config.json").read_text())
        assert saved["dataset"] == str(paths[fmt]) and saved["class_names"] == list(SHAPES_CLASSES)
        assert saved["dataset_read_as"] == fmt


def test_the_evaluator_scores_the_val_records_of_every_format(formats, trained):
    _, paths = formats
    expected = expected_boxes(paths["voc"] / "VOC2007", "val")
    for fmt, got in trained.items():
        gt = got["gt"]
        assert sorted(gt) == sorted(expected), fmt
        for stem, boxes in expected.items():
            scored = np.array([[b.x1, b.y1, b.x2, b.y2, SHAPES_CLASSES.index(b.class_name)] for b in gt[stem]])
            np.testing.assert_allclose(scored.reshape(-1, 5), boxes, atol=1e-9, err_msg=f"{fmt} {stem}")
            assert not any(b.difficult for b in gt[stem])


def test_classes_path_default_and_the_datasets_names():
    assert resolve_training_config(train.TrainConfig, []).classes_path == "model_data/bccd_classes.txt"
    assert resolve_training_config(train.TrainConfig, ["--dataset=somewhere"]).classes_path is None
    given = resolve_training_config(train.TrainConfig, ["--dataset=somewhere", "--classes_path=mine.txt"])
    assert given.classes_path == "mine.txt"


def test_a_classes_file_that_disagrees_with_the_dataset_is_refused(formats, tmp_path):
    _, paths = formats
    (tmp_path / "swapped.txt").write_text("square\ncircle\n")
    with pytest.raises(UserError, match=r"swapped\.txt lists \['square', 'circle'\]"):
        train.main([f"--dataset={paths['yolo']}", *TINY, f"--classes_path={tmp_path / 'swapped.txt'}",
                    f"--save_dir={tmp_path / 'logs'}"])
    assert not (tmp_path / "logs" / "config.json").exists()


def map_argv(out: Path, *extra: str) -> list[str]:
    return ["--map_mode=0", f"--map_out_path={out}", "--device=cpu", "--backend=torch", *extra]


def test_get_map_gives_the_same_map_on_every_format_and_the_voc_files(formats, trained, tmp_path):
    """One checkpoint, scored on the test split of each format and on the VOC image set as before."""
    root, paths = formats
    checkpoint = f"--model_path={root / 'logs_voc' / 'last_epoch_weights.pth'}"
    classic = get_map.main(map_argv(tmp_path / "classic", checkpoint, f"--VOCdevkit_path={paths['voc']}"))
    for fmt, path in paths.items():
        got = get_map.main(map_argv(tmp_path / fmt, checkpoint, f"--dataset={path}"))
        assert got["map"] == pytest.approx(classic["map"], abs=1e-12), fmt
        assert {k: v["n_gt"] for k, v in got["per_class"].items()} == {
            k: v["n_gt"] for k, v in classic["per_class"].items()} == {"circle": 2, "square": 3}
        for folder in ("detection-results", "ground-truth"):
            names = sorted(p.name for p in (tmp_path / "classic" / folder).iterdir())
            assert names == sorted(p.name for p in (tmp_path / fmt / folder).iterdir())
        det = {p.name: p.read_text() for p in (tmp_path / fmt / "detection-results").iterdir()}
        assert det == {p.name: p.read_text() for p in (tmp_path / "classic" / "detection-results").iterdir()}


@pytest.fixture()
def colour_detector(monkeypatch):
    monkeypatch.setitem(sys.modules, "yolo", types.SimpleNamespace(YOLO=ColourDetector))


def test_get_map_with_a_detector_that_finds_the_shapes(formats, colour_detector, tmp_path):
    _, paths = formats
    classic = get_map.main(map_argv(tmp_path / "classic", f"--VOCdevkit_path={paths['voc']}"))
    assert classic["map"] > 0.5
    for fmt, path in paths.items():
        got = get_map.main(map_argv(tmp_path / fmt, f"--dataset={path}"))
        assert got["map"] == pytest.approx(classic["map"], abs=1e-12), fmt
        assert got["map_voc07"] == pytest.approx(classic["map_voc07"], abs=1e-12), fmt
    val = get_map.main(map_argv(tmp_path / "val", f"--dataset={paths['yolo']}", "--split=val"))
    assert sorted(p.stem for p in (tmp_path / "val" / "ground-truth").iterdir()) == [
        f"shape_{i:03d}" for i in SPLITS["val"]]
    assert val["images"] == 3


def test_coco_ap_on_a_coco_dataset_is_pycocotools_on_its_json(formats, colour_detector, tmp_path):
    _, paths = formats
    out = tmp_path / "coco"
    got = get_map.main(map_argv(out, f"--dataset={paths['coco']}"))
    data = json.loads((paths["coco"] / "annotations" / "instances_test.json").read_text())
    results = []
    for path in sorted((out / "detection-results").glob("*.txt")):
        for line in path.read_text().splitlines():
            name, score, x1, y1, x2, y2 = line.split()
            x1, y1, x2, y2 = map(float, (x1, y1, x2, y2))
            results.append({"image_id": 1000 + int(path.stem[-3:]), "category_id": CATEGORY_IDS[name],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    expected = pycocotools_direct(data, results)
    assert [got["coco"][k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")] == pytest.approx(expected, abs=1e-12)
    assert got["coco"]["AP"] > 0.1 and got["coco"]["APm"] > 0  # medium by the json's areas (by the boxes: -1)
    again = get_map.main(["--map_mode=4", f"--map_out_path={out}", f"--dataset={paths['coco']}"])
    assert again["coco"] == got["coco"]  # mode 4 from the text files: the same json scoring


def test_kmeans_on_a_dataset_equals_kmeans_on_the_voc_file(formats, tmp_path):
    _, paths = formats
    year = paths["voc"] / "VOC2007"
    lines = [" ".join([str(year / "JPEGImages" / f"{stem}.jpg")] + [",".join(str(int(v)) for v in box)
                                                                     for box in boxes])
             for stem, boxes in expected_boxes(year, "train").items()]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    settings = ["--model=yolov4-tiny", "--input_shape=[64,64]"]
    expected = kmeans_for_anchors.main([f"--annotation_path={tmp_path / 'train.txt'}", *settings])
    assert expected["boxes"] == 14
    for fmt, path in paths.items():
        got = kmeans_for_anchors.main([f"--dataset={path}", *settings])
        np.testing.assert_allclose(got["anchors"], expected["anchors"], atol=1e-6, err_msg=fmt)
        assert got["boxes"] == expected["boxes"]


def test_predict_detects_a_splits_images_and_refuses_other_classes(formats, trained, tmp_path):
    root, paths = formats
    checkpoint = f"--model_path={root / 'logs_voc' / 'last_epoch_weights.pth'}"
    common = ["--mode=dir_predict", checkpoint, "--split=val", "--device=cpu", "--backend=torch"]
    report = predict.main([*common, f"--dataset={paths['coco']}", f"--dir_save_path={tmp_path / 'out'}"])
    assert sorted(report["images"]) == [f"shape_{i:03d}.jpg" for i in SPLITS["val"]]
    other = tmp_path / "other"
    shutil.copytree(paths["yolo"], other)
    (other / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [disc, box]\n")
    with pytest.raises(SystemExit, match=r"trained on the classes circle, square, but dataset .*other names disc, box"):
        predict.main([*common, f"--dataset={other}", f"--dir_save_path={tmp_path / 'out2'}"])
    assert not (tmp_path / "out2" / "detections.json").exists()
    (other / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [square, circle]\n")
    with pytest.raises(SystemExit, match=r"names the same classes in another order \(square, circle\); pass "
                                         r"--classes_path with a classes file listing them in the model's order"):
        predict.main([*common, f"--dataset={other}", f"--dir_save_path={tmp_path / 'out2'}"])


def test_compare_on_a_dataset_scores_its_test_split_reuses_runs_and_selects_on_val(formats, tmp_path, capsys):
    import compare_focal
    from utils.core.config import ConfigError

    _, paths = formats
    out = tmp_path / "out"
    argv = [f"--dataset={paths['yolo']}", "--config=configs/bccd_tiny.toml", "--classes_path=None",
            f"--results_dir={out}", "--parallel=1", "--bootstrap=100", *TINY]
    rows = compare_focal.main(argv)
    assert [row["arm"] for row in rows] == ["bce", "focal"]
    runs = sorted((out / "runs").iterdir())
    expected = expected_boxes(paths["voc"] / "VOC2007", "test")
    for run in runs:
        evaluation = json.loads((run / "eval.json").read_text())
        assert evaluation["test_annotation_path"] == f"{paths['yolo']} (yolo) test"
        with np.load(run / "eval_images.npz") as scored:
            assert scored["image_ids"].tolist() == sorted(expected)
            n_gt = [[int((boxes[:, 4] == c).sum()) for c in range(2)] for _, boxes in sorted(expected.items())]
            assert scored["n_gt"].tolist() == n_gt
        assert json.loads((run / "run_config.json").read_text())["dataset"] == str(paths["yolo"])
    stamps = {run: (run / "eval.json").stat().st_mtime for run in runs}
    capsys.readouterr()
    compare_focal.main(argv)
    assert capsys.readouterr().out.count("finished earlier with the same settings, reused") == 2
    assert all((run / "eval.json").stat().st_mtime == stamp for run, stamp in stamps.items())

    compare_focal.main([*argv, "--select_on=val"])  # the same runs (they train on train either way), scored on val
    for run in runs:
        assert json.loads((run / "eval.json").read_text())["test_annotation_path"] == f"{paths['yolo']} (yolo) val"
        with np.load(run / "eval_images.npz") as scored:
            assert scored["image_ids"].tolist() == [f"shape_{i:03d}" for i in SPLITS["val"]]
    assert f"Scored on the validation split ({paths['yolo']} (yolo) val;" in (out / "summary.md").read_text()

    with pytest.raises(ConfigError, match=r"dataset '.*yolo' -> '.*coco'"):
        compare_focal.main([f"--dataset={paths['coco']}", *argv[1:]])
    shared = tmp_path / "shared"
    shutil.copytree(paths["yolo"], shared)
    (shared / "data.yaml").write_text("train: images/train\nval: [images/val, images/train]\nnames: [circle, square]\n")
    with pytest.raises(ConfigError, match=r"--select_on=val: the val and train splits of .*shared \(yolo\) share 10"):
        compare_focal.main([f"--dataset={shared}", *argv[1:], f"--results_dir={tmp_path / 'out2'}", "--select_on=val"])
    assert not (tmp_path / "out2" / "runs").exists()
