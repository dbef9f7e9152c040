"""copd_lab.math.losses against naive loop references (float64), gradients included, plus edge cases."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from copd_lab.math.losses import (
    TopK,
    aggregate,
    clipped_pg_loss,
    group_advantages,
    kl_penalty,
    normalize_per_batch,
    opd_sampled_advantage,
    reverse_kl_surrogate,
    topk_ids,
)

LEAD, N, T, V = (2,), 3, 4, 6
F64 = torch.float64


def _mask(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(*shape, generator=g) < 0.7).to(F64)
    m[0, 0] = 0.0  # a rollout without tokens
    m[1] = 0.0  # request 1 fully masked
    return m


def _logp(*shape: int) -> torch.Tensor:
    return torch.log_softmax(torch.randn(*shape, dtype=F64) * 2, dim=-1)


def _positions(*shape: int):
    return itertools.product(*(range(s) for s in shape))


# ---------------------------------------------------------------- naive references


def ref_aggregate(x, mask, mode, constant=None):
    out = []
    for r in range(x.shape[0]):
        n, t = x.shape[1], x.shape[2]
        if mode == "token_mean":
            total, count = 0.0, 0
            for i, j in _positions(n, t):
                if mask[r, i, j]:
                    total, count = total + x[r, i, j], count + 1
            out.append(total / count if count else torch.zeros((), dtype=x.dtype))
        elif mode == "seq_mean_token_mean":
            means = []
            for i in range(n):
                toks = [x[r, i, j] for j in range(t) if mask[r, i, j]]
                if toks:
                    means.append(sum(toks) / len(toks))
            out.append(sum(means) / len(means) if means else torch.zeros((), dtype=x.dtype))
        else:
            c = t if constant is None else constant
            total = sum(x[r, i, j] for i, j in _positions(n, t) if mask[r, i, j])
            out.append(total / (n * c) if torch.is_tensor(total) else torch.zeros((), dtype=x.dtype))
    return torch.stack([torch.as_tensor(o, dtype=x.dtype) for o in out])


def ref_pg_objective(lp, old, adv, cl, ch):
    ratio = math.e ** (lp - old)
    return min(ratio * adv, min(max(ratio, 1 - cl), 1 + ch) * adv)


def ref_topk_set(row, k):
    return sorted(range(len(row)), key=lambda v: (-float(row[v]), v))[: min(k, len(row))]


def ref_kl(lp_row, lq_row, ids):
    """Σ_{v∈ids} p̄(v)(log p̄(v) − log q̄(v)), p̄ and q̄ renormalised on ids."""
    zp = torch.log(sum(torch.exp(lp_row[v]) for v in ids))
    zq = torch.log(sum(torch.exp(lq_row[v]) for v in ids))
    return sum(torch.exp(lp_row[v] - zp) * ((lp_row[v] - zp) - (lq_row[v] - zq)) for v in ids)


def full_reverse_kl(student, teacher, mask):
    """Per-token KL(p‖q) = Σ_v p(v)(log p(v) − log q(v)) over the whole vocabulary (the Preliminaries' OPD loss),
    [..., N, T], position by position: the inputs are taken as log-probs, ids with p = 0 add 0 (even where q = 0),
    masked positions give 0. Differentiable in ``student``."""
    rows = []
    for p in _positions(*mask.shape):
        ids = [v for v in range(student.shape[-1]) if mask[p] and student[p][v] > -math.inf]
        rows.append(sum((torch.exp(student[p][v]) * (student[p][v] - teacher[p][v]) for v in ids),
                        torch.zeros((), dtype=student.dtype)))
    return torch.stack(rows).reshape(mask.shape)


def topk_reverse_kl(student, teacher, mask, k):
    """Per-token reverse KL on thunlp/OPD's top-k support (arXiv 2604.13016), [..., N, T], position by position:
    Σ_{v∈S} p̄(v)(log p̄(v) − log q̄(v)) with S the student's top-k ids (ties to the lowest id; the choice of S
    carries no gradient) and p, q both renormalised on S; masked positions give 0."""
    rows = [ref_kl(student[p], teacher[p], ref_topk_set(student[p].detach(), k)) if mask[p]
            else torch.zeros((), dtype=student.dtype) for p in _positions(*mask.shape)]
    return torch.stack(rows).reshape(mask.shape)


# ---------------------------------------------------------------- group_advantages


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_group_advantages_matches_loop(scale_by_std):
    torch.manual_seed(0)
    rewards = torch.randn(2, 3, 8, dtype=F64)
    rewards[0, 0, :4] = 1.0  # a group with equal rewards
    got = group_advantages(rewards, group_size=4, scale_by_std=scale_by_std)
    want = torch.zeros_like(rewards)
    for a, b in _positions(2, 3):
        for start in range(0, 8, 4):
            group = [float(rewards[a, b, start + i]) for i in range(4)]
            mean = sum(group) / 4
            std = math.sqrt(sum((g - mean) ** 2 for g in group) / 4)
            for i in range(4):
                centred = group[i] - mean
                want[a, b, start + i] = centred / (std + 1e-6) if scale_by_std else centred
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.all(got[0, 0, :4] == 0)


def test_group_advantages_edges():
    rewards = torch.tensor([1, 0, 0, 1, 1, 1])
    assert group_advantages(rewards, 2).dtype == torch.get_default_dtype()
    assert torch.all(group_advantages(rewards.double(), 1) == 0)  # G = 1: no baseline signal, no nan
    with pytest.raises(ValueError, match="group_size=4"):
        group_advantages(rewards, 4)
    with pytest.raises(ValueError, match="group_size=0"):
        group_advantages(rewards, 0)


# ---------------------------------------------------------------- aggregate


@pytest.mark.parametrize("mode,constant", [("token_mean", None), ("seq_mean_token_mean", None),
                                           ("constant", None), ("constant", 16.0)])
def test_aggregate_matches_loop_and_grad(mode, constant):
    torch.manual_seed(1)
    x = torch.randn(*LEAD, N, T, dtype=F64, requires_grad=True)
    mask = _mask(*LEAD, N, T)
    got = aggregate(x, mask, mode, constant)
    want = ref_aggregate(x, mask, mode, constant)
    assert got.shape == LEAD
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got[1] == 0  # fully masked request
    (g_got,) = torch.autograd.grad(got.sum(), x)
    (g_want,) = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(g_got, g_want)
    torch.testing.assert_close(aggregate(x, mask.bool(), mode, constant), got)


def test_aggregate_ignores_garbage_and_rejects_unknown_mode():
    x = torch.tensor([[[1.0, float("nan")], [3.0, float("inf")]]])
    mask = torch.tensor([[[1, 0], [1, 0]]])
    torch.testing.assert_close(aggregate(x, mask, "token_mean"), torch.tensor([2.0]))
    # rollout 1 has one token, rollout 0 two: seq-mean weighs the rollouts equally
    x2 = torch.tensor([[[1.0, 3.0], [10.0, 0.0]]])
    m2 = torch.tensor([[[1, 1], [1, 0]]])
    torch.testing.assert_close(aggregate(x2, m2, "seq_mean_token_mean"), torch.tensor([6.0]))
    torch.testing.assert_close(aggregate(x2, m2, "token_mean"), torch.tensor([14.0 / 3]))
    torch.testing.assert_close(aggregate(x2, m2, "constant"), torch.tensor([14.0 / 4]))
    # no leading dims: a scalar
    assert aggregate(x2[0], m2[0], "token_mean").shape == ()
    with pytest.raises(ValueError, match="'seq_sum'.*token_mean"):
        aggregate(x2, m2, "seq_sum")
    with pytest.raises(ValueError, match="constant=0"):
        aggregate(x2, m2, "constant", 0.0)


# ---------------------------------------------------------------- clipped PG loss


@pytest.mark.parametrize("per_token_adv", [False, True])
@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "constant"])
def test_clipped_pg_loss_matches_loop_and_grad(per_token_adv, mode):
    torch.manual_seed(2)
    old = torch.randn(*LEAD, N, T, dtype=F64)
    lp = (old + 0.4 * torch.randn(*LEAD, N, T, dtype=F64)).requires_grad_()
    adv = torch.randn(*LEAD, N, T if per_token_adv else 1, dtype=F64)
    mask = _mask(*LEAD, N, T)
    got = clipped_pg_loss(lp, old, adv, mask, 0.2, 0.28, aggregation=mode)
    objective = torch.stack([
        torch.stack([
            torch.stack([ref_pg_objective(lp[r, i, j], old[r, i, j], adv[r, i, j if per_token_adv else 0],
                                          0.2, 0.28) for j in range(T)])
            for i in range(N)])
        for r in range(LEAD[0])])
    want = -ref_aggregate(objective, mask, mode)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    (g_got,) = torch.autograd.grad(got.sum(), lp)
    (g_want,) = torch.autograd.grad(want.sum(), lp)
    torch.testing.assert_close(g_got, g_want, rtol=1e-12, atol=1e-12)


def test_clipped_pg_loss_clip_higher_and_padding():
    lp = torch.zeros(1, 1, 4, dtype=F64, requires_grad=True)
    # ratios 1.5 (A>0, clipped at 1.28), 0.5 (A<0, clipped at 0.8), 1.5 (A<0, not clipped), padding
    old = torch.log(torch.tensor([[[1 / 1.5, 2.0, 1 / 1.5, 1e-300]]], dtype=F64))
    adv = torch.tensor([[[1.0, -1.0, -1.0, 1e9]]], dtype=F64)
    mask = torch.tensor([[[1, 1, 1, 0]]])
    loss = clipped_pg_loss(lp, old, adv, mask)
    torch.testing.assert_close(loss, torch.tensor([-(1.28 - 0.8 - 1.5) / 3], dtype=F64))
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    torch.testing.assert_close(grad, torch.tensor([[[0.0, 0.0, 1.5 / 3, 0.0]]], dtype=F64))


# ---------------------------------------------------------------- KL penalty and OPD advantage


def test_kl_penalty_matches_loop_and_grad():
    torch.manual_seed(4)
    ref = torch.randn(*LEAD, N, T, dtype=F64)
    lp = (ref + 0.3 * torch.randn(*LEAD, N, T, dtype=F64)).requires_grad_()
    mask = _mask(*LEAD, N, T)
    got = kl_penalty(lp, ref, mask)
    per_token = torch.stack([torch.exp(ref[p] - lp[p]) - (ref[p] - lp[p]) - 1
                             for p in _positions(*LEAD, N, T)]).reshape(*LEAD, N, T)
    want = ref_aggregate(per_token, mask, "token_mean")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    (g_got,) = torch.autograd.grad(got.sum(), lp)
    (g_want,) = torch.autograd.grad(want.sum(), lp)
    torch.testing.assert_close(g_got, g_want)
    assert torch.all(kl_penalty(ref, ref, mask) == 0)
    assert torch.all(got >= 0)


def test_opd_sampled_advantage():
    torch.manual_seed(5)
    teacher = torch.randn(*LEAD, N, T, dtype=F64)
    student = torch.randn(*LEAD, N, T, dtype=F64, requires_grad=True)
    adv = opd_sampled_advantage(teacher, student, 0.5)
    assert not adv.requires_grad
    for p in _positions(*LEAD, N, T):
        assert adv[p] == pytest.approx(0.5 * float(teacher[p] - student[p].detach()), abs=1e-14)
    beta = torch.tensor([1.0, 2.0], dtype=F64)  # one β per leading index
    per_branch = opd_sampled_advantage(teacher, student, beta)
    torch.testing.assert_close(per_branch[1], 2 * (teacher[1] - student[1].detach()))
    torch.testing.assert_close(per_branch[0], teacher[0] - student[0].detach())
    # through the PG loss, at ratio 1 the gradient is −β δ / #tokens per token (discount 0)
    loss = clipped_pg_loss(student, student.detach(), adv, torch.ones(*LEAD, N, T))
    (grad,) = torch.autograd.grad(loss.sum(), student)
    torch.testing.assert_close(grad, -adv / (N * T))


# ---------------------------------------------------------------- top-k support


def test_topk_mask_and_ids_break_ties_to_lowest_id():
    torch.manual_seed(6)
    x = torch.randint(0, 3, (2, 3, 7)).to(F64)  # many ties
    for k in (1, 2, 3, 7, 9):
        members = TopK(x, k).mask
        ids = topk_ids(x, k)
        assert torch.equal(TopK(x, k).ids, ids)
        assert ids.shape == (2, 3, min(k, 7))
        for a, b in _positions(2, 3):
            want = ref_topk_set(x[a, b], k)
            assert torch.nonzero(members[a, b]).flatten().tolist() == sorted(want)
            assert ids[a, b].tolist() == sorted(want)
    with pytest.raises(ValueError, match="k=0"):
        TopK(x, 0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_topk_mask_and_ids_without_ties_and_with_one_tied_position(dtype):
    # distinct values take the fast path (logp >= k-th value); one tie at the k-th value anywhere in the
    # tensor sends the whole call down the tie-breaking path; both must give the reference sets
    torch.manual_seed(7)
    x = torch.randn(3, 4, 12, dtype=dtype).log_softmax(-1)
    tied = x.clone()
    order = tied[1, 2].argsort(descending=True)
    tied[1, 2, order[4]] = tied[1, 2, order[3]]  # ids tied at the 4th value, one of them outside the top 4
    for values in (x, tied):
        for k in (1, 4, 11, 12, 15):
            members, ids = TopK(values, k).mask, TopK(values, k).ids
            for a, b in _positions(3, 4):
                want = sorted(ref_topk_set(values[a, b], k))
                assert torch.nonzero(members[a, b]).flatten().tolist() == want
                assert ids[a, b].tolist() == want


@pytest.mark.parametrize("k", [None, 1, 3, 6, 10])
def test_reverse_kl_surrogate_has_the_kl_gradient_and_is_exactly_zero_for_an_equal_teacher(k):
    """Σ_v p_θ · sg(log p_ref − log q): at p_ref = p_θ its value and its gradient in the logits are the (top-k)
    reverse KL's (the loop references full_reverse_kl and topk_reverse_kl above); a teacher equal to p_ref gives
    exactly zero."""
    torch.manual_seed(9)
    logits = (torch.randn(*LEAD, N, T, V, dtype=F64) * 2).requires_grad_()
    student = logits.log_softmax(-1)  # a policy's log-probs: Σ_v p = 1 whatever the logits
    teacher = _logp(*LEAD, N, T, V)
    mask = _mask(*LEAD, N, T)

    def kl(p, q):
        return full_reverse_kl(p, q, mask) if k is None else topk_reverse_kl(p, q, mask, k)

    got = reverse_kl_surrogate(student, student.detach(), teacher, mask, k)
    want = kl(student, teacher)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    (g_got,) = torch.autograd.grad(got.sum(), logits, retain_graph=True)
    (g_want,) = torch.autograd.grad(want.sum(), logits, retain_graph=True)
    torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12)
    if k == 1:
        assert bool((got == 0).all())  # one renormalised id: p̄ = q̄ = 1
    if k is not None and k >= V:  # the support is the whole vocabulary
        torch.testing.assert_close(got, full_reverse_kl(student, teacher, mask), rtol=1e-10, atol=1e-12)
    # the teacher equals the reference exactly, while the grad forward rounds a little differently
    rounded = (logits * (1 + 1e-7)).log_softmax(-1)
    zero = reverse_kl_surrogate(rounded, student.detach(), student.detach(), mask, k)
    (g_zero,) = torch.autograd.grad(zero.sum(), logits, retain_graph=True)
    assert bool((zero == 0).all()) and bool((g_zero == 0).all())
    (g_noisy,) = torch.autograd.grad(kl(rounded, student.detach()).sum(), logits)
    assert k == 1 or g_noisy.abs().max() > 0  # what the plain KL of two roundings would push


def test_normalize_per_batch_divides_by_each_batchs_token_std():
    torch.manual_seed(10)
    adv = torch.randn(*LEAD, N, T, dtype=F64) * 3
    mask = _mask(*LEAD, N, T)
    got = normalize_per_batch(adv, mask)
    for lead in range(LEAD[0]):
        real = [float(adv[lead][n, t]) for n in range(N) for t in range(T) if mask[lead][n, t]]
        if not real:
            assert bool((got[lead] == 0).all())
            continue
        mean = sum(real) / len(real)
        std = math.sqrt(sum((x - mean) ** 2 for x in real) / len(real))
        for n in range(N):
            for t in range(T):
                want = adv[lead][n, t] / (std + 1e-6) if mask[lead][n, t] else 0.0
                assert float(got[lead][n, t]) == pytest.approx(float(want), rel=1e-12)


def test_reverse_kl_surrogate_zero_probabilities_give_no_nan():
    inf = float("inf")
    student = torch.tensor([[[[math.log(0.5), math.log(0.5), -inf]]]], dtype=F64, requires_grad=True)
    teacher = torch.tensor([[[[math.log(0.25), math.log(0.75), -inf]]]], dtype=F64)
    mask = torch.ones(1, 1, 1)
    kl = reverse_kl_surrogate(student, student.detach(), teacher, mask)
    want = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl.item() == pytest.approx(want, abs=1e-14)
    assert full_reverse_kl(student, teacher, mask).item() == pytest.approx(want, abs=1e-14)
    (grad,) = torch.autograd.grad(kl.sum(), student)
    assert torch.isfinite(grad).all()
