"""Caption image files with a finished run, one line per image.

    python caption.py run_dir=outputs/2026-11-21/12-00-00 images=[a.jpg,photos/] \
[decode.method=beam ...]

    python caption.py run_dir=... images=[a.jpg] attention=true out=attention_plots/

Folders are searched for .jpg/.jpeg/.png/.bmp/.gif/.webp/.tif/.tiff files; decode.* settings
apply (decode.num_captions=N with decode.method=top_k or top_p: N tab-separated captions per
line). attention=true writes out/<image>.png per image: each word of its caption over the image
with the decoder's attention when it chose that word (decode.attention_block picks the
Transformer block; -1, the last). Images are read upright (EXIF orientation). A file that
cannot be read (truncated, corrupt, over the pixel limit) is named in one line on stderr and the
others are captioned.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from captioning import CaptioningError, run_cli
from captioning.privacy import no_phone_home
from captioning.quiet import import_tensorflow, quiet_libraries

no_phone_home()   # before Kangas or Comet is imported (captioning/privacy.py)
quiet_libraries()  # library start-up noise off (captioning/quiet.py; CAPTIONING_VERBOSE=1: on)

OWN_KEYS = ("run_dir", "images", "batch_size", "attention", "out")
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

    args = OmegaConf.from_dotlist([a for a in argv if a.split("=")[0] in OWN_KEYS])
    rest = [a for a in argv if a.split("=")[0] not in OWN_KEYS]
    if "run_dir" not in args or "images" not in args or any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0 if any(a in ("-h", "--help") for a in argv) else 2
    images = args.images if OmegaConf.is_list(args.images) else [args.images]
    files = image_files(images)
    attention = args.get("attention", False)
    if attention not in (True, False) or (attention and not args.get("out")):
        raise CaptioningError(f"attention=true needs out=DIR, the folder for the plots "
                              f"(one PNG per image). Received: attention={attention}, "
                              f"out={args.get('out')}")

    import_tensorflow()                   # without its start-up noise (captioning/quiet.py)
    from captioning.console import print_trained_on
    from captioning.data.datamodule import CaptionData
    from captioning.data.images import check_records, explain, set_pixel_limit
    from captioning.data.records import Record
    from captioning.models.decoding import Generator, sample_records
    from captioning.runs.checkpoints import load_run, merge_overrides

    cfg, vocab, model = load_run(args.run_dir)
    cfg = merge_overrides(cfg, rest)
    print_trained_on(args.run_dir, cfg)
    if cfg.decode.get("rerank", "none") != "none":
        # The vote needs every training image's features (eval.py and the run's own scoring
        # have the dataset); a few images from anywhere get the beam's best.
        print(f"note: decode.rerank={cfg.decode.rerank} is applied by eval.py and the run's "
              f"scoring (it encodes the training images); these captions are the beam's best "
              f"(decode.rerank=none says so)", file=sys.stderr)
        cfg.decode.rerank = "none"
    set_pixel_limit(cfg.dataset.get("max_image_pixels"))
    records, bad = check_records([Record(id=str(f), image=str(f), captions=()) for f in files])
    if bad:
        print(f"skipped {len(bad)} image(s) that cannot be read: "
              + "; ".join(f"{r.image} ({explain(kind, why)})" for r, kind, why in bad),
              file=sys.stderr)
    if not records:
        raise CaptioningError(f"None of the {len(files)} image(s) can be read (truncated, corrupt "
                              f"or over the pixel limit, named above).")
    data = CaptionData({"train": [], "val": [], "test": []}, vocab, None, 1,
                       int(cfg.backbone.image_size))
    generator = Generator.from_config(model, vocab, cfg.decode, seed=int(cfg.seed))
    drawn = sample_records(generator, data, records, int(args.get("batch_size", 32)),
                           int(cfg.decode.get("num_captions", 1)))
    captions = [caps[0] for caps in drawn]
    for r, caps in zip(records, drawn, strict=True):
        print("\t".join([r.image, *caps]))     # decode.num_captions=N: N captions, tab-separated
    if attention:
        plot_attention(model, data, records, captions, cfg, Path(args.out),
                       int(args.get("batch_size", 32)))
    return 0


def plot_attention(model, data, records, captions, cfg, out: Path, batch_size: int) -> None:
    """out/<image name>.png per record (``captioning.models.attention.plot_words``); a name
    that two images share gets the second a -2 suffix, and so on."""
    from captioning.console import trained_on
    from captioning.models.attention import picture, plot_words, word_maps

    out.mkdir(parents=True, exist_ok=True)
    maps = word_maps(model, data, records, captions, batch_size,
                     int(cfg.decode.get("attention_block", -1)))
    used: dict[str, int] = {}
    for r, m in zip(records, maps, strict=True):
        stem = Path(r.image).stem
        used[stem] = used.get(stem, 0) + 1
        path = out / (f"{stem}.png" if used[stem] == 1 else f"{stem}-{used[stem]}.png")
        plot_words(picture(r.image), m.words, m.maps, path,
                   title=f"{Path(r.image).name}: \"{' '.join(m.words)}\" ({trained_on(cfg)})")

    print(f"wrote {len(maps)} attention plot(s) to {out}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
