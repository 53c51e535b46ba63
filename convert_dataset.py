"""Convert a dataset between PASCAL VOC, YOLO txt and COCO json: every split, box and class name carried over.

The dataset is read and checked as every tool reads it (a report per split and class; problems stop it before
anything is written), then written into a new folder, whole or not at all:

    python convert_dataset.py --dataset=VOCdevkit --classes_path=model_data/bccd_classes.txt --to=yolo --out=bccd_yolo
    python convert_dataset.py --dataset=datasets/coco_export --to=voc --out=datasets/my_voc --link_images=True

voc: VOC2007/{Annotations,JPEGImages,ImageSets/Main} and classes.txt; yolo: data.yaml, images/<split>/,
labels/<split>/; coco: images/<split>/, annotations/instances_<split>.json. Read back, the result gives the same boxes
(within 0.5 px) and class names.
"""
import sys
from typing import Literal

from utils.core.config import ConfigError, resolve_config, run_cli, settings_of

dataset: str = ""  # the dataset to convert: a VOC devkit, a YOLO-txt data.yaml or folder, a COCO folder or json
dataset_format: Literal["auto", "voc", "yolo", "coco"] = "auto"  # the dataset's format; auto: detected from its files
to: Literal["voc", "yolo", "coco"] = "coco"  # the format to write
out: str = ""  # a new (or empty) folder to write the converted dataset into
classes_path: str | None = None  # a classes file: the dataset's class names checked against it (VOC: the classes kept)
link_images: bool = False  # hard-link the images into out (symlink across file systems) instead of copying them


def main(argv: list[str] | None = None) -> dict:
    from utils.data.convert import convert_dataset, summary_lines
    from utils.data.dataset import load_dataset
    from utils.data.new_folder import check_new_folder

    cfg = resolve_config(settings_of(globals()), sys.argv[1:] if argv is None else list(argv))
    missing = [key for key in ("dataset", "out") if not cfg[key]]
    if missing:
        raise ConfigError(f"give {' and '.join(f'--{key}=' for key in missing)}: the dataset to convert and the new "
                          f"folder to write it into")
    check_new_folder(cfg["out"])  # before the images are read: that is the long part
    source = load_dataset(cfg["dataset"], dataset_format=cfg["dataset_format"], classes_path=cfg["classes_path"])
    print(f"read {source.format} dataset {source.root}: classes {source.class_names}")
    for line in summary_lines(source):
        print(line)
    written = convert_dataset(source=source, to=cfg["to"], out=cfg["out"], link_images=cfg["link_images"])
    print(f"wrote {cfg['to']} dataset {written} ({'images linked' if cfg['link_images'] else 'images copied'})")
    return {"source": source, "out": written}


if __name__ == "__main__":
    run_cli(main)
