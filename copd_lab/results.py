"""The results table in the paper's layout: per-domain scores, overall, delta against the base, budgets.

Overall is the mean over domains (the paper's overall is the mean over all benchmarks; with one score
per domain the two agree). With several seeds every cell is mean ± sample std (ddof = 1) over seeds; with
one seed the std is NaN and no ± is shown. A difference between two models (`delta`, `paired_differences`)
is taken seed by seed, then summarised as the mean ± sample std of the per-seed differences.
"""

from __future__ import annotations

import math

import pandas as pd

from copd_lab.algorithm.recipes import Recipe
from copd_lab.algorithm.slots import BASE, MERGED


def budgets(metrics: pd.DataFrame, recipes: list[Recipe]) -> dict[str, dict[str, float]]:
    """Steps and rollouts behind each reported model, measured by the trainer.

    steps_branch: gradient steps in the weights' own history (its init branch's steps included);
    steps_method: steps of every branch of the method and of the recipes it required (what a fair
    comparison matches: mixed RLVR and CoPD against the sum of the experts' steps).
    """
    counts = metrics[metrics.step == -1].groupby(["method", "branch", "metric"]).value.mean()
    by_name = {r.name: r for r in recipes}

    def own(recipe: Recipe, branch: str, metric: str) -> float:
        value = float(counts.get((recipe.name, branch, metric), 0.0))
        init = recipe.branch(branch).init
        if init != BASE:  # another recipe's branch: its steps are this one's history too
            value += own(by_name[init.recipe], init.branch, metric)
        return value

    def total(recipe: Recipe, metric: str) -> float:
        value = sum(float(counts.get((recipe.name, b.name, metric), 0.0)) for b in recipe.branches)
        return value + sum(total(by_name[r], metric) for r in recipe.requires)

    out = {"base": {"steps_branch": 0.0, "steps_method": 0.0, "rollouts_method": 0.0}}
    for recipe in recipes:
        for label, branch in recipe.outputs:
            names = [b.name for b in recipe.branches] if branch == MERGED else [branch]
            out[label] = {"steps_branch": max(own(recipe, n, "steps") for n in names),
                          "steps_method": total(recipe, "steps"), "rollouts_method": total(recipe, "rollouts")}
    return out


def score_of(metrics: pd.DataFrame) -> str:
    """The accuracy a run reports: acc_exact where the world logged it (the simulator's exact expectation), else
    acc_sampled (the VLM's sampled pass@1)."""
    return "acc_exact" if metrics.metric.str.match(r"^(final_)?acc_exact/").any() else "acc_sampled"


def per_seed_scores(metrics: pd.DataFrame, domains: tuple[str, ...], score: str = "auto") -> pd.DataFrame:
    """Each reported model's final score per seed: index (branch, seed), columns `<domain>` and `overall` (the
    mean over domains). score "auto": acc_exact where the world logged it, else acc_sampled."""
    if score == "auto":
        score = score_of(metrics)
    final = metrics[metrics.metric.str.startswith(f"final_{score}/")].copy()
    final["domain"] = final.metric.str.split("/").str[1]
    per_seed = final.pivot_table(index=["branch", "seed"], columns="domain", values="value")[list(domains)]
    per_seed["overall"] = per_seed.mean(axis=1)
    return per_seed


def results_table(metrics: pd.DataFrame, recipes: list[Recipe], domains: tuple[str, ...],
                  score: str = "auto") -> pd.DataFrame:
    """One row per reported model: `<domain>` and `overall` means (and `_std`, the sample std over seeds, NaN
    with one seed), `delta` (overall minus the base's, taken seed by seed: its `_std` is the sample std of the
    per-seed deltas), and the budgets. score "auto": acc_exact where the world logged it, else acc_sampled."""
    per_seed = per_seed_scores(metrics, domains, score)
    base = per_seed.loc["base", "overall"] if "base" in per_seed.index.get_level_values(0) else None
    if base is not None:
        per_seed["delta"] = per_seed["overall"] - base.reindex(per_seed.index.get_level_values("seed")).to_numpy()
    grouped = per_seed.groupby(level="branch")
    table = grouped.mean().join(grouped.std(ddof=1).add_suffix("_std"))
    order = ["base"] + [label for r in recipes for label, _ in r.outputs]
    table = table.reindex([o for o in order if o in table.index])
    spent = budgets(metrics, recipes)
    for key in ("steps_branch", "steps_method", "rollouts_method"):
        table[key] = [spent.get(label, {}).get(key, float("nan")) for label in table.index]
    table.index.name = "model"
    return table


def paired_difference(a: pd.Series, b: pd.Series) -> tuple[float, float, int]:
    """a − b paired by seed (both indexed by seed): the mean and the sample std (ddof = 1) of the per-seed
    differences over the seeds both have, and their number. The std is NaN with fewer than two seeds."""
    diff = (a - b).dropna()  # index alignment pairs the seeds; a seed only one side has drops out
    return float(diff.mean()), float(diff.std(ddof=1)) if len(diff) > 1 else math.nan, len(diff)


OWN_EXPERTS = "experts, own domain"  # paired_differences' row for expert:<d> compared on domain d only


def paired_differences(metrics: pd.DataFrame, domains: tuple[str, ...], models: list[str], score: str = "auto",
                       reference: str = "copd") -> pd.DataFrame:
    """`reference` minus each other model of `models` (in that order; the base is left out: `delta` is that
    difference), paired by seed. One row per model: `<domain>` and `overall` means of the per-seed differences,
    their sample std (`_std`, NaN with one seed) and `seeds`, the number of seeds paired. The experts are one row,
    OWN_EXPERTS: expert:<d> on domain d only, and overall the mean of those over the domains, seed by seed.
    Empty when the reference is not among `models`."""
    columns = [*domains, "overall"]
    per_seed = per_seed_scores(metrics, domains, score)
    models = [m for m in models if m in per_seed.index.get_level_values(0)]
    if reference not in models:
        return pd.DataFrame(columns=columns + [c + "_std" for c in columns] + ["seeds"])
    ref = per_seed.loc[reference]
    others = {m: per_seed.loc[m] for m in models if m not in (reference, "base") and not m.startswith("expert:")}
    own = [d for d in domains if f"expert:{d}" in models]
    if own:  # one frame of the experts' own-domain scores, and the reference's overall on those domains
        experts = pd.DataFrame({d: per_seed.loc[f"expert:{d}", d] for d in own})
        experts["overall"] = experts.mean(axis=1)
        ref = ref.assign(own_overall=ref[own].mean(axis=1))
        others[OWN_EXPERTS] = experts
    rows = {}
    for model, scores in others.items():
        row = {}
        for col in columns:
            if col not in scores:
                row[col] = row[col + "_std"] = math.nan
                continue
            mine = ref["own_overall"] if model == OWN_EXPERTS and col == "overall" else ref[col]
            row[col], row[col + "_std"], row["seeds"] = paired_difference(mine, scores[col])
        rows[model] = row
    table = pd.DataFrame.from_dict(rows, orient="index")[columns + [c + "_std" for c in columns] + ["seeds"]]
    table.index.name = f"{reference} minus"
    return table


def _cell(mean: float, std: float, signed: bool = False) -> str:
    """A percentage with one decimal, and ± std where the std is a number (never a printed NaN)."""
    if math.isnan(mean):
        return "-"
    cell = f"{100 * mean:+.1f}" if signed else f"{100 * mean:.1f}"
    return cell if math.isnan(std) else f"{cell} ± {100 * std:.1f}"


def std_note(seeds: int) -> str:
    """The line under a table that shows ± x: which std it is."""
    return f"mean ± sample std over {seeds} seeds (ddof = 1)"


def format_table(table: pd.DataFrame, domains: tuple[str, ...], seeds: int) -> str:
    """Markdown with one decimal percentages; mean ± sample std when there are several seeds, said in a line
    under the table."""
    columns = [*domains, "overall"] + (["delta"] if "delta" in table else [])
    head = "| model | " + " | ".join(columns) + " | steps/branch | steps/method |"
    lines = [head, "|" + "---|" * (len(columns) + 3)]
    for label, row in table.iterrows():
        cells = [_cell(row[col], row[col + "_std"] if seeds > 1 else math.nan, signed=col == "delta")
                 for col in columns]
        cells += [f"{row.steps_branch:.0f}", f"{row.steps_method:.0f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if seeds > 1:
        lines += ["", std_note(seeds)]
    return "\n".join(lines) + "\n"


RANKED_SCORES = ("acc_exact", "acc_calibrated", "acc_greedy", "acc_sampled")  # the scores a ranking is shown under


def scores_overall(metrics: pd.DataFrame, domains: tuple[str, ...], models: list[str]) -> pd.DataFrame:
    """Each reported model's overall score (mean over domains, then over seeds) under every score of RANKED_SCORES
    the run logged, with its rank under each (1 = best): whether a ranking rests on skill or on confidence."""
    out = pd.DataFrame(index=pd.Index(models, name="model"))
    for score in RANKED_SCORES:
        if not metrics.metric.str.startswith(f"final_{score}/").any():
            continue
        overall = per_seed_scores(metrics, domains, score)["overall"].groupby(level="branch").mean()
        out[score] = overall.reindex(models)
        out[f"{score}_rank"] = out[score].rank(ascending=False, method="min")
    return out


def format_scores(table: pd.DataFrame) -> str:
    """scores_overall as markdown: each score's overall accuracy and (rank)."""
    scores = [c for c in table.columns if not c.endswith("_rank")]
    lines = ["| model | " + " | ".join(scores) + " |", "|" + "---|" * (len(scores) + 1)]
    for label, row in table.iterrows():
        cells = ["-" if math.isnan(row[c]) else f"{100 * row[c]:.1f} ({row[c + '_rank']:.0f})" for c in scores]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    note = ("overall accuracy (rank) under each score: acc_exact at temperature 1 (rewards confidence), "
            "acc_calibrated at each model's best temperature on train prompts, acc_greedy (skill alone), "
            "acc_sampled (sampled pass@1)")
    return "\n".join(lines + ["", note]) + "\n"


def format_paired(table: pd.DataFrame, domains: tuple[str, ...]) -> str:
    """paired_differences as markdown, in points, with the line saying what the ± is; empty for an empty table."""
    if table.empty:
        return ""
    columns = [*domains, "overall"]
    lines = [f"| {table.index.name} | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for label, row in table.iterrows():
        lines.append(f"| {label} | " + " | ".join(_cell(row[c], row[c + "_std"], signed=True) for c in columns) + " |")
    seeds = int(table.seeds.min())
    return "\n".join(lines + ["", f"paired by seed: {std_note(seeds)} of the per-seed difference, in points"]) + "\n"
