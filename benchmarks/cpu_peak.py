"""What a forward pass could reach on this CPU: the CPU's name and the flags that decide the precision paths, its
measured matmul peak (a large torch.matmul), and a network's GFLOP per image (convolution MACs counted with hooks).

bench_speed.py prints the CPU line at the top and each forward row's share of the peak.
"""
import time

import torch
from torch import nn

from utils.core.device import cpu_has_native_bf16, cpu_info

FLAGS_SHOWN = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")


def cpu_line() -> str:
    """'CPU: <model name>; flags: amx_bf16 no, ..., avx2 yes', the flags that set which precision paths run."""
    name, flags = cpu_info()
    shown = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in FLAGS_SHOWN)
    return f"CPU: {name}; flags: {shown}"


def matmul_gflops(dtype: torch.dtype, *, size: int = 2048, reps: int = 5) -> float:
    """The best GFLOP/s of (size x size) @ (size x size) in ``dtype`` over ``reps`` timed calls after one warm-up,
    with torch's current thread count: 2 * size^3 floating-point operations per call."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(dtype) for _ in range(2))
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def matmul_peaks() -> dict[str, float]:
    """GFLOP/s peaks measured here: fp32 always, bf16 where the CPU computes it natively (emulated bf16 has no
    meaningful peak of its own: its rows are compared with the fp32 peak)."""
    peaks = {"fp32": matmul_gflops(torch.float32)}
    if cpu_has_native_bf16():
        peaks["bf16"] = matmul_gflops(torch.bfloat16)
    return peaks


def conv_gflop(net: nn.Module, *, input_hw: tuple[int, int]) -> float:
    """GFLOP of one image's forward through ``net``'s convolutions (2 per multiply-accumulate; activations, adds
    and upsampling are left out, as darknet's BFLOPS count leaves them out), counted with forward hooks."""
    macs = []

    def count(module: nn.Conv2d, inputs, output) -> None:
        kernel_h, kernel_w = module.kernel_size
        macs.append(output[0].numel() * (module.in_channels // module.groups) * kernel_h * kernel_w)

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 3, *input_hw))
    finally:
        for hook in hooks:
            hook.remove()
    return 2 * sum(macs) / 1e9


def peak_share(*, gflop: float, seconds: float, precision: str, peaks: dict[str, float]) -> str:
    """'<GFLOP/s> (<share> of the <precision> peak)' of a forward taking ``seconds``; bf16 without a native peak
    is compared with the fp32 peak."""
    peak_name = precision if precision in peaks else "fp32"
    rate = gflop / seconds
    return f"{rate:.0f} ({rate / peaks[peak_name]:.0%} of {peak_name} peak)"
