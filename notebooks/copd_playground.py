import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="CoPD playground")


@app.cell
def _():
    import marimo as mo

    return (mo,)


@app.cell
def _():
    from copd_lab.config import ConfigError
    from copd_lab.playground import knobs as playground
    from copd_lab.playground import marimo_ui as playground_ui
    from copd_lab.playground import viz
    from copd_lab.studies import inspector, paper_checks

    return ConfigError, inspector, paper_checks, playground, playground_ui, viz


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    # Co-Evolving Policy Distillation, live

    K experts start from one base model π₀ and train side by side. Each cycle is **Phase I**: S_RL steps of
    GRPO on the expert's own domain; then **Phase II**: S_OPD steps where the expert also samples on its
    neighbours' prompts and is graded token by token by them (on-policy distillation). At the end the
    experts are merged into one model. Every knob below re-runs the simulator (`docs/simulator.md`) and
    redraws the charts; the URL keeps the setting, so it can be shared as a link.
    """)
    return


@app.cell
def _(mo, playground):
    # a snapshot of the URL at open (not bound to a name: writing the URL later re-runs nothing)
    _query = mo.query_params().to_dict()
    preset = mo.ui.dropdown(options=list(playground.PRESETS), value=_query.get("preset", "the paper's setting")
                            if _query.get("preset") in playground.PRESETS else "the paper's setting",
                            label="preset")
    initial = _query
    return initial, preset


@app.cell
def _(initial, mo, playground, playground_ui, preset):
    _values = playground.knobs_from_query(initial if preset.value == initial.get("preset", preset.value)
                                          else {}, preset.value)
    knobs = playground_ui.controls(mo, _values)
    return (knobs,)


@app.cell
def _(initial, knobs, mo, playground, playground_ui, preset):
    # per-branch and per-edge knobs, for the branches and topology chosen above (from the URL at first)
    _now = {**playground.knobs_from_query(initial), **playground_ui.values_of(knobs.value)}
    branch_knobs = playground_ui.branch_controls(mo, _now)
    return (branch_knobs,)


@app.cell
def _(branch_knobs, initial, knobs, mo, playground_ui, preset):
    _edges = branch_knobs["edges"] if knobs.value["topology"] == "edges" else branch_knobs["drop"]
    _branches = mo.vstack([mo.md("**Branches and edges**"), branch_knobs["hub"], mo.md("step rates"),
                           branch_knobs["rates"].hstack(), _edges,
                           mo.accordion({"β per edge": branch_knobs["edge_beta"].hstack()})])
    _hidden = initial.get("hide", "").split(",")
    mo.vstack([preset, playground_ui.panel(mo, knobs, initial.get("hide", "")),
               *([] if "branches" in _hidden else [_branches])])
    return


@app.cell
def _(ConfigError, branch_knobs, knobs, mo, playground, playground_ui, preset):
    values = {**playground.DEFAULTS, **playground_ui.values_of(knobs.value),
              **playground_ui.branch_values(branch_knobs.value, float(knobs.value["beta"]))}
    problem = None
    try:
        cfg = playground.config(values)
    except ConfigError as err:
        cfg, problem = None, str(err)
    if cfg is not None:  # the URL carries the setting: a knob at its default leaves it
        _query = mo.query_params()
        _wanted = {"preset": preset.value, **playground.query_from_knobs(values)}
        for _key in [k for k in _query if k in playground.BY_KEY and k not in _wanted]:
            del _query[_key]
        for _key, _text in _wanted.items():
            _query[_key] = _text
    return cfg, problem, values


@app.cell
def _(mo):
    real_run = mo.ui.run_button(label="run on the VLM")
    return (real_run,)


@app.cell
def _(cfg, mo, real_run):
    # only the VLM world waits for the button (a cell that stops would stop the run below with it)
    (mo.vstack([real_run, mo.md("The VLM world runs from this button, checkpointed under `runs/playground/`: stop "
                                "it with the cell's stop button and press again to resume where it stopped.")])
     if cfg is not None and cfg.world != "sim" else mo.md(""))
    return


@app.cell
def _(cfg, mo, playground, playground_ui, problem, real_run):
    mo.stop(cfg is None, mo.callout(mo.md(f"**Not a valid setting:** {problem}"), kind="danger"))
    mo.stop(cfg.world != "sim" and not real_run.value, mo.md("_Press **run on the VLM** to train on the real model._"))
    try:
        if cfg.world == "sim":
            with mo.status.spinner(title="running the simulator"):
                result = playground.run(cfg)
        else:  # each finished seed's table is drawn while the next one runs
            result = playground.saved_run(
                cfg, progress=lambda **bar: playground_ui.MarimoBar(mo, **bar),
                on_eval=playground_ui.live_accuracy(mo, cfg),
                on_seed=lambda partial: mo.output.replace(mo.md(f"**{partial.config.seeds} of {cfg.seeds} seeds "
                                                                f"done**\n\n{partial.table()}")))
    except playground.RUN_ERRORS as err:  # a missing extra, a model folder refused, a run that went non-finite
        mo.stop(True, mo.callout(mo.md(f"**The run stopped:** {err}"), kind="danger"))
    return (result,)


@app.cell
def _(mo, paper_checks, result):
    _checks = paper_checks.checks_markdown(paper_checks.paper_checks(result))
    mo.md("## Does this run agree with the paper?\n\n" + _checks)
    return


@app.cell
def _(mo, result):
    mo.md(f"""
    ## Results (exact held-out accuracy, %)\n\n{result.table()}

    The last table ranks the models under each score. `acc_exact` is the expected accuracy at temperature 1 (the
    expectation of the paper's avg@k at temperature 1): it rewards a model's confidence as well as its skill.
    `acc_greedy` (the arg-max answer) and `acc_calibrated` (each model at its best temperature on train prompts)
    score the skill alone. A method that leads under `acc_exact` only is sharper, not better.
    """)
    return


@app.cell(hide_code=True)
def _(mo):
    mo.md(
        r"""
        ## What each phase optimises

        **Phase I, GRPO** (Eq. 7): for a prompt's G rollouts with verifier rewards $r_1..r_G$, each token of
        rollout i gets the advantage $\hat A_i = (r_i - \operatorname{mean}(r)) / \operatorname{std}(r)$, in the
        clipped policy-gradient loss. **Phase II** adds, for each neighbour j, a batch on j's prompts whose
        token t gets $\hat A_t = \beta\,(\log \pi_j(y_t) - \log \pi_k(y_t))$ (Eq. 8), all in one update of
        $\theta_k$. **The merge**: $\theta = \sum_k w_k \theta_k$ (average), or task arithmetic
        $\theta_0 + \lambda \sum_k w_k (\theta_k - \theta_0)$, TIES or DARE. **What to look for**: the
        experts each win their own domain; mixed RLVR pays for the conflict between domains; CoPD's branches
        should learn their neighbours' skills through OPD while staying close enough to merge.
        """
    )
    return


@app.cell
def _(mo, result, viz):
    mo.vstack([mo.md("## Accuracy over training"), viz.accuracy_over_steps(result.metrics, result.recipes)])
    return


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## The behavioural gap

    Top-k overlap between a student p and a teacher q, on the student's own rollouts:
    $O_k = \mathbb{E}_t\, |S_k(p_t) \cap S_k(q_t)| / k$ (k = 10). The OPD advantage of a sampled token is
    $\beta\,(\log \pi_\text{teacher} - \log \pi_\text{student})$. **What to look for:** the paper finds that
    independent experts drift apart (overlap falls monotonically, symmetric KL rises about 10x), while
    CoPD's overlap saw-tooths (down in Phase I, up in Phase II) and stays above 0.9.
    """)
    return


@app.cell
def _(mo, result, viz):
    mo.vstack([viz.gap_over_time(result.metrics, result.recipes, "copd"),
               mo.md("Independent experts, for comparison:"),
               viz.gap_over_time(result.metrics, result.recipes, "experts")
               if "experts" in result.config.methods else mo.md("(no experts in this run)")])
    return


@app.cell
def _(mo, result, viz):
    _steps = viz.measured_steps(result.metrics, "copd")
    heat_step = mo.ui.slider(steps=_steps, value=_steps[-1], label="tick", debounce=True)
    heat_step
    return (heat_step,)


@app.cell
def _(heat_step, mo, result, viz):
    mo.lazy(lambda: mo.hstack([viz.overlap_heatmap(result.metrics, "copd", heat_step.value),
                               viz.overlap_heatmap(result.metrics, "copd", heat_step.value, metric="symmetric_kl")]))
    return


@app.cell
def _(mo, result, viz):
    mo.vstack([mo.md("## The schedule (red: an adaptive OPD window opened)"),
               mo.lazy(lambda: viz.schedule_timeline(result.recipes, metrics=result.metrics))])
    return


@app.cell
def _(mo, result, viz):
    mo.vstack([mo.md("## Who teaches whom"),
               mo.lazy(lambda: viz.topology_graph(result.metrics, result.recipes, "copd"))])
    return


@app.cell
def _(inspector, mo, result):
    edge = mo.ui.dropdown(options=[e.label for e in inspector.opd_edges(result)],
                          value=inspector.opd_edges(result)[0].label, label="OPD edge (student<-teacher)")
    edge
    return (edge,)


@app.cell
def _(edge, inspector, mo, result, viz):
    mo.vstack([mo.md("## Token inspector: what an OPD edge pushes up (blue) or down (red)"),
               mo.lazy(lambda: viz.token_strip(inspector.opd_tokens(result, edge.value, rollouts=6), edge.value))])
    return


@app.cell
def _(mo):
    map_button = mo.ui.run_button(label="map where CoPD wins: conflict x style habit (9 runs)")
    map_button
    return (map_button,)


@app.cell
def _(map_button, mo, playground, values, viz):
    mo.stop(not map_button.value, mo.md("_Press the button to run the two-knob map with the settings above._"))
    _cells = playground.knob_map(values, "habit", [0.0, 0.5, 1.0], "conflict", [0.0, 0.25, 0.5],
                                 progress=lambda cells: mo.status.progress_bar(cells, title="two-knob map"))
    mo.vstack([mo.md("CoPD minus the best other method (points), overall exact accuracy:"),
               viz.knob_map(_cells, "habit", "conflict")])
    return


if __name__ == "__main__":
    app.run()
