"""The paper's claims (docs/paper.md §8), each checked against a run: what the playground's
"Does this run agree with the paper?" table shows."""

from __future__ import annotations

import numpy as np

from copd_lab.experiment import Comparison


def paper_checks(result: Comparison) -> list[dict]:
    """The paper's claims (docs/paper.md §8), each against this run: claim, what was measured, and whether it
    agrees (None where the run lacks the methods the claim needs)."""
    m, overall = result.metrics, result.results["overall"] * 100
    checks = []

    def gap(method: str, metric: str):
        rows = m[(m.method == method) & (m.metric == metric) & (m.pair != "") & ~m.pair.str.endswith("<-base")]
        return rows.groupby("step").value.mean()

    if "experts" in result.config.methods:
        overlap, kl = gap("experts", "overlap"), gap("experts", "symmetric_kl")
        kl = kl[kl.index > 0]
        growth = kl.iloc[-1] / max(kl.iloc[0], 1e-12) if len(kl) else float("nan")
        checks.append({"claim": "independent experts drift apart: their overlap falls, symmetric KL rises ~10x",
                       "measured": f"overlap {overlap.iloc[0]:.2f} -> {overlap.iloc[-1]:.2f}; KL x{growth:.1f}",
                       "agrees": bool(overlap.iloc[-1] < overlap.iloc[0] and growth >= 5)})
    copd_overlap = gap("copd", "overlap")
    checks.append({"claim": "CoPD's branches keep a top-10 overlap above 0.90 all run long",
                   "measured": f"lowest {copd_overlap.min():.2f}", "agrees": bool(copd_overlap.min() > 0.9)})
    for other in ("mixed", "mopd"):
        if other in overall.index:
            diff = overall["copd"] - overall[other]
            checks.append({"claim": f"CoPD beats {other} overall", "measured": f"{diff:+.1f} points",
                           "agrees": bool(diff > 0)})
    branches = [b for b in overall.index if b.startswith("copd[")]
    if branches:
        best = overall[branches].max()
        checks.append({"claim": "the merged CoPD model is at least as good as its best branch",
                       "measured": f"{overall['copd'] - best:+.1f} points", "agrees": bool(overall["copd"] >= best)})
    experts = [b for b in overall.index if b.startswith("expert:")]
    if experts:
        own = [result.results.loc["copd", d] - result.results.loc[f"expert:{d}", d] for d in result.config.domains
               if f"expert:{d}" in overall.index]
        checks.append({"claim": "CoPD matches each domain expert on its own domain",
                       "measured": f"{100 * float(np.mean(own)):+.1f} points on average",
                       "agrees": bool(np.mean(own) >= 0)})
    return checks


def checks_markdown(checks: list[dict]) -> str:
    """The paper checks as a markdown table."""
    mark = {True: "yes", False: "no", None: "-"}
    rows = [f"| {c['claim']} | {c['measured']} | {mark[c['agrees']]} |" for c in checks]
    return "\n".join(["| the paper finds | this run | agrees |", "|---|---|---|", *rows])
