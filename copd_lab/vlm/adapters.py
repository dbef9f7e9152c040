"""LoRA experts on one shared base: their settings and how a MergeConfig maps onto peft's merging.

Every expert is a peft LoRA adapter of the language model (the vision tower stays frozen and shared,
so its features can be computed once per prompt for all experts). Merging goes through peft's own
`add_weighted_adapter`:

* "average" and "task_arithmetic" use combination_type "cat": the merged adapter stacks the sources'
  A (scaled by weight * scaling) and B, so its ΔW = Σ_k w_k s_k B_k A_k exactly (rank = Σ ranks).
  average: w normalised to sum 1 (uniform by default); task_arithmetic: scale * w, w = 1/K by default.
* "ties" -> peft "ties_svd" and "dare" -> peft "dare_linear_svd": peft applies TIES / DARE to the
  full deltas ΔW_k, then factors the result back by SVD at rank Σ ranks. DARE stays exact up to the
  random drop (a sum of K rank-r deltas has rank <= K r); TIES trims and sign-elects entry-wise, so
  its result is generally full rank and the SVD keeps its best rank-Σr approximation. peft's TIES
  divides the agreeing sum by the count, not the weight sum (copd_lab.math.merge): we pass
  scale * K w_k / Σw, which agrees with copd_lab.math.merge for uniform weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig

from copd_lab.config import MergeConfig

# The text decoder's linear layers; vision tower modules are named differently (qkv, fc1, proj).
TEXT_DECODER = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass(frozen=True)
class LoraSettings:
    """One LoRA adapter per expert slot."""

    r: int = 8  # rank of each expert's ΔW = (alpha / r) B A
    alpha: float = 16.0  # LoRA alpha; scaling = alpha / r
    target_modules: str = TEXT_DECODER  # regex of module names that get adapters (peft target_modules)

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoraSettings.r = {self.r!r} is not allowed: an integer >= 1")
        if self.alpha <= 0:
            raise ValueError(f"LoraSettings.alpha = {self.alpha!r} is not allowed: a number > 0")

    def peft_config(self, r: int | None = None, alpha: float | None = None) -> LoraConfig:
        """B zero-initialised (peft's default), so a fresh adapter equals the base."""
        return LoraConfig(r=r or self.r, lora_alpha=alpha or self.alpha, lora_dropout=0.0,
                          target_modules=self.target_modules, bias="none")


def peft_merge_args(spec: MergeConfig, n_sources: int, rank_sum: int) -> dict:
    """Keyword arguments of peft's `add_weighted_adapter` (minus adapters/name) for a MergeConfig."""
    w = list(spec.weights) or [1.0] * n_sources
    if len(w) != n_sources:
        raise ValueError(f"merge.weights has {len(w)} entries for {n_sources} sources; give one each or none")
    total = sum(w)
    if spec.method == "average":
        return dict(weights=[x / total for x in w], combination_type="cat")
    if spec.method == "task_arithmetic":
        w = list(spec.weights) or [1.0 / n_sources] * n_sources
        return dict(weights=[spec.scale * x for x in w], combination_type="cat")
    if spec.method == "ties":
        return dict(weights=[spec.scale * n_sources * x / total for x in w], combination_type="ties_svd",
                    density=spec.density, svd_rank=rank_sum)
    w = list(spec.weights) or [1.0 / n_sources] * n_sources
    return dict(weights=[spec.scale * x for x in w], combination_type="dare_linear_svd", density=spec.density,
                svd_rank=rank_sum)
