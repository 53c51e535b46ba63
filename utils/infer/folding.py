"""The inference copy of a network: BatchNorm folded into the convolutions, channels_last, compute dtype, and
optionally compiled with torch.compile.

Training weights are never touched: ``inference_copy`` works on a deep copy, and ``InferenceCache`` rebuilds that
copy whenever a parameter or buffer of the source network changed (an optimizer step or a BatchNorm update bumps
the tensor's version counter), so a detector wrapping a model being trained always sees its current weights.
"""
from __future__ import annotations

import copy
import shutil

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from utils.core.config import UserError


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


class ExpMish(nn.Module):
    """Mish with one exponential, for torch.compile: x * tanh(softplus(x)) = x * n / (n + 2) with n = e^x (e^x + 2).

    aten's mish is a single unfused kernel that took 56 % of YOLOv4's bf16 forward on an AMX CPU (more than all its
    convolutions; benchmarks/profile_bf16.py); compiled, this form becomes one loop with the neighbouring
    element-wise work. Above x = 20, n / (n + 2) is 1 in fp32, so the exponential is clamped there (no overflow).
    Eager it makes several passes over memory and rounds its intermediates to the tensor's dtype (bf16), so only
    ``compiled_copy`` uses it (inductor computes the fused loop in fp32)."""

    def forward(self, x: Tensor) -> Tensor:
        exp_x = torch.exp(x.clamp(max=20.0))
        n = exp_x * (exp_x + 2)
        return x * (n / (n + 2))


def require_compiler(device: torch.device) -> None:
    """A UserError unless torch.compile can build kernels for ``device``: on the CPU inductor compiles C++."""
    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++", "cl")):
        raise UserError("torch_compile=True: torch.compile needs a C++ compiler on the CPU (g++, clang++ or MSVC's "
                        "cl) and none is on PATH; install one or leave torch_compile off")


def compiled_copy(infer: nn.Module, *, device: torch.device) -> nn.Module:
    """``infer`` (an inference copy; its Mish modules swapped for ``ExpMish`` in place) through torch.compile with
    inductor's freezing: the weights become constants, so oneDNN packs each convolution's weights once instead of
    on every call. Compiled on the first call of each input shape (about 20 s on two cores), the same detections
    otherwise. On the CPU inductor needs a C++ compiler (``require_compiler``)."""
    require_compiler(device)
    for module in list(infer.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Mish):
                setattr(module, name, ExpMish())
    return torch.compile(infer, options={"freezing": True})


def weights_fingerprint(net: nn.Module) -> tuple:
    """Changes when any parameter or buffer is replaced or modified in place (storage and version counter; a write
    through ``.data`` bypasses the counter and is not seen).
    One walk over the modules' own tensors: half the cost of parameters() + buffers(), which runs on every
    detector call (0.09 ms for yolov4-tiny, 0.5 ms for YOLOv4)."""
    return tuple((t.data_ptr(), t._version) for module in net.modules()
                 for t in (*module._parameters.values(), *module._buffers.values()) if t is not None)


class InferenceCache:
    """Holds the inference copy of ``net`` (compiled with ``compile``) and rebuilds it when the net's weights changed
    since the last call."""

    def __init__(self, *, dtype: torch.dtype, channels_last: bool, compile: bool = False):
        self.dtype, self.channels_last, self.compile = dtype, channels_last, compile
        self._fingerprint, self._net = None, None

    def get(self, net: nn.Module) -> nn.Module:
        fingerprint = weights_fingerprint(net)
        if self._net is None or fingerprint != self._fingerprint:
            infer = inference_copy(net, dtype=self.dtype, channels_last=self.channels_last)
            if self.compile:
                infer = compiled_copy(infer, device=next(infer.parameters()).device)
            self._net = infer
            self._fingerprint = fingerprint
        return self._net
