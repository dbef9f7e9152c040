"""The playground's knobs as marimo UI elements, and what a marimo cell needs around a run (a progress bar, a live
chart). The knobs themselves, their URL and their config are copd_lab.playground.knobs; notebooks/copd_playground.py
lays these out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from copd_lab.algorithm.recipes import build_recipes
from copd_lab.config import ExperimentConfig
from copd_lab.playground import viz
from copd_lab.playground.knobs import BASELINES, DEFAULTS, KNOBS, SECTIONS, domains, edges_of, parse_pairs, split_items
from copd_lab.records.rows import ROW_COLUMNS


def live_accuracy(mo, cfg: ExperimentConfig, score: str = "auto"):
    """An on_eval callback that redraws the accuracy over training so far in the running cell's output."""
    recipes = build_recipes(cfg)

    def draw(rows: list[dict], tick: int) -> None:
        metrics = pd.DataFrame(rows, columns=list(ROW_COLUMNS))
        mo.output.replace(mo.vstack([mo.md(f"**Training: tick {tick}**"),
                                     viz.accuracy_over_steps(metrics, recipes, score)]))

    return draw


class MarimoBar:
    """A tqdm-like bar (the Trainer's progress) drawn with marimo's mo.status.progress_bar."""

    def __init__(self, mo, total: int, initial: int = 0, desc: str = ""):
        self._context = mo.status.progress_bar(total=max(total, 1), title=desc, remove_on_exit=True)
        self._bar = self._context.__enter__()
        if initial:
            self._bar.update(increment=initial)

    def update(self, n: int = 1) -> None:
        self._bar.update(increment=n)

    def close(self) -> None:
        self._context.__exit__(None, None, None)


def controls(mo, values: Mapping[str, Any]):
    """The knobs as marimo UI elements (a `mo.ui.dictionary`, keyed by knob), set to `values`; sliders are
    debounced, so a run starts when a slider is let go."""
    elements = {}
    for knob in KNOBS:
        if knob.key in SECTIONS["branches"][1]:  # see branch_controls
            continue
        value = values[knob.key]
        if knob.key == "model":
            elements[knob.key] = mo.ui.text(value=value, label=knob.label, placeholder="tiny_models/qwen2vl-tiny")
        elif knob.key == "baselines":
            elements[knob.key] = mo.ui.multiselect(options=list(BASELINES), value=[m for m in str(value).split(",")
                                                                                  if m in BASELINES],
                                                   label=knob.label)
        elif knob.options:
            elements[knob.key] = mo.ui.dropdown(options=list(knob.options), value=value, label=knob.label)
        else:
            elements[knob.key] = mo.ui.slider(knob.low, knob.high, step=knob.step, value=value, label=knob.label,
                                              debounce=True, show_value=True)
    return mo.ui.dictionary(elements)


def branch_controls(mo, values: Mapping[str, Any]):
    """The per-branch and per-edge knobs for the current branches and topology: the hub, a step-rate slider per
    branch, the edges (picked for the edges topology; else the ones to drop) and a β per edge."""
    names = domains(int(values["branches"]))
    rates = {k: v for k, v in parse_pairs(values["rates"], float).items() if k in names}
    edges = edges_of(values)
    chosen = [e for e in split_items(values["edges"]) if e in edges]
    dropped = [e for e in split_items(values["drop"]) if e in edges]
    betas = parse_pairs(values["edge_beta"], float)
    hub = str(values["hub"]) if values["hub"] in names else names[0]
    return mo.ui.dictionary({
        "hub": mo.ui.dropdown(options=list(names), value=hub, label="hub"),
        "rates": mo.ui.dictionary({n: mo.ui.slider(0.05, 1.0, step=0.05, value=rates.get(n, 1.0), label=n,
                                                   debounce=True, show_value=True) for n in names},
                                  label="step rates"),
        "edges": mo.ui.multiselect(options=edges, value=chosen, label="edges (edges topology)"),
        "drop": mo.ui.multiselect(options=edges, value=dropped, label="drop"),
        "edge_beta": mo.ui.dictionary({e: mo.ui.number(0.0, 10.0, step=0.1, value=betas.get(e, float(values["beta"])),
                                                       label=e) for e in edges}, label="β per edge"),
    })


def branch_values(ui_values: Mapping[str, Any], beta: float) -> dict[str, str]:
    """The string knobs of `branch_controls`' values (rates of 1 and β equal to the global β are left out)."""
    return {"hub": ui_values["hub"],
            "rates": ",".join(f"{n}:{r:g}" for n, r in ui_values["rates"].items() if r != 1.0),
            "edges": ",".join(ui_values["edges"]), "drop": ",".join(ui_values["drop"]),
            "edge_beta": ",".join(f"{e}:{b:g}" for e, b in ui_values["edge_beta"].items() if b != beta)}


def values_of(ui_values: Mapping[str, Any]) -> dict[str, Any]:
    """Knob values from the UI elements' values, for the knobs they hold (a multiselect's list becomes the
    comma-separated string, a slider's number the knob's type)."""
    values = {}
    for key, value in ui_values.items():
        default = DEFAULTS[key]
        if isinstance(value, (list, tuple)):
            value = ",".join(value)
        elif isinstance(default, int) and not isinstance(default, bool):
            value = int(round(value))
        elif isinstance(default, float):
            value = float(value)
        values[key] = value
    return values


def panel(mo, knobs, hide: str = ""):
    """The knob panel: a column per section (SECTIONS), without the sections `hide` names (comma-separated)."""
    hidden = {name for name in hide.split(",") if name}
    columns = [mo.vstack([mo.md(f"**{title}**"), *[knobs[key] for key in keys if key in knobs]])
               for name, (title, keys) in SECTIONS.items() if name not in hidden and name != "branches"]
    return mo.hstack(columns, align="start", wrap=True, gap=2)
