"""The one evaluator behind get_map.py, in-training mAP and the comparison tool.

    results = evaluate_voc_images(detector=detector, image_paths=paths, class_names=names, coco=True)

A detector is any object with ``class_names`` and ``detect(pil_image)`` returning ``boxes_xyxy`` (n, 4) in
original-image pixels, ``scores`` (n,) and ``class_ids`` (n,) (yolo.YOLO, OnnxYOLO, a test stub); it is passed
in, so nothing here imports a script. Ground truth comes from the VOC XML next to each image
(``<year>/JPEGImages/<id>.jpg`` -> ``<year>/Annotations/<id>.xml``), or, given ``records`` of a dataset split
(utils/data/dataset.py: a VOC devkit, YOLO txt or COCO json), from those records. An image with no XML, or an XML
or record without objects, is a background image: it has no ground truth and every detection on it is a false
positive. An image that cannot be read is reported and left out of the evaluation (its ground truth
too), so one bad file never stops a long prediction pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from utils.core.distributed import DistInfo, all_gather_objects
from utils.data.images import read_image_rgb
from utils.eval.coco_eval import coco_ap
from utils.eval.utils_map import DetBox, GTBox, evaluate_detections, read_voc_ground_truth


@dataclass
class Predictions:
    """Detections per image id (pixel ``xyxy``) and the images that could not be read (id -> reason)."""

    dets: dict[str, list[DetBox]] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)


def voc_annotation_path(image_path: str | Path) -> Path:
    """The VOC XML of an image: <year>/JPEGImages/<id>.<ext> -> <year>/Annotations/<id>.xml."""
    image_path = Path(image_path)
    return image_path.parents[1] / "Annotations" / f"{image_path.stem}.xml"


def read_ground_truth(*, xml_paths: dict[str, str | Path], class_names: list[str] | None
                      ) -> tuple[dict[str, list[GTBox]], int]:
    """image id -> its objects (pixel ``xyxy``, difficult flags) from its VOC XML, and the number of objects
    left out because their class is not in ``class_names`` (None keeps every class).

    A missing XML means a background image (no objects), as voc_annotation.py keeps such images.
    A malformed XML still raises ValueError naming the file.
    """
    gt, left_out = {}, 0
    for image_id, xml_path in xml_paths.items():
        boxes = read_voc_ground_truth(xml_path) if Path(xml_path).is_file() else []
        kept = [box for box in boxes if class_names is None or box.class_name in class_names]
        left_out += len(boxes) - len(kept)
        gt[image_id] = kept
    return gt, left_out


def records_ground_truth(records: list, *, class_names: list[str]) -> dict[str, list[GTBox]]:
    """image id -> the objects of dataset records (utils.data.dataset.ImageRecord: ``boxes_xyxy`` in pixels of the
    upright image, ``class_ids`` indexing ``class_names``), difficult ones (VOC difficult, COCO iscrowd) kept with
    their flag, as read_ground_truth keeps them from a VOC XML."""
    return {record.image_id: [GTBox(class_names[class_id], *box_xyxy, difficult=difficult)
                              for box_xyxy, class_id, difficult in zip(record.boxes_xyxy.tolist(),
                                                                       record.class_ids.tolist(),
                                                                       record.difficult.tolist())]
            for record in records}


def _detect(detector, images_rgb: list[np.ndarray]) -> list:
    """The one place the detector runs: ``detector.detect_batch`` (several images per forward pass) when it has
    one, else ``detector.detect`` one image at a time."""
    images = [Image.fromarray(image_rgb) for image_rgb in images_rgb]
    if hasattr(detector, "detect_batch"):
        return detector.detect_batch(images)
    return [detector.detect(image) for image in images]


def _det_boxes(*, output, class_names: list[str], image_id: str) -> list[DetBox]:
    """A detector's output for one image -> DetBox records (pixel ``xyxy``)."""
    pred_xyxy = np.asarray(output.boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(output.scores, dtype=np.float64).reshape(-1)
    class_ids = np.asarray(output.class_ids, dtype=np.int64).reshape(-1)
    if not len(pred_xyxy) == len(scores) == len(class_ids):
        raise ValueError(f"detector output for '{image_id}' has {len(pred_xyxy)} boxes, {len(scores)} "
                         f"scores and {len(class_ids)} class ids")
    if len(class_ids) and (class_ids.min() < 0 or class_ids.max() >= len(class_names)):
        raise ValueError(f"detector output for '{image_id}' has a class id outside 0..{len(class_names) - 1}")
    return [DetBox(class_names[c], s, *box) for c, s, box in zip(class_ids.tolist(), scores.tolist(),
                                                                    pred_xyxy.tolist())]


def predict_images(*, detector, image_paths: dict[str, str | Path], progress: bool = False) -> Predictions:
    """Runs the detector on each image (read upright, as the dataset reads it), ``detector.batch_size``
    (default 8) images per call; unreadable images are recorded in ``unreadable`` and skipped."""
    class_names = list(detector.class_names)
    predictions = Predictions()
    items = list(image_paths.items())
    step = max(1, int(getattr(detector, "batch_size", 8)))
    with tqdm(total=len(items), desc="predict", disable=not progress) as bar:
        for start in range(0, len(items), step):
            ids, images_rgb = [], []
            for image_id, path in items[start:start + step]:
                try:
                    images_rgb.append(read_image_rgb(path))
                    ids.append(image_id)
                except (FileNotFoundError, ValueError) as err:  # missing, truncated or not an image: skip, go on
                    predictions.unreadable[image_id] = str(err)
            outputs = _detect(detector, images_rgb) if images_rgb else []
            for image_id, output in zip(ids, outputs):
                predictions.dets[image_id] = _det_boxes(output=output, class_names=class_names, image_id=image_id)
            bar.update(min(step, len(items) - start))
    return predictions


def predict_images_shared(*, detector, image_paths: dict[str, str | Path], dist_info: DistInfo,
                          progress: bool = False) -> Predictions:
    """predict_images with the images split over the ranks (rank r takes every world_size-th image from r);
    every rank gets all predictions back, in ``image_paths`` order."""
    if not dist_info.enabled:
        return predict_images(detector=detector, image_paths=image_paths, progress=progress)
    items = list(image_paths.items())[dist_info.rank::dist_info.world_size]
    mine = predict_images(detector=detector, image_paths=dict(items), progress=progress and dist_info.is_main)
    shards = all_gather_objects((mine.dets, mine.unreadable), dist_info)
    dets = {k: v for shard_dets, _ in shards for k, v in shard_dets.items()}
    unreadable = {k: v for _, shard_unreadable in shards for k, v in shard_unreadable.items()}
    return Predictions(dets={i: dets[i] for i in image_paths if i in dets},
                       unreadable={i: unreadable[i] for i in image_paths if i in unreadable})


def score_detections(*, gt: dict[str, list[GTBox]], dets: dict[str, list[DetBox]], class_names: list[str],
                     iou_threshold: float = 0.5, score_threshold: float = 0.5, coco: bool = False) -> dict:
    """VOC AP (all-point "map", 11-point "map_voc07", per class) of ``dets`` on the images of ``gt``; with
    ``coco`` also COCO AP under "coco" (AP, AP50, AP75, APs, APm, APl; -1 where pycocotools finds no object
    of a size). Detections of images outside ``gt`` are ignored; images of ``gt`` without objects count
    their detections as false positives."""
    dets = {image_id: dets.get(image_id, []) for image_id in gt}
    results = evaluate_detections(gt=gt, dets=dets, class_names=class_names, iou_threshold=iou_threshold,
                                  score_threshold=score_threshold)
    if coco:
        results["coco"] = coco_ap(gt=gt, dets=dets, class_names=class_names)
    return results


def predict_with_ground_truth(*, detector, image_paths: list[str | Path] | None = None, class_names: list[str],
                              records: list | None = None, progress: bool = False, dist_info: DistInfo | None = None
                              ) -> tuple[dict[str, list[GTBox]], Predictions]:
    """The ground truth (image id -> objects, readable images only, ids sorted) and the detector's predictions
    of a VOC-layout image list (ground truth from the XMLs), as get_map.py reads and predicts them; or, instead of
    ``image_paths``, of dataset ``records`` (ground truth from them, class ids indexing ``class_names``, which must
    be the detector's names)."""
    if (image_paths is None) == (records is None):
        raise ValueError("predict_with_ground_truth: give image_paths or records (one of them)")
    if records is not None and list(detector.class_names) != list(class_names):
        raise ValueError(f"the detector's classes {list(detector.class_names)} are not the dataset's "
                         f"{list(class_names)}")
    paths = [record.image_path for record in records] if records is not None else image_paths
    by_id = {Path(p).stem: p for p in sorted(paths, key=lambda p: Path(p).stem)}
    predictions = predict_images_shared(detector=detector, image_paths=by_id, dist_info=dist_info or DistInfo(),
                                        progress=progress)
    readable = [image_id for image_id in by_id if image_id not in predictions.unreadable]
    if records is not None:
        of_records = records_ground_truth(records, class_names=class_names)
        return {image_id: of_records[image_id] for image_id in readable}, predictions
    gt, _ = read_ground_truth(xml_paths={image_id: voc_annotation_path(by_id[image_id]) for image_id in readable},
                              class_names=class_names)
    return gt, predictions


def evaluate_voc_images(*, detector, image_paths: list[str | Path] | None = None, class_names: list[str],
                        records: list | None = None, iou_threshold: float = 0.5, score_threshold: float = 0.5,
                        coco: bool = False, progress: bool = False, dist_info: DistInfo | None = None) -> dict:
    """Predicts and scores images of a VOC-layout set as get_map.py does (image ids sorted, ground truth with
    difficult flags from the XMLs, objects of other classes left out), or the ``records`` of a dataset split
    (ground truth from them; see predict_with_ground_truth).

    Adds "images" (number scored), "background_images" (scored images without objects) and "unreadable"
    (image id -> reason, left out) to the results. With ``dist_info`` of a DDP run every rank must call this;
    each predicts its share of the images and all get the same results.
    """
    gt, predictions = predict_with_ground_truth(detector=detector, image_paths=image_paths, class_names=class_names,
                                                records=records, progress=progress, dist_info=dist_info)
    results = score_detections(gt=gt, dets=predictions.dets, class_names=class_names, iou_threshold=iou_threshold,
                               score_threshold=score_threshold, coco=coco)
    results.update(images=len(gt), background_images=sum(not boxes for boxes in gt.values()),
                   unreadable=predictions.unreadable)
    return results


def unreadable_note(unreadable: dict[str, str], *, limit: int = 5) -> str:
    """One line for the user: how many images were skipped and why (the first few)."""
    shown = "; ".join(list(unreadable.values())[:limit])
    more = f"; and {len(unreadable) - limit} more" if len(unreadable) > limit else ""
    return f"skipped {len(unreadable)} unreadable image(s), left out of the evaluation: {shown}{more}"
