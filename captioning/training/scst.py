"""The self-critical phase (``trainer.scst_epochs``).

After the cross-entropy epochs, training continues from the best checkpoint with
self-critical sequence training: the reward is the CIDEr-D (and optionally BLEU-n) of sampled
captions (Rennie et al., 2017), each sample's baseline the mean reward of the image's other
samples (Luo, 2020), at a constant learning rate, with the same callbacks (validation captions,
checkpoint selection, resume state, time budget). When the phase begins and where it stands is
``Phases``' (phases.py); this module switches the model and the optimizer over and fits.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from captioning.console import console
from captioning.evaluation.rewards import Reward, references
from captioning.models.captioner import SelfCriticalSettings
from captioning.runs.files import weights_path
from captioning.training.debug import limit_train, validation_freq
from captioning.training.optim import reset_ema, set_constant_learning_rate, uses_schedule
from captioning.training.phases import Phases


def self_critical(cfg, data, model, val_ds, cbs, phases: Phases, run_dir) -> None:
    """Run (or, after a resume inside it, finish) the phase; a no-op when scst_epochs is 0."""
    if not phases.scst_epochs:
        return
    if not phases.state.self_critical:
        if not phases.begin_self_critical(cbs.budget):
            return
        best = weights_path(run_dir, "best")
        if best.exists():
            model.load_weights(str(best))                  # start from the selected epoch
            reset_ema(model.optimizer)
    epochs = phases.self_critical_epochs()
    if epochs is None:
        return
    start, end = epochs
    reward = enable_self_critical(cfg, data, model)
    t = cfg.trainer
    console.rule(f"Self-critical training (reward {reward}, {int(t.scst_samples)} samples per "
                 f"image, epochs {start + 1}-{end}, learning rate {float(t.scst_learning_rate):g})")
    train_all, steps = limit_train(cfg, data,  # every reference; limit_train_batches applies
                                   data.train_dataset(int(t.batch_size), int(cfg.seed) + 1),
                                   passes_done=start - phases.state.scst_from)
    model.fit(train_all, validation_data=val_ds, epochs=end, callbacks=cbs.all, verbose=cbs.verbose,
              shuffle=False, initial_epoch=start, steps_per_epoch=steps,
              validation_freq=validation_freq(cfg),
              validation_steps=data.steps("val", int(cfg.evaluation.batch_size)))


def enable_self_critical(cfg, data, model) -> Reward:
    """The switch to self-critical training, in one place: the model's train step samples and
    rewards (``trainer.scst_*``), the optimizer's learning rate becomes the constant
    ``trainer.scst_learning_rate``. Returns the reward."""
    t, vocab = cfg.trainer, data.vocab
    refs = data.encode(data.splits["train"])
    reward = Reward(OmegaConf.to_container(t.scst_reward),
                    [references(image, vocab.start_id, vocab.end_id) for image in refs])

    def batch_reward(samples, captions):
        return reward.batch(samples, captions, vocab.start_id, vocab.end_id)

    model.enable_self_critical(SelfCriticalSettings(
        batch_reward, int(t.scst_samples), vocab.start_id, vocab.end_id, vocab.seq_len,
        # "auto" compiles greedy decoding only; the samples' loop needs decode.jit_compile=true
        seed=int(cfg.seed), jit_compile=cfg.decode.get("jit_compile", False) is True))
    set_constant_learning_rate(model.optimizer, float(t.scst_learning_rate), uses_schedule(cfg))
    return reward
