"""The embedded synthetic captioning dataset: procedurally rendered scenes of 1-3 shapes with
five human-style reference captions each, written once to a cache folder in the Kaggle
Flickr8k layout (``captions.txt`` + ``Images/``) and read back through the real loader.

Each image comes from its own RNG seeded by (seed, index), so the first N images are the same
whatever the dataset size, and a dataset is byte-identical for a seed.
"""

from __future__ import annotations

import csv
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioning.io import build_lock

VERSION = 1   # bump when rendering or captions change: it is part of the cache folder name

COLORS = {
    "red": (215, 40, 40), "green": (40, 170, 60), "blue": (45, 85, 225),
    "yellow": (235, 210, 40), "purple": (150, 60, 190), "orange": (245, 140, 25),
}
SHAPES = {"circle": ["circle"], "square": ["square", "box"], "triangle": ["triangle"],
          "diamond": ["diamond"], "cross": ["cross", "plus sign"]}
SIZES = {"small": ["small", "little", "tiny"], "large": ["large", "big"]}
BACKGROUNDS = {"dark": (45, 45, 55), "light": (200, 200, 190)}
POSITIONS = {  # (row, col) of a 3x3 grid -> how people say it
    (0, 0): "in the top left corner", (0, 1): "at the top", (0, 2): "in the top right corner",
    (1, 0): "on the left", (1, 1): "in the middle", (1, 2): "on the right",
    (2, 0): "in the bottom left corner", (2, 1): "at the bottom",
    (2, 2): "in the bottom right corner",
}


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    size: str
    cell: tuple[int, int]


def _an(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _phrase(s: Shape, rng: random.Random, with_size: bool | None = None) -> str:
    """'a small red circle', 'an orange box', 'a big blue plus sign' ..."""
    with_size = rng.random() < 0.6 if with_size is None else with_size
    words = (([rng.choice(SIZES[s.size])] if with_size else [])
             + [s.color, rng.choice(SHAPES[s.kind])])
    return _an(" ".join(words))


def _relation(a: Shape, b: Shape, rng: random.Random) -> tuple[str, str]:
    """(relation of a to b, relation of b to a)."""
    dr, dc = a.cell[0] - b.cell[0], a.cell[1] - b.cell[1]
    if abs(dc) >= abs(dr):
        left, right = rng.choice([("to the left of", "to the right of"), ("left of", "right of")])
        return (left, right) if dc < 0 else (right, left)
    up, down = rng.choice([("above", "below"), ("over", "under"), ("above", "beneath")])
    return (up, down) if dr < 0 else (down, up)


def _captions(shapes: list[Shape], bg: str, rng: random.Random) -> list[str]:
    """Five different captions, the way people vary them: synonyms, word order, optional words."""
    p = lambda s: _phrase(s, rng)  # noqa: E731
    if len(shapes) == 1:
        s = shapes[0]
        pos = POSITIONS[s.cell]
        pool = [
            lambda: f"{p(s)}",
            lambda: f"{p(s)} on a {bg} background",
            lambda: f"there is {p(s)} {pos}",
            lambda: f"{p(s)} {pos}",
            lambda: f"a single {p(s)[2:].lstrip('n ')} {pos}",
            lambda: f"an image of {p(s)} {pos}",
            lambda: f"one {s.color} {rng.choice(SHAPES[s.kind])} on a {bg} background",
            lambda: (f"{_an(s.color)} {rng.choice(SHAPES[s.kind])} "
                     f"that is {rng.choice(SIZES[s.size])}"),
        ]
    elif len(shapes) == 2:
        a, b = shapes
        pool = [
            lambda: f"{p(a)} {_relation(a, b, rng)[0]} {p(b)}",
            lambda: f"{p(b)} {_relation(a, b, rng)[1]} {p(a)}",
            lambda: f"there is {p(a)} {_relation(a, b, rng)[0]} {p(b)}",
            lambda: f"two shapes, {p(a)} and {p(b)}",
            lambda: f"{p(a)} and {p(b)} on a {bg} background",
            lambda: f"{p(b)} with {p(a)} {_relation(a, b, rng)[0]} it",
            lambda: f"{p(b)} and {p(a)}",
        ]
    else:
        def three(order=None):
            x, y, z = rng.sample(shapes, 3) if order is None else order
            return x, y, z
        pool = [
            lambda: "three shapes: {}, {} and {}".format(*map(p, three())),
            lambda: "{}, {} and {}".format(*map(p, three())),
            lambda: "there are three objects, {}, {} and {}".format(*map(p, three())),
            lambda: (f"{p(shapes[0])} {_relation(shapes[0], shapes[1], rng)[0]} "
                     f"{p(shapes[1])} and {p(shapes[2])}"),
            lambda: "{} next to {} and {}".format(*map(p, three())),
            lambda: "three shapes on a {} background, {}, {} and {}".format(bg, *map(p, three())),
        ]
    out: list[str] = []
    for make in rng.sample(pool, len(pool)) * 3:
        c = make()
        if c not in out:
            out.append(c)
        if len(out) == 5:
            break
    while len(out) < 5:   # tiny template pools: vary the optional words until five differ
        c = pool[0]()
        if c not in out:
            out.append(c)
    # People write captions with a capital letter and sometimes a final period.
    return [(c[0].upper() + c[1:] + (" ." if rng.random() < 0.5 else ""))
            if rng.random() < 0.5 else c
            for c in out]


def render(index: int, seed: int, size: int) -> tuple[np.ndarray, list[str]]:
    """One scene: (size, size, 3) uint8 image and its five captions."""
    from PIL import Image, ImageDraw

    rng = random.Random(f"{seed}-{index}")
    n = rng.choice([1, 1, 2, 2, 2, 3])
    cells = rng.sample(sorted(POSITIONS), n)
    shapes = [Shape(rng.choice(sorted(SHAPES)), rng.choice(sorted(COLORS)),
                    rng.choice(["small", "large"]), c)
              for c in cells]
    bg = rng.choice(sorted(BACKGROUNDS))
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 12, (size, size, 1))
    base = np.asarray(BACKGROUNDS[bg], np.float32) + noise          # textured background
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for s in shapes:
        r = size * (0.09 if s.size == "small" else 0.155) * rng.uniform(0.9, 1.1)
        cy, cx = ((np.array(s.cell) * 2 + 1) / 6 * size
                  + [rng.uniform(-1, 1) * size * 0.03 for _ in range(2)])
        color = tuple(int(np.clip(v + rng.uniform(-20, 20), 0, 255)) for v in COLORS[s.color])
        box = [cx - r, cy - r, cx + r, cy + r]
        if s.kind == "circle":
            draw.ellipse(box, fill=color)
        elif s.kind == "square":
            draw.rectangle(box, fill=color)
        elif s.kind == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
        elif s.kind == "diamond":
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=color)
        else:  # cross
            w = r / 2.6
            draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=color)
            draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=color)
    return np.asarray(img), _captions(shapes, bg, rng)


def ensure_synthetic(
    root: Path, num_images: int, image_size: int, seed: int, progress: bool = True
) -> Path:
    """Write the dataset to ``root`` (Kaggle Flickr8k layout) unless it is already there.

    Written to a temporary folder and renamed into place, so an interrupted or concurrent
    generation never leaves a half-written dataset; a second writer just uses the first's.
    """
    root = Path(root)
    if (root / "captions.txt").is_file():
        return root
    with build_lock(root):
        if not (root / "captions.txt").is_file():     # another process may have finished it
            _write(root, num_images, image_size, seed, progress)
    return root


def _write(root: Path, num_images: int, image_size: int, seed: int, progress: bool) -> None:
    from PIL import Image

    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        (tmp / "Images").mkdir()
        rows = []
        indices = range(num_images)
        if progress:
            from rich.progress import track
            indices = track(indices, description=f"Rendering {num_images} synthetic scenes",
                            transient=True)
        for i in indices:
            pixels, caps = render(i, seed, image_size)
            name = f"synth_{i:05d}.jpg"
            Image.fromarray(pixels).save(tmp / "Images" / name, quality=95)
            rows += [(name, c) for c in caps]
        with open(tmp / "captions.txt", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["image", "caption"])
            w.writerows(rows)
        try:
            tmp.rename(root)
        except OSError:           # another process finished first: keep theirs
            if not (root / "captions.txt").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
