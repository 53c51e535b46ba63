"""Preprocessing (letterbox and plain resize, any image mode) and the letterbox's inverse mapping of boxes, against
hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from utils.infer.preprocess import LetterboxInfo, boxes_to_original, preprocess_image


def test_letterbox_geometry_and_pixels_hand_computed():
    # 200 x 100 (w x h) into 160 x 160: scale 0.8 -> 160 x 80, centred with dy = 40.
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    image_chw, info = preprocess_image(image, [160, 160], True)
    assert image_chw.shape == (3, 160, 160) and image_chw.dtype == np.float32
    assert info == LetterboxInfo(image_hw=(100, 200), input_hw=(160, 160), resized_hw=(80, 160), offset_xy=(0, 40))
    assert np.allclose(image_chw[:, :40], 128 / 255) and np.allclose(image_chw[:, 120:], 128 / 255)
    assert np.allclose(image_chw[0, 40:120], 1.0) and np.allclose(image_chw[1:, 40:120], 0.0)
    # 100 x 300 into 128 x 128: height-limited, new width int(100 * 128 / 300) = 42, dx = (128 - 42) // 2 = 43.
    _, tall = preprocess_image(Image.new("RGB", (100, 300)), [128, 128], True)
    assert tall.resized_hw == (128, 42) and tall.offset_xy == (43, 0)
    # Plain resize: no offset, the whole input.
    _, plain = preprocess_image(image, [96, 64], False)
    assert plain.resized_hw == (96, 64) and plain.offset_xy == (0, 0)


def test_pixels_scaled_exactly_channel_first():
    # A 2 x 4 (h x w) image into 4 x 4: scale 1, so no resampling; one gray row above and below (dy = 1). Every
    # value is the pixel as float32 times float32(1 / 255), bit for bit, in a C-contiguous (3, H, W) array.
    pixels = np.arange(24, dtype=np.uint8).reshape(2, 4, 3) * 10  # (h, w, rgb), 0..230
    image_chw, info = preprocess_image(Image.fromarray(pixels), [4, 4], True)
    assert info.offset_xy == (0, 1) and info.resized_hw == (2, 4)
    expected = np.full((3, 4, 4), np.float32(128) * np.float32(1 / 255), dtype=np.float32)
    for channel in range(3):
        for row in range(2):
            for col in range(4):
                expected[channel, row + 1, col] = np.float32(pixels[row, col, channel]) * np.float32(1 / 255)
    assert image_chw.dtype == np.float32 and image_chw.flags.c_contiguous
    assert np.array_equal(image_chw.view(np.uint32), expected.view(np.uint32))


def test_boxes_to_original_hand_computed_and_clipped():
    info = LetterboxInfo(image_hw=(100, 200), input_hw=(160, 160), resized_hw=(80, 160), offset_xy=(0, 40))
    pred_xyxy = np.array([[16.0, 48.0, 96.0, 88.0],  # -> (20, 10, 120, 60)
                          [-8.0, 20.0, 170.0, 130.0]], dtype=np.float32)  # reaches into the padding: clipped
    expected = np.array([[20.0, 10.0, 120.0, 60.0], [0.0, 0.0, 200.0, 100.0]])
    np.testing.assert_allclose(boxes_to_original(pred_xyxy, info), expected, atol=1e-5)
    np.testing.assert_allclose(boxes_to_original(torch.from_numpy(pred_xyxy), info).numpy(), expected, atol=1e-5)
    tall = LetterboxInfo(image_hw=(300, 100), input_hw=(128, 128), resized_hw=(128, 42), offset_xy=(43, 0))
    # x: (x - 43) * 100 / 42, y: y * 300 / 128.
    np.testing.assert_allclose(boxes_to_original(np.array([[64.0, 32.0, 85.0, 64.0]]), tall),
                               [[21 * 100 / 42, 75.0, 100.0, 150.0]], atol=1e-4)


def test_letterbox_round_trip():
    info = LetterboxInfo(image_hw=(375, 500), input_hw=(416, 416), resized_hw=(312, 416), offset_xy=(0, 52))
    orig_xyxy = np.array([[10.0, 20.0, 300.0, 370.0], [0.0, 0.0, 500.0, 375.0]])
    # Forward mapping written out by hand: x * 416 / 500, y * 312 / 375 + 52.
    input_xyxy = orig_xyxy * np.array([416 / 500, 312 / 375] * 2) + np.array([0, 52, 0, 52])
    np.testing.assert_allclose(boxes_to_original(input_xyxy, info), orig_xyxy, atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_any_image_mode_becomes_rgb(mode):
    base = Image.new("RGB", (64, 32), (10, 120, 240))
    image = base.convert(mode)
    image_chw, info = preprocess_image(image, [32, 64], False)  # same size: no resampling
    assert image_chw.shape == (3, 32, 64) and info.image_hw == (32, 64)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(image_chw, rgb, atol=1e-6)
