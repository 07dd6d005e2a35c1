"""Export a finished run as a self-contained SavedModel that captions raw JPEG/PNG bytes.

    python -m captioning.export run_dir=outputs/... [out=outputs/.../export] \
[decode.method=beam ...]

The SavedModel holds the weights, the vocabulary and the decoding loop; loading it needs only
TensorFlow (and keras-hub's ops are plain TF ops once traced):

    m = tf.saved_model.load("export"); m.caption(tf.constant([open("a.jpg", "rb").read()]))
"""

# ruff: noqa: E402 - TensorFlow is imported quietly before the modules that load it
from __future__ import annotations

from pathlib import Path

from captioning.quiet import import_tensorflow

import_tensorflow()   # before the modules below load it, without its start-up noise (quiet.py)

from captioning import run_cli
from captioning.models.decoding import Generator
from captioning.privacy import no_phone_home
from captioning.runs.checkpoints import load_run, merge_overrides

no_phone_home()   # before Kangas or Comet is imported (captioning/privacy.py)


def export(run_dir, out=None, overrides=()) -> Path:
    import keras
    import tensorflow as tf

    cfg, vocab, model = load_run(run_dir)
    cfg = merge_overrides(cfg, list(overrides))
    out = Path(out) if out else Path(run_dir) / "export"
    size = int(cfg.backbone.image_size)
    generator = Generator.from_config(model, vocab, cfg.decode, seed=int(cfg.seed))
    tokens, end_id = tf.constant(vocab.tokens), vocab.end_id

    def caption(jpegs):
        """(N,) encoded images -> (N,) captions."""
        def load(b):
            img = tf.io.decode_image(b, channels=3, expand_animations=False)
            img = tf.image.resize(img, (size, size), antialias=True)
            return tf.clip_by_value(tf.round(img), 0, 255)
        images = tf.map_fn(load, jpegs,
                           fn_output_signature=tf.TensorSpec((size, size, 3), tf.float32))
        ids = generator.generate(model.encode(images, training=False))
        return ids_to_text(ids, tokens, vocab.start_id, end_id)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("caption", caption,
                         input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    out.parent.mkdir(parents=True, exist_ok=True)
    _replace_dir(out, lambda tmp: archive.write_out(str(tmp), verbose=False))
    return out


def ids_to_text(ids, tokens, start_id: int, end_id: int):
    """(N, T) ids -> (N,) captions in TensorFlow, the same text as ``Vocabulary.decode``: up to
    the first end token, without padding and start tokens, keeping ``[UNK]``."""
    import tensorflow as tf

    before_end = tf.cumsum(tf.cast(ids == end_id, tf.int32), axis=1, exclusive=False) == 0
    keep = before_end & (ids > 0) & (ids != start_id)
    words = tf.where(keep, tf.gather(tokens, ids), "")
    text = tf.strings.reduce_join(words, axis=1, separator=" ")
    return tf.strings.strip(tf.strings.regex_replace(text, " +", " "))


def _replace_dir(out: Path, write) -> None:
    """Write a folder beside ``out`` and swap it in: ``out`` is never half-written. The old
    export is moved aside (one rename) before the new one is renamed in, then deleted."""
    import shutil

    tmp, old = out.with_name(out.name + ".partial"), out.with_name(out.name + ".old")
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    write(tmp)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def main(argv):
    from omegaconf import OmegaConf

    own = [a for a in argv if a.split("=")[0] in ("run_dir", "out")]
    args = OmegaConf.from_dotlist(own)
    if "run_dir" not in args:
        print(__doc__)
        return 2
    path = export(args.run_dir, args.get("out"), [a for a in argv if a not in own])
    print(f"exported to {path}: tf.saved_model.load('{path}').caption(tf.constant([jpeg_bytes]))")
    return 0


if __name__ == "__main__":
    run_cli(main)
