"""Caption a split, score it, write its predictions: what the end of training and ``eval.py``
both do.

``evaluate(model, data, split, cfg)`` gives the split's loss, accuracy and COCO scores, its
captions and the per-image scores; ``write_predictions`` writes ``predictions*.csv``;
``final_evaluation`` is the end of a training run (val, test and holdout, the final Kangas
grid, a few captioned images to Comet).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from captioning.console import print_samples
from captioning.evaluation.consensus import consensus_records, training_vote
from captioning.evaluation.metrics import score
from captioning.io import atomic_write_text
from captioning.models.attention import grid_maps, log_attention_images
from captioning.models.decoding import Generator, sample_records
from captioning.tracking.kangas_grids import pick_rows, write_grid


@dataclass
class SplitResult:
    """One split, evaluated: ``summary`` is what metrics.json holds for it."""

    records: list
    predictions: list[str]
    summary: dict                                  # loss, accuracy and the corpus scores
    per_image: dict = field(default_factory=dict)  # image id -> {"bleu_4": .., "cider": ..}
    notes: list[str] = field(default_factory=list)
    # decode.num_captions > 1: every record's N captions (the first is ``predictions``)
    samples: list[list[str]] | None = None


def evaluate_split(model, data, records, cfg, seed: int | None = None, generator=None,
                   samples: list | None = None, vote=None):
    """Caption ``records`` with the configured decoding and score them; returns (scores,
    predictions). Pass one ``generator`` for several splits: its compiled graph is reused.
    With ``decode.num_captions=N`` > 1, ``samples`` (a list) receives each record's N captions;
    the first of each is the prediction that is scored. With ``decode.rerank=consensus`` the
    beams are voted on by the training images (``vote``: built here when not given)."""
    generator = generator or Generator.from_config(model, data.vocab, cfg.decode, seed=seed)
    n, batch = int(cfg.decode.get("num_captions", 1)), int(cfg.evaluation.batch_size)
    rerank = cfg.decode.get("rerank", "none") == "consensus"
    if rerank:
        vote = vote or consensus_vote(generator, model, data, cfg)
        preds = consensus_records(generator, data, records, vote, batch,
                                  str(cfg.decode.rerank_views))
    else:
        drawn = sample_records(generator, data, records, batch, n)
        preds = [caps[0] for caps in drawn]
        if samples is not None and n > 1:
            samples[:] = drawn
    meteor = bool(cfg.evaluation.meteor)
    scores = score({r.id: list(r.captions) for r in records},
                   {r.id: p for r, p in zip(records, preds, strict=True)},
                   spice=bool(cfg.evaluation.spice), meteor=meteor)
    if not meteor:
        scores.notes.append("METEOR skipped (evaluation.meteor=false)")
    if rerank:
        scores.notes.append(consensus_note(cfg.decode))
    return scores, preds


def consensus_vote(generator, model, data, cfg):
    """With ``decode.rerank=consensus``: the training images' vote, after checking the
    generator can give it beams (before the training set is encoded); else None."""
    if cfg.decode.get("rerank", "none") != "consensus":
        return None
    generator.check_rerank(int(cfg.decode.get("num_captions", 1)))
    return training_vote(model, data, cfg.decode, int(cfg.evaluation.batch_size))


def consensus_note(decode_cfg) -> str:
    return (f"captions: each image's {decode_cfg.beam_size} beams reranked by consensus with the "
            f"captions of its {decode_cfg.rerank_neighbours} nearest training images "
            f"(decode.rerank=consensus, views: {decode_cfg.rerank_views})")


def evaluate(model, data, split: str, cfg, seed: int | None = None, generator=None,
             vote=None) -> SplitResult:
    """The split's masked loss and accuracy (teacher forcing) and its generated captions' scores."""
    records = data.splits[split]
    ds = data.train_dataset(int(cfg.evaluation.batch_size), int(cfg.seed), split=split,
                            shuffle=False)
    loss = model.evaluate(ds, verbose=0, return_dict=True,
                          steps=data.steps(split, int(cfg.evaluation.batch_size)))
    samples: list = []
    scores, preds = evaluate_split(model, data, records, cfg, seed=seed, generator=generator,
                                   samples=samples, vote=vote)
    summary = {"loss": float(loss["loss"]), "accuracy": float(loss["accuracy"]), **scores.corpus}
    return SplitResult(records, preds, summary, scores.per_image, list(scores.notes),
                       samples or None)


def write_predictions(path: Path, records, predictions: list[str], per_image: dict,
                      samples: list[list[str]] | None = None) -> None:
    """``predictions*.csv``, one row per image: image, references (joined by " | "),
    prediction, BLEU-4, CIDEr (of the prediction). With ``samples`` (``decode.num_captions=N``
    > 1) the columns prediction_2 .. prediction_N follow: the image's other sampled captions
    (``prediction`` is the first, the one scored)."""
    n = max((len(c) for c in samples), default=1) if samples else 1
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", "references", "prediction", "bleu_4", "cider",
                *(f"prediction_{i}" for i in range(2, n + 1))])
    for i, (r, p) in enumerate(zip(records, predictions, strict=True)):
        s = per_image.get(r.id, {})
        more = list(samples[i][1:]) + [""] * (n - len(samples[i])) if samples else []
        w.writerow([r.id, " | ".join(r.captions), p, f"{s.get('bleu_4', 0):.4f}",
                    f"{s.get('cider', 0):.4f}", *more])
    atomic_write_text(path, buf.getvalue())


def final_evaluation(model, data, cfg, run_dir: Path, tracker=None, best_epoch=None):
    """Val, test and holdout (``dataset.holdout``), each when the dataset has it, with
    ``decode.*``: ``predictions.csv`` / ``predictions_test.csv`` / ``predictions_holdout.csv``,
    the samples printed, the final Kangas grid and a few captioned images to Comet (val's).
    Returns ({split: summary}, notes)."""
    generator = Generator.from_config(model, data.vocab, cfg.decode, seed=int(cfg.seed))
    # decode.rerank=consensus: the training images are encoded once for every split
    vote = consensus_vote(generator, model, data, cfg)
    results: dict = {}
    notes: list[str] = []
    # Not "untouched": that block is scored only on request (eval.py split=untouched), so no
    # choice is ever made on its scores.
    for split in ("val", "test", "holdout"):
        if not data.splits.get(split):
            continue
        r = evaluate(model, data, split, cfg, generator=generator, vote=vote)
        results[split] = r.summary
        notes += [n for n in r.notes if n not in notes]
        name = "predictions.csv" if split == "val" else f"predictions_{split}.csv"
        write_predictions(Path(run_dir) / name, r.records, r.predictions, r.per_image,
                          r.samples)
        if split == "val":
            print_samples(r.records, r.predictions, n=int(cfg.evaluation.show))
            _review_outputs(r, cfg, run_dir, tracker, best_epoch, model, data)
    return results, notes


def _review_outputs(r: SplitResult, cfg, run_dir, tracker, best_epoch, model=None,
                    data=None) -> None:
    """The final Kangas grid (with attention maps, ``callbacks.kangas.attention``) and, with
    Comet, a few images with their captions (and their attention plots)."""
    attend = model is not None and bool(cfg.callbacks.kangas.get("attention", False))
    block = int(cfg.decode.get("attention_block", -1))
    if cfg.callbacks.kangas.enabled:
        max_rows = int(cfg.callbacks.kangas.max_rows)
        rows = {x.id for x in pick_rows(r.records, max_rows, int(cfg.seed))}
        keep = [i for i, x in enumerate(r.records) if x.id in rows]
        records, preds = [r.records[i] for i in keep], [r.predictions[i] for i in keep]
        maps = (grid_maps(model, data, records, preds, int(cfg.evaluation.batch_size), block)
                if attend else None)
        samples = [r.samples[i] for i in keep] if r.samples else None
        write_grid(run_dir, "final", records, preds, r.per_image, best_epoch, cfg, tracker, maps,
                   samples=samples)
    if tracker is not None:
        chosen = {x.id for x in pick_rows(r.records, int(cfg.logger.get("sample_images", 0)))}
        for x, p in zip(r.records, r.predictions, strict=True):
            if x.id in chosen:
                tracker.call("log_image", x.image, name=f"val/{Path(x.id).stem}",
                             metadata={"prediction": p, "references": list(x.captions)})
                tracker.call("log_text", f"{x.id}: {p}", metadata={"references": list(x.captions)})
        if attend:
            picked = [(x, p) for x, p in zip(r.records, r.predictions, strict=True)
                      if x.id in chosen]
            log_attention_images(model, data, [x for x, _ in picked], [p for _, p in picked],
                                 block, Path(run_dir) / "attention", tracker)
