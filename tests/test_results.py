"""The results' statistics against naive references written with loops: the sample std over seeds (ddof = 1),
the per-seed delta, and the paired differences."""

import math

import numpy as np
import pandas as pd
import pytest

from copd_lab.algorithm.recipes import build_recipes
from copd_lab.config_io import load_config
from copd_lab.results import (
    OWN_EXPERTS,
    format_paired,
    format_table,
    paired_difference,
    paired_differences,
    results_table,
)

DOMAINS = ("text", "image", "video")
MODELS = ["base", "expert:text", "expert:image", "expert:video", "mixed", "mopd", "copd"]


def fake_metrics(seeds: list[int], rng_seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Final exact accuracies drawn at random for each model, seed and domain; also returned as a dict."""
    rng = np.random.default_rng(rng_seed)
    score, rows = {}, []
    for model in MODELS:
        for seed in seeds:
            for domain in DOMAINS:
                value = 0.3 if model == "base" else float(rng.uniform(0.2, 0.8))  # the base: no run seed
                score[model, seed, domain] = value
                rows.append(("run", model.split(":")[0], seed, 100, model, "", f"final_acc_exact/{domain}", value))
    return pd.DataFrame(rows, columns=["run", "method", "seed", "step", "branch", "pair", "metric", "value"]), score


def mean_and_sample_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def overall(score: dict, model: str, seed: int, domains=DOMAINS) -> float:
    return sum(score[model, seed, d] for d in domains) / len(domains)


@pytest.fixture(scope="module")
def recipes():
    return build_recipes(load_config(None, []))


def test_every_std_is_the_sample_std_over_seeds_and_delta_is_paired(recipes):
    seeds = [0, 1, 2]
    metrics, score = fake_metrics(seeds)
    table = results_table(metrics, recipes, DOMAINS, "acc_exact")
    assert sorted(table.index) == sorted(MODELS)
    for model in MODELS:
        for domain in DOMAINS:
            mean, std = mean_and_sample_std([score[model, s, domain] for s in seeds])
            assert table.loc[model, domain] == pytest.approx(mean)
            assert table.loc[model, f"{domain}_std"] == pytest.approx(std, abs=1e-12)
        mean, std = mean_and_sample_std([overall(score, model, s) for s in seeds])
        assert table.loc[model, "overall"] == pytest.approx(mean)
        assert table.loc[model, "overall_std"] == pytest.approx(std, abs=1e-12)
        deltas = [overall(score, model, s) - overall(score, "base", s) for s in seeds]
        mean, std = mean_and_sample_std(deltas)
        assert table.loc[model, "delta"] == pytest.approx(mean)
        assert table.loc[model, "delta_std"] == pytest.approx(std, abs=1e-12)


def test_one_seed_has_no_std_and_the_table_prints_no_plus_minus_nor_nan(recipes):
    metrics, _ = fake_metrics([4])
    table = results_table(metrics, recipes, DOMAINS, "acc_exact")
    assert table.filter(like="_std").isna().all().all()
    text = format_table(table, DOMAINS, seeds=1)
    assert "±" not in text and "nan" not in text.lower() and "sample std" not in text


def test_several_seeds_print_plus_minus_and_say_which_std_under_the_table(recipes):
    metrics, _ = fake_metrics([0, 1, 2])
    text = format_table(results_table(metrics, recipes, DOMAINS, "acc_exact"), DOMAINS, seeds=3)
    assert text.startswith("| model |") and "±" in text and "nan" not in text.lower()
    assert text.rstrip().splitlines()[-1] == "mean ± sample std over 3 seeds (ddof = 1)"


def test_paired_difference_matches_a_loop_over_the_seeds_both_sides_have():
    a = pd.Series({0: 0.5, 1: 0.7, 2: 0.4, 3: 0.9})
    b = pd.Series({1: 0.6, 0: 0.1, 2: 0.45, 5: 0.2})  # another order; seeds 3 and 5 are not paired
    diffs = [a[s] - b[s] for s in (0, 1, 2)]
    mean, std, n = paired_difference(a, b)
    want_mean, want_std = mean_and_sample_std(diffs)
    assert n == 3 and mean == pytest.approx(want_mean) and std == pytest.approx(want_std)
    mean, std, n = paired_difference(a.loc[[1]], b)
    assert n == 1 and mean == pytest.approx(0.1) and math.isnan(std)


def test_paired_differences_match_loops_for_each_model_and_the_experts_on_their_own_domain():
    seeds = [3, 4, 5]
    metrics, score = fake_metrics(seeds, rng_seed=1)
    table = paired_differences(metrics, DOMAINS, MODELS, "acc_exact")
    assert table.index.tolist() == ["mixed", "mopd", OWN_EXPERTS] and (table.seeds == 3).all()
    for model in ("mixed", "mopd"):
        for domain in DOMAINS:
            mean, std = mean_and_sample_std([score["copd", s, domain] - score[model, s, domain] for s in seeds])
            assert table.loc[model, domain] == pytest.approx(mean)
            assert table.loc[model, f"{domain}_std"] == pytest.approx(std)
        mean, std = mean_and_sample_std([overall(score, "copd", s) - overall(score, model, s) for s in seeds])
        assert table.loc[model, "overall"] == pytest.approx(mean)
        assert table.loc[model, "overall_std"] == pytest.approx(std)
    for domain in DOMAINS:
        mean, std = mean_and_sample_std([score["copd", s, domain] - score[f"expert:{domain}", s, domain]
                                         for s in seeds])
        assert table.loc[OWN_EXPERTS, domain] == pytest.approx(mean)
        assert table.loc[OWN_EXPERTS, f"{domain}_std"] == pytest.approx(std)
    own = [sum(score["copd", s, d] - score[f"expert:{d}", s, d] for d in DOMAINS) / len(DOMAINS) for s in seeds]
    mean, std = mean_and_sample_std(own)
    assert table.loc[OWN_EXPERTS, "overall"] == pytest.approx(mean)
    assert table.loc[OWN_EXPERTS, "overall_std"] == pytest.approx(std)
    text = format_paired(table, DOMAINS)
    assert text.startswith("| copd minus | text | image | video | overall |") and "nan" not in text.lower()
    assert text.rstrip().splitlines()[-1].startswith("paired by seed: mean ± sample std over 3 seeds (ddof = 1)")


def test_paired_differences_without_the_reference_are_empty():
    metrics, _ = fake_metrics([0, 1])
    assert paired_differences(metrics, DOMAINS, ["base", "mixed"], "acc_exact").empty
    assert format_paired(paired_differences(metrics, DOMAINS, ["base", "mixed"], "acc_exact"), DOMAINS) == ""


def test_the_ranking_under_each_score_matches_a_loop():
    """scores_overall: each model's overall score (mean over domains, then over seeds) under every logged score,
    and its rank (1 = best, ties share the best rank); a score the run did not log is left out."""
    from copd_lab.results import scores_overall

    exact, score = fake_metrics([0, 1, 2], rng_seed=1)
    greedy, greedy_score = fake_metrics([0, 1, 2], rng_seed=2)
    greedy["metric"] = greedy.metric.str.replace("acc_exact", "acc_greedy")
    table = scores_overall(pd.concat([exact, greedy]), DOMAINS, MODELS)
    assert list(table.columns) == ["acc_exact", "acc_exact_rank", "acc_greedy", "acc_greedy_rank"]
    for name, values in (("acc_exact", score), ("acc_greedy", greedy_score)):
        means = {m: sum(overall(values, m, s) for s in (0, 1, 2)) / 3 for m in MODELS}
        for model in MODELS:
            assert table.loc[model, name] == pytest.approx(means[model])
            assert table.loc[model, f"{name}_rank"] == 1 + sum(means[o] > means[model] + 1e-12 for o in MODELS)
