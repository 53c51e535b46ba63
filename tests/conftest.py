"""What the tests share: the repository root on sys.path (so tests can `import nets` and `import utils`), the
bundled BCCD images as small training splits, a random network with trained-like BatchNorm statistics, the golden
VOC AP sample, and a generated shapes dataset.

Test files import these helpers from here (``from conftest import ...``), never from one another."""
import contextlib
import io
import shutil
import socket
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from nets.yolo import build_model, init_weights  # noqa: E402
from utils.core.model_files import DEFAULT_ANCHORS_MASK, DEFAULT_ANCHORS_PATH, get_anchors  # noqa: E402
from utils.eval.utils_map import DetBox, GTBox  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test of several seconds; still part of the default run")


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request) -> Iterator[Path]:
    """A folder for a module's shared fixture, removed once the module's tests are done: the runs trained in it
    leave hundreds of MB of checkpoints, which would otherwise pile up until the session ends."""
    root = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield root
    shutil.rmtree(root, ignore_errors=True)


VOC = REPO / "VOCdevkit" / "VOC2007"
CLASSES = ["RBC", "WBC", "Platelets"]


def annotation_lines(image_ids: list[str]) -> list[str]:
    """Annotation lines written straight from the XMLs (independent of voc_annotation.py)."""
    lines = []
    for image_id in image_ids:
        root = ET.parse(VOC / "Annotations" / f"{image_id}.xml").getroot()
        boxes = []
        for obj in root.iter("object"):
            b = obj.find("bndbox")
            x1, y1, x2, y2 = (int(float(b.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax"))
            if x2 > x1 and y2 > y1:
                boxes.append(f"{x1},{y1},{x2},{y2},{CLASSES.index(obj.findtext('name'))}")
        lines.append(" ".join([str(VOC / "JPEGImages" / f"{image_id}.jpg")] + boxes))
    return lines


def write_split(tmp_path: Path, train_ids: list[str], val_ids: list[str]) -> list[str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "train.txt").write_text("\n".join(annotation_lines(train_ids)) + "\n")
    (tmp_path / "val.txt").write_text("\n".join(annotation_lines(val_ids)) + "\n")
    return [f"--train_annotation_path={tmp_path / 'train.txt'}", f"--val_annotation_path={tmp_path / 'val.txt'}"]


def ids(split: str, count: int) -> list[str]:
    return (VOC / "ImageSets" / "Main" / f"{split}.txt").read_text().split()[:count]


def small_run(tmp_path: Path, *extra: str) -> list[str]:
    return [*write_split(tmp_path, ids("train", 4), ids("val", 2)), "--model=yolov4-tiny", "--input_shape=[128,128]",
            "--freeze_train=False", "--unfreeze_batch_size=2", "--num_workers=0", "--eval_flag=False",
            "--mosaic=False", "--mixup=False", "--fp16=False", f"--save_dir={tmp_path / 'logs'}", *extra]


def trained_like_net(model: str, seed: int = 0) -> nn.Module:
    """Random net with BatchNorm statistics and affine parameters away from their defaults (so that folding has
    something to fold) and a head bias that makes objects of varied scores."""
    torch.manual_seed(seed)
    net = build_model(model=model, num_classes=len(CLASSES))
    init_weights(net, conv_std=0.05)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        for head in net.heads:
            head.pred.bias.view(net.anchors_per_level, -1)[:, 4].fill_(-1.0)
    return net.eval()


def detector_config(model: str, *, input_shape: list[int]) -> dict:
    """What ``YOLO.from_model`` needs for a ``trained_like_net``: CLASSES, the model's default anchors and mask."""
    return {"model": model, "class_names": CLASSES, "anchors": get_anchors(str(DEFAULT_ANCHORS_PATH[model])),
            "anchors_mask": DEFAULT_ANCHORS_MASK[model], "input_shape": input_shape}


def free_port() -> int:
    """A port no other process listens on now (a fixed port collides with a concurrent test run)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


GOLDEN = REPO / "tests" / "fixtures" / "voc_ap_sample"
# IoU threshold -> (VOC2007 11-point AP, all-point AP), as documented with the golden data (truncated to 10 decimals).
GOLDEN_AP = {0.1: (0.3333333333, 0.3371980676), 0.3: (0.2683982683, 0.2456866804),
             0.5: (0.0303030303, 0.0222222222), 0.75: (0.0, 0.0)}


def load_golden(folder: str, *, detections: bool) -> dict:
    """Golden lines are `<class> [<confidence>] <left> <top> <width> <height>`; returns pixel xyxy records."""
    records = {}
    for path in sorted((GOLDEN / folder).glob("*.txt")):
        boxes = []
        for line in path.read_text().splitlines():
            tokens = line.split()
            if not tokens:
                continue
            values = [float(t) for t in tokens[1:]]
            left, top, width, height = values[-4:]
            if detections:
                boxes.append(DetBox(tokens[0], values[0], left, top, left + width, top + height))
            else:
                boxes.append(GTBox(tokens[0], left, top, left + width, top + height))
        records[path.stem] = boxes
    return records


def assert_truncated_equal(value: float, expected: float) -> None:
    assert expected - 1e-15 <= value < expected + 1e-10, (value, expected)


def pycocotools_direct(dataset: dict, results: list) -> list:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return list(evaluator.stats[:6])


SHAPES_CLASSES = ("circle", "square")
SHAPES_SIZES = {"circle": (14, 14), "square": (30, 22)}  # planted box (w, h) in image pixels, +- 2


def write_shapes_voc(root: Path, *, images: int = 16, seed: int = 0, width: int = 128, height: int = 96) -> Path:
    """Writes root/VOCdevkit/VOC2007/{JPEGImages,Annotations} and root/shapes_classes.txt; returns the VOCdevkit."""
    rng = np.random.default_rng(seed)
    year = root / "VOCdevkit" / "VOC2007"
    (year / "JPEGImages").mkdir(parents=True)
    (year / "Annotations").mkdir(parents=True)
    (root / "shapes_classes.txt").write_text("\n".join(SHAPES_CLASSES) + "\n")
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(images):
        texture = 90 + 40 * np.sin(xx / (3 + i % 4)) * np.cos(yy / 5) + rng.normal(0, 12, (height, width))
        canvas = np.repeat(np.clip(texture, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        image = Image.fromarray(canvas)
        draw = ImageDraw.Draw(image)
        objects = []
        for _ in range(0 if i % 5 == 4 else rng.integers(1, 4)):  # every fifth image has no objects
            name = SHAPES_CLASSES[rng.integers(0, 2)]
            w, h = (s + int(rng.integers(-2, 3)) for s in SHAPES_SIZES[name])
            x1, y1 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            box = (x1, y1, x1 + w, y1 + h)
            color = (230, 40, 40) if name == "circle" else (40, 40, 230)
            (draw.ellipse if name == "circle" else draw.rectangle)(box, fill=color)
            objects.append((name, box))
        image.save(year / "JPEGImages" / f"shape_{i:03d}.jpg", quality=95)
        xml_objects = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin>"
                              f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                              for n, b in objects)
        (year / "Annotations" / f"shape_{i:03d}.xml").write_text(
            f"<annotation><filename>shape_{i:03d}.jpg</filename><size><width>{width}</width><height>{height}"
            f"</height><depth>3</depth></size>{xml_objects}</annotation>")
    return root / "VOCdevkit"


TINY_YOLO_NAMES = ["circle", "square"]
# split -> image name -> ((width, height) of the upright image, label lines, the same boxes in pixels worked out by
# hand as (x1, y1, x2, y2, class)). e.jpg is stored 100 x 50 with EXIF orientation 6: upright it is 50 x 100.
TINY_YOLO = {
    "train": {"a.jpg": ((100, 50), ["0 0.2 0.3 0.2 0.4", "1 0.75 0.5 0.1 0.2"],
                        [(10, 5, 30, 25, 0), (70, 20, 80, 30, 1)]),
              "b.png": ((80, 60), ["1 0.5 0.5 0.25 0.5"], [(30, 15, 50, 45, 1)]),
              "c.jpg": ((64, 64), [], []),
              "e.jpg": ((50, 100), ["0 0.5 0.25 0.4 0.1"], [(15, 20, 35, 30, 0)])},
    "val": {"d.jpg": ((120, 80), ["0 0.25 0.25 0.5 0.5", "1 0.5 0.5 0.1 0.1"],
                      [(0, 0, 60, 40, 0), (54, 36, 66, 44, 1)])},
}
TINY_YOLO_YAML = "train: images/train\nval: images/val\nnames: [circle, square]\n"


def write_tiny_yolo(root: Path, *, yaml_text: str | None = TINY_YOLO_YAML) -> Path:
    """Writes TINY_YOLO as a YOLO-txt dataset: root/images/<split>/, root/labels/<split>/ and (unless None) a
    data.yaml of ``yaml_text``; returns root."""
    for split, images in TINY_YOLO.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for name, ((width, height), lines, _) in images.items():
            path = root / "images" / split / name
            if name == "e.jpg":  # stored turned: raw 100 x 50, EXIF orientation 6 shows it 50 x 100
                exif = Image.Exif()
                exif[0x0112] = 6
                Image.new("RGB", (height, width), (40, 90, 160)).save(path, exif=exif)
            else:
                Image.new("RGB", (width, height), (40, 90, 160)).save(path)
            (root / "labels" / split / f"{Path(name).stem}.txt").write_text("".join(f"{line}\n" for line in lines))
    if yaml_text is not None:
        (root / "data.yaml").write_text(yaml_text)
    return root


def write_truncated_jpeg(path: Path, *, seed: int = 2) -> Path:
    """A 64 x 64 noise JPEG cut to 60 % of its bytes: the header (and so the size) reads, the pixels do not."""
    noise = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 6 // 10])
    return path


def golden_coco_json() -> tuple[dict, list]:
    """The golden data written straight in COCO form (ids by sorted image name), independent of utils.eval.coco_eval."""
    names = sorted(p.stem for p in (GOLDEN / "groundtruths").glob("*.txt"))
    annotations, results = [], []
    for image_id, name in enumerate(names, start=1):
        for line in (GOLDEN / "groundtruths" / f"{name}.txt").read_text().split("\n"):
            if line.strip():
                x, y, w, h = map(float, line.split()[1:])
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        for line in (GOLDEN / "detections" / f"{name}.txt").read_text().split("\n"):
            if line.strip():
                score, x, y, w, h = map(float, line.split()[1:])
                results.append({"image_id": image_id, "category_id": 1, "bbox": [x, y, w, h], "score": score})
    dataset = {"images": [{"id": i} for i in range(1, len(names) + 1)], "annotations": annotations,
               "categories": [{"id": 1, "name": "person"}]}
    return dataset, results


def shapes_compare_argv(root: Path, *extra: str, train_file: str = "2007_train.txt") -> list[str]:
    """compare_focal.py's arguments for the shapes dataset under ``root`` (write_shapes_voc; annotation files in
    root/ann) at tiny settings; ``extra`` comes last, so it wins."""
    ann = root / "ann"
    return [f"--results_dir={root / 'out'}", f"--VOCdevkit_path={root / 'VOCdevkit'}",
            f"--classes_path={root / 'shapes_classes.txt'}", f"--train_annotation_path={ann / train_file}",
            f"--val_annotation_path={ann / '2007_val.txt'}", f"--test_annotation_path={ann / '2007_test.txt'}",
            "--anchors_path=auto", "--unfreeze_epoch=1", "--num_workers=0", "--eval_flag=False", "--fp16=False",
            "--freeze_train=False", "--unfreeze_batch_size=4", *extra]


# History keys that measure time or CPU use: they differ between runs that are otherwise bit-identical.
TIMING_KEYS = ("seconds", "data_seconds", "step_seconds", "cpu_seconds", "cpu_cores", "machine_busy", "machine_steal")


def timeless(rows: list[dict]) -> list[dict]:
    """History rows without their TIMING_KEYS."""
    return [{key: value for key, value in row.items() if key not in TIMING_KEYS} for row in rows]
