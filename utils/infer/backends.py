"""The engine detection runs on: PyTorch, ONNX Runtime or OpenVINO, and what ``backend='auto'`` picks.

predict.py, get_map.py, training's in-loop mAP and the comparison's scoring all build a ``YOLO`` and hand it to
``on_backend``, which returns it or the same model on another engine (same preprocessing, decode and NMS).
"""
from __future__ import annotations

import torch

from utils.core.device import resolve_precision

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
# auto picks the fastest engine installed whose mAP stays within 0.002 of PyTorch fp32 (the gate: get_map.py on the
# 72 BCCD test images with 26-epoch checkpoints of the main job and the family, yolov4-tiny at 480x640,
# benchmarks/bench_precision.py; the figures are in the README, "Which inference path you get"). On a CPU that is
# OpenVINO at every precision:
# - CPU without native bf16: OpenVINO's default there is f32: the same mAP as PyTorch fp32 to every digit and
#   1.5-1.8x its speed (PyTorch's bf16 is emulated and slow there).
# - CPU with native bf16 (AVX512-BF16 / AMX): OpenVINO's default there is bf16, 1.5-1.8x PyTorch bf16 on
#   YOLOv4-tiny and 3-4x on YOLOv4. With the heads' prediction convolutions in bf16 it moved the 26-epoch BCE
#   mAP by +0.0021; they run in f32 (openvino_detector.keep_outputs_f32), and it stays within the gate.
# - CUDA: PyTorch (OpenVINO is a CPU engine here). ONNX Runtime is not picked: at best it tied OpenVINO (YOLOv4-tiny
#   end to end on an AMD CPU without bf16) and it is slower than PyTorch bf16 where bf16 is native.
_announced: set[str] = set()


def openvino_installed() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def auto_backend(device: torch.device) -> tuple[str, str]:
    """(engine, why) for ``backend='auto'`` on ``device``."""
    if device.type != "cpu":
        return "torch", f"the device is {device}; OpenVINO runs on the CPU only"
    if not openvino_installed():
        return "torch", "OpenVINO is not installed; pip install openvino for the faster CPU engine"
    return "openvino", "the fastest CPU engine in this project's benchmarks, mAP within 0.002 of fp32"


def scoring_label(device: torch.device, *, backend: str, precision: str = "auto") -> str:
    """"<precision> on <engine>", as a detector from ``on_backend`` names what it runs, for the user's ``backend``
    and ``precision`` settings on ``device``, without building one: to tell whether earlier scores came from the
    same engine and precision."""
    engine = auto_backend(device)[0] if backend == "auto" else backend
    if engine == "onnxruntime":
        return "fp32 on ONNX Runtime"
    if engine == "openvino":
        from utils.infer.openvino_detector import openvino_precision

        return f"{openvino_precision(precision)} on OpenVINO"
    return f"{resolve_precision(precision, device)} on PyTorch"


def on_backend(detector, *, backend: str, precision: str = "auto"):
    """``detector`` (a ``YOLO``) on the engine ``backend`` names: itself for torch, its ``onnx_detector()`` for
    onnxruntime (fp32), its ``openvino_detector(precision=precision)`` for openvino; auto as ``auto_backend``
    decides, said once per process. ``precision`` is the user's setting, before 'auto' was resolved."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    engine = backend
    if backend == "auto":
        engine, why = auto_backend(detector.device)
        message = f"backend auto: {engine} ({why})"
        if message not in _announced:
            _announced.add(message)
            print(message, flush=True)
    if engine != "torch" and detector.torch_compile:  # compiling is the PyTorch engine's; say so, not ignore it
        print(f"note: torch_compile applies to the PyTorch engine; this detection runs on {engine}, so nothing is "
              f"compiled (--backend=torch to compile)", flush=True)
    if engine == "onnxruntime":
        return detector.onnx_detector()
    if engine == "openvino":
        return detector.openvino_detector(precision=precision)
    return detector
