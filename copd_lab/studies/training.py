"""Training steps outside a recipe: what the studies' hand-built experiments (the absorption pilot, the divergence
trace, merges at graded drift) run, through the one training step every method uses (copd_lab.algorithm.update)."""

from __future__ import annotations

from copd_lab.algorithm import update
from copd_lab.config import ExperimentConfig
from copd_lab.world import NonFiniteError, Request, World


def train(world: World, cfg: ExperimentConfig, requests: list[Request], steps: int) -> None:
    """`steps` training steps of these requests (GRPO, or OPD where a request names a teacher)."""
    def stop(row: int, what: str) -> None:
        raise NonFiniteError(f"a study's training step: request {requests[row]} went non-finite ({what})")

    for _ in range(steps):
        update.train_step(world, cfg, requests, stop)
