"""θ* = Merge(θ_0 … θ_{K−1}): one model from the K co-evolved branches (paper §1.6, Algorithm 1's last line).

The paper only says "simple parameter merging"; "average" is the natural reading and the default. The other
operators are the usual alternatives, for the merge-method comparison the paper did not run. These are for
full-weight experts held as state dicts; LoRA experts merge through peft.

Each tensor is merged in (at least) float32 and cast back to the experts' dtype. Non-floating entries
(integer buffers such as step counters) are copied from the first expert.
"""

from __future__ import annotations

import torch
from torch import Tensor

from copd_lab.config import MERGE_METHODS

_NEEDS_BASE = ("task_arithmetic", "ties", "dare")


def merge_state_dicts(
    experts: list[dict[str, Tensor]],
    base: dict[str, Tensor] | None = None,
    method: str = "average",
    weights: list[float] | None = None,
    density: float = 0.5,
    scale: float = 1.0,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Merge K expert state dicts that share one base θ_0 (all branches start from it, §1.1).

    * "average": Σ_k w_k θ_k, weights normalised to sum 1 (uniform by default). ``base`` is not used.
    * "task_arithmetic": θ_0 + scale · Σ_k w_k τ_k with τ_k = θ_k − θ_0, w uniform 1/K by default.
    * "ties" (Yadav et al. 2023): per tensor, trim each τ_k to its round(density·numel) largest-magnitude
      entries (at least one; magnitude ties go to the lower flat index), elect the sign of Σ_k w_k τ̂_k per
      entry, then take the weighted disjoint mean Σ_{k agrees} w_k τ̂_k / Σ_{k agrees} w_k of the entries
      whose sign agrees (0 where none does); θ_0 + scale · that. Weights default to uniform, must be
      positive, and only their ratios matter.
    * "dare" (Yu et al. 2023): drop each entry of τ_k with probability 1 − density, scale survivors by
      1/density, then θ_0 + scale · Σ_k w_k τ̃_k (w uniform 1/K by default). Masks come from one
      torch.Generator seeded with ``seed``, drawn on CPU in float32 for each floating parameter in sorted name
      order, then each expert in order: the same seed gives the same merge on any device.
    """
    _validate(experts, base, method, weights, density)
    n_experts = len(experts)
    if weights is None:
        weights = [1.0 / n_experts] * n_experts
    if method == "average":
        weights = [w / sum(weights) for w in weights]
    generator = torch.Generator().manual_seed(seed) if method == "dare" else None

    merged: dict[str, Tensor] = {}
    for name in sorted(experts[0]):
        first = experts[0][name]
        if not first.is_floating_point():
            merged[name] = first.clone()
            continue
        work = torch.promote_types(first.dtype, torch.float32)
        thetas = torch.stack([expert[name].to(work) for expert in experts])
        w = torch.tensor(weights, dtype=work, device=first.device).reshape(-1, *([1] * first.dim()))
        if method == "average":
            merged[name] = (w * thetas).sum(dim=0).to(first.dtype)
            continue
        theta_0 = base[name].to(device=first.device, dtype=work)
        taus = thetas - theta_0
        if method == "task_arithmetic":
            delta = (w * taus).sum(dim=0)
        elif method == "ties":
            delta = _ties(taus, w, density)
        else:
            keep = torch.stack([torch.rand(first.shape, generator=generator) < density for _ in experts])
            delta = (w * taus * keep.to(taus.device) / density).sum(dim=0)
        merged[name] = (theta_0 + scale * delta).to(first.dtype)
    return {name: merged[name] for name in experts[0]}


def _ties(taus: Tensor, w: Tensor, density: float) -> Tensor:
    """TIES trim → elect sign → weighted disjoint mean, for the stacked task vectors taus [K, *shape]."""
    flat = taus.reshape(taus.shape[0], -1)
    n_keep = max(1, round(density * flat.shape[1])) if flat.shape[1] else 0
    # stable sort: equal magnitudes are kept in flat-index order, so the trim is reproducible
    order = torch.sort(flat.abs(), dim=1, descending=True, stable=True).indices[:, :n_keep]
    kept = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)
    trimmed = torch.where(kept, flat, torch.zeros_like(flat)).reshape(taus.shape)
    elected = torch.sign((w * trimmed).sum(dim=0))
    agrees = (torch.sign(trimmed) == elected) & (trimmed != 0)
    numerator = torch.where(agrees, w * trimmed, torch.zeros_like(trimmed)).sum(dim=0)
    divisor = torch.where(agrees, w, torch.zeros_like(trimmed)).sum(dim=0)
    return numerator / torch.where(divisor > 0, divisor, torch.ones_like(divisor))


def _validate(
    experts: list[dict[str, Tensor]],
    base: dict[str, Tensor] | None,
    method: str,
    weights: list[float] | None,
    density: float,
) -> None:
    if method not in MERGE_METHODS:
        raise ValueError(f"method={method!r} is not one of {MERGE_METHODS}")
    if not experts:
        raise ValueError("experts=[] is empty; pass at least one expert state dict")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density={density} must be in (0, 1]")
    if weights is not None:
        if len(weights) != len(experts):
            raise ValueError(
                f"weights has {len(weights)} entries but experts has {len(experts)}; give one each"
            )
        if method == "average" and sum(weights) == 0:
            raise ValueError(f"weights={weights} sum to 0; 'average' normalises them, need a non-zero sum")
        if method == "ties" and any(w <= 0 for w in weights):
            raise ValueError(f"weights={weights} must all be > 0 for 'ties' (its mean divides by them)")
    if base is None and method in _NEEDS_BASE:
        raise ValueError(f"method={method!r} needs base (the shared initial weights θ_0); got base=None")
    reference = experts[0]
    others = [(f"expert {i}", expert) for i, expert in enumerate(experts[1:], start=1)]
    if base is not None:
        others.append(("base", base))
    for label, state in others:
        if state.keys() != reference.keys():
            missing = sorted(reference.keys() - state.keys())
            extra = sorted(state.keys() - reference.keys())
            raise ValueError(f"{label} keys differ from expert 0's: missing {missing}, extra {extra}")
        for name, tensor in state.items():
            if tensor.shape != reference[name].shape:
                raise ValueError(
                    f"shape of {name!r} in {label} is {tuple(tensor.shape)}, "
                    f"expert 0 has {tuple(reference[name].shape)}; shapes must match"
                )
