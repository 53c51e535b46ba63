"""The one image reader: upright RGB pixels, upright sizes from the header, errors naming the file, and no other
module of the tools opening images itself."""
import ast

import numpy as np
import pytest
from conftest import REPO, write_truncated_jpeg
from PIL import Image

from utils.core.config import UserError
from utils.data.images import image_info, read_image_rgb


def _save_with_orientation(path, *, orientation: int, size=(40, 20)) -> None:
    """A raw ``size`` (width, height) JPEG: left half red, right half blue, with the given EXIF orientation."""
    stored = Image.new("RGB", size, (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, exif=exif, quality=95)


def test_read_image_modes_exif_and_odd_paths(tmp_path):
    folder = tmp_path / "dir ü #2"
    folder.mkdir()
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    Image.fromarray(gray, mode="L").save(folder / "gray img.png")
    rgb = read_image_rgb(folder / "gray img.png")
    assert rgb.shape == (12, 10, 3) and rgb.dtype == np.uint8
    assert all(np.array_equal(rgb[:, :, c], gray) for c in range(3))

    rgba = np.random.default_rng(1).integers(0, 256, (6, 7, 4), dtype=np.uint8)
    rgba[..., 3] = 255  # opaque: the colours as stored (transparency: tests/data/test_image_modes.py)
    Image.fromarray(rgba, mode="RGBA").save(folder / "alpha.png")
    assert np.array_equal(read_image_rgb(folder / "alpha.png"), rgba[:, :, :3])

    # EXIF orientation 6: the viewer turns the stored image 90 degrees clockwise, so its left half goes on top.
    _save_with_orientation(folder / "rotated.jpg", orientation=6)
    upright = read_image_rgb(folder / "rotated.jpg").astype(int)
    assert upright.shape == (40, 20, 3)
    assert np.abs(upright[5, 10] - (255, 0, 0)).max() < 10 and np.abs(upright[35, 10] - (0, 0, 255)).max() < 10


@pytest.mark.parametrize("orientation", range(1, 9))
def test_image_info_gives_the_upright_size_of_every_orientation(tmp_path, orientation):
    path = tmp_path / f"o{orientation}.jpg"
    _save_with_orientation(path, orientation=orientation)
    turned = orientation in (5, 6, 7, 8)  # the EXIF spec's 90-degree turns (with or without a mirror)
    info = image_info(path)
    assert info.raw_size == (40, 20) and info.orientation == orientation and info.turns == turned
    assert info.upright_size == ((20, 40) if turned else (40, 20))
    # The decoded pixels have that size too: (H, W) = (40, 20) after a turn.
    assert read_image_rgb(path).shape == ((40, 20, 3) if turned else (20, 40, 3))


def test_image_info_without_exif_and_with_decoding(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (33, 17), (1, 2, 3)).save(path)
    info = image_info(path, decode=True)
    assert (info.raw_size, info.orientation, info.upright_size, info.turns) == ((33, 17), 1, (33, 17), False)


def test_errors_name_the_file(tmp_path):
    cut = write_truncated_jpeg(tmp_path / "cut #1.jpg")
    text = tmp_path / "text.jpg"
    text.write_text("not an image\n")

    assert image_info(cut).raw_size == (64, 64)  # the header survives, so a header read passes
    with pytest.raises(UserError, match=r"image .*cut #1.jpg: cannot be decoded"):
        image_info(cut, decode=True)
    with pytest.raises(UserError, match=r"image .*text.jpg: cannot be decoded"):
        image_info(text)
    with pytest.raises(UserError, match=r"image .*gone.jpg: no such file"):
        image_info(tmp_path / "gone.jpg")

    with pytest.raises(UserError, match=r"cannot decode image .*cut #1.jpg"):
        read_image_rgb(cut)
    with pytest.raises(UserError, match=r"cannot decode image .*text.jpg"):
        read_image_rgb(text)
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        read_image_rgb(tmp_path / "gone.jpg")


def _image_reading_calls(path) -> list[str]:
    """'line: call' for every call in the file that opens an image or reads its orientation."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        name = f"{owner}.{node.func.attr}" if owner else node.func.attr
        if name in ("Image.open", "cv2.imread", "ImageOps.exif_transpose") or node.func.attr == "getexif":
            found.append(f"{node.lineno}: {name}")
    return found


def test_only_the_images_module_reads_images():
    tools = [*REPO.glob("utils/**/*.py"), *REPO.glob("nets/**/*.py"), *REPO.glob("*.py")]
    readers = {f"{path.relative_to(REPO)}:{call}" for path in tools for call in _image_reading_calls(path)
               if path != REPO / "utils" / "data" / "images.py"}
    assert not readers, "read images through utils.data.images instead:\n" + "\n".join(sorted(readers))
    assert _image_reading_calls(REPO / "utils" / "data" / "images.py")  # the scan does find such calls
