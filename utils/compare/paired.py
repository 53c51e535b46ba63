"""Paired statistics for focal vs BCE: per-image detection records, VOC AP from them, a paired bootstrap over
test images, and a Student-t interval over seeds.

Per-image records: every detection's score, class, image and whether it is a true positive at IoU 0.5,
decided once on the full test set by the evaluator itself (utils/eval/utils_map.py ``match_detections``, the step
behind ``evaluate_detections``: best same-class ground truth by IoU, first in score order takes it, later ones are
duplicates, detections on difficult objects are left out), plus the count of non-difficult ground truths per image
and class. A ground truth belongs to one image, so these decisions do not depend on which other images are in the
set, and the mAP of any multiset of images follows from the records alone: an image drawn w times counts
as w copies of its detections (taken as adjacent in the ranking, copies share their score) and of its
ground truths. That makes a bootstrap resample a weighted cumulative sum, vectorised over resamples.
"""
import math
import statistics
from dataclasses import dataclass

import numpy as np

from utils.eval.utils_map import match_detections

T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
         2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
         2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)  # Student t 0.975 quantile for 1..30 degrees of freedom


@dataclass
class ImageRecords:
    image_ids: list[str]
    class_names: list[str]
    det_image: np.ndarray  # (D,) index into image_ids
    det_class: np.ndarray  # (D,) class index
    det_score: np.ndarray  # (D,)
    det_tp: np.ndarray  # (D,) bool, true positive at the IoU threshold on the full set
    n_gt: np.ndarray  # (I, C) non-difficult ground truths per image and class

    def to_npz(self, path) -> None:
        np.savez_compressed(path, image_ids=np.array(self.image_ids), class_names=np.array(self.class_names),
                            det_image=self.det_image, det_class=self.det_class, det_score=self.det_score,
                            det_tp=self.det_tp, n_gt=self.n_gt)

    @classmethod
    def from_npz(cls, path) -> "ImageRecords":
        with np.load(path) as data:
            return cls(image_ids=data["image_ids"].tolist(), class_names=data["class_names"].tolist(),
                       **{k: data[k] for k in ("det_image", "det_class", "det_score", "det_tp", "n_gt")})


def image_records(*, gt: dict, dets: dict, class_names: list[str], iou_threshold: float = 0.5) -> ImageRecords:
    """Records from utils.eval.utils_map GTBox / DetBox dicts (image id -> boxes, pixel xyxy), with the
    evaluator's own TP decisions (utils.eval.utils_map.match_detections). Ground truths of classes outside
    ``class_names`` are left out; detections on difficult objects are dropped, as the evaluator ignores them."""
    known = set(class_names)
    gt = {image_id: [box for box in boxes if box.class_name in known] for image_id, boxes in gt.items()}
    matches = match_detections(gt=gt, dets=dets, class_names=class_names, iou_threshold=iou_threshold)
    n_gt = np.zeros((len(matches.image_ids), len(class_names)), dtype=np.int64)
    counted = ~matches.gt_difficult
    np.add.at(n_gt, (matches.gt_image[counted], matches.gt_class[counted]), 1)
    kept = np.flatnonzero(~matches.det_ignored)
    # Rows by image index, then by descending score (file order among ties): the row order of saved
    # eval_images.npz files, so records built now equal those saved before.
    kept = kept[np.lexsort((kept, -matches.det_score[kept], matches.det_image[kept]))]
    return ImageRecords(image_ids=matches.image_ids, class_names=list(class_names),
                        det_image=matches.det_image[kept], det_class=matches.det_class[kept],
                        det_score=matches.det_score[kept], det_tp=matches.det_tp[kept], n_gt=n_gt)


def ap_all_point(*, tp_ranked: np.ndarray, weights: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    """VOC all-point AP for B weightings at once: tp_ranked (D,) flags in score order, weights (B, D) copies
    of each detection, n_gt (B,) ground truths. AP = sum over detections of recall step x the best precision
    at this or any later rank (the area under the precision envelope). (B,); NaN where n_gt is 0."""
    cum_tp = np.cumsum(weights * tp_ranked, axis=1)  # (B, D)
    cum_det = np.cumsum(weights, axis=1)
    precision = np.divide(cum_tp, cum_det, out=np.zeros_like(cum_tp, dtype=np.float64), where=cum_det > 0)
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (weights * tp_ranked * envelope).sum(axis=1) / n_gt
    return np.where(n_gt > 0, ap, np.nan)


def voc_ap_from_flags(*, scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    """All-point AP of one class from detection scores, their TP flags and the ground-truth count."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    ap = ap_all_point(tp_ranked=np.asarray(tp, dtype=np.float64)[order], weights=np.ones((1, len(order))),
                      n_gt=np.array([n_gt], dtype=np.float64))
    return float(ap[0])


def weighted_map(records: ImageRecords, image_weights: np.ndarray) -> np.ndarray:
    """mAP@0.5 (mean over classes with ground truth) for each row of image_weights (B, I). (B,)"""
    per_class = []
    order = np.lexsort((np.arange(len(records.det_score)), -records.det_score))  # stable descending score
    for c in range(len(records.class_names)):
        ranked = order[records.det_class[order] == c]
        n_gt = image_weights @ records.n_gt[:, c]  # (B,)
        per_class.append(ap_all_point(tp_ranked=records.det_tp[ranked].astype(np.float64),
                                      weights=image_weights[:, records.det_image[ranked]], n_gt=n_gt))
    per_class = np.stack(per_class, axis=1)  # (B, C)
    scored = ~np.isnan(per_class)
    return np.where(scored, per_class, 0.0).sum(axis=1) / np.maximum(scored.sum(axis=1), 1)  # 0 with no gt at all


def bootstrap_differences(*, focal: ImageRecords, reference: ImageRecords, resamples: int, seed: int,
                          chunk: int = 200) -> tuple[float, np.ndarray]:
    """(mAP(focal) - mAP(reference) on the test images, (resamples,) the same difference on each resample of the
    test images with replacement); both arms are scored on the same resample. Reproducible for a given seed:
    runs of one seed share ``seed`` and so their resamples, whatever the arm."""
    if focal.image_ids != reference.image_ids:
        raise ValueError("paired bootstrap: the two runs were scored on different test images")
    rng = np.random.default_rng(seed)
    n = len(focal.image_ids)
    diffs = []
    for start in range(0, resamples, chunk):
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, resamples - start)).astype(np.float64)
        diffs.append(weighted_map(focal, counts) - weighted_map(reference, counts))
    full = np.ones((1, n))
    return float(weighted_map(focal, full)[0] - weighted_map(reference, full)[0]), np.concatenate(diffs)


def paired_bootstrap(*, focal: ImageRecords, reference: ImageRecords, resamples: int, seed: int,
                     chunk: int = 200) -> dict:
    """95 % percentile interval of mAP(focal) - mAP(reference) when the test images are resampled with
    replacement (bootstrap_differences)."""
    diff, diffs = bootstrap_differences(focal=focal, reference=reference, resamples=resamples, seed=seed,
                                        chunk=chunk)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"diff": diff, "low": float(low), "high": float(high), "resamples": resamples, "seed": seed}


def mean_or_none(values) -> float | None:
    """Mean of the values that were measured (None and NaN left out); None when there are none."""
    measured = [float(v) for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(measured) if measured else None


def t_interval(values: list[float]) -> dict:
    """Mean of paired differences with its 95 % Student-t interval (n - 1 degrees of freedom)."""
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "n": n, "t": None, "sd": None}
    sd = float(np.std(values, ddof=1))
    t = T_975[n - 2] if n - 1 <= len(T_975) else 1.96 + 2.4 / (n - 1)  # beyond 30 df: within 1e-3 of t
    half = t * sd / np.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "t": t, "sd": sd}


def verdict(*, low: float, high: float, diff: float, name: str, reference: str, basis: str,
            level: str = "95 %", family: str = "") -> str:
    """One line: better, worse or no detectable difference at 95 %, with the interval. With several arms
    against one reference, ``family`` names the correction (", Holm over m = 5 comparisons") and ``level`` is
    the interval's own confidence level, at which it excludes zero exactly when Holm rejects."""
    if low > 0:
        word = f"{name} better than {reference}"
    elif high < 0:
        word = f"{name} worse than {reference}"
    else:
        word = f"no detectable difference between {name} and {reference}"
    return (f"Verdict at 95 %{family}: {word}: mAP@0.5 difference {diff:+.4f}, {level} interval "
            f"[{low:+.4f}, {high:+.4f}] ({basis}).")
