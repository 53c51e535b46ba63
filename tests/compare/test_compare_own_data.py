"""compare_focal.py on a dataset it has never seen (conftest's shapes dataset): the user's classes, k-means anchors,
run reuse only for equal settings, commands for a job array, the paired verdict."""
import json
import shlex

import pytest
import torch
from conftest import SHAPES_CLASSES, shapes_compare_argv, write_shapes_voc

import compare_focal
import train
from utils.core.config import ConfigError
from utils.data.anchors import auto_anchors

MATCHED_ARMS = ("[{'name': 'bce', 'focal_loss': False}, {'name': 'focal', 'focal_loss': True, "
                "'focal_conf_scale': 'match_bce_at_init'}]")


def tool_argv(root, *extra: str) -> list[str]:
    return shapes_compare_argv(root, *extra)


def checkpoint_config(root, run: str) -> dict:
    return torch.load(root / "out" / "runs" / run / "last_epoch_weights.pth", weights_only=True)["config"]


@pytest.fixture(scope="module")
def tiny(module_tmp):
    """YOLOv4-tiny through the BCCD recipe file with the user's data: commands first, run as a job array
    would, then collected by a second invocation."""
    root = module_tmp
    write_shapes_voc(root, images=12)
    argv = tool_argv(root, "--config=configs/bccd_tiny.toml", "--input_shape=[32,64]", f"--arms={MATCHED_ARMS}")
    compare_focal.main([*argv, "--print_commands=True"])
    commands = (root / "out" / "commands.txt").read_text().splitlines()
    for command in commands:
        train.main(shlex.split(command)[2:])
    stamps = {p: p.stat().st_mtime for p in (root / "out" / "runs").glob("*/last_epoch_weights.pth")}
    rows = compare_focal.main(argv)
    return root, argv, commands, stamps, rows


def test_commands_then_collect(tiny):
    root, _, commands, stamps, rows = tiny
    assert len(commands) == 2 and all(c.startswith("python train.py --config=") for c in commands)
    assert len(stamps) == 2 and all(p.stat().st_mtime == t for p, t in stamps.items())  # collected, not retrained
    assert [r["arm"] for r in rows] == ["bce", "focal"]


def test_checkpoints_carry_the_users_classes_and_computed_anchors(tiny):
    root = tiny[0]
    expected = auto_anchors(annotation_path=str(root / "ann" / "2007_train.txt"), input_shape=(32, 64), k=6)
    for run in ("bce__seed11", "focal__seed11"):
        config = checkpoint_config(root, run)
        assert config["class_names"] == list(SHAPES_CLASSES) and config["anchors_path"] == "auto"
        assert config["anchors"] == expected and len(expected) == 6
    lines = (root / "ann" / "2007_train.txt").read_text().splitlines()
    assert any(line.endswith(".jpg") for line in lines)  # images without objects are kept


def test_matched_focal_term_equals_bce_at_init_and_the_summary_ends_with_a_verdict(tiny):
    root, _, _, _, rows = tiny
    bce, focal = checkpoint_config(root, "bce__seed11"), checkpoint_config(root, "focal__seed11")
    assert focal["conf_term_at_init"] == pytest.approx(bce["conf_term_at_init"], rel=1e-5)
    assert focal["focal_conf_scale_value"] != 1.0 and bce["focal_conf_scale_value"] == 1.0
    summary = (root / "out" / "summary.md").read_text()
    assert "(matched to BCE at init)" in summary and "weighted conf term at init" in summary
    assert summary.strip().splitlines()[-1].startswith("Verdict at 95 %: ")
    assert "paired bootstrap over test images, one seed" in summary.strip().splitlines()[-1]
    paired = json.loads((root / "out" / "summary.json").read_text())["paired"][0]
    assert paired["seeds"][0]["map"] == pytest.approx(rows[1]["map"] - rows[0]["map"])
    assert {"small", "medium", "large"} <= set(paired["seeds"][0])


def test_a_changed_setting_is_refused_then_trained_anew_with_the_flag(tiny, capsys):
    root, argv = tiny[0], tiny[1]
    with pytest.raises(ConfigError, match=r"init_lr 0\.1 -> 0\.2") as err:
        compare_focal.main([*argv, "--init_lr=0.2"])
    assert "--on_changed=new" in str(err.value) and "focal__seed11" in str(err.value)
    bce_only = [*argv, "--arms=[{'name': 'bce', 'focal_loss': False}]", "--init_lr=0.2"]
    compare_focal.main([*bce_only, "--on_changed=new", "--devices=0"])  # a train.py process that sees GPU 0 only
    assert checkpoint_config(root, "bce__seed11__v2")["init_lr"] == 0.2
    assert checkpoint_config(root, "bce__seed11")["init_lr"] == 0.1
    capsys.readouterr()
    compare_focal.main(argv)  # the original settings still find their own folders
    assert capsys.readouterr().out.count("finished earlier with the same settings, reused") == 2


def test_settings_the_tool_sets_per_run_are_refused(tiny):
    with pytest.raises(ConfigError, match="--results_dir"):
        compare_focal.main([*tiny[1], "--save_dir=elsewhere"])


def test_a_class_id_outside_the_classes_file_stops_before_training(tmp_path):
    root = tmp_path
    write_shapes_voc(root, images=6)
    ann = root / "ann"
    ann.mkdir()
    for split in ("train", "val", "test"):
        (ann / f"2007_{split}.txt").write_text(f"{root}/VOCdevkit/VOC2007/JPEGImages/shape_000.jpg 1,1,9,9,1\n"
                                               f"{root}/VOCdevkit/VOC2007/JPEGImages/shape_001.jpg 1,1,9,9,2\n")
    with pytest.raises(ConfigError, match=r"2007_train.txt line 2: class id 2 but .*shapes_classes.txt"):
        compare_focal.main(tool_argv(root, "--input_shape=[32,64]"))
    assert not (root / "out" / "runs").exists()


def test_yolov4_three_levels(tmp_path):
    """The VOC recipe (YOLOv4, 3 levels, frozen backbone first) on the user's data, one arm (YOLOv4's 64 M
    parameters make every run cost seconds): focal with the Focal Loss paper's num_pos normalisation."""
    write_shapes_voc(tmp_path, images=12)
    arm = ("[{'name': 'focal_num_pos', 'focal_loss': True, 'conf_normalization': 'num_pos', "
           "'focal_conf_scale': 'match_bce_at_init'}]")
    rows = compare_focal.main(tool_argv(tmp_path, "--config=configs/voc_yolov4.toml", "--input_shape=[32,32]",
                                        "--parallel=1", "--mosaic=False", "--mixup=False", "--freeze_train=True",
                                        "--freeze_epoch=1", "--freeze_batch_size=8", f"--arms={arm}"))
    expected = auto_anchors(annotation_path=str(tmp_path / "ann" / "2007_train.txt"), input_shape=(32, 32), k=9)
    config = checkpoint_config(tmp_path, "focal_num_pos__seed11")
    assert config["model"] == "yolov4" and config["class_names"] == list(SHAPES_CLASSES)
    assert config["anchors"] == expected and config["anchors_mask"] == [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
    assert config["conf_normalization"] == "num_pos" and config["conf_term_at_init"] > 0
    assert len(rows) == 1 and "sum / number of positives" in (tmp_path / "out" / "summary.md").read_text()


def test_a_model_the_recipes_anchors_do_not_fit_is_refused_before_any_run(tmp_path):
    """--model=yolov4 on the tiny recipe (2-level mask, 6-anchor file): named with both fixes before annotation
    files are made or a run starts, instead of failing inside the first run."""
    write_shapes_voc(tmp_path, images=6)
    argv = [arg for arg in tool_argv(tmp_path, "--config=configs/bccd_tiny.toml", "--input_shape=[32,32]")
            if arg != "--anchors_path=auto"]
    with pytest.raises(ConfigError) as err:
        compare_focal.main([*argv, "--model=yolov4"])
    message = str(err.value)
    assert message.startswith("model yolov4 with anchors_path model_data/bccd_tiny_anchors.txt: anchors_mask has 2 "
                              "levels, the model has 3 (arms bce, focal); nothing was trained: ")
    assert "set --anchors_path=auto --anchors_mask=None" in message and "\n" not in message
    assert message.endswith(f"--config=configs/voc_yolov4.toml --classes_path={tmp_path / 'shapes_classes.txt'}")
    assert not (tmp_path / "ann").exists() and not (tmp_path / "out").exists()
    # Either fix passes the check parse_settings ends with (test_yolov4_three_levels trains such a yolov4 run).
    for fix in (["--anchors_path=auto", "--anchors_mask=None"], ["--config=configs/voc_yolov4.toml"]):
        base = compare_focal.parse_settings([*argv, "--model=yolov4", *fix])[1]
        assert base.model == "yolov4" and len(base.anchors_mask or [[6, 7, 8], [3, 4, 5], [0, 1, 2]]) == 3
    with pytest.raises(ConfigError, match=r"anchors_mask refers to anchors \[6, 7, 8\], but only 6 anchors exist "
                                          r"\(arms bce, focal\)"):
        compare_focal.parse_settings([*argv, "--model=yolov4", "--anchors_mask=None"])


def test_a_folder_made_before_a_setting_existed_is_reused_at_its_default(tmp_path):
    import dataclasses

    import train
    from utils.compare.run_folders import choose_run_dir, write_run_config

    config = train.TrainConfig(save_dir=str(tmp_path / "run"))
    write_run_config(tmp_path / "run", config)
    stored = json.loads((tmp_path / "run" / "run_config.json").read_text())
    del stored["quality_loss"]  # as a version before the setting wrote it
    (tmp_path / "run" / "run_config.json").write_text(json.dumps(stored))
    assert choose_run_dir(run_dir=tmp_path / "run", config=config, config_class=train.TrainConfig,
                          on_changed="refuse") == (tmp_path / "run", [])
    other = dataclasses.replace(config, quality_loss="qfl")
    assert choose_run_dir(run_dir=tmp_path / "run", config=other, config_class=train.TrainConfig,
                          on_changed="refuse") == (tmp_path / "run", ["quality_loss"])


def test_an_arm_with_contradictory_loss_choices_stops_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match=r"arm both: focal_loss=True and quality_loss='qfl'"):
        compare_focal.main([f"--results_dir={tmp_path / 'out'}",
                            "--arms=['bce', {'name': 'both', 'focal_loss': True, 'quality_loss': 'qfl'}]"])
    assert not (tmp_path / "out").exists()
