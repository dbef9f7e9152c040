"""The playground's knobs, URL and cached runs (copd_lab/playground/knobs.py), and the notebook as a script."""

import functools
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from copd_lab import config
from copd_lab.config import ConfigError
from copd_lab.playground import knobs as pg
from copd_lab.playground import marimo_ui as ui_elements
from copd_lab.studies import paper_checks

ROOT = Path(__file__).resolve().parents[2]


def test_knobs_round_trip_through_the_url_and_presets_apply():
    values = {**pg.DEFAULTS, "styles": 1, "beta": 0.5, "topology": "ring", "baselines": "experts,mopd"}
    query = pg.query_from_knobs(values)
    assert query == {"styles": "1", "beta": "0.5", "topology": "ring", "baselines": "experts,mopd"}
    assert pg.knobs_from_query(query) == values
    strong = pg.knobs_from_query({"preset": "strong conflict"})
    assert strong["conflict"] == 0.5 and strong["styles"] == pg.DEFAULTS["styles"]
    assert pg.knobs_from_query({"preset": "strong conflict", "conflict": "0.1"})["conflict"] == 0.1  # URL wins


@pytest.mark.parametrize("query, words", [({"styles": "many"}, ["styles", "'many'", "int"]),
                                          ({"topology": "star"}, ["topology", "'star'", "one of"]),
                                          ({"beta": "9"}, ["beta", "9.0", "[0.0, 3.0]"])])
def test_a_bad_url_value_is_refused_by_name(query, words):
    with pytest.raises(ConfigError) as info:
        pg.knobs_from_query(query)
    assert all(word in str(info.value) for word in words)


def test_every_knob_sets_its_config_field_and_every_preset_is_valid():
    values = {**pg.DEFAULTS, "branches": 4, "rl_steps": 5, "seeds": 2, "conflict": 0.3, "merge": "ties",
              "teacher": "frozen", "baselines": "mixed"}
    cfg = pg.config(values)
    assert cfg.domains == ("text", "image", "video", "d3") and cfg.copd.rl_steps == 5 and cfg.seeds == 2
    assert cfg.sim.conflict == 0.3 and cfg.merge.method == "ties" and cfg.opd.teacher == "frozen"
    assert cfg.methods == ("base", "mixed", "copd") and cfg.copd.hub == "text"
    for name, preset in pg.PRESETS.items():
        assert pg.config({**pg.DEFAULTS, **preset}).world == "sim", name
    with pytest.raises(ConfigError, match="conflict"):
        pg.config({**pg.DEFAULTS, "conflict": 0.8})  # shared_skill 0.5 + conflict 0.8 > 1


def test_field_knobs_take_default_and_options_from_the_config():
    """A knob that sets a config field repeats neither its default nor its options: both are the config's."""
    options = {"world": config.WORLDS, "copd.topology": config.TOPOLOGIES, "opd.estimator": config.OPD_ESTIMATORS,
               "opd.teacher": config.TEACHER_MODES, "opd.combine": config.COMBINE_MODES,
               "merge.method": config.MERGE_METHODS}
    defaults = config.ExperimentConfig()
    field_knobs = [knob for knob in pg.KNOBS if knob.field is not None]
    assert {knob.field for knob in field_knobs if knob.options} == set(options)
    for knob in field_knobs:
        default = functools.reduce(getattr, knob.field.split("."), defaults)
        assert knob.default == default and type(knob.default) is type(default), knob.key
        assert knob.options == options.get(knob.field, ()), knob.key
    assert pg.config({**pg.DEFAULTS, "lr": 0.05}).sim.lr == 0.05  # the simulator's lr is sim.lr


def test_identical_settings_are_not_run_again():
    values = {**pg.DEFAULTS, "cycles": 1, "baselines": "experts"}
    first = pg.run(pg.config(values))
    assert pg.run(pg.config(dict(values))) is first
    assert pg.run(pg.config({**values, "beta": 0.5})) is not first


def test_the_notebook_runs_as_a_script_and_builds_its_charts(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, str(ROOT / "notebooks" / "copd_playground.py")], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    spec = importlib.util.spec_from_file_location("copd_playground", ROOT / "notebooks" / "copd_playground.py")
    notebook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(notebook)
    _, defs = notebook.app.run()
    assert defs["result"].config.methods == ("base", "experts", "mixed", "mopd", "copd")
    m = defs["result"].metrics
    assert defs["heat_step"].value == m[(m.method == "copd") & (m.metric == "overlap")].step.max()  # the last one


def test_the_notebook_exports_to_html(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
           "HOME": str(tmp_path)}
    out = tmp_path / "playground.html"
    done = subprocess.run([sys.executable, "-m", "marimo", "export", "html", str(ROOT / "notebooks" /
                                                                                 "copd_playground.py"), "-o",
                           str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    html = out.read_text()
    assert "CoPD playground" in html and "Co-Evolving Policy Distillation" in html


def test_the_knob_map_is_copd_minus_the_best_other_method_per_cell():
    values = {**pg.DEFAULTS, "cycles": 1, "baselines": "mixed,mopd"}
    cells = pg.knob_map(values, "habit", [0.0, 1.0], "conflict", [0.0, 0.25])
    assert len(cells) == 4 and set(cells.habit) == {0.0, 1.0} and set(cells.conflict) == {0.0, 0.25}
    for cell in cells.itertuples():
        result = pg.run(pg.config({**values, "habit": cell.habit, "conflict": cell.conflict}))  # cached
        overall = result.results["overall"] * 100
        assert abs(cell.copd_minus_best - (overall["copd"] - max(overall["mixed"], overall["mopd"]))) < 1e-9


def test_branch_and_edge_knobs_reach_the_config_and_come_back_from_the_ui():
    import marimo as mo

    values = pg.knobs_from_query({"rates": "image:0.5", "edge_beta": "image<-text:0.2", "drop": "video<-text",
                                  "hub": "text"})
    cfg = pg.config(values)
    assert cfg.copd.step_rates == {"image": 0.5} and cfg.copd.beta_per_edge == {"image<-text": 0.2}
    assert cfg.copd.drop_edges == ("video<-text",) and cfg.copd.hub == "text"
    ui = ui_elements.branch_controls(mo, values).value  # the editors start at the URL's values
    assert ui["rates"] == {"text": 1.0, "image": 0.5, "video": 1.0} and ui["drop"] == ["video<-text"]
    assert ui["edge_beta"]["image<-text"] == 0.2 and ui["edge_beta"]["text<-image"] == values["beta"]
    back = ui_elements.branch_values(ui, values["beta"])  # and give the same knob strings back
    assert back == {"hub": "text", "rates": "image:0.5", "edges": "", "drop": "video<-text",
                    "edge_beta": "image<-text:0.2"}
    chosen = pg.config({**pg.DEFAULTS, "topology": "edges", "edges": "image<-text,video<-image"})
    assert chosen.copd.edges == ("image<-text", "video<-image")
    assert len(pg.edges_of({**pg.DEFAULTS, "topology": "edges"})) == 6  # every ordered pair can be picked


@pytest.mark.parametrize("knobs, words", [({"rates": "image"}, ["'image'", "key:value"]),
                                          ({"edge_beta": "video<-image:1"}, ["beta_per_edge", "not an edge"]),
                                          ({"hub": "audio"}, ["copd.hub", "'audio'"])])
def test_a_bad_branch_knob_is_refused_before_any_run(knobs, words):
    with pytest.raises(ConfigError) as info:
        pg.config({**pg.DEFAULTS, **knobs})
    assert all(word in str(info.value) for word in words)


def test_the_paper_checks_are_measured_from_the_run():
    result = pg.run(pg.config({**pg.DEFAULTS, "cycles": 2}))
    checks = {c["claim"]: c for c in paper_checks.paper_checks(result)}
    overall = result.results["overall"] * 100
    beats_mixed = checks["CoPD beats mixed overall"]
    assert beats_mixed["measured"] == f"{overall['copd'] - overall['mixed']:+.1f} points"
    assert beats_mixed["agrees"] == (overall["copd"] > overall["mixed"])
    m = result.metrics
    pairs = m[(m.method == "copd") & (m.metric == "overlap") & ~m.pair.str.endswith("<-base")]
    lowest = pairs.groupby("step").value.mean().min()
    assert checks["CoPD's branches keep a top-10 overlap above 0.90 all run long"]["measured"] == f"lowest {lowest:.2f}"
    table = paper_checks.checks_markdown(paper_checks.paper_checks(result))
    assert table.startswith("| the paper finds | this run | agrees |") and table.count("\n") == len(checks) + 1


def test_a_vlm_run_is_saved_and_a_second_press_reads_it_back(tmp_path):
    import dataclasses

    from copd_lab.records import checkpoint

    values = {**pg.DEFAULTS, "world": "vlm", "cycles": 1, "rl_steps": 1, "opd_steps": 1, "baselines": "experts"}
    cfg = pg.config(values)
    assert cfg.world == "vlm" and cfg.expert_steps == 2 and cfg.copd.cycles == 1  # every method CoPD's budget
    small = dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, prompts_per_step=2, group_size=2),
                                vlm=dataclasses.replace(cfg.vlm, n_train=8, n_eval=2, max_new_tokens=4),
                                metrics=dataclasses.replace(cfg.metrics, eval_samples=2, gap_prompts=2))
    bars = []

    class Bar:  # a tqdm-like bar, as the notebook's MarimoBar (it counts the ticks it is shown)
        def __init__(self, total, initial, desc):
            self.done = initial
            bars.append(self)

        def update(self, n=1):
            self.done += n

        def close(self):
            pass

    first = pg.saved_run(small, root=tmp_path, progress=Bar)
    assert len(bars) == 1 and bars[0].done == 2  # the run's ticks: the experts and CoPD side by side, 2 each
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1 and checkpoint.load_checkpoint(checkpoint.checkpoint_path(folders[0], 0))["done"]
    again = pg.saved_run(small, root=tmp_path, progress=False)  # finished: read back, not trained again
    assert again.metrics.equals(first.metrics) and "copd" in again.results.index


def test_a_saved_run_draws_each_finished_seed_and_gathers_them_as_one_run(tmp_path):
    cfg = pg.config({**pg.DEFAULTS, "seeds": 3, "cycles": 1, "baselines": "experts"})
    seen = []
    result = pg.saved_run(cfg, root=tmp_path, progress=False, on_seed=lambda partial: seen.append(
        sorted(partial.metrics.seed.unique())))
    assert seen == [[0], [0, 1]] and len(list(tmp_path.iterdir())) == 1  # the seeds share one folder
    from copd_lab.experiment import run_comparison

    assert result.metrics.equals(run_comparison(cfg, progress=False).metrics)  # as one 3-seed run


def test_on_eval_sees_each_evaluation_as_it_happens_and_live_accuracy_draws_it():
    import marimo as mo

    from copd_lab.experiment import run_comparison

    cfg = pg.config({**pg.DEFAULTS, "baselines": "experts"})  # 200 ticks: evaluations at 100 and 200
    seen = []
    draw = ui_elements.live_accuracy(mo, cfg, score="acc_exact")

    def on_eval(rows, tick):
        accuracy = [r for r in rows if "acc_exact/" in r["metric"] and r["step"] == tick]  # during or final
        seen.append((tick, len(accuracy)))
        draw(rows, tick)  # outside a marimo cell the drawing goes nowhere, but the chart is built

    result = run_comparison(cfg, progress=False, on_eval=lambda rows, tick: on_eval(rows, tick))
    assert [t for t, _ in seen] == [100, 200] and all(n > 0 for _, n in seen)
    assert "copd" in result.results.index
