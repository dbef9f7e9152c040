"""copd_lab.math.metrics against naive loop references (float64), gradients where differentiable, edge cases."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from copd_lab.math.metrics import (
    entropy_gap,
    gradient_conflict,
    nucleus_overlap,
    overlap_mass,
    overlap_token_advantage,
    sampled_reverse_kl,
    symmetric_kl,
    top1_overlap,
    topk_overlap,
)

LEAD, N, T, V = (2,), 3, 4, 7
F64 = torch.float64


def _positions(*shape: int):
    return list(itertools.product(*(range(s) for s in shape)))


def _mask() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    m = (torch.rand(*LEAD, N, T, generator=g) < 0.7).to(F64)
    m[1] = 0.0  # request 1 fully masked
    return m


def _logp(scale: float = 2.0) -> torch.Tensor:
    return torch.log_softmax(torch.randn(*LEAD, N, T, V, dtype=F64) * scale, dim=-1)


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A student and a nearby teacher: top-k sets overlap partly."""
    p = _logp()
    q = torch.log_softmax(p + 1.5 * torch.randn_like(p), dim=-1)
    return p, q


def ref_topk(row, k):
    return set(sorted(range(len(row)), key=lambda v: (-float(row[v]), v))[: min(k, len(row))])


def ref_mean(values: dict, counted) -> torch.Tensor:
    """values[(r, i, j)] -> float; mean over counted positions of each leading index r (0 when none)."""
    out = []
    for r in range(LEAD[0]):
        picked = [values[(r, i, j)] for i, j in _positions(N, T) if counted(r, i, j)]
        out.append(sum(picked) / len(picked) if picked else 0.0)
    return torch.tensor(out, dtype=F64)


# ---------------------------------------------------------------- top-k metrics


@pytest.mark.parametrize("k", [1, 3, 10])
def test_topk_overlap_matches_loop(k):
    torch.manual_seed(1)
    p, q = _pair()
    mask = _mask()
    got = topk_overlap(p, q, mask, k)
    values = {pos: len(ref_topk(p[pos], k) & ref_topk(q[pos], k)) / min(k, V)
              for pos in _positions(*LEAD, N, T)}
    torch.testing.assert_close(got, ref_mean(values, lambda *pos: mask[pos] > 0))
    assert got.shape == LEAD and got[1] == 0
    if k >= V:
        assert torch.all(got[0] == 1)


def test_top1_overlap_is_the_share_of_positions_whose_argmax_agree():
    """The top-1 overlap the gap logs beside top-k: a loop over positions comparing argmaxes."""
    torch.manual_seed(11)
    p, q = _pair()
    mask = _mask()
    values = {pos: float(int(p[pos].argmax()) == int(q[pos].argmax())) for pos in _positions(*LEAD, N, T)}
    want = ref_mean(values, lambda *pos: mask[pos] > 0)
    torch.testing.assert_close(top1_overlap(p, q, mask), want)
    torch.testing.assert_close(topk_overlap(p, q, mask, 1), want)


def test_topk_overlap_edges_identical_and_ties():
    p = _logp()
    mask = torch.ones(*LEAD, N, T)
    assert torch.all(topk_overlap(p, p, mask, 3) == 1)
    # all-tied student (uniform): its top-2 is ids {0, 1}; teacher ranks 1 and 5 first -> overlap 1/2
    uniform = torch.full((1, 1, 1, 6), -math.log(6), dtype=F64)
    teacher = torch.log_softmax(torch.tensor([[[[0.0, 3.0, 0.0, 0.0, 0.0, 2.0]]]], dtype=F64), dim=-1)
    assert topk_overlap(uniform, teacher, torch.ones(1, 1, 1), 2).item() == 0.5


@pytest.mark.parametrize("k", [2, 4, 10])
def test_overlap_mass_matches_loop(k):
    torch.manual_seed(2)
    p, q = _pair()
    mask = _mask()
    student_mass, teacher_mass = overlap_mass(p, q, mask, k)
    inter = {pos: ref_topk(p[pos], k) & ref_topk(q[pos], k) for pos in _positions(*LEAD, N, T)}
    counted = lambda *pos: mask[pos] > 0 and len(inter[pos]) > 0
    want_p = ref_mean({pos: sum(math.exp(p[pos][v]) for v in ids) for pos, ids in inter.items()}, counted)
    want_q = ref_mean({pos: sum(math.exp(q[pos][v]) for v in ids) for pos, ids in inter.items()}, counted)
    torch.testing.assert_close(student_mass, want_p)
    torch.testing.assert_close(teacher_mass, want_q)
    if k >= V:
        torch.testing.assert_close(student_mass[0], torch.tensor(1.0, dtype=F64))


def test_overlap_mass_skips_empty_intersections():
    # position 0: disjoint top-1 -> skipped; position 1: shared top-1 id 0
    p = torch.log(torch.tensor([[[[0.7, 0.3], [0.6, 0.4]]]], dtype=F64))
    q = torch.log(torch.tensor([[[[0.2, 0.8], [0.9, 0.1]]]], dtype=F64))
    student_mass, teacher_mass = overlap_mass(p, q, torch.ones(1, 1, 2), k=1)
    torch.testing.assert_close(student_mass, torch.tensor([0.6], dtype=F64))
    torch.testing.assert_close(teacher_mass, torch.tensor([0.9], dtype=F64))
    empty = overlap_mass(p[..., :1, :], q[..., :1, :], torch.ones(1, 1, 1), k=1)
    assert empty[0].item() == 0 and empty[1].item() == 0


@pytest.mark.parametrize("k", [1, 3, 10])
def test_overlap_token_advantage_matches_loop(k):
    torch.manual_seed(3)
    p, q = _pair()
    mask = _mask()
    got = overlap_token_advantage(p, q, mask, k)
    values, non_empty = {}, {}
    for pos in _positions(*LEAD, N, T):
        sp, sq = ref_topk(p[pos], k), ref_topk(q[pos], k)
        zp = math.log(sum(math.exp(p[pos][v]) for v in sp))
        zq = math.log(sum(math.exp(q[pos][v]) for v in sq))
        inter = sp & sq
        non_empty[pos] = bool(inter)
        terms = [math.exp(p[pos][v] - zp) * ((q[pos][v] - zq) - (p[pos][v] - zp)) for v in inter]
        values[pos] = sum(terms) / len(terms) if terms else 0.0
    want = ref_mean(values, lambda *pos: mask[pos] > 0 and non_empty[pos])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(overlap_token_advantage(p, p, mask, k), torch.zeros(LEAD, dtype=F64))


# ---------------------------------------------------------------- distribution gaps


def _kl(a, b):
    return sum(math.exp(a[v]) * (a[v] - b[v]) for v in range(len(a)) if math.exp(a[v]) > 0)


def test_symmetric_kl_matches_loop_and_grad():
    torch.manual_seed(4)
    p, q = _pair()
    p.requires_grad_()
    mask = _mask()
    got = symmetric_kl(p, q, mask)
    want = []
    for r in range(LEAD[0]):
        terms = [sum(torch.exp(p[r, i, j, v]) * (p[r, i, j, v] - q[r, i, j, v])
                     + torch.exp(q[r, i, j, v]) * (q[r, i, j, v] - p[r, i, j, v]) for v in range(V))
                 for i, j in _positions(N, T) if mask[r, i, j]]
        want.append(sum(terms) / len(terms) if terms else torch.zeros((), dtype=F64))
    want = torch.stack(want)
    torch.testing.assert_close(got, want)
    (g_got,) = torch.autograd.grad(got.sum(), p)
    (g_want,) = torch.autograd.grad(want.sum(), p)
    torch.testing.assert_close(g_got, g_want)
    assert torch.all(symmetric_kl(q, q, mask) == 0)
    torch.testing.assert_close(symmetric_kl(q, p, mask), got)


def test_symmetric_kl_with_zero_probabilities():
    # both zero on id 2: contributes 0; KL is finite
    p = torch.tensor([[[[math.log(0.5), math.log(0.5), -math.inf]]]], dtype=F64)
    q = torch.tensor([[[[math.log(0.25), math.log(0.75), -math.inf]]]], dtype=F64)
    want = _kl([math.log(0.5), math.log(0.5)], [math.log(0.25), math.log(0.75)])
    want += _kl([math.log(0.25), math.log(0.75)], [math.log(0.5), math.log(0.5)])
    assert symmetric_kl(p, q, torch.ones(1, 1, 1)).item() == pytest.approx(want, abs=1e-14)


def test_entropy_gap_matches_loop_and_grad():
    torch.manual_seed(5)
    p, q = _pair()
    p.requires_grad_()
    mask = _mask()
    got = entropy_gap(p, q, mask)
    want = []
    for r in range(LEAD[0]):
        terms = [abs(sum(-torch.exp(q[r, i, j, v]) * q[r, i, j, v] for v in range(V))
                     - sum(-torch.exp(p[r, i, j, v]) * p[r, i, j, v] for v in range(V)))
                 for i, j in _positions(N, T) if mask[r, i, j]]
        want.append(sum(terms) / len(terms) if terms else torch.zeros((), dtype=F64))
    want = torch.stack(want)
    torch.testing.assert_close(got, want)
    (g_got,) = torch.autograd.grad(got.sum(), p)
    (g_want,) = torch.autograd.grad(want.sum(), p)
    torch.testing.assert_close(g_got, g_want)
    # a one-hot (zero-entropy, with −inf log-probs) against uniform: gap log V, no nan
    one_hot = torch.full((1, 1, 1, V), -math.inf, dtype=F64)
    one_hot[..., 0] = 0.0
    uniform = torch.full((1, 1, 1, V), -math.log(V), dtype=F64)
    assert entropy_gap(one_hot, uniform, torch.ones(1, 1, 1)).item() == pytest.approx(math.log(V))


def test_sampled_reverse_kl_matches_loop():
    torch.manual_seed(6)
    p_tok = torch.randn(*LEAD, N, T, dtype=F64)
    q_tok = torch.randn(*LEAD, N, T, dtype=F64)
    p_tok[1, 0, 0] = math.nan  # garbage on a masked position
    mask = _mask()
    values = {pos: float(p_tok[pos] - q_tok[pos]) for pos in _positions(*LEAD, N, T)}
    want = ref_mean(values, lambda *pos: mask[pos] > 0)
    torch.testing.assert_close(sampled_reverse_kl(p_tok, q_tok, mask), want)


# ---------------------------------------------------------------- gradients (the task-vector statistics a run
# logs are tested in tests/records/test_measure.py)


def test_gradient_conflict_matches_loop():
    torch.manual_seed(8)
    grads = torch.randn(2, 3, 5, dtype=F64)
    grads[1, 2] = 0.0  # a zero gradient
    got = gradient_conflict(grads)
    assert got.shape == (2, 3, 3)
    for r, d, e in _positions(2, 3, 3):
        gd, ge = grads[r, d].tolist(), grads[r, e].tolist()
        nd, ne = math.sqrt(sum(x * x for x in gd)), math.sqrt(sum(x * x for x in ge))
        want = sum(x * y for x, y in zip(gd, ge, strict=True)) / (nd * ne) if nd > 0 and ne > 0 else 0.0
        assert got[r, d, e].item() == pytest.approx(want, abs=1e-12)
    torch.testing.assert_close(gradient_conflict(grads[0]), got[0])
    opposite = torch.tensor([[1.0, 2.0], [-2.0, -4.0]])
    torch.testing.assert_close(gradient_conflict(opposite), torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))


@pytest.mark.parametrize("k,mass", [(3, 0.5), (10, 0.9), (10, 1.0)])
def test_nucleus_overlap_matches_loop(k, mass):
    """O_k over the tokens that carry mass: each side's top tokens, in order, until they hold `mass` (the one that
    crosses it included), at most k; Jaccard of the two sets, averaged over counted positions."""
    torch.manual_seed(5)
    p, q = _pair()
    mask = _mask()

    def nucleus(logp):
        order = sorted(range(V), key=lambda v: (-float(logp[v]), v))[:k]
        kept, held = set(), 0.0
        for v in order:
            if held >= mass:
                break
            kept.add(v)
            held += math.exp(float(logp[v]))
        return kept

    values = {}
    for pos in _positions(*LEAD, N, T):
        a, b = nucleus(p[pos]), nucleus(q[pos])
        values[pos] = len(a & b) / len(a | b)
    torch.testing.assert_close(nucleus_overlap(p, q, mask, k, mass), ref_mean(values, lambda *pos: mask[pos] > 0))


def test_nucleus_overlap_is_one_for_one_behaviour_and_zero_for_disjoint_ones():
    sharp = torch.log_softmax(torch.tensor([[[[9.0, 8.5, 0.0, 0.0, 0.0, 0.0]]]], dtype=F64), dim=-1)
    other = torch.log_softmax(torch.tensor([[[[0.0, 0.0, 9.0, 8.5, 0.0, 0.0]]]], dtype=F64), dim=-1)
    one = torch.ones(1, 1, 1)
    assert nucleus_overlap(sharp, sharp, one, 4).item() == 1.0
    assert nucleus_overlap(sharp, other, one, 4).item() == 0.0
    assert topk_overlap(sharp, other, one, 4).item() == 1.0  # top-4 counts the tail: it calls the two identical
