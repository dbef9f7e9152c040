"""The paper checks report CoPD's differences paired by seed: mean ± sample std of the per-seed differences."""

import math

from copd_lab.config_io import load_config
from copd_lab.experiment import run_comparison
from copd_lab.studies.paper_checks import paper_checks


def test_copd_versus_mixed_is_the_mean_and_sample_std_of_the_per_seed_differences():
    result = run_comparison(load_config(None, ["seeds=3", "methods=['base', 'mixed', 'copd']", "expert_steps=20",
                                               "copd.cycles=2"]), progress=False)
    final = result.metrics[result.metrics.metric.str.startswith("final_acc_exact/")]
    diffs = []
    for seed in (0, 1, 2):
        overall = {m: final[(final.branch == m) & (final.seed == seed)].value.mean() for m in ("copd", "mixed")}
        diffs.append(100 * (overall["copd"] - overall["mixed"]))
    mean = sum(diffs) / 3
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    check = {c["claim"]: c for c in paper_checks(result)}["CoPD beats mixed overall"]
    assert check["measured"] == f"{mean:+.1f} ± {std:.1f} points (paired by seed; sample std over 3 seeds)"
    assert check["agrees"] == (mean > 0)
