"""Training-step benchmark on the CPU: seconds per step split into data, forward, loss, backward and
optimizer, for YOLOv4 and YOLOv4-tiny at 416 x 416, batch 4, on bundled BCCD images with Mosaic;
data-loader throughput with Mosaic; peak resident memory. Each model runs in its own process so its peak
RSS is its own.

    python benchmarks/bench_train.py [--steps=5] [--amp_dtype=bfloat16]
"""
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from nets.yolo import build_model, init_weights  # noqa: E402
from nets.yolo_training import YOLOLoss  # noqa: E402
from utils.core.config import resolve_config, run_cli, settings_of  # noqa: E402
from utils.core.model_files import DEFAULT_ANCHORS_MASK, DEFAULT_ANCHORS_PATH, get_anchors  # noqa: E402
from utils.data.dataloader import YoloDataset, yolo_collate  # noqa: E402
from utils.data.voc import read_annotation_file  # noqa: E402
from utils.train.optim import build_optimizer  # noqa: E402

model: str = ""  # "" runs both variants, each in a subprocess
steps: int = 5  # timed steps after 2 warm-up steps (median reported)
batch_size: int = 4  # images per step
input_size: int = 416  # square network input
amp_dtype: str = ""  # "" = fp32; "bfloat16" = bf16 autocast (fast on CPUs with AVX512-BF16 / AMX)
loader_images: int = 64  # images drawn through the DataLoader for the throughput figure
annotation_path: str = "2007_train.txt"  # from voc_annotation.py


def bench_one(config: dict) -> None:
    lines = read_annotation_file(config["annotation_path"]).lines
    shape = (config["input_size"], config["input_size"])
    dataset = YoloDataset(annotation_lines=lines, input_shape=shape, train=True, mosaic=True, mosaic_prob=1.0,
                          mixup=True, mixup_prob=0.5, total_epochs=10, seed=0)
    torch.manual_seed(0)
    net = build_model(model=config["model"], num_classes=3)
    init_weights(net)
    net.train()
    criterion = YOLOLoss(anchors_px=torch.tensor(get_anchors(str(DEFAULT_ANCHORS_PATH[config["model"]]))),
                         anchors_mask=DEFAULT_ANCHORS_MASK[config["model"]], num_classes=3, input_shape=shape)
    optimizer = build_optimizer(net, optimizer_type="sgd", lr=1e-3, momentum=0.937, weight_decay=5e-4)
    use_amp = config["amp_dtype"] == "bfloat16"
    times = {k: [] for k in ("data", "forward", "loss", "backward", "optimizer")}
    for step in range(config["steps"] + 2):
        t0 = time.perf_counter()
        images, targets = yolo_collate([dataset[step * config["batch_size"] + i] for i in range(config["batch_size"])])
        t1 = time.perf_counter()
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=use_amp):
            outputs = net(images)
        t2 = time.perf_counter()
        terms = criterion(outputs, targets)
        t3 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        t4 = time.perf_counter()
        optimizer.step()
        t5 = time.perf_counter()
        if step >= 2:
            for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                times[key].append(value)
    medians = {k: float(np.median(v)) for k, v in times.items()}
    split = "  ".join(f"{k} {v:.3f}" for k, v in medians.items())
    print(f"{config['model']:<12} step {sum(medians.values()):.3f} s  ({split})  "
          f"[{'bf16 autocast' if use_amp else 'fp32'}, batch {config['batch_size']}, {shape[0]}x{shape[1]}]")

    loader = DataLoader(dataset, batch_size=config["batch_size"], shuffle=False, num_workers=2,
                        collate_fn=yolo_collate)
    start, seen = time.perf_counter(), 0
    for images, _ in loader:
        seen += len(images)
        if seen >= config["loader_images"]:
            break
    print(f"{config['model']:<12} data loader with Mosaic (+MixUp 0.5), 2 workers: "
          f"{seen / (time.perf_counter() - start):.1f} images/s")
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{config['model']:<12} peak RSS {peak_gib:.2f} GiB")


def main(argv: list[str] | None = None) -> None:
    config = resolve_config(settings_of(globals()), argv)
    if config["model"]:
        bench_one(config)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    passed = [f"--{k}={v}" for k, v in config.items() if k != "model"]
    for variant in ("yolov4", "yolov4-tiny"):
        subprocess.run([sys.executable, __file__, f"--model={variant}", *passed], check=True)


if __name__ == "__main__":
    run_cli(main)
