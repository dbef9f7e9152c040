"""copd_lab.playground.viz: the charts hold the run's own numbers (checked against the tidy rows by hand)."""

import pandas as pd
import pytest

from copd_lab.config_io import load_config
from copd_lab.experiment import run_comparison
from copd_lab.playground import viz

SMALL = ["expert_steps=12", "distill_steps=6", "copd.rl_steps=3", "copd.opd_steps=2", "copd.cycles=3",
         "metrics.eval_every=5", "metrics.gap_every=4", "seeds=2"]


@pytest.fixture(scope="module")
def run():
    return run_comparison(load_config(None, SMALL), progress=False)


def datasets(chart) -> list[pd.DataFrame]:
    return [pd.DataFrame(rows) for rows in chart.to_dict()["datasets"].values()]


def test_phase_spans_follow_the_recipe(run):
    spans = viz.phase_spans(run.recipes, "copd")
    assert list(spans.phase) == ["Phase I (RLVR)", "Phase II (RLVR + OPD)"] * 3
    assert list(spans.start) == [0, 3, 5, 8, 10, 13] and list(spans.end) == [3, 5, 8, 10, 13, 15]
    late = viz.phase_spans(run.recipes, "mopd")  # MOPD starts when the experts end
    assert late.start.iloc[0] == 12 and late.end.iloc[-1] == 18


def test_accuracy_over_steps_joins_a_branch_and_its_result_label(run):
    data = datasets(viz.accuracy_over_steps(run.metrics, run.recipes))[0]
    assert {"expert:text", "mixed", "copd", "copd[text]", "base"} <= set(data.model)
    text = data[(data.model == "expert:text") & (data.domain == "text")].sort_values("step")
    assert list(text.step) == [5, 10, 12]  # two evaluations during training, then the final one
    m = run.metrics
    final = m[(m.branch == "expert:text") & (m.metric == "final_acc_exact/text")].value.mean()
    assert abs(text.accuracy.iloc[-1] - 100 * final) < 1e-9 and data.accuracy.between(0, 100).all()


def test_gap_over_time_has_every_pair_and_the_phase_shading(run):
    tables = datasets(viz.gap_over_time(run.metrics, run.recipes, "copd"))
    lines = next(t for t in tables if "pair" in t)
    shading = next(t for t in tables if "phase" in t)
    assert {"image<-text", "text<-image", "text<-base"} <= set(lines.pair) and len(shading) == 6
    m = run.metrics
    expected = m[(m.method == "copd") & (m.metric == "overlap") & (m.pair == "image<-text") & (m.step == 8)].value
    got = lines[(lines.metric == "overlap") & (lines.pair == "image<-text") & (lines.step == 8)].value
    assert abs(got.iloc[0] - expected.mean()) < 1e-12


def test_overlap_heatmap_is_the_nearest_measurement(run):
    m = run.metrics
    steps = sorted(m[(m.method == "copd") & (m.metric == "overlap")].step.unique())
    nearest = min(steps, key=lambda s: abs(s - 6.4))
    chart = viz.overlap_heatmap(run.metrics, "copd", step=6.4)
    cells = datasets(chart)[0]
    assert chart.to_dict()["title"] == f"overlap at tick {nearest}" and cells.value.between(0, 1).all()
    assert set(cells.student) == {"text", "image", "video"} and "base" in set(cells.teacher)


def test_schedule_timeline_and_knob_map_build(run):
    bars = datasets(viz.schedule_timeline(run.recipes))[0]
    assert set(bars.method) >= {"experts", "mixed", "mopd", "copd"}
    cells = pd.DataFrame({"conflict": [0, 0.5, 0, 0.5], "habit": [0, 0, 1, 1], "copd_minus_best": [-1, 2, 0.5, -3]})
    assert len(datasets(viz.knob_map(cells, "habit", "conflict"))[0]) == 4


def test_topology_graph_draws_each_edge_with_its_mean_opd_signal(run):
    tables = datasets(viz.topology_graph(run.metrics, run.recipes, "copd"))
    edges = next(t for t in tables if "edge" in t)
    assert set(edges.edge) == {"text<-image", "image<-text", "text<-video", "video<-text"}  # the hub's edges
    m = run.metrics
    expected = m[(m.method == "copd") & (m.metric == "opd_reverse_kl") & (m.pair == "image<-text")].value.mean()
    assert abs(edges.set_index("edge").signal["image<-text"] - expected) < 1e-12
    assert len(next(t for t in tables if "branch" in t)) == 3


def test_the_timeline_marks_the_adaptive_windows_that_opened():
    small = ["methods=['copd']", "copd.rl_steps=3", "copd.opd_steps=2", "copd.cycles=3", "copd.adaptive_threshold=0.99",
             "copd.adaptive_check_every=1"]
    result = run_comparison(load_config(None, small), progress=False)
    opened = result.metrics[result.metrics.metric == "opd_window_opened"]
    assert len(opened) > 0  # at threshold 0.99 the overlap soon falls below it
    marks = next(t for t in datasets(viz.schedule_timeline(result.recipes, metrics=result.metrics)) if "edge" in t)
    assert sorted(zip(marks.step, marks.edge)) == sorted(zip(opened.step, opened.pair))


def test_the_gap_lines_and_the_phase_bands_use_separate_scales(run):
    """The bands colour by phase on the fill channel: on a colour scale shared with the lines (one per layered
    panel), the scale would hold only the phase names and the lines would draw with no colour (seen in the
    browser on 2026-12-01)."""
    spec = viz.gap_over_time(run.metrics, run.recipes, "copd").to_dict()
    for panel in spec["hconcat"]:
        bands, lines = panel["layer"]
        assert "color" not in bands["encoding"] and bands["encoding"]["fill"]["field"] == "phase"
        assert lines["mark"]["type"] == "line" and lines["encoding"]["color"]["field"] == "pair"
