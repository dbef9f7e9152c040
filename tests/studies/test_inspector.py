"""The token inspector: each sampled token's OPD advantage, against the log-probs scored by hand."""

import pytest

from copd_lab.algorithm.slots import SlotKey
from copd_lab.config_io import load_config
from copd_lab.experiment import run_comparison
from copd_lab.playground import viz
from copd_lab.studies import inspector


@pytest.fixture(scope="module")
def run():
    small = ["methods=['copd']", "copd.rl_steps=3", "copd.opd_steps=2", "copd.cycles=2", "opd.beta=0.5"]
    return run_comparison(load_config(None, small), progress=False)


def test_the_advantage_is_beta_times_the_teachers_minus_the_students_log_prob(run):
    world, batch, edge = inspector.sample_edge(run, "image<-text", rollouts=3)
    tokens = inspector.token_table(world, batch, edge)
    length = world.max_new_tokens  # every simulator answer has answer_len tokens
    assert len(tokens) == 3 * length and set(tokens.position) == set(range(length)) and edge.beta == 0.5
    _, slots = run.final
    # the reference: each slot scores the batch on its own (World.token_logprobs, not the paired call)
    student = world.token_logprobs(batch, [slots[SlotKey("copd", "image")]], grad=False)[0]
    teacher = world.token_logprobs(batch, [slots[SlotKey("copd", "text")]], grad=False)[0]
    for row in tokens.itertuples():
        s, t = float(student[row.rollout, row.position]), float(teacher[row.rollout, row.position])
        assert abs(row.student_logp - s) < 1e-6 and abs(row.teacher_logp - t) < 1e-6
        assert abs(row.advantage - 0.5 * (t - s)) < 1e-6 and row.token == int(batch.tokens[0, row.rollout,
                                                                                           row.position])
        assert row.text.startswith(("s", "filler"))
    assert list(tokens.groupby("rollout").correct.first()) == [bool(c) for c in batch.correct[0].tolist()]


def test_an_unknown_edge_is_refused_by_name_and_the_strip_draws(run):
    with pytest.raises(ValueError, match="'video<-image' is not an OPD edge of copd"):
        inspector.opd_tokens(run, "video<-image")
    chart = viz.token_strip(inspector.opd_tokens(run, "text<-video"), "text<-video")
    assert chart.to_dict()["title"] == "OPD advantage per token, edge text<-video"


def test_a_frozen_teacher_is_read_from_its_snapshot():
    """With opd.teacher = frozen the trainer scores a teacher by its snapshot slot, and so does the inspector."""
    small = ["methods=['copd']", "copd.rl_steps=3", "copd.opd_steps=2", "copd.cycles=2", "opd.teacher='frozen'"]
    frozen = run_comparison(load_config(None, small), progress=False)
    world, batch, edge = inspector.sample_edge(frozen, "image<-text", rollouts=3)
    _, slots = frozen.final
    tokens = inspector.token_table(world, batch, edge)
    snapshot = world.token_logprobs(batch, [slots[SlotKey("copd", "text", frozen=True)]], grad=False)[0]
    live = world.token_logprobs(batch, [slots[SlotKey("copd", "text")]], grad=False)[0]
    assert (snapshot - live).abs().max() > 1e-4  # the branch moved after its last snapshot
    for row in tokens.itertuples():
        assert abs(row.teacher_logp - float(snapshot[row.rollout, row.position])) < 1e-6
