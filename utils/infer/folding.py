"""The inference copy of a network: BatchNorm folded into the convolutions, channels_last, compute dtype.

Training weights are never touched: ``inference_copy`` works on a deep copy, and ``InferenceCache`` rebuilds that
copy whenever a parameter or buffer of the source network changed (an optimizer step or a BatchNorm update bumps
the tensor's version counter), so a detector wrapping a model being trained always sees its current weights.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


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
