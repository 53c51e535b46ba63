"""Inference API: a checkpoint or an in-memory model -> detections in original-image pixels.

    detector = YOLO(model_path="logs/best_epoch_weights.pth")   # settings come from the checkpoint's config
    dets = detector.detect(Image.open("img/street.jpg"))        # Detections: boxes_xyxy, scores, class_ids, ...
    detector.detect_image(image).save("out.png")                # drawn boxes and labels

Pipeline (utils/infer/pipeline.py): preprocess (letterbox as in validation) -> network -> decode_outputs ->
class-aware NMS -> map boxes back through the letterbox. ``YOLO.from_model`` wraps a model being trained;
``YOLO.export_onnx`` writes an ONNX file that ``OnnxYOLO`` (utils/infer/onnx_detector.py) runs with the same pre-
and postprocessing; ``YOLO.openvino_detector`` runs the network with OpenVINO (utils/infer/openvino_detector.py).
"""
from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from nets.compat import recognise_state_dict, translate_key
from nets.darknet_weights import set_bn_eps
from nets.yolo import build_model
from utils.core.config import UserError
from utils.core.decode import decode_outputs, split_levels
from utils.core.device import DTYPES, resolve_device, resolve_precision
from utils.core.model_files import (DEFAULT_ANCHORS_MASK, DEFAULT_ANCHORS_PATH, MODEL_DATA, check_anchors_mask,
                                    get_anchors, get_classes)
from utils.infer.checkpoint import checkpoint_variant, is_project_checkpoint, load_weights, read_model_file
from utils.infer.folding import InferenceCache, inference_copy, require_compiler
from utils.infer.onnx_detector import DecodedYOLO, OnnxYOLO, export_decoded_onnx
from utils.infer.openvino_detector import OpenVinoYOLO
from utils.infer.pipeline import BaseDetector, check_class_count, class_names_for, input_hw
from utils.infer.postprocess import DEFAULT_POSTPROCESS, PostprocessSettings

DEFAULT_CLASSES_PATH = MODEL_DATA / "voc_classes.txt"
DEFAULT_INPUT_SHAPE = [416, 416]
REQUIRED_CONFIG = ("class_names", "anchors", "anchors_mask", "input_shape")


def _refuse_folder(model_path: str) -> None:
    """A folder given as model_path: name the checkpoints in it rather than call it missing."""
    folder = Path(model_path)
    if not folder.is_dir():
        return
    found = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".pth", ".pt", ".weights"))
    listing = f"it holds {', '.join(found[:4])}" if found else "it holds no .pth, .pt or .weights file"
    raise UserError(f"model_path {model_path}: is a folder, not a checkpoint file; give a file in it ({listing})")


def _head_classes(checkpoint: dict[str, Any], *, model: str, anchors_per_level: int) -> int | None:
    """The number of classes the checkpoint's first head predicts (its output channels / anchors per level - 5);
    None when its keys are not recognised as a ``model`` (the loader then names what does not fit)."""
    if is_project_checkpoint(checkpoint):
        state_dict, layout = checkpoint["model"], "project"
    else:
        kind = recognise_state_dict(checkpoint) if isinstance(checkpoint, dict) else None
        if kind is None or kind.variant != model:
            return None
        state_dict, layout = checkpoint, kind.layout
    for key, tensor in state_dict.items():
        ours = key.removeprefix("module.")
        if layout == "published":
            ours = translate_key(ours, model=model)
        if ours == "heads.0.pred.weight" and tensor.shape[0] % anchors_per_level == 0:
            return tensor.shape[0] // anchors_per_level - 5
    return None


class YOLO(BaseDetector):
    """Detector built from a checkpoint: this project's (settings read from its config), a darknet ``.weights`` file
    with its ``cfg_path`` (settings from the cfg) or a published state_dict (settings from the arguments, defaulting
    to VOC classes, the yolov4 anchors and 416 x 416). Arguments that are not None override the checkpoint's
    settings, except the class names a checkpoint of this project stores: a ``classes_path`` must list the same
    names (another dataset's file of the same length would relabel every detection); a checkpoint without stored
    names takes the classes file as given, if its head predicts as many classes. ``postprocess_settings`` holds the
    NMS settings (confidence, nms_iou, nms_type, max_det, multi_label). ``torch_compile`` runs the inference copy
    through torch.compile (utils/infer/folding.compiled_copy): faster calls after a compilation per input shape."""

    engine = "PyTorch"

    def __init__(self, *, model_path: str, classes_path: str | None = None, anchors_path: str | None = None,
                 anchors_mask: list[list[int]] | None = None, input_shape: int | list[int] | None = None,
                 model: str | None = None, letterbox_image: bool = True,
                 postprocess_settings: PostprocessSettings = DEFAULT_POSTPROCESS, device: str = "auto",
                 fp16: bool = False, strict: bool = True, precision: str = "auto", optimize: bool = True,
                 cfg_path: str | None = None, torch_compile: bool = False):
        _refuse_folder(model_path)
        checkpoint = read_model_file(model_path, cfg_path=cfg_path)  # a darknet .weights file needs its cfg_path
        config = checkpoint["config"] if is_project_checkpoint(checkpoint) else {}
        model_name = model or checkpoint_variant(checkpoint) or "yolov4"  # a bare state_dict: from its keys
        if model_name not in DEFAULT_ANCHORS_MASK:  # the defaults below are looked up by it before build_model runs
            raise UserError(f"model {model_name!r}: choose one of {', '.join(DEFAULT_ANCHORS_MASK)}")
        # A darknet file's names are placeholders made from its cfg's class count, so a classes file replaces them.
        stored_names = None if checkpoint.get("format") == "darknet" else config.get("class_names")
        class_names = class_names_for(classes_path=classes_path, stored=stored_names, source=f"checkpoint {model_path}")
        class_names = class_names or config.get("class_names") or get_classes(DEFAULT_CLASSES_PATH)
        anchors = (get_anchors(anchors_path) if anchors_path
                   else config.get("anchors") or get_anchors(DEFAULT_ANCHORS_PATH[model_name]))
        anchors_mask = anchors_mask or config.get("anchors_mask") or DEFAULT_ANCHORS_MASK[model_name]
        if strict and stored_names is None:  # strict=False leaves heads of another class count untrained
            classes_source = (f"classes file {classes_path}" if classes_path
                              else f"the default classes file {DEFAULT_CLASSES_PATH}")
            check_class_count(class_names, classes_source=classes_source,
                              model_classes=_head_classes(checkpoint, model=model_name,
                                                          anchors_per_level=len(anchors_mask[0])),
                              source=f"checkpoint {model_path}")
        net = build_model(model=model_name, num_classes=len(class_names), anchors_per_level=len(anchors_mask[0]))
        load_weights(net, model_path, model=model_name, strict=strict, checkpoint=checkpoint)
        if "bn_eps" in checkpoint:  # darknet files: normalise as darknet does
            set_bn_eps(net, checkpoint["bn_eps"])
        self.model_path = str(model_path)
        self._setup(net, model_name=model_name, class_names=class_names, anchors=anchors, anchors_mask=anchors_mask,
                    input_shape=input_shape or config.get("input_shape") or DEFAULT_INPUT_SHAPE,
                    scale_x_y=config.get("scale_x_y"), device=resolve_device(device), fp16=fp16,
                    precision=precision, optimize=optimize, torch_compile=torch_compile,
                    source=f"checkpoint {model_path}")
        self.letterbox_image, self.postprocess_settings = bool(letterbox_image), postprocess_settings

    @classmethod
    def from_model(cls, net: nn.Module, *, config: dict[str, Any], letterbox_image: bool = True,
                   postprocess_settings: PostprocessSettings = DEFAULT_POSTPROCESS,
                   device: str | torch.device | None = None, fp16: bool = False, precision: str = "auto",
                   optimize: bool = True, torch_compile: bool = False) -> YOLO:
        """Wraps an in-memory model (e.g. during training). ``config`` needs class_names, anchors, anchors_mask and
        input_shape (scale_x_y and model optional). The model stays on its device unless ``device`` is given, and
        detection restores its train/eval mode afterwards. With ``optimize`` detection runs a folded copy that is
        rebuilt whenever the model's weights changed, so it always reflects the current weights (and, with
        ``torch_compile``, compiled again: for a model being trained that costs a compilation per evaluation)."""
        missing = [key for key in REQUIRED_CONFIG if config.get(key) is None]
        if missing:
            raise ValueError(f"YOLO.from_model: config lacks {missing}")
        self = cls.__new__(cls)
        self.model_path = None
        param = next(net.parameters(), None)
        target = resolve_device(str(device)) if device is not None else (param.device if param is not None
                                                                        else torch.device("cpu"))
        self._setup(net, model_name=config.get("model"), class_names=config["class_names"], anchors=config["anchors"],
                    anchors_mask=config["anchors_mask"], input_shape=config["input_shape"],
                    scale_x_y=config.get("scale_x_y"), device=target, fp16=fp16, precision=precision,
                    optimize=optimize, torch_compile=torch_compile, source="YOLO.from_model config")
        self.letterbox_image, self.postprocess_settings = bool(letterbox_image), postprocess_settings
        return self

    def _setup(self, net: nn.Module, *, model_name: str | None, class_names: list[str], anchors: list[list[float]],
               anchors_mask: list[list[int]], input_shape: int | list[int], scale_x_y: list[float] | None,
               device: torch.device, fp16: bool, precision: str, optimize: bool, torch_compile: bool,
               source: str) -> None:
        num_levels = len(net.heads) if hasattr(net, "heads") else len(anchors_mask)
        check_anchors_mask(anchors_mask, num_anchors=len(anchors), num_levels=num_levels, source=source)
        self.model_name = model_name
        self.class_names = list(class_names)
        self.anchors = [[float(w), float(h)] for w, h in anchors]
        self.anchors_mask = [list(level) for level in anchors_mask]
        self.input_shape = input_hw(input_shape)
        self.scale_x_y = list(scale_x_y) if scale_x_y is not None else None
        self.device = device
        # fp16=True is the older spelling of precision="fp16"; as before it only applies on CUDA.
        self.precision = resolve_precision("fp16" if fp16 and device.type == "cuda" else precision, device)
        self.compute_dtype = DTYPES[self.precision]
        self.optimize = bool(optimize)
        self.net = net.to(device)
        if torch_compile and not self.optimize:
            raise ValueError("torch_compile needs optimize=True: it compiles the inference copy")
        if torch_compile:
            require_compiler(device)
        self.torch_compile = bool(torch_compile)
        self._inference_net = InferenceCache(dtype=self.compute_dtype, channels_last=True, compile=torch_compile)
        self._anchors_px = torch.tensor(self.anchors, dtype=torch.float32, device=device)  # (num_anchors, 2)

    @contextlib.contextmanager
    def _eval_mode(self):
        was_training = self.net.training
        self.net.eval()
        try:
            yield
        finally:
            self.net.train(was_training)

    def raw_outputs(self, images_bchw: np.ndarray) -> list[Tensor]:
        """Head outputs (B, A * (5 + C), H, W) per level, coarsest first, float32.

        optimize=True: the inference copy (BatchNorm folded, channels_last, weights in the compute dtype), through
        torch.compile with ``torch_compile``.
        optimize=False: the module itself in eval mode, with autocast for a reduced precision.
        """
        images = torch.from_numpy(images_bchw).to(self.device)  # (B, 3, H, W)
        autocast = self.compute_dtype != torch.float32 and not self.optimize  # the copy is already in that dtype
        with self._eval_mode(), torch.inference_mode(), \
                torch.autocast(device_type=self.device.type, dtype=self.compute_dtype, enabled=autocast):
            if self.optimize:
                net = self._inference_net.get(self.net)
                outputs = net(images.to(dtype=self.compute_dtype, memory_format=torch.channels_last))
            else:
                outputs = self.net(images)
        return [raw.float() for raw in outputs]

    def decode(self, outputs: list[Tensor]) -> Tensor:
        """Head outputs -> decoded (B, N, 5 + C): pred_cxcywh in input pixels, obj and class probabilities."""
        with torch.inference_mode():
            return decode_outputs(outputs, anchors_px=self._anchors_px, anchors_mask=self.anchors_mask,
                                  input_shape=tuple(self.input_shape), scale_x_y=self.scale_x_y)

    def _forward(self, images_bchw: np.ndarray) -> list[Tensor]:
        return self.raw_outputs(images_bchw)

    def _finish_decode(self, outputs: list[Tensor]) -> Tensor:
        return self.decode(outputs)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def onnx_detector(self, onnx_path: str | Path | None = None) -> OnnxYOLO:
        """This detector on the onnxruntime backend: exports the model (dynamic batch) to ``onnx_path``, or to a
        temporary file removed once loaded, and returns an ``OnnxYOLO`` with the same postprocessing settings."""
        with tempfile.TemporaryDirectory() as tmp_dir:
            path = Path(onnx_path) if onnx_path else Path(tmp_dir) / "model.onnx"
            self.export_onnx(path, dynamic_batch=True)
            return OnnxYOLO(onnx_path=str(path), letterbox_image=self.letterbox_image,
                            postprocess_settings=self.postprocess_settings, device=str(self.device))

    def openvino_detector(self, *, precision: str = "auto") -> OpenVinoYOLO:
        """This detector on the OpenVINO backend (CPU): the network converted in memory, compiled per input shape,
        decoded and post-processed as here. ``precision`` 'auto' is OpenVINO's default for this CPU."""
        return OpenVinoYOLO(self, precision=precision)

    def heatmap(self, image: Image.Image) -> np.ndarray:
        """Objectness heat map (h, w) of the original image, float32 in [0, 1]: per level the max over anchors of
        sigmoid(obj), upsampled to the input size; the max over levels; then the letterbox undone."""
        image_chw, info = self._preprocess(image)
        outputs = self.raw_outputs(image_chw[None])
        with torch.inference_mode():
            level_maps = [F.interpolate(torch.sigmoid(split_levels(raw, len(mask))[..., 4]).amax(dim=1, keepdim=True),
                                        size=tuple(self.input_shape), mode="bilinear", align_corners=False)
                          for raw, mask in zip(outputs, self.anchors_mask)]  # each (1, 1, H, W)
            heat_input = torch.stack(level_maps).amax(dim=0)[0, 0].cpu().numpy()  # (H, W) input pixels
        (nh, nw), (dx, dy), (ih, iw) = info.resized_hw, info.offset_xy, info.image_hw
        return cv2.resize(heat_input[dy:dy + nh, dx:dx + nw], (iw, ih), interpolation=cv2.INTER_LINEAR)

    def export_onnx(self, path: str | Path, *, opset: int = 12, dynamic_batch: bool = False,
                    simplify: bool = False) -> dict[str, float]:
        """Writes an ONNX model with input ``images`` (B, 3, H, W) RGB in [0, 1] and output ``decoded``
        (B, N, 5 + C) (decode inside the graph, BatchNorm folded, fp32); class names and input shape go into its
        metadata. Checks onnxruntime against PyTorch on random images (``onnx_mismatch``) before ``path`` is
        written, so a failed export never leaves a file behind. Returns the mismatch figures."""
        net = inference_copy(self.net, dtype=torch.float32, channels_last=False).cpu()
        wrapper = DecodedYOLO(net, anchors_px=self._anchors_px.cpu(), anchors_mask=self.anchors_mask,
                              input_shape=self.input_shape, scale_x_y=self.scale_x_y).eval()
        metadata = {"class_names": json.dumps(self.class_names), "input_shape": json.dumps(self.input_shape),
                    "model": self.model_name or "", "letterbox_image": json.dumps(self.letterbox_image)}
        return export_decoded_onnx(wrapper, path, opset=opset, dynamic_batch=dynamic_batch, simplify=simplify,
                                   metadata=metadata)
