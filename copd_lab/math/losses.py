"""Losses and advantages of CoPD as pure functions on tensors.

Shapes: arbitrary leading dims ``...`` (requests, pairs, branches), then N rollouts, then T tokens, then V
vocab for full distributions. ``mask`` [..., N, T] (bool or 0/1 float) marks real completion tokens; masked
positions may hold garbage and never reach a result. Aggregations reduce over N and T only and return [...];
an all-masked slice gives 0, not nan.

Phase I (Eq. 7) is GRPO: ``group_advantages`` + ``clipped_pg_loss``. Phase II feeds Eq. 8's sampled-token
advantage (``opd_sampled_advantage``) to the same clipped loss. ``reverse_kl_surrogate`` is the gradient of
the reverse KL on the full vocabulary or a top-k support, the thunlp/OPD (arXiv 2604.13016) variants, for
comparison (opd.estimator = "full" / "topk").
"""

from __future__ import annotations

from functools import cached_property

import torch
from torch import Tensor

from copd_lab.config import AGGREGATIONS


def group_advantages(
    rewards: Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO advantage Â_i = (r_i − mean_G r) / (std_G r + eps) (Eq. 7's Â^RL), per group of G rollouts.

    rewards [..., N], N = n_prompts * group_size, prompt-major (a prompt's G rollouts are contiguous).
    The std is the population one (unbiased=False): it is defined for G = 1 and does not depend on G;
    verl uses Bessel's correction, which is larger by sqrt(G/(G−1)) (≈1.07 at G = 8). A group with equal
    rewards gets advantage 0 either way. ``scale_by_std=False`` only centres (Dr.GRPO).
    """
    if group_size < 1:
        raise ValueError(f"group_size={group_size} must be a positive integer")
    n = rewards.shape[-1]
    if n % group_size != 0:
        raise ValueError(f"rewards has N={n} rollouts, not a multiple of group_size={group_size}")
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    groups = rewards.reshape(*rewards.shape[:-1], n // group_size, group_size)
    centred = groups - groups.mean(dim=-1, keepdim=True)
    if scale_by_std:
        centred = centred / (groups.std(dim=-1, unbiased=False, keepdim=True) + eps)
    return centred.reshape(rewards.shape)


def aggregate(per_token: Tensor, mask: Tensor, mode: str, constant: float | None = None) -> Tensor:
    """Reduce a per-token quantity [..., N, T] over the masked tokens of N and T to [...].

    * "token_mean": Σ masked / #masked tokens (all rollouts pooled; long rollouts weigh more).
    * "seq_mean_token_mean": mean over rollouts of each rollout's token mean — the 1/G Σ_i 1/|y_i| Σ_t of
      Eq. 7. Rollouts without tokens are left out of the mean over rollouts.
    * "constant": Σ masked / (N · constant), constant = T by default (Dr.GRPO, no length bias).
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation mode={mode!r} is not one of {AGGREGATIONS}")
    per_token, keep = torch.broadcast_tensors(per_token, mask.bool())
    # where, not multiply: a masked inf/nan would survive 0 * x.
    masked = torch.where(keep, per_token, 0.0)
    if mode == "token_mean":
        count = keep.sum(dim=(-2, -1)).to(per_token.dtype)
        return masked.sum(dim=(-2, -1)) / count.clamp(min=1)
    if mode == "seq_mean_token_mean":
        lengths = keep.sum(dim=-1).to(per_token.dtype)
        seq_mean = masked.sum(dim=-1) / lengths.clamp(min=1)
        non_empty = (lengths > 0).to(per_token.dtype)
        return (seq_mean * non_empty).sum(dim=-1) / non_empty.sum(dim=-1).clamp(min=1)
    n, t = per_token.shape[-2], per_token.shape[-1]
    constant = float(t) if constant is None else float(constant)
    if constant <= 0:
        raise ValueError(f"constant={constant} for aggregation 'constant' must be > 0")
    return masked.sum(dim=(-2, -1)) / (max(n, 1) * constant)


def _masked_log_ratio(logprobs: Tensor, other_logprobs: Tensor, mask: Tensor) -> Tensor:
    """logprobs − other on real tokens, 0 on padding, so that exp() never sees padding garbage."""
    diff = logprobs - other_logprobs
    return torch.where(mask.bool(), diff, 0.0)


def clipped_pg_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    aggregation: str = "token_mean",
    constant: float | None = None,
) -> Tensor:
    """Clipped surrogate of Eq. 7 with clip-higher (ε_low 0.2, ε_high 0.28), returned as a loss [...].

    ρ = exp(logprobs − old_logprobs); objective min(ρ·Â, clip(ρ, 1−ε_low, 1+ε_high)·Â); loss =
    −aggregate(objective). ``advantages`` broadcasts to [..., N, T]: [..., N, 1] for GRPO's sequence
    advantage, [..., N, T] for Eq. 8's per-token OPD advantage.
    """
    ratio = torch.exp(_masked_log_ratio(logprobs, old_logprobs, mask))
    unclipped = ratio * advantages
    # The clipped side needs no gradient of its own: it is the smaller one only where ρ is outside the clip range
    # (clip's gradient is 0 there), and where the two tie ρ is inside it, where torch.minimum would hand each side
    # g/2, which add back to g on ρ. So: min(u, c) as a where with c off the graph, the same values and gradients
    # with a third of the backward ops (a tick's cost is mostly per-op overhead).
    clipped = torch.clamp(ratio.detach(), 1.0 - clip_low, 1.0 + clip_high) * advantages
    return -aggregate(torch.where(unclipped <= clipped, unclipped, clipped), mask, aggregation, constant)


def kl_penalty(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    aggregation: str = "token_mean",
    constant: float | None = None,
) -> Tensor:
    """The −β·KL(π_θ‖π_ref) term of GRPO (paper's Preliminaries), by Schulman's "k3" estimator per token
    exp(d) − d − 1 with d = log π_ref − log π_θ: unbiased, non-negative, low variance. Differentiable in
    ``logprobs``; aggregated to [...]. Off by default in CoPD (docs/paper.md §1.2)."""
    d = _masked_log_ratio(ref_logprobs, logprobs, mask)
    return aggregate(torch.exp(d) - d - 1.0, mask, aggregation, constant)


def opd_sampled_advantage(teacher_logprobs: Tensor, student_logprobs: Tensor, beta: float | Tensor) -> Tensor:
    """Eq. 8 token advantage Â_{i,t} = β_k · (log π_θj(y_t) − log π_θk(y_t)), [..., N, T].

    Discount 0: each token is graded by its own log-ratio. The whole advantage is detached (the student
    term included), so gradients flow only through the policy-gradient ratio of ``clipped_pg_loss``.
    ``beta`` is a float or a tensor [...] (one β per leading index, e.g. per branch).
    """
    beta = torch.as_tensor(beta, dtype=student_logprobs.dtype, device=student_logprobs.device)
    if beta.dim() > 0:
        beta = beta[..., None, None]
    return (beta * (teacher_logprobs - student_logprobs)).detach()


def normalize_per_batch(advantages: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-token advantages [..., N, T] divided by their std over each batch's real tokens (population std of
    N and T, per leading index), so an OPD batch's advantages have GRPO's unit scale; not centred (the sign of
    log π_teacher − log π_student is the signal). Padding stays 0."""
    keep = mask.bool()
    count = keep.sum(dim=(-2, -1), keepdim=True).clamp(min=1)
    mean = torch.where(keep, advantages, 0.0).sum(dim=(-2, -1), keepdim=True) / count
    var = torch.where(keep, (advantages - mean) ** 2, 0.0).sum(dim=(-2, -1), keepdim=True) / count
    return torch.where(keep, advantages / (var.sqrt() + eps), 0.0)


class TopK:
    """TopK(logp) along V, exactly min(k, V) ids per position, from one torch.topk call; the membership mask
    and the ids are derived on first use, so metrics that need the same sets can share one TopK.

    Ties at the k-th value go to the lowest token ids, so the set is reproducible across devices (torch.topk
    leaves tie order unspecified, and bf16 log-probs tie often). Float log-probs rarely tie: when no position
    has an id outside its top k tied with its k-th value, the set is simply logp >= k-th value and the ids
    torch.topk gave are its members, which saves the tie-breaking cumsum and nonzero.
    """

    def __init__(self, logp: Tensor, k: int):
        if k < 1:
            raise ValueError(f"k={k} must be >= 1")
        v = logp.shape[-1]
        self.k, self.logp = min(k, v), logp
        top = logp.topk(min(self.k + 1, v), dim=-1)
        self._ids, self._kth = top.indices[..., : self.k], top.values[..., self.k - 1 : self.k]
        # `<` is False on nan and on a tie at -inf, which take the exact path
        self._clean = self.k == v or bool((top.values[..., self.k] < self._kth[..., 0]).all())

    def take(self, index: Tensor) -> TopK:
        """The sets of logp[index] (index picks along the first dim), without another torch.topk."""
        other = TopK.__new__(TopK)
        other.k, other.logp, other._clean = self.k, self.logp[index], self._clean
        other._ids, other._kth = self._ids[index], self._kth[index]
        return other

    @cached_property
    def mask(self) -> Tensor:
        """Bool [..., V] membership."""
        if self._clean:
            return self.logp >= self._kth
        above = self.logp > self._kth
        tied = self.logp == self._kth
        room = self.k - above.sum(dim=-1, keepdim=True)
        return above | (tied & (tied.cumsum(dim=-1) <= room))

    @cached_property
    def ids(self) -> Tensor:
        """Long [..., min(k, V)]: the members' ids in increasing order."""
        if self._clean:
            return self._ids.sort(dim=-1).values
        # every row holds exactly k members and nonzero() is row-major, so the last column reshapes cleanly
        return self.mask.nonzero()[:, -1].reshape(*self.mask.shape[:-1], self.k)


def topk_ids(logp: Tensor, k: int) -> Tensor:
    """Long [..., min(k, V)]: the ids of TopK(logp) along V, exactly min(k, V) per position, in increasing order."""
    return TopK(logp, k).ids


def reverse_kl_surrogate(
    student_logp: Tensor, student_ref_logp: Tensor, teacher_logp: Tensor, mask: Tensor, k: int | None = None
) -> Tensor:
    """Per-token Σ_v p_θ(v) · sg(log p_ref(v) − log q(v)) [..., N, T]: the gradient in ``student_logp`` of
    KL(p‖q) (full vocabulary, or with ``k`` thunlp/OPD's top-k support: the student's top-k ids, p and q both
    renormalised on them), with the log-ratio read from ``student_ref_logp``, the student's no-grad log-probs
    scored beside the teacher's.

    Where p_ref = p_θ, value and gradient equal the KL's (Σ_v ∇p(v) · (log p − log q), since Σ_v p ∇log p = 0);
    a teacher equal to the student gives exactly 0 and no gradient, where the KL of two separately rounded
    forwards would give float noise that Adam scales up to full-size steps. 0 on masked positions.
    """
    if k is not None:
        ids = topk_ids(student_ref_logp, k)
        student_logp = torch.log_softmax(student_logp.gather(-1, ids), dim=-1)
        student_ref_logp = torch.log_softmax(student_ref_logp.gather(-1, ids), dim=-1)
        teacher_logp = torch.log_softmax(teacher_logp.gather(-1, ids), dim=-1)
    p = student_logp.exp()
    ratio = torch.where(p.detach() > 0, student_ref_logp - teacher_logp, 0.0).detach()
    return torch.where(mask.bool(), (p * ratio).sum(dim=-1), 0.0)


def kl_per_position(p_logp: Tensor, q_logp: Tensor) -> Tensor:
    """KL(p‖q) along the last dim of full log-probs, with 0·log 0 = 0 and no nan in the gradient."""
    p = p_logp.exp()
    # where before the multiply: p = 0 with log p − log q = −inf or nan must give 0, also in backward
    diff = torch.where(p > 0, p_logp - q_logp, 0.0)
    return (p * diff).sum(dim=-1)
