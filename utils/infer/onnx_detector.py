"""ONNX: export a network with its decode in one graph, check onnxruntime against PyTorch, and ``OnnxYOLO``, which
runs an exported file with the same pre- and postprocessing as ``YOLO``.

``YOLO.export_onnx`` and ``YOLO.onnx_detector`` (utils/infer/detector.py) are the entry points that use this.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from utils.core.config import UserError
from utils.core.decode import decode_outputs
from utils.core.device import resolve_device
from utils.infer.pipeline import BaseDetector, check_class_count, class_names_for, input_hw
from utils.infer.postprocess import DEFAULT_POSTPROCESS, PostprocessSettings

# ONNX Runtime vs PyTorch on the same fp32 graph: boxes within ONNX_BOX_RTOL of their magnitude (plus ONNX_BOX_ATOL
# pixels for coordinates near 0), probabilities within ONNX_PROB_ATOL. Summation order differs between the two
# runtimes, so a 1764 px box may move by a few thousandths of a pixel: float noise, not an export error.
ONNX_BOX_RTOL, ONNX_BOX_ATOL, ONNX_PROB_ATOL = 1e-4, 1e-3, 1e-4


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


def traced_onnx(module: nn.Module, *, example: Tensor, output_names: list[str], opset: int,
                dynamic_axes: dict[str, dict[int, str]] | None) -> bytes:
    """``module`` (eval mode, on the CPU) traced on ``example`` into an ONNX model in memory, input ``images``;
    ``dynamic_axes`` as torch.onnx.export takes them."""
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns it is legacy; it needs no onnxscript
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=output_names, dynamic_axes=dynamic_axes)
    return buffer.getvalue()


def _write_onnx(wrapper: DecodedYOLO, path: Path, *, example: Tensor, opset: int, dynamic_batch: bool,
                simplify: bool, metadata: dict[str, str], shown_path: Path) -> None:
    """Exports ``wrapper`` to ``path`` with input ``images`` and output ``decoded``, optionally simplified, with
    ``metadata`` in its properties; ``shown_path`` is the name error messages give."""
    import onnx

    proto = onnx.load_model_from_string(traced_onnx(
        wrapper, example=example, output_names=["decoded"], opset=opset,
        dynamic_axes={"images": {0: "batch"}, "decoded": {0: "batch"}} if dynamic_batch else None))
    if simplify:
        try:
            import onnxsim
        except ImportError as err:
            raise ValueError("export_onnx(simplify=True) needs the onnxsim package (pip install onnxsim)") from err
        proto, ok = onnxsim.simplify(proto)
        if not ok:
            raise ValueError(f"{shown_path}: onnxsim could not validate the simplified model")
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def export_decoded_onnx(wrapper: DecodedYOLO, path: str | Path, *, opset: int, dynamic_batch: bool, simplify: bool,
                        metadata: dict[str, str]) -> dict[str, float]:
    """Writes ``wrapper`` (eval mode, on the CPU) as an ONNX model once onnxruntime matches PyTorch on random
    images (``onnx_mismatch``): the model goes to a temporary name first and is renamed only once it passed, so a
    failed export never leaves a file behind. Returns the mismatch figures."""
    import onnxruntime

    height, width = wrapper.input_shape
    generator = torch.Generator().manual_seed(0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        _write_onnx(wrapper, tmp_path, example=torch.rand(1, 3, height, width, generator=generator), opset=opset,
                    dynamic_batch=dynamic_batch, simplify=simplify, metadata=metadata, shown_path=path)
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


def _interface_problem(model_input, model_output) -> str | None:
    """What keeps an ONNX model from being run as this project exports it (input ``images`` (B, 3, h, w) with
    fixed h and w, multiples of 32; output ``decoded`` (B, N, 5 + C)); None when it fits."""
    shape = list(model_input.shape)
    fixed = len(shape) == 4 and all(isinstance(v, int) and v > 0 for v in shape[1:])
    if not fixed or shape[1] != 3 or shape[2] % 32 or shape[3] % 32:
        return (f"its input '{model_input.name}' has shape {shape}, not [batch, 3, h, w] with fixed h and w, "
                f"multiples of 32")
    out = list(model_output.shape)
    if len(out) != 3 or (isinstance(out[2], int) and out[2] < 6):
        return f"its output '{model_output.name}' has shape {out}, not [batch, boxes, 5 + classes]"
    return None


class OnnxYOLO(BaseDetector):
    """Runs a model written by ``YOLO.export_onnx`` with onnxruntime; same preprocessing and postprocessing.

    Class names and input shape come from the file's metadata; a ``classes_path`` must list the same names. A file
    without names in its metadata takes ``classes_path`` as given, if its output has room for as many classes."""

    engine, precision = "ONNX Runtime", "fp32"

    def __init__(self, *, onnx_path: str, classes_path: str | None = None, letterbox_image: bool = True,
                 postprocess_settings: PostprocessSettings = DEFAULT_POSTPROCESS, device: str = "auto"):
        import onnxruntime

        path = Path(onnx_path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {onnx_path}: no such file")
        providers = ["CPUExecutionProvider"]
        if resolve_device(device).type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = onnxruntime.SessionOptions()
        # Idle threads would otherwise spin after each run, taking the cores from the NMS that follows and from
        # any other engine in the process (bench_speed.py's interleaved rows ran up to 1.7x slower after it).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as err:  # onnxruntime raises its own unrelated exception types for unreadable files
            raise ValueError(f"ONNX model {onnx_path}: cannot be read ({type(err).__name__}: {err})") from err
        metadata = self.session.get_modelmeta().custom_metadata_map
        model_input, model_output = self.session.get_inputs()[0], self.session.get_outputs()[0]
        export_hint = (f"it was not exported by this project; export a checkpoint with python predict.py "
                       f"--mode=export_onnx --model_path=<checkpoint> --onnx_save_path={onnx_path}")
        problem = _interface_problem(model_input, model_output)
        if problem:
            raise UserError(f"ONNX model {onnx_path}: {problem}; {export_hint}")
        stored = json.loads(metadata["class_names"]) if "class_names" in metadata else None
        class_names = class_names_for(classes_path=classes_path, stored=stored, source=f"ONNX model {onnx_path}")
        if class_names is None:
            raise UserError(f"ONNX model {onnx_path}: has no class names in its metadata, so {export_hint}; "
                            f"or pass classes_path")
        if stored is None:
            classes = model_output.shape[2] - 5 if isinstance(model_output.shape[2], int) else None
            check_class_count(class_names, classes_source=f"classes file {classes_path}", model_classes=classes,
                              source=f"ONNX model {onnx_path}")
        self.class_names = class_names
        self.input_shape = input_hw(model_input.shape[2:])
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
