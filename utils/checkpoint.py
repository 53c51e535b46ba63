"""Checkpoints: atomic writes, and loading either this project's checkpoints or published state_dicts.

This project's checkpoints are dicts with at least ``model`` (state_dict) and ``config`` (the resolved
training config: classes, anchors, masks, input size, model variant, ...), so later tools need no
repeated settings. Training checkpoints add optimizer, scaler, schedule, epoch and RNG states. With the
weights' moving average on (train.py's ``ema``), ``model`` holds the averaged weights, the ones to infer
with, and ``train_model`` and ``ema`` (its update count) hold what resuming needs besides.
"""
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nets.compat import LoadReport, load_published_state_dict

CHECKPOINT_FORMAT = "yolov4-focal-checkpoint/1"


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the target folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Loads a checkpoint file onto the CPU, with a clear message when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a corrupt or foreign file
        raise ValueError(f"checkpoint {path}: cannot be read ({type(err).__name__}: {err})") from err


def is_project_checkpoint(checkpoint: dict[str, Any]) -> bool:
    return isinstance(checkpoint, dict) and "model" in checkpoint and "config" in checkpoint


def saved_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The resolved config stored in one of this project's checkpoints, or None for a bare state_dict."""
    checkpoint = read_checkpoint(path)
    return checkpoint["config"] if is_project_checkpoint(checkpoint) else None


def load_weights(net: nn.Module, path: str | os.PathLike, *, model: str, strict: bool = True,
                 checkpoint: dict[str, Any] | None = None) -> LoadReport:
    """Loads this project's checkpoint or a published (bubbliiiing-layout) state_dict into ``net``.

    ``model`` is the variant ('yolov4' or 'yolov4-tiny') that selects the published key table;
    ``checkpoint``, when the caller has already read ``path``, saves reading it again.
    """
    checkpoint = read_checkpoint(path) if checkpoint is None else checkpoint
    if is_project_checkpoint(checkpoint):
        state_dict = checkpoint["model"]
        saved_variant = checkpoint["config"].get("model")
        if saved_variant and saved_variant != model:
            raise ValueError(f"checkpoint {path}: holds a {saved_variant} model, not {model}")
        return _load_own(net, state_dict, strict=strict, source=str(path))
    return load_published_state_dict(net, checkpoint, model=model, strict=strict, source=f"checkpoint {path}")


def _load_own(net: nn.Module, state_dict: dict[str, torch.Tensor], *, strict: bool, source: str) -> LoadReport:
    ours = net.state_dict()
    report = LoadReport()
    filtered = {}
    for key, tensor in state_dict.items():
        if key in ours and ours[key].shape != tensor.shape and not strict and key.startswith("heads."):
            report.skipped.append(f"{key}: model {tuple(ours[key].shape)}, checkpoint {tuple(tensor.shape)}")
            continue
        filtered[key] = tensor
    try:
        net.load_state_dict(filtered, strict=strict)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {source}: does not fit the model: {err}") from err
    report.loaded = sorted(filtered)
    return report
