"""OpenVINO: ``OpenVinoYOLO`` runs the network of a ``YOLO`` with OpenVINO on the CPU, with the same preprocessing,
decode (the ``YOLO``'s own) and NMS (utils/infer/pipeline.py).

The network is exported once to ONNX in memory (BatchNorm folded, fp32; ``traced_onnx``, about 2x faster than
``openvino.convert_model`` on the module for YOLOv4) and compiled once per input shape. ``YOLO.openvino_detector``
(utils/infer/detector.py) builds one; utils/infer/backends.py decides which engine ``backend=auto`` runs.

In bf16 the heads' prediction convolutions, whose outputs are the raw box offsets and logits, stay in f32
(``keep_outputs_f32``). Computed in bf16 (weights and outputs rounded to 8 significant bits) they moved the
26-epoch BCE checkpoint's mAP@0.5 by +0.0021; computed in f32 from the same bf16 features, by +0.0004. They are a
small part of the work: 0.2 % of YOLOv4-tiny's multiply-adds with 3 classes, 2 % with 80.
"""
from __future__ import annotations

import functools
import io
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from utils.core.config import UserError
from utils.core.device import PRECISIONS
from utils.infer.folding import inference_copy, weights_fingerprint
from utils.infer.onnx_detector import traced_onnx
from utils.infer.pipeline import BaseDetector

# The project's precision names -> OpenVINO's inference precision hint; 'auto' sets none: OpenVINO's default for
# the CPU (bf16 where it computes bf16 natively, f32 elsewhere).
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}
PRECISION_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
ONNX_OPSET = 12  # the graph OpenVINO builds is the same from opset 12 to 18 (Mish fused either way)
# The IR runtime attribute that makes the CPU plugin keep a node in its original precision under a lower inference
# precision ("no conversion to f16", which the plugin applies to bf16 too). It has no Python API, so it is written
# into the IR.
KEEP_PRECISION = {"name": "DisablePrecisionConversion", "version": "0", "value": "dynamic:f16"}


def openvino_module():
    """The openvino package, or a UserError saying how to get it."""
    try:
        import openvino
    except ImportError as err:
        raise UserError("backend openvino: the openvino package is not installed; pip install openvino, or choose "
                        "backend torch or auto") from err
    return openvino


@functools.cache
def openvino_core():
    """The process's one OpenVINO Core, shared by every detector and kept to the end.

    Each Core that loads the CPU plugin points the calling thread's signal stack (sigaltstack) at a buffer of its
    own and, when released, puts back the stack it found, which may be the buffer of a Core released before it.
    The next signal handled on that thread (SIGCHLD when a child process ends, with torch's DataLoader handler in
    place) then kills the process with SIGSEGV. One Core never released leaves no such buffer behind."""
    return openvino_module().Core()


def openvino_precision(precision: str) -> str:
    """The precision OpenVINO runs in on this CPU for the project's ``precision`` setting ('auto': OpenVINO's
    default hint, bf16 where the CPU computes it natively, else fp32), in the project's names."""
    hint = PRECISION_HINTS.get(precision)
    if hint is None:
        hint = openvino_core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    return PRECISION_NAMES.get(hint, hint)


def output_convolutions(model) -> list[str]:
    """Friendly names of the Convolution nodes that compute ``model``'s outputs (an ``openvino.Model``; for YOLO the
    heads' prediction convolutions), found by walking up from each output through the nodes between (bias Add,
    Convert, Reshape), following the input that is not a constant."""
    names = []
    for result in model.get_results():
        node = result.input_value(0).get_node()
        while node.get_type_name() != "Convolution":
            inputs = [value.get_node() for value in node.input_values()
                      if value.get_node().get_type_name() != "Constant"]
            if not inputs:
                break
            node = inputs[0]
        else:
            names.append(node.get_friendly_name())
    return names


def keep_outputs_f32(model, core):
    """``model`` (an ``openvino.Model``) with its output convolutions marked to run in f32 whatever the inference
    precision: written as IR, the attribute added to those layers, read back."""
    names = set(output_convolutions(model))
    with tempfile.TemporaryDirectory() as folder:
        xml_path, bin_path = Path(folder) / "net.xml", Path(folder) / "net.bin"
        openvino_module().save_model(model, xml_path, compress_to_fp16=False)
        tree = ET.parse(xml_path)
        for layer in tree.getroot().iter("layer"):
            if layer.get("type") == "Convolution" and layer.get("name") in names:
                rt_info = layer.find("rt_info")
                if rt_info is None:
                    rt_info = ET.SubElement(layer, "rt_info")
                ET.SubElement(rt_info, "attribute", KEEP_PRECISION)
        weights = openvino_module().Tensor(np.fromfile(bin_path, dtype=np.uint8))
        return core.read_model(ET.tostring(tree.getroot()), weights)


def runtime_precisions(compiled) -> dict[str, str]:
    """Friendly name -> the precision the compiled model records each Convolution running in ('f32', 'bf16')."""
    return {op.get_friendly_name(): op.get_rt_info()["runtimePrecision"].astype(str)
            for op in compiled.get_runtime_model().get_ordered_ops()
            if op.get_rt_info()["layerType"].astype(str) == "Convolution"}


class OpenVinoYOLO(BaseDetector):
    """``source``'s network run by OpenVINO on the CPU; class names, input shape, letterbox, NMS settings and batch
    size are taken from ``source`` (a ``YOLO``), which also decodes the outputs.

    precision: 'auto' = OpenVINO's default for this CPU, 'fp32' / 'bf16' = that inference precision hint ('fp16'
    is CUDA-only in this project). ``self.precision`` is what the compiled network runs in (in bf16 the prediction
    convolutions stay f32: keep_outputs_f32). The network is
    converted again when ``source``'s weights changed (a detector wrapping a model being trained), and compiled
    once per input shape (B, 3, H, W); ``compilations`` counts the compilations."""

    engine = "OpenVINO"

    def __init__(self, source, *, precision: str = "auto"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "fp16":
            raise ValueError("precision 'fp16' needs a CUDA device; OpenVINO runs on the CPU here: use 'bf16' or "
                             "'fp32'")
        openvino_module()  # a UserError saying how to install it, also when a Core was made before
        self.source = source
        self.class_names, self.input_shape = list(source.class_names), list(source.input_shape)
        self.letterbox_image, self.postprocess_settings = source.letterbox_image, source.postprocess_settings
        self.batch_size = source.batch_size
        self._core = openvino_core()
        hint = PRECISION_HINTS.get(precision)
        # One inference stream with torch's thread count: the same share of the CPU as the PyTorch detector.
        self._config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                        **({"INFERENCE_PRECISION_HINT": hint} if hint else {})}
        self.precision = openvino_precision(precision)
        self._model, self._fingerprint = None, None
        self._compiled: dict[tuple[int, ...], tuple] = {}  # (B, 3, H, W) -> (compiled model, its infer request)
        self.compilations = 0
        self._warned = False

    def _network(self):
        """The network as an OpenVINO model (batch, height and width left dynamic), converted again when the
        source's weights changed since the last conversion."""
        fingerprint = weights_fingerprint(self.source.net)
        if self._model is None or fingerprint != self._fingerprint:
            net = inference_copy(self.source.net, dtype=torch.float32, channels_last=False).cpu()
            height, width = self.input_shape
            onnx_bytes = traced_onnx(net, example=torch.zeros(1, 3, height, width), opset=ONNX_OPSET,
                                     output_names=[f"level{i}" for i in range(len(self.source.anchors_mask))],
                                     dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}})
            model = openvino_module().convert_model(io.BytesIO(onnx_bytes))
            self._model = keep_outputs_f32(model, self._core) if self.precision == "bf16" else model
            self._fingerprint, self._compiled = fingerprint, {}
        return self._model

    def _compiled_for(self, shape: tuple[int, ...]) -> tuple:
        model = self._network()
        if shape not in self._compiled:
            # Static shapes run faster than dynamic ones; a compiled model keeps its shape when the model is
            # reshaped for the next one.
            model.reshape({0: list(shape)})
            compiled = self._core.compile_model(model, "CPU", self._config)
            self._compiled[shape] = (compiled, compiled.create_infer_request())
            self.compilations += 1
            if self.precision == "bf16":
                self._check_outputs_f32(compiled)
        return self._compiled[shape]

    def _check_outputs_f32(self, compiled) -> None:
        """Says so, once, when this OpenVINO ran the prediction convolutions in bf16 after all (a version that no
        longer reads the attribute keep_outputs_f32 writes): the detections then move more against fp32."""
        if self._warned:
            return
        ran_in = runtime_precisions(compiled)
        slipped = [name for name in output_convolutions(self._model) if ran_in.get(name, "f32") != "f32"]
        if slipped:
            self._warned = True
            print(f"note: OpenVINO {openvino_module().__version__} ran the prediction convolutions in bf16 "
                  f"({', '.join(slipped)}): mAP may move by about 0.002 against fp32; --precision=fp32 for fp32's "
                  "detections", flush=True)

    def raw_outputs(self, images_bchw: np.ndarray) -> list[Tensor]:
        """Head outputs (B, A * (5 + C), H, W) per level, coarsest first, float32, on the CPU, from images
        (B, 3, H, W) float32 in [0, 1]."""
        images = np.ascontiguousarray(images_bchw, dtype=np.float32)
        compiled, request = self._compiled_for(tuple(images.shape))
        # The request reads the array in place (no copy of the input); the outputs are copies, since the request
        # reuses its buffers at the next call.
        results = request.infer({0: images}, share_inputs=True)
        return [torch.from_numpy(results[output]) for output in compiled.outputs]

    def _forward(self, images_bchw: np.ndarray) -> list[Tensor]:
        return self.raw_outputs(images_bchw)

    def _finish_decode(self, outputs: list[Tensor]) -> Tensor:
        return self.source.decode([raw.to(self.source.device) for raw in outputs])
