"""Where PyTorch's bf16 forward loses against OpenVINO's: one network (random weights, objectness prior 0.01), one
input (batch 1, ``size`` x ``size``), the same weights in every variant:
- ``eager``: the detector's PyTorch path (utils/infer/folding.py: BatchNorm folded, bf16 weights, channels_last);
- ``compiled``: that module as ``torch_compile=True`` runs it (utils/infer/folding.compiled_copy: Mish written with
  one exponential, torch.compile with inductor's freezing, so the convolutions' weights are packed once for oneDNN
  and Mish and the adds become fused C++ loops);
- ``openvino``: OpenVINO with the bf16 precision hint (utils/infer/openvino_detector.py).

It prints the interleaved warm medians with the speed-up against ``eager`` (median of per-round ratios), the
largest output difference against fp32 eager, the compile time, and two per-operation breakdowns: torch.profiler's
self time of the eager forward grouped into convolutions, Mish, concatenation, layout and dtype conversions,
pooling, upsampling, adds; OpenVINO's own per-node counters grouped the same way (``PERF_COUNT``). Meant for a CPU
that computes bf16 natively (AVX512-BF16 or AMX: the CPU line says); elsewhere bf16 is emulated and the figures
say nothing about this path.

    python benchmarks/profile_bf16.py                                  # YOLOv4, 416
    python benchmarks/profile_bf16.py --model=yolov4-tiny --reps=30
"""
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_speed import net_and_config  # noqa: E402
from cpu_peak import conv_gflop, cpu_line  # noqa: E402

from utils.core.config import resolve_config, run_cli, settings_of  # noqa: E402
from utils.infer.folding import compiled_copy, inference_copy  # noqa: E402
from yolo import YOLO  # noqa: E402

model: str = "yolov4"  # yolov4 or yolov4-tiny
size: int = 416  # input height and width
reps: int = 15  # interleaved timed rounds
threads: int = 0  # torch and OpenVINO threads; 0 = torch's default
variants: list[str] = ["eager", "compiled", "openvino"]  # which variants to time
profile: bool = True  # print the per-operation breakdowns

# Operation name -> group, for torch.profiler's aten ops and OpenVINO's node types.
# Checked in order: OpenVINO's "Convert" (a precision conversion) must not count as a convolution.
GROUPS = {
    "layout/dtype": ("copy_", "contiguous", "to", "_to_copy", "clone", "reorder", "convert", "transpose"),
    "convolution": ("conv", "mkldnn_convolution", "convolution"),
    "mish": ("mish",),
    "concat": ("cat", "concat"),
    "pooling": ("max_pool", "maxpool", "pooling"),
    "upsample": ("upsample", "interpolate"),
    "add": ("add", "eltwise"),
    "leaky relu": ("leaky_relu", "prelu", "relu"),
}


def group_of(name: str) -> str:
    low = name.lower().removeprefix("aten::")
    for group, keys in GROUPS.items():
        if any(low == key or low.startswith(key) for key in keys):
            return group
    return "other"


def build(model_name: str, *, input_size: int) -> tuple[torch.nn.Module, YOLO]:
    """bench_speed.py's network and config (20 classes, objectness prior 0.01, seed 0) at ``input_size``."""
    net, config = net_and_config(model_name)
    config = {**config, "input_shape": [input_size, input_size]}
    return net.eval(), YOLO.from_model(net.eval(), config=config, device="cpu", precision="bf16")


def compiled_forward(net: torch.nn.Module, example: torch.Tensor):
    """(callable, compile seconds): the bf16 inference copy of ``net`` compiled as ``torch_compile=True`` does it,
    compiled by its first call."""
    compiled = compiled_copy(inference_copy(net, dtype=torch.bfloat16), device=torch.device("cpu"))
    start = time.perf_counter()
    with torch.no_grad():
        compiled(example)
    return compiled, time.perf_counter() - start


def torch_breakdown(call) -> dict[str, float]:
    """Self CPU milliseconds per group of one profiled call (after a warm-up call)."""
    call()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        call()
    groups: dict[str, float] = {}
    for event in prof.key_averages():
        groups[group_of(event.key)] = groups.get(group_of(event.key), 0.0) + event.self_cpu_time_total / 1e3
    return groups


def openvino_breakdown(detector: YOLO, images: np.ndarray) -> dict[str, float]:
    """Milliseconds per group of one OpenVINO call, from its per-node counters (a model compiled with PERF_COUNT)."""
    ov_detector = detector.openvino_detector(precision="bf16")
    ov_detector._config["PERF_COUNT"] = True
    compiled, request = ov_detector._compiled_for(tuple(images.shape))
    request.infer({0: images})
    request.infer({0: images})
    groups: dict[str, float] = {}
    for node in request.profiling_info:
        ms = node.real_time.total_seconds() * 1e3
        group = group_of(node.node_type)
        groups[group] = groups.get(group, 0.0) + ms
    return groups


def print_breakdowns(columns: dict[str, dict[str, float]]) -> None:
    names = sorted({g for col in columns.values() for g in col}, key=lambda g: -max(c.get(g, 0) for c in
                                                                                     columns.values()))
    print(f"\n{'ms per forward':<16}" + "".join(f"{title:>14}" for title in columns))
    for group in [*names, "total"]:
        cells = [sum(col.values()) if group == "total" else col.get(group, 0.0) for col in columns.values()]
        print(f"{group:<16}" + "".join(f"{cell:>14.1f}" for cell in cells))


def main(argv: list[str] | None = None) -> None:
    config = resolve_config(settings_of(globals()), argv)
    if config["threads"]:
        torch.set_num_threads(config["threads"])
    print(cpu_line())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {config['model']} at "
          f"{config['size']}x{config['size']}, batch 1")
    net, detector = build(config["model"], input_size=config["size"])
    gflop = conv_gflop(net, input_hw=(config["size"], config["size"]))
    images = np.random.default_rng(0).random((1, 3, config["size"], config["size"]), dtype=np.float32)
    example = torch.from_numpy(images).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    eager = inference_copy(net, dtype=torch.bfloat16)
    with torch.no_grad():
        reference = [out.float() for out in inference_copy(net, dtype=torch.float32)(torch.from_numpy(images))]

    calls = {}
    for variant in config["variants"]:
        if variant == "eager":
            calls[variant] = lambda: eager(example)
        elif variant == "compiled":
            compiled, seconds = compiled_forward(net, example)
            print(f"torch.compile (inductor, freezing): first call {seconds:.1f} s")
            calls[variant] = lambda: compiled(example)
        elif variant == "openvino":
            ov_detector = detector.openvino_detector(precision="bf16")
            calls[variant] = lambda: ov_detector.raw_outputs(images)
        else:
            raise SystemExit(f"--variants: unknown variant {variant!r} (eager, compiled, openvino)")
    times = {name: [] for name in calls}
    with torch.no_grad():
        for name, call in calls.items():
            outputs = call()
            diff = max((out.float() - ref).abs().max().item() for out, ref in zip(outputs, reference))
            print(f"{name}: largest output difference against fp32 eager {diff:.3g}")
            call()
        for _ in range(config["reps"]):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    base = times.get("eager")
    print(f"\n{'variant':<10}{'median ms':>11}{'IQR ms':>16}{'GFLOP/s':>9}{'vs eager':>10}")
    for name, seconds in times.items():
        q1, _, q3 = statistics.quantiles(seconds, n=4)
        ratio = statistics.median(b / s for b, s in zip(base, seconds)) if base else float("nan")
        median = statistics.median(seconds)
        print(f"{name:<10}{median * 1e3:>11.1f}{f'{q1 * 1e3:.1f}-{q3 * 1e3:.1f}':>16}{gflop / median:>9.0f}"
              f"{ratio:>9.2f}x")
    if config["profile"]:
        columns = {}
        with torch.no_grad():
            columns["torch eager"] = torch_breakdown(lambda: eager(example))
        if "openvino" in calls:
            columns["openvino bf16"] = openvino_breakdown(detector, images)
        print_breakdowns(columns)


if __name__ == "__main__":
    run_cli(main)
