"""The run's phases (training/phases.py): the one owner of every RunState change, the phase
plan, and why a run stopped."""

from __future__ import annotations

from types import SimpleNamespace

from omegaconf import OmegaConf

from captioning.training.phases import Phases, RunState

FIVE = OmegaConf.create({"max_epochs": 5})
PLAN = OmegaConf.create({"max_epochs": 30, "scst_epochs": 10})


def test_cross_entropy_phase_resumes_by_its_saved_early_stopping_state():
    assert not Phases(FIVE, RunState(epoch=2, es_wait=0)).cross_entropy_done  # patience reset
    assert Phases(FIVE, RunState(epoch=2, es_stopped_epoch=1)).cross_entropy_done  # it had ended
    assert Phases(FIVE, RunState(epoch=5)).cross_entropy_done
    assert Phases(FIVE, RunState(epoch=3, scst_from=3)).cross_entropy_done


def test_stopped_by_names_early_stopping_only_when_it_cut_a_phase_short():
    """Patience that runs out on a phase's planned last epoch did not stop anything early."""
    def ce(stopped):
        return Phases(PLAN, RunState(es_stopped_epoch=stopped))

    def scst(stopped):
        return Phases(PLAN, RunState(es_stopped_epoch=stopped, scst_from=30))

    assert ce(0).stopped_by() == "max_epochs"                    # never triggered
    assert ce(18).stopped_by() == "early stopping"              # epoch 19 of 30
    assert ce(29).stopped_by() == "max_epochs"                  # epoch 30 of 30
    assert scst(35).stopped_by() == "early stopping"            # epoch 36 of 31-40
    assert scst(39).stopped_by() == "scst_epochs"               # epoch 40, the phase's last
    assert ce(0).stopped_by(SimpleNamespace(stopped_epoch=12)) == "time budget"


def test_record_epoch_takes_the_selection_early_stopping_and_time_spent():
    phases = Phases(FIVE, RunState())
    saver = SimpleNamespace(best=0.5, best_epoch=2)
    early = SimpleNamespace(wait=1, best=float("inf"), best_epoch=1, stopped_epoch=0)
    phases.record_epoch(3, saver, early, ema_in_model=True, seconds=12.345)
    s = phases.state
    assert (s.epoch, s.best, s.best_epoch, s.es_wait, s.es_best) == (3, 0.5, 2, 1, None)
    assert s.ema_in_model and s.seconds == 12.3
    assert RunState.from_meta(s.to_meta()) == s                 # what the state file keeps


def test_self_critical_phase_begins_after_the_epochs_done_with_patience_afresh():
    phases = Phases(PLAN, RunState(epoch=24, es_wait=3, es_stopped_epoch=23))
    assert phases.self_critical_epochs() is None                # not begun
    assert phases.begin_self_critical()
    assert (phases.state.scst_from, phases.state.es_wait) == (24, 0)
    assert phases.self_critical_epochs() == (24, 34)
    assert phases.planned_end() == 34
    phases.state.epoch = 30                                     # resumed inside the phase
    assert phases.self_critical_epochs() == (30, 34)
    phases.state.epoch = 34
    assert phases.self_critical_epochs() is None                # nothing left


def test_the_time_budget_can_refuse_the_self_critical_phase(capsys):
    phases = Phases(PLAN, RunState(epoch=30))
    short = SimpleNamespace(stopped_epoch=None, slowest=10.0, seconds_left=lambda: 20.0)
    assert not phases.begin_self_critical(short)                # 2.5 x 10 s does not fit in 20
    assert phases.state.scst_from is None
    assert "Self-critical training skipped" in capsys.readouterr().out
    roomy = SimpleNamespace(stopped_epoch=None, slowest=10.0, seconds_left=lambda: 60.0)
    assert phases.begin_self_critical(roomy)


def test_restarts_are_counted_and_kept_in_the_state_file():
    phases = Phases(FIVE, RunState(epoch=2))
    phases.resumed()
    phases.resumed()
    assert RunState.from_meta(phases.state.to_meta()).restarts == 2
    assert RunState.from_meta({"epoch": 1}).restarts == 0       # a state file from before
