"""Anchors for a dataset: k-means on the training boxes with 1 - IoU as the distance.

Boxes are compared by shape only (both centred at the origin), in network-input pixels after the
letterbox resize the loader applies to the upright image (EXIF orientation applied, so orientations 5-8 swap the
stored width and height), so the anchors match what the loss assigns at training time.
"""
import numpy as np

from utils.core.config import UserError
from utils.data.augment import letterbox_geometry
from utils.data.boxcheck import BOX_FORMAT_FIX, KEPT, BoxTally, box_verdicts
from utils.data.images import image_info
from utils.data.voc import AnnotationFile, read_annotation_file, split_annotation_line


def letterboxed_box_sizes(*, annotation_lines: list[str], input_shape: tuple[int, int],
                          tally: BoxTally | None = None) -> np.ndarray:
    """(N, 2) widths and heights of every box of the annotation lines that training keeps (utils/data/boxcheck.py:
    not inverted, of zero area or outside the image; clipped to the image as the loader does), letterboxed into
    ``input_shape`` (h, w); (0, 2) when none is left. ``tally`` (optional) counts what was kept and dropped."""
    sizes = []
    for number, line in enumerate(annotation_lines, start=1):
        path, tokens = split_annotation_line(line)
        if not tokens:
            if tally is not None:
                tally.images += 1
                tally.background += 1
            continue
        boxes = np.array([t.split(",") for t in tokens], dtype=np.float32)  # as the loader parses them
        # Annotation boxes are in the upright frame, so the letterbox scale comes from the upright size, read
        # from the header without decoding the pixels.
        width, height = image_info(path).upright_size
        verdicts = box_verdicts(boxes, image_size=(width, height))
        if tally is not None:
            tally.add_image(boxes[:, 4], verdicts, where=f"line {number}", box_texts=tokens)
        kept = boxes[verdicts == KEPT]
        new_w, new_h, _, _ = letterbox_geometry(image_hw=(height, width), input_shape=tuple(input_shape))
        wh = kept[:, 2:4].clip(max=np.array([width, height], np.float32)) - kept[:, 0:2].clip(min=np.float32(0))
        sizes.append(wh * np.array([new_w / width, new_h / height], dtype=np.float32))
    if not sizes:
        return np.zeros((0, 2))
    wh = np.concatenate(sizes).astype(np.float64)
    return wh[(wh > 0).all(axis=1)]


def annotation_box_sizes(*, annotation_path: str | AnnotationFile, input_shape: tuple[int, int], k: int,
                         fewer_fix: str, log=None) -> np.ndarray:
    """(N, 2) letterboxed widths and heights of the boxes of an annotation file (a path, or one in memory such as a
    dataset split's Dataset.annotation_file), at least ``k`` of them: fewer is a UserError naming the file and the
    boxes dropped and why (``fewer_fix`` says how the caller's user gets by with fewer). ``log`` (optional)
    receives a note when boxes are left out."""
    annotation = (annotation_path if isinstance(annotation_path, AnnotationFile)
                  else read_annotation_file(annotation_path))
    annotation_path = annotation.path
    tally = BoxTally(annotation.class_names or [])
    wh = letterboxed_box_sizes(annotation_lines=annotation.lines, input_shape=input_shape, tally=tally)
    left_out = f"{tally.total_dropped} boxes left out: {tally.why_dropped()}; {tally.example_text()}"
    if not len(wh):
        raise UserError(f"annotation file {annotation_path}: holds no boxes"
                        + (f" k-means can use ({left_out}; {BOX_FORMAT_FIX})" if tally.total_dropped else "")
                        + ", so k-means has nothing to make anchors from; use a file with objects (voc_annotation.py "
                          "writes the boxes of the classes in its classes_path)")
    if tally.total_dropped and log is not None:
        log(f"note: {annotation_path}: {left_out}")
    if len(wh) < k:
        raise UserError(f"annotation file {annotation_path}: {len(wh)} boxes cannot make {k} anchors; {fewer_fix}")
    return wh


def wh_iou_np(wh_a: np.ndarray, wh_b: np.ndarray) -> np.ndarray:
    """(A, B) IoU of boxes given as (w, h), all centred at the same point."""
    inter = np.minimum(wh_a[:, None, 0], wh_b[None, :, 0]) * np.minimum(wh_a[:, None, 1], wh_b[None, :, 1])
    area_a, area_b = wh_a.prod(axis=1), wh_b.prod(axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def kmeans_anchors(wh: np.ndarray, *, k: int, seed: int, restarts: int = 10, max_iterations: int = 1000
                   ) -> np.ndarray:
    """k anchors (k, 2) sorted by area, the best (highest mean best IoU) of ``restarts`` seeded k-means runs."""
    if len(wh) < k:
        raise ValueError(f"{len(wh)} boxes cannot make {k} anchors")
    runs = [_kmeans_once(wh, k=k, rng=np.random.default_rng([seed, r]), max_iterations=max_iterations)
            for r in range(restarts)]
    scores = [wh_iou_np(wh, centres).max(axis=1).mean() for centres in runs]
    best = runs[int(np.argmax(scores))]
    return best[np.argsort(best.prod(axis=1), kind="stable")]


def _kmeans_once(wh: np.ndarray, *, k: int, rng: np.random.Generator, max_iterations: int) -> np.ndarray:
    """Lloyd iterations with distance 1 - IoU and the median as the centre (robust to the few huge or tiny
    boxes a mean would chase). Starts from k distinct boxes; an emptied cluster restarts at the box farthest
    from every centre. Stops when the assignment no longer changes."""
    centres = wh[rng.choice(len(wh), size=k, replace=False)].copy()
    assignment = np.full(len(wh), -1)
    for _ in range(max_iterations):
        iou = wh_iou_np(wh, centres)  # (N, k)
        new_assignment = iou.argmax(axis=1)
        if np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
        for cluster in range(k):
            members = wh[assignment == cluster]
            centres[cluster] = np.median(members, axis=0) if len(members) else wh[iou.max(axis=1).argmin()]
    return centres


def anchor_fit(wh: np.ndarray, anchors: np.ndarray, *, threshold: float) -> dict:
    """How well anchors cover the boxes: mean best IoU and the share of boxes with some anchor above ``threshold``."""
    best = wh_iou_np(wh, np.asarray(anchors, dtype=np.float64)).max(axis=1)
    return {"mean_best_iou": float(best.mean()), "share_above": float((best > threshold).mean()),
            "threshold": threshold, "boxes": int(len(wh))}


def format_anchors(anchors: np.ndarray) -> str:
    """The anchors-file format read by utils.core.model_files.get_anchors: ``w1,h1,  w2,h2, ...`` rounded to pixels."""
    return ",  ".join(f"{round(w)},{round(h)}" for w, h in np.asarray(anchors))


def auto_anchors(*, annotation_path: str | AnnotationFile, input_shape: tuple[int, int], k: int, seed: int = 0
                 ) -> list[list[float]]:
    """Anchors for ``anchors_path = "auto"``: k-means on the training boxes (an annotation file's path, or one in
    memory), rounded to whole pixels as a written anchors file would be, so the run is the same as one given that
    file."""
    wh = annotation_box_sizes(annotation_path=annotation_path, input_shape=input_shape, k=k,
                              fewer_fix="give an anchors file with --anchors_path, or annotate more objects")
    anchors = kmeans_anchors(wh, k=k, seed=seed)
    return [[float(round(w)), float(round(h))] for w, h in anchors]

