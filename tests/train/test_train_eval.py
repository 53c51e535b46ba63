"""In-training mAP with background images in the val split, shared over two DDP processes, and a non-finite
loss on one DDP rank stopping both ranks with the same message."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CLASSES, REPO, VOC, annotation_lines, free_port, ids, small_run

import train
from utils.eval.evaluation import evaluate_voc_images, voc_annotation_path


def val_with_background(tmp_path: Path) -> list[str]:
    """Two BCCD val images with their objects, plus two background images copied from BCCD: one without an XML,
    one whose XML lists no objects. Returns the settings pointing train.py at this val split."""
    year = tmp_path / "voc" / "VOC2007"
    (year / "JPEGImages").mkdir(parents=True)
    (year / "Annotations").mkdir()
    val_ids, spare = ids("val", 2), ids("train", 6)[4:]
    for image_id in val_ids:
        shutil.copy(VOC / "JPEGImages" / f"{image_id}.jpg", year / "JPEGImages")
        shutil.copy(VOC / "Annotations" / f"{image_id}.xml", year / "Annotations")
    shutil.copy(VOC / "JPEGImages" / f"{spare[0]}.jpg", year / "JPEGImages" / "bg_noxml.jpg")
    shutil.copy(VOC / "JPEGImages" / f"{spare[1]}.jpg", year / "JPEGImages" / "bg_empty.jpg")
    (year / "Annotations" / "bg_empty.xml").write_text("<annotation><filename>bg_empty.jpg</filename></annotation>")
    lines = [line.replace(str(VOC), str(year)) for line in annotation_lines(val_ids)]
    lines += [str(year / "JPEGImages" / "bg_noxml.jpg"), str(year / "JPEGImages" / "bg_empty.jpg")]
    (tmp_path / "val_bg.txt").write_text("\n".join(lines) + "\n")
    return [f"--val_annotation_path={tmp_path / 'val_bg.txt'}"]


def val_image_paths(tmp_path: Path) -> list[str]:
    return [line.split()[0] for line in (tmp_path / "val_bg.txt").read_text().splitlines()]


def reference_map(tmp_path: Path) -> dict:
    """The saved weights evaluated here, in one process, through YOLO's checkpoint path, on the engine the run's
    eval_backend (auto) picks."""
    from utils.infer.backends import on_backend
    from yolo import YOLO, PostprocessSettings

    detector = on_backend(YOLO(model_path=str(tmp_path / "logs" / "last_epoch_weights.pth"),
                               postprocess_settings=PostprocessSettings(confidence=0.001, nms_iou=0.5), device="cpu"),
                          backend="auto")
    return evaluate_voc_images(detector=detector, image_paths=val_image_paths(tmp_path), class_names=CLASSES)


def test_in_training_map_with_background_val_images(tmp_path):
    args = small_run(tmp_path, "--unfreeze_epoch=1", "--eval_flag=True", "--eval_period=1")
    run = train.main([*args, *val_with_background(tmp_path)])  # the overriding val split comes last
    assert not voc_annotation_path(val_image_paths(tmp_path)[2]).exists()  # bg_noxml really has no XML
    row = run.history.rows[-1]
    expected = reference_map(tmp_path)
    assert expected["background_images"] == 2 and expected["images"] == 4
    assert row["map"] == pytest.approx(expected["map"], abs=1e-12)


def run_ddp(script: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port()}", str(script)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_ddp_evaluation_is_shared_and_matches_one_process(tmp_path):
    args = [*small_run(tmp_path, "--unfreeze_epoch=1", "--unfreeze_batch_size=4", "--eval_flag=True",
                       "--eval_period=1"), *val_with_background(tmp_path), "--distributed=True"]
    script = tmp_path / "ddp_eval.py"
    script.write_text(
        "import os, sys, json\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import train\n"
        "from utils.eval import evaluation\n"
        "seen = []\n"
        "original = evaluation.predict_images\n"
        "def recording(**kwargs):\n"
        "    seen.extend(kwargs['image_paths'])\n"
        "    return original(**kwargs)\n"
        "evaluation.predict_images = recording\n"
        f"run = train.main({args!r})\n"
        f"out = os.path.join({str(tmp_path)!r}, f\"rank{{os.environ['RANK']}}.json\")\n"
        "json.dump({'map': run.last_row['map'], 'seen': seen}, open(out, 'w'))\n")
    result = run_ddp(script)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = json_of(tmp_path / "rank0.json")
    rank1 = json_of(tmp_path / "rank1.json")
    assert sorted(rank0["seen"] + rank1["seen"]) == sorted(Path(p).stem for p in val_image_paths(tmp_path))
    assert len(rank0["seen"]) == len(rank1["seen"]) == 2
    assert not set(rank0["seen"]) & set(rank1["seen"])  # each image predicted once, by one rank
    assert rank0["map"] == rank1["map"] == pytest.approx(reference_map(tmp_path)["map"], abs=1e-12)


def json_of(path: Path) -> dict:
    return json.loads(path.read_text())


def test_nan_on_one_ddp_rank_stops_both_with_the_same_message(tmp_path):
    args = small_run(tmp_path, "--unfreeze_epoch=1", "--unfreeze_batch_size=2")  # 2 iterations per rank
    script = tmp_path / "ddp_nan.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "rank = int(os.environ['RANK'])\n"
        f"err = open(os.path.join({str(tmp_path)!r}, f'rank{{rank}}.err'), 'w')\n"
        "os.dup2(err.fileno(), 2)  # each rank's stderr to its own file\n"
        "import train\n"
        "from nets.yolo_training import YOLOLoss\n"
        "from utils.core.config import run_cli\n"
        "import torch\n"
        "original, calls = YOLOLoss.forward, []\n"
        "def poisoned(self, outputs, targets):\n"
        "    terms = original(self, outputs, targets)\n"
        "    if torch.is_grad_enabled():  # training iterations only, not the start-up or validation passes\n"
        "        calls.append(1)\n"
        "    if rank == 1 and len(calls) == 2:  # rank 1 only, its second training iteration\n"
        "        terms['loss'] = terms['loss'] * float('nan')\n"
        "    return terms\n"
        "YOLOLoss.forward = poisoned\n"
        f"sys.argv = ['train.py', *{args!r}, '--distributed=True']\n"
        "run_cli(train.main)\n")
    started = time.time()
    result = run_ddp(script, timeout=240)  # a rank left hanging would hit this timeout
    assert result.returncode != 0
    messages = []
    for rank in (0, 1):
        lines = (tmp_path / f"rank{rank}.err").read_text().splitlines()
        stopped = [line for line in lines if line.startswith("stopped: ")]
        assert len(stopped) == 1, (rank, lines[-20:])
        messages.append(stopped[0])
    assert messages[0] == messages[1]
    assert messages[0].startswith("stopped: non-finite loss at epoch 1, iteration 2 on rank 1 (loss=nan")
    assert time.time() - started < 240
    assert not (tmp_path / "logs" / "last_epoch_weights.pth").exists()  # epoch 1 never finished
