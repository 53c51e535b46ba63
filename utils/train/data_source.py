"""What a training run reads: the annotation files of ``train_annotation_path`` / ``val_annotation_path``, or with
``dataset`` the "train" and "val" splits of a VOC devkit, YOLO-txt or COCO-json dataset (utils/data/dataset.py), as
the same in-memory annotation files, with the class names they use."""
from __future__ import annotations

from utils.core.model_files import get_classes
from utils.data.dataset import Dataset, load_dataset
from utils.data.voc import AnnotationFile, read_annotation_file

DEFAULT_CLASSES_PATH = "model_data/bccd_classes.txt"  # classes_path when neither it nor a dataset is given


def read_dataset(config, *, log=print) -> Dataset:
    """The dataset of ``config.dataset`` read and checked (its class names against ``config.classes_path`` when one
    is given); every problem of it listed in one UserError."""
    return load_dataset(config.dataset, dataset_format=config.dataset_format, classes_path=config.classes_path,
                        log=log)


def class_names_of(config, *, dataset: Dataset | None) -> list[str]:
    """The classes a run trains: the dataset's (checked against classes_path when read), else classes_path's, else
    those of DEFAULT_CLASSES_PATH."""
    if dataset is not None:
        return list(dataset.class_names)
    return get_classes(config.classes_path or DEFAULT_CLASSES_PATH)


def classes_source(config, *, dataset: Dataset | None) -> str:
    """How messages name where the class names came from."""
    if config.classes_path or dataset is None:
        return config.classes_path or DEFAULT_CLASSES_PATH
    return f"the class names of {dataset.root} ({dataset.format})"


def training_files(config, *, dataset: Dataset | None) -> tuple[AnnotationFile, AnnotationFile]:
    """(training, validation) annotation files: the dataset's "train" and "val" splits in memory (difficult
    objects left out, as voc_annotation.py writes them), else the files of the two paths."""
    if dataset is not None:
        return dataset.annotation_file("train"), dataset.annotation_file("val")
    return read_annotation_file(config.train_annotation_path), read_annotation_file(config.val_annotation_path)


def train_annotation(config, *, dataset: Dataset | None) -> str | AnnotationFile:
    """The training boxes k-means reads for ``anchors_path = "auto"``: the dataset's "train" split, else the
    training annotation file's path."""
    return dataset.annotation_file("train") if dataset is not None else config.train_annotation_path
