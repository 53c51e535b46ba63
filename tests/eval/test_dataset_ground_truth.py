"""The evaluator's ground truth from dataset records (any format) instead of XMLs beside the images, COCO AP
against a COCO json as pycocotools scores that file, and map_out text files read as users' text files are."""
from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import pycocotools_direct
from PIL import Image

import get_map
from utils.data.dataset import ImageRecord
from utils.eval.coco_eval import coco_ap_against_json
from utils.eval.evaluation import evaluate_voc_images, records_ground_truth
from utils.eval.utils_map import DetBox, GTBox, write_detection_files, write_ground_truth_files

NAMES = ["cat", "dog"]


def record(path: Path, boxes_xyxy: list, class_ids: list, difficult: list, source_id=None) -> ImageRecord:
    return ImageRecord(image_path=str(path), size=(64, 48), boxes_xyxy=np.array(boxes_xyxy, float).reshape(-1, 4),
                       class_ids=np.array(class_ids, np.int64), difficult=np.array(difficult, bool),
                       source_id=source_id)


def test_records_become_ground_truth_with_difficult_flags(tmp_path):
    records = [record(tmp_path / "a.png", [[1, 2, 10.5, 20]], [1], [False]),
               record(tmp_path / "sub" / "b.jpg", [[3, 4, 5, 6], [7, 8, 30, 40]], [0, 1], [True, False]),
               record(tmp_path / "c.jpg", [], [], [])]
    assert records_ground_truth(records, class_names=NAMES) == {
        "a": [GTBox("dog", 1.0, 2.0, 10.5, 20.0, False)],
        "b": [GTBox("cat", 3.0, 4.0, 5.0, 6.0, True), GTBox("dog", 7.0, 8.0, 30.0, 40.0, False)],
        "c": []}


class OneBoxDetector:
    """A dog at (10, 10, 29, 29) with score 0.9 on every image."""

    class_names = NAMES

    def detect(self, image):
        return types.SimpleNamespace(boxes_xyxy=np.array([[10.0, 10.0, 29.0, 29.0]]), scores=np.array([0.9]),
                                     class_ids=np.array([1]))


def test_evaluation_scores_the_records_not_files_beside_the_images(tmp_path):
    for name in ("a", "b"):
        Image.new("RGB", (64, 48)).save(tmp_path / f"{name}.jpg")
    (tmp_path / "Annotations").mkdir()  # an XML where the VOC rule would look is not read with records
    records = [record(tmp_path / "a.jpg", [[10, 10, 29, 29]], [1], [False]),
               record(tmp_path / "b.jpg", [[10, 10, 29, 29]], [1], [True])]
    results = evaluate_voc_images(detector=OneBoxDetector(), records=records, class_names=NAMES)
    # a: TP; b: on a difficult dog, ignored -> one gt, one TP: AP 1; cat has no gt
    assert results["map"] == 1.0 and results["per_class"]["dog"]["n_gt"] == 1 and results["images"] == 2
    with pytest.raises(ValueError, match=r"the detector's classes \['cat', 'dog'\] are not the dataset's"):
        evaluate_voc_images(detector=OneBoxDetector(), records=records, class_names=["dog", "cat"])


def coco_file(path: Path) -> dict:
    """Image ids 101 / 205 / 300, category ids 3 (cat) and 7 (dog), a crowd box and an annotation without area."""
    data = {"images": [{"id": 101, "file_name": "x/a.jpg", "width": 64, "height": 48},
                       {"id": 205, "file_name": "b.jpg", "width": 64, "height": 48},
                       {"id": 300, "file_name": "c.jpg", "width": 64, "height": 48}],
            "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 101, "category_id": 7, "bbox": [10, 10, 20, 20], "area": 400,
                             "iscrowd": 0},
                            {"id": 2, "image_id": 205, "category_id": 3, "bbox": [30.5, 5, 12, 30], "area": 360,
                             "iscrowd": 0},
                            {"id": 3, "image_id": 205, "category_id": 7, "bbox": [0, 0, 40, 40], "area": 1600,
                             "iscrowd": 1},
                            {"id": 4, "image_id": 300, "category_id": 7, "bbox": [2, 3, 50, 40]}]}
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(data, indent=1).replace("\n", "\r\n").encode())  # BOM + CRLF
    return data


def test_coco_ap_against_the_json_equals_pycocotools_on_it(tmp_path):
    data = coco_file(tmp_path / "instances_test.json")
    dets = {"a": [DetBox("dog", 0.9, 11, 9, 31, 30), DetBox("cat", 0.3, 0, 0, 10, 10)],
            "b": [DetBox("cat", 0.8, 30, 6, 43, 35), DetBox("dog", 0.7, 1, 1, 39, 41)],
            "c": [DetBox("dog", 0.6, 2, 3, 40, 40)]}
    results = [{"image_id": image_id, "category_id": category, "bbox": bbox, "score": score}
               for image_id, category, bbox, score in (
                   (101, 7, [11, 9, 20, 21], 0.9), (101, 3, [0, 0, 10, 10], 0.3), (205, 3, [30, 6, 13, 29], 0.8),
                   (205, 7, [1, 1, 38, 40], 0.7), (300, 7, [2, 3, 38, 37], 0.6))]
    data["annotations"][3].update(area=2000, iscrowd=0)  # what pycocotools needs, as the evaluator fills it in
    expected = pycocotools_direct(data, results)
    got = coco_ap_against_json(json_path=str(tmp_path / "instances_test.json"), dets=dets,
                               json_image_ids={"a": 101, "b": 205, "c": 300}, category_ids={"cat": 3, "dog": 7})
    assert [got[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")] == pytest.approx(expected, abs=1e-12)
    assert 0 < got["AP"] < 1
    with pytest.raises(ValueError, match=r"detections of classes \['bird'\]"):
        coco_ap_against_json(json_path=str(tmp_path / "instances_test.json"),
                             dets={"a": [DetBox("bird", 1, 0, 0, 1, 1)]}, json_image_ids={"a": 101},
                             category_ids={"cat": 3, "dog": 7})


def test_map_out_text_files_with_bom_and_crlf_score_as_plain_ones(tmp_path, capsys):
    gt = {"a": [GTBox("dog", 10, 10, 29, 29)], "b": [GTBox("cat", 0, 0, 9, 9, True)]}
    dets = {"a": [DetBox("dog", 0.9, 10, 10, 29, 29)], "b": [DetBox("cat", 0.5, 0, 0, 9, 9)]}
    plain, edited = tmp_path / "plain", tmp_path / "edited"
    for out in (plain, edited):
        write_ground_truth_files(map_out_path=out, gt=gt)
        write_detection_files(map_out_path=out, dets=dets)
    for path in (edited / "ground-truth").glob("*.txt"):  # as an editor on Windows saves them
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    (edited / "skipped-images.txt").write_bytes(b"\xef\xbb\xbfzz\tcannot read\r\n")
    expected = get_map.main(["--map_mode=3", f"--map_out_path={plain}"])
    got = get_map.main(["--map_mode=3", f"--map_out_path={edited}"])
    assert got["map"] == expected["map"] == 1.0 and got["per_class"]["dog"]["n_gt"] == 1
    assert got["per_class"]["cat"]["n_gt"] == 0  # 'difficult' read without its CR
    out = capsys.readouterr().out
    assert "a.txt: a UTF-8 byte-order mark (removed) and Windows line ends" in out
    assert "(and 1 more ground-truth files of" in out and "b.txt: a UTF-8" not in out  # one line for the folder
    assert "1 unreadable images listed" in out
