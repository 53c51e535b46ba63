"""Typed settings: command line, config files, and the errors a user sees."""
import pytest

from utils.core.config import ConfigError, parse_value, resolve_config, resolve_settings

SETTINGS = {
    "lr": (float, 0.01),
    "epochs": (int, 10),
    "flag": (bool, False),
    "name": (str, "x"),
    "shape": (list[int], [416, 416]),
    "mask": (list[list[int]] | None, None),
    "ratio": (float | None, None),
}


def test_defaults_then_file_then_command_line(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('lr = 0.5\nshape = [320, 480]\nname = "from-file"\n')
    config = resolve_config(SETTINGS, [f"--config={toml}", "--lr=0.25", "--flag=true"])
    assert config == {"lr": 0.25, "epochs": 10, "flag": True, "name": "from-file", "shape": [320, 480],
                      "mask": None, "ratio": None}
    json_file = tmp_path / "run.json"
    json_file.write_text('{"mask": [[3, 4, 5], [0, 1, 2]], "ratio": 2}')
    assert resolve_config(SETTINGS, [f"--config={json_file}"])["mask"] == [[3, 4, 5], [0, 1, 2]]


@pytest.mark.parametrize("text, kind, expected", [
    ("3", int, 3), ("1e-3", float, 0.001), ("4", float, 4.0), ("False", bool, False), ("yes", bool, True),
    ("[1, 2]", list[int], [1, 2]), ("None", float | None, None), ("0.5", float | None, 0.5),
    ("[[1,2],[3]]", list[list[int]] | None, [[1, 2], [3]]), ("a b", str, "a b"),
    # JSON as users paste it into a shell: true/false/null inside containers
    ('[{"name": "a", "mosaic": false, "lr": null}, "bce"]', list[str | dict],
     [{"name": "a", "mosaic": False, "lr": None}, "bce"]),
    ("[true, false]", list[bool], [True, False]),
])
def test_values_are_parsed_to_the_declared_type(text, kind, expected):
    value = parse_value(text, kind, key="k")
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("argv, message", [
    (["--epochz=3"], "unknown setting 'epochz'.*did you mean epochs"),
    (["--epochs=3.5"], "--epochs=3.5: expected int"),
    (["--flag=maybe"], "--flag=maybe: expected bool"),
    (["--lr=fast"], "--lr=fast: expected float"),
    (["--shape=[1.5, 2]"], "expected list"),
    (["--shape=[1, two]"], "expected list"),
    (["--shape=[true, 2]"], "expected list"),
    (["--epochs"], "--key=value"),
    (["epochs=3"], "--key=value"),
    (["--mask=None", "--config=missing.toml"], "missing.toml: not found"),
])
def test_bad_command_lines_name_the_setting(argv, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(SETTINGS, argv)


def test_bad_config_files_name_the_file_and_key(tmp_path):
    unknown = tmp_path / "a.toml"
    unknown.write_text("learning_rate = 1\n")
    with pytest.raises(ConfigError, match="a.toml: unknown setting 'learning_rate'"):
        resolve_config(SETTINGS, [f"--config={unknown}"])
    wrong = tmp_path / "b.json"
    wrong.write_text('{"epochs": "ten"}')
    with pytest.raises(ConfigError, match="b.json: epochs = 'ten': expected int"):
        resolve_config(SETTINGS, [f"--config={wrong}"])
    broken = tmp_path / "c.toml"
    broken.write_text("epochs = = 3\n")
    with pytest.raises(ConfigError, match="c.toml: not valid TOML"):
        resolve_config(SETTINGS, [f"--config={broken}"])


def test_train_settings_are_one_frozen_typed_object(tmp_path):
    import dataclasses

    import train

    names = [f.name for f in dataclasses.fields(train.TrainConfig)]
    assert names == list(train.__annotations__)  # every setting at the top of train.py, in order
    config_file = tmp_path / "recipe.toml"
    config_file.write_text('init_lr = 0.05\nunfreeze_epoch = 7\n', encoding="utf-8")
    config = resolve_settings(train.TrainConfig, [f"--config={config_file}", "--unfreeze_epoch=9"])
    assert (config.init_lr, config.unfreeze_epoch, config.min_lr) == (0.05, 9, train.min_lr)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.init_lr = 1.0
    other = train.TrainConfig()
    other.input_shape.append(3)  # defaults are copies: one instance cannot change another's
    assert train.TrainConfig().input_shape == [416, 416]


def test_literal_settings_take_only_their_choices(tmp_path):
    from typing import Literal

    settings = {"model": (Literal["yolov4", "yolov4-tiny"], "yolov4"), "mode": (Literal[0, 1, 2], 0),
                "scale": (float | Literal["match_bce_at_init"], 1.0)}
    config = resolve_config(settings, ["--model=yolov4-tiny", "--mode=2", "--scale=match_bce_at_init"])
    assert config == {"model": "yolov4-tiny", "mode": 2, "scale": "match_bce_at_init"}
    assert resolve_config(settings, ["--scale=0.5"])["scale"] == 0.5
    with pytest.raises(ConfigError, match=r"--model=yolov5: expected one of 'yolov4', 'yolov4-tiny'"):
        resolve_config(settings, ["--model=yolov5"])
    with pytest.raises(ConfigError, match=r"--mode=3: expected one of 0, 1, 2"):
        resolve_config(settings, ["--mode=3"])
    with pytest.raises(ConfigError, match=r"--scale=match: expected float or one of 'match_bce_at_init'"):
        resolve_config(settings, ["--scale=match"])
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('mode = true\nmodel = "tiny"\n')
    with pytest.raises(ConfigError, match=r"mode = True: expected one of 0, 1, 2"):  # True is not the choice 1
        resolve_config(settings, [f"--config={recipe}"])
    recipe.write_text('model = "tiny"\n')
    with pytest.raises(ConfigError, match=r"model = 'tiny': expected one of 'yolov4', 'yolov4-tiny'"):
        resolve_config(settings, [f"--config={recipe}"])


def test_config_file_that_is_not_utf8_names_the_file(tmp_path):
    recipe = tmp_path / "latin1.toml"
    recipe.write_bytes('model = "yolov4"\n# caf\xe9\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.toml: not UTF-8 text \(bytes b'\\xe9\\n' at byte 22\)"):
        resolve_config({"model": (str, "yolov4")}, [f"--config={recipe}"])
