"""Which branch pairs a run measures the gap of (metrics.gap_pairs): the decision, and the pair labels a run logs."""

import pytest

from copd_lab.algorithm.topology import gap_pairs
from copd_lab.config import ALL_PAIRS_UP_TO
from copd_lab.config_io import load_config
from copd_lab.experiment import run_comparison
from copd_lab.records.measure import GAP_METRICS

DOMAINS = ["d0", "d1", "d2", "d3"]
HUB_EDGES = {("d0", "d1"), ("d1", "d0"), ("d0", "d2"), ("d2", "d0"), ("d0", "d3"), ("d3", "d0")}
SMALL = [f"domains={DOMAINS}", "methods=['experts', 'copd']", "copd.hub='d0'", "expert_steps=6",
         "copd.rl_steps=2", "copd.opd_steps=1", "copd.cycles=2", "metrics.eval_every=3", "metrics.gap_every=3",
         "sim.eval_prompts=8", "seeds=2"]  # two seeds side by side: their GapOf calls are placed and joined


def config(*overrides: str):
    return load_config(None, [f"domains={[f'd{i}' for i in range(30)]}", "copd.hub='d0'", *overrides])


def names(k: int) -> list[str]:
    return [f"d{i}" for i in range(k)]


def test_auto_measures_every_pair_up_to_ten_branches_and_the_topologys_edges_beyond():
    cfg = config()
    assert cfg.metrics.gap_pairs == "auto" and ALL_PAIRS_UP_TO == 10
    assert gap_pairs(names(10), cfg) is None  # None: every ordered pair
    eleven = gap_pairs(names(11), cfg)
    assert set(eleven) == {p for i in range(1, 11) for p in (("d0", f"d{i}"), (f"d{i}", "d0"))}
    assert len(eleven) == len(set(eleven)) == 20  # each pair once
    assert gap_pairs(names(30), config("metrics.gap_pairs='all'")) is None
    assert set(gap_pairs(names(3), config("metrics.gap_pairs='edges'"))) == {("d0", "d1"), ("d1", "d0"),
                                                                            ("d0", "d2"), ("d2", "d0")}


def test_edges_are_joined_both_ways_whatever_the_topologys_direction_and_drops_stay_measured():
    one_way = gap_pairs(names(4), config("metrics.gap_pairs='edges'", "copd.topology='one_way'"))
    assert set(one_way) == {(a, b) for i in range(4) for a, b in [(f"d{i}", f"d{(i + 1) % 4}"),
                                                                   (f"d{(i + 1) % 4}", f"d{i}")]}
    dropped = config("metrics.gap_pairs='edges'", "copd.drop_edges=['d1<-d0']")
    assert ("d1", "d0") in gap_pairs(names(3), dropped)


def test_names_the_topology_cannot_join_get_every_pair():
    cfg = config("metrics.gap_pairs='edges'")
    assert gap_pairs(["mixed"], cfg) is None and gap_pairs(["student"], cfg) is None  # one branch: no pair anyway
    assert gap_pairs(names(30)[1:], cfg) is None  # the hub d0 is not among them
    assert gap_pairs(["d1", "d2"], config("metrics.gap_pairs='edges'", "copd.topology='edges'",
                                          "copd.edges=['d0<-d1']")) is None


def logged_pairs(mode: str):
    """The pair labels of each method's gap rows and task-vector rows, and the metrics of each gap pair."""
    m = run_comparison(load_config(None, SMALL + [f"metrics.gap_pairs='{mode}'"]), progress=False).metrics
    gap = m[m.metric.isin(GAP_METRICS)]
    vectors = m[m.metric.isin(["task_vector_distance", "task_vector_cosine"])]
    per_pair = gap.groupby(["method", "seed", "step", "pair"]).metric.nunique()
    return ({method: set(gap[gap.method == method].pair) for method in ("experts", "copd")},
            {method: set(vectors[vectors.method == method].pair) for method in ("experts", "copd")}, per_pair, m)


@pytest.mark.parametrize("mode", ["edges", "all"])
def test_a_run_logs_the_chosen_pairs_and_each_branch_against_the_base(mode):
    gap, vectors, per_pair, m = logged_pairs(mode)
    chosen = HUB_EDGES if mode == "edges" else {(s, t) for s in DOMAINS for t in DOMAINS if s != t}
    want = {f"{s}<-{t}" for s, t in chosen} | {f"{d}<-base" for d in DOMAINS}
    assert gap == {"experts": want, "copd": want}  # experts and CoPD: the same pairs
    unordered = {f"{a}|{b}" for a, b in chosen if DOMAINS.index(a) < DOMAINS.index(b)}
    assert vectors == {"experts": unordered, "copd": unordered}
    assert (per_pair >= len(GAP_METRICS) - 2).all()  # every pair measured at a tick has all its (quick) metrics
    for method in ("experts", "copd"):  # and every seed at every measured tick has the whole set
        rows = m[(m.method == method) & (m.metric == "overlap")]
        assert (rows.groupby(["seed", "step"]).pair.nunique() == len(want)).all()
        assert set(rows.seed) == {0, 1}
    norms = m[m.metric == "task_vector_norm"]
    assert set(norms[norms.method == "copd"].branch) == set(DOMAINS)  # a norm for every branch either way
