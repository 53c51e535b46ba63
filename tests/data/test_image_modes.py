"""Every pixel format a user's dataset may hold reads as the RGB a viewer shows: each mode against a reference
computed here from the values written (PNG and PGM files are written byte by byte, without PIL), or, for the lossy
CMYK JPEG, from the decoded CMYK values by the textbook formula and against OpenCV's own decoder."""
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from utils.core.config import UserError
from utils.data.dataloader import YoloDataset
from utils.data.images import image_info, read_image_rgb

GRAY = 128  # the letterbox gray transparent pixels are composited onto
RNG = np.random.default_rng(7)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(path, pixels: np.ndarray, *, bit_depth: int, color_type: int, palette=None, trns: bytes | None = None):
    """A PNG by the specification: filter 0 on every row, no interlace. pixels: (h, w) or (h, w, channels)."""
    height, width = pixels.shape[:2]
    if bit_depth == 16:
        rows = [pixels[y].astype(">u2").tobytes() for y in range(height)]
    elif bit_depth == 8:
        rows = [pixels[y].astype(np.uint8).tobytes() for y in range(height)]
    else:  # 1-bit gray: eight pixels a byte, most significant bit first
        rows = [np.packbits(pixels[y].astype(np.uint8)).tobytes() for y in range(height)]
    chunks = [_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))]
    if palette is not None:
        chunks.append(_chunk(b"PLTE", np.asarray(palette, dtype=np.uint8).tobytes()))
    if trns is not None:
        chunks.append(_chunk(b"tRNS", trns))
    chunks.append(_chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + row for row in rows))))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(chunks) + _chunk(b"IEND", b""))
    return path


def composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Colour over the gray background, rounded to the nearest level (float arithmetic, independent of the
    reader's integer formula)."""
    a = alpha[..., None].astype(np.float64) / 255
    return np.round(rgb.astype(np.float64) * a + GRAY * (1 - a)).astype(np.uint8)


def gray3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def sixteen(shape) -> np.ndarray:
    """16-bit samples covering the edges of every 8-bit step: 0, 255, 256, 257, 65279, 65280, 65535 and noise."""
    values = RNG.integers(0, 65536, size=shape, dtype=np.uint16)
    edges = np.array([0, 255, 256, 257, 511, 32767, 32768, 65279, 65280, 65535], dtype=np.uint16)
    values.reshape(-1)[:edges.size] = edges
    return values


def test_16_bit_grayscale_png_scales_by_its_high_byte(tmp_path):
    raw = sixteen((9, 11))
    path = write_png(tmp_path / "g16.png", raw, bit_depth=16, color_type=0)
    rgb = read_image_rgb(path)
    assert rgb.dtype == np.uint8 and np.array_equal(rgb, gray3((raw >> 8).astype(np.uint8)))
    assert rgb.max() == 255 and rgb.min() == 0 and len(np.unique(rgb)) > 5  # not the all-white image of before
    assert image_info(path, decode=True).upright_size == (11, 9)


def test_16_bit_pgm_read_as_mode_i_scales_the_same(tmp_path):
    raw = sixteen((6, 5))
    path = tmp_path / "g16.pgm"
    path.write_bytes(b"P5\n5 6\n65535\n" + raw.astype(">u2").tobytes())
    assert np.array_equal(read_image_rgb(path), gray3((raw >> 8).astype(np.uint8)))


def test_16_bit_rgb_png(tmp_path):
    raw = sixteen((7, 8, 3))
    path = write_png(tmp_path / "rgb16.png", raw, bit_depth=16, color_type=2)
    assert np.array_equal(read_image_rgb(path), (raw >> 8).astype(np.uint8))


def test_16_bit_rgba_png_is_composited_on_gray(tmp_path):
    raw = sixteen((7, 8, 4))
    path = write_png(tmp_path / "rgba16.png", raw, bit_depth=16, color_type=6)
    eight = (raw >> 8).astype(np.uint8)
    assert np.array_equal(read_image_rgb(path), composite(eight[..., :3], eight[..., 3]))


def test_palette_png_without_and_with_transparency(tmp_path):
    palette = RNG.integers(0, 256, size=(6, 3))
    index = RNG.integers(0, 6, size=(10, 12))
    plain = write_png(tmp_path / "p.png", index, bit_depth=8, color_type=3, palette=palette)
    assert np.array_equal(read_image_rgb(plain), palette[index].astype(np.uint8))

    alpha_per_entry = np.array([255, 0, 128, 1, 254, 77], dtype=np.uint8)
    clear = write_png(tmp_path / "p_trns.png", index, bit_depth=8, color_type=3, palette=palette,
                      trns=alpha_per_entry.tobytes())
    expected = composite(palette[index], alpha_per_entry[index])
    assert np.array_equal(read_image_rgb(clear), expected)
    assert (expected[index == 1] == GRAY).all()  # fully transparent entries show the letterbox gray


def test_grayscale_and_1_bit(tmp_path):
    gray = RNG.integers(0, 256, size=(5, 9))
    assert np.array_equal(read_image_rgb(write_png(tmp_path / "l.png", gray, bit_depth=8, color_type=0)),
                          gray3(gray.astype(np.uint8)))
    bits = RNG.integers(0, 2, size=(4, 13))
    assert np.array_equal(read_image_rgb(write_png(tmp_path / "b.png", bits, bit_depth=1, color_type=0)),
                          gray3((bits * 255).astype(np.uint8)))


def test_la_and_rgba_are_composited_and_an_unused_alpha_is_ignored(tmp_path):
    la = RNG.integers(0, 256, size=(6, 7, 2))
    la.reshape(-1, 2)[:3, 1] = (0, 255, 128)
    assert np.array_equal(read_image_rgb(write_png(tmp_path / "la.png", la, bit_depth=8, color_type=4)),
                          composite(gray3(la[..., 0]), la[..., 1]))
    rgba = RNG.integers(0, 256, size=(6, 7, 4))
    assert np.array_equal(read_image_rgb(write_png(tmp_path / "rgba.png", rgba, bit_depth=8, color_type=6)),
                          composite(rgba[..., :3], rgba[..., 3]))
    rgba[..., 3] = 0  # alpha 0 everywhere: an unused channel, the colours are the picture
    assert np.array_equal(read_image_rgb(write_png(tmp_path / "unused.png", rgba, bit_depth=8, color_type=6)),
                          rgba[..., :3].astype(np.uint8))


def test_rgb_colour_key_transparency(tmp_path):
    rgb = RNG.integers(0, 256, size=(5, 6, 3))
    rgb[1, 2] = rgb[3, 4] = (10, 20, 30)
    path = write_png(tmp_path / "key.png", rgb, bit_depth=8, color_type=2, trns=struct.pack(">HHH", 10, 20, 30))
    expected = rgb.astype(np.uint8)
    expected[(rgb == (10, 20, 30)).all(axis=2)] = GRAY
    assert np.array_equal(read_image_rgb(path), expected)


def test_cmyk_jpeg(tmp_path):
    cmyk = RNG.integers(0, 256, size=(16, 16, 4), dtype=np.uint8)
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(cmyk, mode="CMYK").save(path, quality=100)
    with Image.open(path) as stored:
        assert stored.mode == "CMYK"
        decoded = np.asarray(stored).astype(np.float64)  # the JPEG's own CMYK values, before any conversion
    expected = np.round((255 - decoded[..., :3]) * (255 - decoded[..., 3:]) / 255).astype(np.uint8)
    rgb = read_image_rgb(path)
    assert np.array_equal(rgb, expected)
    opencv_rgb = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]  # libjpeg's CMYK and OpenCV's conversion
    assert np.abs(rgb.astype(int) - opencv_rgb).max() <= 2  # OpenCV divides by 256, not 255


@pytest.mark.parametrize("dtype, words", [(np.float32, "floating-point"), (np.int32, "32-bit integer")])
def test_pixels_without_a_standard_range_are_refused(tmp_path, dtype, words):
    path = tmp_path / "deep #1.tif"
    Image.fromarray(np.arange(12, dtype=dtype).reshape(3, 4) * 1000).save(path)
    with pytest.raises(UserError, match=rf"cannot decode image .*deep #1.tif: {words} pixels .*8 or 16 bits"):
        read_image_rgb(path)
    with pytest.raises(UserError, match=rf"image .*deep #1.tif: cannot be decoded \({words}"):
        image_info(path, decode=True)


def test_the_loader_sees_the_16_bit_image(tmp_path):
    raw = sixteen((32, 32))
    path = write_png(tmp_path / "g16.png", raw, bit_depth=16, color_type=0)
    dataset = YoloDataset(annotation_lines=[f"{path} 4,4,20,20,0"], input_shape=(32, 32), train=False)
    image_chw, _ = dataset[0]
    expected = gray3((raw >> 8).astype(np.uint8)).transpose(2, 0, 1) / 255.0  # same size: the letterbox is a copy
    np.testing.assert_allclose(image_chw, expected, atol=1e-6)


def test_the_python_api_converts_pil_images_by_the_same_rule(tmp_path):
    from utils.infer.preprocess import to_rgb_array  # YOLO.detect(PIL image) goes through it

    raw = sixteen((6, 7))
    with Image.open(write_png(tmp_path / "g16.png", raw, bit_depth=16, color_type=0)) as image:
        assert np.array_equal(to_rgb_array(image), gray3((raw >> 8).astype(np.uint8)))
    la = RNG.integers(0, 256, size=(4, 5, 2))
    with Image.open(write_png(tmp_path / "la.png", la, bit_depth=8, color_type=4)) as image:
        assert np.array_equal(to_rgb_array(image), composite(gray3(la[..., 0]), la[..., 1]))
