"""The self-critical phase (``trainer.scst_epochs``).

After the cross-entropy epochs, training continues from the best checkpoint with
self-critical sequence training: the reward is the CIDEr-D (and optionally BLEU-n) of sampled
captions (Rennie et al., 2017), each sample's baseline the mean reward of the image's other
samples (Luo, 2020), at a constant learning rate, with the same callbacks (validation captions,
checkpoint selection, resume state, time budget). Where the phase stands is in the RunState:
``state.scst_from`` is the number of epochs before it, and survives a resume.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import OmegaConf

from captioning.training.optim import reset_ema, set_constant_learning_rate, uses_schedule

# A self-critical epoch costs about 2.5 cross-entropy epochs (K samples per image, all
# references): the phase starts only if one such epoch fits in what is left of the budget.
EPOCH_COST = 2.5


def self_critical(cfg, data, model, val_ds, cbs, state) -> None:
    """Run (or, after a resume inside it, finish) the phase; a no-op when scst_epochs is 0."""
    from captioning.console import console
    from captioning.training.debug import limit_train, validation_freq

    epochs = int(cfg.trainer.get("scst_epochs", 0))
    if not epochs:
        return
    fresh = state.scst_from is None
    if fresh and not _start(cfg, model, cbs, state):
        return
    end = state.scst_from + epochs
    start = state.scst_from if fresh else state.epoch
    if start >= end:
        return
    reward = _enable(cfg, data, model)
    t = cfg.trainer
    console.rule(f"Self-critical training (reward {reward}, {int(t.scst_samples)} samples per "
                 f"image, epochs {start + 1}-{end}, learning rate {float(t.scst_learning_rate):g})")
    train_all, steps = limit_train(cfg, data,  # every reference; limit_train_batches applies
                                   data.train_dataset(int(t.batch_size), int(cfg.seed) + 1))
    model.fit(train_all, validation_data=val_ds, epochs=end, callbacks=cbs.all, verbose=cbs.verbose,
              shuffle=False, initial_epoch=start, steps_per_epoch=steps,
              validation_freq=validation_freq(cfg))


def _start(cfg, model, cbs, state) -> bool:
    """Begin the phase after the epochs done: from the best checkpoint, patience counted
    afresh (the best score carries over). False when the time budget has no room for it."""
    from captioning.console import console

    done, budget = len(cbs.history.rows), cbs.budget
    if budget is not None:
        left = budget.budget - (time.perf_counter() - budget.t0)
        if budget.stopped_epoch or left < EPOCH_COST * budget.slowest:
            console.print(f"[yellow]Self-critical training skipped:[/] the time budget "
                          f"(trainer.max_minutes) has no room for it after epoch {done}. Raise "
                          f"trainer.max_minutes or lower trainer.max_epochs to leave it time.")
            return False
    state.scst_from = done
    best = Path(cfg.paths.output_dir) / "checkpoints" / "best.weights.h5"
    if best.exists():
        model.load_weights(str(best))                      # start from the selected epoch
        reset_ema(model.optimizer)
    state.es_wait = 0                                      # only this phase's epochs count
    return True


def _enable(cfg, data, model):
    """Switch the model's train step to self-critical sampling; returns the reward."""
    from captioning.evaluation.rewards import Reward, references

    t, vocab = cfg.trainer, data.vocab
    refs = data.encode(data.splits["train"])
    reward = Reward(OmegaConf.to_container(t.scst_reward),
                    [references(image, vocab.start_id, vocab.end_id) for image in refs])

    def batch_reward(samples, captions):
        return reward.batch(samples, captions, vocab.start_id, vocab.end_id)

    model.enable_self_critical(batch_reward, int(t.scst_samples), vocab.start_id, vocab.end_id,
                               vocab.seq_len, seed=int(cfg.seed),
                               jit_compile=bool(cfg.decode.get("jit_compile", False)))
    set_constant_learning_rate(model.optimizer, float(t.scst_learning_rate), uses_schedule(cfg))
    return reward
