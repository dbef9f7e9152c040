"""The results table in the paper's layout: per-domain scores, overall, delta against the base, budgets.

Overall is the mean over domains (the paper's overall is the mean over all benchmarks; with one score
per domain the two agree). With several seeds every cell is mean ± std over seeds.
"""

from __future__ import annotations

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


def results_table(metrics: pd.DataFrame, recipes: list[Recipe], domains: tuple[str, ...],
                  score: str = "auto") -> pd.DataFrame:
    """One row per reported model: `<domain>` and `overall` means (and `_std` over seeds), `delta`
    (overall minus the base's), and the budgets. score "auto": acc_exact where the world logged it, else
    acc_sampled."""
    if score == "auto":
        score = score_of(metrics)
    final = metrics[metrics.metric.str.startswith(f"final_{score}/")].copy()
    final["domain"] = final.metric.str.split("/").str[1]
    per_seed = final.pivot_table(index=["branch", "seed"], columns="domain", values="value")[list(domains)]
    per_seed["overall"] = per_seed.mean(axis=1)
    base = per_seed.loc["base", "overall"] if "base" in per_seed.index.get_level_values(0) else None
    if base is not None:
        per_seed["delta"] = per_seed["overall"] - base.reindex(per_seed.index.get_level_values("seed")).to_numpy()
    grouped = per_seed.groupby(level="branch")
    table = grouped.mean().join(grouped.std(ddof=0).add_suffix("_std"))
    order = ["base"] + [label for r in recipes for label, _ in r.outputs]
    table = table.reindex([o for o in order if o in table.index])
    spent = budgets(metrics, recipes)
    for key in ("steps_branch", "steps_method", "rollouts_method"):
        table[key] = [spent.get(label, {}).get(key, float("nan")) for label in table.index]
    table.index.name = "model"
    return table


def format_table(table: pd.DataFrame, domains: tuple[str, ...], seeds: int) -> str:
    """Markdown with one decimal percentages; mean ± std when there are several seeds."""
    columns = [*domains, "overall"] + (["delta"] if "delta" in table else [])
    head = "| model | " + " | ".join(columns) + " | steps/branch | steps/method |"
    lines = [head, "|" + "---|" * (len(columns) + 3)]
    for label, row in table.iterrows():
        cells = []
        for col in columns:
            cell = f"{100 * row[col]:+.1f}" if col == "delta" else f"{100 * row[col]:.1f}"
            if seeds > 1:
                cell += f" ± {100 * row[col + '_std']:.1f}"
            cells.append(cell)
        cells += [f"{row.steps_branch:.0f}", f"{row.steps_method:.0f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
