"""The backbone feature cache: a frozen backbone's image tokens computed once per (image set,
backbone, weights, input size, preprocessing) and reused by every later run and sweep job.

Stored as float16 ``(N, S, C)`` in ``<cache_dir>/features/<key>/features.npy`` with the image
order in ``index.json``. Built under a file lock into a temporary folder that is renamed into
place, so two jobs never build it twice or see it half-written. Any change of the inputs
changes the key, which is how the cache is invalidated.

``augment.cached_views: N`` (augmentation on, backbone frozen): N augmented views of each
training image, drawn once through the run's augmentation layers and the frozen backbone, are
cached beside the plain features (``views.npy``-shaped rows ``view * n_train + i``, keyed by
the images, the backbone, the augmentation settings, N and the seed); each epoch draws one view
per image (``CaptionData.train_dataset``). Validation, test and captioning read the plain,
never augmented features. What changes: the model sees N fixed augmentations of an image
instead of a new one every epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from captioning.console import console, track
from captioning.io import build_lock, ensure_free_space

# 2: images with an EXIF orientation are decoded upright (through Pillow); caches built before
# held their features sideways, so they are not reused.
VERSION = 2


def bypass_reason(cfg) -> str | None:
    """Why the cache cannot be used for this config (None: it can)."""
    b = cfg.backbone
    if not cfg.trainer.get("feature_cache", True):
        return "trainer.feature_cache=false"
    if b.get("trainable", False) is not False:
        return "the backbone is trained (backbone.trainable), so its features change every step"
    a = cfg.augment
    if augmentation_on(a) and not cached_views(cfg):
        return ("augmentation is on: a frozen CNN sees a different image every epoch, so its "
                "features cannot be cached (set augment.cached_views=N to cache N augmented "
                "views of each image, or augment.* off)")
    if b.get("blind", False):
        return "backbone.blind=true (image-blind baseline)"
    if a.get("mixup"):
        return "augment.mixup blends images, not their features (the backbone must see the blend)"
    tta = [cfg.decode.get("tta", "none"), cfg.callbacks.val_captions.get("tta") or "none"]
    if any(v != "none" for v in tta):
        return ("test-time augmentation (decode.tta / callbacks.val_captions.tta) flips and "
                "rotates images, which cached features cannot be")
    return None


def augmentation_on(a) -> bool:
    """Whether ``augment.*`` (``a``) changes training images (mixup aside)."""
    return bool(a.flip != "none" or a.rot90 or a.rotation or a.contrast or a.get("zoom")
                or a.get("translate"))


def cached_views(cfg) -> int:
    """``augment.cached_views`` when augmentation is on (N augmented views cached per training
    image), else 0."""
    n = int(cfg.augment.get("cached_views", 0) or 0)
    return n if augmentation_on(cfg.augment) else 0


def views_key(cfg, records, views: int) -> str:
    """The augmented views' cache key: the plain features' key, the augmentation settings, the
    number of views and the seed the augmentation layers draw with."""
    a = {k: cfg.augment[k] for k in cfg.augment if k != "cached_views"}
    spec = json.dumps({"features": cache_key(cfg, records), "augment": a, "views": views,
                       "seed": int(cfg.seed)}, sort_keys=True, default=str)
    return "views-" + hashlib.sha256(spec.encode()).hexdigest()[:20]


def cache_key(cfg, records) -> str:
    """Hash of everything the features depend on."""
    b = cfg.backbone
    h = hashlib.sha256()
    spec = {k: b[k] for k in b if k not in ("trainable", "blind")}
    weights = b.get("weights")
    if weights not in (None, "imagenet", "preset"):   # a file: its identity is its content stamp
        st = os.stat(os.path.expanduser(str(weights)))
        spec["weights_stamp"] = [st.st_size, st.st_mtime_ns]
    preset = Path(os.path.expanduser(str(b.get("preset") or "")))
    if weights == "preset" and b.get("preset") and preset.is_dir():   # a local keras-hub preset
        spec["preset_stamp"] = [[f.name, f.stat().st_size, f.stat().st_mtime_ns]
                                for f in sorted(preset.iterdir()) if f.is_file()]
    if weights is None:
        spec["init_seed"] = int(cfg.seed)     # random init: depends on the run's seed
    import keras

    h.update(json.dumps({"v": VERSION, "backbone": spec, "keras": keras.__version__},
                        sort_keys=True, default=str).encode())
    for r in sorted(records, key=lambda r: r.image):
        st = os.stat(r.image)
        h.update(f"{r.image}\0{st.st_size}\0{st.st_mtime_ns}\0{r.decoder}\n".encode())
    return h.hexdigest()[:20]


def ensure_features(cfg, backbone, data, records, batch_size: int, progress: bool = True,
                    augmentation=(), views: int = 0):
    """-> (features (N, S, C) float16 array, {image id: row}, folder); built once, then loaded.
    With ``views=V`` and ``augmentation`` (Keras layers): V augmented views of each record,
    (V * N, S, C), view v of record i at row v * N + i; the dict maps an id to i."""
    root = Path(os.path.expanduser(str(cfg.paths.cache_dir))) / "features"
    key = views_key(cfg, records, views) if views else cache_key(cfg, records)
    folder = root / key
    with build_lock(folder):
        if not (folder / "index.json").is_file():
            _build(folder, backbone, data, records, batch_size, progress, augmentation,
                   max(views, 1))
    index = json.loads((folder / "index.json").read_text())
    feats = np.load(folder / "features.npy", mmap_mode="r")
    ids = index["ids"][: len(index["ids"]) // max(views, 1)]
    return feats, {i: n for n, i in enumerate(ids)}, folder


def _build(folder: Path, backbone, data, records, batch_size: int, progress: bool,
           augmentation=(), views: int = 1) -> None:
    import keras

    records = list(records) * views                  # view-major: view v's rows v*N .. v*N+N-1
    shape = (len(records), *backbone.output_shape[1:])
    ensure_free_space(folder.parent, int(np.prod(shape)) * 2,        # float16: 2 bytes a value
                      f"the {backbone.name} feature cache ({shape[0]} images x {shape[1]} "
                      f"tokens x {shape[2]}, float16)",
                      "point paths.cache_dir elsewhere (CAPTIONING_CACHE=/big/disk), or set "
                      "trainer.feature_cache=false (the backbone then runs every step)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        out = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float16,
                                        shape=shape)
        batches = data.image_dataset(records, batch_size, use_features=False)
        it = iter(batches)
        if progress:
            it = track(it, total=-(-len(records) // batch_size), unit="batches",
                       description=f"Caching {backbone.name} features of {len(records)} images"
                                   + (f" ({views} augmented views each)" if views > 1 else ""))
        row = 0
        import tensorflow as tf

        # traced once as a graph, not run eagerly
        def extract(x):
            for layer in augmentation:                # the views: training-mode draws
                x = layer(x, training=True)
            return backbone(x, training=False)

        extract = tf.function(extract, reduce_retracing=True)
        for images in it:
            tokens = keras.ops.convert_to_numpy(extract(images))
            out[row:row + len(tokens)] = tokens.astype(np.float16)
            row += len(tokens)
        out.flush()
        del out
        index = {"ids": [r.id for r in records], "shape": list(shape)}
        (tmp / "index.json").write_text(json.dumps(index))
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def attach_feature_cache(cfg, data, model) -> None:
    """Frozen backbone: compute each image's tokens once (shared across runs) and make
    ``data`` serve them instead of images; otherwise say why the cache is bypassed."""
    reason = bypass_reason(cfg)
    if reason is not None:
        if cfg.backbone.get("trainable", False) is False:      # only worth saying when frozen
            console.print(f"  feature cache bypassed: {reason}")
        return
    records = [r for split in ("train", "val", "test", "holdout", "untouched")
               for r in data.splits.get(split, [])]
    feats, row_of, folder = ensure_features(cfg, model.backbone, data, records,
                                            int(cfg.evaluation.batch_size))
    data.use_features(feats, row_of)
    console.print(f"  feature cache: {folder} ({feats.shape[0]} images x {feats.shape[1]} tokens "
                  f"x {feats.shape[2]}, float16, {feats.nbytes / feats.shape[0] / 1024:.1f} "
                  f"KiB/image)")
    views = cached_views(cfg)
    if views:
        # fresh copies of the model's layers (same settings and seed): the model's own random
        # state is left as it was
        layers = [type(x).from_config(x.get_config()) for x in model.augmentation]
        train = data.splits["train"]
        vfeats, vrow_of, vfolder = ensure_features(cfg, model.backbone, data, train,
                                                   int(cfg.evaluation.batch_size),
                                                   augmentation=layers, views=views)
        data.use_train_views(vfeats, vrow_of, views)
        console.print(f"  augmented views: {vfolder} ({views} views of each of {len(train)} "
                      f"training images, one drawn per image each epoch; "
                      f"{vfeats.nbytes / 2 ** 20:.0f} MiB)")
