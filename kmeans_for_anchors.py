"""Anchors for your data: k-means (distance 1 - IoU of centred boxes) on the training boxes, letterboxed into
the network input as the loader does (from the upright, EXIF-orientation-applied image size). Seeded, so the same
settings always give the same anchors.

    python kmeans_for_anchors.py --input_shape=[416,416] --model=yolov4 --out_path=model_data/my_anchors.txt
    python kmeans_for_anchors.py --config=configs/bccd_tiny.toml --out_path=model_data/bccd_tiny_anchors.txt
    python kmeans_for_anchors.py --dataset=datasets/my_yolo --model=yolov4-tiny   # a dataset's "train" split

Prints the anchors (sorted by area, the order train.py's anchors_mask refers to), the mean IoU of each
box with its best anchor, and the share of boxes whose best anchor is above ``threshold`` (YOLOv4's
multi-anchor assignment threshold 0.213: a box below it still gets its best anchor, but fits it badly).
train.py's ``anchors_path = "auto"`` runs the same computation at the start of training.
"""
import sys
from pathlib import Path
from typing import Literal

from utils.core.config import read_config_file, resolve_config, run_cli, settings_of

annotation_path: str = "2007_train.txt"  # training boxes (from voc_annotation.py); unused with dataset
dataset: str = ""  # a VOC devkit, YOLO-txt or COCO-json dataset: the boxes of its "train" split
dataset_format: Literal["auto", "voc", "yolo", "coco"] = "auto"  # the dataset's format; auto: detected from its files
classes_path: str | None = None  # with dataset: its class names checked against this file (VOC: the classes kept)
input_shape: list[int] = [416, 416]  # network input (h, w) the boxes are letterboxed into
model: Literal["yolov4", "yolov4-tiny"] = "yolov4"  # k from the model: 9 anchors for yolov4, 6 for yolov4-tiny
num_anchors: int | None = None  # overrides the k the model implies
seed: int = 0  # seeds the initial centres of every restart
restarts: int = 10  # k-means runs from different starts; the one of highest mean best IoU is kept
threshold: float = 0.213  # a box "has an anchor" when its best anchor's IoU is above this
out_path: str = ""  # also write the anchors file here ("" = print only)
config: str = ""  # a train.py config file (TOML/JSON): its training data, classes_path, input_shape and model are used

ANCHORS_PER_MODEL = {"yolov4": 9, "yolov4-tiny": 6}


def check_settings(cfg: dict) -> None:
    """Settings k-means cannot run with, refused before any image is read."""
    from utils.core.config import ConfigError

    shape = cfg["input_shape"]
    if len(shape) != 2 or min(shape) < 1:
        raise ConfigError(f"input_shape={shape}: needs [h, w], both positive")
    for key in ("num_anchors", "restarts"):
        if cfg[key] is not None and cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]}: needs at least 1")
    if cfg["out_path"] and Path(cfg["out_path"]).is_dir():
        raise ConfigError(f"out_path={cfg['out_path']}: is a folder; give a file name such as "
                          f"{Path(cfg['out_path']) / 'my_anchors.txt'}")


def main(argv: list[str] | None = None) -> dict:
    from utils.core.config import ConfigError
    from utils.data.anchors import anchor_fit, annotation_box_sizes, format_anchors, kmeans_anchors

    argv = sys.argv[1:] if argv is None else list(argv)
    settings = settings_of(globals())
    cfg = resolve_config(settings, [a for a in argv if not a.startswith("--config=")])
    given = {a[2:].split("=", 1)[0] for a in argv}
    cfg["config"] = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
    if cfg["config"]:  # take the recipe's values unless given on the command line
        recipe = read_config_file(cfg["config"])
        for ours, theirs in (("annotation_path", "train_annotation_path"), ("input_shape", "input_shape"),
                             ("model", "model"), ("dataset", "dataset"), ("dataset_format", "dataset_format"),
                             ("classes_path", "classes_path")):
            if theirs in recipe and ours not in given:
                cfg[ours] = recipe[theirs]
    if cfg["model"] not in ANCHORS_PER_MODEL:
        raise ConfigError(f"model={cfg['model']!r}: choose one of {', '.join(ANCHORS_PER_MODEL)}")
    check_settings(cfg)
    k = cfg["num_anchors"] or ANCHORS_PER_MODEL[cfg["model"]]
    annotation = cfg["annotation_path"]
    if cfg["dataset"]:
        from utils.data.dataset import load_dataset

        annotation = load_dataset(cfg["dataset"], dataset_format=cfg["dataset_format"],
                                  classes_path=cfg["classes_path"]).annotation_file("train")
    wh = annotation_box_sizes(annotation_path=annotation, input_shape=tuple(cfg["input_shape"]), k=k,
                              fewer_fix=f"lower --num_anchors (now {k}) or annotate more objects", log=print)
    anchors = kmeans_anchors(wh, k=k, seed=cfg["seed"], restarts=cfg["restarts"])
    fit = anchor_fit(wh, anchors.round(), threshold=cfg["threshold"])
    text = format_anchors(anchors)
    source = annotation.path if cfg["dataset"] else annotation
    print(f"{fit['boxes']} boxes of {source} letterboxed into {cfg['input_shape']}, k = {k}")
    print(f"anchors (w,h, sorted by area): {text}")
    print(f"mean best IoU {fit['mean_best_iou']:.4f}; boxes with an anchor above {cfg['threshold']}: "
          f"{100 * fit['share_above']:.1f} %")
    if cfg["out_path"]:
        Path(cfg["out_path"]).write_text(text + "\n", encoding="utf-8")
        print(f"written to {cfg['out_path']}")
    return {"anchors": anchors, **fit}


if __name__ == "__main__":
    run_cli(main)
