"""The named arms of compare_focal.py end to end: each trains two steps on four bundled images, the modulated ones
match plain BCE at initialisation when asked, and compare_focal.py runs arms given by name."""
import math

import pytest
import torch
from conftest import shapes_compare_argv, small_run, write_shapes_voc

import compare_focal
import train
from utils.compare.experiment import ARM_PRESETS
from utils.core.config import ConfigError


def preset_argv(name: str) -> list[str]:
    return [f"--{key}={value}" for key, value in ARM_PRESETS[name].items()]


def train_two_steps(tmp_path, *extra: str):
    """One epoch of 4 images at batch 2; returns the run and its last checkpoint's config."""
    run = train.main(small_run(tmp_path, "--unfreeze_epoch=1", "--val_period=1", *extra))
    return run, torch.load(tmp_path / "logs" / "last_epoch_weights.pth", weights_only=True)["config"]


@pytest.fixture(scope="module")
def bce_conf_term(module_tmp) -> float:
    _, config = train_two_steps(module_tmp, *preset_argv("bce"))
    return config["conf_term_at_init"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARM_PRESETS))
def test_each_named_arm_trains(name, tmp_path):
    run, config = train_two_steps(tmp_path, *preset_argv(name))
    assert len(run.history.rows) == 1 and math.isfinite(run.history.rows[0]["train_loss"])
    assert {key: config[key] for key in ARM_PRESETS[name]} == ARM_PRESETS[name]
    assert math.isfinite(config["conf_term_at_init"]) and config["conf_term_at_init"] > 0
    modulated = ARM_PRESETS[name]["focal_loss"] or ARM_PRESETS[name]["quality_loss"] != "none"
    assert config["focal_conf_factor"] == (10.0 if modulated else 1.0)  # focal_loss_ratio under 'mean'


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qfl", "vfl"])
def test_quality_losses_match_bce_at_init(name, tmp_path, bce_conf_term):
    _, config = train_two_steps(tmp_path, *preset_argv(name), "--focal_conf_scale=match_bce_at_init")
    assert config["conf_term_at_init"] == pytest.approx(bce_conf_term, rel=1e-5)
    assert config["focal_conf_scale_value"] != 1.0
    assert config["focal_conf_factor"] == pytest.approx(10.0 * config["focal_conf_scale_value"], rel=1e-12)


def tool_argv(root, *extra: str) -> list[str]:
    return shapes_compare_argv(root, "--config=configs/bccd_tiny.toml", "--input_shape=[32,64]", "--parallel=1",
                               "--bootstrap=100", *extra)


@pytest.mark.slow
def test_compare_focal_runs_arms_given_by_name(tmp_path):
    write_shapes_voc(tmp_path, images=12)
    rows = compare_focal.main(tool_argv(tmp_path, '--arms=["bce","qfl"]'))
    assert [r["arm"] for r in rows] == ["bce", "qfl"]
    qfl = torch.load(tmp_path / "out" / "runs" / "qfl__seed11" / "last_epoch_weights.pth", weights_only=True)
    assert qfl["config"]["quality_loss"] == "qfl" and not qfl["config"]["focal_loss"]
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "qfl x10" in summary and summary.strip().splitlines()[-1].startswith("Verdict at 95 %: ")


@pytest.mark.parametrize("arms, message", [('["bce","gfl"]', "no arm named 'gfl'"),
                                           ('["bce","bce"]', "share a name")])
def test_unknown_or_repeated_arm_names_are_refused_before_any_work(arms, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        compare_focal.main(tool_argv(tmp_path, f"--arms={arms}"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "ann").exists()
