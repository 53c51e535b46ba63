"""Which boxes can be trained on, and the per-class account of what was kept and what was dropped and why.

Format-free: any reader (VOC XML, annotation lines, and later YOLO txt or COCO json) hands boxes as
``boxes_xyxy_cls`` (n, 5) [x1, y1, x2, y2, class_id] in upright image pixels with the image's (width, height), and
feeds the verdicts to a ``BoxTally``. A box is dropped, never repaired, when
- inverted: x2 < x1 or y2 < y1 (corners swapped or another box format; swapping would guess),
- zero area: x2 == x1 or y2 == y1,
- outside: it has no area inside the image.
A box that only extends past the edge is kept; the loader clips it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

KEPT = ""
DROP_REASONS = {  # reason -> what the report says
    "inverted": "inverted (x2 < x1 or y2 < y1)",
    "zero_area": "zero width or height",
    "outside": "entirely outside the image",
    "difficult": "marked difficult (include_difficult=False)",
    "unreadable_image": "image unreadable (skipped)",
}
BOX_FORMAT_FIX = "a box is x1,y1,x2,y2,class_id in image pixels with x1 < x2 and y1 < y2"


def box_verdicts(boxes_xyxy_cls: np.ndarray, *, image_size: tuple[int, int] | None) -> np.ndarray:
    """(n,) object array: KEPT or the reason of DROP_REASONS each box is dropped for. image_size: (width, height)
    of the upright image; None skips the outside test (size unknown)."""
    boxes = np.asarray(boxes_xyxy_cls, dtype=np.float64).reshape(-1, 5)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    verdicts = np.full(len(boxes), KEPT, dtype=object)
    inverted = (x2 < x1) | (y2 < y1)
    verdicts[~inverted & ((x2 == x1) | (y2 == y1))] = "zero_area"
    verdicts[inverted] = "inverted"
    if image_size is not None:
        width, height = image_size
        outside = (x2 <= 0) | (y2 <= 0) | (x1 >= width) | (y1 >= height)
        verdicts[(verdicts == KEPT) & outside] = "outside"
    return verdicts


@dataclass
class BoxTally:
    """Per class: boxes kept and boxes dropped per reason; per image: how many hold no kept box (background), and
    of those how many had boxes that were all dropped. ``examples`` keeps the first few dropped boxes per reason
    with where they are ("train.txt line 3: 50,10,20,40,0")."""
    class_names: list[str]
    kept: np.ndarray = field(init=False)
    dropped: dict[str, np.ndarray] = field(init=False, default_factory=dict)
    images: int = 0
    background: int = 0
    emptied: int = 0
    examples: dict[str, list[str]] = field(init=False, default_factory=dict)
    reason_totals: Counter = field(init=False, default_factory=Counter)  # every dropped box, whatever its class id
    max_examples: int = 3

    def __post_init__(self):
        self.kept = np.zeros(len(self.class_names), dtype=np.int64)

    def add_image(self, class_ids: np.ndarray, verdicts: np.ndarray, *, where: str = "",
                  box_texts: list[str] | None = None) -> None:
        """One image's boxes: class ids (n,) and verdicts (n,); ids outside the class list are not counted (they
        are reported as such by the caller). ``box_texts`` (n,) show dropped boxes in the examples."""
        class_ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
        verdicts = np.asarray(verdicts, dtype=object).reshape(-1)
        known = (class_ids >= 0) & (class_ids < len(self.class_names))
        keep = verdicts == KEPT
        self.kept += np.bincount(class_ids[known & keep], minlength=len(self.class_names))
        for reason in dict.fromkeys(verdicts[~keep]):
            hit = verdicts == reason
            self.reason_totals[reason] += int(hit.sum())
            counts = self.dropped.setdefault(reason, np.zeros(len(self.class_names), dtype=np.int64))
            counts += np.bincount(class_ids[known & hit], minlength=len(self.class_names))
            shown = self.examples.setdefault(reason, [])
            for index in np.flatnonzero(hit)[:self.max_examples - len(shown)]:
                text = box_texts[index] if box_texts is not None else ""
                shown.append(f"{where}: {text}" if where else text)
        self.images += 1
        if not keep.any():
            self.background += 1
            self.emptied += int(len(verdicts) > 0)

    @property
    def total_kept(self) -> int:
        return int(self.kept.sum())

    @property
    def total_dropped(self) -> int:
        return sum(self.reason_totals.values())

    def why_dropped(self, class_index: int | None = None) -> str:
        """'2 inverted (x2 < x1 or y2 < y1), 1 zero width or height' for one class or (None) all; '' when none."""
        counts = (self.reason_totals if class_index is None
                  else {reason: int(per_class[class_index]) for reason, per_class in self.dropped.items()})
        return ", ".join(f"{count} {DROP_REASONS.get(reason, reason)}" for reason, count in counts.items() if count)

    def example_text(self) -> str:
        """'e.g. train.txt line 2: 50,10,20,40,0 (inverted)' for the first dropped boxes, '' when none."""
        shown = [f"{example} ({reason.replace('_', ' ')})" for reason, examples in self.examples.items()
                 for example in examples]
        return "e.g. " + "; ".join(shown[:self.max_examples]) if shown else ""

    def class_lines(self) -> list[str]:
        """One line per class: 'RBC: 2000 kept, 3 dropped: 2 inverted (...), 1 zero width or height'."""
        width = max((len(name) for name in self.class_names), default=0)
        lines = []
        for index, name in enumerate(self.class_names):
            why = self.why_dropped(index)
            dropped = sum(int(counts[index]) for counts in self.dropped.values())
            lines.append(f"{name + ':':<{width + 1}} {int(self.kept[index])} kept"
                         + (f", {dropped} dropped: {why}" if dropped else ""))
        return lines

    def empty_classes(self) -> list[int]:
        """Indices of the classes without a kept box."""
        return [int(i) for i in np.flatnonzero(self.kept == 0)]
