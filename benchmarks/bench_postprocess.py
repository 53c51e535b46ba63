"""How much of single-image inference is spent outside the network: preprocessing, decoding and NMS vs forward.

Batch 1 at the given input size on the CPU, for yolov4 and yolov4-tiny with random weights. Random weights give
near-constant head outputs (yolov4's features nearly vanish through the untrained network), so every box would
score the same. The heads are therefore calibrated on the benchmark image: each output channel of the final 1x1
convs is rescaled to a trained-like spread across cells, then the objectness bias is tuned so that an
evaluation-like number of boxes passes each threshold (``eval_fraction`` of all boxes at confidence 0.001,
``display_boxes`` boxes at 0.5). Each stage is timed separately, median of ``repeats`` runs.
Target: (preprocess + decode + NMS) / forward <= 5 %. On a machine shared with other busy processes, torch's
multi-threaded small ops stall on thread synchronisation; ``--threads=1`` then gives steadier numbers.

    python benchmarks/bench_postprocess.py [--input_size=416] [--repeats=7] [--threads=2]
"""

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nets.yolo import build_model, init_weights  # noqa: E402
from utils.core.config import resolve_config, settings_of  # noqa: E402
from utils.core.model_files import DEFAULT_ANCHORS_MASK, DEFAULT_ANCHORS_PATH, get_anchors, get_classes  # noqa: E402
from utils.infer.postprocess import PostprocessSettings, non_max_suppression  # noqa: E402
from utils.infer.preprocess import preprocess_image  # noqa: E402
from yolo import YOLO  # noqa: E402

input_size: int = 416  # square network input
repeats: int = 7  # timed runs per stage; the median is reported
threads: int = 0  # torch CPU threads; 0 = torch's default
image_path: str = str(REPO / "VOCdevkit" / "VOC2007" / "JPEGImages" / "BloodImage_00000.jpg")
eval_fraction: float = 0.25  # share of all boxes scoring >= 0.001 (a trained model's evaluation regime)
display_boxes: int = 50  # boxes scoring >= 0.5 before NMS (a busy display image)
models: list[str] = ["yolov4", "yolov4-tiny"]

# (confidence, NMS IoU) of the two regimes: get_map.py's evaluation defaults and predict.py's display defaults.
REGIMES = {"eval": (0.001, 0.5), "display": (0.5, 0.3)}
CLASS_BIAS = 3.0  # class-0 logit bias: class probability ~0.95, so the objectness bias sets the pass count
LOGIT_SPREAD = {"xy": 1.0, "wh": 0.5, "obj_cls": 1.5}  # target std across cells of each head channel's logit


def median_ms(fn, *, repeats: int) -> tuple[float, object]:
    """(median milliseconds over ``repeats`` calls after one warm-up, last result)."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def obj_bias_for(*, detector: YOLO, images_bchw: np.ndarray, threshold: float, target: int) -> float:
    """Objectness bias b such that about ``target`` boxes score >= threshold: bisection on the scores that
    a forward pass with zero objectness bias gives, shifted by b (the bias adds to the logit)."""
    decoded = detector.decode(detector.raw_outputs(images_bchw))[0]  # (N, 5 + C), obj bias 0
    obj_logit = torch.logit(decoded[:, 4].double().clamp(1e-12, 1 - 1e-12))  # (N,)
    class_prob = decoded[:, 5:].double().max(dim=-1).values  # (N,)
    low, high = -40.0, 40.0
    for _ in range(60):
        mid = (low + high) / 2
        count = int((torch.sigmoid(obj_logit + mid) * class_prob >= threshold).sum())
        low, high = (mid, high) if count < target else (low, mid)
    return high


def calibrate_head_spread(net: torch.nn.Module, *, images: torch.Tensor) -> None:
    """Rescales each head output channel's weights so its logit varies across cells with LOGIT_SPREAD's std."""
    captured = []
    hooks = [head.pred.register_forward_hook(
        lambda module, args, out: captured.append(out - module.bias[:, None, None])) for head in net.heads]
    with torch.no_grad():
        net.eval()(images)
        for hook in hooks:
            hook.remove()
        targets = torch.tensor([LOGIT_SPREAD["xy"]] * 2 + [LOGIT_SPREAD["wh"]] * 2
                               + [LOGIT_SPREAD["obj_cls"]] * (net.num_classes + 1)).repeat(net.anchors_per_level)
        for head, logits in zip(net.heads, captured):  # logits without bias: (1, A * (5 + C), H, W)
            spread = logits[0].flatten(1).std(dim=1).clamp(min=1e-30).double()  # (A * (5 + C),)
            scale = (targets.double() / spread).float()
            head.pred.weight.mul_(scale[:, None, None, None])


def set_head_bias(net: torch.nn.Module, *, obj_bias: float) -> None:
    with torch.no_grad():
        for head in net.heads:
            bias = head.pred.bias.view(net.anchors_per_level, -1)  # (A, 5 + C), a view
            bias[:, 4] = obj_bias
            bias[:, 5] = CLASS_BIAS


def bench_model(model: str, *, image: Image.Image, cfg: dict) -> list[dict]:
    class_names = get_classes(str(REPO / "model_data" / "bccd_classes.txt"))
    anchors = get_anchors(str(DEFAULT_ANCHORS_PATH[model]))
    config = {"model": model, "class_names": class_names, "anchors": anchors,
              "anchors_mask": DEFAULT_ANCHORS_MASK[model], "input_shape": [cfg["input_size"]] * 2, "scale_x_y": None}
    torch.manual_seed(0)
    net = build_model(model=model, num_classes=len(class_names))
    init_weights(net)
    calibrate_head_spread(net, images=torch.from_numpy(preprocess_image(image, [cfg["input_size"]] * 2, True)[0][None]))
    rows = []
    for regime, (confidence, nms_iou) in REGIMES.items():
        settings = PostprocessSettings(confidence=confidence, nms_iou=nms_iou)
        detector = YOLO.from_model(net, config=config, postprocess_settings=settings, device="cpu")
        image_chw, info = preprocess_image(image, detector.input_shape, True)
        images_bchw = image_chw[None]  # (1, 3, H, W)
        set_head_bias(net, obj_bias=0.0)
        num_boxes = int(detector.decode(detector.raw_outputs(images_bchw)).shape[1])
        target = round(cfg["eval_fraction"] * num_boxes) if regime == "eval" else cfg["display_boxes"]
        set_head_bias(net, obj_bias=obj_bias_for(detector=detector, images_bchw=images_bchw, threshold=confidence,
                                                 target=target))
        repeats = cfg["repeats"]
        pre_ms, _ = median_ms(lambda: preprocess_image(image, detector.input_shape, True), repeats=repeats)
        fwd_ms, outputs = median_ms(lambda: detector.raw_outputs(images_bchw), repeats=repeats)
        dec_ms, decoded = median_ms(lambda: detector.decode(outputs), repeats=repeats)
        nms_ms, dets = median_ms(lambda: detector.postprocess(decoded, [info]), repeats=repeats)
        diou = PostprocessSettings(confidence=confidence, nms_iou=nms_iou, nms_type="diou")
        diou_ms, diou_kept = median_ms(lambda: non_max_suppression(decoded, settings=diou), repeats=repeats)
        scores = decoded[..., 4] * decoded[..., 5:].max(dim=-1).values  # (1, N)
        rows.append({"model": model, "regime": regime, "conf": confidence, "boxes": num_boxes,
                     "candidates": int((scores >= confidence).sum()), "kept": len(dets[0]),
                     "kept_diou": len(diou_kept[0]["scores"]), "pre": pre_ms, "fwd": fwd_ms, "dec": dec_ms,
                     "nms": nms_ms, "diou": diou_ms, "ratio": 100 * (pre_ms + dec_ms + nms_ms) / fwd_ms})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = resolve_config(settings_of(globals()), argv)
    if cfg["threads"] > 0:
        torch.set_num_threads(cfg["threads"])
    with Image.open(cfg["image_path"]) as opened:
        image = opened.convert("RGB")
    print(f"batch 1, input {cfg['input_size']}x{cfg['input_size']}, image {image.size[0]}x{image.size[1]}, CPU, "
          f"{torch.get_num_threads()} threads, median of {cfg['repeats']} runs; times in ms")
    print("NMS = class-aware NMS + mapping boxes to the original image; DIoU = DIoU-NMS alone (not in the ratio)")
    header = (f"{'model':<12}{'regime':<9}{'conf':>6}{'cand/boxes':>13}{'kept':>6}{'preproc':>9}{'forward':>9}"
              f"{'decode':>8}{'NMS':>8}{'DIoU':>9}{'(pre+dec+NMS)/fwd':>19}")
    print(header)
    rows = []
    for model in cfg["models"]:
        for row in bench_model(model, image=image, cfg=cfg):
            rows.append(row)
            verdict = "ok" if row["ratio"] <= 5.0 else "over 5%"
            print(f"{row['model']:<12}{row['regime']:<9}{row['conf']:>6g}{row['candidates']:>7}/{row['boxes']:<5}"
                  f"{row['kept']:>6}{row['pre']:>9.2f}{row['fwd']:>9.1f}{row['dec']:>8.2f}{row['nms']:>8.2f}"
                  f"{row['diou']:>9.2f}{row['ratio']:>13.1f} % {verdict}")
    return rows


if __name__ == "__main__":
    main()
