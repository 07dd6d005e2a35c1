"""Caption image files with a finished run, one line per image.

    python caption.py run_dir=outputs/2026-11-21/12-00-00 images=[a.jpg,photos/] \
[decode.method=beam ...]

Folders are searched for .jpg/.jpeg/.png/.bmp/.gif/.webp/.tif/.tiff files; decode.* settings
apply. Images are read upright (EXIF orientation). A file that cannot be read (truncated,
corrupt, over the pixel limit) is named in one line on stderr and the others are captioned.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from captioning import CaptioningError, run_cli  # noqa: E402
from captioning.privacy import no_phone_home  # noqa: E402

no_phone_home()   # before Kangas or Comet is imported (captioning/privacy.py)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def image_files(items) -> list[Path]:
    files: list[Path] = []
    for item in items:
        p = Path(os.path.expanduser(str(item)))
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise CaptioningError(f"No such image or folder: {p}")
    if not files:
        raise CaptioningError(f"No images (.jpg, .png, ...) found in {list(items)}")
    return files


def main(argv: list[str]) -> int:
    from omegaconf import OmegaConf

    args = OmegaConf.from_dotlist([a for a in argv
                                   if a.split("=")[0] in ("run_dir", "images", "batch_size")])
    rest = [a for a in argv if a.split("=")[0] not in ("run_dir", "images", "batch_size")]
    if "run_dir" not in args or "images" not in args or any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0 if any(a in ("-h", "--help") for a in argv) else 2
    images = args.images if OmegaConf.is_list(args.images) else [args.images]
    files = image_files(images)

    from captioning.data.datamodule import CaptionData
    from captioning.data.images import check_records, explain, set_pixel_limit
    from captioning.data.records import Record
    from captioning.models.decoding import Generator, caption_records
    from captioning.training.run_dir import load_run, merge_overrides

    cfg, vocab, model = load_run(args.run_dir)
    cfg = merge_overrides(cfg, rest)
    set_pixel_limit(cfg.dataset.get("max_image_pixels"))
    records, bad = check_records([Record(id=str(f), image=str(f), captions=()) for f in files])
    if bad:
        import sys

        print(f"skipped {len(bad)} image(s) that cannot be read: "
              + "; ".join(f"{r.image} ({explain(kind, why)})" for r, kind, why in bad),
              file=sys.stderr)
    if not records:
        raise CaptioningError(f"None of the {len(files)} image(s) can be read (truncated, corrupt "
                              f"or over the pixel limit, named above).")
    data = CaptionData({"train": [], "val": [], "test": []}, vocab, None, 1,
                       int(cfg.backbone.image_size))
    generator = Generator.from_config(model, vocab, cfg.decode, seed=int(cfg.seed))
    for r, caption in zip(records, caption_records(generator, data, records,
                                                   int(args.get("batch_size", 32))),
                          strict=True):
        print(f"{r.image}\t{caption}")
    return 0


if __name__ == "__main__":
    run_cli(main)
