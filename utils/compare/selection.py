"""Which images compare_focal.py scores its runs on: the test split (``select_on="test"``, the comparison's
verdict) or the validation split (``select_on="val"``, for choosing a recipe or sweep values without looking at the
test images, which are then never read).

Scoring on the validation images means nothing when the runs trained on them, and the main job's recipe trains
on train + val (``2007_trainval.txt``). So with ``select_on="val"`` a training file named ``<year>_trainval.txt``
is replaced, for the runs, by ``<year>_train.txt`` beside it (made from the VOCdevkit when missing), and any
training file that still shares an image with the validation file is refused, naming both files.
"""
import dataclasses
import re
from pathlib import Path

from utils.core.config import ConfigError

SPLIT_WORDS = {"test": "test", "val": "validation"}


@dataclasses.dataclass(frozen=True)
class Scoring:
    split: str  # "test" or "val"
    annotation_path: str  # the images the runs are scored on
    train_note: str = ""  # how the runs' training file was changed for this split ("" when it was not)

    @property
    def images(self) -> str:
        """'test images' or 'validation images', as the report writes it."""
        return f"{SPLIT_WORDS[self.split]} images"

    def summary_line(self) -> str:
        """The line summary.md adds when scoring on the validation images ("" for the test images)."""
        if self.split == "test":
            return ""
        return (f"Scored on the validation split ({self.annotation_path}; --select_on=val, for choosing a recipe or "
                "sweep values): the test images were not read, so these figures are not the test result."
                + (f" {self.train_note}" if self.train_note else ""))


def train_split_of(path: str) -> str:
    """``<year>_train.txt`` beside a ``<year>_trainval.txt``; any other training file as it is."""
    match = re.fullmatch(r"(\d{4})_trainval\.txt", Path(path).name)
    return str(Path(path).with_name(f"{match.group(1)}_train.txt")) if match else path


def scoring_split(*, base, select_on: str, test_annotation_path: str) -> tuple[object, Scoring]:
    """(the train.py settings every run starts from, the scoring): unchanged for ``select_on="test"``; for
    "val" scored on ``base.val_annotation_path``, with a train + val training file replaced by the train split."""
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


def check_held_out(*, base, scoring: Scoring) -> None:
    """With validation scoring, no validation image may be a training image (compared as resolved paths)."""
    from utils.data.voc import read_annotation_lines, shared_images

    if scoring.split != "val":
        return
    shared = shared_images(lines=read_annotation_lines(scoring.annotation_path),
                           others=read_annotation_lines(base.train_annotation_path))
    if shared:
        raise ConfigError(f"--select_on=val: the validation file {scoring.annotation_path} and the training file "
                          f"{base.train_annotation_path} share {len(shared)} image(s) (e.g. {shared[0]}); scores on "
                          "training images would not say how a recipe does on new ones: give "
                          "--train_annotation_path a file without the validation images, or --val_annotation_path "
                          "one without the training images")
