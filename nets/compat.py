"""Load the widely published PyTorch YOLOv4 / YOLOv4-tiny checkpoints into this project's models.

Their state_dict keys differ from ours only in the neck and head module names. The tables below
map each published module prefix to ours, explicitly; the tensor name after the prefix
(``conv.weight``, ``bn.running_mean``, ``weight``, ...) is kept. Nothing is matched by position.
"""
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

from utils.core.config import UserError

PUBLISHED_TO_OURS = {
    "yolov4": {
        "backbone.": "backbone.",
        "conv1.": "neck.p5_pre_spp.",
        "conv2.": "neck.p5_post_spp.",
        "upsample1.upsample.0.": "neck.up_p5.conv.",
        "conv_for_P4.": "neck.p4_lateral.",
        "make_five_conv1.": "neck.p4_top_down.",
        "upsample2.upsample.0.": "neck.up_p4.conv.",
        "conv_for_P3.": "neck.p3_lateral.",
        "make_five_conv2.": "neck.p3_out.",
        "down_sample1.": "neck.down_p3.",
        "make_five_conv3.": "neck.p4_out.",
        "down_sample2.": "neck.down_p4.",
        "make_five_conv4.": "neck.p5_out.",
        "yolo_head1.0.": "heads.0.conv.",
        "yolo_head1.1.": "heads.0.pred.",
        "yolo_head2.0.": "heads.1.conv.",
        "yolo_head2.1.": "heads.1.pred.",
        "yolo_head3.0.": "heads.2.conv.",
        "yolo_head3.1.": "heads.2.pred.",
    },
    "yolov4-tiny": {
        "backbone.": "backbone.",
        "conv_for_P5.": "p5_lateral.",
        "upsample.upsample.0.": "up_p5.conv.",
        "yolo_headP5.0.": "heads.0.conv.",
        "yolo_headP5.1.": "heads.0.pred.",
        "yolo_headP4.0.": "heads.1.conv.",
        "yolo_headP4.1.": "heads.1.pred.",
    },
}


class StateDictKind(NamedTuple):
    variant: str  # "yolov4" or "yolov4-tiny"
    layout: str  # "published" (bubbliiiing key names) or "project" (this project's key names)


def recognise_state_dict(state_dict: dict[str, Tensor]) -> StateDictKind | None:
    """The model variant and key layout of a bare state_dict, from its key names alone (None: not recognised).

    Each (variant, layout) has a set of module prefixes: the published ones of PUBLISHED_TO_OURS, or ours. A
    layout is recognised when every one of its prefixes starts at least one key; the variants differ in prefixes
    the other lacks (yolov4's SPP neck and third head, the tiny model's single lateral conv), so exactly one fits
    a genuine state_dict while missing or extra tensors are left for the loader to name. A DataParallel
    ``module.`` prefix is ignored.
    """
    keys = [key.removeprefix("module.") for key in state_dict if isinstance(key, str)]
    found = []
    for variant, table in PUBLISHED_TO_OURS.items():
        for layout, prefixes in (("published", set(table)), ("project", set(table.values()))):
            if all(any(key.startswith(prefix) for key in keys) for prefix in prefixes):
                found.append(StateDictKind(variant=variant, layout=layout))
    return found[0] if len(found) == 1 else None


class CheckpointMismatchError(UserError):
    """A checkpoint does not fit the model; the message names the key and the likely cause."""


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)  # our keys that received a tensor
    skipped: list[str] = field(default_factory=list)  # human-readable reasons, strict=False only

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        lines += [f"skipped {reason}" for reason in self.skipped]
        return "\n".join(lines)


def translate_key(published_key: str, *, model: str) -> str | None:
    """Our state_dict key for a published key, or None when no table entry covers it."""
    table = PUBLISHED_TO_OURS[model]
    for prefix in sorted(table, key=len, reverse=True):
        if published_key.startswith(prefix):
            return table[prefix] + published_key[len(prefix):]
    return None


def _is_head_output(key: str) -> bool:
    return key.startswith("heads.") and ".pred." in key


def _mismatch_message(*, ours: str, theirs: str, model_shape, ckpt_shape, anchors_per_level: int) -> str:
    msg = f"{ours} (checkpoint key {theirs}): model has shape {tuple(model_shape)}, checkpoint {tuple(ckpt_shape)}"
    if _is_head_output(ours):
        ckpt_classes = ckpt_shape[0] / anchors_per_level - 5
        model_classes = model_shape[0] / anchors_per_level - 5
        return (f"{msg}: head has {model_shape[0]} channels, checkpoint has {ckpt_shape[0]}: the checkpoint was "
                f"trained on {ckpt_classes:g} classes, the model is built for {model_classes:g} "
                f"(use strict=False to load everything but the heads and fine-tune)")
    return f"{msg}: the checkpoint is probably of another model variant"


def load_published_state_dict(net: nn.Module, state_dict: dict[str, Tensor], *, model: str,
                              strict: bool = True, source: str = "checkpoint") -> LoadReport:
    """Copies a published YOLOv4 (``model='yolov4'``) or YOLOv4-tiny state_dict into ``net``.

    Every checkpoint tensor must map through the key table to a model tensor of the same shape, and
    every model tensor must be covered. With ``strict=False`` head output layers whose shape differs
    (another number of classes) are left as they are and reported; any other problem still raises.
    """
    if model not in PUBLISHED_TO_OURS:
        raise ValueError(f"no published key table for model {model!r}; have {sorted(PUBLISHED_TO_OURS)}")
    ours = net.state_dict()
    report, new_state, problems, skipped_keys = LoadReport(), {}, [], set()
    for theirs, tensor in state_dict.items():
        key = translate_key(theirs.removeprefix("module."), model=model)
        if key is None or key not in ours:
            problems.append(f"{theirs}: no counterpart in this {model} model (is the checkpoint another variant?)")
            continue
        if ours[key].shape != tensor.shape:
            msg = _mismatch_message(ours=key, theirs=theirs, model_shape=ours[key].shape, ckpt_shape=tensor.shape,
                                    anchors_per_level=net.anchors_per_level)
            if strict or not _is_head_output(key):
                problems.append(msg)
            else:
                report.skipped.append(msg)
                skipped_keys.add(key)
            continue
        new_state[key] = tensor
    problems += [f"{k}: not in the checkpoint" for k in ours if k not in new_state and k not in skipped_keys]
    if problems:
        raise CheckpointMismatchError(f"{source} does not fit the {model} model:\n  " + "\n  ".join(problems))
    with torch.no_grad():
        for key, tensor in new_state.items():
            ours[key].copy_(tensor)
    report.loaded = sorted(new_state)
    return report
