import pandas as pd
import pytest

from copd_lab.config_io import load_config
from copd_lab.experiment import run_comparison

SMALL = ["expert_steps=40", "distill_steps=20", "copd.rl_steps=3", "copd.opd_steps=2", "copd.cycles=8",
         "metrics.eval_every=20"]


@pytest.fixture(scope="module")
def comparison():
    return run_comparison(load_config(None, SMALL), progress=False)


def test_every_method_reports_and_budgets_are_fair(comparison):
    table = comparison.results
    expected = ["base", "expert:text", "expert:image", "expert:video", "mixed", "static_opd:image->text",
                "static_opd:text->image", "mopd", "copd", "copd[text]", "copd[image]", "copd[video]"]
    assert list(table.index) == expected
    assert table.loc["copd[text]", "steps_branch"] == table.loc["copd", "steps_branch"] == 40
    assert table.loc["mixed", "steps_branch"] == 3 * table.loc["expert:text", "steps_branch"] == 120
    assert table.loc["copd", "steps_method"] == table.loc["mixed", "steps_method"] == 120
    assert table.loc["static_opd:image->text", "steps_branch"] == 60
    assert table.loc["mopd", "steps_method"] == 120 + 20
    assert table.loc["base", ["text", "image", "video"]].between(0.2, 0.6).all()  # exact: the warm-started base


def test_rlvr_really_learns(comparison):
    m = comparison.metrics
    accuracy = m[m.metric.str.startswith("final_acc_exact/")].set_index(["branch", "metric"]).value
    for domain in ("text", "image", "video"):  # exact held-out accuracy: no sampling noise
        key = f"final_acc_exact/{domain}"
        assert accuracy[(f"expert:{domain}", key)] > accuracy[("base", key)] + 0.005


def test_tidy_rows_carry_the_gap_dynamics(comparison):
    m = comparison.metrics
    assert list(m.columns) == ["run", "method", "seed", "step", "branch", "pair", "metric", "value"]
    overlap = m[(m.method == "copd") & (m.metric == "overlap") & (m.pair == "image<-text")]
    assert len(overlap) >= 8 and overlap.value.between(0, 1).all()
    for metric in ("symmetric_kl", "entropy_gap", "student_overlap_mass", "task_vector_cosine", "grad_cosine",
                   "opd_reverse_kl", "train_reward"):
        assert (m.metric == metric).any(), metric
    opd = m[(m.method == "copd") & (m.metric == "opd_reverse_kl")]
    assert set(opd.pair) == {"text<-image", "image<-text", "text<-video", "video<-text"}


def test_same_seed_same_results_and_seeds_give_error_bars():
    cfg = load_config(None, SMALL + ["methods=['experts', 'copd']"])
    a, b = (run_comparison(cfg, progress=False).metrics for _ in range(2))
    assert a.equals(b)
    two = run_comparison(load_config(None, SMALL + ["methods=['experts']", "seeds=2"]), progress=False)
    assert set(two.metrics.seed) == {0, 1} and "text_std" in two.results
    assert "±" in two.table()


@pytest.mark.parametrize("method, others", [("copd", ["experts", "mixed"]), ("mixed", ["copd", "copd_frozen"]),
                                            ("mopd", ["mixed", "copd"])])
def test_a_methods_rows_do_not_depend_on_the_other_methods(method, others):
    """Each method draws from its own random stream and is measured on its own schedule: its rows are the same
    alone as beside other methods (mopd needs the experts either way)."""
    rows = {}
    for methods in ([method], [method] + others, others + [method]):
        m = run_comparison(load_config(None, SMALL + [f"methods={methods}"]), progress=False).metrics
        rows[tuple(methods)] = m[m.method == method].drop(columns="run").reset_index(drop=True)
    alone, *together = rows.values()
    assert len(alone) > 50
    for other in together:
        assert other.equals(alone), other.compare(alone)


def test_adaptive_schedule_opens_windows_on_low_overlap():
    cfg = load_config(None, SMALL + ["methods=['copd']", "copd.adaptive_threshold=0.95", "copd.adaptive_check_every=2"])
    m = run_comparison(cfg, progress=False).metrics
    opened = m[m.metric == "opd_window_opened"]
    assert len(opened) > 0 and (opened.value < 0.95).all()
    assert (m.metric == "opd_reverse_kl").any()
    never = load_config(None, SMALL + ["methods=['copd']", "copd.adaptive_threshold=0.01"])
    assert not (run_comparison(never, progress=False).metrics.metric == "opd_reverse_kl").any()


DOMAINS = ["text", "image", "video"]
VARIANTS = {  # what the variant changes: the OPD signal, GRPO's update, the merge, or a branch's step rate
    "topk": (["opd.estimator='topk'", "opd.topk=4"], "opd"),
    "full": (["opd.estimator='full'"], "opd"),
    "grpo": (["grpo.kl_coef=0.1", "grpo.epochs=2", "grpo.aggregation='seq_mean_token_mean'"], "grpo"),
    "ties": (["merge.method='ties'"], "merge"),
    "rates": (["copd.step_rates={video = 0.5}"], "rates"),
}


@pytest.fixture(scope="module")
def default_copd():
    return run_comparison(load_config(None, SMALL + ["methods=['copd', 'copd_frozen']"]), progress=False)


def rewards(result, ticks: range) -> pd.Series:
    m = result.metrics
    rows = m[(m.method == "copd") & (m.metric == "train_reward") & m.step.isin(ticks)]
    return rows.set_index(["step", "branch"]).value.sort_index()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_changes_its_rows_and_only_where_it_must(default_copd, variant):
    extra, what = VARIANTS[variant]
    result = run_comparison(load_config(None, SMALL + ["methods=['copd', 'copd_frozen']"] + extra), progress=False)
    merged, default_merged = result.results.loc["copd", DOMAINS], default_copd.results.loc["copd", DOMAINS]
    assert not merged.equals(default_merged)  # every variant changes the merged model
    branches = [f"copd[{d}]" for d in DOMAINS]
    first_phase = range(3)  # copd.rl_steps = 3: Phase I of the first cycle
    if what == "opd":  # Phase I is GRPO alone: the same until the first OPD step
        pd.testing.assert_series_equal(rewards(result, first_phase), rewards(default_copd, first_phase))
        assert not rewards(result, range(3, 40)).equals(rewards(default_copd, range(3, 40)))
    elif what == "grpo":  # tick 0's reward is of rollouts sampled before any update; the update itself differs
        pd.testing.assert_series_equal(rewards(result, range(1)), rewards(default_copd, range(1)))
        assert not rewards(result, range(1, 3)).equals(rewards(default_copd, range(1, 3)))
    elif what == "merge":  # the branches train as before; only their merge differs
        pd.testing.assert_frame_equal(result.results.loc[branches, DOMAINS],
                                      default_copd.results.loc[branches, DOMAINS])
        pd.testing.assert_series_equal(rewards(result, range(40)), rewards(default_copd, range(40)))
    else:  # the video branch steps on every other tick of a stage (1 of Phase I's 3, 1 of Phase II's 2), the others
        steps = result.metrics[(result.metrics.method == "copd") & (result.metrics.metric == "steps")]
        assert steps.set_index("branch").value.to_dict() == {"text": 40.0, "image": 40.0, "video": 16.0}
        video = rewards(result, range(40)).xs("video", level="branch")
        assert list(video.index) == [5 * cycle + tick for cycle in range(8) for tick in (1, 4)]
