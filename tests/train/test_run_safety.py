"""A run never writes where it should not and never ends silently wrong: a resumed copy writes into the copy,
settings that leave nothing to train are errors, failed saves are one-line errors that keep earlier files, and
the val loss says whether its images were held out from training."""
import dataclasses
import errno
import hashlib
import json
import os
import shutil

import matplotlib.pyplot as plt
import pytest
import torch
from conftest import VOC, annotation_lines, ids, small_run

import train
from nets.yolo_training import LOSS_TERMS
from utils.core.config import ConfigError, UserError
from utils.data.voc import shared_images
from utils.infer.checkpoint import save_atomic
from utils.train import history as history_module
from utils.train.history import LossHistory, plot_points
from utils.train.settings import resolve_training_config


def snapshot(folder) -> dict:
    """{relative path: (mtime in ns, sha256)} of every file under ``folder``."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_resumed_copy_writes_into_the_copy_and_leaves_the_original_alone(tmp_path):
    original = tmp_path / "first" / "logs"
    train.main(small_run(tmp_path / "first", "--unfreeze_epoch=1"))
    copy = tmp_path / "moved"
    shutil.copytree(original, copy)
    before = snapshot(original)
    assert "last_epoch_weights.pth" in before and "history.json" in before

    with pytest.raises(ConfigError) as finished:  # all its epochs trained: nothing to do
        train.main([f"--resume={copy / 'last_epoch_weights.pth'}"])
    assert str(finished.value) == (f"--resume={copy / 'last_epoch_weights.pth'}: that run has already trained 1 "
                                   "epoch, and unfreeze_epoch=1 (the total) leaves nothing more to train; to train "
                                   "longer, resume with --unfreeze_epoch=N (N > 1)")

    train.main([f"--resume={copy / 'last_epoch_weights.pth'}", "--unfreeze_epoch=2"])
    assert snapshot(original) == before
    resumed = torch.load(copy / "last_epoch_weights.pth", weights_only=True)
    assert resumed["epoch"] == 2 and resumed["config"]["save_dir"] == str(copy)
    assert [row["epoch"] for row in json.loads((copy / "history.json").read_text())] == [1, 2]
    assert json.loads((copy / "config.json").read_text())["save_dir"] == str(copy)
    assert not (copy / "run.lock").exists() and not (original / "run.lock").exists()


def test_a_resumed_run_writes_where_it_was_resumed_from_unless_the_command_line_says(tmp_path):
    folder = tmp_path / "copied"
    folder.mkdir()
    config = {**dataclasses.asdict(train.TrainConfig()), "save_dir": str(tmp_path / "original"), "unfreeze_epoch": 3}
    torch.save({"model": {}, "config": config, "epoch": 1}, folder / "last.pth")
    resume = f"--resume={folder / 'last.pth'}"
    assert resolve_training_config(train.TrainConfig, [resume]).save_dir == str(folder)
    recipe = tmp_path / "recipe.json"  # a config file's save_dir is the folder first trained in, as the checkpoint's
    recipe.write_text(json.dumps({"save_dir": str(tmp_path / "original")}))
    assert resolve_training_config(train.TrainConfig, [f"--config={recipe}", resume]).save_dir == str(folder)
    for flag in ("--save_dir", "--save-dir"):
        assert resolve_training_config(train.TrainConfig, [resume, f"{flag}={tmp_path / 'new'}"]).save_dir == str(
            tmp_path / "new")


@pytest.mark.parametrize("argv, message", [
    (["--unfreeze_epoch=0"], "unfreeze_epoch=0: nothing to train; the total number of epochs must exceed init_epoch=0"),
    (["--init_epoch=5", "--unfreeze_epoch=5"],
     "unfreeze_epoch=5: nothing to train; the total number of epochs must exceed init_epoch=5"),
    (["--init_epoch=-1"], "init_epoch=-1: needs at least 0"),
])
def test_settings_that_leave_nothing_to_train_are_refused(tmp_path, argv, message):
    with pytest.raises(ConfigError) as refused:
        train.main([f"--save_dir={tmp_path / 'logs'}", *argv])
    assert str(refused.value) == message
    assert not (tmp_path / "logs").exists()


def failing_save(error: BaseException):
    """A torch.save that writes a little, then fails with ``error`` (as a full disk does mid-file)."""
    def save(obj, file):
        file.write(b"partial")
        raise error

    return save


@pytest.mark.parametrize("error, cause, fix", [
    (RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/3: "
                  "file write failed, No space left on device"), "disk full", "free some space"),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "disk full", "free some space"),
    (OSError(errno.EACCES, os.strerror(errno.EACCES)), "permission denied", "make the folder writable"),
    (RuntimeError("unexpected pos 64 vs 0: Read-only file system"), "read-only file system",
     "save to a writable disk"),
])
def test_a_failed_save_names_file_and_cause_and_keeps_the_earlier_file(tmp_path, monkeypatch, error, cause, fix):
    path = tmp_path / "last_epoch_weights.pth"
    save_atomic({"epoch": 1}, path)
    earlier = path.read_bytes()
    monkeypatch.setattr(torch, "save", failing_save(error))
    with pytest.raises(UserError) as failed:
        save_atomic({"epoch": 2}, path)
    assert str(failed.value) == (f"cannot save {path}: {cause}; {fix} or pass another --save_dir "
                                 "(the files saved before are kept)")
    assert path.read_bytes() == earlier and [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file


def test_a_failed_save_that_is_no_write_failure_keeps_its_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", failing_save(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="^a bug$"):
        save_atomic({}, tmp_path / "x.pth")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_disk_full_during_training_ends_in_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    real_save = torch.save

    def full_from_epoch_2(obj, file, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 512 vs 448: "
                               "No space left on device")
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_from_epoch_2)
    with pytest.raises(UserError, match=r"^cannot save .*_epoch_weights.pth: disk full; free some space"):
        train.main(small_run(tmp_path, "--unfreeze_epoch=2"))
    logs = tmp_path / "logs"
    assert torch.load(logs / "last_epoch_weights.pth", weights_only=True)["epoch"] == 1
    assert not [p.name for p in logs.iterdir() if p.name.endswith(".tmp") or p.name == "run.lock"]


def test_shared_images_counts_the_same_files_however_written(tmp_path, monkeypatch):
    train_lines = annotation_lines(ids("train", 3))
    shared = train_lines[2].split(" ", 1)
    monkeypatch.chdir(VOC)
    respelled = [os.path.join("JPEGImages", "..", "JPEGImages", os.path.basename(shared[0])) + " " + shared[1]]
    val_lines = respelled + annotation_lines(ids("val", 1))
    assert len(shared_images(lines=val_lines, others=train_lines)) == 1
    assert len(shared_images(lines=annotation_lines(ids("val", 2)), others=train_lines)) == 0


@pytest.mark.slow
def test_a_val_set_inside_the_training_set_is_recorded_as_not_held_out(tmp_path, capsys):
    args = small_run(tmp_path, "--unfreeze_epoch=1")
    run = train.main([*args, f"--val_annotation_path={tmp_path / 'train.txt'}"])  # val = the training images
    assert run.history.rows[0]["val_held_out"] is False and run.run_config["val_held_out"] is False
    assert json.loads((tmp_path / "logs" / "config.json").read_text())["val_held_out"] is False
    assert (f"note: 4 of 4 validation images ({tmp_path / 'train.txt'}) are training images too "
            f"({tmp_path / 'train.txt'}): the val loss is not held out") in capsys.readouterr().out


TERMS = [f"train_{term}" for term in LOSS_TERMS]


def drawn_lines(rows: list[dict], tmp_path, monkeypatch) -> dict[str, list]:
    """{figure file stem: its lines} of LossHistory's PNG curves for ``rows``."""
    figures, close = [], plt.close
    monkeypatch.setattr(history_module.plt, "close", figures.append)
    monkeypatch.setattr(history_module.plt.Figure, "savefig",
                        lambda fig, path, **kw: setattr(fig, "saved_as", os.path.basename(path)))
    history = LossHistory(tmp_path, rows=rows)
    history.plot()
    history.close()
    lines = {fig.saved_as.removesuffix(".png"): fig.axes[0].get_lines() for fig in figures}
    for fig in figures:
        close(fig)
    return lines


def test_history_curves_draw_a_lone_val_point_as_a_marker(tmp_path, monkeypatch):
    rows = [{"epoch": e, **dict.fromkeys(TERMS, 1.0 / e), "val_loss": 0.7 if e == 3 else None, "map": None,
             "val_held_out": False} for e in (1, 2, 3)]
    train_line, val_line = drawn_lines(rows, tmp_path, monkeypatch)["loss"]
    assert train_line.get_label() == "train loss" and train_line.get_linestyle() == "-"
    assert list(train_line.get_xdata()) == [1, 2, 3]
    assert val_line.get_label() == "val loss (not held out: in the training set)"
    assert (val_line.get_marker(), val_line.get_linestyle()) == ("o", "None")
    assert list(val_line.get_xdata()) == [3] and list(val_line.get_ydata()) == [0.7]


def test_history_curves_join_sparse_val_points_and_label_held_out_val_plainly(tmp_path, monkeypatch):
    rows = [{"epoch": e, **dict.fromkeys(TERMS, 1.0), "val_loss": 0.5 if e % 2 == 0 else None, "val_held_out": True}
            for e in (1, 2, 3, 4)]
    _, val_line = drawn_lines(rows, tmp_path, monkeypatch)["loss"]
    assert val_line.get_label() == "val loss" and val_line.get_linestyle() == "-"
    assert list(val_line.get_xdata()) == [2, 4]  # validated epochs joined, not broken by the epochs without


def test_plot_points_draws_nothing_for_no_points():
    fig, ax = plt.subplots()
    plot_points(ax, [], label="none")
    assert ax.get_lines() == []
    plt.close(fig)


def test_contradictory_loss_choices_stop_before_any_data_is_read(tmp_path):
    import train
    from utils.train.settings import resolve_training_config

    with pytest.raises(ConfigError, match=r"focal_loss=True and quality_loss='vfl'"):
        resolve_training_config(train.TrainConfig, ["--focal_loss=True", "--quality_loss=vfl",
                                                    f"--train_annotation_path={tmp_path / 'missing.txt'}"])
