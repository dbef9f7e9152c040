"""Property-based fuzz of the command line: any `--set` a user might type, of any type, range or combination,
either validates and runs a tiny budget to its end, or fails before any work with one `copd-lab: error:` line
(a ConfigError, exit 2) — never another exception. A run whose numbers overflow may stop with the non-finite
message (exit 1) and its checkpoint kept."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import tempfile
import typing
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from copd_lab import config
from copd_lab.cli import main

# a tiny budget first; the fuzzed overrides come after and may replace any of it
TINY = ["expert_steps=2", "distill_steps=1", "copd.cycles=1", "copd.rl_steps=1", "copd.opd_steps=1",
        "grpo.prompts_per_step=2", "grpo.group_size=2", "metrics.eval_samples=2", "metrics.gap_every=2",
        "checkpoint_every=1"]
DOMAINS = ["text", "image", "video"]
METHODS = ["base", "experts", "mixed", "static_opd:image->text", "static_opd:text->text", "static_opd:x", "mopd",
           "copd", "copd_no_merge", "copd_drop:text<-image", "copd_drop:image<-video", "copd_frozen", "nope"]
EDGES = ["text<-image", "image<-text", "text<-video", "video<-text", "image<-video", "text<-text", "a<-b", "text"]
CHOICES = {  # string fields: their allowed values, and a few that are not
    "world": config.WORLDS, "copd.hub": (*DOMAINS, "audio"),
    "grpo.aggregation": config.AGGREGATIONS, "opd.estimator": config.OPD_ESTIMATORS,
    "opd.teacher": config.TEACHER_MODES, "opd.combine": config.COMBINE_MODES,
    "copd.topology": config.TOPOLOGIES, "merge.method": config.MERGE_METHODS,
    "metrics.score": ("acc_sampled", "acc_greedy", "reward"), "vlm.dtype": config.VLM_DTYPES,
    "vlm.engine": config.VLM_ENGINES, "vlm.experts": config.VLM_EXPERTS, "vlm.device": ("cpu", "cuda", "cuda:1"),
}


def weighted(*options: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, chosen with these weights (st.one_of weighs its branches alike)."""
    table = [strategy for weight, strategy in options for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


# mostly small values in range (so that many draws run), and the edges: negatives, huge, non-finite
INTS = weighted((6, st.integers(0, 4)), (1, st.integers(-3, -1)),
                (1, st.sampled_from([10**15, 2**32, 2**63, -(2**63), 2**64])))
FLOATS = weighted((6, st.floats(0, 1)), (1, st.floats(-2, 2)),
                  (1, st.sampled_from([math.inf, -math.inf, math.nan, 1e38, 1e-300, -0.0, 5.0])))
WRONG = st.one_of(st.text(max_size=4), st.booleans(), st.lists(st.integers(0, 2), max_size=2))


def fields(cls=config.ExperimentConfig, prefix: str = "") -> list[tuple[str, typing.Any]]:
    """(dotted name, annotation) of every leaf field of the config."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += fields(tp, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, tp))
    return out


def values(name: str, tp) -> st.SearchStrategy:
    """Values for one field: mostly of its type, in and out of range, sometimes of another type."""
    if name in CHOICES:
        right = st.sampled_from(CHOICES[name])
    elif name == "domains":
        right = st.lists(st.sampled_from([*DOMAINS, "", "a/b", "x"]), max_size=4)
    elif name == "methods":
        right = st.lists(st.sampled_from(METHODS), max_size=4)
    elif name in ("copd.edges", "copd.drop_edges"):
        right = st.lists(st.sampled_from(EDGES), max_size=4)
    elif name == "copd.step_rates":
        right = st.dictionaries(st.sampled_from([*DOMAINS, "audio"]), FLOATS, max_size=3)
    elif name == "copd.beta_per_edge":
        right = st.dictionaries(st.sampled_from(EDGES), FLOATS, max_size=3)
    elif name == "merge.weights":
        right = st.lists(FLOATS, max_size=4)
    elif tp is bool:
        right = st.booleans()
    elif tp is int:
        right = INTS
    elif tp is float:
        right = st.one_of(FLOATS, st.integers(-2, 3))
    else:
        right = st.text(max_size=8)
    return weighted((9, right), (1, WRONG))  # mostly the right type


def toml(value) -> str:
    """A --set value as TOML text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + "}"


FIELDS = fields()
@st.composite
def field_override(draw) -> str:
    name, tp = draw(st.sampled_from(FIELDS))
    return f"{name}={toml(draw(values(name, tp)))}"


FIELD_OVERRIDE = field_override()
OVERRIDE = weighted(
    (14, FIELD_OVERRIDE),
    (1, st.text(max_size=12)),  # anything at all: no '=', unknown keys, broken TOML
    (1, st.sampled_from(["grpo=3", "sim.lr.x=1", "grpo.lr=0.1", "=", "copd.step_rates.text=0.5", "sim={}",
                         "nope.x=1"])),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides=st.lists(OVERRIDE, min_size=1, max_size=3), seeds=weighted((4, st.none()), (1, st.integers(-1, 2))))
def test_any_command_line_validates_and_runs_or_fails_before_work(overrides, seeds):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        argv = ["sim", "--quiet", "--out", str(out)] + [f"--set={s}" for s in TINY + overrides]  # "=": a value may
        # start with "-"
        argv += [] if seeds is None else ["--seeds", str(seeds)]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)  # any exception other than the two handled ones fails the test
        event(f"exit {code}")
        if code != 0:  # one line that names what is wrong
            assert err.getvalue().startswith("copd-lab: error: ") and err.getvalue().count("\n") == 1, err.getvalue()
        if code == 2:  # refused before any work: nothing written
            assert not out.exists()
        elif code == 0:  # ran to its end
            assert (out / "results.md").read_text().startswith("| model |")
        else:
            assert code == 1  # stopped on NaN/inf: a checkpoint kept, or none yet if no step was taken
            assert (out / "checkpoints").exists() or "no step was taken" in err.getvalue(), err.getvalue()


MODELS = ["tiny_models/qwen2vl-tiny", "tiny_models", "configs", "", "x/y", "README.md"]
VLM_FIELDS = [(name, tp) for name, tp in FIELDS if name.startswith("vlm.") or name in ("domains", "metrics.topk")]


@st.composite
def vlm_override(draw) -> str:
    name, tp = draw(st.sampled_from(VLM_FIELDS))
    if name == "vlm.model":  # the shipped model, folders that are not models, and names that are nothing
        return f"vlm.model={toml(draw(st.sampled_from(MODELS)))}"
    return f"{name}={toml(draw(values(name, tp)))}"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides=st.lists(vlm_override(), min_size=1, max_size=3))
def test_any_vlm_setting_passes_the_preflight_or_is_refused_by_name(overrides):
    """The VLM world's checks before any model is loaded (config, device, model folder, suites, sizes): a
    ConfigError or nothing, never another exception (a run per draw would load a model: too slow here)."""
    from copd_lab.config import ConfigError
    from copd_lab.config_io import RUN_DEFAULTS, load_config
    from copd_lab.preflight import check_run

    try:
        cfg = load_config(None, overrides, defaults=RUN_DEFAULTS)
        check_run(cfg, None)
        event("passes")
    except ConfigError as err:
        assert "\n" not in str(err)
        event("refused")
