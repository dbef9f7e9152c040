"""The token inspector: which tokens an OPD edge pushes up or down (the playground's step inspector).

For one OPD edge student <- teacher of a finished run, the student samples rollouts on the teacher's domain
with its final weights, and each sampled token gets the teacher's per-token advantage of Eq. 8,
β·(log π_teacher − log π_student): positive where the teacher likes the token more than the student does (OPD
pushes it up), negative where less.
"""

from __future__ import annotations

import pandas as pd
import torch

from copd_lab.algorithm.recipes import OPDEdge
from copd_lab.algorithm.schedule import slot_of, teacher_slot_of
from copd_lab.experiment import Comparison
from copd_lab.world import Batch, Request, TokenText, has


def opd_edges(comparison: Comparison, method: str = "copd") -> list[OPDEdge]:
    """The distinct OPD edges of `method`'s recipe, in order."""
    recipe = next(r for r in comparison.recipes if r.name == method)
    seen, edges = set(), []
    for stage in recipe.stages:
        for edge in stage.edges:
            if edge.label not in seen:
                seen.add(edge.label)
                edges.append(edge)
    return edges


def sample_edge(comparison: Comparison, edge: str, method: str = "copd", rollouts: int = 4,
                stream: str = "inspect") -> tuple[object, Batch, OPDEdge]:
    """The world of the run's last seed, `rollouts` rollouts of the edge's student on the teacher's domain (final
    weights; each call draws new ones from `stream`), and the edge."""
    if comparison.final is None:
        raise ValueError("this comparison kept no final weights (it resumed only finished seeds)")
    world, slots = comparison.final
    chosen = next((e for e in opd_edges(comparison, method) if e.label == edge), None)
    if chosen is None:
        raise ValueError(f"edge = {edge!r} is not an OPD edge of {method}: one of "
                         f"{[e.label for e in opd_edges(comparison, method)]}")
    recipe = next(r for r in comparison.recipes if r.name == method)
    # the trainer's slot rules: a static (frozen) teacher is scored by its snapshot, not its live branch
    request = Request(slot_of(slots, recipe, chosen.student), (list(world.domains).index(chosen.domain),),
                      teacher=teacher_slot_of(slots, recipe, chosen), beta=chosen.beta,
                      stream=stream)
    with torch.no_grad():
        return world, world.sample([request], rollouts, 1, comparison.config.grpo.temperature), chosen


def token_table(world, batch: Batch, edge: OPDEdge) -> pd.DataFrame:
    """One row per sampled token of the batch's one request: rollout, position, token, its text, the student's
    and the teacher's log-prob (World.pair_logprobs), the advantage β·(teacher − student), whether it is right."""
    with torch.no_grad():
        student_lp, teacher_lp = world.pair_logprobs(batch, [0], full=False)
    text = world.token_text if has(world, TokenText) else str
    rows = []
    for r in range(batch.tokens.shape[1]):
        for t in range(batch.tokens.shape[2]):
            if batch.mask[0, r, t] > 0:
                token = int(batch.tokens[0, r, t])
                s, q = float(student_lp[0, r, t]), float(teacher_lp[0, r, t])
                rows.append({"rollout": r, "position": t, "token": token, "text": text(token), "student_logp": s,
                             "teacher_logp": q, "advantage": edge.beta * (q - s),
                             "correct": bool(batch.correct[0, r] > 0)})
    return pd.DataFrame(rows)


def opd_tokens(comparison: Comparison, edge: str, method: str = "copd", rollouts: int = 4,
               stream: str = "inspect") -> pd.DataFrame:
    """`token_table` of new rollouts of the edge's student (see sample_edge)."""
    return token_table(*sample_edge(comparison, edge, method, rollouts, stream))
