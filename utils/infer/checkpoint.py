"""Checkpoints: atomic writes, and loading either this project's checkpoints or published state_dicts.

This project's checkpoints are dicts with at least ``model`` (state_dict) and ``config`` (the resolved
training config: classes, anchors, masks, input size, model variant, ...), so later tools need no
repeated settings. Training checkpoints add optimizer, scaler, schedule, epoch and RNG states. With the
weights' moving average on (train.py's ``ema``), ``model`` holds the averaged weights, the ones to infer
with, and ``train_model`` and ``ema`` (its update count) hold what resuming needs besides.
"""
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nets.compat import CheckpointMismatchError, LoadReport, load_published_state_dict, recognise_state_dict
from utils.core.config import UserError

CHECKPOINT_FORMAT = "yolov4-focal-checkpoint/1"


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the target folder, then rename: a crash never leaves half a file.

    A failed write (disk full, no permission, read-only file system) removes the temporary file, leaves any earlier
    file at ``path`` as it was and raises a UserError naming the file and the cause."""
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException as err:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        cause = write_cause(err)
        if cause is None:
            raise
        raise _save_failed(path, cause) from err


def copy_atomic(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """``path`` becomes a copy of the finished file ``source``: a hard link where the file system has them (no second
    write of hundreds of MB, no extra disk; ``source`` replaced later by save_atomic gets a new file, so the copy
    keeps today's content), else a byte copy; through a temporary name, so ``path`` is never half written."""
    source, path = Path(source), Path(path)
    tmp = path.with_name(f".{path.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:  # no hard links here (some network and FAT file systems)
            shutil.copyfile(source, tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        cause = write_cause(err)
        raise _save_failed(path, cause) from err


def _save_failed(path: str | os.PathLike, cause: str) -> UserError:
    """The message of a failed checkpoint write: the file, the cause in plain words and what to do."""
    return UserError(f"cannot save {path}: {cause}; {_WRITE_FIXES.get(cause, 'check the folder')} or pass another "
                     "--save_dir (the files saved before are kept)")


_WRITE_CAUSES = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied",
                 errno.EPERM: "permission denied", errno.EROFS: "read-only file system"}
_WRITE_FIXES = {"disk full": "free some space", "disk quota exceeded": "free some space",
                "permission denied": "make the folder writable", "read-only file system": "save to a writable disk"}


def write_cause(err: BaseException) -> str | None:
    """The cause of a failed file write in plain words ("disk full", "permission denied", ...); None when ``err``
    is no write failure (a bug). torch's writer reports the system's error text inside a RuntimeError."""
    if isinstance(err, OSError):
        return _WRITE_CAUSES.get(err.errno) or (err.strerror or str(err)).lower()
    if isinstance(err, RuntimeError):
        text = str(err)
        for code, cause in _WRITE_CAUSES.items():
            if os.strerror(code) in text:
                return cause
        if "PytorchStreamWriter" in text or "inline_container" in text:
            return f"the write failed ({text.splitlines()[0].strip()})"
    return None


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Loads a checkpoint file onto the CPU, with a clear message when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file{_where_checkpoints_are(path)}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a corrupt or foreign file
        raise UserError(f"checkpoint {path}: cannot be read ({type(err).__name__}: {err})") from err


def _where_checkpoints_are(missing: Path) -> str:
    """A hint for a missing checkpoint, with the last_epoch_weights.pth files found up to four folders below the
    current one."""
    found = sorted(path for depth in range(1, 5)
                   for path in Path().glob("*/" * depth + "last_epoch_weights.pth") if ".venv" not in path.parts)
    listing = f"; found here: {', '.join(map(str, found[:4]))}" if found else ""
    return (f"; train.py writes checkpoints to its save_dir (logs/ by default), compare_focal.py to "
            f"<results_dir>/runs/<run>/{listing}")


def is_project_checkpoint(checkpoint: dict[str, Any]) -> bool:
    return isinstance(checkpoint, dict) and "model" in checkpoint and "config" in checkpoint


def saved_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The resolved config stored in one of this project's checkpoints, or None for a bare state_dict."""
    checkpoint = read_checkpoint(path)
    return checkpoint["config"] if is_project_checkpoint(checkpoint) else None


def read_model_file(path: str | os.PathLike, *, cfg_path: str | os.PathLike | None = None,
                    partial_ok: bool = False) -> dict[str, Any]:
    """A checkpoint file, or a darknet weights file (a ``.weights`` name, or any name but .pth/.pt with ``cfg_path``
    given) read with its cfg as a checkpoint of this project (``partial_ok``: a file of the leading layers only,
    such as yolov4.conv.137)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".weights" or (cfg_path and suffix not in (".pth", ".pt")):
        from nets.darknet_weights import read_darknet_checkpoint

        return read_darknet_checkpoint(weights_path=path, cfg_path=cfg_path, partial_ok=partial_ok)
    return read_checkpoint(path)


def checkpoint_variant(checkpoint: dict[str, Any]) -> str | None:
    """The model variant a checkpoint holds: from its config, or recognised from a bare state_dict's keys."""
    if is_project_checkpoint(checkpoint):
        return checkpoint["config"].get("model")
    kind = recognise_state_dict(checkpoint) if isinstance(checkpoint, dict) else None
    return kind.variant if kind else None


def load_weights(net: nn.Module, path: str | os.PathLike, *, model: str, strict: bool = True,
                 checkpoint: dict[str, Any] | None = None, cfg_path: str | os.PathLike | None = None) -> LoadReport:
    """Loads this project's checkpoint, a published (bubbliiiing-layout) state_dict or a darknet ``.weights`` file
    (with its ``cfg_path``; with ``strict=False`` also a partial one) into ``net``.

    ``model`` is the variant ('yolov4' or 'yolov4-tiny') that selects the published key table;
    ``checkpoint``, when the caller has already read ``path``, saves reading it again.
    """
    checkpoint = read_model_file(path, cfg_path=cfg_path, partial_ok=not strict) if checkpoint is None else checkpoint
    if is_project_checkpoint(checkpoint):
        state_dict = checkpoint["model"]
        saved_variant = checkpoint["config"].get("model")
        if saved_variant and saved_variant != model:
            raise UserError(f"checkpoint {path}: holds a {saved_variant} model, not {model}; "
                            f"set --model={saved_variant}")
        return _load_own(net, state_dict, strict=strict, source=str(path))
    kind = recognise_state_dict(checkpoint) if isinstance(checkpoint, dict) else None
    if kind is not None and kind.variant != model:
        raise CheckpointMismatchError(f"checkpoint {path}: its keys are those of a {kind.variant} model, not {model}; "
                                      f"set model={kind.variant} or leave model unset")
    if kind is not None and kind.layout == "project":
        state_dict = {key.removeprefix("module."): tensor for key, tensor in checkpoint.items()}
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
        raise UserError(f"checkpoint {source}: does not fit the model: {err}") from err
    report.loaded = sorted(filtered)
    return report
