"""Measurements taken during a run: per-domain accuracy, behavioural gap between branches, conflict.

Every measurement is a batch of world requests plus the pure functions of `metrics`, logged as tidy
rows (run, method, seed, step, branch, pair, metric, value). Per-domain metrics are named
``<metric>/<domain>``; directional pair metrics use ``student<-teacher`` in the pair column.

A `Meter` writes each row through `log(owner, ...)` and draws from `stream(owner)`, where an owner is what the
caller names a method by: its name, or (the trainer of a seed, the method) when seeds run side by side. What a
tick measures is a list of small call objects (`GapOf`, `AccuracyOf`, `ConflictOf`): a trainer plans them, and
the same calls of several seeds join into one batch of world calls (`placed`, `+`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from copd_lab.config import ExperimentConfig
from copd_lab.math import losses, metrics
from copd_lab.math.losses import TopK
from copd_lab.world import ExactAccuracy, NonFiniteError, Request, World, has

Log = Callable[[str, int, str, str, str, float], None]  # method, step, branch, pair, metric, value
Pairs = tuple[tuple[str, str], ...]  # (student, teacher) branch names whose gap is measured
QUICK_METRICS = ("overlap", "symmetric_kl", "sampled_reverse_kl", "top1_overlap", "student_overlap_mass",
                 "teacher_overlap_mass", "nucleus_overlap")  # every gap_every ticks (overlap is top-k, k =
# metrics.topk; nucleus_overlap the same over the tokens holding metrics.nucleus of the mass)
CALIBRATION_GRID = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5)  # temperatures a calibrated accuracy chooses from
GAP_METRICS = QUICK_METRICS + ("entropy_gap", "overlap_token_advantage")  # also at every eval


def measure_stream(method: str) -> str:
    """The random stream of a method's measurements: apart from its training stream, so that how often a
    method is measured does not change how it trains (see copd_lab.streams)."""
    return f"{method}/measure"


class Meter:
    """Measures slots of a world and logs rows through `log`; a method's measurements draw from stream(method)."""

    def __init__(self, cfg: ExperimentConfig, world: World, log: Log, stream: Callable[[str], str] = measure_stream):
        self.cfg, self.world, self.log, self.stream = cfg, world, log, stream
        self.all_domains = tuple(range(len(world.domains)))

    def _student_rollouts(self, keys: list[tuple[int, int | None]], methods: dict[int, str]):
        """One sampled rollout per eval prompt of a domain (None: of every domain), for each (student slot, domain)
        key (a student of methods[slot]); keys of one kind (one domain, or every domain), as one world call."""
        requests = [Request(s, self.all_domains if d is None else (d,), stream=self.stream(methods[s]))
                    for s, d in keys]
        return self.world.sample(requests, self.cfg.metrics.gap_prompts, 1, self.cfg.grpo.temperature,
                                 every_prompt=True)

    def gap(self, pairs: list[tuple[int, int]], methods: dict[int, str], full: bool = True,
            on: list[int | None] | None = None) -> torch.Tensor:
        """[len(pairs), M] gap metrics of (student, teacher) slot pairs on the student's visited prefixes
        (the paper's μ_θ): all GAP_METRICS if `full`, else QUICK_METRICS, in their order.
        methods: student slot -> the method it belongs to (whose stream its rollouts draw from).
        on: the domain each pair is measured on (the student's rollouts on its eval prompts; None, or no list: on
        every domain's): an OPD edge's gap belongs on the domain its OPD acts on."""
        on = on or [None] * len(pairs)
        out = torch.empty(len(pairs), len(GAP_METRICS if full else QUICK_METRICS))
        for every in (False, True):  # one-domain keys, then every-domain keys: a world call takes one kind
            index = [i for i, d in enumerate(on) if (d is None) == every]
            if index:
                out[index] = self._gap_of([pairs[i] for i in index], [on[i] for i in index], methods, full)
        return out

    def _gap_of(self, pairs: list[tuple[int, int]], on: list[int | None], methods: dict[int, str],
                full: bool) -> torch.Tensor:
        """gap() of pairs measured on one kind of domain key."""
        keys = sorted({(s, d) for (s, _), d in zip(pairs, on)}, key=lambda key: (key[0], -1 if key[1] is None
                                                                                   else key[1]))
        rows = torch.tensor([keys.index((s, d)) for (s, _), d in zip(pairs, on)])
        students = [s for s, _ in keys]
        k = self.cfg.metrics.topk
        with torch.no_grad():
            batch = self._student_rollouts(keys, methods)
            # students on their own rollouts and teachers on the students' in one call: a world may then run
            # a prompt once per slot however many pairs share it (VLMWorld does)
            n = len(keys)
            scored = self.world.full_logprobs(batch.take(list(range(n)) + rows.tolist()),
                                              students + [t for _, t in pairs], grad=False)
            if bool(scored.isnan().any()):  # -inf is a suppressed token; NaN is logits that overflowed
                raise NonFiniteError(f"the log-probs of slot(s) {sorted(set(students) | {t for _, t in pairs})} are "
                                     f"NaN in a gap measurement (finite weights so large that their logits overflow)")
            # a student's top-k sets serve all its pairs: one torch.topk per student, not per pair
            p_top = TopK(scored[:n], k).take(rows)
            pair_batch = batch.take(rows.tolist())
            p_full, q_full = p_top.logp, scored[n:]
            tops = p_top, TopK(q_full, k)
            mask, tokens = pair_batch.mask, pair_batch.tokens[..., None]
            p_tok, q_tok = p_full.gather(-1, tokens).squeeze(-1), q_full.gather(-1, tokens).squeeze(-1)
            values = [metrics.topk_overlap(p_full, q_full, mask, k, tops), metrics.symmetric_kl(p_full, q_full, mask),
                      metrics.sampled_reverse_kl(p_tok, q_tok, mask), metrics.top1_overlap(p_full, q_full, mask),
                      *metrics.overlap_mass(p_full, q_full, mask, k, tops),
                      metrics.nucleus_overlap(p_full, q_full, mask, k, self.cfg.metrics.nucleus)]
            if full:
                values += [metrics.entropy_gap(p_full, q_full, mask),
                           metrics.overlap_token_advantage(p_full, q_full, mask, k, tops)]
        return torch.stack(values, dim=1)

    def overlap(self, pairs: list[tuple[int, int]], method: str, on: list[int | None] | None = None) -> list[float]:
        """Top-k overlap O_k of (student, teacher) slot pairs of one method (the adaptive schedule's signal), each on
        its domain of `on` (see gap)."""
        return self.gap(pairs, {s: method for s, _ in pairs}, full=False, on=on)[:, 0].tolist()

    def measure_groups(self, step: int, groups: list[tuple[str, list[tuple[str, int]], Pairs | None]],
                       full: bool) -> None:
        """Gap metrics between a group's (student, teacher) branch pairs (None: every ordered pair; the caller
        chooses them, see copd_lab.algorithm.topology.gap_pairs) and of each branch vs the base, plus each task
        vector's norm and the task-vector distance and cosine of the same pairs, unordered. A pair is measured on
        its teacher's domain (the prompts an OPD edge student<-teacher samples), a branch against the base on its
        own domain; a branch that is no domain's (mixed RLVR, MOPD's student) on every domain."""
        pairs, labels, on = [], [], []
        domain = {name: i for i, name in enumerate(self.world.domains)}
        for method, branches, chosen in groups:
            wanted = None if chosen is None else set(chosen)
            for student, s_slot in branches:
                teachers = [(t, slot) for t, slot in branches
                            if t != student and (wanted is None or (student, t) in wanted)]
                for teacher, t_slot in teachers + [("base", 0)]:
                    pairs.append((s_slot, t_slot))
                    labels.append((method, student, f"{student}<-{teacher}"))
                    # on the teacher's domain (where an edge's OPD acts), against the base on the student's own;
                    # a branch named by no domain (mixed RLVR, MOPD's student) on every domain
                    on.append(domain.get(teacher, domain.get(student)))
        if not pairs:
            return
        methods = {slot: method for method, branches, _ in groups for _, slot in branches}
        values = self.gap(pairs, methods, full, on).tolist()
        for (method, branch, pair), row in zip(labels, values):
            for name, value in zip(GAP_METRICS, row):
                self.log(method, step, branch, pair, name, value)
        base = self.world.flat_weights([0])
        for method, branches, chosen in groups:
            wanted = None if chosen is None else {frozenset(pair) for pair in chosen}
            # task vectors θ − θ_0 group by group: a matmul's rounding may depend on the other rows in it
            with torch.no_grad():
                vectors = self.world.flat_weights([s for _, s in branches]) - base
                unit = vectors / vectors.norm(dim=1, keepdim=True).clamp(min=1e-12)
                norms, distance, cosine = vectors.norm(dim=1).tolist(), torch.cdist(vectors, vectors).tolist(), \
                    (unit @ unit.T).tolist()
            for i, (a, _) in enumerate(branches):
                self.log(method, step, a, "", "task_vector_norm", norms[i])
                for j, (b, _) in enumerate(branches[i + 1:], i + 1):
                    if wanted is not None and frozenset((a, b)) not in wanted:
                        continue
                    self.log(method, step, a, f"{a}|{b}", "task_vector_distance", distance[i][j])
                    self.log(method, step, a, f"{a}|{b}", "task_vector_cosine", cosine[i][j])

    def accuracy(self, method: str, outputs: list[tuple[str, int]], step: int, final: bool) -> None:
        """Greedy and sampled pass@1 and reward per domain on the eval prompts (and, where the world computes it, exact
        accuracy and, for a reported model at its end, the calibrated one: see _calibrated)."""
        self.accuracy_of([(method, label, slot) for label, slot in outputs], step, final)

    def accuracy_of(self, outputs: list[tuple[str, str, int]], step: int, final: bool) -> None:
        """`accuracy` of (method, label, slot) outputs of several methods, in one batch of world calls."""
        world, m = self.world, self.cfg.metrics
        requests = [Request(slot, (d,), stream=self.stream(method)) for method, _, slot in outputs
                    for d in self.all_domains]
        prefix = "final_" if final else ""
        with torch.no_grad():
            greedy = world.sample(requests, 0, 1, 1.0, greedy=True, every_prompt=True)
            sampled = world.sample(requests, 0, m.eval_samples, self.cfg.grpo.temperature, every_prompt=True)
            values = torch.stack([greedy.correct.mean(1), sampled.correct.mean(1), sampled.rewards.mean(1),
                                  sampled.mask.sum(2).mean(1)], dim=1).tolist()
        names = ("acc_greedy", "acc_sampled", "reward", "length")
        if has(world, ExactAccuracy):  # a world that can enumerate its answers: no sampling noise
            exact = world.exact_accuracy(requests).tolist()
            values = [row + [e] for row, e in zip(values, exact)]
            names += ("acc_exact",)
            if final:  # a reported model's skill apart from its confidence (14 more exact passes: at the end only)
                calibrated, temperature = self._calibrated(requests, len(outputs))
                values = [row + [c] for row, c in zip(values, calibrated.tolist())]
                names += ("acc_calibrated",)
                for (method, label, _), t in zip(outputs, temperature.tolist()):
                    self.log(method, step, label, "", f"{prefix}calibrated_temperature", t)
        for i, request in enumerate(requests):
            method, label, _ = outputs[i // len(self.all_domains)]
            domain = world.domains[request.domains[0]]
            for name, value in zip(names, values[i]):
                self.log(method, step, label, "", f"{prefix}{name}/{domain}", value)

    def _calibrated(self, requests: list[Request], models: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Skill apart from confidence: each model's exact accuracy [R] at the temperature of CALIBRATION_GRID that
        maximises its mean exact accuracy over every domain's train prompts, and that temperature [models].
        (Accuracy at τ = 1 rewards sharpness: a model that knows the rule but spreads its mass scores low there.)"""
        grid = torch.tensor(CALIBRATION_GRID)
        with torch.no_grad():
            train = torch.stack([self.world.exact_accuracy(requests, temperature=t, split="train")
                                 for t in CALIBRATION_GRID])
            best = train.view(len(grid), models, -1).mean(-1).argmax(0)  # [models]: the first of equal ones
            per_request = best.repeat_interleave(len(requests) // models)
            held_out = torch.zeros(len(requests))
            for g in per_request.unique().tolist():  # held out only at the temperatures chosen (one or two)
                chosen = per_request == g
                held_out[chosen] = self.world.exact_accuracy(requests, temperature=CALIBRATION_GRID[g])[chosen]
        return held_out, grid[best]

    def conflict_of(self, branches: list[tuple[str, str, int]], step: int) -> None:
        """Cosine between per-domain GRPO gradients of each (method, branch, slot) branch (mixed RLVR's divergence
        cost Φ), branches of several methods in one batch of world calls."""
        world, g = self.world, self.cfg.grpo
        n_dom = len(self.all_domains)
        if n_dom < 2:
            return
        slots = [s for _, _, s in branches]
        requests = [Request(s, (d,), stream=self.stream(method)) for d in self.all_domains
                    for method, _, s in branches]
        batch = world.sample(requests, g.prompts_per_step, g.group_size, g.temperature)
        lp = world.token_logprobs(batch, [r.slot for r in requests], grad=True)
        adv = losses.group_advantages(batch.rewards, g.group_size, g.scale_by_std)[..., None]
        row_loss = losses.clipped_pg_loss(lp, batch.sample_logprobs, adv, batch.mask, g.clip_low, g.clip_high,
                                          g.aggregation, world.max_new_tokens).view(n_dom, len(slots))
        grads = torch.stack([world.flat_grads(row_loss[d].sum(), slots) for d in range(n_dom)], dim=1)
        cosine = metrics.gradient_conflict(grads).tolist()  # [slots, D, D]
        names = world.domains
        for (method, branch, _), matrix in zip(branches, cosine):
            for a in range(n_dom):
                for b in range(a + 1, n_dom):
                    self.log(method, step, branch, f"{names[a]}|{names[b]}", "grad_cosine", matrix[a][b])


# ---------------------------------------------------------------------------------------------- calls

Place = Callable[[int], int]  # a slot of the planner's world -> the slot of the world the call runs on


@dataclass(frozen=True)
class _Call:
    """A measurement of some entries at one step; the same call of several seeds joins into one (`+`), each placed
    on the world the joined call runs on (`placed`: owners named anew, slots mapped)."""

    step: int
    entries: tuple

    def placed(self, owner: Callable[[object], object], slot: Place) -> _Call:
        return replace(self, entries=tuple(self._place(entry, owner, slot) for entry in self.entries))

    def __add__(self, other: _Call) -> _Call:
        return replace(self, entries=self.entries + other.entries)

    @staticmethod
    def _place(entry: tuple, owner: Callable[[object], object], slot: Place) -> tuple:
        """An (owner, name, slot) entry placed."""
        who, name, at = entry
        return owner(who), name, slot(at)


@dataclass(frozen=True)
class GapOf(_Call):
    """Meter.measure_groups: the gap between the chosen ordered pairs of each group's branches and against the base,
    and task vectors. entries: (owner, ((branch, slot), ...), pairs) per method, pairs (student, teacher) branch
    names or None for every ordered pair (names, not slots: placing leaves them as they are)."""

    full: bool = False  # every GAP_METRICS (an eval tick), else QUICK_METRICS

    def __call__(self, meter: Meter) -> None:
        meter.measure_groups(self.step, [(owner, list(branches), pairs) for owner, branches, pairs in self.entries],
                             self.full)

    @staticmethod
    def _place(entry: tuple, owner: Callable[[object], object], slot: Place) -> tuple:
        who, branches, pairs = entry
        return owner(who), tuple((branch, slot(at)) for branch, at in branches), pairs


@dataclass(frozen=True)
class AccuracyOf(_Call):
    """Meter.accuracy_of: greedy and sampled pass@1, reward and length per domain. entries: (owner, label, slot)."""

    final: bool = False  # rows named final_<metric>: a model a method reports, at its end

    def __call__(self, meter: Meter) -> None:
        meter.accuracy_of(list(self.entries), self.step, self.final)


@dataclass(frozen=True)
class ConflictOf(_Call):
    """Meter.conflict_of: the cosine between per-domain GRPO gradients. entries: (owner, branch, slot)."""

    def __call__(self, meter: Meter) -> None:
        meter.conflict_of(list(self.entries), self.step)
