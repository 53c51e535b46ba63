"""Every command of the README's comparison section, at tiny settings (a CI smoke step: SMOKE=1, minutes)."""
import os
import re
import shlex

import pytest
from conftest import REPO, annotation_lines, ids, write_shapes_voc

import compare_focal
import kmeans_for_anchors

README = REPO / "README.md"
TINY = ["--unfreeze_epoch=1", "--input_shape=[64,64]", "--num_workers=0", "--eval_flag=False", "--fp16=False",
        "--freeze_train=False", "--unfreeze_batch_size=2", "--mosaic=False", "--mixup=False", "--bootstrap=100"]


def readme_commands() -> list[str]:
    section = README.read_text(encoding="utf-8").split("## Comparing focal loss on your data", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.startswith("python ")]


def test_the_section_lists_the_commands():
    commands = readme_commands()
    assert commands[0].split("#")[0].strip() == "python compare_focal.py" and len(commands) >= 8


@pytest.mark.skipif(os.environ.get("SMOKE") != "1", reason="CI smoke step (SMOKE=1): trains every README command")
@pytest.mark.parametrize("index", range(len(readme_commands())))
def test_readme_command_runs_at_tiny_settings(index, tmp_path):
    bccd = tmp_path / "bccd"
    bccd.mkdir()
    for name, split, count in (("train", "train", 4), ("val", "val", 2), ("test", "test", 2)):
        (bccd / f"2007_{name}.txt").write_text("\n".join(annotation_lines(ids(split, count))) + "\n")
    voc = write_shapes_voc(tmp_path / "own", images=12)
    command = readme_commands()[index].replace("path/to/VOCdevkit", str(voc)).replace(
        "model_data/my_classes.txt", str(tmp_path / "own" / "shapes_classes.txt")).replace(
        "model_data/my_anchors.txt", str(tmp_path / "anchors.txt"))
    argv = shlex.split(command, comments=True)[2:]
    if command.startswith("python kmeans_for_anchors.py"):
        kmeans_for_anchors.main([*argv, f"--annotation_path={bccd / '2007_train.txt'}"])
        assert (tmp_path / "anchors.txt").is_file()
        return
    data = tmp_path / "own_ann" if "--VOCdevkit_path" in command else bccd
    compare_focal.main([*argv, *TINY, f"--results_dir={tmp_path / 'out'}",
                        f"--train_annotation_path={data / '2007_train.txt'}",
                        f"--val_annotation_path={data / '2007_val.txt'}",
                        f"--test_annotation_path={data / '2007_test.txt'}"])
    written = "commands.txt" if "--print_commands=True" in command else "summary.md"
    assert (tmp_path / "out" / written).is_file()
