"""Prints the confidence term at initialisation, plain BCE vs focal, for both normalisations and both
objectness-bias inits, on one real batch of the bundled BCCD training images (letterboxed, no augmentation).

    python benchmarks/conf_at_init.py [--model=yolov4-tiny] [--batch_size=8]

The unweighted term (``loss_conf``, summed over levels) and its contribution to the total after the
loss weights (the loss's weights dict: objectness ratio x level balance, x focal_loss_ratio for focal) are shown,
so runs can be compared honestly: focal loss shrinks the raw term by about an order of magnitude at init.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from nets.yolo import build_model, init_weights  # noqa: E402
from nets.yolo_training import build_loss  # noqa: E402
from utils.core.config import resolve_config, run_cli, settings_of  # noqa: E402
from utils.core.model_files import DEFAULT_ANCHORS_MASK, DEFAULT_ANCHORS_PATH, ModelSpec, get_anchors  # noqa: E402
from utils.data.dataloader import YoloDataset, yolo_collate  # noqa: E402
from utils.data.voc import read_annotation_file  # noqa: E402
from utils.train.conf_at_init import weighted_conf_term  # noqa: E402

model: str = "yolov4-tiny"  # "yolov4" or "yolov4-tiny"
batch_size: int = 8  # images of the first training batch
input_shape: list[int] = [416, 416]  # network input (h, w)
annotation_path: str = "2007_train.txt"  # from voc_annotation.py


def main(argv: list[str] | None = None) -> None:
    config = resolve_config(settings_of(globals()), argv)
    lines = read_annotation_file(config["annotation_path"]).lines[:config["batch_size"]]
    dataset = YoloDataset(annotation_lines=lines, input_shape=tuple(config["input_shape"]), train=False)
    images, targets = yolo_collate([dataset[i] for i in range(len(dataset))])
    anchors_path = str(DEFAULT_ANCHORS_PATH[config["model"]])
    spec = ModelSpec(class_names=["RBC", "WBC", "Platelets"], anchors=get_anchors(anchors_path),
                     anchors_mask=DEFAULT_ANCHORS_MASK[config["model"]], anchors_path=anchors_path)
    print(f"{config['model']} at {config['input_shape']}, {len(lines)} BCCD images, {len(targets)} objects")
    print(f"{'obj init':<12}{'loss':<7}{'normalisation':<15}{'loss_conf':>10}{'weighted':>10}")
    for prior in (None, 0.01):
        torch.manual_seed(0)
        net = build_model(model=config["model"], num_classes=3)
        init_weights(net, obj_prior=prior)
        with torch.no_grad():
            outputs = net.eval()(images)
        for focal in (False, True):
            for norm in ("mean", "num_pos"):
                settings = train.TrainConfig(model=config["model"], input_shape=config["input_shape"],
                                             focal_loss=focal, conf_normalization=norm)
                criterion = build_loss(config=settings, spec=spec)
                terms = criterion(outputs, targets)
                weighted = weighted_conf_term(criterion, outputs, targets)
                print(f"{'bias 0' if prior is None else f'pi={prior}':<12}{'focal' if focal else 'BCE':<7}"
                      f"{norm:<15}{terms['loss_conf'].item():>10.4f}{weighted:>10.4f}")


if __name__ == "__main__":
    run_cli(main)
