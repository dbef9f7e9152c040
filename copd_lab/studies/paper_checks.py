"""The paper's claims (docs/paper.md §8), each checked against a run: what the playground's
"Does this run agree with the paper?" table shows."""

from __future__ import annotations

import numpy as np

from copd_lab.experiment import Comparison
from copd_lab.results import OWN_EXPERTS, paired_differences


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
    paired = paired_differences(m, result.config.domains, list(overall.index), result.config.metrics.score)

    def versus(other: str, claim: str, strict: bool, suffix: str = "") -> None:
        """CoPD minus `other` overall, paired by seed: mean ± sample std of the per-seed differences (no ± with
        one seed); agrees when the mean is above 0 (strict) or at least 0."""
        diff, std = 100 * paired.loc[other, "overall"], 100 * paired.loc[other, "overall_std"]
        spread, note = ("", "") if np.isnan(std) else (
            f" ± {std:.1f}", f" (paired by seed; sample std over {paired.loc[other, 'seeds']:.0f} seeds)")
        checks.append({"claim": claim, "measured": f"{diff:+.1f}{spread} points{suffix}{note}",
                       "agrees": bool(diff > 0 if strict else diff >= 0)})

    for other in ("mixed", "mopd"):
        if other in paired.index:
            versus(other, f"CoPD beats {other} overall", strict=True)
    branches = [b for b in overall.index if b.startswith("copd[")]
    if branches and "copd" in overall.index:
        versus(overall[branches].idxmax(), "the merged CoPD model is at least as good as its best branch", False)
    if OWN_EXPERTS in paired.index:
        versus(OWN_EXPERTS, "CoPD matches each domain expert on its own domain", False, " on average")
    return checks


def checks_markdown(checks: list[dict]) -> str:
    """The paper checks as a markdown table."""
    mark = {True: "yes", False: "no", None: "-"}
    rows = [f"| {c['claim']} | {c['measured']} | {mark[c['agrees']]} |" for c in checks]
    return "\n".join(["| the paper finds | this run | agrees |", "|---|---|---|", *rows])
