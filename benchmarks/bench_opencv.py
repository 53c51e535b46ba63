"""The project's inference against OpenCV's DNN module on the same darknet cfg and weights (CPU, batch 1).

For each model, the vendored cfg (network size set to ``input_size``) and random weights with trained-like scales
are written to a temporary folder; OpenCV reads them with cv2.dnn.readNetFromDarknet, the project with its public
API, ``yolo.YOLO(model_path=X.weights, cfg_path=X.cfg)``, so a faster inference path behind that API is measured
without changes here. Both run the same preprocessed BCCD image: OpenCV ``net.forward`` of its [yolo] layers
(network + box decoding), the project ``decode(raw_outputs(image))`` (network + box decoding). Runs alternate
between the two (the order flips every pair), ``repeats`` pairs after ``warmup`` pairs; the report gives each
side's median and interquartile range and the median and 10-90 % range of the per-pair ratio project / OpenCV.

    python benchmarks/bench_opencv.py [--repeats=30] [--threads=2] [--models="['yolov4-tiny']"]
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nets.darknet_weights import write_weights  # noqa: E402
from nets.yolo import build_model  # noqa: E402
from utils.core.config import resolve_config, settings_of  # noqa: E402
from utils.infer.preprocess import preprocess_image  # noqa: E402
from yolo import YOLO  # noqa: E402

input_size: int = 416  # square network input
repeats: int = 30  # timed pairs (one project run, one OpenCV run) per model
warmup: int = 3  # untimed pairs first
threads: int = 2  # torch and OpenCV CPU threads
seed: int = 0  # random weights
image_path: str = str(REPO / "VOCdevkit" / "VOC2007" / "JPEGImages" / "BloodImage_00000.jpg")
models: list[str] = ["yolov4-tiny", "yolov4"]

CFG_FILES = {"yolov4": "yolov4.cfg", "yolov4-tiny": "yolov4-tiny.cfg"}


def random_darknet_pair(*, model: str, folder: Path, size: int, seed: int) -> tuple[Path, Path]:
    """The vendored 80-class cfg at ``size`` and random weights: BN variances in [0.5, 1.5], conv weights of
    std 1.2 / sqrt(fan_in) (0.5 for the heads' outputs), so activations neither vanish (subnormal floats would
    slow either side) nor explode."""
    text = (REPO / "model_data" / "darknet" / CFG_FILES[model]).read_text(encoding="utf-8")
    lines = [f"{line.split('=')[0]}={size}" if line.split("=")[0].strip() in ("width", "height") else line
             for line in text.splitlines()]
    cfg_path, weights_path = folder / f"{model}.cfg", folder / f"{model}.weights"
    cfg_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    torch.manual_seed(seed)
    net = build_model(model=model, num_classes=80)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eps = 1e-6  # darknet's: written as is
                module.running_var.uniform_(0.5, 1.5)
                module.running_mean.normal_(0.0, 0.1)
                module.weight.uniform_(0.8, 1.2)
                module.bias.normal_(0.0, 0.1)
            elif isinstance(module, torch.nn.Conv2d):
                module.weight.normal_(0.0, (0.5 if module.bias is not None else 1.2) / module.weight[0].numel() ** 0.5)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.5)
    write_weights(net, weights_path, model=model)
    return cfg_path, weights_path


def opencv_forward(cfg_path: Path, weights_path: Path):
    """OpenCV's DNN module (its own CPU backend) on a darknet cfg + weights pair: a function of a (1, 3, H, W)
    float32 RGB batch in [0, 1] returning the [yolo] layers' outputs (network + box decoding)."""
    net = cv2.dnn.readNetFromDarknet(str(cfg_path), str(weights_path))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    out_names = net.getUnconnectedOutLayersNames()

    def forward(batch: np.ndarray):
        net.setInput(batch)
        return net.forward(out_names)
    return forward


def describe_path(detector: YOLO) -> str:
    """What the project's detector runs, read from the network it runs (whatever path yolo.YOLO chose)."""
    net = detector._inference_net.get(detector.net) if detector.optimize else detector.net
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in net.parameters()})
    batch_norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    layout = "channels_last" if conv.weight.is_contiguous(memory_format=torch.channels_last) and \
        not conv.weight.is_contiguous() else "contiguous (NCHW)"
    return (f"{type(net).__name__}, params {'/'.join(dtypes)}, {batch_norms} BatchNorm modules "
            f"({'not folded' if batch_norms else 'folded'}), weights {layout}, precision {detector.precision}")


def interleaved(project_fn, opencv_fn, *, repeats: int, warmup: int) -> tuple[list[float], list[float]]:
    """Milliseconds of each side over ``repeats`` pairs; within a pair the side that runs first alternates."""
    for _ in range(warmup):
        project_fn()
        opencv_fn()
    project_ms, opencv_ms = [], []
    for i in range(repeats):
        for name in (("project", "opencv") if i % 2 == 0 else ("opencv", "project")):
            start = time.perf_counter()
            (project_fn if name == "project" else opencv_fn)()
            (project_ms if name == "project" else opencv_ms).append((time.perf_counter() - start) * 1000)
    return project_ms, opencv_ms


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return float(q1), float(q2), float(q3)


def bench_model(*, model: str, cfg: dict, folder: Path) -> dict:
    cfg_path, weights_path = random_darknet_pair(model=model, folder=folder, size=cfg["input_size"], seed=cfg["seed"])
    detector = YOLO(model_path=str(weights_path), cfg_path=str(cfg_path), device="cpu")
    opencv = opencv_forward(cfg_path, weights_path)
    image_chw, _ = preprocess_image(Image.open(cfg["image_path"]).convert("RGB"), detector.input_shape, True)
    batch = image_chw[None]  # (1, 3, H, W) float32 RGB in [0, 1]

    def run_project():
        return detector.decode(detector.raw_outputs(batch))

    def run_opencv():
        return opencv(batch)

    # Same model on both sides: the largest objectness difference over all boxes.
    ours = run_project()[0, :, 4].numpy()
    theirs = np.sort(np.concatenate([out[:, 4] for out in run_opencv()]))
    obj_diff = float(np.abs(np.sort(ours) - theirs).max())
    project_ms, opencv_ms = interleaved(run_project, run_opencv, repeats=cfg["repeats"], warmup=cfg["warmup"])
    ratios = [p / o for p, o in zip(project_ms, opencv_ms)]
    return {"model": model, "path": describe_path(detector), "obj_diff": obj_diff, "project": quartiles(project_ms),
            "opencv": quartiles(opencv_ms), "ratio": (float(np.percentile(ratios, 10)), statistics.median(ratios),
                                                      float(np.percentile(ratios, 90)))}


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = resolve_config(settings_of(globals()), argv)
    torch.set_num_threads(cfg["threads"])
    cv2.setNumThreads(cfg["threads"])
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), OpenCV {cv2.__version__} "
          f"({cv2.getNumThreads()} threads); {cfg['input_size']} x {cfg['input_size']}, batch 1, CPU; "
          f"{cfg['repeats']} interleaved pairs after {cfg['warmup']} warm-up pairs")
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for model in cfg["models"]:
            result = bench_model(model=model, cfg=cfg, folder=Path(folder))
            (p1, p2, p3), (o1, o2, o3), (r1, r2, r3) = result["project"], result["opencv"], result["ratio"]
            print(f"{model}: project {p2:.1f} ms (IQR {p1:.1f}-{p3:.1f}), OpenCV DNN {o2:.1f} ms "
                  f"(IQR {o1:.1f}-{o3:.1f}); project / OpenCV = {r2:.2f} (10-90 %: {r1:.2f}-{r3:.2f}); "
                  f"objectness max abs diff {result['obj_diff']:.1e}")
            print(f"  project path: {result['path']}")
            results.append(result)
    return results


if __name__ == "__main__":
    main()
