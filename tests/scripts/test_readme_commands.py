"""Every command of the README's comparison section, at tiny settings (a CI smoke step: SMOKE=1, minutes)."""
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import REPO, VOC, annotation_lines, ids, write_shapes_voc

import compare_focal
import convert_dataset
import kmeans_for_anchors

README = REPO / "README.md"
DATASET_HEADING = "### The comparison on a YOLO-txt or COCO-json dataset"
TINY = ["--unfreeze_epoch=1", "--input_shape=[64,64]", "--num_workers=0", "--eval_flag=False", "--fp16=False",
        "--freeze_train=False", "--unfreeze_batch_size=2", "--mosaic=False", "--mixup=False", "--bootstrap=100"]


def readme_commands() -> list[str]:
    """The commands of the section's first block, then those of its block on YOLO-txt and COCO-json datasets."""
    section = README.read_text(encoding="utf-8").split("## Comparing focal loss on your data", 1)[1]
    blocks = [re.search(r"```bash\n(.*?)```", text, re.S).group(1)
              for text in (section, section.split(DATASET_HEADING, 1)[1])]
    return [line for block in blocks for line in block.splitlines() if line.startswith("python ")]


def test_the_section_lists_the_commands():
    commands = readme_commands()
    assert commands[0].split("#")[0].strip() == "python compare_focal.py" and len(commands) >= 8
    converted = [c for c in commands if c.startswith("python convert_dataset.py")]
    assert {"--to=yolo", "--to=coco"} <= {word for c in converted for word in c.split()}
    compared = {word for c in commands if c.startswith("python compare_focal.py") for word in c.split()}
    assert {c.split("--out=")[1].split()[0] for c in converted} <= {w[len("--dataset="):] for w in compared
                                                                  if w.startswith("--dataset=")}


def small_bccd_devkit(root: Path) -> Path:
    """12 BCCD images with their XMLs and train / val / test lists (6 / 3 / 3): the bundled VOCdevkit in small."""
    year = root / "VOC2007"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / folder).mkdir(parents=True)
    for split, count in (("train", 6), ("val", 3), ("test", 3)):
        split_ids = ids(split, count)
        (year / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_ids))
        for image_id in split_ids:
            shutil.copy(VOC / "JPEGImages" / f"{image_id}.jpg", year / "JPEGImages")
            shutil.copy(VOC / "Annotations" / f"{image_id}.xml", year / "Annotations")
    return root


def dataset_for(path: Path, *, tmp_path: Path, commands: list[str]) -> None:
    """Makes the dataset a README command compares on: by the README's convert command writing it, else (the
    user's own dataset) the shapes dataset as YOLO txt."""
    writers = [c for c in commands if c.startswith("python convert_dataset.py") and f"--out={path}" in c]
    if writers:
        convert_dataset.main(shlex.split(writers[0], comments=True)[2:])
        return
    devkit = write_shapes_voc(tmp_path / "own_for_yolo", images=12)
    (devkit / "VOC2007" / "ImageSets" / "Main").mkdir(parents=True)
    for split, indices in (("train", range(0, 8)), ("val", range(8, 10)), ("test", range(10, 12))):
        (devkit / "VOC2007" / "ImageSets" / "Main" / f"{split}.txt").write_text(
            "".join(f"shape_{i:03d}\n" for i in indices))
    convert_dataset.main([f"--dataset={devkit}", "--to=yolo", f"--out={path}"])


@pytest.mark.skipif(os.environ.get("SMOKE") != "1", reason="CI smoke step (SMOKE=1): trains every README command")
@pytest.mark.parametrize("index", range(len(readme_commands())))
def test_readme_command_runs_at_tiny_settings(index, tmp_path):
    bccd = tmp_path / "bccd"
    bccd.mkdir()
    for name, split, count in (("train", "train", 4), ("val", "val", 2), ("test", "test", 2)):
        (bccd / f"2007_{name}.txt").write_text("\n".join(annotation_lines(ids(split, count))) + "\n")
    voc = write_shapes_voc(tmp_path / "own", images=12)
    bccd_devkit = small_bccd_devkit(tmp_path / "bccd_voc")

    def tiny(command: str) -> str:
        return command.replace("path/to/VOCdevkit", str(voc)).replace(
            "model_data/my_classes.txt", str(tmp_path / "own" / "shapes_classes.txt")).replace(
            "model_data/my_anchors.txt", str(tmp_path / "anchors.txt")).replace(
            "--dataset=VOCdevkit", f"--dataset={bccd_devkit}").replace("datasets/", f"{tmp_path / 'datasets'}/")

    command = tiny(readme_commands()[index])
    argv = shlex.split(command, comments=True)[2:]
    if command.startswith("python convert_dataset.py"):
        convert_dataset.main(argv)
        assert any(Path(next(a for a in argv if a.startswith("--out=")).split("=", 1)[1]).iterdir())
        return
    dataset = next((Path(a.split("=", 1)[1]) for a in argv if a.startswith("--dataset=")), None)
    if dataset is not None:
        dataset_for(dataset, tmp_path=tmp_path, commands=[tiny(c) for c in readme_commands()
                                                          if c.startswith("python convert_dataset.py")])
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
