"""Attention maps: a trained model's maps localise the shapes the synthetic captions name, and
they reach Comet.

The synthetic scenes put each shape in a known cell of a 3x3 grid. For a generated word that
names exactly one shape of its scene (its colour, or its kind), the word's attention map, laid
over the image, should weigh that shape's cell more than the rest of the image.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from captioning.data import synthetic
from tests.conftest import compose_config

# The words that name a shape's kind ("plus sign" -> "plus"), and the colour words.
KIND_WORDS = {w.split()[0]: kind for kind, words in synthetic.SHAPES.items() for w in words}
COLOR_WORDS = set(synthetic.COLORS)


def scene(index: int, seed: int) -> list[synthetic.Shape]:
    """The shapes of synthetic image ``index``: ``synthetic.render``'s first draws, repeated
    (``test_scene_matches_the_rendered_image`` keeps the two in step)."""
    rng = random.Random(f"{seed}-{index}")
    n = rng.choice([1, 1, 2, 2, 2, 3])
    cells = rng.sample(sorted(synthetic.POSITIONS), n)
    kinds, colors = sorted(synthetic.SHAPES), sorted(synthetic.COLORS)
    return [synthetic.Shape(rng.choice(kinds), rng.choice(colors), rng.choice(["small", "large"]),
                            c)
            for c in cells]


def _index(record_id: str) -> int:
    return int(record_id.rsplit("_", 1)[1].split(".")[0])          # synth_00012.jpg -> 12


def named_shape(word: str, shapes):
    """The one shape of the scene that ``word`` names, or None (not a shape word, or several
    shapes share that colour or kind)."""
    hits = [s for s in shapes if s.color == word or KIND_WORDS.get(word) == s.kind]
    return hits[0] if len(hits) == 1 else None


def localises(grid: np.ndarray, cell: tuple[int, int], side: int = 96) -> bool:
    """Is the map's mean over the shape's cell above its mean over the rest of the image?"""
    from captioning.models.attention import upsample

    heat = upsample(grid, (side, side))
    inside = np.zeros_like(heat, bool)
    r, c = cell
    inside[r * side // 3:(r + 1) * side // 3, c * side // 3:(c + 1) * side // 3] = True
    return float(heat[inside].mean()) > float(heat[~inside].mean())


def localisation(records, maps, seed: int) -> tuple[float, int, int]:
    """(fraction of images whose shape words mostly localise, images counted, words counted).
    An image counts when its caption has at least one word naming exactly one of its shapes."""
    good = images = words = 0
    for r, m in zip(records, maps, strict=True):
        shapes = scene(_index(r.id), seed)
        votes = [localises(grid, s.cell) for w, grid in zip(m.words, m.maps, strict=True)
                 if (s := named_shape(w, shapes)) is not None]
        if votes:
            images, words = images + 1, words + len(votes)
            good += sum(votes) > len(votes) / 2
    return good / max(images, 1), images, words


def test_scene_matches_the_rendered_image():
    """Each shape's centre pixel has the shape's colour (the scene and the rendering agree)."""
    for index in range(30):
        pixels, _ = synthetic.render(index, 0, 96)
        for s in scene(index, 0):
            cy, cx = ((np.array(s.cell) * 2 + 1) / 6 * 96).astype(int)
            colour = np.asarray(synthetic.COLORS[s.color], float)
            assert np.abs(pixels[cy, cx].astype(float) - colour).max() <= 45, (index, s)


def test_localisation_counts_only_words_naming_one_shape():
    from captioning.models.attention import WordMaps

    class R:
        id = "synth_00000.jpg"

    shapes = scene(0, 0)
    target = shapes[0]
    grid = np.zeros((3, 3), np.float32)
    grid[target.cell] = 1.0
    words = [target.color, "a", "nonsense"]
    good = localisation([R()], [WordMaps(words, np.stack([grid] * 3))], 0)
    flat = localisation([R()], [WordMaps(words, np.ones((3, 3, 3), np.float32))], 0)
    assert good == (1.0, 1, 1) and flat == (0.0, 1, 1)
    assert compose_config("debug=tiny").callbacks.kangas.attention is True


@pytest.mark.parametrize("word,expected", [("plus", "cross"), ("box", "square")])
def test_kind_words_are_the_synthetic_synonyms(word, expected):
    assert KIND_WORDS[word] == expected


# The cheapest setting found where a trained model clearly localises (see the report in
# test_trained_attention_localises_the_named_shapes): synthetic scenes at 48 pixels, a 3x3 grid
# of image tokens (one per scene cell), a small Transformer, a few epochs.
LOCALISE = ("logger=none", "dataset.num_images=400", "backbone.image_size=48", "decoder.dim=64",
            "trainer.batch_size=16")
EPOCHS = 3


@pytest.fixture(scope="module")
def localising_model():
    """A model trained on the synthetic scenes (Keras fit, no final scoring), its data, and
    every image of the dataset captioned greedily."""
    import keras

    from captioning.data.datamodule import build_data
    from captioning.models.build import build_model
    from captioning.models.decoding import Generator, caption_records
    from captioning.training.runtime import prepare_runtime

    cfg = compose_config(*LOCALISE)
    prepare_runtime(cfg)
    data = build_data(cfg)
    model = build_model(cfg, data.vocab.size)
    model.compile(optimizer=keras.optimizers.Adam(float(cfg.trainer.learning_rate)))
    model.fit(data.train_dataset(int(cfg.trainer.batch_size), int(cfg.seed)), epochs=EPOCHS,
              verbose=0, shuffle=False)                  # the dataset shuffles itself
    records = data.splits["val"] + data.splits["test"] + data.splits["train"]
    captions = caption_records(Generator.from_config(model, data.vocab, cfg.decode), data,
                               records, 64)
    return cfg, data, model, records, captions


def test_trained_attention_localises_the_named_shapes(localising_model):
    """For most images the attention of the words naming a shape falls on that shape's cell;
    the same model and words with the image blanked out (attention that cannot depend on the
    image) fail the same check."""
    from captioning.models.attention import word_maps

    cfg, data, model, records, captions = localising_model
    seed = int(cfg.dataset.seed)
    trained = localisation(records, word_maps(model, data, records, captions, 64), seed)
    model.blind = True                                  # the backbone sees blank images
    try:
        blank = localisation(records, word_maps(model, data, records, captions, 64), seed)
    finally:
        model.blind = False
    print(f"\nattention localisation (images, words counted): trained {trained}, "
          f"blank image {blank}")
    assert trained[1] >= 100                            # enough images name a shape
    assert trained[0] > 0.6 and blank[0] < 0.5 and trained[0] > blank[0] + 0.2


def test_attention_plots_go_to_comet(localising_model, tmp_path):
    """The end of a run logs a few attention plots to Comet as images (offline archive here)."""
    import json
    import zipfile

    from captioning.models.attention import log_attention_images
    from captioning.tracking.comet import CometLogger

    cfg, data, model, records, captions = localising_model
    cfg = compose_config(*LOCALISE[1:], "logger=comet", "logger.online=false",
                         f"logger.offline_directory={tmp_path}/comet",
                         f"paths.output_dir={tmp_path}")
    tracker = CometLogger(cfg, tmp_path)
    log_attention_images(model, data, records[:2], captions[:2], -1, tmp_path / "attention",
                         tracker)
    archive = tracker.end()
    assert sorted(p.name for p in (tmp_path / "attention").glob("*.png")) == sorted(
        f"{r.id.rsplit('.', 1)[0]}.png" for r in records[:2])
    with zipfile.ZipFile(archive) as z:
        messages = [json.loads(x) for x in z.read("messages.json").decode().splitlines()]
    uploads = [m["payload"]["additional_params"] for m in messages if m["type"] == "file_upload"]
    names = {u.get("fileName") or u.get("figName") for u in uploads}
    assert {f"attention/{r.id.rsplit('.', 1)[0]}" for r in records[:2]} <= names
