"""k-means anchors: planted clusters are recovered, boxes are letterboxed as the loader does (EXIF-rotated images
included), the script prints."""
import numpy as np
import pytest
from conftest import SHAPES_SIZES, write_shapes_voc
from PIL import Image

import kmeans_for_anchors
from utils.core.config import ConfigError, UserError
from utils.data.anchors import anchor_fit, auto_anchors, kmeans_anchors, letterboxed_box_sizes
from utils.data.dataloader import YoloDataset


def test_kmeans_recovers_planted_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[8.0, 10.0], [40.0, 20.0], [25.0, 60.0], [120.0, 110.0]])  # sorted by area
    wh = np.concatenate([c * rng.uniform(0.93, 1.07, (200, 2)) for c in centres])
    anchors = kmeans_anchors(wh, k=4, seed=3)
    assert np.allclose(anchors, centres, rtol=0.04)
    assert np.array_equal(anchors, kmeans_anchors(wh, k=4, seed=3))  # seeded: reproducible
    fit = anchor_fit(wh, anchors, threshold=0.213)
    assert fit["mean_best_iou"] > 0.85 and fit["share_above"] == 1.0 and fit["boxes"] == 800


def test_boxes_are_letterboxed_and_the_script_reports(tmp_path, capsys):
    import voc_annotation

    write_shapes_voc(tmp_path, images=10)
    voc_annotation.main([f"--VOCdevkit_path={tmp_path / 'VOCdevkit'}", f"--out_dir={tmp_path}",
                         f"--classes_path={tmp_path / 'shapes_classes.txt'}"])
    lines = (tmp_path / "2007_train.txt").read_text().splitlines()
    wh = letterboxed_box_sizes(annotation_lines=lines, input_shape=(48, 128))  # 128x96 images -> scale 0.5
    assert wh.min() >= (min(min(s) for s in SHAPES_SIZES.values()) - 2) / 2 - 1e-6
    assert wh.max() <= (max(max(s) for s in SHAPES_SIZES.values()) + 2) / 2 + 1e-6
    result = kmeans_for_anchors.main([f"--annotation_path={tmp_path / '2007_train.txt'}", "--input_shape=[96,128]",
                                      "--model=yolov4-tiny", "--num_anchors=2", f"--out_path={tmp_path / 'a.txt'}"])
    out = capsys.readouterr().out
    assert "anchors (w,h, sorted by area)" in out and "boxes with an anchor above 0.213" in out
    planted = np.array(sorted(SHAPES_SIZES.values(), key=np.prod), dtype=float)
    assert np.allclose(result["anchors"], planted, atol=2.5)
    assert (tmp_path / "a.txt").read_text().count(",") == 3


def test_recipe_file_values_are_used_unless_given(tmp_path):
    (tmp_path / "r.toml").write_text('model = "yolov4-tiny"\ninput_shape = [64, 64]\n'
                                     f'train_annotation_path = "{tmp_path / "missing.txt"}"\n')
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        kmeans_for_anchors.main([f"--config={tmp_path / 'r.toml'}"])


def test_too_few_boxes_and_bad_settings_name_the_file_or_setting(tmp_path):
    image = tmp_path / "a.jpg"
    Image.new("RGB", (64, 48)).save(image)
    (tmp_path / "no_boxes.txt").write_text(f"{image}\n{image}\n")  # background images only
    (tmp_path / "one_box.txt").write_text(f"{image} 4,4,20,30,0\n")
    with pytest.raises(UserError, match=r"annotation file .*no_boxes.txt: holds no boxes, so k-means has nothing"):
        kmeans_for_anchors.main([f"--annotation_path={tmp_path / 'no_boxes.txt'}"])
    with pytest.raises(UserError, match=r"one_box.txt: 1 boxes cannot make 6 anchors; lower --num_anchors \(now 6\)"):
        kmeans_for_anchors.main([f"--annotation_path={tmp_path / 'one_box.txt'}", "--model=yolov4-tiny"])
    with pytest.raises(UserError, match=r"one_box.txt: 1 boxes cannot make 9 anchors; give an anchors file with "
                                        r"--anchors_path"):
        auto_anchors(annotation_path=str(tmp_path / "one_box.txt"), input_shape=(64, 64), k=9)
    for bad, message in (("--num_anchors=0", r"num_anchors=0: needs at least 1"),
                         ("--restarts=0", r"restarts=0: needs at least 1"),
                         ("--input_shape=[64]", r"input_shape=\[64\]: needs \[h, w\]"),
                         (f"--out_path={tmp_path}", r"out_path=.*: is a folder; give a file name")):
        with pytest.raises(ConfigError, match=message):
            kmeans_for_anchors.main([f"--annotation_path={tmp_path / 'one_box.txt'}", "--num_anchors=1", bad])
    result = kmeans_for_anchors.main([f"--annotation_path={tmp_path / 'one_box.txt'}", "--num_anchors=1",
                                      "--input_shape=[64,64]"])
    np.testing.assert_allclose(result["anchors"], [[16.0, 26.0]])  # 16 x 26 px, scale 1 into 64 x 64


def test_exif_rotated_image_is_letterboxed_upright(tmp_path):
    # Stored 200 wide x 100 high with EXIF orientation 6: every tool shows it turned, 100 wide x 200 high, and the
    # annotation box (10, 20, 50, 120) is drawn on that upright image: 40 x 100.
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (200, 100), (90, 120, 30)).save(path, exif=exif)
    line = f"{path} 10,20,50,120,0"
    # Into a (h, w) = (100, 200) input the upright 100 x 200 image is height-limited: scale 100 / 200 = 0.5, so the
    # box becomes 20 x 50. The stored 200 x 100 size would give scale 1 and 40 x 100.
    wh = letterboxed_box_sizes(annotation_lines=[line], input_shape=(100, 200))
    np.testing.assert_allclose(wh, [[20.0, 50.0]])
    # The loader places the same box: the 50-wide image is centred at x offset (200 - 50) // 2 = 75.
    _, boxes = YoloDataset(annotation_lines=[line], input_shape=(100, 200), train=False)[0]
    np.testing.assert_allclose(boxes, [[80.0, 10.0, 100.0, 60.0, 0.0]])


def test_boxes_training_drops_are_left_out_of_k_means_and_said(tmp_path, capsys):
    image = tmp_path / "a.jpg"
    Image.new("RGB", (100, 50), (9, 9, 9)).save(image)  # letterboxed into 100 x 100: scale 1
    lines = [f"{image} 10,10,30,20,0 30,20,10,10,0 5,5,5,9,0 120,10,130,20,0 -10,40,10,60,0"]
    # kept: 20 x 10 and the corner box clipped to x 0-10, y 40-50 (10 x 10); inverted, zero-area and outside left out
    wh = letterboxed_box_sizes(annotation_lines=lines, input_shape=(100, 100))
    assert wh.tolist() == [[20.0, 10.0], [10.0, 10.0]]
    (tmp_path / "ann.txt").write_text("\n".join(lines) + "\n")
    kmeans_for_anchors.main([f"--annotation_path={tmp_path / 'ann.txt'}", "--input_shape=[100,100]",
                             "--num_anchors=1"])
    assert (f"note: {tmp_path / 'ann.txt'}: 3 boxes left out: 1 inverted (x2 < x1 or y2 < y1), 1 zero width or "
            f"height, 1 entirely outside the image; e.g. line 1: 30,20,10,10,0 (inverted)") in capsys.readouterr().out
    (tmp_path / "flipped.txt").write_text(f"{image} 30,20,10,10,0 90,40,60,5,0\n")
    with pytest.raises(UserError, match=r"flipped.txt: holds no boxes k-means can use \(2 boxes left out: 2 "
                                        r"inverted \(x2 < x1 or y2 < y1\); e.g. line 1: 30,20,10,10,0 \(inverted\)"):
        auto_anchors(annotation_path=str(tmp_path / "flipped.txt"), input_shape=(100, 100), k=1)
