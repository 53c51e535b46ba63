"""Where code runs and in what precision: the device, and the CPU features that decide the default precision."""
import sys
from functools import lru_cache
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Whether 'auto' picks bf16 on CPUs that compute it natively. On: on the six checkpoints of the main job
# (`compare_focal.py --seeds=3`) bf16 moved the BCCD test mAP@0.5 by at most 0.0008 against fp32, inside the 0.002
# allowed for a default that changes numerics (benchmarks/bench_precision.py; README, "Which inference path you
# get"). The previous recipe's checkpoint had moved by -0.0029: `precision=fp32` gives exact fp32 detections.
AUTO_CPU_BF16 = True


@lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, instruction-set flags) of the CPU, from /proc/cpuinfo; ("unknown", no flags) where that cannot
    be read: only Linux exposes them in a standard place."""
    if not sys.platform.startswith("linux"):
        return "unknown", frozenset()
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "unknown", frozenset()
    fields = {}
    for line in lines:  # the first processor's block is enough: the fields repeat per core
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields.get("model name", "unknown"), frozenset(fields.get("flags", "").split())


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True where oneDNN can run bf16 convolutions in hardware (AVX512-BF16 or AMX-BF16).

    Without those instructions bf16 is emulated and slower than fp32, so 'auto' must not pick it there.
    Where the CPU flags cannot be read (not Linux) this answers False (fp32 stays the default).
    """
    if not torch.backends.mkldnn.is_available():
        return False
    flags = cpu_info()[1]
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


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
