"""--select_on=val: recipe search scored on the validation images, the test annotations never read, the runs trained
on the train split where the recipe trains on train + val, and a training file sharing images with val refused.
One end-to-end run of the whole family (six arms, one seed, 32x32, one epoch) covers the family's report too."""
import json
import re

import pytest
from conftest import shapes_compare_argv, write_shapes_voc

import compare_focal
from utils.compare.experiment import ARM_PRESETS
from utils.core.config import ConfigError


def shapes_argv(root, *extra: str) -> list[str]:
    """The user's data through the BCCD recipe at tiny settings; train + val as the recipe trains on."""
    return shapes_compare_argv(root, "--config=configs/bccd_tiny.toml", "--input_shape=[32,32]", "--parallel=1",
                               "--bootstrap=200", *extra, train_file="2007_trainval.txt")


@pytest.fixture(scope="module")
def family_on_val(module_tmp):
    root = module_tmp
    write_shapes_voc(root, images=16)
    capture = pytest.MonkeyPatch()
    printed = []
    capture.setattr("builtins.print", lambda *args, **kwargs: printed.append(" ".join(map(str, args))))
    try:
        rows = compare_focal.main(shapes_argv(root, "--family=True", "--select_on=val"))
    finally:
        capture.undo()
    return root, rows, "\n".join(printed)


def test_scored_on_val_without_the_test_file(family_on_val):
    root, _, printed = family_on_val
    ann = root / "ann"
    assert not (ann / "2007_test.txt").exists()  # never made from the VOCdevkit, never read
    assert (ann / "2007_train.txt").is_file() and not (ann / "2007_trainval.txt").exists()
    val_images = {line.split()[0] for line in (ann / "2007_val.txt").read_text().splitlines()
                  if line and not line.startswith("#")}
    assert val_images and val_images.isdisjoint(line.split()[0] for line in (ann / "2007_train.txt").read_text()
                                                .splitlines())
    for arm in ARM_PRESETS:
        run = root / "out" / "runs" / f"{arm}__seed11"
        assert json.loads((run / "run_config.json").read_text())["train_annotation_path"] == str(ann / "2007_train.txt")
        assert json.loads((run / "eval.json").read_text())["test_annotation_path"] == str(ann / "2007_val.txt")
    summary = (root / "out" / "summary.md").read_text()
    assert "Scored on the validation images with get_map.py's code" in summary
    assert "Scored on the test" not in summary and "over test images" not in summary
    assert (f"The runs train on {ann / '2007_train.txt'} instead of the recipe's {ann / '2007_trainval.txt'}"
            in summary)
    assert f"[compare] --select_on=val: The runs train on {ann / '2007_train.txt'}" in printed
    assert "bce__seed11: val mAP@0.5 " in printed


def test_the_family_report(family_on_val):
    root, rows, _ = family_on_val
    assert [r["arm"] for r in rows] == list(ARM_PRESETS)
    summary = (root / "out" / "summary.md").read_text()
    verdicts = [line for line in summary.splitlines() if line.startswith("Verdict at 95 %")]
    named = [re.search(r"comparisons: (?:no detectable difference between )?(\w+) (?:and|better than|worse than) "
                       r"bce: ", line).group(1) for line in verdicts]
    assert named == list(ARM_PRESETS)[1:]
    assert all(line.startswith("Verdict at 95 %, Holm over m = 5 comparisons: ") and "p_Holm" in line
               for line in verdicts)
    paired = json.loads((root / "out" / "summary.json").read_text())["paired"]
    assert [(c["arm"], c["reference"], c["family"]) for c in paired] == [(a, "bce", 5) for a in list(ARM_PRESETS)[1:]]
    assert all("bootstrap_p_holm" in c["seeds"][0] for c in paired)
    assert (root / "out" / "forest.png").stat().st_size > 0


def test_a_training_file_holding_val_images_is_refused(tmp_path):
    write_shapes_voc(tmp_path, images=8)
    ann = tmp_path / "ann"
    ann.mkdir()
    image = tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages"
    (ann / "2007_val.txt").write_text(f"{image / 'shape_000.jpg'} 1,1,9,9,0\n{image / 'shape_001.jpg'} 1,1,9,9,1\n")
    (ann / "mine.txt").write_text(f"{image / 'shape_002.jpg'} 1,1,9,9,0\n{image / 'shape_001.jpg'} 1,1,9,9,1\n")
    argv = [*shapes_argv(tmp_path, "--select_on=val"), f"--train_annotation_path={ann / 'mine.txt'}"]
    with pytest.raises(ConfigError) as err:
        compare_focal.main(argv)
    message = str(err.value)
    assert (f"the validation file {ann / '2007_val.txt'} and the training file {ann / 'mine.txt'} share 1 image(s)"
            in message)
    assert "shape_001.jpg" in message and not (tmp_path / "out").exists()
