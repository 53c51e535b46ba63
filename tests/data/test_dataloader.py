"""YoloDataset: image reading, letterbox, boxes following pixels through augmentation, randomness, collate."""
import random

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from conftest import write_truncated_jpeg

from utils.data import augment
from utils.data.dataloader import YoloDataset, yolo_collate
from utils.data.voc import parse_annotation_line

BACKGROUND = (40, 40, 40)
# 12 colours around the hue wheel at full saturation: any two differ by >= 127 in some channel.
PALETTE = np.array([(255, 0, 0), (255, 128, 0), (255, 255, 0), (128, 255, 0), (0, 255, 0), (0, 255, 128),
                    (0, 255, 255), (0, 128, 255), (0, 0, 255), (128, 0, 255), (255, 0, 255), (255, 0, 128)])
# Per image: (width, height) and boxes (x1, y1, x2, y2); colour k of the palette fills box k (class id k).
LAYOUTS = [((200, 150), [(10, 10, 70, 60), (100, 20, 190, 80), (30, 90, 120, 140)]),
           ((150, 200), [(5, 5, 60, 90), (80, 30, 140, 100), (20, 120, 130, 190)]),
           ((240, 120), [(10, 10, 80, 110), (100, 10, 160, 60), (170, 40, 230, 100)]),
           ((160, 160), [(0, 0, 50, 50), (60, 60, 150, 110), (20, 120, 100, 160)])]


def _paint_dataset(tmp_path, *, palette=PALETTE, layouts=LAYOUTS):
    """Write PNGs (lossless) with solid coloured boxes; return annotation lines whose class id = palette index."""
    lines, colour_idx = [], 0
    for image_idx, ((width, height), boxes) in enumerate(layouts):
        pixels = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
        tokens = []
        for x1, y1, x2, y2 in boxes:
            pixels[y1:y2, x1:x2] = palette[colour_idx % len(palette)]
            tokens.append(f"{x1},{y1},{x2},{y2},{colour_idx % len(palette)}")
            colour_idx += 1
        path = tmp_path / f"img {image_idx} #.png"
        Image.fromarray(pixels).save(path)
        lines.append(" ".join([str(path)] + tokens))
    return lines


def _rgb255(image_chw):
    return image_chw.transpose(1, 2, 0).astype(np.float64) * 255  # (H, W, 3)


def _label_by_palette(image_chw):
    """Palette index of each pixel, -1 where no palette colour is within 30 (edges, background, canvas)."""
    dist = np.linalg.norm(_rgb255(image_chw)[:, :, None, :] - PALETTE[None, None], axis=-1)  # (H, W, K)
    labels = dist.argmin(-1)
    labels[dist.min(-1) > 30] = -1
    return labels


def _label_by_hue(image_chw, hues):
    """Index of the nominal hue (OpenCV units, 0..180) within 14 of each saturated, bright pixel; -1 elsewhere."""
    hsv = cv2.cvtColor(np.round(_rgb255(image_chw)).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.int64)
    diff = np.abs(hsv[:, :, 0:1] - np.asarray(hues)[None, None])  # (H, W, K)
    diff = np.minimum(diff, 180 - diff)
    labels = diff.argmin(-1)
    labels[(diff.min(-1) > 14) | (hsv[:, :, 1] < 50) | (hsv[:, :, 2] < 100)] = -1
    return labels


def _interior(box):
    """Pixel slice of the pixels lying fully inside the box shrunk by one pixel (resize blurs edges)."""
    x1, y1, x2, y2 = box[:4]
    xs = slice(int(np.ceil(x1 + 1)), int(np.floor(x2 - 1)))
    ys = slice(int(np.ceil(y1 + 1)), int(np.floor(y2 - 1)))
    return ys, xs


def _check_boxes_cover_labels(labels, boxes, *, min_fraction=0.9):
    """Each box is mostly its colour; no colour blob wider than 2 px lies outside its class's boxes. Returns
    the number of boxes whose interior was checked."""
    checked = 0
    height, width = labels.shape
    for box in boxes:
        ys, xs = _interior(box)
        inside = labels[ys, xs]
        if inside.size >= 4:
            assert (inside == int(box[4])).mean() >= min_fraction, f"box {box} does not cover its colour"
            checked += 1
    for class_id in np.unique(labels[labels >= 0]):
        covered = np.zeros_like(labels, dtype=bool)
        for x1, y1, x2, y2, _ in boxes[boxes[:, 4] == class_id]:
            covered[max(int(y1) - 2, 0):int(np.ceil(y2)) + 2, max(int(x1) - 2, 0):int(np.ceil(x2)) + 2] = True
        stray = ((labels == class_id) & ~covered).astype(np.uint8)
        assert cv2.erode(stray, np.ones((3, 3), np.uint8)).sum() == 0, f"colour {class_id} found outside its boxes"
    assert np.all(boxes[:, [0, 1]] >= 0) and np.all(boxes[:, 2] <= width) and np.all(boxes[:, 3] <= height)
    assert np.all(boxes[:, 2] - boxes[:, 0] >= 1) and np.all(boxes[:, 3] - boxes[:, 1] >= 1)
    return checked


@pytest.mark.parametrize("mosaic_prob", [0.0, 1.0])
def test_boxes_follow_pixels_without_hsv(tmp_path, mosaic_prob):
    lines = _paint_dataset(tmp_path)
    dataset = YoloDataset(annotation_lines=lines, input_shape=(128, 160), train=True, mosaic_prob=mosaic_prob,
                          mixup=False, hsv_gains=(0, 0, 0), seed=7)
    checked = 0
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            image_chw, boxes = dataset[index]
            assert image_chw.shape == (3, 128, 160) and image_chw.dtype == np.float32 and boxes.dtype == np.float32
            checked += _check_boxes_cover_labels(_label_by_palette(image_chw), boxes)
    assert checked >= 25


def test_boxes_follow_pixels_with_hsv_jitter(tmp_path):
    hues = [0, 40, 80, 120]  # OpenCV hue units; x0.9..1.1 hue jitter keeps each within 14 of its own
    palette = np.array([cv2.cvtColor(np.uint8([[[h, 255, 255]]]), cv2.COLOR_HSV2RGB)[0, 0] for h in hues])
    layouts = [((200, 150), [(10, 10, 70, 60), (100, 20, 190, 80), (30, 90, 120, 140), (130, 95, 195, 145)]),
               ((150, 200), [(5, 5, 60, 90), (80, 30, 140, 100), (20, 120, 130, 190), (135, 110, 148, 190)])]
    lines = _paint_dataset(tmp_path, palette=palette, layouts=layouts)
    dataset = YoloDataset(annotation_lines=lines, input_shape=(128, 128), train=True, mosaic_prob=0.5, mixup=False)
    checked = 0
    for epoch in range(6):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            image_chw, boxes = dataset[index]
            checked += _check_boxes_cover_labels(_label_by_hue(image_chw, hues), boxes, min_fraction=0.85)
    assert checked >= 20


def test_mixup_keeps_boxes_of_both_images(tmp_path, monkeypatch):
    calls = []
    real_mixup = augment.mixup
    monkeypatch.setattr(augment, "mixup", lambda *args: calls.append(1) or real_mixup(*args))
    lines = _paint_dataset(tmp_path)
    dataset = YoloDataset(annotation_lines=lines, input_shape=(128, 128), train=True, mosaic_prob=1.0,
                          mixup_prob=1.0, hsv_gains=(0, 0, 0))
    checked = 0
    for index in range(len(dataset)):
        image_chw, boxes = dataset[index]
        image_rgb = _rgb255(image_chw)
        for box in boxes:
            # A 50/50 blend of colour c with anything in [0, 255] lies in [c/2, c/2 + 127.5] per channel.
            ys, xs = _interior(box)
            inside = image_rgb[ys, xs]
            if inside.shape[0] * inside.shape[1] >= 4:
                low = PALETTE[int(box[4])] / 2 - 2
                ok = np.all((inside >= low) & (inside <= low + 131.5), axis=-1)
                assert ok.mean() >= 0.9, f"box {box} is not blended from its colour"
                checked += 1
    assert len(calls) == len(dataset) and checked >= 10


def test_mosaic_puts_one_image_per_quadrant_around_the_cut():
    colours = PALETTE[[0, 4, 8, 10]]
    images = [np.full((60 + 10 * k, 80, 3), colour, dtype=np.uint8) for k, colour in enumerate(colours)]
    boxes_list = [np.array([[0, 0, 80, 60 + 10 * k, k]], np.float32) for k in range(4)]
    canvas, boxes = augment.mosaic(images, boxes_list, input_shape=(96, 128), rng=np.random.default_rng(3),
                                   hsv_gains=(0, 0, 0))
    assert sorted(boxes[:, 4]) == [0, 1, 2, 3]
    by_image = {int(b[4]): b for b in boxes}
    cut_x, cut_y = by_image[0][2], by_image[0][3]  # image 0 ends at the cut point (top-left quadrant)
    assert 0.3 * 128 - 1 <= cut_x <= 0.7 * 128 and 0.3 * 96 - 1 <= cut_y <= 0.7 * 96
    assert by_image[1][2] == cut_x and by_image[1][1] == cut_y  # bottom-left
    assert by_image[2][0] == cut_x and by_image[2][1] == cut_y  # bottom-right
    assert by_image[3][0] == cut_x and by_image[3][3] == cut_y  # top-right
    for k, box in by_image.items():
        x1, y1, x2, y2 = box[:4].astype(int)
        assert np.all(canvas[y1:y2, x1:x2] == colours[k])


def test_special_aug_stops_after_ratio(tmp_path, monkeypatch):
    calls = {"mosaic": 0, "mixup": 0}
    for name in calls:
        real = getattr(augment, name)
        monkeypatch.setattr(augment, name, lambda *a, _real=real, _name=name, **k: calls.__setitem__(
            _name, calls[_name] + 1) or _real(*a, **k))
    dataset = YoloDataset(annotation_lines=_paint_dataset(tmp_path), input_shape=(64, 64), train=True,
                          mosaic_prob=1.0, mixup_prob=1.0, total_epochs=10, special_aug_ratio=0.7)
    dataset.set_epoch(6)
    [dataset[i] for i in range(len(dataset))]
    assert calls == {"mosaic": 4, "mixup": 4}
    dataset.set_epoch(7)
    [dataset[i] for i in range(len(dataset))]
    assert calls == {"mosaic": 4, "mixup": 4}


def test_letterbox_exact_mapping(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (640, 480), (200, 10, 10)).save(path)
    dataset = YoloDataset(annotation_lines=[f"{path} 100,50,300,200,2 0,0,640,480,1"], input_shape=(416, 416),
                          train=False)
    image_chw, boxes = dataset[0]
    # scale 416/640 = 0.65 -> 416 x 312, offset (0, 52)
    np.testing.assert_allclose(boxes, [[65, 84.5, 195, 182, 2], [0, 52, 416, 364, 1]], atol=1e-4)
    rgb = np.round(_rgb255(image_chw))
    assert np.all(rgb[:52] == 128) and np.all(rgb[364:] == 128)
    assert np.all(rgb[52:364] == (200, 10, 10))

    path_tall = tmp_path / "tall.png"
    Image.new("RGB", (100, 300), (0, 0, 0)).save(path_tall)
    dataset = YoloDataset(annotation_lines=[f"{path_tall} 10,30,90,270,0"], input_shape=(160, 224), train=False)
    image_chw, boxes = dataset[0]
    # height-limited: 160 / 300 -> width int(100 * 160 / 300) = 53, offset ((224 - 53) // 2, 0) = (85, 0)
    np.testing.assert_allclose(boxes, [[10 * 0.53 + 85, 16, 90 * 0.53 + 85, 144, 0]], atol=1e-4)
    assert np.all(image_chw[:, :, :85] == 128 / 255) and np.all(image_chw[:, :, 85:138] == 0)
    assert np.all(image_chw[:, :, 138:] == 128 / 255)


def _noise_lines(tmp_path, count):
    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return [f"{path} 5,5,40,30,0 20,10,60,45,1"] * count


def _epoch_batches(loader, epoch):
    loader.dataset.set_epoch(epoch)
    return [batch for batch in loader]


def _same(batches_a, batches_b):
    return all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches_a, batches_b))


def test_randomness_per_sample_epoch_and_worker(tmp_path):
    dataset = YoloDataset(annotation_lines=_noise_lines(tmp_path, 8), input_shape=(64, 64), train=True, seed=5)
    loader_kwargs = dict(batch_size=2, shuffle=False, collate_fn=yolo_collate)
    serial = DataLoader(dataset, num_workers=0, **loader_kwargs)
    parallel = DataLoader(dataset, num_workers=2, **loader_kwargs)
    persistent = DataLoader(dataset, num_workers=2, persistent_workers=True, **loader_kwargs)

    epoch0 = _epoch_batches(serial, 0)
    assert _same(epoch0, _epoch_batches(parallel, 0))
    assert _same(epoch0, _epoch_batches(persistent, 0))
    images = torch.cat([batch[0] for batch in epoch0])  # one image file: differences come from augmentation only
    assert all(not torch.equal(images[i], images[j]) for i in range(8) for j in range(i))
    assert not torch.equal(epoch0[0][0], epoch0[1][0])  # batches 0 and 1 come from workers 0 and 1

    epoch1 = _epoch_batches(parallel, 1)
    assert _same(epoch1, _epoch_batches(serial, 1))
    assert _same(epoch1, _epoch_batches(persistent, 1))  # set_epoch reaches persistent workers
    assert all(not torch.equal(a[0], b[0]) for a, b in zip(epoch0, epoch1))

    state_np, state_py = np.random.get_state(), random.getstate()
    np.random.seed(123)
    random.seed(456)
    same_seed = YoloDataset(annotation_lines=_noise_lines(tmp_path, 8), input_shape=(64, 64), train=True, seed=5)
    same_seed.set_epoch(1)
    assert all(np.array_equal(same_seed[i][0], dataset[i][0]) for i in range(8))
    np.random.set_state(state_np)
    random.setstate(state_py)
    before = np.random.get_state()[1].copy()
    other_seed = YoloDataset(annotation_lines=_noise_lines(tmp_path, 8), input_shape=(64, 64), train=True, seed=6)
    other_seed.set_epoch(1)
    assert not np.array_equal(other_seed[0][0], dataset[0][0])
    before_py = random.getstate()
    other_seed[1]
    assert np.array_equal(np.random.get_state()[1], before)  # global RNGs untouched
    assert random.getstate() == before_py


def test_collate_hand_checked():
    images = [np.full((3, 4, 5), value, dtype=np.float32) for value in (0.1, 0.2, 0.3)]
    boxes = [np.array([[1, 2, 3, 4, 0], [5, 6, 7, 8, 2]], np.float32), np.zeros((0, 5), np.float32),
             np.array([[9, 10, 11, 12, 1]], np.float32)]
    batch_images, targets = yolo_collate(list(zip(images, boxes)))
    assert batch_images.shape == (3, 3, 4, 5) and batch_images.dtype == torch.float32
    assert torch.allclose(batch_images[:, 0, 0, 0], torch.tensor([0.1, 0.2, 0.3]))
    assert targets.dtype == torch.float32
    assert torch.equal(targets, torch.tensor([[0, 0, 1, 2, 3, 4], [0, 2, 5, 6, 7, 8], [2, 1, 9, 10, 11, 12]],
                                             dtype=torch.float32))
    _, empty_targets = yolo_collate([(images[0], boxes[1])])
    assert empty_targets.shape == (0, 6)


def test_parse_annotation_line_paths_with_spaces():
    path, boxes = parse_annotation_line("/data/my  imgs/#3 a.jpg 1,2,3,4,0 5.5,6,7,8.25,2\n")
    assert path == "/data/my  imgs/#3 a.jpg"
    np.testing.assert_array_equal(boxes, np.array([[1, 2, 3, 4, 0], [5.5, 6, 7, 8.25, 2]], np.float32))
    path, boxes = parse_annotation_line("C:\\imgs\\bg 1.jpg  \r\n")
    assert path == "C:\\imgs\\bg 1.jpg" and boxes.shape == (0, 5) and boxes.dtype == np.float32
    path, boxes = parse_annotation_line("/x/1,2,3,4.jpg 1,2,3,4,0")
    assert path == "/x/1,2,3,4.jpg" and boxes.shape == (1, 5)
    with pytest.raises(ValueError):
        parse_annotation_line("   \n")


def test_corrupt_and_missing_images(tmp_path):
    broken = write_truncated_jpeg(tmp_path / "broken #1.jpg")
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (0, 200, 0)).save(good)
    lines = [f"{broken} 1,1,20,20,0", f"{good} 4,4,12,12,1"]

    strict = YoloDataset(annotation_lines=lines, input_shape=(32, 32), train=False)
    with pytest.raises(ValueError, match="broken #1.jpg"):
        strict[0]
    lenient = YoloDataset(annotation_lines=lines, input_shape=(32, 32), train=False, on_corrupt="skip")
    with pytest.warns(UserWarning, match="broken #1.jpg"):
        image_chw, boxes = lenient[0]
    assert np.array_equal(image_chw, strict[1][0]) and np.array_equal(boxes, [[4, 4, 12, 12, 1]])
    with pytest.warns(UserWarning, match="broken #1.jpg"):  # train mode draws it too and still returns a sample
        assert YoloDataset(annotation_lines=lines * 2, input_shape=(32, 32), train=True, mosaic_prob=1.0,
                           on_corrupt="skip")[0][0].shape == (3, 32, 32)

    missing = YoloDataset(annotation_lines=[f"{tmp_path / 'gone.jpg'}"], input_shape=(32, 32), train=False)
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        missing[0]
