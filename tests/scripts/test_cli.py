"""The scripts as a user runs them: --help, expected errors as one line with exit code 2, video frame rate,
requirements that cover the README's features."""
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO
from PIL import Image
from torch.utils.data import DataLoader

import predict
import train
from utils.core.config import UserError, run_cli, setting_comments, user_message
from utils.data.dataloader import YoloDataset
from utils.infer.checkpoint import read_checkpoint

SCRIPTS = ["train.py", "predict.py", "get_map.py", "compare_focal.py", "voc_annotation.py", "summary.py"]


def run_script(script: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_settings_with_types_defaults_and_comments(script):
    result = run_script(script, "--help")
    assert result.returncode == 0, result.stderr
    comments = setting_comments((REPO / script).read_text(encoding="utf-8"))
    name, comment = next(iter(comments.items()))  # the first setting at the script's top
    assert re.search(rf"--{name}\s+\S.* = ", result.stdout)
    assert comment in result.stdout


def test_help_shows_the_choices_of_a_setting():
    result = run_script("train.py", "--help")
    assert re.search(r"--optimizer_type\s+one of 'sgd', 'adam', 'adamw' = 'sgd'", result.stdout)
    assert re.search(r"--focal_conf_scale\s+float or one of 'match_bce_at_init' = 1.0", result.stdout)
    result = run_script("get_map.py", "--help")
    assert re.search(r"--map_mode\s+one of 0, 1, 2, 3, 4 = 0", result.stdout)


def test_setting_comments_come_from_the_source():
    source = 'a: int = 1  # first\nb: list[dict] = [  # spans lines\n    {"x": 1},\n]\nc = 3  # not a setting\n'
    assert setting_comments(source) == {"a": "first", "b": "spans lines"}


def assert_user_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for text in expected:
        assert text in result.stderr


def run_cli_in_process(monkeypatch, capsys, module, *args: str) -> subprocess.CompletedProcess:
    """A script's ``run_cli(main)`` as ``python <script> args`` runs it, without a new interpreter (saves the
    torch import); a real bug would escape as its exception and fail the test."""
    monkeypatch.setattr(sys, "argv", [module.__file__, *args])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(module.main)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, exit_info.value.code, captured.out, captured.err)


@pytest.fixture
def tiny_set(tmp_path) -> dict:
    """Two 64x64 images with one box each, a classes file and header-less annotation files."""
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / name)
    (tmp_path / "classes.txt").write_text("cell\n")
    lines = [f"{tmp_path / 'a.jpg'} 4,4,40,40,0", f"{tmp_path / 'b.jpg'} 10,10,50,50,0"]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    return {"root": tmp_path, "args": [f"--classes_path={tmp_path / 'classes.txt'}", "--model=yolov4-tiny",
                                       "--input_shape=[64, 64]", "--device=cpu", "--fp16=False", "--eval_flag=False",
                                       "--freeze_train=False", "--unfreeze_epoch=1", "--unfreeze_batch_size=2",
                                       "--mosaic=False", "--mixup=False", f"--save_dir={tmp_path / 'logs'}",
                                       f"--train_annotation_path={tmp_path / 'train.txt'}",
                                       f"--val_annotation_path={tmp_path / 'val.txt'}"]}


def test_train_empty_annotation_file_is_one_line(tiny_set, monkeypatch, capsys):
    (tiny_set["root"] / "empty.txt").write_text("# classes: [\"cell\"]\n")
    result = run_cli_in_process(monkeypatch, capsys, train, *tiny_set["args"],
                                f"--val_annotation_path={tiny_set['root'] / 'empty.txt'}")
    assert_user_error(result, "empty.txt: holds no images")
    assert len(result.stderr.strip().splitlines()) == 1


def test_train_corrupt_resume_file_is_one_line(tiny_set, monkeypatch, capsys):
    (tiny_set["root"] / "bad.pth").write_bytes(b"not a checkpoint")
    result = run_cli_in_process(monkeypatch, capsys, train, *tiny_set["args"],
                                f"--resume={tiny_set['root'] / 'bad.pth'}")
    assert_user_error(result, "bad.pth: cannot be read")


def test_train_class_id_out_of_range_stops_before_training(tiny_set, monkeypatch, capsys):
    (tiny_set["root"] / "train.txt").write_text(f"{tiny_set['root'] / 'a.jpg'} 4,4,40,40,3\n")
    result = run_cli_in_process(monkeypatch, capsys, train, *tiny_set["args"])
    assert_user_error(result, "train.txt line 1: class id 3", "lists 1 classes")
    assert "epoch 1/1" not in result.stdout


def test_train_truncated_jpeg_in_a_worker_is_one_line(tiny_set):
    path = tiny_set["root"] / "b.jpg"
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])  # headers intact: only decoding finds it
    result = run_script("train.py", *tiny_set["args"], "--num_workers=1")
    assert_user_error(result, "cannot decode image", "b.jpg", "on_corrupt=skip")
    assert "DataLoader worker" not in result.stderr and "Original Traceback" not in result.stderr


def test_worker_error_is_unwrapped_to_its_message(tmp_path):
    (tmp_path / "t.jpg").write_text("text named .jpg")
    dataset = YoloDataset(annotation_lines=[f"{tmp_path / 't.jpg'}"], input_shape=(32, 32), train=False)
    with pytest.raises(UserError) as err:
        next(iter(DataLoader(dataset, num_workers=1)))
    assert "Original Traceback" in str(err.value)  # how torch hands it over
    message = user_message(str(err.value))
    assert message.startswith("cannot decode image") and "t.jpg" in message and "\n" not in message


def test_voc_annotation_expected_error_is_one_line(tmp_path):
    (tmp_path / "classes.txt").write_text("")
    result = run_script("voc_annotation.py", f"--classes_path={tmp_path / 'classes.txt'}", "--annotation_mode=2",
                        f"--out_dir={tmp_path}")
    assert_user_error(result, "classes.txt: holds no class names")


def test_missing_logs_checkpoint_points_to_the_main_jobs_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    made = tmp_path / "runs" / "compare" / "runs" / "bce__seed11" / "last_epoch_weights.pth"
    made.parent.mkdir(parents=True)
    made.write_bytes(b"")
    with pytest.raises(FileNotFoundError) as err:
        read_checkpoint("logs/best_epoch_weights.pth")
    assert "<results_dir>/runs/<run>/" in str(err.value)
    assert "found here: runs/compare/runs/bce__seed11/last_epoch_weights.pth" in str(err.value)


def test_predict_missing_checkpoint_exits_2_with_the_pointer(tmp_path, monkeypatch, capsys):
    image = tmp_path / "a.jpg"
    Image.new("RGB", (32, 32)).save(image)
    monkeypatch.chdir(tmp_path)
    result = run_cli_in_process(monkeypatch, capsys, predict, "--model_path=logs/nothing_here.pth",
                                f"--image_paths=['{image}']")
    assert_user_error(result, "logs/nothing_here.pth", "compare_focal.py to <results_dir>/runs/<run>/")


@pytest.fixture(scope="module")
def cell_model(tmp_path_factory) -> dict:
    """A 1-class yolov4-tiny checkpoint of this project (64 px), the same network as a bare state_dict, an image."""
    import torch

    from nets.yolo import build_model

    root = tmp_path_factory.mktemp("cell_model")
    net = build_model(model="yolov4-tiny", num_classes=1)
    config = {"model": "yolov4-tiny", "class_names": ["cell"], "input_shape": [64, 64],
              "anchors": [[10.0, 14.0], [23.0, 27.0], [37.0, 58.0], [81.0, 82.0], [135.0, 169.0], [344.0, 319.0]],
              "anchors_mask": [[3, 4, 5], [1, 2, 3]]}
    torch.save({"model": net.state_dict(), "config": config}, root / "cell.pth")
    torch.save(net.state_dict(), root / "bare.pth")
    Image.new("RGB", (64, 64), (200, 30, 30)).save(root / "a.jpg")
    (root / "cat.txt").write_text("cat\n")
    (root / "two.txt").write_text("cat\ndog\n")
    return {"root": root, "image": f"--image_paths=['{root / 'a.jpg'}']", "out": f"--save_dir={root / 'out'}"}


def test_predict_refuses_another_datasets_classes_of_the_same_length(cell_model, monkeypatch, capsys):
    root = cell_model["root"]
    result = run_cli_in_process(monkeypatch, capsys, predict, f"--model_path={root / 'cell.pth'}", "--device=cpu",
                                f"--classes_path={root / 'cat.txt'}", cell_model["image"], cell_model["out"])
    assert_user_error(result, "cat.txt: class 0 is 'cat', but checkpoint", "cell.pth was trained with 'cell' there",
                      "leave classes_path unset")
    assert not list((root / "out").glob("*.png"))


def test_predict_class_count_of_a_bare_state_dict_is_one_line(cell_model, monkeypatch, capsys):
    root = cell_model["root"]
    result = run_cli_in_process(monkeypatch, capsys, predict, f"--model_path={root / 'bare.pth'}", "--device=cpu",
                                f"--classes_path={root / 'two.txt'}", cell_model["image"], cell_model["out"])
    assert_user_error(result, "two.txt lists 2 classes, but checkpoint", "bare.pth predicts 1")
    assert "size mismatch" not in result.stderr


def test_predict_names_an_undecodable_image_without_training_settings(cell_model, monkeypatch, capsys):
    bad = cell_model["root"] / "bad.jpg"
    bad.write_bytes(b"not an image")
    result = run_cli_in_process(monkeypatch, capsys, predict, f"--model_path={cell_model['root'] / 'cell.pth'}",
                                "--device=cpu", f"--image_paths=['{bad}']", cell_model["out"])
    assert_user_error(result, "cannot decode image", "bad.jpg", "fix or remove it")
    assert "on_corrupt" not in result.stderr  # a training setting: predict.py has none


@pytest.mark.parametrize("args, expected", [
    (["--save_dir={file}"], "save_dir={file}: {file} is a file, not a folder; choose another folder"),
    (["--save_dir={file}/sub"], "save_dir={file}/sub: {file} is a file, not a folder"),
    (["--mode=dir_predict", "--dir_origin_path={root}", "--dir_save_path={file}"], "dir_save_path={file}: {file} is a"),
    (["--mode=export_onnx", "--onnx_save_path={root}"], "onnx_save_path={root}: is a folder; give a file name such "
                                                        "as {root}/models.onnx"),
    (["--mode=heatmap", "--heatmap_save_path={root}"], "heatmap_save_path={root}: is a folder; give a file name"),
    (["--mode=video", "--video_path={file}", "--video_save_path={root}"], "video_save_path={root}: is a folder"),
    (["--image_paths=['{root}']"], "image_paths: {root} is a folder; detect every image of a folder with "
                                   "--mode=dir_predict --dir_origin_path={root}"),
])
def test_predict_output_paths_in_the_way_are_one_line(cell_model, monkeypatch, capsys, args, expected):
    root = cell_model["root"]
    values = {"root": root, "file": root / "cat.txt"}
    result = run_cli_in_process(monkeypatch, capsys, predict, f"--model_path={root / 'cell.pth'}", "--device=cpu",
                                cell_model["image"], *[arg.format(**values) for arg in args])
    assert_user_error(result, expected.format(**values))


def test_predict_model_path_folder_unreadable_folder_and_video_are_one_line(cell_model, monkeypatch, capsys):
    root = cell_model["root"]
    result = run_cli_in_process(monkeypatch, capsys, predict, f"--model_path={root}", cell_model["image"])
    assert_user_error(result, f"model_path {root}: is a folder, not a checkpoint file; give a file in it (it holds "
                              f"bare.pth, cell.pth)")
    unreadable = root / "unreadable"
    unreadable.mkdir()
    (unreadable / "a.jpg").write_text("text")
    result = run_cli_in_process(monkeypatch, capsys, predict, f"--model_path={root / 'cell.pth'}", "--device=cpu",
                                "--mode=dir_predict", f"--dir_origin_path={unreadable}",
                                f"--dir_save_path={root / 'dir_out'}")
    assert_user_error(result, f"image folder {unreadable}: none of its 1 images can be read, e.g. cannot decode image")
    assert not (root / "dir_out" / "detections.json").exists()
    (root / "clip.mp4").write_text("not a video")
    result = run_cli_in_process(monkeypatch, capsys, predict, f"--model_path={root / 'cell.pth'}", "--device=cpu",
                                "--mode=video", f"--video_path={root / 'clip.mp4'}")
    assert_user_error(result, f"cannot open video file {root / 'clip.mp4'}")


def test_get_map_and_kmeans_with_nothing_to_do_are_one_line(tmp_path, monkeypatch, capsys):
    import get_map
    import kmeans_for_anchors

    result = run_cli_in_process(monkeypatch, capsys, get_map, "--map_mode=3", f"--map_out_path={tmp_path / 'none'}")
    assert_user_error(result, f"map_out_path {tmp_path / 'none'}: no such folder; map_mode 0 writes")
    assert not (tmp_path / "none").exists()
    Image.new("RGB", (32, 32)).save(tmp_path / "a.jpg")
    (tmp_path / "no_boxes.txt").write_text(f"{tmp_path / 'a.jpg'}\n")
    result = run_cli_in_process(monkeypatch, capsys, kmeans_for_anchors,
                                f"--annotation_path={tmp_path / 'no_boxes.txt'}")
    assert_user_error(result, f"annotation file {tmp_path / 'no_boxes.txt'}: holds no boxes")


class _EchoDetector:
    def detect_image(self, image):
        return image


@pytest.mark.parametrize("source_fps", [7.0, 30.0])
def test_video_output_keeps_the_input_frame_rate(tmp_path, monkeypatch, source_fps):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(predict, "build_detector", lambda cfg: _EchoDetector())
    source = tmp_path / "in.avi"
    writer = cv2.VideoWriter(str(source), cv2.VideoWriter_fourcc(*"MJPG"), source_fps, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 60 * i, dtype=np.uint8))
    writer.release()
    out = tmp_path / "out.avi"
    assert predict.main(["--mode=video", f"--video_path={source}", f"--video_save_path={out}"]) == 3
    capture = cv2.VideoCapture(str(out))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(source_fps)
    capture.release()


def test_heatmap_goes_to_an_output_folder():
    assert not predict.heatmap_save_path.startswith("model_data")


def _floors(path: Path) -> dict[str, str]:
    floors = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)>=([0-9.]+)", line.strip())
        if match:
            floors[match.group(1).lower()] = match.group(2)
    return floors


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_requirements_cover_the_readme_and_their_floors_are_installed_here():
    floors = _floors(REPO / "requirements.txt")
    assert {"onnx", "onnxruntime"} <= set(floors)  # export_onnx / predict_onnx are README features
    for name, floor in {**floors, **_floors(REPO / "requirements-test.txt")}.items():
        installed = importlib.metadata.version(name)
        assert _version_tuple(installed) >= _version_tuple(floor), f"{name} {installed} is below its floor {floor}"
    assert sys.version_info >= (3, 11)  # tomllib
    assert "Python 3.11" in (REPO / "README.md").read_text(encoding="utf-8")
