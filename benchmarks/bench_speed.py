"""Every speed figure of the project in one table: forward (416, batch 1), end-to-end detection (preprocess,
forward, decode, NMS of a 640x480 BCCD image) on PyTorch, ONNX Runtime and OpenVINO (its default precision and
f32), network + decoding against OpenCV's DNN module on the same darknet
files, training step (416, batch 4: forward, loss, backward, SGD) for YOLOv4 and YOLOv4-tiny, and the loss
forward (batch 16, 100 boxes per image, YOLOv4 geometry, 20 classes) against a per-image-vectorised baseline of
the same algorithm (benchmarks/parity_loss.py), with boxes 4 to 300 px wide uniformly ("loss": large boxes,
the worst case of the ignore test's windows) and 8 to 200 px log-uniformly ("loss_small": most boxes small, as
in crowded scenes).

Each figure is measured twice:
- fresh: a new Python process per variant (the cost a one-off command pays): its first call, the median of the
  following calls, and the process's peak resident memory;
- warm: all variants of a figure in this process, interleaved (A, B, C, A, B, C, ...) so that load from other
  processes hits them alike; median, interquartile range, and the speed-up against the figure's baseline as the
  median of per-round ratios.
Forward rows also give the GFLOP/s reached (the network's convolution GFLOP per image over the median time) as a
share of this CPU's matmul peak, measured in the same run (benchmarks/cpu_peak.py); the CPU's name and flags head
the output. Random weights (objectness prior 0.01); timings, not accuracy. With CUDA present it also prints training
images/s (YOLOv4, 416, batch 16 and 32), inference images/s at batch 1 and 32, and the loss on the GPU.

    python benchmarks/bench_speed.py [--figures="['forward','detect','opencv','train','loss','loss_small']"]
"""
import functools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_opencv import opencv_forward, random_darknet_pair  # noqa: E402
from cpu_peak import conv_gflop, cpu_line, matmul_peaks, peak_share  # noqa: E402
from parity_loss import parity_reference_loss  # noqa: E402
from PIL import Image  # noqa: E402

from nets.yolo import build_model, init_weights  # noqa: E402
from nets.yolo_training import YOLOLoss  # noqa: E402
from utils.core.config import resolve_config, run_cli, settings_of  # noqa: E402
from utils.core.device import cpu_has_native_bf16, resolve_precision  # noqa: E402
from utils.core.model_files import DEFAULT_ANCHORS_MASK, DEFAULT_ANCHORS_PATH, get_anchors  # noqa: E402
from utils.infer.backends import auto_backend, openvino_installed  # noqa: E402
from utils.infer.preprocess import preprocess_image  # noqa: E402
from utils.train.trainer import training_amp  # noqa: E402
from yolo import YOLO  # noqa: E402

figures: list[str] = ["forward", "detect", "opencv", "train", "loss", "loss_small"]  # which rows to measure
models: list[str] = ["yolov4", "yolov4-tiny"]
reps: int = 7  # timed rounds per figure (warm) and timed calls after the first (fresh)
train_reps: int = 3  # the same for the (slow) training step
threads: int = 0  # torch CPU threads; 0 = torch's default
fresh: bool = True  # also run every variant in a fresh process
cuda_rounds: int = 10  # interleaved timed rounds per CUDA figure (CUDA figures run when a GPU is present)
one: str = ""  # internal: "figure/model/variant" measures one variant in this process and prints JSON

INPUT = 416
CLASSES = 20
IMAGE = REPO / "VOCdevkit" / "VOC2007" / "JPEGImages" / "BloodImage_00000.jpg"
# Variants per figure; the first is the baseline the speed-ups are relative to.
VARIANTS = {
    "forward": ["fp32 unfolded", "fp32 folded+CL", "bf16 folded+CL", "onnxruntime", "openvino auto", "openvino f32"],
    "detect": ["fp32 unfolded", "fp32 folded+CL", "bf16 folded+CL", "onnxruntime", "openvino auto", "openvino f32"],
    "opencv": ["OpenCV DNN", "project"],
    "train": ["fp32", "bf16 autocast + CL"],
    "loss": ["parity reference", "YOLOLoss"],
    "loss_small": ["parity reference", "YOLOLoss"],
}
LOSS_FIGURES = ("loss", "loss_small")
OPENVINO_PRECISION = {"openvino auto": "auto", "openvino f32": "fp32"}


def variants_of(figure: str) -> list[str]:
    """The figure's variants that can run here (the OpenVINO rows need the openvino package)."""
    return [v for v in VARIANTS[figure] if v not in OPENVINO_PRECISION or openvino_installed()]


def detector_config(model: str) -> dict:
    """What ``YOLO.from_model`` needs for a benchmark network: CLASSES placeholder class names, the model's default
    anchors, an INPUT x INPUT input."""
    return {"model": model, "class_names": [f"class{i}" for i in range(CLASSES)],
            "anchors": get_anchors(str(DEFAULT_ANCHORS_PATH[model])), "anchors_mask": DEFAULT_ANCHORS_MASK[model],
            "input_shape": [INPUT, INPUT]}


def net_and_config(model: str) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    net = build_model(model=model, num_classes=CLASSES)
    init_weights(net, obj_prior=0.01)
    return net, detector_config(model)


def train_levers(variant: str) -> tuple[bool, bool]:
    """(bf16 autocast, channels_last) of a training variant; bf16 where train.py's amp_dtype='auto' picks it, i.e.
    only where the CPU computes it natively (on CUDA, fp16 autocast is measured separately)."""
    if variant == "fp32":
        return False, False
    amp = training_amp(SimpleNamespace(fp16=True, amp_dtype="auto", channels_last=True), torch.device("cpu"))
    return amp.enabled, True


def detector_for(model: str, variant: str, *, device: torch.device = torch.device("cpu")):
    net, config = net_and_config(model)
    options = {"fp32 unfolded": dict(precision="fp32", optimize=False), "fp32 folded+CL": dict(precision="fp32"),
               "bf16 folded+CL": dict(precision="bf16"), "fp16 folded+CL": dict(precision="fp16"),
               "onnxruntime": dict(precision="fp32")}.get(variant, dict(precision="fp32"))
    detector = YOLO.from_model(net.eval(), config=config, device=device, **options)
    if variant in OPENVINO_PRECISION:
        return detector.openvino_detector(precision=OPENVINO_PRECISION[variant])
    return detector.onnx_detector() if variant == "onnxruntime" else detector


def make_case(figure: str, model: str, variant: str):
    """A no-argument callable running one call of the figure's workload (setup done here, outside timing)."""
    if figure == "forward":
        detector = detector_for(model, variant)
        images = np.random.default_rng(0).random((1, 3, INPUT, INPUT), dtype=np.float32)
        return lambda: detector._forward(images)
    if figure == "detect":
        detector = detector_for(model, variant)
        with Image.open(IMAGE) as image:
            rgb = image.convert("RGB")
        return lambda: detector.detect(rgb)
    if figure == "opencv":
        return darknet_case(model, variant)
    if figure == "train":
        return train_case(model, variant)
    if figure in LOSS_FIGURES:
        return loss_case(variant, small_boxes=figure == "loss_small")
    raise ValueError(f"unknown figure {figure!r}")


def darknet_case(model: str, variant: str):
    """Network + box decoding of one preprocessed BCCD image from a darknet cfg + weights pair (80 classes, random
    weights with trained-like scales: benchmarks/bench_opencv.py, which also checks both give the same outputs):
    OpenCV's DNN module, or the project's public API on its default inference path."""
    with Image.open(IMAGE) as image:
        batch = preprocess_image(image.convert("RGB"), (INPUT, INPUT), True)[0][None]  # (1, 3, H, W) RGB in [0, 1]
    with tempfile.TemporaryDirectory() as folder:
        cfg_path, weights_path = random_darknet_pair(model=model, folder=Path(folder), size=INPUT, seed=0)
        if variant == "OpenCV DNN":
            opencv = opencv_forward(cfg_path, weights_path)
            return lambda: opencv(batch)
        detector = YOLO(model_path=str(weights_path), cfg_path=str(cfg_path), device="cpu")
    return lambda: detector.decode(detector.raw_outputs(batch))


def train_case(model: str, variant: str, *, batch: int = 4):
    bf16, channels_last = train_levers(variant)
    return train_step_case(model, batch, device=torch.device("cpu"), dtype=torch.bfloat16 if bf16 else None,
                           channels_last=channels_last)


def train_step_case(model: str, batch: int, *, device: torch.device, dtype: torch.dtype | None,
                    channels_last: bool):
    """One training step the way train.py takes it: autocast in ``dtype`` (None: fp32), a GradScaler with float16,
    forward, loss, backward, SGD."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net, config = net_and_config(model)
    net = net.to(device, memory_format=layout).train()
    criterion = YOLOLoss(anchors_px=torch.tensor(config["anchors"]), anchors_mask=config["anchors_mask"],
                         num_classes=CLASSES, input_shape=(INPUT, INPUT)).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.937, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(batch, 3, INPUT, INPUT, generator=gen).to(device, memory_format=layout)
    targets = random_targets(batch, 10, gen).to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
            outputs = net(images)
        scaler.scale(criterion(outputs, targets)["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


def random_targets(batch: int, boxes: int, gen: torch.Generator, *, small: bool = False) -> torch.Tensor:
    """(batch * boxes, 6) [img_idx, cls, x1, y1, x2, y2], boxes xyxy in input pixels, 4 to 300 px wide
    uniformly, or (small) 8 to 200 px log-uniformly."""
    img = torch.arange(batch).repeat_interleave(boxes).float()
    cls = torch.randint(CLASSES, (batch * boxes,), generator=gen).float()
    cxcy = torch.rand(batch * boxes, 2, generator=gen) * INPUT
    if small:
        wh = 8 * 25 ** torch.rand(batch * boxes, 2, generator=gen)
    else:
        wh = torch.rand(batch * boxes, 2, generator=gen) * 296 + 4
    x1y1 = (cxcy - wh / 2).clamp(0, INPUT - 1)
    x2y2 = torch.maximum((cxcy + wh / 2).clamp(max=INPUT), x1y1 + 1)
    return torch.cat([img[:, None], cls[:, None], x1y1, x2y2], dim=1)


def loss_case(variant: str, *, small_boxes: bool = False, device: torch.device = torch.device("cpu")):
    gen = torch.Generator().manual_seed(0)
    outputs = [torch.randn(16, 3 * (5 + CLASSES), INPUT // s, INPUT // s, generator=gen).to(device)
               for s in (32, 16, 8)]
    targets = random_targets(16, 100, gen, small=small_boxes).to(device)
    criterion = YOLOLoss(anchors_px=torch.tensor(get_anchors(str(DEFAULT_ANCHORS_PATH["yolov4"]))),
                         anchors_mask=DEFAULT_ANCHORS_MASK["yolov4"], num_classes=CLASSES,
                         input_shape=(INPUT, INPUT)).to(device)
    if variant == "parity reference":
        return lambda: parity_reference_loss(criterion, outputs, targets)
    return lambda: criterion(outputs, targets)["loss"]


def check_loss_parity(small_boxes: bool) -> str:
    """Both loss variants must compute the same number, or the speed-up compares different work."""
    with torch.no_grad():
        ours = float(loss_case("YOLOLoss", small_boxes=small_boxes)())
        parity = float(loss_case("parity reference", small_boxes=small_boxes)())
    if abs(ours - parity) > 1e-4 * abs(parity):
        raise RuntimeError(f"parity reference loss {parity} differs from YOLOLoss {ours}")
    return f"loss value {ours:.5f} in both"


def measure_one(spec: str, count: int) -> dict:
    """Fresh-process measurement of one variant: first call, median of ``count`` more, peak RSS."""
    figure, model, variant = spec.split("/")
    fn = make_case(figure, model, variant)
    with torch.set_grad_enabled(figure == "train"):
        start = time.perf_counter()
        fn()
        first = time.perf_counter() - start
        times = []
        for _ in range(count):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return {"first_ms": first * 1e3, "median_ms": statistics.median(times) * 1e3, "peak_rss_gib": peak_rss_gib()}


def peak_rss_gib() -> float:
    """This process's peak resident memory. Linux's ru_maxrss survives exec and so starts at the size of the
    process that spawned this one (the benchmark's parent, GiBs after warm figures); VmHWM belongs to the
    current program only."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def fresh_figures(spec: str, count: int, config: dict) -> dict:
    command = [sys.executable, __file__, f"--one={spec}", f"--reps={count}", f"--threads={config['threads']}"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def warm_figures(figure: str, model: str, count: int) -> dict[str, list[float]]:
    """All variants of one figure interleaved after one warm-up call each; seconds per call per variant."""
    cases = {variant: make_case(figure, model, variant) for variant in variants_of(figure)}
    times = {variant: [] for variant in cases}
    with torch.set_grad_enabled(figure == "train"):
        for fn in cases.values():
            fn()
        for _ in range(count):
            for variant, fn in cases.items():
                start = time.perf_counter()
                fn()
                times[variant].append(time.perf_counter() - start)
    return times


def label(figure: str, model: str) -> str:
    return {"forward": f"{model} forward {INPUT} b1", "detect": f"{model} detect end to end (640x480 image, {INPUT})",
            "opencv": f"{model} network + box decoding {INPUT} b1, darknet cfg/weights",
            "train": f"{model} train step {INPUT} b4",
            "loss": "loss forward b16, 100 boxes/image (4-300 px), YOLOv4 geometry",
            "loss_small": "loss forward b16, 100 boxes/image (8-200 px, mostly small), YOLOv4 geometry"}[figure]


def variant_note(figure: str, variant: str) -> str:
    """The variant's name, marked where it is what predict.py / get_map.py run by default on this machine."""
    if figure == "opencv":
        precision = resolve_precision("auto", torch.device("cpu"))
        return f"project ({precision} folded+CL, default)" if variant == "project" else f"OpenCV {cv2.__version__} DNN"
    if figure in ("forward", "detect"):  # what backend=auto and precision=auto run
        default = ("openvino auto" if auto_backend(torch.device("cpu"))[0] == "openvino"
                   else f"{resolve_precision('auto', torch.device('cpu'))} folded+CL")
        name = f"{variant} = {variant_precision(variant)}" if variant == "openvino auto" else variant
        return f"{name} (default)" if variant == default else name
    if figure == "train":
        # what train.py's defaults (fp16=True, amp_dtype='auto', channels_last=None) give on this CPU
        amp = training_amp(SimpleNamespace(fp16=True, amp_dtype="auto", channels_last=None), torch.device("cpu"))
        name = variant if variant == "fp32" or cpu_has_native_bf16() else "fp32 + CL (no native bf16)"
        return f"{name} (default)" if train_levers(variant) == (amp.enabled, amp.channels_last) else name
    return variant


@functools.lru_cache(maxsize=None)
def variant_precision(variant: str) -> str:
    """What a forward / detect variant computes in: OpenVINO's default is read from the compiled network."""
    if variant == "openvino auto":
        return detector_for("yolov4-tiny", variant).precision
    return "bf16" if variant.startswith("bf16") else "fp32"


def print_rows(figure: str, model: str, warm: dict[str, list[float]], fresh_results: dict[str, dict],
               *, gflop: float | None, peaks: dict[str, float]) -> None:
    """One table row per variant; forward rows with their GFLOP/s and share of the matmul peak."""
    base = VARIANTS[figure][0]
    for variant, times in warm.items():
        median = statistics.median(times) * 1e3
        q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
        paired = statistics.median(b / t for b, t in zip(warm[base], times))
        cold = fresh_results.get(variant)
        cold_text = (f"{cold['first_ms']:.1f} | {cold['median_ms']:.1f} | {cold['peak_rss_gib']:.2f}" if cold
                     else "- | - | -")
        share = (peak_share(gflop=gflop, seconds=median / 1e3, precision=variant_precision(variant), peaks=peaks)
                 if gflop else "-")
        print(f"| {label(figure, model)} | {variant_note(figure, variant)} | {cold_text} | {median:.1f} "
              f"({q1 * 1e3:.1f}-{q3 * 1e3:.1f}) | {paired:.2f}x | {share} |", flush=True)


def device_interleaved(cases: dict, rounds: int, device: torch.device) -> dict[str, float]:
    """Seconds per call (median) of each case, interleaved after two warm-up calls each; queued device work
    is waited for inside each timing."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = {name: [] for name in cases}
    for fn in cases.values():
        fn(), fn()
    for _ in range(rounds):
        for name, fn in cases.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def cuda_figures(rounds: int, device: torch.device) -> None:
    """On a CUDA device: training images/s (fp32, fp16 autocast, fp16 + channels_last as train.py runs it;
    YOLOv4 at 416, batch 16 and 32), inference images/s at batch 1 and 32 (from a float32 numpy batch, transfer
    included; fp32 unfolded, fp32 folded+CL, fp16 folded+CL), and the loss forward against the parity baseline."""
    torch.backends.cudnn.benchmark = True  # fixed shapes: the autotuned algorithms are reused every call
    print(f"\nCUDA: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, cudnn.benchmark on, "
          f"{rounds} interleaved rounds\n\n| figure | variant | images/s (loss: ms) | speed-up vs first variant |\n"
          "|---|---|---|---|")

    def rows(title: str, seconds: dict[str, float], per_call: int) -> None:
        base = next(iter(seconds.values()))
        for name, value in seconds.items():
            rate = f"{per_call / value:.1f}" if per_call else f"{value * 1e3:.2f} ms"
            print(f"| {title} | {name} | {rate} | {base / value:.2f}x |", flush=True)

    for batch in (16, 32):
        cases = {name: train_step_case("yolov4", batch, device=device, dtype=dtype, channels_last=channels_last)
                 for name, dtype, channels_last in (("fp32", None, False), ("fp16 autocast", torch.float16, False),
                                                    ("fp16 autocast + CL (default)", torch.float16, True))}
        rows(f"YOLOv4 train {INPUT} b{batch}", device_interleaved(cases, rounds, device), batch)
        del cases
        torch.cuda.empty_cache()
    default = f"{resolve_precision('auto', device)} folded+CL"
    for model in ("yolov4", "yolov4-tiny"):
        for batch in (1, 32):
            images = np.random.default_rng(0).random((batch, 3, INPUT, INPUT), dtype=np.float32)
            cases = {}
            for variant in ("fp32 unfolded", "fp32 folded+CL", "fp16 folded+CL"):
                detector = detector_for(model, variant, device=device)
                name = f"{variant} (default)" if variant == default else variant
                cases[name] = lambda detector=detector: detector._forward(images)
            with torch.inference_mode():
                rows(f"{model} inference {INPUT} b{batch}", device_interleaved(cases, rounds, device), batch)
    with torch.no_grad():
        cases = {variant: loss_case(variant, device=device) for variant in VARIANTS["loss"]}
        rows("loss forward b16, 100 boxes/image (4-300 px), ms per call", device_interleaved(cases, rounds, device), 0)


def main(argv: list[str] | None = None) -> None:
    config = resolve_config(settings_of(globals()), argv)
    if config["threads"]:
        torch.set_num_threads(config["threads"])
        cv2.setNumThreads(config["threads"])
    if config["one"]:
        print(json.dumps(measure_one(config["one"], config["reps"])))
        return
    print(cpu_line())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native CPU bf16: {cpu_has_native_bf16()}")
    peaks = matmul_peaks()
    print("matmul peak (2048^3, best of 5): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    gflops = {model: conv_gflop(net_and_config(model)[0], input_hw=(INPUT, INPUT)) for model in config["models"]}
    print("forward GFLOP per image (convolutions): " + ", ".join(f"{k} {v:.1f}" for k, v in gflops.items()))
    for figure in LOSS_FIGURES:
        if figure in config["figures"]:
            print(f"{figure} parity check: {check_loss_parity(small_boxes=figure == 'loss_small')}")
    print("\n| figure | variant | fresh: first call ms | fresh: median ms | fresh: peak RSS GiB | warm: median ms "
          "(IQR) | warm speed-up vs first variant | warm GFLOP/s (share of matmul peak) |\n"
          "|---|---|---|---|---|---|---|---|")
    for figure in config["figures"]:
        for model in (config["models"] if figure not in LOSS_FIGURES else ["yolov4"]):
            count = config["train_reps"] if figure == "train" else config["reps"]
            fresh_results = ({variant: fresh_figures(f"{figure}/{model}/{variant}", count, config)
                              for variant in variants_of(figure)} if config["fresh"] else {})
            print_rows(figure, model, warm_figures(figure, model, count), fresh_results,
                       gflop=gflops.get(model) if figure == "forward" else None, peaks=peaks)
    if torch.cuda.is_available():
        cuda_figures(config["cuda_rounds"], torch.device("cuda"))


if __name__ == "__main__":
    run_cli(main)
