"""Charts of a comparison (altair): what the playground draws, usable from Jupyter and scripts too.

Every function takes the tidy metric rows of a run (`Comparison.metrics`: run, method, seed, step, branch,
pair, metric, value) and, where it needs the schedule, the recipes; it returns an altair chart. Seeds are
averaged; a band shows their spread where there are several.
"""

from __future__ import annotations

import math

import altair as alt
import pandas as pd

from copd_lab.algorithm.recipes import Recipe
from copd_lab.algorithm.schedule import timeline
from copd_lab.results import score_of

PHASE_COLOURS = {"Phase I (RLVR)": "#f2f2f2", "Phase II (RLVR + OPD)": "#dbe9f6"}


def phase_spans(recipes: list[Recipe], method: str) -> pd.DataFrame:
    """One row per stage of `method`: its first and last tick in the run, and whether it is Phase I or II
    (a stage with OPD edges is Phase II)."""
    start, _ = timeline(recipes)[method]
    recipe = next(r for r in recipes if r.name == method)
    rows = []
    for stage in recipe.stages:
        if stage.steps:
            phase = "Phase II (RLVR + OPD)" if stage.edges else "Phase I (RLVR)"
            rows.append({"stage": stage.name, "phase": phase, "start": start, "end": start + stage.steps})
        start += stage.steps
    return pd.DataFrame(rows, columns=["stage", "phase", "start", "end"])


def _shading(spans: pd.DataFrame) -> alt.Chart:
    """The phases as background bands. They use the fill channel, so lines drawn over them keep a colour scale of
    their own: one shared colour scale would hold only the phase names and leave the lines uncoloured."""
    return alt.Chart(spans).mark_rect(opacity=0.6).encode(
        x="start:Q", x2="end:Q",
        fill=alt.Fill("phase:N", scale=alt.Scale(domain=list(PHASE_COLOURS), range=list(PHASE_COLOURS.values())),
                      legend=alt.Legend(title="phase")))


def model_labels(recipes: list[Recipe]) -> dict[tuple[str, str], str]:
    """(method, branch) -> the label its results carry (e.g. ("experts", "text") -> "expert:text"), so a branch's
    evaluations during training and its final one form one curve."""
    labels = {}
    for recipe in recipes:
        for label, name in recipe.outputs:
            labels[(recipe.name, name)] = label
            labels[(recipe.name, label)] = label  # final rows carry the label itself
    return labels


def accuracy_over_steps(metrics: pd.DataFrame, recipes: list[Recipe], score: str = "auto") -> alt.Chart:
    """Per-domain accuracy (%) of every branch and output over the run's ticks, one panel per domain: the
    evaluations during training and each output's final one (mean over seeds). score "auto": results.score_of."""
    score = score_of(metrics) if score == "auto" else score
    rows = metrics[metrics.metric.str.match(rf"^(final_)?{score}/")].copy()
    labels = model_labels(recipes)
    rows["domain"] = rows.metric.str.split("/").str[1]
    rows["model"] = [labels.get((m, b), b if m == b else f"{m}/{b}") for m, b in zip(rows.method, rows.branch)]
    mean = rows.groupby(["model", "domain", "step"], as_index=False).value.mean()
    mean["accuracy"] = 100 * mean.value
    return alt.Chart(mean).mark_line(point=True).encode(
        x=alt.X("step:Q", title="tick"), y=alt.Y("accuracy:Q", title=f"{score} (%)"),
        color=alt.Color("model:N"), tooltip=["model", "domain", "step", alt.Tooltip("accuracy:Q", format=".1f")],
    ).properties(width=220, height=180).facet(column=alt.Column("domain:N", title=None))


def gap_over_time(metrics: pd.DataFrame, recipes: list[Recipe], method: str = "copd",
                  gap: tuple[str, ...] = ("overlap", "top1_overlap", "symmetric_kl"), base: bool = True) -> alt.Chart:
    """The behavioural gap of `method`'s branches over ticks: one panel per gap metric, a line per ordered pair
    (student<-teacher) and, with `base`, each branch against the base; Phase I and Phase II shaded, so CoPD's
    saw-tooth shows (overlap falls in RLVR phases and recovers in OPD phases)."""
    rows = metrics[(metrics.method == method) & metrics.metric.isin(gap) & (metrics.pair != "")]
    if not base:
        rows = rows[~rows.pair.str.endswith("<-base")]
    mean = rows.groupby(["metric", "pair", "step"], as_index=False).value.mean()
    spans = phase_spans(recipes, method)
    panels = []
    for name in gap:
        lines = alt.Chart(mean[mean.metric == name]).mark_line().encode(
            x=alt.X("step:Q", title="tick"), y=alt.Y("value:Q", title=name),
            color=alt.Color("pair:N", title="student<-teacher"),
            tooltip=["pair", "step", alt.Tooltip("value:Q", format=".3f")])
        panels.append((_shading(spans) + lines).properties(width=170, height=170, title=name))
    return alt.hconcat(*panels).resolve_scale(color="shared", fill="shared")  # one legend for the pairs


def measured_steps(metrics: pd.DataFrame, method: str, metric: str = "overlap") -> list[int]:
    """The ticks at which `method`'s gap was measured, in order (a step slider's stops)."""
    rows = metrics[(metrics.method == method) & (metrics.metric == metric)]
    return [int(s) for s in sorted(rows.step.unique())]


def overlap_heatmap(metrics: pd.DataFrame, method: str, step: int | None = None, metric: str = "overlap") -> alt.Chart:
    """Student x teacher heatmap of a gap metric among `method`'s branches (and the base) at the measurement
    nearest to `step` (default: the last)."""
    rows = metrics[(metrics.method == method) & (metrics.metric == metric) & (metrics.pair != "")]
    steps = sorted(rows.step.unique())
    if not steps:
        return alt.Chart(pd.DataFrame({"student": [], "teacher": [], "value": []})).mark_rect()
    at = steps[-1] if step is None else min(steps, key=lambda s: abs(s - step))
    cell = rows[rows.step == at].groupby("pair", as_index=False).value.mean()
    cell[["student", "teacher"]] = cell.pair.str.split("<-", expand=True)
    heat = alt.Chart(cell).mark_rect().encode(
        x=alt.X("teacher:N"), y=alt.Y("student:N"), color=alt.Color("value:Q", title=metric),
        tooltip=["student", "teacher", alt.Tooltip("value:Q", format=".3f")])
    text = alt.Chart(cell).mark_text().encode(x="teacher:N", y="student:N", text=alt.Text("value:Q", format=".2f"))
    return (heat + text).properties(width=200, height=200, title=f"{metric} at tick {at}")


def schedule_timeline(recipes: list[Recipe], methods: list[str] | None = None,
                      metrics: pd.DataFrame | None = None) -> alt.Chart:
    """Each method's stages as bars along the run's ticks, one row per method (Phase II stages in blue); with
    `metrics`, a tick mark where the adaptive schedule opened an edge's OPD window (copd.adaptive_threshold)."""
    rows = []
    for recipe in recipes:
        if methods is not None and recipe.name not in methods:
            continue
        spans = phase_spans(recipes, recipe.name)
        for _, span in spans.iterrows():
            rows.append({"method": recipe.name, **span.to_dict()})
    data = pd.DataFrame(rows, columns=["method", "stage", "phase", "start", "end"])
    colours = {**PHASE_COLOURS, "Phase I (RLVR)": "#bdbdbd"}
    bars = alt.Chart(data).mark_bar().encode(
        x=alt.X("start:Q", title="tick"), x2="end:Q", y=alt.Y("method:N", sort=None),
        color=alt.Color("phase:N", scale=alt.Scale(domain=list(colours), range=list(colours.values()))),
        tooltip=["method", "stage", "start", "end"]).properties(width=600, height=20 * max(len(set(data.method)), 1))
    if metrics is None:
        return bars
    opened = metrics[metrics.metric == "opd_window_opened"][["method", "step", "pair", "value"]]
    opened = opened[opened.method.isin(set(data.method))].rename(columns={"pair": "edge", "value": "overlap"})
    marks = alt.Chart(opened).mark_tick(color="#e45756", thickness=2).encode(
        x="step:Q", y=alt.Y("method:N", sort=None), tooltip=["method", "edge", "step", alt.Tooltip("overlap:Q",
                                                                                                  format=".3f")])
    return bars + marks


def knob_map(cells: pd.DataFrame, row: str, column: str, value: str = "copd_minus_best") -> alt.Chart:
    """A two-knob map: one cell per (row knob value, column knob value), coloured by `value` (e.g. CoPD minus
    the best other method, in points; diverging around 0)."""
    heat = alt.Chart(cells).mark_rect().encode(
        x=alt.X(f"{column}:O"), y=alt.Y(f"{row}:O"),
        color=alt.Color(f"{value}:Q", scale=alt.Scale(scheme="redblue", domainMid=0)),
        tooltip=[row, column, alt.Tooltip(f"{value}:Q", format="+.1f")])
    text = alt.Chart(cells).mark_text().encode(x=f"{column}:O", y=f"{row}:O",
                                               text=alt.Text(f"{value}:Q", format="+.1f"))
    return (heat + text).properties(width=240, height=180)


def topology_graph(metrics: pd.DataFrame, recipes: list[Recipe], method: str = "copd") -> alt.Chart:
    """`method`'s branches on a circle and its OPD edges (student <- teacher) as arrows whose width is proportional
    to the edge's mean OPD signal (the sampled reverse KL its student was trained on, over the run and the seeds;
    the width scale starts at 0, so close signals draw close widths)."""
    recipe = next(r for r in recipes if r.name == method)
    names = [b.name for b in recipe.branches]
    where = {name: (math.cos(2 * math.pi * i / len(names)), math.sin(2 * math.pi * i / len(names)))
             for i, name in enumerate(names)}
    edges = {(e.student, e.teacher_name) for stage in recipe.stages for e in stage.edges}
    signal = metrics[(metrics.method == method) & (metrics.metric == "opd_reverse_kl")].groupby("pair").value.mean()
    rows = []
    for student, teacher in sorted(edges):
        (x0, y0), (x1, y1) = where[teacher], where[student]
        # shorten each edge at both ends and offset it sideways, so the two directions of a pair stay apart
        dx, dy, length = x1 - x0, y1 - y0, math.hypot(x1 - x0, y1 - y0) or 1.0
        ox, oy = -dy / length * 0.05, dx / length * 0.05
        rows.append({"edge": f"{student}<-{teacher}", "x": x0 + 0.15 * dx + ox, "y": y0 + 0.15 * dy + oy,
                     "x2": x1 - 0.15 * dx + ox, "y2": y1 - 0.15 * dy + oy,
                     "signal": float(signal.get(f"{student}<-{teacher}", 0.0))})
    edge_data = pd.DataFrame(rows, columns=["edge", "x", "y", "x2", "y2", "signal"])
    node_data = pd.DataFrame([{"branch": n, "x": where[n][0], "y": where[n][1]} for n in names])
    axis = alt.Axis(title=None, labels=False, ticks=False, grid=False, domain=False)
    lines = alt.Chart(edge_data).mark_rule(color="#4c78a8", opacity=0.8).encode(
        x=alt.X("x:Q", axis=axis, scale=alt.Scale(domain=[-1.4, 1.4])), y=alt.Y("y:Q", axis=axis,
                                                                           scale=alt.Scale(domain=[-1.4, 1.4])),
        x2="x2:Q", y2="y2:Q", strokeWidth=alt.StrokeWidth("signal:Q", scale=alt.Scale(range=[0.5, 8], zero=True),
                                                         title="OPD signal (nats)"),
        tooltip=["edge", alt.Tooltip("signal:Q", format=".3f")])
    heads = alt.Chart(edge_data).mark_point(shape="triangle", filled=True, size=60, color="#4c78a8").encode(
        x="x2:Q", y="y2:Q")
    nodes = alt.Chart(node_data).mark_circle(size=900, color="#f58518").encode(x="x:Q", y="y:Q", tooltip=["branch"])
    labels = alt.Chart(node_data).mark_text(fontWeight="bold").encode(x="x:Q", y="y:Q", text="branch:N")
    return (lines + heads + nodes + labels).properties(width=260, height=260, title=f"{method}: who teaches whom")


def token_strip(tokens: pd.DataFrame, edge: str = "") -> alt.Chart:
    """The token inspector (copd_lab.studies.inspector.opd_tokens): a row per rollout, a cell per token, coloured by the
    teacher's per-token advantage β·(log π_teacher − log π_student): blue where OPD pushes the token up, red where
    it pushes it down; a rollout's label says whether it is right."""
    data = tokens.assign(rollout_label=[f"rollout {r} ({'right' if c else 'wrong'})"
                                        for r, c in zip(tokens.rollout, tokens.correct)])
    limit = max(float(data.advantage.abs().max()), 1e-6) if len(data) else 1.0
    cells = alt.Chart(data).mark_rect(stroke="white").encode(
        x=alt.X("position:O", title="token position"), y=alt.Y("rollout_label:N", title=None),
        color=alt.Color("advantage:Q", scale=alt.Scale(scheme="redblue", domain=[-limit, limit]),
                        title="β·(log π_t − log π_s)"),
        tooltip=["text", alt.Tooltip("student_logp:Q", format=".3f"), alt.Tooltip("teacher_logp:Q", format=".3f"),
                 alt.Tooltip("advantage:Q", format="+.3f")])
    labels = alt.Chart(data).mark_text(fontSize=12).encode(x="position:O", y="rollout_label:N", text="text:N")
    return (cells + labels).properties(width=60 * max(int(data.position.max()) + 1 if len(data) else 1, 1),
                                       height=28 * max(data.rollout.nunique(), 1),
                                       title=f"OPD advantage per token, edge {edge}")
