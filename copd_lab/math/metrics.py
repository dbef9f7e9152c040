"""Behavioural-gap metrics between two policies on the same prefixes (docs/paper.md §2, thunlp/OPD §6.1).

``p_logp`` is the model whose rollouts visited the prefixes (the student, μ_θ in O_k's definition), ``q_logp``
the other one (teacher, other branch, base). Both are full log-probs [..., N, T, V] (normalised over V);
``mask`` [..., N, T]. Each metric is a mean over masked positions, one value per leading index: [...].
Top-k sets come from ``losses.TopK`` (ties go to the lowest token id; k is clamped to V).
"""

from __future__ import annotations

import torch
from torch import Tensor

from copd_lab.math.losses import TopK, aggregate, kl_per_position


def _mean(per_position: Tensor, mask: Tensor) -> Tensor:
    return aggregate(per_position, mask, "token_mean")


def _sets(p_logp: Tensor, q_logp: Tensor, k: int, tops: tuple[TopK, TopK] | None) -> tuple[TopK, TopK]:
    return tops if tops is not None else (TopK(p_logp, k), TopK(q_logp, k))


def topk_overlap(p_logp: Tensor, q_logp: Tensor, mask: Tensor, k: int = 10,
                 tops: tuple[TopK, TopK] | None = None) -> Tensor:
    """CoPD's O_k = E_t |TopK(p_t) ∩ TopK(q_t)| / k (k = 10 in the paper's pilot), [...].

    tops: (TopK(p_logp, k), TopK(q_logp, k)) when the caller already has them (the top-k metrics share them).
    """
    p_top, q_top = _sets(p_logp, q_logp, k, tops)
    shared = (p_top.mask & q_top.mask).sum(dim=-1)
    return _mean(shared.to(p_logp.dtype) / min(k, p_logp.shape[-1]), mask)


def nucleus_set(logp: Tensor, k: int, mass: float) -> Tensor:
    """Bool [..., V]: the top tokens of each position, in order, until they hold `mass` of its probability (the
    token that crosses it included), at most k: the tokens that carry mass, never a near-zero tail."""
    top = logp.topk(min(k, logp.shape[-1]), dim=-1)
    prob = top.values.exp()
    keep = (prob.cumsum(dim=-1) - prob) < mass  # the mass of the tokens ranked above this one
    return torch.zeros_like(logp, dtype=torch.bool).scatter_(-1, top.indices, keep)


def nucleus_overlap(p_logp: Tensor, q_logp: Tensor, mask: Tensor, k: int = 10, mass: float = 0.9) -> Tensor:
    """E_t |S(p_t) ∩ S(q_t)| / |S(p_t) ∪ S(q_t)| with S = nucleus_set(·, k, mass), [...]: O_k counted only over
    the tokens that carry mass. O_k's top-k also counts tail tokens once k exceeds the plausible ones (top 10 of a
    6-digit answer is 6 digits and 4 tail ranks); this is 1 for one behaviour and 0 for disjoint ones."""
    p_set, q_set = nucleus_set(p_logp, k, mass), nucleus_set(q_logp, k, mass)
    shared = (p_set & q_set).sum(dim=-1).to(p_logp.dtype)
    return _mean(shared / (p_set | q_set).sum(dim=-1).clamp(min=1), mask)


def top1_overlap(p_logp: Tensor, q_logp: Tensor, mask: Tensor) -> Tensor:
    """E_t [argmax p_t = argmax q_t], [...]: topk_overlap at k = 1 (ties to the lowest id, as TopK's), from two
    argmaxes instead of two top-k sets."""
    same = (p_logp.argmax(dim=-1) == q_logp.argmax(dim=-1)).to(p_logp.dtype)
    return _mean(same, mask)


def overlap_mass(p_logp: Tensor, q_logp: Tensor, mask: Tensor, k: int = 10,
                 tops: tuple[TopK, TopK] | None = None) -> tuple[Tensor, Tensor]:
    """Student and teacher probability on the shared ids, Σ_{v∈I_t} p_t(v) and Σ_{v∈I_t} q_t(v), with
    I_t = TopK(p_t) ∩ TopK(q_t) and full-softmax (not renormalised) probabilities, averaged over positions
    with a non-empty I_t (thunlp/OPD's student_p_sum_intersection / teacher_p_sum_intersection)."""
    p_top, q_top = _sets(p_logp, q_logp, k, tops)
    ids, shared = p_top.ids, q_top.mask.gather(-1, p_top.ids)  # the student's top-k ids, and which are shared
    zero = torch.zeros((), dtype=p_logp.dtype, device=p_logp.device)
    student_mass = torch.where(shared, p_logp.gather(-1, ids).exp(), zero).sum(dim=-1)
    teacher_mass = torch.where(shared, q_logp.gather(-1, ids).exp(), zero).sum(dim=-1)
    counted = mask.bool() & shared.any(dim=-1)
    return _mean(student_mass, counted), _mean(teacher_mass, counted)


def overlap_token_advantage(p_logp: Tensor, q_logp: Tensor, mask: Tensor, k: int = 10,
                            tops: tuple[TopK, TopK] | None = None) -> Tensor:
    """thunlp/OPD's E_t[(1/|I_t|) Σ_{v∈I_t} p̄_t(v) (log q̄_t(v) − log p̄_t(v))], [...].

    Renormalisation: p̄_t is p_t renormalised over the student's own top-k, q̄_t is q_t renormalised over
    the teacher's own top-k (each model's truncated distribution, as in verl's top-k distillation probe).
    It tends to 0 when the two agree on the shared ids. Positions with an empty intersection are skipped.
    """
    p_top, q_top = _sets(p_logp, q_logp, k, tops)
    ids, shared = p_top.ids, q_top.mask.gather(-1, p_top.ids)
    p_bar = torch.log_softmax(p_logp.gather(-1, ids), dim=-1)
    q_norm = torch.logsumexp(q_logp.gather(-1, q_top.ids), dim=-1, keepdim=True)
    q_bar = q_logp.gather(-1, ids) - q_norm
    # where first: off the intersection q̄ may be −inf, and 0·inf is nan
    gap = torch.where(shared, q_bar - p_bar, 0.0)
    count = shared.sum(dim=-1)
    per_position = (p_bar.exp() * gap).sum(dim=-1) / count.clamp(min=1).to(p_logp.dtype)
    return _mean(per_position, mask.bool() & (count > 0))


def symmetric_kl(p_logp: Tensor, q_logp: Tensor, mask: Tensor) -> Tensor:
    """E_t [KL(p_t‖q_t) + KL(q_t‖p_t)], [...]. The paper plots a "symmetric KL" but never defines it;
    this sum (not the average of the two) is copd_lab's definition."""
    return _mean(kl_per_position(p_logp, q_logp) + kl_per_position(q_logp, p_logp), mask)


def _entropy(logp: Tensor) -> Tensor:
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, 0.0)).sum(dim=-1)


def entropy_gap(p_logp: Tensor, q_logp: Tensor, mask: Tensor) -> Tensor:
    """thunlp/OPD's entropy gap E_t |H(q_t) − H(p_t)|, [...]."""
    return _mean((_entropy(q_logp) - _entropy(p_logp)).abs(), mask)


def sampled_reverse_kl(p_token_logp: Tensor, q_token_logp: Tensor, mask: Tensor) -> Tensor:
    """E_t [log p(y_t) − log q(y_t)] on the sampled tokens [..., N, T]: the single-sample estimate of the
    reverse KL that Eq. 8 turns into an advantage (its negative, times β), [...]."""
    return _mean(p_token_logp - q_token_logp, mask)


def gradient_conflict(grads: Tensor) -> Tensor:
    """Cosine matrix [..., D, D] between D per-domain policy gradients [..., D, P]: the inter-capability
    conflict behind the paper's divergence cost Φ (§3). A zero gradient has cosine 0 with everything,
    itself included."""
    norms = grads.norm(dim=-1, keepdim=True)
    unit = grads / torch.where(norms > 0, norms, torch.ones_like(norms))
    return (unit @ unit.transpose(-1, -2)).clamp(-1.0, 1.0)
