"""End-to-end training on a few bundled BCCD images: the loss falls, a tiny set is overfitted, resume is exact,
two DDP processes stay in sync, and bad settings are refused."""
import os
import subprocess
import sys

import pytest
import torch
from conftest import CLASSES, REPO, VOC, annotation_lines, free_port, ids, small_run, timeless

import train
from utils.core.config import ConfigError
from utils.train import trainer


def test_short_training_lowers_the_loss(tmp_path):
    run = train.main(small_run(tmp_path, "--unfreeze_epoch=6", "--init_lr=0.64", "--warmup_epochs=1",
                               "--val_period=4"))
    rows = run.history.rows
    assert len(rows) == 6
    assert rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"]
    # validated every 4th epoch and after the last: only those can be "best"
    assert [r["epoch"] for r in rows if r["val_loss"] is not None] == [4, 6]
    best = torch.load(tmp_path / "logs" / "best_epoch_weights.pth", weights_only=True)
    assert best["epoch"] in (4, 6)
    for name in ("best_epoch_weights.pth", "last_epoch_weights.pth", "history.csv", "loss.png", "config.json"):
        assert (tmp_path / "logs" / name).is_file(), name
    assert not (tmp_path / "logs" / "run.lock").exists()  # released at the end
    assert all(r["val_held_out"] is True for r in rows)  # train and val images are distinct
    saved = torch.load(tmp_path / "logs" / "last_epoch_weights.pth", weights_only=True)
    assert saved["config"]["class_names"] == CLASSES and saved["config"]["model"] == "yolov4-tiny"
    assert saved["config"]["input_shape"] == [128, 128]
    # EMA on by default: "model" holds the averaged weights, which the detector loads; "train_model" the raw ones.
    assert saved["ema"]["updates"] == 6 * 2  # 4 images / batch 2 = 2 steps an epoch
    from yolo import YOLO

    detector = YOLO(model_path=str(tmp_path / "logs" / "last_epoch_weights.pth"), device="cpu")
    assert all(torch.equal(v, saved["model"][k]) for k, v in detector.net.state_dict().items())
    assert any(not torch.equal(saved["model"][k], saved["train_model"][k]) for k in saved["model"])


def test_overfits_two_images():
    """Model, loss, optimizer and the evaluation code on two fixed letterboxed images: the detector must learn
    to find their objects (mAP on those very images), which fails if targets, decode or loss disagree."""
    from nets.yolo import build_model, init_weights
    from nets.yolo_training import YOLOLoss, loss_weights
    from utils.data.dataloader import YoloDataset, yolo_collate
    from utils.eval.evaluation import evaluate_voc_images
    from yolo import YOLO, PostprocessSettings

    image_ids = ids("train", 2)
    dataset = YoloDataset(annotation_lines=annotation_lines(image_ids), input_shape=(192, 256), train=False)
    images, targets = yolo_collate([dataset[i] for i in range(len(dataset))])
    config = {"model": "yolov4-tiny", "class_names": CLASSES, "input_shape": [192, 256],
              "anchors": [[10, 14], [23, 27], [37, 58], [81, 82], [135, 169], [344, 319]],
              "anchors_mask": [[3, 4, 5], [1, 2, 3]]}
    torch.manual_seed(0)
    net = build_model(model="yolov4-tiny", num_classes=3)
    init_weights(net, obj_prior=0.01)
    criterion = YOLOLoss(anchors_px=torch.tensor(config["anchors"], dtype=torch.float32),
                         anchors_mask=config["anchors_mask"], num_classes=3, input_shape=(192, 256),
                         weights=loss_weights(num_levels=2, input_shape=(192, 256), num_classes=3, cls_ratio=0.5))
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(150):
        terms = criterion(net(images), targets)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
    assert losses[-1] < 0.1 * losses[0]
    detector = YOLO.from_model(net, config=config,
                               postprocess_settings=PostprocessSettings(confidence=0.001, nms_iou=0.5))
    results = evaluate_voc_images(detector=detector, class_names=CLASSES,
                                  image_paths=[VOC / "JPEGImages" / f"{i}.jpg" for i in image_ids])
    assert results["map"] > 0.75, results["per_class"]


def test_resume_is_exact(tmp_path, monkeypatch):
    """Interrupted mid-epoch and resumed, the training weights and their EMA match an uninterrupted run bit-for-bit,
    and so does the history: the interrupted epoch's logged means cover its iterations before the interrupt too.
    A short EMA warm-up (tau = 1 step) makes the average differ clearly from the raw weights."""
    ema = ("--ema_decay=0.9", "--ema_tau=1")
    straight = small_run(tmp_path / "a", "--unfreeze_epoch=2", "--mosaic=True", "--mosaic_prob=0.5", *ema)
    train.main(straight)
    expected = torch.load(tmp_path / "a" / "logs" / "last_epoch_weights.pth", weights_only=True)
    assert any(not torch.equal(expected["model"][k], expected["train_model"][k]) for k in expected["model"])

    # Interrupt in the middle of epoch 2 (after its first iteration), as Ctrl-C would.
    original = trainer.train_one_epoch

    def interrupted(**kwargs):
        if kwargs["epoch"] == 1:
            inner = kwargs["on_iteration_end"]

            def stop_after_first(i):
                inner(i)
                raise KeyboardInterrupt

            kwargs["on_iteration_end"] = stop_after_first
        return original(**kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", interrupted)
    resumed = small_run(tmp_path / "b", "--unfreeze_epoch=2", "--mosaic=True", "--mosaic_prob=0.5", *ema)
    with pytest.raises(KeyboardInterrupt):
        train.main(resumed)
    monkeypatch.setattr(trainer, "train_one_epoch", original)
    checkpoint = tmp_path / "b" / "logs" / "last_epoch_weights.pth"
    interrupted_at = torch.load(checkpoint, weights_only=True)
    assert interrupted_at["iteration"] == 1 and interrupted_at["ema"]["updates"] == 3  # 2 steps in epoch 1, 1 in 2
    assert interrupted_at["epoch_means"]["count"] == 1  # the loss sums of epoch 2's first iteration
    assert not (tmp_path / "b" / "logs" / "run.lock").exists()  # released on Ctrl-C
    train.main([f"--resume={checkpoint}"])
    got = torch.load(checkpoint, weights_only=True)
    assert timeless(got["history"]) == timeless(expected["history"])
    assert got["ema"] == expected["ema"]
    for weights in ("model", "train_model"):
        assert got[weights].keys() == expected[weights].keys()
        for key in expected[weights]:
            assert torch.equal(got[weights][key], expected[weights][key]), (weights, key)


def test_two_ddp_processes_end_with_identical_weights(tmp_path):
    args = small_run(tmp_path, "--unfreeze_epoch=1", "--unfreeze_batch_size=4")
    script = tmp_path / "ddp_run.py"
    script.write_text(
        "import os, sys, torch\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import train\n"
        f"run = train.main({args!r} + ['--distributed=True'])\n"
        f"torch.save(run.net.state_dict(), os.path.join({str(tmp_path)!r}, f\"rank{{os.environ['RANK']}}.pt\"))\n"
        f"torch.save(run.ema.module.state_dict(), os.path.join({str(tmp_path)!r}, "
        f"f\"ema{{os.environ['RANK']}}.pt\"))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={free_port()}", str(script)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    saved = torch.load(tmp_path / "logs" / "last_epoch_weights.pth", weights_only=True)
    for key in rank0:
        assert torch.equal(rank0[key], saved["train_model"][key]), key  # rank 0 checkpointed the weights it ended with
        assert torch.allclose(rank0[key].float(), rank1[key].float(), atol=1e-6), key
    # Every rank keeps the EMA of its (identical) weights; BatchNorm statistics are rank 0's after each epoch.
    ema0, ema1 = (torch.load(tmp_path / f"ema{rank}.pt", weights_only=True) for rank in (0, 1))
    for key in ema0:
        assert torch.equal(ema0[key], saved["model"][key]), key
        assert torch.allclose(ema0[key].float(), ema1[key].float(), atol=1e-6), key


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting 'init_lrr'.*init_lr"):
        train.main(["--init_lrr=0.1"])
    with pytest.raises(ConfigError, match="unfreeze_epoch.*int"):
        train.main(["--unfreeze_epoch=ten"])
    with pytest.raises(ConfigError, match="model="):
        train.main(["--model=yolov5"])
    with pytest.raises(ConfigError, match="val_period=0: needs at least 1"):
        train.main(["--val_period=0"])
    with pytest.raises(FileNotFoundError, match="voc_annotation.py"):
        train.main(["--train_annotation_path=missing.txt", f"--save_dir={tmp_path}"])
    assert not (tmp_path / "run.lock").exists()  # released on the error


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from nets.yolo_training import YOLOLoss
    from utils.train.engine import NonFiniteLossError

    original = YOLOLoss.forward
    calls = {"n": 0}

    def poisoned(self, outputs, targets):
        terms = original(self, outputs, targets)
        calls["n"] += 1
        if calls["n"] > 3:  # epoch 1: 2 train + 1 val call; then NaN from epoch 2 on
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(YOLOLoss, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match="epoch 2, iteration 1"):
        train.main(small_run(tmp_path, "--unfreeze_epoch=3"))
    checkpoint = torch.load(tmp_path / "logs" / "last_epoch_weights.pth", weights_only=True)
    assert checkpoint["epoch"] == 1 and all(torch.isfinite(v.float()).all() for v in checkpoint["model"].values())


def test_frozen_backbone_stays_fixed_then_trains(tmp_path, monkeypatch):
    snapshots = []
    original = trainer.train_epoch

    def recording(run, **kwargs):
        terms = original(run, **kwargs)
        snapshots.append({"params": {k: v.detach().clone() for k, v in run.net.named_parameters()},
                          "buffers": {k: v.clone() for k, v in run.net.named_buffers()},
                          "ema": {k: v.clone() for k, v in run.ema.module.state_dict().items()}})
        return terms

    monkeypatch.setattr(trainer, "train_epoch", recording)
    run = train.main(small_run(tmp_path, "--unfreeze_epoch=2", "--freeze_train=True", "--freeze_epoch=1",
                               "--freeze_batch_size=4", "--init_lr=0.64"))
    assert [row["frozen"] for row in run.history.rows] == [True, False]
    after_frozen, after_unfrozen = snapshots
    from nets.yolo import build_model, init_weights

    torch.manual_seed(11)  # train.py's default seed: rebuild the initial weights to compare against
    fresh = build_model(model="yolov4-tiny", num_classes=3)
    init_weights(fresh)
    start = dict(fresh.named_parameters())
    backbone = [k for k in start if k.startswith("backbone.")]
    heads = [k for k in start if k.startswith("heads.")]
    assert all(torch.equal(after_frozen["params"][k], start[k]) for k in backbone)
    assert any(not torch.equal(after_frozen["params"][k], start[k]) for k in heads)
    assert any(not torch.equal(after_unfrozen["params"][k], after_frozen["params"][k]) for k in backbone)
    # BatchNorm running statistics of the frozen backbone stay as initialised (mean 0, var 1, no batches counted),
    # in the weights and in their EMA; they move once the backbone trains.
    start_buffers = dict(fresh.named_buffers())
    backbone_buffers = [k for k in start_buffers if k.startswith("backbone.")]
    assert any(k.endswith("running_mean") for k in backbone_buffers)
    for k in backbone_buffers:
        assert torch.equal(after_frozen["buffers"][k], start_buffers[k]), k
        assert torch.equal(after_frozen["ema"][k], start_buffers[k]), k
    for k in backbone:
        assert torch.equal(after_frozen["ema"][k], start[k]), k
    assert any(not torch.equal(after_unfrozen["buffers"][k], start_buffers[k])
               for k in backbone_buffers if k.endswith("running_mean"))
