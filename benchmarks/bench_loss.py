"""CPU timings: YOLOLoss forward + backward, vectorised vs the loop reference of tests/loss_reference.py,
at 416x416, batch 16, 100 random ground truths per image, YOLOv4 geometry with 20 classes (random head
outputs, no model); then YOLOv4 and YOLOv4-tiny forward latency at 416, batch 1.

The last printed line is ``speedup: <loop / vectorised>x``.
"""
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from loss_reference import reference_loss  # noqa: E402
from nets.yolo import build_model, init_weights  # noqa: E402
from nets.yolo_training import YOLOLoss  # noqa: E402

ANCHORS = [[12, 16], [19, 36], [40, 28], [36, 75], [76, 55], [72, 146], [142, 110], [192, 243], [459, 401]]
MASK = [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
INPUT = 416
BATCH, BOXES, CLASSES = 16, 100, 20


def random_targets(gen: torch.Generator) -> torch.Tensor:
    """(B * BOXES, 6) [img_idx, cls, x1, y1, x2, y2], boxes xyxy in input pixels, 4 to 300 px wide."""
    img = torch.arange(BATCH).repeat_interleave(BOXES).float()
    cls = torch.randint(CLASSES, (BATCH * BOXES,), generator=gen).float()
    cxcy = torch.rand(BATCH * BOXES, 2, generator=gen) * INPUT
    wh = torch.rand(BATCH * BOXES, 2, generator=gen) * 296 + 4
    x1y1 = (cxcy - wh / 2).clamp(0, INPUT - 1)
    x2y2 = torch.maximum((cxcy + wh / 2).clamp(max=INPUT), x1y1 + 1)
    return torch.cat([img[:, None], cls[:, None], x1y1, x2y2], dim=1)


def time_loss(fn, outputs, runs: int) -> float:
    times = []
    for _ in range(runs):
        for out in outputs:
            out.grad = None
        start = time.perf_counter()
        fn()["loss"].backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_latency(model: str, runs: int = 5) -> float:
    net = build_model(model=model, num_classes=CLASSES)
    init_weights(net, obj_prior=0.01)
    net.eval()
    images = torch.randn(1, 3, INPUT, INPUT)
    times = []
    with torch.inference_mode():
        net(images)
        for _ in range(runs):
            start = time.perf_counter()
            net(images)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    depth = len(MASK[0]) * (5 + CLASSES)
    outputs = [torch.randn(BATCH, depth, INPUT // s, INPUT // s, generator=gen).requires_grad_(True) for s in (32, 16, 8)]
    targets = random_targets(gen)
    geometry = dict(anchors_px=torch.tensor(ANCHORS, dtype=torch.float32), anchors_mask=MASK, num_classes=CLASSES,
                    input_shape=(INPUT, INPUT))
    loss = YOLOLoss(**geometry)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; loss at {INPUT}x{INPUT}, batch {BATCH}, "
          f"{BOXES} gts/image, {CLASSES} classes")

    time_loss(lambda: loss(outputs, targets), outputs, runs=1)  # warm-up
    vectorised = time_loss(lambda: loss(outputs, targets), outputs, runs=7)
    print(f"vectorised YOLOLoss fwd+bwd: {vectorised * 1e3:.1f} ms (median of 7)")
    loop = time_loss(lambda: reference_loss(outputs, targets, **geometry), outputs, runs=3)
    print(f"loop reference fwd+bwd:      {loop * 1e3:.1f} ms (median of 3)")

    for model in ("yolov4", "yolov4-tiny"):
        print(f"{model} forward at {INPUT}, batch 1: {forward_latency(model) * 1e3:.1f} ms (median of 5)")
    print(f"speedup: {loop / vectorised:.1f}x")


if __name__ == "__main__":
    main()
