"""The engine detection runs on: PyTorch, ONNX Runtime or OpenVINO, and what ``backend='auto'`` picks.

predict.py, get_map.py, training's in-loop mAP and the comparison's scoring all build a ``YOLO`` and hand it to
``on_backend``, which returns it or the same model on another engine (same preprocessing, decode and NMS).
"""
from __future__ import annotations

import torch

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
# auto picks the fastest engine installed whose mAP stays within 0.002 of PyTorch fp32: OpenVINO on the CPU. Gate:
# get_map.py on the BCCD test images with the main job's recipe checkpoints (yolov4-tiny, 480x640; bce / focal
# seed 11, 2 epochs) on a CPU without native bf16: PyTorch fp32 0.1938 / 0.0057; OpenVINO f32 (its default on such
# CPUs) the same to every printed digit; OpenVINO bf16 (its default on CPUs with AVX512-BF16 / AMX; emulated on
# the gate CPU) +0.0004 / -0.0004, PyTorch bf16 +0.0008 / -0.0004. On an AMD EPYC with AVX2 only, the same two
# runs trained there scored equal to all digits with OpenVINO (f32) and PyTorch fp32. Speed (README, "Benchmarks"):
# ONNX Runtime is slower than PyTorch on the Intel CPU and, on the AMD one, slower than OpenVINO on YOLOv4 (1.06x
# vs 1.79x PyTorch fp32) and level with it on YOLOv4-tiny, so auto does not pick it. On CUDA PyTorch runs
# (OpenVINO is a CPU engine here).
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
    return "openvino", "the fastest CPU engine in this project's benchmarks, mAP within 0.002 of PyTorch fp32"


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
    if engine == "onnxruntime":
        return detector.onnx_detector()
    if engine == "openvino":
        return detector.openvino_detector(precision=precision)
    return detector
