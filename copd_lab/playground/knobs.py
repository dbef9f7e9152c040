"""The playground's knobs, presets and runs, as plain functions (notebooks/copd_playground.py shows them).

A knob is one control of the playground: its default, its range or options, a help line and how it
sets the experiment config. Knob values travel as strings in the notebook's URL (`query_from_knobs`,
`knobs_from_query`), so a setting is a link; a preset sets many knobs at once. `run` turns knob values
into a validated ExperimentConfig and runs it through copd_lab's own API, cached, so identical settings
are not run again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from copd_lab.algorithm.recipes import build_recipes
from copd_lab.algorithm.topology import build_edges, format_edge
from copd_lab.config import (
    COMBINE_MODES,
    MERGE_METHODS,
    OPD_ESTIMATORS,
    TEACHER_MODES,
    TOPOLOGIES,
    WORLDS,
    ConfigError,
    ExperimentConfig,
)
from copd_lab.config_io import load_config
from copd_lab.experiment import Comparison, cached_comparison, run_comparison
from copd_lab.records.checkpoint import resume_key
from copd_lab.world import NonFiniteError

DOMAIN_NAMES = ("text", "image", "video")  # then d3, d4, ...
RUN_ERRORS = (ConfigError, NonFiniteError)  # what a run can stop with that a page should show as one line
BASELINES = ("experts", "mixed", "static_opd:image->text", "static_opd:text->image", "mopd")


@dataclass(frozen=True)
class Knob:
    """One control: `key` names it in the URL; `field` is the config field it sets (None: handled in `overrides`)."""

    key: str
    label: str
    default: Any
    help: str
    field: str | None = None
    options: tuple = ()  # a dropdown's choices
    low: float | None = None  # a slider's range and step
    high: float | None = None
    step: float | None = None

    def parse(self, text: str) -> Any:
        """The knob's value from its URL string; a ConfigError naming the knob when it is not allowed."""
        kind = type(self.default)
        try:
            value = (text.lower() in ("1", "true", "yes")) if kind is bool else kind(text)
        except ValueError:
            raise ConfigError(f"{self.key} = {text!r} is not allowed: a {kind.__name__}") from None
        if self.options and value not in self.options:
            raise ConfigError(f"{self.key} = {value!r} is not allowed: one of {self.options}")
        if self.low is not None and not self.low <= value <= self.high:
            raise ConfigError(f"{self.key} = {value!r} is not allowed: a number in [{self.low}, {self.high}]")
        return value


def config_default(field: str) -> Any:
    """The default of a dotted config field in ExperimentConfig, e.g. "copd.rl_steps" -> 12."""
    value: Any = ExperimentConfig()
    for name in field.split("."):
        value = getattr(value, name)
    return value


def field_knob(key: str, label: str, help: str, field: str, options: tuple = (), **slider: float) -> Knob:
    """A knob that sets config `field`: its default is the config's and its options are config.py's tuple, so
    neither is written twice (a knob without a field takes its default in `Knob`)."""
    return Knob(key, label, config_default(field), help, field, options, **slider)


KNOBS = (
    field_knob("world", "world", "sim: the simulator, live | vlm: the shipped tiny VLM or the model folder below, "
               "from a run button", "world", WORLDS),
    Knob("model", "VLM folder", "", "a local Qwen2-VL or Llava checkpoint folder (empty: the shipped tiny VLM)"),
    Knob("branches", "branches K", 3, "number of experts (domains text, image, video, then d3, d4, ...)",
         low=2, high=10, step=1),
    field_knob("rl_steps", "S_RL", "GRPO steps per cycle (Phase I)", "copd.rl_steps", low=0, high=50, step=1),
    field_knob("opd_steps", "S_OPD", "mixed GRPO + OPD steps per cycle (Phase II)", "copd.opd_steps", low=0,
               high=50, step=1),
    field_knob("cycles", "cycles N", "Phase I + Phase II cycles", "copd.cycles", low=1, high=30, step=1),
    field_knob("topology", "topology", "who distils from whom in Phase II (edges: pick them below)",
               "copd.topology", TOPOLOGIES),
    Knob("hub", "hub", "", "the hub branch of the hub topology (empty: the first domain)"),
    Knob("rates", "step rates", "", "asymmetric experts: branch:rate,... (a branch steps on that share of ticks)"),
    Knob("edges", "edges", "", "the Phase II edges of the edges topology: student<-teacher,..."),
    Knob("drop", "dropped edges", "", "edges of the topology left out: student<-teacher,..."),
    Knob("edge_beta", "β per edge", "", "an edge's own β: student<-teacher:β,..."),
    field_knob("beta", "β (OPD weight)", "weight of the OPD advantage", "opd.beta", low=0.0, high=3.0, step=0.1),
    field_knob("estimator", "OPD estimator", "the paper's sampled-token log-ratio, or top-k / full reverse KL",
               "opd.estimator", OPD_ESTIMATORS),
    field_knob("teacher", "teacher", "live: neighbours' current weights; frozen: a snapshot per Phase II",
               "opd.teacher", TEACHER_MODES),
    field_knob("adaptive", "adaptive threshold", "start a pair's OPD window when its top-10 overlap drops below "
               "this (0: the fixed schedule)", "copd.adaptive_threshold", low=0.0, high=0.99, step=0.01),
    field_knob("combine", "Phase II weighting", "mean: every batch alike; split: the own GRPO batch weighs "
               "rlvr_weight", "opd.combine", COMBINE_MODES),
    field_knob("rlvr_weight", "own GRPO weight", "with split weighting: the share of a branch's own GRPO batch in "
               "its Phase II update", "opd.rlvr_weight", low=0.0, high=1.0, step=0.05),
    field_knob("merge", "merge", "how the branches become one model", "merge.method", MERGE_METHODS),
    Knob("baselines", "baselines", "experts,mixed,mopd", "methods compared with CoPD (comma-separated)"),
    field_knob("seeds", "seeds", "run seeds (side by side in one world)", "seeds", low=1, high=10, step=1),
    field_knob("styles", "styles (drift)", "equally rewarded styles: experts drift apart (1: no drift)",
               "sim.styles", low=1, high=16, step=1),
    field_knob("habit", "style habit", "each domain's pull toward its own style in the base", "sim.style_habit",
               low=0.0, high=1.0, step=0.05),
    field_knob("conflict", "conflict", "share of each rule opposed across domains (shared_skill + conflict <= 1)",
               "sim.conflict", low=0.0, high=1.0, step=0.05),
    field_knob("shared", "shared skill", "share of each rule common to every domain (transfer)", "sim.shared_skill",
               low=0.0, high=1.0, step=0.05),
    field_knob("base_steps", "base skill", "warm-start steps of the base", "sim.base_steps", low=0, high=600,
               step=10),
    field_knob("lr", "RL lr", "the simulator's Adam learning rate (update size)", "sim.lr", low=0.001, high=0.1,
               step=0.001),
)
BY_KEY = {k.key: k for k in KNOBS}
SECTIONS = {  # the knob panel's columns; `hide=<name>,...` in the URL hides some (a teacher shapes a lesson)
    "schedule": ("Schedule", ("world", "model", "branches", "rl_steps", "opd_steps", "cycles", "seeds")),
    "phase2": ("Phase II", ("topology", "beta", "estimator", "teacher", "adaptive", "combine", "rlvr_weight")),
    "branches": ("Branches and edges", ("hub", "rates", "edges", "drop", "edge_beta")),
    "merge": ("Merge and baselines", ("merge", "baselines")),
    "mechanisms": ("Simulator mechanisms", ("styles", "habit", "conflict", "shared", "base_steps", "lr")),
}
DEFAULTS = {k.key: k.default for k in KNOBS}

PRESETS = {
    "the paper's setting": {},
    "no drift": {"styles": 1},
    "strong conflict": {"conflict": 0.5},
    "no conflict, shared skill": {"conflict": 0.0, "shared": 1.0},
    "K = 10, all pairs": {"branches": 10, "topology": "all_pairs", "baselines": "experts,mixed"},
}


def domains(k: int) -> tuple[str, ...]:
    return tuple(DOMAIN_NAMES[i] if i < len(DOMAIN_NAMES) else f"d{i}" for i in range(k))


def knobs_from_query(query: Mapping[str, str], preset: str | None = None) -> dict[str, Any]:
    """Knob values: the defaults, then a preset's, then those the URL sets (unknown keys are left alone)."""
    values = {**DEFAULTS, **PRESETS.get(preset or query.get("preset", ""), {})}
    for key, text in query.items():
        if key in BY_KEY:
            values[key] = BY_KEY[key].parse(str(text))
    return values


def query_from_knobs(values: Mapping[str, Any]) -> dict[str, str]:
    """The URL query of a setting: every knob that differs from its default, as a string."""
    return {key: str(value).lower() if isinstance(value, bool) else str(value)
            for key, value in values.items() if key in BY_KEY and value != DEFAULTS[key]}


def overrides(values: Mapping[str, Any]) -> list[str]:
    """The `--set` overrides (config_io syntax) that the knob values stand for."""
    k = int(values["branches"])
    names = domains(k)
    baselines = [m for m in str(values["baselines"]).split(",") if m]
    baselines = [m for m in baselines if not m.startswith("static_opd") or k >= 2]
    hub = str(values["hub"]) or names[0]
    # every method gets CoPD's budget per branch (the experts and the first stage of static OPD and MOPD), and the
    # extra OPD stage half of it, as at the defaults (200 and 100)
    budget = int(values["cycles"]) * (int(values["rl_steps"]) + int(values["opd_steps"]))
    out = [f"expert_steps={max(budget, 1)}", f"distill_steps={max(budget // 2, 1)}"]
    if values["model"]:
        out.append(f"vlm.model={str(values['model'])!r}")
    out += [f"domains={list(names)}", f"methods={['base', *baselines, 'copd']}", f"copd.hub='{hub}'",
           f"copd.step_rates={_table(parse_pairs(values['rates'], float))}",
           f"copd.edges={split_items(values['edges'])}", f"copd.drop_edges={split_items(values['drop'])}",
           f"copd.beta_per_edge={_table(parse_pairs(values['edge_beta'], float))}"]
    for knob in KNOBS:
        if knob.field is not None:
            value = values[knob.key]
            out.append(f"{knob.field}={value!r}" if isinstance(value, str) else f"{knob.field}={value}")
    return out


def split_items(text: str) -> list[str]:
    return [item for item in str(text).split(",") if item]


def saved_run(cfg: ExperimentConfig, root: str | Path = "runs/playground", progress=True,
              on_seed=None, on_eval=None) -> Comparison:
    """Run a comparison into its own folder under `root` (named by the config less its seeds), resuming what is
    there: a run stopped half-way (its checkpoints stay) continues where it stopped, a finished one is read back at
    once. Seeds run one at a time into that folder; on_seed(comparison of the seeds so far) is called after each, so
    a notebook can draw results as they arrive, and on_eval(rows, tick) after each evaluation during training
    (run_comparison). The last call gathers every seed from its checkpoint."""
    key = json.dumps(resume_key(cfg), sort_keys=True, default=str)
    out = Path(root) / hashlib.sha1(key.encode()).hexdigest()[:12]
    for i in range(cfg.seeds - 1 if cfg.seeds > 1 else 0):
        partial = run_comparison(dataclasses.replace(cfg, seeds=i + 1), progress=progress, out=out, resume=True,
                                 on_eval=on_eval)
        if on_seed is not None:
            on_seed(partial)
    return run_comparison(cfg, progress=progress, out=out, resume=True, on_eval=on_eval)


def _table(pairs: dict) -> str:
    """A TOML inline table (the --set syntax of a dict field)."""
    return "{" + ", ".join(f'"{key}" = {value}' for key, value in pairs.items()) + "}"


def parse_pairs(text: str, kind) -> dict:
    """"a:1,b:0.5" -> {"a": 1.0, "b": 0.5} (the key may hold "<-"; the value is after the last ":")."""
    out = {}
    for item in split_items(text):
        key, colon, value = item.rpartition(":")
        if not colon:
            raise ConfigError(f"{item!r} is not allowed: key:value pairs, e.g. image:0.5 or image<-text:0.5")
        try:
            out[key] = kind(value)
        except ValueError:
            raise ConfigError(f"{item!r} is not allowed: its value {value!r} is not a number") from None
    return out


def edges_of(values: Mapping[str, Any]) -> list[str]:
    """The labels of every edge the topology has (before any is dropped): the choices of the edge editors."""
    names = domains(int(values["branches"]))
    topology = values["topology"]
    if topology == "edges":  # every ordered pair can be picked
        return [format_edge((s, t)) for s in names for t in names if s != t]
    hub = str(values["hub"]) or names[0]
    try:
        return [format_edge(e) for e in build_edges(names, topology, hub if hub in names else names[0])]
    except ConfigError:
        return []


def config(values: Mapping[str, Any]) -> ExperimentConfig:
    """The validated experiment config of these knob values, its recipes checked too (a ConfigError names a
    knob's field and value, before any run)."""
    cfg = load_config(None, overrides(values))
    build_recipes(cfg)
    return cfg


def run(cfg: ExperimentConfig) -> Comparison:
    """Run a comparison, cached by its config (identical settings are not run again)."""
    return cached_comparison(cfg)


def knob_map(values: Mapping[str, Any], row: str, row_values: list, column: str, column_values: list,
             progress=None):
    """Where in a two-knob plane CoPD beats the best other method of the setting: one row per cell with the knob
    values, each method's overall exact accuracy (mean over seeds, %) and `copd_minus_best` (points).
    progress: an iterable wrapper (e.g. mo.status.progress_bar) shown over the cells."""
    cells = [(r, c) for r in row_values for c in column_values]
    rows = []
    for r, c in (progress(cells) if progress is not None else cells):
        result = run(config({**values, row: r, column: c}))
        overall = result.results["overall"] * 100
        others = [m for m in overall.index if m != "copd" and not m.startswith(("copd[", "base", "expert:"))]
        best = overall[others].max() if others else float("nan")
        rows.append({row: r, column: c, **overall.to_dict(), "copd_minus_best": overall["copd"] - best})
    return pd.DataFrame(rows)
