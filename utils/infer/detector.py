"""Inference API: a checkpoint, an in-memory model or an exported ONNX file -> detections in original-image pixels.

    detector = YOLO(model_path="logs/best_epoch_weights.pth")   # settings come from the checkpoint's config
    dets = detector.detect(Image.open("img/street.jpg"))        # Detections: boxes_xyxy, scores, class_ids, ...
    detector.detect_image(image).save("out.png")                # drawn boxes and labels

Pipeline: preprocess (letterbox as in validation) -> network -> decode_outputs -> class-aware NMS -> map boxes
back through the letterbox. ``YOLO.from_model`` wraps a model being trained; ``OnnxYOLO`` runs an exported file
with the same pre- and postprocessing.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from nets.darknet_weights import set_bn_eps
from nets.yolo import build_model
from utils.core.decode import decode_outputs, split_levels
from utils.core.device import DTYPES, resolve_device, resolve_precision
from utils.core.model_files import (DEFAULT_ANCHORS_MASK, DEFAULT_ANCHORS_PATH, MODEL_DATA, check_anchors_mask,
                                    get_anchors, get_classes)
from utils.infer.checkpoint import checkpoint_variant, is_project_checkpoint, load_weights, read_model_file
from utils.infer.draw import draw_detections, save_crops
from utils.infer.folding import InferenceCache, inference_copy
from utils.infer.postprocess import DEFAULT_POSTPROCESS, PostprocessSettings, non_max_suppression
from utils.infer.preprocess import LetterboxInfo, boxes_to_original, preprocess_image

DEFAULT_CLASSES_PATH = MODEL_DATA / "voc_classes.txt"
DEFAULT_INPUT_SHAPE = [416, 416]
# ONNX Runtime vs PyTorch on the same fp32 graph: boxes within ONNX_BOX_RTOL of their magnitude (plus ONNX_BOX_ATOL
# pixels for coordinates near 0), probabilities within ONNX_PROB_ATOL. Summation order differs between the two
# runtimes, so a 1764 px box may move by a few thousandths of a pixel: float noise, not an export error.
ONNX_BOX_RTOL, ONNX_BOX_ATOL, ONNX_PROB_ATOL = 1e-4, 1e-3, 1e-4
REQUIRED_CONFIG = ("class_names", "anchors", "anchors_mask", "input_shape")


@dataclass
class Detections:
    """Detections of one image, best score first."""
    boxes_xyxy: np.ndarray  # (n, 4) float32 pred_xyxy_orig: x1, y1, x2, y2 in original-image pixels
    scores: np.ndarray  # (n,) float32 objectness * class probability
    class_ids: np.ndarray  # (n,) int64
    class_names: list[str]  # (n,) name of each detection's class

    def __len__(self) -> int:
        return len(self.scores)

    def to_dicts(self) -> list[dict[str, Any]]:
        """JSON-ready records: class_id, class_name, score, box_xyxy (original-image pixels)."""
        return [{"class_id": int(c), "class_name": name, "score": round(float(s), 6),
                 "box_xyxy": [round(float(v), 2) for v in box]}
                for box, s, c, name in zip(self.boxes_xyxy, self.scores, self.class_ids, self.class_names)]


def _input_hw(input_shape: int | list[int] | tuple[int, ...]) -> list[int]:
    """[h, w] from an int (square) or a 2-sequence; sizes must be multiples of 32 (the coarsest stride)."""
    hw = [int(input_shape)] * 2 if isinstance(input_shape, (int, float)) else [int(v) for v in input_shape]
    if len(hw) != 2 or any(v <= 0 or v % 32 for v in hw):
        raise ValueError(f"input_shape must be [h, w] with positive multiples of 32, got {input_shape}")
    return hw


class _Detector:
    """Shared preprocessing, NMS, box mapping and drawing; subclasses provide ``_decoded``."""

    class_names: list[str]
    input_shape: list[int]
    letterbox_image: bool  # keep the aspect ratio with gray padding (as in validation); False stretches
    postprocess_settings: PostprocessSettings
    batch_size: int = 8  # images per detect_batch call when evaluating a list (get_map.py, dir_predict)

    def _forward(self, images_bchw: np.ndarray):
        """images (B, 3, H, W) float32 in [0, 1] -> the runtime's outputs (whatever ``_finish_decode`` takes)."""
        raise NotImplementedError

    def _finish_decode(self, outputs) -> Tensor:
        """The runtime's outputs -> decoded (B, N, 5 + C) float32."""
        raise NotImplementedError

    def _sync(self) -> None:
        """Waits for queued device work, so that timings include it."""

    def _decoded(self, images_bchw: np.ndarray) -> Tensor:
        return self._finish_decode(self._forward(images_bchw))

    def get_fps(self, image: Image.Image, n: int = 100) -> dict[str, float]:
        """Mean milliseconds per image of preprocessing, forward (the network; with onnxruntime also the decode
        inside the graph) and postprocessing (decode, NMS, box mapping) over ``n`` batch-1 runs after one warm-up,
        and the resulting frames per second."""
        self.detect(image)
        totals = np.zeros(3)
        for _ in range(max(1, n)):
            start = time.perf_counter()
            image_chw, info = self._preprocess(image)
            prepared = time.perf_counter()
            outputs = self._forward(image_chw[None])
            self._sync()
            forwarded = time.perf_counter()
            self.postprocess(self._finish_decode(outputs), [info])
            totals += (prepared - start, forwarded - prepared, time.perf_counter() - forwarded)
        preprocess_ms, forward_ms, postprocess_ms = (float(t) for t in totals * 1000 / max(1, n))
        total_ms = preprocess_ms + forward_ms + postprocess_ms
        return {"preprocess_ms": preprocess_ms, "forward_ms": forward_ms, "postprocess_ms": postprocess_ms,
                "total_ms": total_ms, "fps": 1000.0 / total_ms}

    def _preprocess(self, image: Image.Image | np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        return preprocess_image(image, self.input_shape, self.letterbox_image)

    def postprocess(self, decoded: Tensor, infos: list[LetterboxInfo]) -> list[Detections]:
        """decoded (B, N, 5 + C) from the network or the ONNX model -> Detections per image in original pixels,
        clipped to the image; boxes wholly outside the image (in the letterbox padding) are dropped."""
        results = non_max_suppression(decoded, settings=self.postprocess_settings)
        detections = []
        for result, info in zip(results, infos):
            pred_xyxy_orig = boxes_to_original(result["boxes_xyxy"].cpu().numpy(), info).astype(np.float32)
            # A box lying wholly in the letterbox padding clips to zero size: it cannot match anything, so drop it.
            inside = (pred_xyxy_orig[:, 2] > pred_xyxy_orig[:, 0]) & (pred_xyxy_orig[:, 3] > pred_xyxy_orig[:, 1])
            class_ids = result["class_ids"].cpu().numpy().astype(np.int64)[inside]
            detections.append(Detections(boxes_xyxy=pred_xyxy_orig[inside],
                                         scores=result["scores"].cpu().numpy().astype(np.float32)[inside],
                                         class_ids=class_ids, class_names=[self.class_names[c] for c in class_ids]))
        return detections

    def detect_batch(self, images: list[Image.Image | np.ndarray]) -> list[Detections]:
        """Several images in one forward pass, each letterboxed to the input size and mapped back with its own
        letterbox; the same detections as ``detect`` on each image (up to float summation order)."""
        prepared = [self._preprocess(image) for image in images]
        images_bchw = np.stack([image_chw for image_chw, _ in prepared])  # (B, 3, H, W)
        return self.postprocess(self._decoded(images_bchw), [info for _, info in prepared])

    def detect(self, image: Image.Image | np.ndarray) -> Detections:
        return self.detect_batch([image])[0]

    def render(self, image: Image.Image, detections: Detections, *, crop: bool = False, count: bool = False,
               crop_dir: str | Path = "img_crop") -> Image.Image:
        """Draws detections on a copy of ``image``; optionally prints per-class counts and saves crops."""
        if count:
            counts = np.bincount(detections.class_ids, minlength=len(self.class_names))
            print(f"{len(detections)} detections: "
                  + ", ".join(f"{name} {n}" for name, n in zip(self.class_names, counts) if n))
        if crop:
            save_crops(image.convert("RGB"), boxes_xyxy=detections.boxes_xyxy, crop_dir=crop_dir)
        return draw_detections(image, boxes_xyxy=detections.boxes_xyxy, scores=detections.scores,
                               class_ids=detections.class_ids, class_names=self.class_names)

    def detect_image(self, image: Image.Image, crop: bool = False, count: bool = False,
                     crop_dir: str | Path = "img_crop") -> Image.Image:
        """The image with boxes and ``name score`` labels drawn."""
        return self.render(image, self.detect(image), crop=crop, count=count, crop_dir=crop_dir)


class DecodedYOLO(nn.Module):
    """Network + decode in one graph: images (B, 3, H, W) in [0, 1] -> decoded (B, N, 5 + C), for ONNX export."""

    def __init__(self, net: nn.Module, *, anchors_px: Tensor, anchors_mask: list[list[int]],
                 input_shape: list[int], scale_x_y: list[float] | None):
        super().__init__()
        self.net = net
        self.register_buffer("anchors_px", anchors_px.detach().clone())  # (num_anchors, 2) input pixels
        self.anchors_mask, self.input_shape, self.scale_x_y = anchors_mask, tuple(input_shape), scale_x_y

    def forward(self, images: Tensor) -> Tensor:
        return decode_outputs(self.net(images), anchors_px=self.anchors_px, anchors_mask=self.anchors_mask,
                              input_shape=self.input_shape, scale_x_y=self.scale_x_y)


class YOLO(_Detector):
    """Detector built from a checkpoint: this project's (settings read from its config), a darknet ``.weights`` file
    with its ``cfg_path`` (settings from the cfg) or a published state_dict (settings from the arguments, defaulting
    to VOC classes, the yolov4 anchors and 416 x 416). Arguments that are not None override the checkpoint's
    settings; ``postprocess_settings`` holds the NMS settings (confidence, nms_iou, nms_type, max_det,
    multi_label)."""

    def __init__(self, *, model_path: str, classes_path: str | None = None, anchors_path: str | None = None,
                 anchors_mask: list[list[int]] | None = None, input_shape: int | list[int] | None = None,
                 model: str | None = None, letterbox_image: bool = True,
                 postprocess_settings: PostprocessSettings = DEFAULT_POSTPROCESS, device: str = "auto",
                 fp16: bool = False, strict: bool = True, precision: str = "auto", optimize: bool = True,
                 cfg_path: str | None = None):
        checkpoint = read_model_file(model_path, cfg_path=cfg_path)  # a darknet .weights file needs its cfg_path
        config = checkpoint["config"] if is_project_checkpoint(checkpoint) else {}
        model_name = model or checkpoint_variant(checkpoint) or "yolov4"  # a bare state_dict: from its keys
        class_names = (get_classes(classes_path) if classes_path
                       else config.get("class_names") or get_classes(DEFAULT_CLASSES_PATH))
        anchors = (get_anchors(anchors_path) if anchors_path
                   else config.get("anchors") or get_anchors(DEFAULT_ANCHORS_PATH[model_name]))
        anchors_mask = anchors_mask or config.get("anchors_mask") or DEFAULT_ANCHORS_MASK[model_name]
        net = build_model(model=model_name, num_classes=len(class_names), anchors_per_level=len(anchors_mask[0]))
        load_weights(net, model_path, model=model_name, strict=strict, checkpoint=checkpoint)
        if "bn_eps" in checkpoint:  # darknet files: normalise as darknet does
            set_bn_eps(net, checkpoint["bn_eps"])
        self.model_path = str(model_path)
        self._setup(net, model_name=model_name, class_names=class_names, anchors=anchors, anchors_mask=anchors_mask,
                    input_shape=input_shape or config.get("input_shape") or DEFAULT_INPUT_SHAPE,
                    scale_x_y=config.get("scale_x_y"), device=resolve_device(device), fp16=fp16,
                    precision=precision, optimize=optimize, source=f"checkpoint {model_path}")
        self.letterbox_image, self.postprocess_settings = bool(letterbox_image), postprocess_settings

    @classmethod
    def from_model(cls, net: nn.Module, *, config: dict[str, Any], letterbox_image: bool = True,
                   postprocess_settings: PostprocessSettings = DEFAULT_POSTPROCESS,
                   device: str | torch.device | None = None, fp16: bool = False, precision: str = "auto",
                   optimize: bool = True) -> YOLO:
        """Wraps an in-memory model (e.g. during training). ``config`` needs class_names, anchors, anchors_mask and
        input_shape (scale_x_y and model optional). The model stays on its device unless ``device`` is given, and
        detection restores its train/eval mode afterwards. With ``optimize`` detection runs a folded copy that is
        rebuilt whenever the model's weights changed, so it always reflects the current weights."""
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
                    optimize=optimize, source="YOLO.from_model config")
        self.letterbox_image, self.postprocess_settings = bool(letterbox_image), postprocess_settings
        return self

    def _setup(self, net: nn.Module, *, model_name: str | None, class_names: list[str], anchors: list[list[float]],
               anchors_mask: list[list[int]], input_shape: int | list[int], scale_x_y: list[float] | None,
               device: torch.device, fp16: bool, precision: str, optimize: bool, source: str) -> None:
        num_levels = len(net.heads) if hasattr(net, "heads") else len(anchors_mask)
        check_anchors_mask(anchors_mask, num_anchors=len(anchors), num_levels=num_levels, source=source)
        self.model_name = model_name
        self.class_names = list(class_names)
        self.anchors = [[float(w), float(h)] for w, h in anchors]
        self.anchors_mask = [list(level) for level in anchors_mask]
        self.input_shape = _input_hw(input_shape)
        self.scale_x_y = list(scale_x_y) if scale_x_y is not None else None
        self.device = device
        # fp16=True is the older spelling of precision="fp16"; as before it only applies on CUDA.
        self.precision = resolve_precision("fp16" if fp16 and device.type == "cuda" else precision, device)
        self.compute_dtype = DTYPES[self.precision]
        self.optimize = bool(optimize)
        self.net = net.to(device)
        self._inference_net = InferenceCache(dtype=self.compute_dtype, channels_last=True)
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

        optimize=True: the inference copy (BatchNorm folded, channels_last, weights in the compute dtype).
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

    def onnx_detector(self, onnx_path: str | Path | None = None) -> "OnnxYOLO":
        """This detector on the onnxruntime backend: exports the model (dynamic batch) to ``onnx_path``, or to a
        temporary file removed once loaded, and returns an ``OnnxYOLO`` with the same postprocessing settings."""
        with tempfile.TemporaryDirectory() as tmp_dir:
            path = Path(onnx_path) if onnx_path else Path(tmp_dir) / "model.onnx"
            self.export_onnx(path, dynamic_batch=True)
            return OnnxYOLO(onnx_path=str(path), letterbox_image=self.letterbox_image,
                            postprocess_settings=self.postprocess_settings, device=str(self.device))

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
        written: the model goes to a temporary name first and is renamed only once it passed, so a failed export
        never leaves a file behind. Returns the mismatch figures."""
        import onnx
        import onnxruntime

        net = inference_copy(self.net, dtype=torch.float32, channels_last=False).cpu()
        wrapper = DecodedYOLO(net, anchors_px=self._anchors_px.cpu(), anchors_mask=self.anchors_mask,
                              input_shape=self.input_shape, scale_x_y=self.scale_x_y).eval()
        height, width = self.input_shape
        generator = torch.Generator().manual_seed(0)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp_name)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter warns it is legacy; it needs no onnxscript
                torch.onnx.export(wrapper, (torch.rand(1, 3, height, width, generator=generator),), str(tmp_path),
                                  dynamo=False, opset_version=opset, input_names=["images"], output_names=["decoded"],
                                  dynamic_axes={"images": {0: "batch"}, "decoded": {0: "batch"}} if dynamic_batch
                                  else None)
            proto = onnx.load(str(tmp_path))
            if simplify:
                try:
                    import onnxsim
                except ImportError as err:
                    raise ValueError("export_onnx(simplify=True) needs the onnxsim package "
                                     "(pip install onnxsim)") from err
                proto, ok = onnxsim.simplify(proto)
                if not ok:
                    raise ValueError(f"{path}: onnxsim could not validate the simplified model")
            metadata = {"class_names": json.dumps(self.class_names), "input_shape": json.dumps(self.input_shape),
                        "model": self.model_name or "", "letterbox_image": json.dumps(self.letterbox_image)}
            for key, value in metadata.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, value
            onnx.checker.check_model(proto)
            onnx.save(proto, str(tmp_path))

            images = torch.rand(2 if dynamic_batch else 1, 3, height, width, generator=generator)
            with torch.inference_mode():
                expected = wrapper(images).numpy()  # (B, N, 5 + C)
            session = onnxruntime.InferenceSession(str(tmp_path), providers=["CPUExecutionProvider"])
            mismatch = onnx_mismatch(got=session.run(["decoded"], {"images": images.numpy()})[0], expected=expected)
            if mismatch["worst"] > 1.0:
                raise ValueError(f"{path}: onnxruntime output differs from PyTorch beyond float noise: boxes by "
                                 f"{mismatch['box_abs']:.3g} px ({mismatch['box_rel']:.3g} of their magnitude), "
                                 f"probabilities by {mismatch['prob_abs']:.3g}; nothing was written")
            os.replace(tmp_path, path)
        finally:
            tmp_path.unlink(missing_ok=True)
        return mismatch


def onnx_mismatch(*, got: np.ndarray, expected: np.ndarray) -> dict[str, float]:
    """How far two decoded outputs (B, N, 5 + C) differ: pred_cxcywh in input pixels against a tolerance
    relative to their magnitude, probabilities against an absolute one. ``worst`` > 1 means beyond tolerance.

    box_abs: max pixel difference; box_rel: max difference / max(|expected|, 1 px); prob_abs: max probability
    difference; worst: the largest difference divided by its allowed value, over all elements.
    """
    if got.shape != expected.shape or not np.isfinite(got).all():
        return {"box_abs": float("inf"), "box_rel": float("inf"), "prob_abs": float("inf"), "worst": float("inf")}
    got, expected = got.astype(np.float64), expected.astype(np.float64)
    box_diff = np.abs(got[..., :4] - expected[..., :4])
    prob_diff = np.abs(got[..., 4:] - expected[..., 4:])
    box_allowed = ONNX_BOX_ATOL + ONNX_BOX_RTOL * np.abs(expected[..., :4])
    worst = max(float((box_diff / box_allowed).max(initial=0.0)), float(prob_diff.max(initial=0.0)) / ONNX_PROB_ATOL)
    return {"box_abs": float(box_diff.max(initial=0.0)),
            "box_rel": float((box_diff / np.maximum(np.abs(expected[..., :4]), 1.0)).max(initial=0.0)),
            "prob_abs": float(prob_diff.max(initial=0.0)), "worst": worst}


class OnnxYOLO(_Detector):
    """Runs a model written by ``YOLO.export_onnx`` with onnxruntime; same preprocessing and postprocessing.

    Class names and input shape come from the file's metadata (``classes_path`` overrides the names)."""

    def __init__(self, *, onnx_path: str, classes_path: str | None = None, letterbox_image: bool = True,
                 postprocess_settings: PostprocessSettings = DEFAULT_POSTPROCESS, device: str = "auto"):
        import onnxruntime

        path = Path(onnx_path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {onnx_path}: no such file")
        providers = ["CPUExecutionProvider"]
        if resolve_device(device).type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        except Exception as err:  # onnxruntime raises its own unrelated exception types for unreadable files
            raise ValueError(f"ONNX model {onnx_path}: cannot be read ({type(err).__name__}: {err})") from err
        metadata = self.session.get_modelmeta().custom_metadata_map
        model_input = self.session.get_inputs()[0]
        if classes_path:
            self.class_names = get_classes(classes_path)
        elif "class_names" in metadata:
            self.class_names = json.loads(metadata["class_names"])
        else:
            raise ValueError(f"ONNX model {onnx_path}: has no class names in its metadata; pass classes_path")
        self.input_shape = _input_hw(model_input.shape[2:])
        self._input_name = model_input.name
        self._static_batch = model_input.shape[0] if isinstance(model_input.shape[0], int) else None
        self.letterbox_image = bool(letterbox_image)
        self.postprocess_settings = postprocess_settings

    def _finish_decode(self, outputs: Tensor) -> Tensor:
        return outputs

    def _forward(self, images_bchw: np.ndarray) -> Tensor:
        if self._static_batch is not None and len(images_bchw) != self._static_batch:
            # A fixed-batch export cannot take the whole batch at once, so it runs in chunks of its batch size.
            chunks = [images_bchw[i:i + self._static_batch] for i in range(0, len(images_bchw), self._static_batch)]
        else:
            chunks = [images_bchw]
        outputs = [self.session.run(None, {self._input_name: chunk})[0] for chunk in chunks]  # each (b, N, 5 + C)
        return torch.from_numpy(np.concatenate(outputs))
