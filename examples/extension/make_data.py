"""Writes the example's tiny dataset in its CSV layout: data/images/shape_NN.png (64 px, one
coloured shape each) and data/captions.csv (image,caption; three captions per image).
Deterministic; does nothing when data/captions.csv exists. Needs only Pillow."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (230, 200, 30)}
SHAPES = ("square", "circle", "triangle")


def draw(shape: str, rgb, size: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (size, size), (245, 245, 245))
    pen, r = ImageDraw.Draw(image), rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "square":
        pen.rectangle(box, fill=rgb)
    elif shape == "circle":
        pen.ellipse(box, fill=rgb)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=rgb)
    return image


def main(root: Path = Path("data"), count: int = 48, size: int = 64) -> None:
    if (root / "captions.csv").is_file():
        return
    rng = random.Random(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        name = f"shape_{i:02d}.png"
        draw(shape, COLOURS[colour], size, rng).save(root / "images" / name)
        rows += [(name, f"a {colour} {shape}"), (name, f"a {colour} {shape} on a white background"),
                 (name, f"one {shape} that is {colour}")]
    with open(root / "captions.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("image", "caption"), *rows])
    print(f"Wrote {count} images and {len(rows)} captions to {root}/")


if __name__ == "__main__":
    main()
