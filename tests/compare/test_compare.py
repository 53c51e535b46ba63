"""A miniature focal-vs-BCE comparison end to end, and the tool's planning helpers."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from conftest import annotation_lines, ids, small_run

import compare_focal
import train
from utils.compare import experiment as compare
from utils.core.config import ConfigError, settings_of
from utils.eval.reliability import reliability_bins


@pytest.fixture(scope="module")
def mini_comparison(module_tmp):
    tmp = module_tmp
    for name, split, count in (("train", "train", 4), ("val", "val", 2), ("test", "test", 2)):
        (tmp / f"{name}.txt").write_text("\n".join(annotation_lines(ids(split, count))) + "\n")
    argv = [f"--results_dir={tmp / 'out'}", f"--train_annotation_path={tmp / 'train.txt'}",
            f"--val_annotation_path={tmp / 'val.txt'}", f"--test_annotation_path={tmp / 'test.txt'}",
            "--unfreeze_epoch=1", "--unfreeze_batch_size=2", "--input_shape=[96,128]", "--num_workers=0"]
    rows = compare_focal.main(argv)
    return tmp / "out", argv, rows


def test_both_arms_trained_with_their_loss_settings(mini_comparison):
    out, _, rows = mini_comparison
    assert [r["arm"] for r in rows] == ["bce", "focal"]
    for arm, focal in (("bce", False), ("focal", True)):
        checkpoint = torch.load(out / "runs" / f"{arm}__seed11" / "last_epoch_weights.pth", weights_only=True)
        config = checkpoint["config"]
        assert config["focal_loss"] is focal
        assert (config["focal_alpha"], config["focal_gamma"]) == (0.25, 2.0)
        assert config["seed"] == 11 and config["input_shape"] == [96, 128] and checkpoint["epoch"] == 1
        assert len(checkpoint["history"]) == 1
    bce_hist, focal_hist = (json.loads((out / "runs" / f"{a}__seed11" / "history.json").read_text())
                            for a in ("bce", "focal"))
    # identical init, data and schedule; only the confidence loss differs, so its value must differ a lot
    assert focal_hist[0]["train_loss_conf"] < 0.5 * bce_hist[0]["train_loss_conf"]


def test_tables_and_plots_are_written(mini_comparison):
    out, _, rows = mini_comparison
    for name in ("summary.md", "summary.csv", "summary.json", "loss_curves.png", "per_class_ap.png", "loss_cdf.png",
                 "reliability.png"):
        assert (out / name).stat().st_size > 0, name
    table = (out / "summary.md").read_text()
    assert "mean over kept cells, focal x10 |" in table and "| bce |" in table  # the focal arm: the reference weight
    from utils.core.device import cpu_has_native_bf16  # train.py's default precision on this CPU

    trained = "bf16 autocast + channels_last" if cpu_has_native_bf16() else "fp32"
    assert "D-ECE" in table and f", torch {torch.__version__}, {trained} (2 runs)." in table
    from utils.core.device import resolve_precision  # the precision get_map.py's default gives on this machine

    assert f"Scored in {resolve_precision('auto', torch.device('cpu'))} " in table
    assert table.strip().splitlines()[-1].startswith("Verdict at 95 %: ")
    assert {"map", "map_voc07", "coco_ap", "ap_RBC", "final_loss_conf", "train_minutes"} <= set(rows[0])


def test_cdfs_are_monotone_and_end_at_one(mini_comparison):
    out, _, _ = mini_comparison
    for arm in ("bce", "focal"):
        cdf = json.loads((out / "runs" / f"{arm}__seed11" / "eval.json").read_text())["cdf"]
        assert set(cdf["curves"]) == {"positive", "negative"} and cdf["num_positive"] > 0
        for curves in cdf["curves"].values():
            assert set(curves) == {"0", "0.5", "1", "2"}
            for values in curves.values():
                assert np.all(np.diff(values) >= -1e-12)
                assert values[-1] == pytest.approx(1.0)
                assert values[0] >= 0


def test_easy_negatives_at_init_follow_from_the_objectness_prior(mini_comparison):
    """The recipe starts every objectness at p = 0.01 (obj_prior), so at init every kept negative is easy and
    carries -log(0.99) of plain BCE against -log(0.01) per positive: the easy share follows by hand (the
    network is rebuilt from the run's seed; with any other start the shares would be far off)."""
    out, _, _ = mini_comparison
    for arm in ("bce", "focal"):
        evaluation = json.loads((out / "runs" / f"{arm}__seed11" / "eval.json").read_text())
        init, trained = evaluation["easy_negatives"]["init"], evaluation["easy_negatives"]["trained"]
        positives, negatives = evaluation["cdf"]["num_positive"], evaluation["cdf"]["num_negative"]
        assert init["cells"] == trained["cells"] == positives + negatives
        assert init["easy_negatives"] == negatives  # every negative is easy at init
        by_hand = negatives * -math.log(0.99) / (negatives * -math.log(0.99) + positives * -math.log(0.01))
        assert init["bce_share"] == pytest.approx(by_hand, rel=0.05)
        # focal: negatives weigh (1 - alpha) p^gamma, positives alpha (1 - p)^gamma
        neg, pos = 0.75 * 0.01 ** 2 * -math.log(0.99), 0.25 * 0.99 ** 2 * -math.log(0.01)
        assert init["focal_share"] == pytest.approx(negatives * neg / (negatives * neg + positives * pos), rel=0.1)


def test_second_invocation_skips_finished_runs(mini_comparison, capsys):
    out, argv, rows = mini_comparison
    stamp = (out / "runs" / "bce__seed11" / "last_epoch_weights.pth").stat().st_mtime
    again = compare_focal.main(argv)
    assert capsys.readouterr().out.count("finished earlier with the same settings, reused") == 2
    assert (out / "runs" / "bce__seed11" / "last_epoch_weights.pth").stat().st_mtime == stamp
    assert [r["map"] for r in again] == [r["map"] for r in rows]


def test_another_scoring_engine_scores_again(mini_comparison, capsys):
    out, argv, _ = mini_comparison
    eval_json = out / "runs" / "bce__seed11" / "eval.json"
    compare_focal.main([*argv, "--eval_backend=onnxruntime"])
    assert "reused" not in capsys.readouterr().out  # scored on another engine before: scored again, not reused
    assert json.loads(eval_json.read_text())["scored_in"] == "fp32 on ONNX Runtime"
    compare_focal.main([*argv, "--eval_backend=onnxruntime"])
    assert capsys.readouterr().out.count("finished earlier with the same settings, reused") == 2


def test_an_evaluation_is_reused_for_the_same_test_images_engine_and_precision(tmp_path):
    (tmp_path / "eval_images.npz").write_bytes(b"")
    stored = {"format": compare.EVAL_FORMAT, "test_annotation_path": "test.txt", "scored_in": "bf16 on PyTorch"}
    (tmp_path / "eval.json").write_text(json.dumps(stored))
    assert compare.reusable_evaluation(tmp_path, "test.txt", scored_in="bf16 on PyTorch") == stored
    assert compare.reusable_evaluation(tmp_path, "test.txt", scored_in="bf16 on OpenVINO") is None
    assert compare.reusable_evaluation(tmp_path, "test.txt", scored_in="fp32 on PyTorch") is None
    assert compare.reusable_evaluation(tmp_path, "other.txt", scored_in="bf16 on PyTorch") is None
    (tmp_path / "eval.json").write_text(json.dumps({**stored, "format": compare.EVAL_FORMAT - 1}))
    assert compare.reusable_evaluation(tmp_path, "test.txt", scored_in="bf16 on PyTorch") is None


def test_grid_sweep_and_seeds_plan():
    assert len(compare.grid_arms()) == 1 + 5 * 3
    sweep = compare.parse_sweep("init_lr=0.001,0.01;input_shape=[320,320],[416,416]", settings_of(vars(train)))
    assert sweep[0] == {"init_lr": 0.001, "input_shape": [320, 320]} and len(sweep) == 4
    runs = compare.plan_runs(arms=[{"name": "bce", "focal_loss": False}], sweep=sweep, seeds=[1, 2])
    assert len(runs) == 8 and len({r.name for r in runs}) == 8
    assert runs[0].overrides == {"focal_loss": False, "init_lr": 0.001, "input_shape": [320, 320], "seed": 1}
    with pytest.raises(ConfigError, match="not a train.py setting"):
        compare.parse_sweep("learning_rate=1", settings_of(vars(train)))
    with pytest.raises(ConfigError, match="init_lr"):
        compare.parse_sweep("init_lr=fast", settings_of(vars(train)))


def fake_evaluation(map_value: float, *, focal: bool, alpha: float = 0.25, gamma: float = 2.0) -> dict:
    shares = {"init": {"bce_share": 0.9, "focal_share": 0.3}, "trained": {"bce_share": map_value, "focal_share": 0.1}}
    return {"map": map_value, "map_voc07": map_value - 0.01, "coco_ap": map_value / 2,
            "per_class_ap": {"RBC": map_value, "WBC": None}, "train_seconds": 120.0,
            "final_train": {"loss_loc": 0.5, "loss_conf": 0.1, "loss_cls": 0.05}, "easy_negatives": shares,
            "config": {"focal_loss": focal, "focal_alpha": alpha, "focal_gamma": gamma, "focal_loss_ratio": 10.0,
                       "conf_normalization": "mean"}}


def test_table_shows_the_focal_factor_the_run_stored():
    config = {"focal_loss": True, "focal_loss_ratio": 10.0, "conf_normalization": "mean", "focal_conf_scale": 2.0,
              "focal_conf_scale_value": 2.0}
    assert compare.conf_normalization_note({**config, "focal_conf_factor": 7.0}) == "mean over kept cells, focal x7"
    # runs of earlier versions stored no factor: ratio 10 x scale 2 under 'mean', the scale alone under num_pos
    assert compare.conf_normalization_note(config) == "mean over kept cells, focal x20"
    assert (compare.conf_normalization_note({**config, "conf_normalization": "num_pos"})
            == "sum / number of positives, focal x2")
    matched = {**config, "focal_conf_scale": "match_bce_at_init", "focal_conf_factor": 4.2092859996649015}
    assert compare.conf_normalization_note(matched) == "mean over kept cells, focal x4.21 (matched to BCE at init)"
    assert compare.conf_normalization_note({**config, "focal_loss": False}) == "mean over kept cells"


def fake_calibrations(runs, dece_values) -> dict:
    bins = reliability_bins(scores=[0.5], matched=[True])
    return {r.name: dataclasses.replace(bins, dece=d) for r, d in zip(runs, dece_values)}


def test_seeds_are_aggregated_as_mean_and_sample_std():
    runs = compare.plan_runs(arms=[{"name": "bce", "focal_loss": False}, {"name": "focal", "focal_loss": True}],
                             sweep=[{}], seeds=[1, 2, 3])
    evaluations = {r.name: fake_evaluation(m, focal=r.arm == "focal")
                   for r, m in zip(runs, (0.6, 0.7, 0.8, 0.5, 0.5, 0.5))}
    bce, focal = compare.summarise(evaluations, runs, fake_calibrations(runs, (0.1, 0.2, 0.6, 0.3, 0.3, math.nan)))
    assert bce["runs"] == 3 and bce["map"] == pytest.approx(0.7) and bce["map_std"] == pytest.approx(0.1)
    assert bce["map_runs"] == [0.6, 0.7, 0.8] and bce["ap_RBC"] == pytest.approx(0.7) and bce["ap_WBC"] is None
    assert bce["train_minutes"] == pytest.approx(2.0)
    assert bce["dece"] == pytest.approx(0.3) and focal["dece"] == pytest.approx(0.3)  # NaN: no detections, left out
    # each arm's easy-negative share is of the loss it trains with: plain BCE for bce, focal for focal
    assert (bce["easy_negative_share_init"], bce["easy_negative_share_trained"]) == pytest.approx((0.9, 0.7))
    assert (focal["easy_negative_share_init"], focal["easy_negative_share_trained"]) == pytest.approx((0.3, 0.1))


def test_grid_heatmap_is_drawn(tmp_path):
    from utils.compare.plots import plot_grid_heatmap

    arms = compare.grid_arms()
    runs = compare.plan_runs(arms=arms, sweep=[{}], seeds=[0])
    evaluations = {r.name: fake_evaluation(0.5 + 0.01 * i, focal=arm.get("focal_loss", False),
                                           alpha=arm.get("focal_alpha", 0.25), gamma=arm.get("focal_gamma", 2.0))
                   for i, (r, arm) in enumerate(zip(runs, arms))}
    rows = compare.summarise(evaluations, runs, fake_calibrations(runs, [0.1] * len(runs)))
    plot_grid_heatmap(rows=rows, out_path=tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0


def loss_rows(*, held_out: bool | None, validated: tuple[int, ...]) -> list[dict]:
    """History rows of epochs 1-3, validated in ``validated`` only; ``held_out`` None: a run without the flag."""
    from nets.yolo_training import LOSS_TERMS

    flag = {} if held_out is None else {"val_held_out": held_out}
    return [{"epoch": e, **{f"train_{t}": 1.0 / e for t in LOSS_TERMS},
             **{f"val_{t}": (0.5 / e if e in validated else None) for t in LOSS_TERMS}, **flag} for e in (1, 2, 3)]


def drawn_loss_curves(histories: dict, tmp_path, monkeypatch):
    """(train loss axes, val loss axes) of plot_loss_curves' figure for ``histories``."""
    from nets.yolo_training import LOSS_TERMS
    from utils.compare import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, out_path: figures.append(fig))
    plots.plot_loss_curves(histories=histories, out_path=tmp_path / "loss_curves.png")
    (fig,) = figures
    plots.plt.close(fig)
    return fig.axes[0], fig.axes[len(LOSS_TERMS)]  # row 0 train, row 1 val; column 0 the total loss


def test_loss_curves_draw_a_lone_val_point_as_a_marker(tmp_path, monkeypatch):
    train_ax, val_ax = drawn_loss_curves({"bce": loss_rows(held_out=True, validated=(3,)),
                                          "focal": loss_rows(held_out=True, validated=(1, 3))}, tmp_path, monkeypatch)
    assert [(line.get_label(), line.get_linestyle(), list(line.get_xdata())) for line in train_ax.get_lines()] == [
        ("bce", "-", [1, 2, 3]), ("focal", "-", [1, 2, 3])]
    lone, joined = val_ax.get_lines()
    assert (lone.get_label(), lone.get_marker(), lone.get_linestyle()) == ("bce", "o", "None")
    assert list(lone.get_xdata()) == [3] and list(lone.get_ydata()) == [0.5 / 3]
    assert (joined.get_linestyle(), list(joined.get_xdata())) == ("-", [1, 3])
    assert val_ax.get_title() == "val loss"


@pytest.mark.parametrize("flags, title", [
    ({"bce": False, "focal": False}, "val loss (not held out: in the training set)"),
    ({"bce": True, "focal": False}, "val loss\n(focal: not held out: in the training set)"),
    ({"bce": True, "focal": None}, "val loss"),  # a run of an earlier version: unknown, no claim
])
def test_loss_curves_say_when_the_val_loss_is_not_held_out(tmp_path, monkeypatch, flags, title):
    histories = {name: loss_rows(held_out=flag, validated=(1, 2, 3)) for name, flag in flags.items()}
    _, val_ax = drawn_loss_curves(histories, tmp_path, monkeypatch)
    assert val_ax.get_title() == title


def test_devices_run_one_process_per_gpu_each_seeing_only_its_gpu(tmp_path, monkeypatch):
    launched = []

    class FakeProcess:
        returncode = 0

        def __init__(self, command, **kwargs):
            running = [e for e in launched if e["running"]]
            launched.append({"command": command, "gpu": kwargs["env"]["CUDA_VISIBLE_DEVICES"], "running": True,
                             "busy": {e["gpu"] for e in running}})

        def poll(self):
            for e in launched:
                e["running"] = False
            return 0

    monkeypatch.setattr(compare.subprocess, "Popen", FakeProcess)
    runs = compare.plan_runs(arms=[{"name": "bce"}], sweep=[{}], seeds=[1, 2, 3])
    jobs = [(r, tmp_path / r.name) for r in runs]
    for _, run_dir in jobs:
        run_dir.mkdir()
    progress = compare.Progress(runs, {r.name: 1 for r in runs})
    compare.train_in_subprocesses(jobs=jobs, parallel=1, progress=progress, devices=["0", "1"], poll_seconds=0)
    assert [e["gpu"] for e in launched] == ["0", "1", "0"] or [e["gpu"] for e in launched] == ["0", "1", "1"]
    assert launched[1]["busy"] == {"0"}  # the second run started while the first held GPU 0
    assert all(e["command"][-1].startswith("--config=") for e in launched)


def test_progress_counts_each_runs_own_epochs(capsys):
    runs = compare.plan_runs(arms=[{"name": "short"}, {"name": "long", "unfreeze_epoch": 4}], sweep=[{}], seeds=[1])
    progress = compare.Progress(runs, {"short__seed1": 2, "long__seed1": 4})
    progress.set_done("long__seed1", 1, timed=False)  # resumed from an earlier epoch: not timed, but done
    progress.set_done("short__seed1", 1)
    progress.set_done("long__seed1", 4)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[:2] for line in lines] == [
        ["[compare] short seed 1: epoch 1/2", "all runs 2/6 epochs"],
        ["[compare] long seed 1: epoch 4/4", "all runs 5/6 epochs"]]


def test_recipe_files_resolve_to_train_settings():
    from utils.core.config import resolve_settings

    bccd = resolve_settings(train.TrainConfig, ["--config=configs/bccd_tiny.toml", "--init_lr=0.2"])
    assert (bccd.model, bccd.input_shape, bccd.anchors_mask) == ("yolov4-tiny", [480, 640], [[3, 4, 5], [0, 1, 2]])
    assert (bccd.unfreeze_epoch, bccd.unfreeze_batch_size, bccd.min_lr, bccd.amp_dtype) == (26, 8, 0.001, "auto")
    assert (bccd.train_annotation_path, bccd.mosaic, bccd.channels_last) == ("2007_trainval.txt", True, None)
    assert bccd.init_lr == 0.2  # the command line wins over the file
    assert bccd.focal_loss_ratio == train.focal_loss_ratio  # and the file over train.py's defaults
    voc = resolve_settings(train.TrainConfig, ["--config=configs/voc_yolov4.toml"])
    assert (voc.model, voc.input_shape, voc.freeze_epoch, voc.freeze_batch_size) == ("yolov4", [416, 416], 50, 8)
    assert (voc.unfreeze_epoch, voc.unfreeze_batch_size, voc.init_lr, voc.min_lr) == (300, 4, 0.01, 0.0001)
    assert (voc.optimizer_type, voc.lr_decay_type, voc.mosaic, voc.mixup) == ("sgd", "cos", True, True)


def test_focal_scale_matches_bce_on_the_first_batch():
    from nets.yolo import build_model, init_weights
    from nets.yolo_training import build_loss
    from utils.data.dataloader import YoloDataset
    from utils.train.conf_at_init import calibrate_conf_term, first_batch, weighted_conf_term
    from utils.train.trainer import model_spec

    lines = annotation_lines(ids("train", 4))
    config = train.TrainConfig(model="yolov4-tiny", input_shape=[64, 64], focal_loss=True, obj_prior=0.01,
                               focal_conf_scale="match_bce_at_init", seed=3)
    spec = model_spec(config)
    torch.manual_seed(0)
    net = build_model(model="yolov4-tiny", num_classes=3)
    init_weights(net, obj_prior=0.01)
    dataset = YoloDataset(annotation_lines=lines, input_shape=(64, 64), train=True, seed=3)
    rng_before = torch.get_rng_state()
    stored = calibrate_conf_term(net=net, config=config, spec=spec, dataset=dataset, batch_size=2,
                                 device=torch.device("cpu"), saved=None)
    assert torch.equal(torch.get_rng_state(), rng_before) and net.training  # training stream and mode untouched
    images, targets = first_batch(dataset=dataset, batch_size=2, seed=3, epoch=0)
    with torch.no_grad():
        outputs = net.eval()(images)
    plain = build_loss(config=train.TrainConfig(model="yolov4-tiny", input_shape=[64, 64], obj_prior=0.01), spec=spec)
    bce_term = weighted_conf_term(plain, outputs, targets)
    unmatched = weighted_conf_term(build_loss(config=config, spec=spec), outputs, targets)  # scale 1 until matched
    scale = stored["focal_conf_scale_value"]
    assert scale == pytest.approx(bce_term / unmatched, rel=1e-5) and scale != 1.0
    assert stored["focal_conf_factor"] == pytest.approx(10.0 * scale, rel=1e-12)  # 'mean': focal_loss_ratio 10
    assert stored["conf_term_at_init"] == pytest.approx(bce_term, rel=1e-5)
    matched = build_loss(config=config, spec=spec, focal_conf_scale=scale)
    assert weighted_conf_term(matched, outputs, targets) == pytest.approx(bce_term, rel=1e-5)
    # the weights at 64 x 64: objectness 5 * 64^2 / 416^2 x level balance (0.4 at stride 32, 1 at 16) x factor
    objectness = 5 * 64 * 64 / 416**2
    assert matched.weights["loss_conf_s32"] == pytest.approx(objectness * 0.4 * 10.0 * scale, rel=1e-12)
    assert matched.weights["loss_conf_s16"] == pytest.approx(objectness * 10.0 * scale, rel=1e-12)
    again = calibrate_conf_term(net=net, config=config, spec=spec, dataset=dataset, batch_size=2,
                                device=torch.device("cpu"), saved={**stored, "focal_conf_scale": "x"})
    assert again == stored  # resume keeps them
    earlier = {k: v for k, v in stored.items() if k != "focal_conf_factor"}  # a checkpoint of an earlier version
    assert calibrate_conf_term(net=net, config=config, spec=spec, dataset=dataset, batch_size=2,
                               device=torch.device("cpu"), saved=earlier)["focal_conf_factor"] == pytest.approx(
        10.0 * scale, rel=1e-12)
    with pytest.raises(ConfigError, match="focal_conf_scale"):
        calibrate_conf_term(net=net, config=train.TrainConfig(focal_conf_scale="twice"),
                            spec=spec, dataset=dataset, batch_size=2, device=torch.device("cpu"), saved=None)


def test_the_run_trains_with_the_calibrated_loss_and_calibration_leaves_losses_alone(tmp_path):
    """The loss a Run trains with carries the calibrated scale in its weights; a loss built before the calibration
    keeps its weights (the calibration builds its own)."""
    from nets.yolo_training import build_loss
    from utils.train import trainer

    config = trainer.resolve_training_config(train.TrainConfig, small_run(
        tmp_path, "--focal_loss=True", "--focal_conf_scale=match_bce_at_init", "--obj_prior=0.01"))
    before = build_loss(config=config, spec=trainer.model_spec(config))
    weights_before = dict(before.weights)
    run = trainer.Run(config)
    run.history.close()
    assert before.weights == weights_before
    scale = run.run_config["focal_conf_scale_value"]
    assert scale != 1.0 and run.run_config["focal_conf_factor"] == pytest.approx(10.0 * scale, rel=1e-12)
    objectness = 5 * 128 * 128 / 416**2
    assert run.criterion.weights["loss_conf_s32"] == pytest.approx(objectness * 0.4 * 10.0 * scale, rel=1e-12)
    assert run.criterion.weights["loss_loc_s16"] == 0.05 and run.criterion.weights["loss_cls_s16"] == 3 / 80
