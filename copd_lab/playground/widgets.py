"""The playground for Jupyter and VS Code: the same knobs, runs and charts as notebooks/copd_playground.py.

    from copd_lab.playground.widgets import playground
    playground()

Knobs are ipywidgets built from copd_lab.playground.knobs.KNOBS (sliders update when let go); every change
re-runs the simulator through playground.run (cached) and redraws the output: the paper checks, the
results table and the copd_lab.playground.viz charts.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
from IPython.display import Markdown, display

from copd_lab.config import ConfigError
from copd_lab.playground import knobs as pg
from copd_lab.playground import viz
from copd_lab.studies import paper_checks


class Playground(widgets.VBox):
    """A VBox of knob widgets and an output area; `result` is the run of the current setting (None before it, or
    while a VLM setting waits for its button)."""

    def __init__(self, values: dict[str, Any] | None = None):
        values = {**pg.DEFAULTS, **(values or {})}
        self.knobs = {knob.key: _widget(knob, values[knob.key]) for knob in pg.KNOBS}
        self.output = widgets.Output()
        self.result = None
        self.error: str | None = None
        for widget in self.knobs.values():
            widget.observe(lambda _: self.update(), names="value")
        columns = [widgets.VBox([widgets.HTML(f"<b>{title}</b>"), *[self.knobs[k] for k in keys]])
                   for title, keys in pg.SECTIONS.values()]
        super().__init__([widgets.HBox(columns), self.output])
        self.update()

    def values(self) -> dict[str, Any]:
        return {key: _value(pg.BY_KEY[key], widget.value) for key, widget in self.knobs.items()}

    def update(self) -> None:
        """Run the current setting (cached) and redraw the output."""
        self.output.clear_output(wait=True)
        with self.output:
            try:
                cfg = pg.config(self.values())
            except ConfigError as err:
                self.error, self.result = str(err), None
                display(Markdown(f"**Not a valid setting:** {err}"))
                return
            if cfg.world != "sim":  # minutes of training: only from the button, saved and resumable
                button = widgets.Button(description="run on the VLM")
                button.on_click(lambda _: self.show(cfg, saved=True))
                self.error, self.result = None, None
                display(Markdown("The VLM world runs from this button, into runs/playground/ (resumed there)."),
                        button)
                return
        self.show(cfg)

    def show(self, cfg, saved: bool = False) -> None:
        """Run `cfg` (cached, or saved under runs/playground/) and draw its checks, table and charts."""
        self.output.clear_output(wait=True)
        with self.output:
            try:
                self.error, self.result = None, pg.saved_run(cfg) if saved else pg.run(cfg)
            except pg.RUN_ERRORS as err:
                self.error, self.result = str(err), None
                display(Markdown(f"**The run stopped:** {err}"))
                return
            display(Markdown(paper_checks.checks_markdown(paper_checks.paper_checks(self.result))))
            display(Markdown(self.result.table()))
            for chart in (viz.accuracy_over_steps(self.result.metrics, self.result.recipes),
                          viz.gap_over_time(self.result.metrics, self.result.recipes, "copd"),
                          viz.overlap_heatmap(self.result.metrics, "copd"), viz.schedule_timeline(self.result.recipes),
                          viz.topology_graph(self.result.metrics, self.result.recipes, "copd")):
                display(chart)


def _widget(knob: pg.Knob, value: Any):
    style = {"description_width": "initial"}
    if knob.key == "baselines":
        return widgets.SelectMultiple(options=pg.BASELINES, value=tuple(m for m in str(value).split(",") if m),
                                      description=knob.label, style=style)
    if knob.options:
        return widgets.Dropdown(options=knob.options, value=value, description=knob.label, style=style)
    if isinstance(knob.default, str):  # the branch and edge knobs, as text (e.g. image:0.5)
        return widgets.Text(value=value, description=knob.label, placeholder=knob.help, continuous_update=False,
                            style=style)
    slider = widgets.IntSlider if isinstance(knob.default, int) else widgets.FloatSlider
    return slider(value=value, min=knob.low, max=knob.high, step=knob.step, description=knob.label,
                  continuous_update=False, style=style)


def _value(knob: pg.Knob, value: Any) -> Any:
    return ",".join(value) if knob.key == "baselines" else value


def playground(values: dict[str, Any] | None = None) -> Playground:
    """The playground's knobs and charts as a widget (set some knobs with `values`, e.g. {"styles": 1})."""
    return Playground(values)
