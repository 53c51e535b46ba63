"""Evaluate a trained detector on a VOC image set, or a split of a dataset: VOC mAP (all-point and 11-point) and
COCO AP.

Edit the settings below or override them (``--config=FILE``, ``--key=value``):
`python get_map.py --map_mode=3 --MINOVERLAP=0.75`; `python get_map.py --dataset=datasets/my_coco --split=val`.
With ``dataset`` (a VOC devkit, YOLO txt or COCO json) the images and ground truth are those of its split; on a
COCO json, COCO AP is pycocotools' on that json itself (detections mapped to its image and category ids).
Text files in map_out_path: ground-truth/<id>.txt and detection-results/<id>.txt (pixel xyxy);
results.json holds the numbers. Modes 1 and 2 write one half of the text files and evaluate
when the other half is already there. Images without an XML (or with one listing no objects) are
background images: their detections count as false positives. Unreadable images are reported, listed
in skipped-images.txt and left out. A bare state_dict takes model, anchors and classes as predict.py does.
"""

from pathlib import Path
from typing import Literal

from utils.core.config import ConfigError, UserError, resolve_config, run_cli, settings_of
from utils.core.textfile import read_text_lines
from utils.data.voc import IMAGE_EXTENSIONS, index_images

map_mode: Literal[0, 1, 2, 3, 4] = 0  # 0 all; 1 detections; 2 ground truth; 3 VOC AP from map_out_path; 4 + COCO AP
model_path: str = "logs/best_epoch_weights.pth"  # checkpoint used by modes 0 and 1 (or darknet .weights)
cfg_path: str | None = None  # the darknet .cfg of a .weights model_path
classes_path: str | None = None  # None: the checkpoint's (modes 0/1) or the text files' (2-4)
model: Literal["yolov4", "yolov4-tiny"] | None = None  # None: from the checkpoint (a bare state_dict: from its keys)
anchors_path: str | None = None  # anchors file; None: from the checkpoint (a bare state_dict: the variant's default)
anchors_mask: list[list[int]] | None = None  # anchor ids per level, coarsest first; None: from the checkpoint
MINOVERLAP: float = 0.5  # IoU threshold of VOC AP: 0.5 gives mAP@0.5
confidence: float = 0.001  # detector score threshold; keep it low, AP needs the whole PR curve
nms_iou: float = 0.5  # IoU threshold of non-maximum suppression
nms_type: Literal["nms", "diou"] = "nms"  # IoU NMS or DIoU-NMS
multi_label: bool = False  # a box may be reported once per class whose obj x class score passes confidence
input_shape: list[int] | None = None  # network input (h, w), multiples of 32; None: from the checkpoint
letterbox_image: bool = True  # resize keeping the aspect ratio and pad, as in training
device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CPUs with native bf16, else fp32
# auto: OpenVINO on the CPU, but PyTorch on CUDA and, at precision auto, on CPUs with native bf16 (README, "Engine")
backend: Literal["auto", "torch", "onnxruntime", "openvino"] = "auto"
torch_compile: bool = False  # PyTorch engine: torch.compile the network; ~20 s once per input shape, then faster calls
batch_size: int = 8  # images per forward pass (each letterboxed to the input size)
score_threshold: float = 0.5  # operating point for the per-class precision / recall / F1
map_vis: bool = False  # also save images with gt (green) and detections >= score_threshold (red) drawn
VOCdevkit_path: str = "VOCdevkit"  # dataset root in VOC layout (unused with dataset)
image_set_path: str = "VOC2007/ImageSets/Main/test.txt"  # image ids to evaluate, relative to VOCdevkit_path
dataset: str = ""  # a VOC devkit, YOLO-txt or COCO-json dataset: evaluate its split (replaces the two above)
dataset_format: Literal["auto", "voc", "yolo", "coco"] = "auto"  # the dataset's format; auto: detected from its files
split: str = "test"  # the dataset's split to evaluate: train, val or test
map_out_path: str = "map_out"  # output folder for text files, results.json and plots


def _read_lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    lines = [line.strip() for line in read_text_lines(path, what=what, names_files=True) if line.strip()]
    if not lines:
        raise ValueError(f"{path}: {what} is empty")
    return lines


def _print_table(results: dict) -> None:
    def fmt(value) -> str:
        return "-" if value is None else f"{value:.4f}"

    thr = results["score_threshold"]
    print(f"{'class':<20} {'AP':>7} {'AP07':>7} {'n_gt':>6} {'n_det':>7} {'P@' + format(thr, 'g'):>7} "
          f"{'R@' + format(thr, 'g'):>7} {'F1':>7}")
    for name, s in results["per_class"].items():
        print(f"{name:<20} {fmt(s['ap']):>7} {fmt(s['ap_voc07']):>7} {s['n_gt']:>6} {s['n_det']:>7} "
              f"{fmt(s['precision']):>7} {fmt(s['recall']):>7} {fmt(s['f1']):>7}")
    print(f"{results['images']} images ({results['background_images']} background, "
          f"{len(results['unreadable'])} unreadable left out)")
    print(f"mAP@{results['iou_threshold']:g} = {results['map']:.4f} (all-point), "
          f"{results['map_voc07']:.4f} (VOC2007 11-point)")
    if "coco" in results:
        print("COCO: " + ", ".join(f"{k} {v:.4f}" for k, v in results["coco"].items()))


def _save_visualisations(*, image_paths: dict, gt: dict, dets: dict, out_dir: Path, min_score: float) -> None:
    from PIL import Image, ImageDraw

    from utils.data.images import read_image_rgb

    out_dir.mkdir(parents=True, exist_ok=True)
    for image_id, path in image_paths.items():
        try:
            canvas = Image.fromarray(read_image_rgb(path))
        except (FileNotFoundError, ValueError):
            continue  # unreadable images are reported by the prediction pass
        draw = ImageDraw.Draw(canvas)
        for box in gt.get(image_id, []):
            draw.rectangle([box.x1, box.y1, box.x2, box.y2], outline=(0, 200, 0), width=2)
        for box in dets.get(image_id, []):
            if box.score >= min_score:
                draw.rectangle([box.x1, box.y1, box.x2, box.y2], outline=(220, 0, 0), width=2)
                draw.text((box.x1 + 2, box.y1 + 2), f"{box.class_name} {box.score:.2f}", fill=(220, 0, 0))
        canvas.save(out_dir / f"{image_id}.jpg")


def _image_paths(*, set_file: Path, image_ids: list[str]) -> dict[str, Path]:
    """image id -> its file in <year>/JPEGImages, any extension of IMAGE_EXTENSIONS in any case."""
    image_dir = set_file.parents[2] / "JPEGImages"  # <year>/ImageSets/Main/<set>.txt
    images = index_images(image_dir)
    missing = [i for i in image_ids if i not in images]
    if missing:
        raise FileNotFoundError(f"{set_file}: image id '{missing[0]}' ({len(missing)} of {len(image_ids)} ids) has "
                                f"no image in {image_dir} (any of {'/'.join(IMAGE_EXTENSIONS)})")
    return {i: images[i] for i in image_ids}


def _given_classes(cfg: dict) -> list[str] | None:
    """The classes of classes_path; None: from the checkpoint (modes 0 / 1) or the text files (modes 2-4)."""
    if not cfg["classes_path"]:
        return None
    from utils.core.model_files import get_classes

    return get_classes(cfg["classes_path"])


def _image_set(cfg: dict, *, mode: int, dataset=None) -> tuple[Path | None, list[str], dict[str, Path]]:
    """The image set file; its image ids (modes 0-2, else none); their image files (modes 0 / 1, and mode 2 with
    map_vis, else none). With ``dataset``: no file, the ids and files of its split."""
    if dataset is not None:
        records = sorted(dataset.records(cfg["split"]), key=lambda record: record.image_id)
        image_paths = {record.image_id: Path(record.image_path) for record in records} if mode in (0, 1, 2) else {}
        return None, list(image_paths), image_paths
    set_file = Path(cfg["VOCdevkit_path"]) / cfg["image_set_path"]
    image_ids = _read_lines(set_file, "image set") if mode in (0, 1, 2) else []
    needs_images = mode in (0, 1) or (mode == 2 and cfg["map_vis"])
    return set_file, image_ids, _image_paths(set_file=set_file, image_ids=image_ids) if needs_images else {}


def _build_detector(cfg: dict):
    """The detector of modes 0 / 1. A checkpoint of this project keeps its own classes (YOLO refuses a classes_path
    that names them differently); a bare state_dict takes classes_path, model, anchors_path and anchors_mask as
    predict.py does. ``backend`` runs it on PyTorch, ONNX Runtime or OpenVINO (utils/infer/backends.py)."""
    from utils.infer.backends import on_backend
    from utils.infer.postprocess import PostprocessSettings
    from yolo import YOLO

    settings = PostprocessSettings(confidence=cfg["confidence"], nms_iou=cfg["nms_iou"], nms_type=cfg["nms_type"],
                                   multi_label=cfg["multi_label"])
    detector = YOLO(model_path=cfg["model_path"], classes_path=cfg["classes_path"],
                    anchors_path=cfg["anchors_path"], anchors_mask=cfg["anchors_mask"], model=cfg["model"],
                    input_shape=cfg["input_shape"], letterbox_image=cfg["letterbox_image"],
                    postprocess_settings=settings, device=cfg["device"], precision=cfg["precision"],
                    cfg_path=cfg["cfg_path"], torch_compile=cfg["torch_compile"])
    detector = on_backend(detector, backend=cfg["backend"], precision=cfg["precision"])
    detector.batch_size = max(1, cfg["batch_size"])
    return detector


def _predict(cfg: dict, *, image_paths: dict[str, Path], out_dir: Path, dataset=None) -> tuple[dict, dict, list[str]]:
    """Modes 0 / 1: detections of every image, written to detection-results/ (and unreadable images to
    skipped-images.txt). Returns (detections, unreadable images, the detector's class names). A detector whose
    classes are not the ``dataset``'s is refused before any image is read."""
    from utils.eval.evaluation import predict_images, unreadable_note
    from utils.eval.utils_map import DETECTION_DIR, write_detection_files, write_skipped_images
    from utils.infer.pipeline import check_dataset_classes

    detector = _build_detector(cfg)
    if dataset is not None:
        check_dataset_classes(detector.class_names, dataset_names=dataset.class_names, dataset=dataset.root,
                              source=f"model_path {cfg['model_path']}")
    predictions = predict_images(detector=detector, image_paths=image_paths, progress=True)
    dets, unreadable = predictions.dets, predictions.unreadable
    if unreadable and not dets:
        raise UserError(f"none of the {len(unreadable)} images of the image set can be read: "
                        f"{next(iter(unreadable.values()))}")
    if unreadable:
        print(unreadable_note(unreadable))
    write_detection_files(map_out_path=out_dir, dets=dets)
    write_skipped_images(map_out_path=out_dir, unreadable=unreadable)
    print(f"wrote {sum(map(len, dets.values()))} detections of {len(dets)} images to {out_dir / DETECTION_DIR}")
    return dets, unreadable, list(detector.class_names)


def _ground_truth(*, year_dir: Path | None, image_ids: list[str], unreadable: dict, class_names: list[str] | None,
                  out_dir: Path | None, records: list | None = None) -> dict:
    """The readable images' objects from their XMLs, or from the dataset ``records`` when given (class ids
    indexing ``class_names``); written to ground-truth/ unless ``out_dir`` is None."""
    from utils.eval.evaluation import read_ground_truth, records_ground_truth
    from utils.eval.utils_map import GROUND_TRUTH_DIR, write_ground_truth_files

    if records is not None:
        wanted = set(image_ids) - set(unreadable)
        gt = records_ground_truth([r for r in records if r.image_id in wanted], class_names=class_names)
        gt, left_out = {i: gt[i] for i in sorted(gt)}, 0
    else:
        xml_paths = {i: year_dir / "Annotations" / f"{i}.xml" for i in image_ids if i not in unreadable}
        gt, left_out = read_ground_truth(xml_paths=xml_paths, class_names=class_names)
    if left_out:
        print(f"note: {left_out} ground-truth objects of classes outside {class_names} were left out")
    if out_dir is not None:
        write_ground_truth_files(map_out_path=out_dir, gt=gt)
        print(f"wrote {sum(map(len, gt.values()))} ground-truth objects of {len(gt)} images to "
              f"{out_dir / GROUND_TRUTH_DIR}")
    return gt


def _check_text_folders(out_dir: Path) -> None:
    """Modes 3 / 4 score what earlier modes wrote: a missing half is an error naming the mode that writes it, not
    an mAP of 0."""
    from utils.eval.utils_map import DETECTION_DIR, GROUND_TRUTH_DIR

    if not out_dir.is_dir():
        raise UserError(f"map_out_path {out_dir}: no such folder; map_mode 0 writes the ground truth and the "
                        f"detections there (or map_mode 2 and map_mode 1), which map_mode 3 and 4 score")
    for folder, writer, what in ((GROUND_TRUTH_DIR, 2, "ground truth"), (DETECTION_DIR, 1, "detections")):
        if not (out_dir / folder).is_dir():
            raise UserError(f"{out_dir / folder}: no such folder; map_mode {writer} (or 0) writes the {what} of "
                            f"the image set there")


def _read_back(*, out_dir: Path, image_ids: list[str]) -> tuple[dict, dict, dict]:
    """The text files of map_out_path, limited to the image set's readable images (all ground-truth files when
    there is no image set): (ground truth, detections, unreadable images), sorted by image id. Every evaluated
    image needs its detection file: a missing one would silently count as an image without detections."""
    from utils.eval.utils_map import (DETECTION_DIR, GROUND_TRUTH_DIR, SKIPPED_FILE, read_detection_files,
                                      read_ground_truth_files, read_skipped_images)

    gt_files = read_ground_truth_files(map_out_path=out_dir)
    det_files = read_detection_files(map_out_path=out_dir)
    unreadable = read_skipped_images(map_out_path=out_dir)
    if unreadable:
        print(f"note: {len(unreadable)} unreadable images listed in {out_dir / SKIPPED_FILE} are left out")
    wanted = [i for i in (image_ids or gt_files) if i not in unreadable]
    if not wanted and unreadable:
        raise UserError(f"{out_dir / SKIPPED_FILE}: lists all {len(unreadable)} images as unreadable, so none is "
                        f"left to evaluate; fix or remove them, then run map_mode 1 (or 0) again")
    if not wanted:
        raise UserError(f"{out_dir / GROUND_TRUTH_DIR}: holds no ground-truth files; map_mode 2 (or 0) writes them "
                        f"for the image set")
    missing = [i for i in wanted if i not in gt_files]
    if missing:
        raise UserError(f"{out_dir / GROUND_TRUTH_DIR}: no ground-truth file for {len(missing)} images of "
                        f"the image set, e.g. '{missing[0]}'; run map_mode 2 for this image set")
    undetected = [i for i in wanted if i not in det_files]
    if undetected:
        raise UserError(f"{out_dir / DETECTION_DIR}: no detection file for {len(undetected)} of the {len(wanted)} "
                        f"evaluated images, e.g. '{undetected[0]}'; run map_mode 1 (or 0) for this image set")
    wanted_set = set(wanted)
    gt_files = {i: boxes for i, boxes in gt_files.items() if i in wanted_set}  # keeps sorted order
    stale = sorted(set(det_files) - set(gt_files) - set(unreadable))
    if stale:
        print(f"note: {len(stale)} detection files are outside the evaluated images and ignored, e.g. {stale[0]}")
    return gt_files, det_files, unreadable


def _evaluate_files(cfg: dict, *, mode: int, out_dir: Path, image_ids: list[str],
                    class_names: list[str] | None, dataset=None) -> dict:
    """Scores what the text files hold, so that every mode agrees with mode 3; plots (mode 0), results.json and
    the table. COCO AP (modes 0 / 4) of a COCO-json ``dataset`` against its json (_coco_on_json)."""
    from utils.eval.evaluation import score_detections
    from utils.eval.utils_map import GROUND_TRUTH_DIR, write_results_json

    gt_files, det_files, unreadable = _read_back(out_dir=out_dir, image_ids=image_ids)
    if not any(gt_files.values()):
        raise UserError(f"{out_dir / GROUND_TRUTH_DIR}: the {len(gt_files)} evaluated images hold no ground-truth "
                        f"object{'' if class_names is None else ' of the classes ' + ', '.join(class_names)}, so "
                        f"there is no AP to compute; check VOCdevkit_path, image_set_path and the XMLs, then run "
                        f"map_mode 2 (or 0) again")
    if class_names is None:
        class_names = sorted({b.class_name for boxes in [*gt_files.values(), *det_files.values()] for b in boxes})
    on_json = mode in (0, 4) and dataset is not None and dataset.format == "coco"
    results = score_detections(gt=gt_files, dets=det_files, class_names=class_names, iou_threshold=cfg["MINOVERLAP"],
                               score_threshold=cfg["score_threshold"], coco=mode in (0, 4) and not on_json)
    if on_json:
        results["coco"] = _coco_on_json(dataset, split=cfg["split"], image_ids=list(gt_files), dets=det_files)
    results.update(images=len(gt_files), background_images=sum(not boxes for boxes in gt_files.values()),
                   unreadable=unreadable)
    if mode == 0:
        from utils.eval.map_plots import plot_ap_bars, plot_ground_truth_stats, plot_pr_curves

        plot_ap_bars(results=results, out_dir=out_dir)
        plot_pr_curves(results=results, out_dir=out_dir)
        plot_ground_truth_stats(gt=gt_files, class_names=class_names, out_dir=out_dir)
    write_results_json(out_dir / "results.json", results)
    _print_table(results)
    print(f"results written to {out_dir / 'results.json'}")
    return results


def _coco_on_json(dataset, *, split: str, image_ids: list[str], dets: dict) -> dict:
    """COCO AP of the detections of ``image_ids`` against the split's own json (pycocotools on that file), the
    images and classes mapped back to the json's image ids and category ids."""
    from utils.eval.coco_eval import coco_ap_against_json

    json_ids = {record.image_id: record.source_id for record in dataset.records(split)}
    outside = [i for i in image_ids if i not in json_ids]
    if outside:
        raise UserError(f"{len(outside)} evaluated images are not in {dataset.coco_json[split]}, e.g. "
                        f"'{outside[0]}'; run map_mode 0 (or 1 and 2) with this dataset and split")
    print(f"COCO AP against {dataset.coco_json[split]} (pycocotools on the dataset's own json)")
    return coco_ap_against_json(json_path=dataset.coco_json[split], dets=dets,
                                json_image_ids={i: json_ids[i] for i in image_ids},
                                category_ids=dict(zip(dataset.class_names, dataset.category_ids)))


def _read_dataset(cfg: dict):
    """The dataset of ``dataset`` (read and checked; its names against classes_path when given), or None."""
    if not cfg["dataset"]:
        return None
    from utils.data.dataset import load_dataset

    return load_dataset(cfg["dataset"], dataset_format=cfg["dataset_format"], classes_path=cfg["classes_path"])


def main(argv: list[str] | None = None) -> dict | None:
    """Run the configured mode; returns the results dict (None when nothing could be evaluated)."""
    from utils.eval.utils_map import DETECTION_DIR, GROUND_TRUTH_DIR

    cfg = resolve_config(settings_of(globals()), argv)
    mode = cfg["map_mode"]
    out_dir = Path(cfg["map_out_path"])
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"map_out_path {out_dir}: is a file, not a folder; choose a folder name")
    if mode in (3, 4):
        _check_text_folders(out_dir)
    dataset = _read_dataset(cfg)
    class_names = list(dataset.class_names) if dataset is not None else _given_classes(cfg)
    set_file, image_ids, image_paths = _image_set(cfg, mode=mode, dataset=dataset)
    dets, gt, unreadable = {}, {}, {}
    if mode in (0, 1):
        dets, unreadable, class_names = _predict(cfg, image_paths=image_paths, out_dir=out_dir, dataset=dataset)
    if mode in (0, 2) or (mode == 1 and cfg["map_vis"]):
        gt = _ground_truth(year_dir=set_file.parents[2] if set_file else None, image_ids=image_ids,
                           unreadable=unreadable, class_names=class_names, out_dir=out_dir if mode != 1 else None,
                           records=dataset.records(cfg["split"]) if dataset is not None else None)
    if cfg["map_vis"] and image_paths:
        _save_visualisations(image_paths=image_paths, gt=gt, dets=dets, out_dir=out_dir / "images-optional",
                             min_score=cfg["score_threshold"])
    if mode in (1, 2) and not ((out_dir / GROUND_TRUTH_DIR).is_dir() and (out_dir / DETECTION_DIR).is_dir()):
        print(f"{out_dir} lacks the {'ground truth' if mode == 1 else 'detections'}; run mode "
              f"{2 if mode == 1 else 1}, then mode 3 or 4, to get results.json")
        return None
    return _evaluate_files(cfg, mode=mode, out_dir=out_dir, image_ids=image_ids, class_names=class_names,
                           dataset=dataset)


if __name__ == "__main__":
    run_cli(main, user_errors=(ValueError,))  # a malformed or empty input file: one line naming it, exit code 2
