"""The simulator's mechanisms show their signatures' signs on small budgets (the full table: benchmarks/)."""

import math

import numpy as np
import pytest

from copd_lab.config_io import load_config
from copd_lab.experiment import run_comparison
from copd_lab.studies import mechanisms as mech

SMALL = ["expert_steps=60", "distill_steps=30", "copd.rl_steps=3", "copd.opd_steps=2", "copd.cycles=12",
         "metrics.gap_every=20", "metrics.eval_every=1000"]


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, SMALL)


def test_drift_styles_make_experts_drift_apart(cfg):
    on, off = mech.drift(cfg), mech.drift(mech.with_sim(cfg, styles=1))
    assert on["overlap_drop"] > 0.1 and on["kl_growth"] > 3  # 60 steps (the defaults' 200: see the benchmark)
    assert on["kl_last"] > 1.5 * off["kl_last"]  # one style: the experts differ only in their digits


def test_conflict_turns_the_gradient_cosine_negative_and_hurts_mixed_rlvr(cfg):
    off = mech.base_gradient_cosine(mech.with_sim(cfg, shared_skill=0.0, conflict=0.0))
    high = mech.base_gradient_cosine(mech.with_sim(cfg, shared_skill=0.0, conflict=1.0))
    assert abs(off) < 0.1 and high < -0.2
    mild, strong = (mech.mixed_deficit(mech.with_sim(cfg, conflict=c))["worst_deficit"] for c in (0.0, 0.5))
    assert strong > mild + 5


def test_shared_skill_transfers_to_the_other_domains(cfg):
    none, shared = (mech.transfer(mech.with_sim(cfg, shared_skill=s, conflict=0.0)) for s in (0.0, 1.0))
    assert shared["off_gain"] > none["off_gain"] + 2 and shared["own_gain"] > 0


def test_the_absorption_pilot_spans_a_wide_overlap_range(cfg):
    pilot = mech.absorption(cfg, student_steps=(30, 120), temperatures=(1.0,))
    assert len(pilot) == 1 + 3 * 2 + 3 and pilot.overlap.max() - pilot.overlap.min() > 0.25
    assert np.isfinite(pilot.gain).all() and math.isfinite(mech.fit(pilot.overlap, pilot.gain)["r"])


def test_merge_damage_reports_the_branches_distance(cfg):
    out = mech.merge_damage(cfg)
    assert math.isfinite(out["damage"]) and out["branch_kl"] > 0


def test_fit_matches_the_formulas_by_hand():
    x, y = [0.1, 0.4, 0.5, 0.9, float("nan")], [1.0, 2.5, 2.0, 4.0, 3.0]
    got = mech.fit(x, y)
    xs, ys = x[:4], y[:4]  # the NaN pair is left out
    mx, my = sum(xs) / 4, sum(ys) / 4
    sxy = sum((a - mx) * (b - my) for a, b in zip(xs, ys))
    sxx, syy = sum((a - mx) ** 2 for a in xs), sum((b - my) ** 2 for b in ys)
    assert got["n"] == 4 and abs(got["slope"] - sxy / sxx) < 1e-9
    assert abs(got["intercept"] - (my - sxy / sxx * mx)) < 1e-9 and abs(got["r"] - sxy / math.sqrt(sxx * syy)) < 1e-9


def test_at_defaults_five_seeds_agree_within_three_points_and_updates_stay_small():
    """Issue 10's precision and update-size requirements at the default comparison (exact held-out accuracy)."""
    results = run_comparison(load_config(None, ["seeds=5"]), progress=False).results
    assert (results["overall_std"] <= 0.03).all(), results["overall_std"]
    assert mech.task_vector_ratio(load_config(None, [])) <= 0.3
