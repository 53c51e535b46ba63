"""The inference copy of a network: BatchNorm folded into the convolutions, channels_last, compute dtype.

Training weights are never touched: ``inference_copy`` works on a deep copy, and ``InferenceCache`` rebuilds that
copy whenever a parameter or buffer of the source network changed (an optimizer step or a BatchNorm update bumps
the tensor's version counter), so a detector wrapping a model being trained always sees its current weights.
"""
from __future__ import annotations

import copy
import sys
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Whether 'auto' picks bf16 on CPUs that compute it natively. On: on the six checkpoints of the main job
# (`compare_focal.py --seeds=3`) bf16 moved the BCCD test mAP@0.5 by at most 0.0008 against fp32, inside the 0.002
# allowed for a default that changes numerics (benchmarks/bench_precision.py; README, "Which inference path you
# get"). The previous recipe's checkpoint had moved by -0.0029: `precision=fp32` gives exact fp32 detections.
AUTO_CPU_BF16 = True


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True where oneDNN can run bf16 convolutions in hardware (AVX512-BF16 or AMX-BF16).

    Without those instructions bf16 is emulated and slower than fp32, so 'auto' must not pick it there.
    Only Linux exposes the CPU flags in a standard place; elsewhere this answers False (fp32 stays the default).
    """
    if not torch.backends.mkldnn.is_available() or not sys.platform.startswith("linux"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> the fastest precision this project has checked against fp32 on this device; others validated.

    auto: bf16 on CPUs with native bf16 (while AUTO_CPU_BF16), fp32 on other CPUs and on CUDA (fp16 there is a
    choice, not a default, since its detections have not been checked against fp32 here). fp16 is CUDA-only.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cpu" and AUTO_CPU_BF16 and cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU")
    return precision


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """In place: every (conv, bn) pair of a module with ``conv`` and ``bn`` children (``ConvBNAct``) becomes one
    conv with bias and an Identity. The net must be in eval mode: folding uses the running statistics."""
    for module in net.modules():
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(conv, bn)
            module.bn = nn.Identity()
    return net


def inference_copy(net: nn.Module, *, dtype: torch.dtype, channels_last: bool = True) -> nn.Module:
    """Eval-mode deep copy with BatchNorm folded, weights in ``dtype``, optionally channels_last, no gradients.

    Weights are cast once here instead of on every call, which is what autocast would do under inference mode.
    """
    infer = fold_batchnorm(copy.deepcopy(net).eval())
    infer = infer.to(dtype=dtype, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for param in infer.parameters():
        param.requires_grad_(False)
    return infer


def weights_fingerprint(net: nn.Module) -> tuple:
    """Changes when any parameter or buffer is replaced or modified in place (storage and version counter)."""
    return tuple((t.data_ptr(), t._version) for t in (*net.parameters(), *net.buffers()))


class InferenceCache:
    """Holds the inference copy of ``net`` and rebuilds it when the net's weights changed since the last call."""

    def __init__(self, *, dtype: torch.dtype, channels_last: bool):
        self.dtype, self.channels_last = dtype, channels_last
        self._fingerprint, self._net = None, None

    def get(self, net: nn.Module) -> nn.Module:
        fingerprint = weights_fingerprint(net)
        if self._net is None or fingerprint != self._fingerprint:
            self._net = inference_copy(net, dtype=self.dtype, channels_last=self.channels_last)
            self._fingerprint = fingerprint
        return self._net
