"""A dataset written whole or not at all: the converter's writers (VOC, YOLO txt, COCO json) fill a hidden sibling
of the output folder and rename it into place at the end, so a failure leaves neither a half-written dataset nor a
temporary folder behind.

    check_new_folder(out)                       # before any work: refuse an existing, non-empty out
    with staged_folder(out) as folder:          # write into ``folder``; it becomes ``out`` when the block ends
        place_image(source=src, target=folder / "images" / "train" / "a.jpg", link=False)
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from utils.core.config import UserError
from utils.core.textfile import display_path


def check_new_folder(out: str | os.PathLike) -> Path:
    """``out`` as a Path when nothing is there or it is an empty folder; UserError naming it otherwise (a dataset is
    never written over another, nor mixed into one)."""
    out = Path(out)
    if out.is_symlink() and not out.exists() or out.exists() and not out.is_dir():
        raise UserError(f"out {display_path(out)}: exists and is not a folder; give a new folder")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"out {display_path(out)}: exists and is not empty; give a new folder (nothing was written)")
    return out


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Yields a new hidden folder beside ``out``; when the block ends without error it is renamed to ``out``,
    when it fails it is removed with everything in it. UserError (before anything is made) when ``out`` exists and
    is not an empty folder."""
    out = check_new_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir()
    try:
        yield staging
        if out.is_dir():
            out.rmdir()  # empty (checked above); rename cannot replace a folder on every system
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def place_image(*, source: str | os.PathLike, target: Path, link: bool) -> None:
    """Copies the image ``source`` to ``target`` (metadata kept), or with ``link`` hard-links it (a symlink to the
    absolute source when the two are on different file systems). UserError when ``target`` exists: two images of
    one split with one name."""
    if target.exists() or target.is_symlink():
        raise UserError(f"{display_path(target)}: two images of one split are named {display_path(target.name)} "
                        f"(the second from {display_path(source)}); rename one of them")
    if link:
        try:
            os.link(source, target)
        except OSError:  # another file system, or one without hard links
            target.symlink_to(os.path.abspath(source))
        return
    shutil.copy2(source, target)
