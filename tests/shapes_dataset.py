"""A small VOC-layout dataset unlike BCCD, drawn for the tests: circles and squares of two planted sizes on a
textured background, some images without objects, no ImageSets split (voc_annotation.py makes one)."""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square")
SIZES = {"circle": (14, 14), "square": (30, 22)}  # planted box (w, h) in image pixels, +- 2


def write_shapes_voc(root: Path, *, images: int = 16, seed: int = 0, width: int = 128, height: int = 96) -> Path:
    """Writes root/VOCdevkit/VOC2007/{JPEGImages,Annotations} and root/shapes_classes.txt; returns the VOCdevkit."""
    rng = np.random.default_rng(seed)
    year = root / "VOCdevkit" / "VOC2007"
    (year / "JPEGImages").mkdir(parents=True)
    (year / "Annotations").mkdir(parents=True)
    (root / "shapes_classes.txt").write_text("\n".join(CLASSES) + "\n")
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(images):
        texture = 90 + 40 * np.sin(xx / (3 + i % 4)) * np.cos(yy / 5) + rng.normal(0, 12, (height, width))
        canvas = np.repeat(np.clip(texture, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        image = Image.fromarray(canvas)
        draw = ImageDraw.Draw(image)
        objects = []
        for _ in range(0 if i % 5 == 4 else rng.integers(1, 4)):  # every fifth image has no objects
            name = CLASSES[rng.integers(0, 2)]
            w, h = (s + int(rng.integers(-2, 3)) for s in SIZES[name])
            x1, y1 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            box = (x1, y1, x1 + w, y1 + h)
            color = (230, 40, 40) if name == "circle" else (40, 40, 230)
            (draw.ellipse if name == "circle" else draw.rectangle)(box, fill=color)
            objects.append((name, box))
        image.save(year / "JPEGImages" / f"shape_{i:03d}.jpg", quality=95)
        xml_objects = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin>"
                              f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                              for n, b in objects)
        (year / "Annotations" / f"shape_{i:03d}.xml").write_text(
            f"<annotation><filename>shape_{i:03d}.jpg</filename><size><width>{width}</width><height>{height}"
            f"</height><depth>3</depth></size>{xml_objects}</annotation>")
    return root / "VOCdevkit"
