"""COCO-style AP (AP@[.5:.95], AP50, AP75, by object size) through pycocotools.

Inputs are the same records as utils.eval.utils_map (pixel `xyxy`). They are converted in memory to COCO
dicts: boxes become `[x, y, w, h]` with w = x2 - x1 (COCO has no +1 pixel convention), difficult
objects become iscrowd=1 (pycocotools then neither rewards nor penalises detections on them). A dataset that is a
COCO json is scored against that json itself (coco_ap_against_json), as pycocotools run on the file scores it.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from utils.core.textfile import read_text_lines
from utils.eval.utils_map import DetBox, GTBox

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def to_coco_dicts(*, gt: dict[str, list[GTBox]], dets: dict[str, list[DetBox]], class_names: list[str]
                  ) -> tuple[dict, list[dict], dict[str, int]]:
    """COCO ground-truth dataset dict, result list and the image_id -> int id map (1-based, sorted ids)."""
    class_to_cat = {name: i + 1 for i, name in enumerate(class_names)}

    def category(name: str, image_id: str) -> int:
        if name not in class_to_cat:
            raise ValueError(f"image '{image_id}': class '{name}' is not in class_names {class_names}")
        return class_to_cat[name]

    image_ids = {image_id: k + 1 for k, image_id in enumerate(sorted(set(gt) | set(dets)))}
    annotations = []
    for image_id, boxes in gt.items():
        for box in boxes:
            w, h = box.x2 - box.x1, box.y2 - box.y1
            annotations.append({"id": len(annotations) + 1, "image_id": image_ids[image_id],
                                "category_id": category(box.class_name, image_id),
                                "bbox": [box.x1, box.y1, w, h], "area": w * h,
                                "iscrowd": int(bool(box.difficult))})
    results = [{"image_id": image_ids[image_id], "category_id": category(box.class_name, image_id),
                "bbox": [box.x1, box.y1, box.x2 - box.x1, box.y2 - box.y1], "score": float(box.score)}
               for image_id, boxes in dets.items() for box in boxes]
    dataset = {"images": [{"id": k} for k in image_ids.values()],
               "annotations": annotations,
               "categories": [{"id": c, "name": name} for name, c in class_to_cat.items()]}
    return dataset, results, image_ids


def coco_eval_dicts(*, dataset: dict, results: list[dict], verbose: bool = False,
                    image_ids: list[int] | None = None) -> dict:
    """Run COCOeval (bbox) on in-memory dicts; returns COCO_KEYS -> float (-1 where pycocotools says undefined).
    ``image_ids``: score these images of ``dataset`` only (None: all, pycocotools' default).

    With no results at all pycocotools cannot load them, so every value is 0.0.
    """
    if not results:
        return {key: 0.0 for key in COCO_KEYS}
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(dataset)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))  # loadRes adds keys to the dicts it gets
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if verbose:
        print(log.getvalue(), end="")
    return {key: float(value) for key, value in zip(COCO_KEYS, np.asarray(evaluator.stats)[:len(COCO_KEYS)])}


def coco_ap(*, gt: dict[str, list[GTBox]], dets: dict[str, list[DetBox]], class_names: list[str],
            verbose: bool = False) -> dict:
    """COCO box AP of `dets` against `gt` (image_id -> pixel `xyxy` records). Keys: COCO_KEYS."""
    dataset, results, _ = to_coco_dicts(gt=gt, dets=dets, class_names=class_names)
    return coco_eval_dicts(dataset=dataset, results=results, verbose=verbose)


def coco_ap_against_json(*, json_path: str, dets: dict[str, list[DetBox]], json_image_ids: dict[str, int],
                         category_ids: dict[str, int], verbose: bool = False) -> dict:
    """COCO box AP of ``dets`` (image id -> pixel ``xyxy`` detections) against a COCO instances json as it is, so
    the figures are those of pycocotools run on that file with the same detections: each image id is mapped to its
    id in the json (``json_image_ids``, which also chooses the images scored) and each class name to its category
    id (``category_ids``). Annotations without "area" or "iscrowd" get w * h and 0 (pycocotools needs both).
    Keys: COCO_KEYS."""
    dataset = json.loads("\n".join(read_text_lines(json_path, what="COCO json")))
    for annotation in dataset.get("annotations", []):
        annotation.setdefault("area", annotation["bbox"][2] * annotation["bbox"][3])
        annotation.setdefault("iscrowd", 0)
    unknown = sorted({box.class_name for boxes in dets.values() for box in boxes} - set(category_ids))
    if unknown:
        raise ValueError(f"{json_path}: detections of classes {unknown} that the json has no category for")
    results = [{"image_id": json_image_ids[image_id], "category_id": category_ids[box.class_name],
                "bbox": [box.x1, box.y1, box.x2 - box.x1, box.y2 - box.y1], "score": float(box.score)}
               for image_id, boxes in dets.items() if image_id in json_image_ids for box in boxes]
    return coco_eval_dicts(dataset=dataset, results=results, verbose=verbose,
                           image_ids=list(json_image_ids.values()))
