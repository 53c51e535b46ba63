"""Which images compare_focal.py scores its runs on: the test split (``select_on="test"``, the comparison's
verdict) or the validation split (``select_on="val"``, for choosing a recipe or sweep values without looking at the
test images, which are then never read).

Scoring on the validation images means nothing when the runs trained on them, and the main job's recipe trains
on train + val (``2007_trainval.txt``). So with ``select_on="val"`` a training file named ``<year>_trainval.txt``
is replaced, for the runs, by ``<year>_train.txt`` beside it (made from the VOCdevkit when missing), and any
training file that still shares an image with the validation file is refused, naming both files.

With a dataset (train.py's ``dataset``: a VOC devkit, YOLO txt or COCO json) the runs train on its "train" split and
are scored on its "test" split, or with ``select_on="val"`` on its "val" split; train and val may share no image.
"""
import dataclasses
import re
from pathlib import Path

from utils.core.config import ConfigError

SPLIT_WORDS = {"test": "test", "val": "validation"}


@dataclasses.dataclass(frozen=True)
class Scoring:
    split: str  # "test" or "val"
    annotation_path: str  # the images the runs are scored on ("" when they are a dataset's split)
    train_note: str = ""  # how the runs' training file was changed for this split ("" when it was not)
    dataset_split: str = ""  # the dataset split scored on, named as Dataset.split_name names it ("" for a file)

    @property
    def source(self) -> str:
        """What the runs are scored on: the annotation file or the dataset split (eval.json is reused only for the
        same)."""
        return self.dataset_split or self.annotation_path

    @property
    def images(self) -> str:
        """'test images' or 'validation images', as the report writes it."""
        return f"{SPLIT_WORDS[self.split]} images"

    def summary_line(self) -> str:
        """The line summary.md adds when scoring on the validation images ("" for the test images)."""
        if self.split == "test":
            return ""
        return (f"Scored on the validation split ({self.source}; --select_on=val, for choosing a recipe or "
                "sweep values): the test images were not read, so these figures are not the test result."
                + (f" {self.train_note}" if self.train_note else ""))


def train_split_of(path: str) -> str:
    """``<year>_train.txt`` beside a ``<year>_trainval.txt``; any other training file as it is."""
    match = re.fullmatch(r"(\d{4})_trainval\.txt", Path(path).name)
    return str(Path(path).with_name(f"{match.group(1)}_train.txt")) if match else path


def scoring_split(*, base, select_on: str, test_annotation_path: str, dataset=None) -> tuple[object, Scoring]:
    """(the train.py settings every run starts from, the scoring): unchanged for ``select_on="test"``; for
    "val" scored on ``base.val_annotation_path``, with a train + val training file replaced by the train split.
    With ``dataset`` (utils.data.dataset.Dataset, read from base.dataset) scored on its split ``select_on``."""
    if dataset is not None:
        dataset.records(select_on)  # a dataset without that split stops here, naming the splits it has
        return base, Scoring(split=select_on, annotation_path="", dataset_split=dataset.split_name(select_on))
    if select_on == "test":
        return base, Scoring(split="test", annotation_path=test_annotation_path)
    train_path = train_split_of(base.train_annotation_path)
    note = ("" if train_path == base.train_annotation_path else
            f"The runs train on {train_path} instead of the recipe's {base.train_annotation_path}, which holds the "
            "validation images too.")
    if note:
        print(f"[compare] --select_on=val: {note}")
    return (dataclasses.replace(base, train_annotation_path=train_path),
            Scoring(split="val", annotation_path=base.val_annotation_path, train_note=note))


def check_held_out(*, base, scoring: Scoring, dataset=None) -> None:
    """With validation scoring, no validation image may be a training image (compared as resolved paths); with
    ``dataset``, of its "val" and "train" splits."""
    from utils.data.voc import read_annotation_lines, shared_images

    if scoring.split != "val":
        return
    if dataset is not None:
        shared = shared_images(lines=dataset.annotation_file("val").lines,
                               others=dataset.annotation_file("train").lines)
        if shared:
            raise ConfigError(f"--select_on=val: the val and train splits of {dataset.root} ({dataset.format}) share "
                              f"{len(shared)} image(s) (e.g. {shared[0]}); scores on training images would not say "
                              "how a recipe does on new ones: give the dataset a val split without training images")
        return
    shared = shared_images(lines=read_annotation_lines(scoring.annotation_path),
                           others=read_annotation_lines(base.train_annotation_path))
    if shared:
        raise ConfigError(f"--select_on=val: the validation file {scoring.annotation_path} and the training file "
                          f"{base.train_annotation_path} share {len(shared)} image(s) (e.g. {shared[0]}); scores on "
                          "training images would not say how a recipe does on new ones: give "
                          "--train_annotation_path a file without the validation images, or --val_annotation_path "
                          "one without the training images")
