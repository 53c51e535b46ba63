"""VOC-style detection evaluation: AP definitions, greedy matching, map_out text files.
Running a detector over images and adding COCO AP is utils/eval/evaluation.py's job.

All boxes here are `xyxy` in absolute pixels of the original image. IoU and areas follow the
VOC pixel convention (a box from x1 to x2 covers x2 - x1 + 1 pixels), so numbers agree with the
classic VOC devkit and the get_map.py of the well-known YOLO repositories.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from utils.core.textfile import display_path, read_text_lines

GROUND_TRUTH_DIR = "ground-truth"
DETECTION_DIR = "detection-results"
SKIPPED_FILE = "skipped-images.txt"  # ids of unreadable images that were left out, one per line


class GTBox(NamedTuple):
    """One ground-truth object; box `xyxy` in pixels."""

    class_name: str
    x1: float
    y1: float
    x2: float
    y2: float
    difficult: bool = False


class DetBox(NamedTuple):
    """One detection; box `xyxy` in pixels, score in [0, 1]."""

    class_name: str
    score: float
    x1: float
    y1: float
    x2: float
    y2: float


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP from a PR curve ordered by descending score.

    use_07_metric=True: VOC2007 11-point interpolation. The thresholds are `np.arange(0, 1.1, 0.1)`
    on purpose: the classic evaluators use those floats (0.6000000000000001, ...) and a recall of
    exactly 0.6 must not reach the 0.6 point, or published numbers are not reproduced.
    use_07_metric=False: VOC2010+ all-point area under the monotone precision envelope.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for threshold in np.arange(0.0, 1.1, 0.1):
            reached = recall >= threshold
            ap += (precision[reached].max() if reached.any() else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # envelope: best precision at any higher recall
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))


def box_iou_voc(*, boxes_a_xyxy: np.ndarray, boxes_b_xyxy: np.ndarray) -> np.ndarray:
    """Pairwise IoU (A, B) of pixel `xyxy` boxes with the VOC +1 pixel convention."""
    ix1 = np.maximum(boxes_a_xyxy[:, None, 0], boxes_b_xyxy[None, :, 0])  # (A, B)
    iy1 = np.maximum(boxes_a_xyxy[:, None, 1], boxes_b_xyxy[None, :, 1])  # (A, B)
    ix2 = np.minimum(boxes_a_xyxy[:, None, 2], boxes_b_xyxy[None, :, 2])  # (A, B)
    iy2 = np.minimum(boxes_a_xyxy[:, None, 3], boxes_b_xyxy[None, :, 3])  # (A, B)
    inter = np.clip(ix2 - ix1 + 1.0, 0.0, None) * np.clip(iy2 - iy1 + 1.0, 0.0, None)  # (A, B)
    area_a = (boxes_a_xyxy[:, 2] - boxes_a_xyxy[:, 0] + 1.0) * (boxes_a_xyxy[:, 3] - boxes_a_xyxy[:, 1] + 1.0)
    area_b = (boxes_b_xyxy[:, 2] - boxes_b_xyxy[:, 0] + 1.0) * (boxes_b_xyxy[:, 3] - boxes_b_xyxy[:, 1] + 1.0)
    return inter / (area_a[:, None] + area_b[None, :] - inter)  # (A, B)


def _class_index(*, name: str, class_to_idx: dict[str, int], image_id: str, what: str) -> int:
    if name not in class_to_idx:
        raise ValueError(f"{what} of image '{image_id}' has class '{name}', which is not in class_names "
                         f"{list(class_to_idx)}")
    return class_to_idx[name]


def _flatten(*, records: dict[str, list], class_to_idx: dict[str, int], image_to_idx: dict[str, int],
             what: str) -> tuple[np.ndarray, np.ndarray, list]:
    """Image index and class index per record, in dict order then list order (the 'file order')."""
    image_idx, class_idx, flat = [], [], []
    for image_id, boxes in records.items():
        for box in boxes:
            image_idx.append(image_to_idx[image_id])
            class_idx.append(_class_index(name=box.class_name, class_to_idx=class_to_idx,
                                          image_id=image_id, what=what))
            flat.append(box)
    return np.asarray(image_idx, dtype=np.int64), np.asarray(class_idx, dtype=np.int64), flat


def _best_gt_per_detection(*, det_image: np.ndarray, det_class: np.ndarray, det_boxes_xyxy: np.ndarray,
                           gt_image: np.ndarray, gt_class: np.ndarray, gt_boxes_xyxy: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
    """For each detection: global index of the same-class gt of highest IoU in its image (-1: none), and that IoU."""
    best_gt = np.full(len(det_image), -1, dtype=np.int64)
    best_iou = np.zeros(len(det_image), dtype=np.float64)
    gt_order = np.argsort(gt_image, kind="stable")
    gt_starts = np.searchsorted(gt_image[gt_order], np.arange(gt_image.max(initial=-1) + 2))
    det_order = np.argsort(det_image, kind="stable")
    det_sorted_image = det_image[det_order]
    images, det_starts = np.unique(det_sorted_image, return_index=True)
    det_ends = np.append(det_starts[1:], len(det_order))
    for image, start, end in zip(images.tolist(), det_starts.tolist(), det_ends.tolist()):
        if image + 1 >= len(gt_starts):
            continue  # image has no ground truth at all
        gts = gt_order[gt_starts[image]:gt_starts[image + 1]]
        if len(gts) == 0:
            continue
        dets = det_order[start:end]
        iou = box_iou_voc(boxes_a_xyxy=det_boxes_xyxy[dets], boxes_b_xyxy=gt_boxes_xyxy[gts])  # (d, g)
        iou = np.where(det_class[dets, None] == gt_class[None, gts], iou, -1.0)  # other classes never match
        col = iou.argmax(axis=1)  # (d,) first maximum, i.e. file order among equal IoUs
        row_best = iou[np.arange(len(dets)), col]
        has_match = row_best >= 0.0
        best_gt[dets[has_match]] = gts[col[has_match]]
        best_iou[dets[has_match]] = row_best[has_match]
    return best_gt, best_iou


@dataclass(frozen=True)
class DetectionMatches:
    """The evaluator's decision for every detection, in file order (``dets`` dict order, then list order).

    det_tp: true positive at the IoU threshold. det_ignored: on a difficult object, so neither TP nor FP (it is
    left out of the ranking). Every other detection is a false positive. The gt_* arrays describe the ground
    truths in file order, so counts per image and class follow from them.
    """

    image_ids: list[str]  # every image of gt, then those only in dets; det_image / gt_image index into it
    det_image: np.ndarray  # (D,) int64
    det_class: np.ndarray  # (D,) int64 index into class_names
    det_score: np.ndarray  # (D,) float64
    det_tp: np.ndarray  # (D,) bool
    det_ignored: np.ndarray  # (D,) bool
    gt_image: np.ndarray  # (G,) int64
    gt_class: np.ndarray  # (G,) int64
    gt_difficult: np.ndarray  # (G,) bool


def match_detections(*, gt: dict[str, list[GTBox]], dets: dict[str, list[DetBox]], class_names: list[str],
                     iou_threshold: float = 0.5) -> DetectionMatches:
    """The true-positive decisions behind evaluate_detections (see its docstring for the rules).

    Raises ValueError for a class name outside ``class_names`` or duplicate names.
    """
    class_to_idx = {name: i for i, name in enumerate(class_names)}
    if len(class_to_idx) != len(class_names):
        raise ValueError(f"class_names has duplicates: {class_names}")
    image_to_idx = {image_id: i for i, image_id in enumerate(dict.fromkeys([*gt, *dets]))}
    gt_image, gt_class, gt_flat = _flatten(records=gt, class_to_idx=class_to_idx, image_to_idx=image_to_idx,
                                           what="ground truth")
    det_image, det_class, det_flat = _flatten(records=dets, class_to_idx=class_to_idx,
                                              image_to_idx=image_to_idx, what="detection")
    gt_boxes_xyxy = np.asarray([b[1:5] for b in gt_flat], dtype=np.float64).reshape(-1, 4)
    gt_difficult = np.asarray([bool(b.difficult) for b in gt_flat], dtype=bool)
    det_scores = np.asarray([b.score for b in det_flat], dtype=np.float64)
    det_boxes_xyxy = np.asarray([b[2:6] for b in det_flat], dtype=np.float64).reshape(-1, 4)

    best_gt, best_iou = _best_gt_per_detection(det_image=det_image, det_class=det_class,
                                               det_boxes_xyxy=det_boxes_xyxy, gt_image=gt_image,
                                               gt_class=gt_class, gt_boxes_xyxy=gt_boxes_xyxy)
    hit = (best_gt >= 0) & (best_iou >= iou_threshold)
    ignored = hit & gt_difficult[np.where(hit, best_gt, 0)] if len(gt_difficult) else np.zeros_like(hit)
    candidate = hit & ~ignored
    # In rank order (descending score, file order among ties) the first candidate on a gt takes it; later
    # candidates on it are duplicates. A gt has one class, so ranking all classes together decides the same as
    # ranking each class alone.
    ranked = np.argsort(-det_scores, kind="stable")
    cand_ranked = ranked[candidate[ranked]]
    _, first = np.unique(best_gt[cand_ranked], return_index=True)
    det_tp = np.zeros(len(det_flat), dtype=bool)
    det_tp[cand_ranked[first]] = True
    return DetectionMatches(image_ids=list(image_to_idx), det_image=det_image, det_class=det_class,
                            det_score=det_scores, det_tp=det_tp, det_ignored=ignored, gt_image=gt_image,
                            gt_class=gt_class, gt_difficult=gt_difficult)


def evaluate_detections(*, gt: dict[str, list[GTBox]], dets: dict[str, list[DetBox]], class_names: list[str],
                        iou_threshold: float = 0.5, score_threshold: float = 0.5) -> dict:
    """VOC AP per class and mAP.

    gt / dets: image_id -> boxes (pixel `xyxy`). Images only in `dets` have no objects, so all their
    detections are false positives. Detections are ranked by score with a stable sort (file order
    among ties). Each detection takes the same-class gt of highest IoU in its image; it is a TP when
    IoU >= iou_threshold and that gt is unused, a duplicate (FP) when the gt is already used, ignored
    when the gt is difficult, and an FP when the IoU is below the threshold. match_detections returns
    these decisions per detection.
    precision / recall / f1 are those of the detections with score >= score_threshold.
    "map" / "map_voc07" average over classes with at least one non-difficult gt (0.0 when none has);
    per-class ap, ap_voc07, recall and f1 are None for classes without such gt.
    """
    matches = match_detections(gt=gt, dets=dets, class_names=class_names, iou_threshold=iou_threshold)
    det_scores = matches.det_score
    per_class = {}
    for c, name in enumerate(class_names):
        n_gt = int(np.sum((matches.gt_class == c) & ~matches.gt_difficult))
        mine = np.flatnonzero(matches.det_class == c)
        ranked = mine[np.argsort(-det_scores[mine], kind="stable")]
        ranked = ranked[~matches.det_ignored[ranked]]
        is_tp = matches.det_tp[ranked]
        cum_tp = np.cumsum(is_tp)
        cum_det = np.arange(1, len(ranked) + 1)
        precision_curve = cum_tp / cum_det
        recall_curve = cum_tp / n_gt if n_gt > 0 else np.zeros(len(ranked))

        above = det_scores[ranked] >= score_threshold
        tp_op, n_op = int(is_tp[above].sum()), int(above.sum())
        precision = tp_op / n_op if n_op else 0.0
        recall = tp_op / n_gt if n_gt else None
        f1 = None if recall is None else (2 * precision * recall / (precision + recall) if tp_op else 0.0)
        per_class[name] = {
            "ap": voc_ap(recall_curve, precision_curve, use_07_metric=False) if n_gt else None,
            "ap_voc07": voc_ap(recall_curve, precision_curve, use_07_metric=True) if n_gt else None,
            "n_gt": n_gt,
            "n_det": int(len(mine)),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "recall_curve": recall_curve.tolist(),
            "precision_curve": precision_curve.tolist(),
        }
    scored = [v for v in per_class.values() if v["n_gt"] > 0]
    return {
        "map": float(np.mean([v["ap"] for v in scored])) if scored else 0.0,
        "map_voc07": float(np.mean([v["ap_voc07"] for v in scored])) if scored else 0.0,
        "iou_threshold": float(iou_threshold),
        "score_threshold": float(score_threshold),
        "per_class": per_class,
    }


def write_results_json(path: str | Path, results: dict, *, include_curves: bool = False) -> None:
    """Write the results dict as JSON; PR curves are left out unless include_curves (they can be large)."""
    out = dict(results)
    if not include_curves and "per_class" in out:
        out["per_class"] = {name: {k: v for k, v in stats.items() if not k.endswith("_curve")}
                            for name, stats in out["per_class"].items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


def read_voc_ground_truth(xml_path: str | Path) -> list[GTBox]:
    """Objects of one VOC XML annotation as GTBox (pixel `xyxy`, as written in the XML), via the project's
    one VOC XML reader."""
    from utils.data.voc import load_voc_objects

    return [GTBox(o["name"], o["xmin"], o["ymin"], o["xmax"], o["ymax"], difficult=o["difficult"])
            for o in load_voc_objects(xml_path)]


def _fmt(value: float) -> str:
    """Shortest text that reads back to the same float (integers without '.0')."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def _check_name(*, name: str, image_id: str) -> None:
    if not name or any(ch.isspace() for ch in name):
        raise ValueError(f"class name {name!r} (image '{image_id}') is empty or contains whitespace; the "
                         f"map_out text format separates fields by spaces, so rename the class")


def _check_image_id(image_id: str) -> None:
    if not image_id or "/" in image_id or "\\" in image_id:
        raise ValueError(f"image id {image_id!r} cannot be used as a file name")


def _write_box_files(*, folder: Path, records: dict[str, list], format_line) -> None:
    """One ``<image_id>.txt`` per image in ``folder``, a line per box; an image without boxes gets an empty file."""
    folder.mkdir(parents=True, exist_ok=True)
    for image_id, boxes in records.items():
        _check_image_id(image_id)
        for box in boxes:
            _check_name(name=box.class_name, image_id=image_id)
        (folder / f"{image_id}.txt").write_text("".join(format_line(box) + "\n" for box in boxes), encoding="utf-8")


def write_ground_truth_files(*, map_out_path: str | Path, gt: dict[str, list[GTBox]]) -> None:
    """One `ground-truth/<image_id>.txt` per image: `<class> <left> <top> <right> <bottom>[ difficult]`."""
    _write_box_files(folder=Path(map_out_path) / GROUND_TRUTH_DIR, records=gt, format_line=lambda box: (
        f"{box.class_name} {' '.join(_fmt(v) for v in (box.x1, box.y1, box.x2, box.y2))}"
        f"{' difficult' if box.difficult else ''}"))


def write_detection_files(*, map_out_path: str | Path, dets: dict[str, list[DetBox]]) -> None:
    """One `detection-results/<image_id>.txt` per image: `<class> <confidence> <left> <top> <right> <bottom>`.

    Images without detections get an empty file, so a stale file from an earlier run never survives.
    """
    _write_box_files(folder=Path(map_out_path) / DETECTION_DIR, records=dets, format_line=lambda box: (
        f"{box.class_name} {' '.join(_fmt(v) for v in (box.score, box.x1, box.y1, box.x2, box.y2))}"))


def _parse_floats(*, tokens: list[str], path: Path, lineno: int) -> list[float]:
    try:
        return [float(t) for t in tokens]
    except ValueError as err:
        raise ValueError(f"{path}:{lineno}: non-numeric value in {tokens}") from err


def _read_box_files(folder: Path, parse_tokens, *, what: str) -> dict[str, list]:
    """``<image_id>.txt`` files of ``folder`` sorted by image id -> {image_id: [parse_tokens(tokens, where)]}; read
    as users' text files are (a byte-order mark and CRLF removed with a note, bytes that are not UTF-8 named)."""
    records, noted = {}, []
    for path in sorted(folder.glob("*.txt")):
        lines = read_text_lines(path, what=what, log=noted.append)  # one file per image: said once for all below
        records[path.stem] = [parse_tokens(line.split(), (path, lineno, line.strip()))
                              for lineno, line in enumerate(lines, start=1) if line.split()]
    if noted:
        print(noted[0] + (f" (and {len(noted) - 1} more {what}s of {display_path(folder)} alike)" if len(noted) > 1
                          else ""))
    return records


def _ground_truth_box(tokens: list[str], where: tuple[Path, int, str]) -> GTBox:
    path, lineno, line = where
    difficult = len(tokens) == 6 and tokens[5] == "difficult"
    if len(tokens) != 5 and not difficult:
        raise ValueError(f"{path}:{lineno}: expected '<class> <left> <top> <right> <bottom> [difficult]', got {line!r}")
    return GTBox(tokens[0], *_parse_floats(tokens=tokens[1:5], path=path, lineno=lineno), difficult=difficult)


def _detection_box(tokens: list[str], where: tuple[Path, int, str]) -> DetBox:
    path, lineno, line = where
    if len(tokens) != 6:
        raise ValueError(f"{path}:{lineno}: expected '<class> <confidence> <left> <top> <right> <bottom>', "
                         f"got {line!r}")
    return DetBox(tokens[0], *_parse_floats(tokens=tokens[1:], path=path, lineno=lineno))


def read_ground_truth_files(*, map_out_path: str | Path) -> dict[str, list[GTBox]]:
    """All `ground-truth/*.txt` files (sorted by image id); they define the evaluated image set."""
    folder = Path(map_out_path) / GROUND_TRUTH_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no ground-truth folder (run get_map.py with map_mode 0 or 2 first)")
    return _read_box_files(folder, _ground_truth_box, what="ground-truth file")


def read_detection_files(*, map_out_path: str | Path) -> dict[str, list[DetBox]]:
    """All `detection-results/*.txt` files (sorted by image id); a missing folder means no detections."""
    folder = Path(map_out_path) / DETECTION_DIR
    return _read_box_files(folder, _detection_box, what="detection file") if folder.is_dir() else {}


def write_skipped_images(*, map_out_path: str | Path, unreadable: dict[str, str]) -> None:
    """Records the unreadable images a prediction pass left out (``<id>\t<reason>`` lines), so a later mode 3 / 4
    leaves them out too; with none the file is removed, so a stale list never hides images."""
    path = Path(map_out_path) / SKIPPED_FILE
    if unreadable:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{image_id}\t{' '.join(reason.split())}\n" for image_id, reason in unreadable.items()),
                        encoding="utf-8")
    else:
        path.unlink(missing_ok=True)


def read_skipped_images(*, map_out_path: str | Path) -> dict[str, str]:
    """image id -> reason, as written by write_skipped_images; {} without the file."""
    path = Path(map_out_path) / SKIPPED_FILE
    if not path.is_file():
        return {}
    rows = [line.partition("\t") for line in read_text_lines(path, what="skipped-images file") if line.strip()]
    return {image_id.strip(): reason for image_id, _, reason in rows}
