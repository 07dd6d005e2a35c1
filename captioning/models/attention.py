"""Attention maps: where in the image the decoder looked when it generated each word.

Both decoders expose their weights over the S image tokens (``Decoder.call`` /
``Decoder.step`` with ``return_attention=True``): the GRU decoder's dot-product attention, the
Transformer's cross-attention of one block (``decode.attention_block``, the last by default)
averaged over its heads. The maps here come from one teacher-forced pass over the caption that
was generated: at each position the decoder computes what its cached step computed while
generating (``tests/models/test_attention.py`` checks that the step and the full pass
agree), so this works after any decoding (greedy, beam, sampling) and costs nothing unless
asked for. With test-time views (``decode.tta``) the maps are those of the image itself, not
of the ensemble.

The token grid is the backbone's feature map (``h * w = S``, row-major), laid over the whole
image: images are resized, not cropped, to the square model input.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from captioning import ConfigError
from captioning.data.text import UNK


@dataclass
class WordMaps:
    """One caption's words and, per word, the attention over the token grid (n, h, w)."""

    words: list[str]
    maps: np.ndarray


def caption_ids(vocab, captions: list[str]) -> np.ndarray:
    """Generated captions (``vocab.decode``'s strings) -> (N, seq_len) ids: start, the words,
    end, padding. The words are the vocabulary's own tokens, looked up as they are (no
    normalisation), so the ids are those that were generated."""
    out = np.zeros((len(captions), vocab.seq_len), np.int32)
    unk = vocab.index[UNK]
    for i, caption in enumerate(captions):
        ids = ([vocab.start_id] + [vocab.index.get(w, unk) for w in caption.split()]
               + [vocab.end_id])[: vocab.seq_len]
        out[i, : len(ids)] = ids
    return out


def token_grid(tokens: int) -> tuple[int, int]:
    """S image tokens -> the (h, w) grid they came from (square feature maps)."""
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ConfigError(f"Attention maps need a square grid of image tokens; this model has "
                          f"{tokens}. Set callbacks.kangas.attention=false.")
    return side, side


def attention_weights(model, inputs, ids, block: int = -1) -> np.ndarray:
    """images (B, H, W, 3) or cached backbone tokens, and (B, L) caption ids starting with the
    start token -> (B, L - 1, S): row t is the attention with which ids[:, t + 1] was chosen."""
    from keras import ops

    memory = model.encode(inputs, training=False)
    try:
        _, weights = model.decoder(ops.convert_to_tensor(ids[:, :-1]), memory,
                                   return_attention=True, attention_block=block)
    except ValueError as e:
        if "attention_block" in str(e):
            raise ConfigError(f"decode.attention_block: {e}") from None
        raise
    return np.asarray(ops.convert_to_numpy(weights), np.float32)


def word_maps(model, data, records, captions: list[str], batch_size: int,
              block: int = -1) -> list[WordMaps]:
    """For each record and its generated caption: the words and their attention maps."""
    ids = caption_ids(data.vocab, captions)
    out: list[WordMaps] = []
    for inputs in data.image_dataset(records, batch_size):
        batch = ids[len(out): len(out) + int(inputs.shape[0])]
        weights = attention_weights(model, inputs, batch, block)            # (b, L-1, S)
        h, w = token_grid(weights.shape[-1])
        for caption, row in zip(captions[len(out): len(out) + len(batch)], weights, strict=True):
            words = caption.split()[: data.vocab.seq_len - 1]
            out.append(WordMaps(words, row[: len(words)].reshape(len(words), h, w)))
    return out


def upsample(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) weights -> (height, width) = ``size`` in 0..1: bilinear (pixel centres aligned),
    then scaled so the map's minimum is 0 and its maximum 1 (a flat map is all 0)."""
    from PIL import Image

    height, width = size
    big = np.asarray(Image.fromarray(grid.astype(np.float32), mode="F")
                     .resize((width, height), Image.Resampling.BILINEAR), np.float32)
    low, high = float(big.min()), float(big.max())
    return (big - low) / (high - low) if high > low else np.zeros_like(big)


def plot_words(image, words: list[str], maps: np.ndarray, path, cols: int = 4,
               title: str | None = None) -> None:
    """A PNG with one panel per word: the image with the word's attention map over it, titled
    with the word and its position (as in the TensorFlow image-captioning tutorial); ``title``
    above them all. 2.2-inch panels at 72 dpi, 256 colours: about 100-250 KB for 20 words
    (full-colour 3-inch panels were 1.2 MB)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pixels = np.asarray(image)
    n = max(len(words), 1)
    rows, cols = math.ceil(n / cols), min(cols, n)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows + (0.4 if title else 0)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (word, grid) in enumerate(zip(words, maps, strict=True)):
        ax = axes.flat[i]
        ax.imshow(pixels)
        ax.imshow(upsample(grid, pixels.shape[:2]), cmap="plasma", alpha=0.55, vmin=0, vmax=1)
        ax.set_title(f"{i + 1}. {word}", fontsize=9)
    if not words:
        axes.flat[0].imshow(pixels)
        axes.flat[0].set_title("(empty caption)")
    if title:
        fig.suptitle(title, fontsize=9, wrap=True)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    plt.close(fig)
    from PIL import Image

    buf.seek(0)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(colors=256).save(path, format="PNG", optimize=True)


def picture(path, side: int = 320):
    """The image file upright (EXIF orientation) and at most ``side`` pixels on its long side."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((side, side))
        return im


def grid_maps(model, data, records, captions, batch_size: int, block: int = -1):
    """``word_maps`` for a Kangas grid: None, with a warning, when they cannot be computed, so
    that the grid (and the end of a training run) goes on without them."""
    try:
        return word_maps(model, data, records, captions, batch_size, block)
    except Exception as e:  # noqa: BLE001 - attention maps are an extra, never the end of a run
        print(f"warning: no attention maps in the Kangas grid: {type(e).__name__}: {e}")
        return None


def log_attention_images(model, data, records, captions, block: int, folder, tracker) -> None:
    """``folder``/<image>.png (``plot_words``) for each record, each logged to Comet as an image
    (``attention/<image>``); a failure is a warning."""
    from pathlib import Path

    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for r, m in zip(records, word_maps(model, data, records, captions, 16, block),
                        strict=True):
            path = Path(folder) / f"{Path(r.id).stem}.png"
            plot_words(picture(r.image), m.words, m.maps, path)
            tracker.call("log_image", str(path), name=f"attention/{path.stem}")
    except Exception as e:  # noqa: BLE001 - a plot must not end the run
        print(f"warning: could not plot the attention maps: {type(e).__name__}: {e}")
