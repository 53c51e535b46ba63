"""Darknet ``.weights`` files: read them into this project's models and write them from any project model.

Layout (AlexeyAB/darknet): int32 major, minor, revision; ``seen`` (images trained on) as int64 when
major * 10 + minor >= 2, else int32; then, for every [convolutional] section in cfg order, float32 values: with
batch_normalize, the BN bias, BN scale (weight), running mean, running variance, then the conv weights; without,
the conv bias, then the weights (filters x in_channels x size x size, PyTorch's own order).

Darknet normalises with sqrt(variance + 1e-6) (and OpenCV's importer with eps 1e-6), PyTorch's BatchNorm2d with
eps 1e-5 by default. For inference on a darknet file the BN layers are given eps 1e-6 (``set_bn_eps``); a model
trained here with eps 1e-5 is written with that difference added to its running variances, so darknet and OpenCV
compute what the project computes.
"""
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from nets.darknet_cfg import ARCHITECTURES, DarknetCfg, read_cfg, render_cfg
from nets.yolo import build_model

DARKNET_BN_EPS = 1e-6
WRITE_VERSION = (0, 2, 5)  # major, minor, revision of the files written here (int64 seen), as darknet writes them
COCO_CLASSES_PATH = Path(__file__).resolve().parents[1] / "model_data" / "coco_classes.txt"


@dataclass
class WeightsHeader:
    major: int
    minor: int
    revision: int
    seen: int  # images the model was trained on
    size: int  # header bytes: 20 with an int64 seen, 16 with an int32 one


def read_header(data: bytes, *, source: str) -> WeightsHeader:
    if len(data) < 12:
        raise ValueError(f"darknet weights {source}: {len(data)} bytes, too short for a header")
    major, minor, revision = (int(v) for v in np.frombuffer(data, dtype="<i4", count=3))
    wide_seen = major * 10 + minor >= 2
    size = 20 if wide_seen else 16
    if len(data) < size:
        raise ValueError(f"darknet weights {source}: {len(data)} bytes, too short for a header")
    seen = int(np.frombuffer(data, dtype="<i8" if wide_seen else "<i4", count=1, offset=12)[0])
    return WeightsHeader(major=major, minor=minor, revision=revision, seen=seen, size=size)


def conv_tensor_keys(net: nn.Module, module_name: str) -> list[str]:
    """The state_dict keys of one darknet [convolutional] section, in the order the file stores them."""
    module = net.get_submodule(module_name)
    if isinstance(module, nn.Conv2d):  # a head's output conv: bias, then weights
        return [f"{module_name}.bias", f"{module_name}.weight"]
    return [f"{module_name}.bn.{name}" for name in ("bias", "weight", "running_mean", "running_var")] + [
        f"{module_name}.conv.weight"]


def tensor_layout(cfg: DarknetCfg) -> list[list[tuple[str, torch.Size]]]:
    """Per [convolutional] section, (key, shape) of its tensors as the cfg sizes them (shapes only, no memory)."""
    with torch.device("meta"):
        reference = build_model(model=cfg.model, num_classes=cfg.num_classes,
                                anchors_per_level=len(cfg.anchors_mask[0]))
    shapes = {key: tensor.shape for key, tensor in reference.state_dict().items()}
    return [[(key, shapes[key]) for key in conv_tensor_keys(reference, name)] for name in cfg.conv_modules]


@dataclass
class DarknetWeights:
    header: WeightsHeader
    state_dict: dict[str, Tensor]  # project keys -> tensors (num_batches_tracked included)
    convs_loaded: int  # [convolutional] sections read: all of them, or the leading ones of a partial file
    convs_total: int


def read_weights(weights_path: str | os.PathLike, *, cfg: DarknetCfg, partial_ok: bool = False) -> DarknetWeights:
    """Reads a .weights file laid out by ``cfg``. The float count must match the cfg exactly, or, with
    ``partial_ok``, cover a leading run of whole [convolutional] sections (``darknet partial`` files such as
    yolov4.conv.137)."""
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"darknet weights {path}: no such file")
    data = path.read_bytes()
    header = read_header(data, source=str(path))
    if (len(data) - header.size) % 4:
        raise ValueError(f"darknet weights {path}: {len(data) - header.size} bytes after the header, not a whole "
                         f"number of float32 values")
    floats = np.frombuffer(data, dtype="<f4", offset=header.size)
    layout = tensor_layout(cfg)
    ends = np.cumsum([sum(shape.numel() for _, shape in conv) for conv in layout])  # floats through each section
    needed = int(ends[-1])
    if len(floats) == needed:
        count = len(layout)
    elif partial_ok and 0 < len(floats) < needed and len(floats) in set(ends.tolist()):
        count = int(np.searchsorted(ends, len(floats))) + 1
    else:
        hint = (" nor the end of one of its [convolutional] sections (a partial file)" if partial_ok else
                " (another cfg, another number of classes, or a truncated file?)")
        raise ValueError(f"darknet weights {path} with cfg {cfg.path}: cfg needs {needed} floats after the header, "
                         f"file has {len(floats)}{hint}")
    state_dict, offset = {}, 0
    for conv in layout[:count]:
        for key, shape in conv:
            size = shape.numel()
            state_dict[key] = torch.from_numpy(floats[offset:offset + size].reshape(shape).copy())
            offset += size
            if key.endswith(".running_var"):
                state_dict[key.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    return DarknetWeights(header=header, state_dict=state_dict, convs_loaded=count, convs_total=len(layout))


def default_class_names(num_classes: int) -> list[str]:
    """COCO's names for an 80-class model (the published darknet files), else class_0, class_1, ..."""
    if num_classes == 80 and COCO_CLASSES_PATH.is_file():
        return [line.strip() for line in COCO_CLASSES_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [f"class_{i}" for i in range(num_classes)]


def read_darknet_checkpoint(*, weights_path: str | os.PathLike, cfg_path: str | os.PathLike | None,
                            partial_ok: bool = False) -> dict:
    """A .weights file and its cfg as an in-memory checkpoint of this project: ``model`` (state_dict), ``config``
    (model, classes, anchors, masks, input size, scale_x_y from the cfg) and ``bn_eps`` (darknet's)."""
    if not cfg_path:
        raise ValueError(f"darknet weights {weights_path}: the matching .cfg is needed too (set cfg_path)")
    cfg = read_cfg(cfg_path)
    weights = read_weights(weights_path, cfg=cfg, partial_ok=partial_ok)
    return {"format": "darknet", "model": weights.state_dict,
            "config": cfg.config(class_names=default_class_names(cfg.num_classes)), "bn_eps": DARKNET_BN_EPS,
            "seen": weights.header.seen, "convs_loaded": weights.convs_loaded, "convs_total": weights.convs_total}


def set_bn_eps(net: nn.Module, eps: float) -> None:
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = eps


def darknet_floats(net: nn.Module, *, model: str) -> np.ndarray:
    """All of ``net``'s tensors in darknet order as float32; BN variances carry the eps difference (see above)."""
    state = net.state_dict()
    conv_modules = [layer.module for layer in ARCHITECTURES[model]() if layer.kind == "convolutional"]
    parts = []
    for name in conv_modules:
        for key in conv_tensor_keys(net, name):
            tensor = state[key].detach().float().cpu()
            if key.endswith(".running_var"):
                bn_eps = net.get_submodule(key.rsplit(".", 1)[0]).eps
                if bn_eps != DARKNET_BN_EPS:
                    tensor = (tensor.double() + (bn_eps - DARKNET_BN_EPS)).float()
            parts.append(tensor.reshape(-1).numpy())
    return np.concatenate(parts).astype("<f4")


def write_weights(net: nn.Module, path: str | os.PathLike, *, model: str, seen: int = 0) -> Path:
    """Writes ``net`` (a ``model`` = 'yolov4' or 'yolov4-tiny' of this project) as a darknet .weights file;
    atomically, so an interrupted write never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = np.array(WRITE_VERSION, dtype="<i4").tobytes() + np.array([seen], dtype="<i8").tobytes()
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(header)
            file.write(darknet_floats(net, model=model).tobytes())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def write_darknet_model(net: nn.Module, *, weights_path: str | os.PathLike, config: dict, seen: int = 0) -> Path:
    """Writes ``net`` as ``weights_path`` and, beside it, the matching cfg (same name, .cfg) built from ``config``
    (a checkpoint's config: model, class_names, anchors, anchors_mask, input_shape, scale_x_y), so darknet,
    OpenCV and this project's ``--model_path=X.weights --cfg_path=X.cfg`` can run it."""
    weights_path = write_weights(net, weights_path, model=config["model"], seen=seen)
    text = render_cfg(model=config["model"], num_classes=len(config["class_names"]), anchors=config["anchors"],
                      anchors_mask=config["anchors_mask"], input_shape=config["input_shape"],
                      scale_x_y=config.get("scale_x_y"))
    weights_path.with_suffix(".cfg").write_text(text, encoding="utf-8")
    return weights_path
