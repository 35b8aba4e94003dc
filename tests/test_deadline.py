"""train.fit_to_deadline: the step-to-schedule map, when to re-plan, and a run whose length is re-planned."""

import csv
from itertools import pairwise

import pytest
from test_train import losses, run_two_processes, tiny_config

from openjepa.checkpoint import load_checkpoint
from openjepa.errors import UserError
from openjepa.train import Trainer, pretrain
from openjepa.train.deadline import REPLAN_AT, RESERVE, DeadlinePlanner, ScheduleFit
from openjepa.train.runtime import setup_runtime


# -- the map from steps to schedule positions ----------------------------------------------------------------------
def test_a_fresh_fit_is_the_identity_when_the_guess_is_the_schedule():
    fit = ScheduleFit(100, 100.0)
    assert [fit.position(s) for s in (0, 1, 50, 100)] == [0.0, 1.0, 50.0, 100.0]
    assert fit.position(150) == 100.0  # held at the end, like the schedules themselves


@pytest.mark.parametrize("new_end", [60, 100, 250])
def test_replan_keeps_the_past_and_ends_the_schedules_at_the_new_end(new_end):
    fit = ScheduleFit(100, 100.0)
    before = [fit.position(s) for s in range(21)]
    refit = fit.replan(20, new_end)
    assert [refit.position(s) for s in range(21)] == before
    assert refit.position(new_end) == pytest.approx(100.0)
    assert refit.position(new_end - 1) < 100.0
    steps = [refit.position(s) for s in range(new_end + 1)]
    assert all(b > a for a, b in pairwise(steps))  # still advancing, no jump back
    rate = (100.0 - 20.0) / (new_end - 20)
    assert refit.position(21) - refit.position(20) == pytest.approx(rate)


def test_later_replans_keep_earlier_knots_and_survive_a_round_trip():
    fit = ScheduleFit(100, 100.0).replan(10, 200).replan(50, 80)
    assert fit.position(10) == pytest.approx(10.0)
    assert fit.position(50) == pytest.approx(10.0 + 40 * 90 / 190)
    assert fit.position(80) == pytest.approx(100.0)
    again = ScheduleFit.from_state(fit.state_dict())
    assert [again.position(s) for s in range(90)] == [fit.position(s) for s in range(90)]


def test_replan_never_ends_before_the_next_step():
    assert ScheduleFit(100, 100.0).replan(40, 10).end_step == 41


def test_a_resumed_run_starts_its_map_where_it_stands():
    fit = ScheduleFit.starting_at(30, 100, 200.0)
    assert fit.position(30) == 30.0 and fit.position(100) == pytest.approx(200.0)


# -- when to re-plan, and how long the run becomes ---------------------------------------------------------------------
def test_planner_is_due_at_each_share_of_the_budget_once():
    planner = DeadlinePlanner(max_minutes=10, started=0.0, first_step=0)
    first = REPLAN_AT[0] * 600
    assert not planner.due(now=first - 0.1) and planner.due(now=first)
    planner.advance(now=first)
    assert not planner.due(now=first + 0.1)
    planner.advance(now=0.55 * 600)  # a long pause passes several shares: one re-plan for them
    assert REPLAN_AT[planner.next] == 0.6 and not planner.due(now=0.55 * 600)
    planner.advance(now=600)
    assert not planner.due(now=10_000)


def test_steps_that_fit_follow_the_measured_speed_and_keep_the_reserve():
    # resumed at step 40; the clock started at 100 s, the loop 10 s later (the baseline monitor run: 10 s)
    planner = DeadlinePlanner(max_minutes=10, started=100.0, first_step=40, loop_started=110.0, end_s=10.0)
    # 60 steps in 60 s: 1 s per step; 600 s - the reserve - the 70 s gone are left
    assert planner.seconds_per_step(100, now=170.0) == pytest.approx(1.0)
    assert planner.steps_that_fit(100, now=170.0) == 100 + int(600 - (RESERVE * 600 + 10) - 70)
    assert planner.steps_that_fit(40, now=110.0) == 41  # no step measured yet
    assert planner.steps_that_fit(100, now=100.0 + 600) == 101  # past the deadline: at least one step


# -- a fitted run ----------------------------------------------------------------------------------------------------
def _rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def replan_to(monkeypatch):
    """Make the run re-plan once, after its third step, to end after ``steps`` steps (the clock is not used)."""
    def patch(steps: int) -> None:
        calls = {"n": 0}

        def due(self, now=None):
            calls["n"] += 1
            return calls["n"] == 3

        monkeypatch.setattr(DeadlinePlanner, "due", due)
        monkeypatch.setattr(DeadlinePlanner, "steps_that_fit", lambda self, step, now=None: steps)
    return patch


@pytest.mark.parametrize("end", [10, 24])
def test_a_fitted_run_ends_where_it_was_replanned_with_its_schedules_complete(tmp_path, replan_to, end):
    """16 steps guessed (2 epochs of 8), re-planned after step 3 to 10 steps (shorter) or 24 (a third epoch,
    beyond the recipe's epochs); the schedules follow the map and end with the run."""
    replan_to(end)
    run = tmp_path / "run"
    cfg = tiny_config(run, "data.batch_size=16", "train.max_minutes=30", "train.fit_to_deadline=true")
    result = pretrain(cfg)
    assert result.stop_reason == "completed" and result.position.global_step == end
    assert result.schedule_fit["end_step"] == end and [r["step"] for r in result.schedule_fit["replans"]] == [3]
    state = load_checkpoint(run / "jepa-latest.pth.tar")
    assert state["step"] == end
    fit = ScheduleFit.from_state(state["schedule_fit"])
    assert fit.position(end) == pytest.approx(16.0)
    rows = _rows(run)
    assert [int(r["step"]) for r in rows] == list(range(1, end + 1))
    trainer_schedules = Trainer(cfg, setup_runtime("cpu", "fp32"), overwrite=True).schedules
    for row in rows:
        lr, wd, momentum = trainer_schedules.at(fit.position(int(row["step"]) - 1))
        assert float(row["lr"]) == pytest.approx(lr, rel=1e-5) and float(row["wd"]) == pytest.approx(wd, rel=1e-5)
        assert float(row["momentum"]) == pytest.approx(momentum, rel=1e-6)
    assert trainer_schedules.at(fit.position(end))[0] == pytest.approx(cfg.optim.final_lr)
    assert float(rows[-1]["lr"]) < 0.2 * cfg.optim.lr  # the last step near the end of the cosine, not half-way


def test_a_fitted_run_resumes_on_its_map(tmp_path, replan_to):
    replan_to(10)
    run = tmp_path / "run"
    pretrain(tiny_config(run, "data.batch_size=16", "train.max_minutes=30", "train.fit_to_deadline=true"))
    saved = ScheduleFit.from_state(load_checkpoint(run / "jepa-latest.pth.tar")["schedule_fit"])
    trainer = Trainer(tiny_config(run, "data.batch_size=16"), setup_runtime("cpu", "fp32"),
                      resume=run / "jepa-latest.pth.tar")
    assert trainer.length.fit == saved and trainer.length.steps == 10
    assert trainer.run().position.global_step == 10  # already at its end: no step taken


def test_fit_to_deadline_needs_a_deadline(tmp_path):
    with pytest.raises(UserError, match="train.max_minutes"):
        pretrain(tiny_config(tmp_path / "run", "train.fit_to_deadline=true"))


def test_fine_tuning_refuses_fit_to_deadline(tmp_path):
    from openjepa.finetune import FinetuneConfig, FineTuner

    cfg = FinetuneConfig()
    cfg.train.fit_to_deadline, cfg.train.max_minutes, cfg.train.out_dir = True, 5.0, str(tmp_path / "ft")
    with pytest.raises(UserError, match="pretraining setting"):
        FineTuner(cfg, setup_runtime("cpu", "fp32"))


def test_two_processes_agree_on_the_fitted_length(tmp_path):
    """Under torchrun every process re-plans at the same step and takes the same (shortest) length: a 3-second
    budget stretches the 16-step guess to whatever fits, and both processes stop together (a disagreement would
    leave one waiting in the next all-reduce). The run's checkpoint and metrics agree with the fit."""
    run = tmp_path / "run"
    run_two_processes(run, "data.batch_size=8", "train.max_minutes=0.05", "train.fit_to_deadline=true")
    state = load_checkpoint(run / "jepa-latest.pth.tar")
    fit = ScheduleFit.from_state(state["schedule_fit"])
    assert len(fit.knots) >= 3  # the start and at least two re-plans
    assert state["step"] <= fit.end_step and [s for s, _ in losses(run)] == list(range(1, state["step"] + 1))
