"""Image files: the check every image passes before it is used, and decoding through Pillow.

``check_image`` says, per file, whether it can be used and how to decode it:

- ``"tf"``: ``tf.io.decode_image`` reads it as it is (the fast path, most files);
- ``"pil"``: decode through Pillow (``pil_pixels``), because the file has an EXIF orientation
  (phone photos: TensorFlow ignores EXIF and would show them sideways), is a format TensorFlow
  cannot read (TIFF), or could only be shown complete by a full decode;
- ``"unreadable"``: not an image, or truncated/corrupt (a truncated JPEG, TIFF or WebP passes
  Pillow's header check, so completeness is checked too);
- ``"too large"``: over Pillow's decompression-bomb limit ``PIL.Image.MAX_IMAGE_PIXELS``
  (``dataset.max_image_pixels``), which would take minutes and gigabytes to decode.

The check is cheap for the common files: a JPEG that ends with its end-of-image marker, a PNG
whose chunks all pass their CRC (``verify``), a WebP whose RIFF size matches the file are not
decoded; anything else is decoded once with Pillow, which fails on a truncated file.
"""

from __future__ import annotations

import os
import re
import warnings

import numpy as np

from captioning import ConfigError
from captioning.data.records import Record

TF_FORMATS = {"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP"}   # what tf.io.decode_image reads
UNREADABLE, TOO_LARGE = "unreadable", "too large"
REPORT_KEY = {UNREADABLE: "unreadable images", TOO_LARGE: "images over the pixel limit"}
ORIENTATION = 0x0112                                        # the EXIF orientation tag


def set_pixel_limit(value) -> None:
    """``dataset.max_image_pixels``: when set, Pillow's decompression-bomb limit for this
    process (the check, the grids and Pillow's own decoding then agree)."""
    from PIL import Image

    if value in (None, "", "None"):
        return
    try:
        pixels = int(value)
    except (TypeError, ValueError):
        pixels = 0
    if pixels < 1 or isinstance(value, bool):
        raise ConfigError(f"dataset.max_image_pixels must be a positive number of pixels or null "
                          f"(Pillow's limit). Received: dataset.max_image_pixels={value!r}")
    Image.MAX_IMAGE_PIXELS = pixels


def pixel_limit_text() -> str:
    from PIL import Image

    return f"{Image.MAX_IMAGE_PIXELS:,}" if Image.MAX_IMAGE_PIXELS else "no limit"


def check_image(path: str) -> tuple[str, str]:
    """-> ``("tf" | "pil", "")`` for a usable file (how to decode it), or ``("unreadable" |
    "too large", why)`` for one to skip. Never raises for a bad file."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")         # DecompressionBombWarning, EXIF oddities
            with Image.open(path) as im:
                fmt, (w, h) = im.format, im.size
                if limit and w * h > limit:
                    return TOO_LARGE, f"{w}x{h} = {w * h:,} pixels"
                rotated = _orientation(im) not in (0, 1)
                complete = _complete(path, im, fmt)
            if not complete:                         # decode it once: fails if truncated
                with Image.open(path) as im:
                    im.load()
    except Image.DecompressionBombError as e:        # over twice the limit: refused by open
        found = re.search(r"\((\d+) pixels\)", str(e))
        return TOO_LARGE, f"{int(found[1]):,} pixels" if found else str(e)[:120]
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for a corrupt file
        return UNREADABLE, _reason(e)
    return ("tf" if fmt in TF_FORMATS and complete and not rotated else "pil"), ""


def _reason(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return "truncated" if "truncated" in text.lower() else text[:120]


def _orientation(im) -> int:
    if im.format == "PNG" and "exif" not in im.info:
        return 1                                     # PNG's getexif() would decode the image
    try:
        return int(im.getexif().get(ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block: no orientation to apply
        return 1


def _complete(path: str, im, fmt: str) -> bool:
    """True when a cheap structural check shows the whole image is there (False: decode it)."""
    if fmt == "PNG":
        im.verify()                                  # every chunk's CRC, up to IEND; raises
        return True
    if fmt in ("JPEG", "MPO"):
        with open(path, "rb") as f:
            f.seek(-2, os.SEEK_END)
            return f.read(2) == b"\xff\xd9"          # ends with its end-of-image marker
    if fmt == "WEBP":
        with open(path, "rb") as f:
            head = f.read(12)
        size = int.from_bytes(head[4:8], "little") + 8
        return head[:4] == b"RIFF" and os.path.getsize(path) >= size
    return False


def check_records(
    records: list[Record], progress: bool = False,
) -> tuple[list[Record], list[tuple[Record, str, str]]]:
    """-> (usable records, each with its ``decoder`` set; [(record, kind, why)] to skip)."""
    from dataclasses import replace

    it = records
    if progress and len(records) > 2000:
        from rich.progress import track
        it = track(records, description="Checking images", transient=True)
    good, bad = [], []
    for r in it:
        kind, why = check_image(r.image)
        if kind in ("tf", "pil"):
            good.append(r if r.decoder == kind else replace(r, decoder=kind))
        else:
            bad.append((r, kind, why))
    return good, bad


def describe_skipped(bad: list[tuple[Record, str, str]], named: int) -> list[str]:
    """One line per kind of problem: how many, the first ``named`` files, and what to do."""
    lines = []
    for kind in (UNREADABLE, TOO_LARGE):
        these = [(r, why) for r, k, why in bad if k == kind]
        if not these:
            continue
        shown = ", ".join(f"{r.id} ({why})" for r, why in these[:named])
        more = ", ..." if len(these) > named else ""
        if kind == UNREADABLE:
            lines.append(f"skipped {len(these)} image(s) that cannot be decoded (truncated or "
                         f"corrupt), first: {shown}{more}. Re-download or re-encode them")
        else:
            lines.append(f"skipped {len(these)} image(s) over the decompression-bomb limit of "
                         f"{pixel_limit_text()} pixels, first: {shown}{more}. Resize them, or "
                         f"raise dataset.max_image_pixels if they are trusted")
    return lines


def explain(kind: str, why: str) -> str:
    """One skipped file's reason with what to do about it."""
    if kind == TOO_LARGE:
        return (f"{why}, over the decompression-bomb limit of {pixel_limit_text()}: resize it, "
                f"or raise dataset.max_image_pixels if it is trusted")
    return f"{why}: re-download or re-encode it"


def pil_pixels(path, strict: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 through Pillow, EXIF orientation applied (first frame of an animation).
    ``strict=False``: a file that fails to decode gives a 1x1 black image instead of raising."""
    from PIL import Image, ImageOps

    if isinstance(path, bytes):
        path = path.decode()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im)
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception:  # noqa: BLE001 - any decoding failure
        if strict:
            raise
        return np.zeros((1, 1, 3), np.uint8)
