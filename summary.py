"""Prints, for each model variant at a given input size, the parameter count, FLOPs and output shapes.

    python summary.py [--input_shape=[416,416]] [--num_classes=20]
"""
import torch
from torch.utils.flop_counter import FlopCounterMode

from nets.yolo import MODELS, build_model
from utils.core.config import resolve_config, run_cli, settings_of

input_shape: list[int] = [416, 416]  # network input (h, w), multiples of 32
num_classes: int = 20  # 20 = PASCAL VOC, the published checkpoints' head size


def summarise(*, model: str, input_shape: list[int], num_classes: int) -> dict:
    net = build_model(model=model, num_classes=num_classes).eval()
    images = torch.zeros(1, 3, *input_shape)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        outputs = net(images)
    return {"params": sum(p.numel() for p in net.parameters()),
            "gflops": counter.get_total_flops() / 1e9,  # multiply-adds count as 2 FLOPs
            "outputs": [tuple(o.shape) for o in outputs]}


def main(argv: list[str] | None = None) -> None:
    config = resolve_config(settings_of(globals()), argv)
    for model in MODELS:
        info = summarise(model=model, input_shape=config["input_shape"], num_classes=config["num_classes"])
        print(f"{model} at {config['input_shape'][0]}x{config['input_shape'][1]}, {config['num_classes']} classes")
        print(f"  parameters: {info['params']}")
        print(f"  GFLOPs:     {info['gflops']:.2f}")
        for shape in info["outputs"]:
            print(f"  output:     {shape}")


if __name__ == "__main__":
    run_cli(main)
