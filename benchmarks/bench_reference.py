"""This project's default inference against the public PyTorch YOLOv4 / YOLOv4-tiny implementation whose checkpoints
nets/compat.py loads (forward 416 b1, CPU, the same weights on both sides).

The reference is not part of this repository: pass a clone of it as ``reference_dir`` (its yolov4-pytorch for
model=yolov4, its yolov4-tiny-pytorch for model=yolov4-tiny). Its ``nets/yolo.py`` YoloBody is built with 20
classes and random weights with trained-like BatchNorm statistics and run in fp32 eval mode, as its predict.py runs
on a CPU; the same state_dict goes into this project's model through nets/compat.py (fp32 outputs compared). This
project runs what predict.py runs here (backend=auto, precision=auto) on the same float32 batch.

A ratio is reference time / project time, per round; the report gives both medians and the ratio's median and
range, for three designs that differ in what each call finds when it starts:
- interleaved: the two alternate call by call, so every call starts after the other engine's (cold caches, idle
  workers woken, the other engine's OpenMP threads still spinning);
- warm blocks: ``block`` calls of one, then of the other, the first ``block_warmup`` of each untimed, a block's
  median per engine: each engine as it runs on a stream of images;
- two processes: the reference in a child process with its own threads, alternating call by call with the project
  in this one (no shared thread pool).

    python benchmarks/bench_reference.py --reference_dir=../yolov4-tiny-pytorch [--model=yolov4-tiny] [--rounds=40]
"""

import importlib
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_speed import CLASSES, INPUT, detector_config  # noqa: E402
from cpu_peak import cpu_line  # noqa: E402

from nets.compat import load_published_state_dict  # noqa: E402
from nets.yolo import build_model  # noqa: E402
from utils.core.config import resolve_config, settings_of  # noqa: E402
from utils.core.model_files import DEFAULT_ANCHORS_MASK  # noqa: E402
from utils.infer.backends import on_backend  # noqa: E402
from yolo import YOLO  # noqa: E402

reference_dir: str = ""  # a clone of the reference implementation of `model` (required)
model: str = "yolov4-tiny"  # yolov4 or yolov4-tiny
rounds: int = 40  # timed rounds per design (a round: one reference call and one project call, or one block each)
block: int = 6  # calls per engine in a warm block
block_warmup: int = 2  # untimed calls at the start of each block
threads: int = 2  # CPU threads of torch (both sides) and of the project's engine
seed: int = 0  # random weights
designs: list[str] = ["interleaved", "warm_blocks", "two_processes"]

def reference_model(*, folder: str, model: str, seed: int) -> torch.nn.Module:
    """The reference's YoloBody from ``folder``, random weights from ``seed`` with BatchNorm statistics a trained
    network has (so folding them matters), in eval mode. Its package is also named ``nets``: it is imported with
    this project's ``nets`` set aside, then removed from sys.modules again."""
    if not (Path(folder) / "nets" / "yolo.py").is_file():
        raise SystemExit(f"reference_dir {folder!r} holds no nets/yolo.py: pass a clone of the reference "
                         f"implementation of {model}")
    ours = {name: sys.modules.pop(name) for name in list(sys.modules) if name == "nets" or name.startswith("nets.")}
    sys.path.insert(0, folder)
    try:
        reference_yolo = importlib.import_module("nets.yolo")
    finally:
        sys.path.remove(folder)
        for name in [name for name in sys.modules if name == "nets" or name.startswith("nets.")]:
            del sys.modules[name]
        sys.modules.update(ours)
    torch.manual_seed(seed)
    mask = DEFAULT_ANCHORS_MASK[model]
    extra = {} if model == "yolov4" else {"phi": 0}  # tiny's attention-block switch; 0 = plain YOLOv4-tiny
    net = reference_yolo.YoloBody(mask, CLASSES, pretrained=False, **extra)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return net.eval()


def project_detector(reference: torch.nn.Module, *, model: str):
    """(detector, network): this project's network holding the reference's weights, and its detector on the engine
    predict.py picks here."""
    net = build_model(model=model, num_classes=CLASSES)
    load_published_state_dict(net, reference.state_dict(), model=model)
    detector = YOLO.from_model(net.eval(), config=detector_config(model), device="cpu")
    return on_backend(detector, backend="auto"), net


def seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def interleaved(reference_call, project_call, *, rounds: int) -> list[tuple[float, float]]:
    return [(seconds(reference_call), seconds(project_call)) for _ in range(rounds)]


def warm_blocks(reference_call, project_call, *, rounds: int, block: int, skip: int) -> list[tuple[float, float]]:
    def block_median(call):
        return statistics.median([seconds(call) for _ in range(block)][skip:])
    return [(block_median(reference_call), block_median(project_call)) for _ in range(rounds)]


def reference_process(connection, cfg: dict) -> None:
    """Child process: builds the same reference network and times one forward per 'go' it receives."""
    torch.set_num_threads(cfg["threads"])
    reference = reference_model(folder=cfg["reference_dir"], model=cfg["model"], seed=cfg["seed"])
    images = torch.from_numpy(test_batch())
    with torch.no_grad():
        for _ in range(3):
            reference(images)
        connection.send("ready")
        while connection.recv() == "go":
            connection.send(seconds(lambda: reference(images)))


def two_processes(project_call, *, cfg: dict) -> list[tuple[float, float]]:
    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe()
    child = context.Process(target=reference_process, args=(there, cfg))
    child.start()
    try:
        if here.recv() != "ready":
            raise RuntimeError("the reference process did not start")
        pairs = []
        for _ in range(cfg["rounds"]):
            here.send("go")
            reference_seconds = here.recv()
            pairs.append((reference_seconds, seconds(project_call)))
        here.send("stop")
    finally:
        child.join(timeout=60)
    return pairs


def test_batch() -> np.ndarray:
    """(1, 3, 416, 416) float32 in [0, 1], the same in every process."""
    return np.random.default_rng(0).random((1, 3, INPUT, INPUT), dtype=np.float32)


def report(design: str, pairs: list[tuple[float, float]]) -> dict:
    ratios = [reference / project for reference, project in pairs]
    result = {"design": design, "reference_ms": statistics.median(r for r, _ in pairs) * 1e3,
              "project_ms": statistics.median(p for _, p in pairs) * 1e3, "ratio": statistics.median(ratios),
              "ratio_range": (min(ratios), max(ratios))}
    print(f"{design:<14} reference {result['reference_ms']:7.1f} ms  project {result['project_ms']:6.1f} ms  "
          f"reference / project {result['ratio']:5.2f}x (range {min(ratios):.2f}-{max(ratios):.2f})", flush=True)
    return result


def largest_difference(expected: list[torch.Tensor], actual: list[torch.Tensor]) -> float:
    """The largest absolute difference over the head outputs, as a share of the expected outputs' largest value."""
    return max(float((e - a).abs().max() / e.abs().max()) for e, a in zip(expected, actual))


def main(argv: list[str] | None = None) -> dict:
    cfg = resolve_config(settings_of(globals()), argv)
    if cfg["model"] not in DEFAULT_ANCHORS_MASK:
        raise SystemExit(f"model must be one of {sorted(DEFAULT_ANCHORS_MASK)}, got {cfg['model']!r}")
    unknown = sorted(set(cfg["designs"]) - {"interleaved", "warm_blocks", "two_processes"})
    if unknown:
        raise SystemExit(f"unknown designs {unknown}; choose from interleaved, warm_blocks, two_processes")
    torch.set_num_threads(cfg["threads"])
    reference = reference_model(folder=cfg["reference_dir"], model=cfg["model"], seed=cfg["seed"])
    detector, net = project_detector(reference, model=cfg["model"])
    batch = test_batch()
    images = torch.from_numpy(batch)

    def reference_call():
        with torch.no_grad():
            return reference(images)

    def project_call():
        return detector.raw_outputs(batch)

    with torch.no_grad():
        fp32_difference = largest_difference(reference_call(), net(images))
    run_difference = largest_difference(reference_call(), project_call())
    print(cpu_line())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {cfg['model']} forward "
          f"{INPUT}x{INPUT} batch 1; project: {detector.precision} on {detector.engine}")
    print(f"outputs against the reference, largest difference as a share of its largest value: this project's "
          f"network in fp32 {fp32_difference:.1e}, as run here ({detector.precision}) {run_difference:.1e}")
    for _ in range(3):
        reference_call()
        project_call()
    results = []
    for design in cfg["designs"]:
        if design == "interleaved":
            pairs = interleaved(reference_call, project_call, rounds=cfg["rounds"])
        elif design == "warm_blocks":
            pairs = warm_blocks(reference_call, project_call, rounds=max(3, cfg["rounds"] // 5), block=cfg["block"],
                                skip=cfg["block_warmup"])
        else:
            pairs = two_processes(project_call, cfg=cfg)
        results.append(report(design, pairs))
    return {"fp32_difference": fp32_difference, "run_difference": run_difference, "designs": results}


if __name__ == "__main__":
    main()
