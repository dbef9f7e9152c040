"""The task-vector statistics a run logs (Meter.measure_groups) against a loop over the flat weights in float64."""

import math

import pytest
import torch

from copd_lab.algorithm.update import train_step
from copd_lab.config import ExperimentConfig, MetricsConfig, SimConfig
from copd_lab.records.measure import GAP_METRICS, Meter
from copd_lab.sim.world import SimWorld
from copd_lab.world import Request

SMALL = SimConfig(shared_features=2, own_features=1, train_prompts=20, eval_prompts=3, answer_len=2, digits=3, styles=2,
                  filler=1, base_steps=5)  # V = 7


def task_vector(world: SimWorld, slot: int) -> list[float]:
    """θ − θ_0 of a slot, entry by entry, in float64."""
    theta, base = world.flat_weights([slot])[0].double().tolist(), world.flat_weights([0])[0].double().tolist()
    return [t - b for t, b in zip(theta, base, strict=True)]


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def cosine(a: list[float], b: list[float]) -> float:
    """⟨τ_a, τ_b⟩ / (‖τ_a‖‖τ_b‖), 0 where either task vector is zero."""
    return sum(x * y for x, y in zip(a, b, strict=True)) / (norm(a) * norm(b)) if norm(a) and norm(b) else 0.0


def test_logged_task_vector_norm_distance_and_cosine_match_a_loop_over_the_weights():
    cfg = ExperimentConfig(domains=("text", "image", "video"), sim=SMALL, metrics=MetricsConfig(topk=3))
    world = SimWorld(cfg.sim, cfg.domains)
    world.reset(7, seed=0)  # slot 0: the base θ_0
    # experts' slots 1-3: a few GRPO steps each on its own domain
    for _ in range(3):
        train_step(world, cfg, [Request(s, (s - 1,), stream="experts") for s in (1, 2, 3)], lambda i, what: None)
    # another method's slots: a random task vector, twice that vector, and the base itself (a zero task vector)
    base = world.get_slot(0)
    noise = 0.05 * torch.randn(base.shape, generator=torch.Generator().manual_seed(0))
    world.set_slot(4, base + noise)
    world.set_slot(5, base + 2 * noise)
    groups = [("experts", [("text", 1), ("image", 2), ("video", 3)]),
              ("copd", [("text", 4), ("image", 5), ("video", 6)]), ("mixed", [("mixed", 1)])]

    rows = []
    Meter(cfg, world, lambda *row: rows.append(row)).measure_groups(7, [(*group, None) for group in groups], full=True)
    logged = {(method, branch, pair, metric): value for method, step, branch, pair, metric, value in rows}
    assert all(step == 7 for _, step, *_ in rows) and len(logged) == len(rows)  # one row per statistic

    want = {}
    for method, branches in groups:
        vectors = {branch: task_vector(world, slot) for branch, slot in branches}
        for i, (a, _) in enumerate(branches):
            want[(method, a, "", "task_vector_norm")] = norm(vectors[a])
            for b, _ in branches[i + 1:]:
                difference = [x - y for x, y in zip(vectors[a], vectors[b], strict=True)]
                want[(method, a, f"{a}|{b}", "task_vector_distance")] = norm(difference)
                want[(method, a, f"{a}|{b}", "task_vector_cosine")] = cosine(vectors[a], vectors[b])
    task_rows = {key: value for key, value in logged.items() if key[3].startswith("task_vector")}
    assert task_rows.keys() == want.keys()
    for key, value in want.items():
        assert task_rows[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    # the cases the loop covers: trained experts moved, a zero task vector, parallel task vectors
    assert min(want[("experts", b, "", "task_vector_norm")] for b in ("text", "image", "video")) > 0
    assert task_rows[("copd", "video", "", "task_vector_norm")] == 0.0
    assert task_rows[("copd", "text", "text|video", "task_vector_cosine")] == 0.0
    assert want[("copd", "text", "text|image", "task_vector_cosine")] == pytest.approx(1.0, rel=1e-5)
    # and beside them, every gap metric of every ordered pair and of each branch against the base
    gap_rows = {key for key in logged if not key[3].startswith("task_vector")}
    pairs = {(method, s, f"{s}<-{t}") for method, branches in groups for s, _ in branches
             for t in [b for b, _ in branches] + ["base"] if t != s}
    assert gap_rows == {(*pair, metric) for pair in pairs for metric in GAP_METRICS}


def test_calibrated_accuracy_is_held_out_exact_accuracy_at_the_temperature_best_on_train_prompts():
    """acc_calibrated (a reported model's skill apart from its confidence): for each model, the temperature of the
    grid with the best mean exact accuracy over its domains' train prompts (the first of equal ones), and its held-out
    exact accuracy per domain at that temperature; against a loop over models, temperatures and domains."""
    from copd_lab.records.measure import CALIBRATION_GRID

    cfg = ExperimentConfig(domains=("text", "image", "video"), sim=SMALL, metrics=MetricsConfig(topk=3))
    world = SimWorld(cfg.sim, cfg.domains)
    world.reset(4, seed=0)
    base = world.get_slot(0)
    for slot in (1, 2, 3):  # models of different sharpness: the base scaled (sharper or flatter), and a random one
        world.set_slot(slot, base * (0.4, 3.0, 1.0)[slot - 1] + (slot == 3) * torch.randn(
            base.shape, generator=torch.Generator().manual_seed(slot)))
    outputs = [("m", f"model{slot}", slot) for slot in (0, 1, 2, 3)]
    rows = []
    Meter(cfg, world, lambda *row: rows.append(row)).accuracy_of(outputs, 9, final=True)
    logged = {(branch, metric): value for _, _, branch, _, metric, value in rows}

    chosen = set()
    for _, label, slot in outputs:
        best, best_train = None, -1.0
        for t in CALIBRATION_GRID:
            train = sum(world.exact_accuracy([Request(slot, (d,))], temperature=t, split="train").item()
                        for d in range(3)) / 3
            if train > best_train + 1e-12:
                best, best_train = t, train
        chosen.add(best)
        assert logged[(label, "final_calibrated_temperature")] == pytest.approx(best)
        for d, name in enumerate(cfg.domains):
            want = world.exact_accuracy([Request(slot, (d,))], temperature=best).item()
            assert logged[(label, f"final_acc_calibrated/{name}")] == pytest.approx(want, abs=1e-6)
    assert len(chosen) > 1  # the models were made to prefer different temperatures
    # evaluations during training log no calibration (it costs 14 exact passes)
    rows.clear()
    Meter(cfg, world, lambda *row: rows.append(row)).accuracy_of(outputs, 10, final=False)
    assert not any("calibrated" in metric for *_, metric, _ in rows)


def test_a_pair_is_measured_on_its_teachers_domain_and_against_the_base_on_its_own():
    """The gap of student<-teacher uses the student's rollouts on the teacher's domain (where the edge's OPD acts);
    <-base on the student's own domain; a branch that is no domain's (mixed) on every domain."""
    cfg = ExperimentConfig(domains=("text", "image", "video"), sim=SMALL, metrics=MetricsConfig(topk=3))
    world = SimWorld(cfg.sim, cfg.domains)
    world.reset(5, seed=0)
    asked = []
    sample = world.sample

    def recording(requests, *args, **kwargs):
        asked.extend((r.slot, r.domains) for r in requests)
        return sample(requests, *args, **kwargs)

    world.sample = recording
    rows = []
    groups = [("copd", [("text", 1), ("image", 2), ("video", 3)], [("image", "text"), ("text", "image")]),
              ("mixed", [("mixed", 4)], None)]
    Meter(cfg, world, lambda *row: rows.append(row)).measure_groups(3, groups, full=False)
    # the students' own rollouts: one request per (student, domain) key, and no other
    assert sorted(asked) == sorted({(2, (0,)), (1, (1,)), (1, (0,)), (2, (1,)), (3, (2,)), (4, (0, 1, 2))})
    pairs = {pair for _, _, _, pair, metric, _ in rows if metric == "overlap"}
    assert pairs == {"image<-text", "text<-image", "text<-base", "image<-base", "video<-base", "mixed<-base"}
