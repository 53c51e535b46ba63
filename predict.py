"""Run a trained detector: images, a video or camera, FPS, a folder, an objectness heat map, ONNX export and
inference with the exported ONNX model.

Edit the settings below or override them: ``python predict.py --mode=dir_predict --confidence=0.3``; lists are
Python literals (``--image_paths="['a.jpg', 'b.jpg']"``); ``--config=FILE`` reads a TOML or JSON file of settings.
Detector settings left at None come from the checkpoint (published weights: VOC classes, yolov4 anchors, 416).
"""

import json
import os
import sys
import time
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image

from utils.core.config import ConfigError, UserError, print_config, resolve_config, run_cli, settings_of

mode: Literal["predict", "video", "fps", "dir_predict", "heatmap", "export_onnx", "predict_onnx"] = "predict"
model_path: str = "logs/best_epoch_weights.pth"  # checkpoint of this project, published state_dict or darknet .weights
cfg_path: str | None = None  # the darknet .cfg of a .weights model_path (classes, anchors, masks, size come from it)
classes_path: str | None = None  # class names file; None = from the checkpoint (published: model_data/voc_classes.txt)
anchors_path: str | None = None  # anchors file; None = from the checkpoint (published: model_data/yolo_anchors.txt)
anchors_mask: list[list[int]] | None = None  # anchor ids per level, coarsest level first; None = from the checkpoint
input_shape: list[int] | None = None  # network input [h, w], multiples of 32; None = from the checkpoint (else 416)
model: Literal["yolov4", "yolov4-tiny"] | None = None  # None = from the checkpoint (a bare state_dict: from its keys)
confidence: float = 0.5  # keep boxes whose objectness * class probability is at least this
nms_iou: float = 0.3  # NMS drops a box overlapping a better box of its class by more than this IoU
max_det: int = 300  # at most this many detections per image
nms_type: Literal["nms", "diou"] = "nms"  # IoU NMS or DIoU-NMS
letterbox_image: bool = True  # keep the aspect ratio with gray padding, as in validation; False stretches
device: str = "auto"  # auto | cpu | cuda | cuda:1
precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CPUs with native bf16, else fp32
fp16: bool = False  # older spelling of precision="fp16" (CUDA only)
# auto: OpenVINO on the CPU, but PyTorch on CUDA and, at precision auto, on CPUs with native bf16 (README, "Engine")
backend: Literal["auto", "torch", "onnxruntime", "openvino"] = "auto"
torch_compile: bool = False  # PyTorch engine: torch.compile the network; ~20 s once per input shape, then faster calls
batch_size: int = 8  # dir_predict: images per forward pass
crop: bool = False  # predict: also save every detection as an image in <save_dir>/crop/<image name>/
count: bool = False  # predict: print the number of detections per class
image_paths: list[str] = []  # predict / predict_onnx / heatmap images; empty = ask for file names (terminal only)
save_dir: str = "img_out"  # predict / predict_onnx: drawn images go here
video_path: str = "0"  # video: a video file, or a camera index such as "0"
video_save_path: str = ""  # video: write the drawn video here (.mp4 or .avi); "" = do not save
video_fps: float | None = None  # video: frame rate of the saved video; None = the input's (25 if a camera gives none)
test_interval: int = 100  # fps: number of timed detections
fps_image_path: str = "VOCdevkit/VOC2007/JPEGImages/BloodImage_00000.jpg"  # fps image (and heatmap's default)
dir_origin_path: str = "img/"  # dir_predict: folder of images to detect (unless dataset is given)
dataset: str = ""  # dir_predict: detect the images of this dataset's split instead (VOC devkit, YOLO txt, COCO json)
dataset_format: Literal["auto", "voc", "yolo", "coco"] = "auto"  # the dataset's format; auto: detected from its files
split: str = "test"  # dir_predict with dataset: the split whose images are detected (train, val or test)
dir_save_path: str = "img_out/"  # dir_predict: drawn images and detections.json go here
heatmap_save_path: str = "img_out/heatmap.png"  # heatmap: output image
onnx_save_path: str = "model_data/models.onnx"  # export_onnx writes it, predict_onnx reads it
onnx_dynamic_batch: bool = False  # export_onnx: dynamic batch dimension
onnx_opset: int = 12  # export_onnx: ONNX opset version
onnx_simplify: bool = False  # export_onnx: run onnxsim (needs the onnxsim package)

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp")


def load_image(path: str | Path) -> Image.Image:
    """Upright RGB image (EXIF orientation applied, as for training); clear errors for missing or bad files."""
    from utils.data.images import read_image_rgb

    return Image.fromarray(read_image_rgb(str(path)))


def output_folder(path: str | Path, *, setting: str) -> Path:
    """The folder a mode writes into, made when missing; a file in its way is named with the setting."""
    folder = Path(path)
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"{setting}={path}: {blocker} is a file, not a folder; choose another folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def output_file(path: str | Path, *, setting: str, example: str) -> Path:
    """A file a mode writes, its folder made when missing; a folder of that name is refused with an example."""
    file = Path(path)
    if file.is_dir():
        raise ConfigError(f"{setting}={path}: is a folder; give a file name such as {file / example}")
    output_folder(file.parent, setting=setting)
    return file


def postprocess_settings(cfg: dict):
    """The detector's NMS settings (confidence, nms_iou, nms_type, max_det) as a PostprocessSettings."""
    from utils.infer.postprocess import PostprocessSettings

    return PostprocessSettings(confidence=cfg["confidence"], nms_iou=cfg["nms_iou"], nms_type=cfg["nms_type"],
                               max_det=cfg["max_det"])


def build_detector(cfg: dict, *, allow_onnx: bool = True):
    """The configured detector: PyTorch (YOLO) or the same model run by the engine ``backend`` names
    (utils/infer/backends.py); ``allow_onnx=False``: PyTorch whatever the backend (heatmap and export need it)."""
    from utils.infer.backends import on_backend
    from yolo import YOLO

    detector = YOLO(model_path=cfg["model_path"], classes_path=cfg["classes_path"], anchors_path=cfg["anchors_path"],
                    anchors_mask=cfg["anchors_mask"], input_shape=cfg["input_shape"], model=cfg["model"],
                    letterbox_image=cfg["letterbox_image"], postprocess_settings=postprocess_settings(cfg),
                    device=cfg["device"], fp16=cfg["fp16"], precision=cfg["precision"], cfg_path=cfg["cfg_path"],
                    torch_compile=cfg["torch_compile"])
    if allow_onnx:
        detector = on_backend(detector, backend=cfg["backend"], precision=cfg["precision"])
    detector.batch_size = max(1, cfg["batch_size"])
    return detector


def build_onnx_detector(cfg: dict):
    from yolo import OnnxYOLO

    return OnnxYOLO(onnx_path=cfg["onnx_save_path"], classes_path=cfg["classes_path"],
                    letterbox_image=cfg["letterbox_image"], postprocess_settings=postprocess_settings(cfg),
                    device=cfg["device"])


def _predict_one(detector, path: str, cfg: dict) -> dict:
    image = load_image(path)
    detections = detector.detect(image)
    save_dir = Path(cfg["save_dir"])
    drawn = detector.render(image, detections, crop=cfg["crop"], count=cfg["count"],
                            crop_dir=save_dir / "crop" / Path(path).stem)
    out_path = save_dir / f"{Path(path).stem}.png"
    drawn.save(out_path)
    print(f"{path}: {len(detections)} detections -> {out_path}")
    for record in detections.to_dicts():
        print(f"  {record['class_name']} {record['score']:.3f} {record['box_xyxy']}")
    return {"image": str(path), "output": str(out_path), "detections": detections}


def run_predict(cfg: dict, detector=None) -> list[dict]:
    """Detects each of image_paths (or file names typed at a terminal prompt) and saves the drawn images."""
    paths = list(cfg["image_paths"])
    if not paths and not sys.stdin.isatty():
        raise ValueError("no images to predict: set --image_paths=\"['img/street.jpg']\" "
                         "(or run in a terminal to be asked for file names)")
    folders = [p for p in paths if Path(p).is_dir()]
    if folders:
        raise ConfigError(f"image_paths: {folders[0]} is a folder; detect every image of a folder with "
                          f"--mode=dir_predict --dir_origin_path={folders[0]}")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"image file not found: {', '.join(missing)}")
    output_folder(cfg["save_dir"], setting="save_dir")
    detector = detector or build_detector(cfg)
    if paths:
        return [_predict_one(detector, path, cfg) for path in paths]
    results = []
    while True:
        try:
            path = input("Input image filename (empty to quit): ").strip()
        except EOFError:
            break
        if not path:
            break
        try:
            results.append(_predict_one(detector, path, cfg))
        except (FileNotFoundError, ValueError) as err:
            print(f"{err}; try again")
    return results


def display_available() -> bool:
    """A window can only open where a display server is reachable; on Linux that needs DISPLAY or WAYLAND_DISPLAY."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def _open_window(name: str) -> bool:
    try:
        cv2.namedWindow(name, cv2.WINDOW_NORMAL)
        return True
    except cv2.error:
        print("note: this OpenCV build cannot open windows (headless); frames are not shown")
        return False


def run_video(cfg: dict) -> int:
    """Detects every frame of a video file or camera; shows it when a display exists, writes it when asked."""
    from utils.infer.draw import put_fps

    source = cfg["video_path"].strip()
    is_camera = source.isdigit()
    if not is_camera and not Path(source).is_file():
        raise FileNotFoundError(f"video file not found: {source}")
    if cfg["video_save_path"]:
        output_file(cfg["video_save_path"], setting="video_save_path", example="video.mp4")
    detector = build_detector(cfg)
    capture = cv2.VideoCapture(int(source) if is_camera else source)
    writer, window, frames, fps = None, None, 0, 0.0
    try:
        if not capture.isOpened():
            raise ValueError(f"cannot open {'camera ' + source if is_camera else 'video file ' + source}")
        ok, frame = capture.read()
        if not ok:
            raise ValueError(f"{'camera ' + source if is_camera else 'video file ' + source}: no frame could be read")
        if cfg["video_save_path"]:
            save_path = Path(cfg["video_save_path"])
            fourcc = cv2.VideoWriter_fourcc(*("XVID" if save_path.suffix.lower() == ".avi" else "mp4v"))
            source_fps = capture.get(cv2.CAP_PROP_FPS)  # 0 (or NaN) when the source does not say
            out_fps = cfg["video_fps"] or (source_fps if source_fps > 0 else 25.0)
            writer = cv2.VideoWriter(str(save_path), fourcc, out_fps, (frame.shape[1], frame.shape[0]))
            if not writer.isOpened():
                raise ValueError(f"cannot write video {save_path} (use a .mp4 or .avi name)")
        if display_available() and _open_window("video"):
            window = "video"
        while ok:
            start = time.perf_counter()
            drawn = detector.detect_image(Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
            frame_bgr = cv2.cvtColor(np.asarray(drawn), cv2.COLOR_RGB2BGR)
            fps = (fps + 1.0 / max(time.perf_counter() - start, 1e-9)) / 2  # smoothed, as the reference repos show it
            put_fps(frame_bgr, fps)
            if writer is not None:
                writer.write(frame_bgr)
            frames += 1
            if window is not None:
                cv2.imshow(window, frame_bgr)
                if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                    break
            ok, frame = capture.read()
    finally:
        capture.release()
        if writer is not None:
            writer.release()
        if window is not None:
            cv2.destroyAllWindows()
    saved = f", saved to {cfg['video_save_path']}" if writer is not None else ""
    print(f"video done: {frames} frames, {fps:.2f} FPS{saved}")
    return frames


def run_fps(cfg: dict) -> dict:
    image = load_image(cfg["fps_image_path"])
    stats = build_detector(cfg).get_fps(image, n=cfg["test_interval"])
    print(f"{cfg['fps_image_path']}, {cfg['test_interval']} runs, batch 1: preprocess {stats['preprocess_ms']:.2f} ms, "
          f"forward {stats['forward_ms']:.2f} ms, postprocess {stats['postprocess_ms']:.2f} ms; "
          f"{stats['total_ms']:.2f} ms per image, {stats['fps']:.2f} FPS")
    return stats


def dataset_images(cfg: dict) -> tuple[str, list[Path], list[str]]:
    """dir_predict with a dataset: (how messages name the split, its image files, the dataset's class names)."""
    from utils.data.dataset import load_dataset

    dataset = load_dataset(cfg["dataset"], dataset_format=cfg["dataset_format"], classes_path=cfg["classes_path"])
    records = dataset.records(cfg["split"])
    if not records:
        raise UserError(f"{dataset.split_name(cfg['split'])}: holds no images")
    return dataset.split_name(cfg["split"]), [Path(r.image_path) for r in records], list(dataset.class_names)


def run_dir_predict(cfg: dict) -> dict:
    """Every image of dir_origin_path (or of a dataset's split): drawn copies and detections.json in dir_save_path.
    An unreadable image is reported and skipped; the others are still processed."""
    from tqdm import tqdm

    from utils.infer.pipeline import check_dataset_classes

    origin, dataset_names = Path(cfg["dir_origin_path"]), None
    if cfg["dataset"]:
        origin, paths, dataset_names = dataset_images(cfg)
    elif not origin.is_dir():
        raise FileNotFoundError(f"image folder not found: {origin}")
    else:
        paths = sorted(p for p in origin.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"image folder {origin}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    out_dir = output_folder(cfg["dir_save_path"], setting="dir_save_path")
    detector = build_detector(cfg)
    if dataset_names is not None:
        check_dataset_classes(detector.class_names, dataset_names=dataset_names, dataset=cfg["dataset"],
                              source=f"model_path {cfg['model_path']}")
    images, skipped = {}, {}
    step = detector.batch_size
    for start in tqdm(range(0, len(paths), step), desc=f"dir_predict, {step} images per batch"):
        loaded = []
        for path in paths[start:start + step]:
            try:
                loaded.append((path, load_image(path)))
            except (FileNotFoundError, ValueError) as err:
                print(f"skipped: {err}")
                skipped[path.name] = str(err)
        if not loaded:
            continue
        for (path, image), detections in zip(loaded, detector.detect_batch([image for _, image in loaded])):
            detector.render(image, detections).save(out_dir / f"{path.stem}.png")
            images[path.name] = detections.to_dicts()
    if not images:
        raise UserError(f"image folder {origin}: none of its {len(skipped)} images can be read, e.g. "
                        f"{next(iter(skipped.values()))}")
    report = {"class_names": detector.class_names, "images": images, "skipped": skipped}
    json_path = out_dir / "detections.json"
    json_path.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"{len(images)} images, {sum(map(len, images.values()))} detections -> {out_dir} and {json_path}"
          + (f"; {len(skipped)} unreadable images skipped" if skipped else ""))
    return report


def run_heatmap(cfg: dict) -> Path:
    from utils.infer.draw import overlay_heatmap

    path = cfg["image_paths"][0] if cfg["image_paths"] else cfg["fps_image_path"]
    image = load_image(path)
    out_path = output_file(cfg["heatmap_save_path"], setting="heatmap_save_path", example="heatmap.png")
    heat = build_detector(cfg, allow_onnx=False).heatmap(image)  # needs the raw head outputs: PyTorch only
    overlay_heatmap(image, heat).save(out_path)
    print(f"{path}: objectness heat map -> {out_path}")
    return out_path


def run_export_onnx(cfg: dict) -> dict:
    output_file(cfg["onnx_save_path"], setting="onnx_save_path", example="models.onnx")
    mismatch = build_detector(cfg, allow_onnx=False).export_onnx(
        cfg["onnx_save_path"], opset=cfg["onnx_opset"], dynamic_batch=cfg["onnx_dynamic_batch"],
        simplify=cfg["onnx_simplify"])
    print(f"wrote {cfg['onnx_save_path']}; onnxruntime matches PyTorch: boxes within {mismatch['box_abs']:.2e} px "
          f"({mismatch['box_rel']:.1e} relative), probabilities within {mismatch['prob_abs']:.2e}")
    return mismatch


def run_predict_onnx(cfg: dict) -> list[dict]:
    if not Path(cfg["onnx_save_path"]).is_file():
        raise FileNotFoundError(f"ONNX model not found: {cfg['onnx_save_path']} (run --mode=export_onnx first)")
    return run_predict(cfg, detector=build_onnx_detector(cfg))


MODES = {"predict": run_predict, "video": run_video, "fps": run_fps, "dir_predict": run_dir_predict,
         "heatmap": run_heatmap, "export_onnx": run_export_onnx, "predict_onnx": run_predict_onnx}


def main(argv: list[str] | None = None):
    """Runs the configured mode and returns its result. Bad settings or missing/unreadable inputs end the
    program with a one-line message naming the file (SystemExit; exit code 2 through run_cli), not a traceback."""
    try:
        cfg = resolve_config(settings_of(globals()), argv)
        print_config(cfg)
        return MODES[cfg["mode"]](cfg)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"predict.py: {err}") from None


if __name__ == "__main__":
    run_cli(main)
