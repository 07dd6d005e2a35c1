"""From a dataset config to cleaned, split, vectorised data and tf.data pipelines.

config -> reader (one per layout) -> records -> split (and ``dataset.holdout``) -> text filter
-> vocabulary (train captions only) -> (N, C, L) token ids -> tf.data. The result,
``CaptionData``, is all the training loop and the evaluators need to know about data.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from captioning import ConfigError, DatasetError
from captioning.config_rules import check_values
from captioning.console import console
from captioning.data.classes import labeller
from captioning.data.images import (
    REPORT_KEY,
    check_image,
    check_records,
    describe_skipped,
    pil_pixels,
    set_pixel_limit,
)
from captioning.data.readers import MAX_NAMED, READERS
from captioning.data.records import (
    HELD_OUT,
    HOLDOUT,
    UNTOUCHED,
    DataReport,
    Record,
    assign_random_split,
    choose_holdout,
    holdout_size,
    split_counts,
)
from captioning.data.synthetic import VERSION, ensure_synthetic
from captioning.data.text import Vocabulary, filter_indexed, normalize, wrap
from captioning.plugins import build as build_target
from captioning.plugins import target_of


@dataclass
class CaptionData:
    # train / val / test records (test may be empty), and holdout (dataset.holdout) and
    # untouched (dataset.untouched_list): may be absent or empty, read them with .get
    splits: dict[str, list[Record]]
    vocab: Vocabulary
    report: DataReport
    captions_per_image: int
    image_size: int
    # (array (N, S, C) float16, {image id: row}) from the feature cache
    features: tuple | None = None
    punctuation: str = "space"           # text.punctuation, for normalize()
    # (array (V * N, S, C) float16, {train image id: i}, V) augment.cached_views: V augmented
    # views of each training image, view v of image i at row v * N + i
    train_views: tuple | None = None
    # dataset.classes with trainer.class_loss: image id -> class index; training and validation
    # batches then carry it, (inputs, captions, classes (B,))
    classes: dict[str, int] | None = None

    def use_features(self, feats, row_of) -> None:
        """Feed cached backbone tokens instead of images, read through the cache's memory map
        (``ensure_features``): the kernel keeps its pages in the page cache while memory allows
        and drops and re-reads them under pressure (a memory cgroup smaller than the cache
        included), so the process never holds a copy (docs/scale.md)."""
        self.features = (feats, row_of)

    def use_train_views(self, feats, row_of, views: int) -> None:
        """Train on cached augmented views (``augment.cached_views``): each epoch draws one of
        the ``views`` of each training image (``train_dataset``); other splits are unchanged."""
        self.train_views = (feats, row_of, views)

    def _gather_features(self, rows, feats=None):
        """(B,) int64 rows -> (B, S, C) float32 tokens: one numpy gather per batch."""
        import tensorflow as tf

        feats = self.features[0] if feats is None else feats
        out = tf.numpy_function(lambda r: np.asarray(feats[r], np.float32), [rows], tf.float32)
        return tf.ensure_shape(out, (None, *feats.shape[1:]))

    def encode(self, records: list[Record]) -> np.ndarray:
        """(N, C, L) int32 ids: every image's first C captions (C = dataset.captions_per_image;
        with 1, each image's first caption), normalised, wrapped, padded to C rows."""
        n, c, length = len(records), self.captions_per_image, self.vocab.seq_len
        flat, where = [], []
        for i, r in enumerate(records):
            for j, cap in enumerate(r.captions[:c]):
                flat.append(wrap(normalize(cap, self.punctuation)))
                where.append((i, j))
        ids = np.zeros((n, c, length), np.int32)
        if flat:
            rows, cols = np.asarray(where).T
            ids[rows, cols] = self.vocab.encode(flat)     # one vectorised call for the corpus
        return ids

    def train_dataset(self, batch_size: int, seed: int, split: str = "train", shuffle: bool = True,
                      sample: int | None = None):
        """Batches of ``(images (B, H, W, 3) float32 0..255, captions (B, C, L) int32)``. With
        ``sample=k`` (``trainer.sample_captions``) each image brings k of its captions, drawn
        afresh every epoch (C = k): the decoder's work per step shrinks to k/C, the backbone's
        stays. With ``classes`` (``trainer.class_loss``), ``(images, captions, classes (B,))``."""
        import tensorflow as tf

        if sample is not None and sample >= self.captions_per_image:
            sample = None

        records = self.splits[split]
        if not records:
            raise DatasetError(f"The {split} split is empty: nothing to train or validate on.")

        def per_epoch(ds):                        # a new order (and caption draw) each epoch
            if shuffle:
                ds = ds.shuffle(len(records), seed=seed, reshuffle_each_iteration=True)
            if not sample:
                return ds
            # each image's draw is keyed on a seeded stream that moves on with each pass, as
            # the shuffle's order does: a resumed run skips passes the same way (limit_train)
            draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
            return tf.data.Dataset.zip(ds, draws).map(_sampler(sample))

        # What each image brings besides its pixels: its captions, and its class when the
        # scene-class loss is on (``targets``). The maps below pass them on as ``*t``.
        targets = (self.encode(records),)
        if self.classes is not None:
            targets += (np.array([self.classes[r.id] for r in records], np.int32),)
        if split == "train" and self.train_views is not None:
            return _finish(self._views_dataset(records, targets, per_epoch, batch_size, seed))
        if self.features is not None:
            rows = np.array([self.features[1][r.id] for r in records], np.int64)
            ds = per_epoch(tf.data.Dataset.from_tensor_slices((rows, *targets)))
            ds = ds.batch(batch_size).map(lambda r, *t: (self._gather_features(r), *t))
            return _finish(ds)
        modes = [_MODE[r.decoder] for r in records]
        load = _loader(self.image_size, set(modes), strict=True)
        paths = [r.image for r in records]
        ds = tf.data.Dataset.from_tensor_slices((paths, modes, *targets))
        ds = ds.map(lambda p, m, *t: (load(p, m), *t),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        # A file that passed the index check but still fails to decode (or one never checked:
        # dataset.verify_images=false) is dropped with a warning instead of ending a long run
        # mid-epoch.
        ds = ds.ignore_errors(log_warning=True)
        if _fits_in_memory(len(records), self.image_size):
            ds = ds.cache()                                      # decode + resize once per run
        ds = per_epoch(ds).batch(batch_size).map(lambda x, *t: (tf.cast(x, tf.float32), *t))
        return _finish(ds)

    def steps(self, split: str, batch_size: int) -> int:
        """Batches in one pass over ``split``. Keras is told it (``validation_steps``, the
        ``steps`` of ``evaluate``): the image path's dataset has no known length
        (``ignore_errors``), and Keras, run to the end of such a dataset, warns "Your input ran
        out of data" at every pass. A dropped image still shows as that warning."""
        return math.ceil(len(self.splits[split]) / batch_size)

    def _views_dataset(self, records, targets, per_epoch, batch_size: int, seed: int):
        """Training batches from the cached augmented views: each pass draws one view per image
        from ``Dataset.random``'s stream, which, like the shuffle's, takes its next seed when a
        pass's iterator is made (a resumed run skips the passes done the same way)."""
        import tensorflow as tf

        feats, row_of, views = self.train_views
        n = len(feats) // views
        rows = np.array([row_of[r.id] for r in records], np.int64)
        ds = per_epoch(tf.data.Dataset.from_tensor_slices((rows, *targets)))
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip(ds, draws).map(
            lambda x, d: (x[0] + (d % views) * n, *x[1:]))
        return ds.batch(batch_size).map(lambda r, *t: (self._gather_features(r, feats), *t))

    def image_dataset(self, records: list[Record], batch_size: int, use_features: bool = True):
        """Batches of model inputs in ``records`` order (for captioning and scoring): cached
        backbone tokens when the feature cache is on, else images."""
        import tensorflow as tf

        if use_features and self.features is not None:
            rows = np.array([self.features[1][r.id] for r in records], np.int64)
            ds = tf.data.Dataset.from_tensor_slices(rows).batch(batch_size)
            ds = ds.map(self._gather_features)
            return _finish(ds)
        modes = self._image_modes(records)
        load = _loader(self.image_size, set(modes), strict=False)
        ds = tf.data.Dataset.from_tensor_slices(([r.image for r in records], modes))
        ds = ds.map(lambda p, m: tf.cast(load(p, m), tf.float32),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return _finish(ds.batch(batch_size))

    def _image_modes(self, records: list[Record]) -> list[int]:
        """One decoding mode per record, in order. Records the image check has not seen
        (``dataset.verify_images=false``) are checked here, so that one bad file cannot end a
        captioning pass or the feature-cache build: it becomes a blank (black) image, which
        keeps every row in place, and is named in the data report."""
        if all(r.decoder for r in records):
            return [_MODE[r.decoder] for r in records]

        modes, bad = [], []
        for r in records:
            kind, why = (r.decoder, "") if r.decoder else check_image(r.image)
            if kind not in _MODE:
                kind = "blank"
                bad.append(f"{r.id} ({why})")
            modes.append(_MODE[kind])
        if bad:
            more = ", ..." if len(bad) > MAX_NAMED else ""
            note = (f"{len(bad)} image(s) cannot be decoded and were fed as blank (black) images, "
                    f"first: {', '.join(bad[:MAX_NAMED])}{more}. Set dataset.verify_images=true "
                    f"to leave them out of the splits instead")
            if self.report is None or note not in self.report.notes:    # once per run
                console.print(f"  [yellow]warning[/]: {note}")
            if self.report is not None and note not in self.report.notes:
                self.report.notes.append(note)
        return modes


def _finish(ds, buffer: int = 2):
    """Prefetch ``buffer`` batches, with tf.data's autotuner off.

    Keras deletes the train and val iterators every epoch. With the autotuner on, deleting one
    can block, CPU idle, on the autotuner's background thread (``RootDataset::Iterator``'s
    destructor), stalling epoch boundaries (figures: docs/experiments/speed.md). Off,
    ``AUTOTUNE`` map parallelism keeps tf.data's starting value instead of being tuned;
    decoding is cached or cheap next to a training step here."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(buffer).with_options(options)


def _sampler(k: int):
    """((x, captions (C, L), ...), draw) -> (x, k of the captions (k, L), ...), drawn without
    replacement by the key ``draw``, real captions before empty rows (an image with fewer than
    k keeps all it has). Stateless: the same key, the same captions."""
    import tensorflow as tf

    def pick(element, draw):
        x, captions, *rest = element
        empty = tf.cast(tf.reduce_all(captions == 0, axis=-1), tf.float32)        # (C,)
        key = tf.stack([draw, tf.zeros_like(draw)])
        noise = tf.random.stateless_uniform(tf.shape(empty), seed=key)
        order = tf.argsort(noise + 2.0 * empty)[:k]
        return x, tf.gather(captions, order), *rest

    return pick


def _fits_in_memory(n: int, size: int, budget_bytes: float = 2e9) -> bool:
    return n * size * size * 3 <= budget_bytes


def load_image(path, size: int):
    """File -> (size, size, 3) uint8 with tf.io.decode_image (JPEG/PNG/BMP/WebP, the first
    frame of a GIF; EXIF orientation is not applied); resize as the recipes do."""
    import tensorflow as tf

    img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return _resize(img, size)


def _resize(img, size: int):
    import tensorflow as tf

    img = tf.image.resize(img, (size, size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)


# Record.decoder -> the branch of _loader ("" = never checked: TensorFlow, as before the check).
_MODE = {"": 0, "tf": 0, "pil": 1, "blank": 2}


def _loader(size: int, modes: set[int], strict: bool):
    """(path, mode) -> (size, size, 3) uint8. Mode 0: tf.io.decode_image; 1: Pillow, with the
    EXIF orientation applied (``images.pil_pixels``; ``strict=False``: a failure gives a black
    image); 2: a black image without reading the file. Only the branches in use are built."""
    import tensorflow as tf

    def pil(path):
        img = tf.numpy_function(lambda p: pil_pixels(p, strict), [path], tf.uint8,
                                stateful=False)
        img.set_shape((None, None, 3))
        return _resize(img, size)

    def branches(path):
        return [lambda: load_image(path, size), lambda: pil(path),
                lambda: tf.zeros((size, size, 3), tf.uint8)]

    def load(path, mode):
        if len(modes) == 1:
            return branches(path)[next(iter(modes))]()
        return tf.switch_case(tf.cast(mode, tf.int32), branches(path))

    return load


def _verify_images(records: list[Record], report: DataReport, progress: bool) -> list[Record]:
    """Check every image (``images.check_image``: the header, completeness, the pixel limit,
    the EXIF orientation); drop and count the unusable ones, note how to decode the others."""
    good, bad = check_records(records, progress)
    for _, kind, _ in bad:
        report.removed[REPORT_KEY[kind]] += 1
    report.notes += describe_skipped(bad, MAX_NAMED)
    return good


def synthetic_root(cfg) -> Path:
    if cfg.get("root"):
        return Path(os.path.expanduser(str(cfg.root)))
    cache = Path(os.path.expanduser(str(cfg.cache_dir)))
    return cache / "synthetic" / f"v{VERSION}-n{cfg.num_images}-px{cfg.image_size}-seed{cfg.seed}"


def read_records(ds_cfg, report: DataReport) -> tuple[list[Record], dict[str, str] | None]:
    """The option's reader (``dataset._target_``, else ``READERS[dataset.name]``): records, or
    (records, official_split); anything else is one message naming the reader."""
    out = build_target("dataset", ds_cfg, ds_cfg, report)
    records, split = out if isinstance(out, tuple) and len(out) == 2 else (out, None)
    if not isinstance(records, list | tuple) or not all(isinstance(r, Record) for r in records):
        raise ConfigError(f"dataset._target_={target_of('dataset', ds_cfg)} returned "
                          f"{type(out).__name__}: a reader returns a list of "
                          f"captioning.data.records.Record, or (records, official_split).")
    return list(records), split


def load_records(
    ds_cfg, seed: int, progress: bool = True
) -> tuple[dict[str, list[Record]], DataReport]:
    """Read, check and split a dataset; every problem ends here as a DatasetError."""
    name = ds_cfg.name
    if target_of("dataset", ds_cfg) is None:
        raise ConfigError(f"Unknown dataset {name!r}. Known: {sorted(READERS)}, or an option "
                          f"with dataset._target_ (a reader of your own).")
    from omegaconf import OmegaConf

    for key, example in (("root", "/data/" + name), ("json", "/data/dataset_flickr8k.json"),
                         ("images", "/data/Images"), ("data_dir", "~/tensorflow_datasets")):
        if key in ds_cfg.keys() and OmegaConf.is_missing(ds_cfg, key):
            raise DatasetError(
                f"dataset.{key} is required for dataset={name}. Point it at your copy: "
                f"python run.py dataset={name} dataset.{key}={example}")

    set_pixel_limit(ds_cfg.get("max_image_pixels"))
    report = DataReport()
    if name == "synthetic":
        root = ensure_synthetic(synthetic_root(ds_cfg), ds_cfg.num_images, ds_cfg.image_size,
                                ds_cfg.seed, progress=progress)
        ds_cfg = _with(ds_cfg, root=str(root))
    records, official_split = read_records(ds_cfg, report)
    if not records:
        raise DatasetError(
            f"No usable images in dataset={name} "
            f"({ds_cfg.get('root') or ds_cfg.get('json')}).")

    # a deterministic subset (debug runs, quick looks)
    if ds_cfg.get("max_images") and name != "coco":
        records = sorted(records, key=lambda r: r.id)
        random.Random(seed).shuffle(records)
        records = records[: int(ds_cfg.max_images)]

    records = _apply_split(records, official_split, ds_cfg, seed, report)
    if ds_cfg.get("verify_images", True):
        records = _verify_images(records, report, progress)
    splits = {s: [r for r in records if r.split == s] for s in ("train", "val", "test", HOLDOUT)}
    if any(r.split == UNTOUCHED for r in records):            # only where a list asked for it
        splits[UNTOUCHED] = [r for r in records if r.split == UNTOUCHED]
    if not splits["test"]:
        report.notes.append(
            f"dataset={name} with split={ds_cfg.split} has no test split: only val is scored")
    return splits, report


def _apply_split(
    records: list[Record], official_split: dict[str, str] | None, ds_cfg, seed: int,
    report: DataReport,
) -> list[Record]:
    """Give each record its split per ``dataset.split`` (random | karpathy), then move
    ``dataset.holdout`` train images to the split "holdout" (``_hold_out``). The images of
    ``dataset.untouched_list`` are set aside first (``_set_aside_untouched``), so neither choice
    below can see them."""
    records, untouched = _set_aside_untouched(records, official_split, ds_cfg)
    return _split_and_hold_out(records, official_split, ds_cfg, seed, report) + untouched


def _split_and_hold_out(records: list[Record], official_split: dict[str, str] | None, ds_cfg,
                        seed: int, report: DataReport) -> list[Record]:
    name, mode = ds_cfg.name, ds_cfg.split
    check_values({"dataset.split": mode})
    if mode == "random":
        return _random_split(records, ds_cfg, seed)
    if mode == "karpathy":
        if name in ("flickr8k", "synthetic"):
            if official_split is None:
                raise DatasetError(
                    f"dataset.split=karpathy needs the official split lists "
                    f"Flickr_8k.{{train,dev,test}}Images.txt next to the captions (under "
                    f"{ds_cfg.root} or its Flickr8k_text/). Add them, or use "
                    f"dataset.split=random.")
            kept = [replace(r, split=official_split[r.id])
                    for r in records if r.id in official_split]
            if len(kept) < len(records):
                report.removed["images in no split list"] += len(records) - len(kept)
            records = kept
        elif name == "flickr30k":
            raise DatasetError(
                "Flickr30k's Kaggle layout has no split lists. Use dataset.split=random, or "
                "dataset=karpathy dataset.json=dataset_flickr30k.json for the Karpathy split.")
        # karpathy / coco_json readers set the split themselves
    return _hold_out(records, ds_cfg)


def _hold_out(records: list[Record], ds_cfg) -> list[Record]:
    """``dataset.holdout`` of the train images (sorted by id, then a ``holdout_seed`` choice),
    or ``dataset.holdout_list``'s -> split "holdout". The dataset's own split is fixed here, so
    the choice does not depend on the run's seed."""
    train = [r for r in records if r.split == "train"]
    held = _held_ids(train, ds_cfg, len(train))
    return [replace(r, split=HOLDOUT) if r.id in held else r for r in records]


def _held_ids(candidates: list[Record], ds_cfg, n_train: int) -> set[str]:
    """The ids among ``candidates`` to hold out: the ones ``dataset.holdout_list`` names, else
    ``dataset.holdout`` of ``n_train`` train images chosen with ``holdout_seed``."""
    if ds_cfg.get("holdout_list"):
        return listed_holdout(candidates, ds_cfg.holdout_list)
    n = holdout_size(ds_cfg.get("holdout"), n_train)
    return choose_holdout([r.id for r in candidates], n, int(ds_cfg.get("holdout_seed") or 0))


def _set_aside_untouched(records: list[Record], official_split: dict[str, str] | None,
                         ds_cfg) -> tuple[list[Record], list[Record]]:
    """``dataset.untouched_list``'s images -> split "untouched", taken out before the split and
    the holdout are chosen: (the rest, the untouched). They must be train images of the
    dataset's own split (val and test are held out already), and not in holdout_list."""
    path = ds_cfg.get("untouched_list")
    if not path:
        return records, []
    own = official_split or {}
    train = [r for r in records if own.get(r.id, r.split) == "train"]
    ids = listed_holdout(train, path, key="dataset.untouched_list")
    held = ds_cfg.get("holdout_list")
    both = ids & listed_holdout(train, held) if held else set()
    if both:
        raise DatasetError(f"dataset.untouched_list={path} and dataset.holdout_list={held} "
                           f"share {len(both)} image(s), e.g. {sorted(both)[0]!r}: the untouched "
                           f"block must be apart from the block choices are made on.")
    return ([r for r in records if r.id not in ids],
            [replace(r, split=UNTOUCHED) for r in records if r.id in ids])


def listed_holdout(records: list[Record], path, key: str = "dataset.holdout_list") -> set[str]:
    """``dataset.holdout_list`` (or ``key``): the ids of ``records`` named in the file (one
    image file name or id per line, ``#`` comments; a relative path is from the project root).
    Every listed name must be one of ``records`` (the train images), or one DatasetError names
    the first."""
    file = Path(str(path)).expanduser()
    if not file.is_absolute() and not file.exists():
        file = Path(__file__).resolve().parents[2] / file
    if not file.is_file():
        raise DatasetError(f"{key}={path}: no such file. Give a file of image "
                           f"names, one per line (e.g. experiments/ucm_holdout.txt).")
    names = [line.split("#", 1)[0].strip() for line in file.read_text().splitlines()]
    names = [n for n in names if n]
    by_name = {}
    for r in records:
        by_name[r.id] = by_name[Path(r.image).name] = r.id
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise DatasetError(f"{key}={path} names {len(unknown)} image(s) that are "
                           f"not train images of this dataset, e.g. {unknown[0]!r}: list train "
                           f"images only (val and test are already held out).")
    return {by_name[n] for n in names}


def _random_split(records: list[Record], ds_cfg, seed: int) -> list[Record]:
    """``dataset.split=random``: val and test follow the run's seed, so the holdout is chosen
    first, among all images (``holdout_seed``): every seed holds out the same images. Its size
    counts the train images the fractions leave; val and test keep their sizes."""
    vf, tf_, n = ds_cfg.val_fraction, ds_cfg.test_fraction, len(records)
    held = _held_ids(records, ds_cfg, n - round(n * vf) - round(n * tf_))
    split_of = {r.id: r.split for r in assign_random_split(
        [r for r in records if r.id not in held], vf, tf_, seed, of=n)}
    return [replace(r, split=split_of.get(r.id, HOLDOUT)) for r in records]


def _with(cfg, **updates):
    from omegaconf import OmegaConf

    out = OmegaConf.to_container(cfg, resolve=True)
    out.update(updates)
    return OmegaConf.create(out)


def _final_fit(splits: dict, cfg, report) -> None:
    """The final fit: ``dataset.train_on_val`` / ``train_on_holdout`` train on those images as
    well. They stay in their splits so the loop and its logs run unchanged; their scores are
    then not held-out scores (the untouched block, ``dataset.untouched_list``, never joins)."""
    trained = {split: key for split, key in (("val", "train_on_val"),
                                             (HOLDOUT, "train_on_holdout"))
               if cfg.dataset.get(key) and splits.get(split)}
    held = " or ".join(s for s in (HOLDOUT, "test", UNTOUCHED)
                       if splits.get(s) and s not in trained) or "none (no split is held out)"
    for split, key in trained.items():
        splits["train"] = splits["train"] + [replace(r, split="train") for r in splits[split]]
        report.notes.append(f"dataset.{key}=true: the {split} images were trained on too (the "
                            f"final fit), so {split} scores overstate; read {held}")
    select = cfg.get("callbacks", {}).get("checkpoints", {}).get("select", "best")
    if cfg.dataset.get("train_on_val") and select == "best":
        report.notes.append("callbacks.checkpoints.select=best picks its epoch on val, which "
                            "is trained on here: prefer select=last or select=mean:A-B "
                            "(the last epochs' mean), as experiment=ucm_scratch does")


def build_data(cfg, progress: bool = True, vocab: Vocabulary | None = None) -> CaptionData:
    """The whole data side of a run, from the composed config."""
    text = cfg.text
    check_values({"text.seq_len": text.seq_len})
    splits, report = load_records(cfg.dataset, cfg.seed, progress)
    _final_fit(splits, cfg, report)
    # The length rule cleans the training captions only: val/test/holdout keep every reference,
    # as the metrics of the literature are computed against all of them.
    punct = str(text.get("punctuation", "space"))
    splits["train"], removed = _clean_train(splits["train"], text, punct)
    report.removed.update(removed)
    for s in ("val", "test", *(h for h in HELD_OUT if h in splits)):
        splits[s] = [r for r in splits[s] if any(normalize(c, punct) for c in r.captions)]
    report.counts = split_counts(r for rs in splits.values() for r in rs)
    if not splits["train"]:
        raise DatasetError(f"No training images left after cleaning ({dict(report.removed)}). "
                           f"Relax text.filter / text.min_tokens / text.seq_len "
                           f"(or text.filter=truncate).")
    if not splits["val"]:
        raise DatasetError("The validation split is empty. Use more images (dataset.max_images) or "
                           "a larger dataset.val_fraction.")
    per_image = int(cfg.dataset.captions_per_image)
    if vocab is None:       # learned from the captions training uses: each image's first C
        vocab = Vocabulary.build(
            [wrap(normalize(c, punct)) for r in splits["train"] for c in r.captions[:per_image]],
            text.vocab_size, text.seq_len, int(text.get("min_count", 1)))
    classes = None
    if float(cfg.trainer.get("class_loss", 0.0)) and cfg.dataset.get("classes"):
        label = labeller(str(cfg.dataset.classes))
        classes = {r.id: label(r.id) for rs in splits.values() for r in rs}
    return CaptionData(splits=splits, vocab=vocab, report=report, captions_per_image=per_image,
                       image_size=int(cfg.backbone.image_size), punctuation=punct,
                       classes=classes)


def _clean_train(train: list[Record], text, punct: str):
    """The length rule (``text.filter``, ``min_tokens``, ``seq_len``, ``length_counts``) on the
    training records: (records with the captions kept, in their order, {what: count removed}).
    A kept caption is the raw one, or its normalised, truncated words (``filter=truncate``)."""
    normalised = [[normalize(c, punct) for c in r.captions] for r in train]   # once per caption
    raw = None
    if text.get("length_counts", "words") == "raw":                  # recipe A's count
        raw = [[len(c.split()) for c in r.captions] for r in train]
    kept, removed = filter_indexed(normalised, text.filter, text.min_tokens, text.seq_len, raw)
    cleaned = []
    for r, norm, caps in zip(train, normalised, kept, strict=True):
        captions = tuple(r.captions[j] if c == norm[j] else c for j, c in caps)
        if captions:
            cleaned.append(replace(r, captions=captions))
    return cleaned, removed
