"""The simulator world: every slot's toy policy (copd_lab.sim.net) in one tensor, so a tick is a few batched ops.

All slots' weights live in one flat tensor [slots, P]; Adam runs on the rows of the slots that trained this
tick, each with its own step count. Every call works on the weights of the slots it needs, taken as one
leaf tensor (SlotWeights, cached until weights change), so that sampling, teacher scoring and the training
forward of a tick share one graph and the gradient lands on the rows in use, not on the whole [slots, P]
tensor (a full-size gradient is zero-filled and copied into on every backward, for rows that mostly never
train). A prompt's x-part logits are computed once per prompt of a call, not once per rollout of its group.

A tick here is a few hundred tensor ops on small tensors, so its cost is mostly per-op overhead: the
code below favours fewer ops (flat tables read with index_select, caches of what repeats every tick)
over fewer flops, with the float ops of the plain computation, so that none of this changes a number.
"""

from __future__ import annotations

import torch

from copd_lab.config import MergeConfig, SimConfig
from copd_lab.math.merge import merge_state_dicts
from copd_lab.sim import net
from copd_lab.sim.base import base_weights
from copd_lab.sim.batch import Layout, Scored, SimPayload, SlotWeights
from copd_lab.sim.draws import CallDraws, SimDraws
from copd_lab.sim.paths import path_logprobs
from copd_lab.sim.tasks import SimTasks
from copd_lab.streams import Streams
from copd_lab.world import Batch, ExactAccuracy, NonFiniteError, Request, ShardableSlots, SideBySide, TokenText


class SimWorld:
    """A World (see copd_lab.world) of toy policies on SimTasks, all starting from the warm-started base."""

    # exact accuracy (its answers can be enumerated), shards of a sharded world, seeds side by side in one world
    # (experiment.run_comparison runs a sweep's seeds so), and the token inspector's text
    capabilities = frozenset({ExactAccuracy, ShardableSlots, SideBySide, TokenText})
    pad_id = 0  # every answer has answer_len tokens: nothing is padded

    def __init__(self, cfg: SimConfig, domains: tuple[str, ...]):
        self.cfg, self.domains = cfg, tuple(domains)
        self.tasks = SimTasks.build(cfg, len(domains))
        self.vocab_size = v = cfg.vocab_size
        self.max_new_tokens = cfg.answer_len  # the longest answer: T tokens
        # each domain's answer length (sim.answer_lens), None when every answer has T tokens (no mask to build)
        self.lengths = (torch.tensor(cfg.answer_lens) if cfg.answer_lens and min(cfg.answer_lens) < cfg.answer_len
                        else None)
        self.shape = net.NetShape.of(cfg, len(domains))
        self.shapes = net.param_shapes(self.shape)
        self.n_params = sum(torch.Size(shape).numel() for shape in self.shapes.values())
        self.rows_of = net.previous_rows(cfg.digits, cfg.styles, v)  # the row of U each previous token reads
        self.u_rows = cfg.styles + 2
        self.base = base_weights(cfg, len(domains))
        self._layouts: dict[tuple, Layout] = {}
        self._first: dict[tuple, tuple[torch.Tensor, ...]] = {}  # see _first_rows, _rollout_rows
        self._draws = CallDraws(cfg)
        self._cache: SlotWeights | None = None
        self._graded: SlotWeights | None = None  # the weights the last gradient caller got (see step)
        self._paths: tuple | None = None  # exact_accuracy's last logits, with the weights and requests they are of

    # ---------------------------------------------------------------- slots and optimizer
    # Every method that changes weights drops the cached slot weights (see _weights).

    def reset(self, n_slots: int, seed: int) -> None:
        self.streams = Streams(seed)
        self.flat = self.base.repeat(n_slots, 1)
        self.m = torch.zeros_like(self.flat)
        self.v = torch.zeros_like(self.m)
        self.t = torch.zeros(n_slots, 1)
        self._cache = self._graded = None

    def copy(self, src: int, dst: int) -> None:
        with torch.no_grad():
            self.flat[dst] = self.flat[src]
            self.m[dst], self.v[dst], self.t[dst] = 0.0, 0.0, 0.0
        self._cache = None

    def _named(self, row: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: block[0] for name, block in net.split(row[None], self.shapes).items()}

    def merge(self, sources: list[int], dst: int, spec: MergeConfig) -> None:
        with torch.no_grad():
            experts = [self._named(self.flat[s]) for s in sources]
            merged = merge_state_dicts(experts, self._named(self.flat[0]), spec.method,
                                       list(spec.weights) or None, spec.density, spec.scale)
            self.flat[dst] = torch.cat([merged[n].reshape(-1) for n in self.shapes])
            self.m[dst], self.v[dst], self.t[dst] = 0.0, 0.0, 0.0
        self._cache = None

    def step(self, loss: torch.Tensor, slots: list[int]) -> None:
        """One Adam step on the slots that trained; the others keep weights and moments untouched."""
        if not slots:  # nothing of this world trains (a shard whose slots only scored): no gradient is kept
            self._graded = self._cache = None
            return
        loss.backward()
        graded, self._graded = self._graded, None
        with torch.no_grad():
            rows = _rows(slots)
            weights, m, v, t = self.flat[rows], self.m[rows], self.v[rows], self.t[rows]
            net.adam_step_(weights, self._slot_grads(graded, slots), m, v, t, self.cfg.lr)
            if not isinstance(rows, slice):  # an index gathered copies: write them back
                self.flat[rows], self.m[rows], self.v[rows], self.t[rows] = weights, m, v, t
        self._cache = None

    def _slot_grads(self, graded: SlotWeights | None, slots: list[int]) -> torch.Tensor:
        """The gradient rows of the distinct slots, in order, from the leaf that was graded."""
        unique = sorted(set(slots))
        if graded is None or graded.weights.grad is None:  # the loss did not reach any weights
            return torch.zeros(len(unique), self.n_params)
        index = _rows([graded.slots[s] for s in unique])
        grad = graded.weights.grad
        return grad[index] if isinstance(index, slice) else grad.index_select(0, index)

    def non_finite(self, slots: list[int]) -> list[int]:
        rows = self.flat[_rows(slots)]
        if bool(rows.sum().isfinite()):  # a NaN or inf anywhere makes the sum one (25x cheaper than isfinite().all())
            return []
        unique = sorted(set(slots))
        return [s for s, ok in zip(unique, torch.isfinite(rows).all(1).tolist()) if not ok]

    def flat_weights(self, slots: list[int]) -> torch.Tensor:
        return self.flat[slots]

    def flat_grads(self, loss: torch.Tensor, slots: list[int]) -> torch.Tensor:
        graded = self._graded
        (grad,) = torch.autograd.grad(loss, graded.weights, retain_graph=True)
        return grad[[graded.slots[s] for s in slots]]

    def get_slot(self, slot: int) -> torch.Tensor:
        """A slot's weights (its flat row), to copy into another world (a shard of copd_lab.distributed.sharded)."""
        return self.flat[slot].detach().clone()

    def set_slot(self, slot: int, weights: torch.Tensor) -> None:
        """Slot's weights become `weights` (from get_slot), with fresh Adam moments, as copy() gives them."""
        with torch.no_grad():
            self.flat[slot] = weights
            self.m[slot], self.v[slot], self.t[slot] = 0.0, 0.0, 0.0
        self._cache = None

    def generator_state(self) -> None:
        """None: the simulator has no generator of its own (its merges draw from a fixed seed)."""

    def set_generator_state(self, state: None) -> None:
        pass

    @property
    def lr_setting(self) -> str:
        return f"sim.lr = {self.cfg.lr}"

    def export_payload(self, payload: SimPayload) -> list[tuple]:
        """Per request row, what re-scores its rollouts in another world: prompt ids and previous tokens."""
        return [(payload.content[r], payload.prompt[r], payload.prev[r], payload.group, payload.temperature)
                for r in range(payload.prompt.shape[0])]

    def import_payload(self, rows: list[tuple]) -> SimPayload:
        """The payload of rows from export_payload (of this world or another)."""
        return SimPayload(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]),
                          torch.stack([r[2] for r in rows]), rows[0][3], rows[0][4])

    def state_dict(self, rows: slice | None = None, seed: int | None = None) -> dict:
        """The world's state; or, given rows and a seed, that of the slots `rows` and of the seed's streams (one
        seed of several run side by side, see copd_lab.algorithm.side_by_side), as a world of those slots alone
        would hold it."""
        rows = slice(None) if rows is None else rows
        return {"flat": self.flat[rows].clone(), "m": self.m[rows].clone(), "v": self.v[rows].clone(),
                "t": self.t[rows].clone(), "streams": self.streams.state_dict(seed)}

    def load_state_dict(self, state: dict, rows: slice | None = None, seed: int | None = None) -> None:
        if rows is None:
            self.flat = state["flat"].clone()
            self.m, self.v, self.t = state["m"].clone(), state["v"].clone(), state["t"].clone()
            self.streams = Streams.from_state_dict(state["streams"])
        else:
            for name in ("flat", "m", "v", "t"):
                getattr(self, name)[rows] = state[name]
            self.streams.load_state_dict(state["streams"], seed)
        self._cache = self._graded = None

    # ---------------------------------------------------------------- the policy

    def _weights(self, slots: list[int]) -> SlotWeights:
        """The weights of (at least) these slots, as one leaf with its named blocks.

        A tick asks for the same slots several times (sampling, teacher scoring, the training forward), so
        they are taken once: the cache grows to the union of the slots asked for, and is dropped when weights
        change or a gradient caller takes it. The blocks are views made with autograd on, so that the training
        forward can reuse what sampling computed; the no-grad callers take results detached.
        """
        cache = self._cache
        if cache is None or not all(s in cache.slots for s in slots):
            wanted = sorted(set(slots) | set(cache.slots if cache is not None else ()))
            weights = self.flat[_rows(wanted)].requires_grad_(True)  # a view (or a copy): a leaf of its own
            with torch.enable_grad():
                blocks = net.split(weights, self.shapes)
                bigram = blocks["bigram"].reshape(-1, self.vocab_size)
            self._cache = cache = SlotWeights({s: i for i, s in enumerate(wanted)}, weights, blocks, bigram)
        return cache

    def _prompt_logits(self, weights: SlotWeights, where: torch.Tensor, prompt: torch.Tensor, group: int,
                       grad: bool) -> torch.Tensor:
        """[R, P * group, T, V] x-part logits (net.prompt_logits) of prompts `prompt` [R, P] under slot rows where
        [R], each prompt's row repeated for its `group` adjacent rollouts: computed once per prompt, not per rollout."""
        x = self.tasks.features.index_select(0, prompt.view(-1)).view(*prompt.shape, -1)
        domain = self.tasks.domain.index_select(0, prompt.view(-1)).view(prompt.shape) if self.shape.hidden else None
        with torch.set_grad_enabled(grad):
            hidden = net.prompt_logits(weights.blocks, where, x, domain, self.shape)
            return hidden if group == 1 else hidden.repeat_interleave(group, 1)

    def _prompt_layout(self, requests: list[Request], prompts: int, group: int, every: bool) -> Layout:
        """Where a call's rollouts come from, cached: the same request shapes come back every tick."""
        key = (tuple(r.domains for r in requests), prompts, group, every)
        if key not in self._layouts:
            visited = prompts if 0 < prompts < self.cfg.eval_prompts else self.cfg.eval_prompts
            rows = []
            for r in requests:  # every: the first `prompts` eval prompts of each domain (0: all); else drawn
                # a drawn prompt's domain: the request's one domain (a pooled one's is drawn with it: see draw)
                rows.append(torch.tensor([d for d in r.domains for _ in range(visited)] if every else
                                         [r.domains[0]] * prompts))
            domain = torch.stack(rows)  # [R, P]
            first = self.tasks.first_prompt(domain, eval=every)
            content = torch.arange(visited).repeat(len(requests[0].domains)).expand_as(domain) if every else None
            rollouts = domain.repeat_interleave(group, 1)
            self._layouts[key] = Layout(rollouts, first, content, self._mask(rollouts))
        return self._layouts[key]

    def _mask(self, domain: torch.Tensor) -> torch.Tensor:
        """[R, N, T] 1.0 on the answer positions of each rollout's domain (sim.answer_lens; all T by default)."""
        if self.lengths is None:
            return torch.ones(*domain.shape, self.cfg.answer_len)
        return (torch.arange(self.cfg.answer_len) < self.lengths[domain][..., None]).float()

    def draw(self, requests: list[Request], prompts: int, group: int, greedy: bool = False,
             every_prompt: bool = False) -> SimDraws:
        """The random draws of a sample call from the requests' streams (copd_lab.sim.draws)."""
        return self._draws.draw(self.streams, requests, prompts, group, greedy, every_prompt)

    def sample(self, requests: list[Request], prompts: int, group: int, temperature: float,
               greedy: bool = False, every_prompt: bool = False, draws: SimDraws | None = None) -> Batch:
        layout = self._prompt_layout(requests, prompts, group, every_prompt)
        domain, content, first = layout.domain, layout.content, layout.first_prompt
        n_rows, n = domain.shape
        draws = draws or self.draw(requests, prompts, group, greedy, every_prompt)
        if content is None:
            content = draws.content
        mask = layout.mask
        if draws.domain is not None:  # pooled requests: each prompt's domain was drawn
            first, domain = self.tasks.first_prompt(draws.domain, eval=False), draws.domain.repeat_interleave(group, 1)
            if self.lengths is not None:
                mask = self._mask(domain)
        prompt = first + content  # [R, P]
        v, length = self.vocab_size, self.cfg.answer_len
        # the teachers that will score these rollouts join the cache now, rather than take their weights then
        slots = [r.slot for r in requests]
        weights = self._weights(slots + [r.teacher for r in requests if r.teacher >= 0])
        where, bigram_first = self._first_rows(weights, slots)
        # in the caller's grad mode: the training forward reuses this (see Scored)
        hidden = self._prompt_logits(weights, where, prompt, group, torch.is_grad_enabled())  # [R, N, T, V]
        with torch.no_grad():  # rollouts are flattened to R * N rows: fewer, larger ops in the token loop
            hidden_loop, bigram = hidden.detach().view(n_rows * n, length, v), weights.bigram.detach()
            if temperature != 1.0:  # x / 1.0 is x: skip the op
                hidden_loop, bigram = hidden_loop / temperature, bigram / temperature
            bigram_rows, start_rows, start = self._rollout_rows(weights, slots, n)
            # inverse-CDF sampling: one uniform u per token (Gumbel-max needs V of them, and drawing them was the
            # dearest part of a tick); the token is the first id whose cumulative probability exceeds u
            if not greedy:
                uniform = draws.uniform.unbind(0)
            steps, logits = [start], []  # the token before position 0: the start token
            for t, hidden_t in enumerate(hidden_loop.unbind(1)):
                logits.append(hidden_t + bigram.index_select(
                    0, bigram_rows + self.rows_of.index_select(0, steps[-1]) if t else start_rows))
                if greedy:
                    steps.append(logits[-1].argmax(-1))
                else:  # u scaled by the row's total: float rounding never runs past the last id with mass
                    cdf = logits[-1].softmax(-1).cumsum_(-1)
                    steps.append(torch.searchsorted(cdf, uniform[t] * cdf[:, -1:], right=True).view(-1))
            sequence = torch.stack(steps, -1).view(n_rows, n, length + 1)  # the start token, then the answer
            tokens, prev = sequence[..., 1:], sequence[..., :-1]
            if not greedy and int(tokens.max()) >= v:  # a NaN cdf sends u past the last id
                raise NonFiniteError(f"the sampling probabilities of slot(s) {sorted(set(slots))} "
                                     f"are NaN (finite weights so large that their logits overflow)")
        token = None
        if torch.is_grad_enabled():  # rollouts to train on: score them now, with the graph the update will use
            logp = net.logprobs(hidden, weights.bigram, bigram_first, prev, self.rows_of, temperature)
            # π_old: at τ = 1 the loop's logits are the scored ones (and the training forward's token log-probs are
            # these very numbers); else h/τ + U/τ rounds unlike (h + U)/τ
            token = logp.gather(-1, tokens[..., None]).squeeze(-1) if temperature == 1.0 else None
            scored = Scored(weights, logp, token, logp.requires_grad)
        else:  # a measurement: the full log-probs only if a caller asks (the gap's students do, evaluations don't)
            scored = Scored(weights, None, None, False, torch.no_grad()(lambda: net.logprobs(
                hidden, weights.bigram, bigram_first, prev, self.rows_of, temperature)))
        with torch.no_grad():  # else the loop's own logits (at τ = 1 bitwise the scored ones: h + U)
            logps = (token.detach() if token is not None else torch.stack(logits, 1).view(*tokens.shape, v)
                     .log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1))
        with torch.no_grad():
            reward, correct = self.tasks.score_prompts(prompt.repeat_interleave(group, 1), tokens,
                                                       None if self.lengths is None else mask)
        return Batch(list(requests), domain, tokens, mask, reward, correct, logps,
                     SimPayload(content, prompt, prev, group, temperature, scored))

    def _first_rows(self, weights: SlotWeights, slots: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each request's slot: its row [R] in the weights' blocks, and [R, 1] its first row in their flat table of U
        table (cached: a tick's requests and slots come back every tick)."""
        key = (tuple(weights.slots), tuple(slots))
        if key not in self._first:
            where = torch.tensor([weights.slots[s] for s in slots])
            self._first[key] = where, where[:, None] * self.u_rows
        return self._first[key]

    def _rollout_rows(self, weights: SlotWeights, slots: list[int], n: int) -> tuple[torch.Tensor, ...]:
        """[R * N] per rollout: its slot's first row of U, the row the start token reads, and the start token V
        (cached, like _first_rows: they are the same every tick)."""
        key = (tuple(weights.slots), tuple(slots), n)
        if key not in self._first:
            bigram_rows = self._first_rows(weights, slots)[1].expand(len(slots), n).reshape(-1)
            self._first[key] = bigram_rows, bigram_rows + self.u_rows - 1, torch.full_like(bigram_rows, self.vocab_size)
        return self._first[key]

    def full_logprobs(self, batch: Batch, slots: list[int], grad: bool) -> torch.Tensor:
        return self._logprobs_of(batch, slots, grad, tokens=False)

    def token_text(self, token: int) -> str:
        """How a token reads: "s<style>:<digit>" for a style's digit, "filler<i>" for a filler token."""
        q, m = self.cfg.digits, self.cfg.styles
        return f"s{token // q}:{token % q}" if token < q * m else f"filler{token - q * m}"

    def exact_accuracy(self, requests: list[Request], grad: bool = False, temperature: float = 1.0,
                       split: str = "eval") -> torch.Tensor:
        """[R] expected accuracy (= expected reward) of slot r.slot on every eval prompt of domain r.domains[0],
        from its probabilities: a style's right answer is one path of T tokens, so P(right) = Σ_m Π_t
        p(m·Q + a_t | the path's previous token): M paths per prompt, no sampling.
        grad: keep the graph to the slots' weights (then flat_grads gives the exact gradient of the accuracy).
        temperature: of the policy whose accuracy it is (logits / τ). split "train": on the domain's first
        `eval_prompts` train prompts instead (what a calibration may look at)."""
        slots = [r.slot for r in requests]
        weights = self._weights(slots)
        n, s, m = len(requests), self.cfg.eval_prompts, self.cfg.styles
        domain = torch.tensor([r.domains[0] for r in requests])
        prompt = self.tasks.first_prompt(domain, eval=split == "eval")[:, None] + torch.arange(s)  # [R, S]
        key = (tuple(slots), tuple(domain.tolist()), split)
        cached = self._paths
        with torch.set_grad_enabled(grad):
            if grad or cached is None or cached[0] is not weights or cached[1] != key:
                parts = self._path_parts(weights, slots, prompt, grad)
                if not grad:  # a calibration asks again at other temperatures: the logits are the same
                    self._paths = (weights, key, parts)
            else:
                parts = cached[2]
            hidden, u = parts
            paths = self.tasks.answers.index_select(0, prompt.view(-1)).view(n, s, m, -1)  # the right sequences
            on_path = path_logprobs(hidden, u, paths, temperature)  # [R, S, M, T]
            if self.lengths is not None:  # a shorter answer is right on its first positions
                on_path = on_path * self._mask(domain)[:, None, None]
            right = on_path.sum(-1).exp()  # [R, S, M]
            return self._handed(right.sum(-1).mean(-1), grad)

    def _path_parts(self, weights: SlotWeights, slots: list[int], prompt: torch.Tensor,
                    grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The two parts of the logits along each style's right path of prompts [R, S]: the x-part of a prompt,
        once ([R, S, T, V]), and the row of U each position's previous token reads ([R, M, T, V]: the start row at
        t = 0, then the path's style); a path's logits are their sum."""
        where, bigram_first = self._first_rows(weights, slots)
        m, t = self.cfg.styles, self.cfg.answer_len
        hidden = self._prompt_logits(weights, where, prompt, 1, grad)  # [R, S, T, V]
        row = torch.arange(m)[:, None].expand(m, t).clone()
        row[:, 0] = m + 1  # net.previous_rows: the start token's row
        bigram = weights.bigram if grad else weights.bigram.detach()
        u = bigram.index_select(0, (bigram_first[:, :, None] + row).view(-1)).view(len(slots), m, t, -1)
        return hidden, u

    def pair_logprobs(self, batch: Batch, rows: list[int], full: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # every row reads its slot's weights with the same ops whatever the other rows of a call, so the students'
        # scores are the sampler's own (no second forward) and the teachers' come from one call
        score = self.full_logprobs if full else self.token_logprobs
        opd = set(rows)
        student = score(batch, [r.slot for r in batch.requests], grad=False)
        teacher = score(batch, [r.teacher if i in opd else -1 for i, r in enumerate(batch.requests)], grad=False)
        keep = torch.tensor([i in opd for i in range(len(batch.requests))]).view(-1, *[1] * (student.dim() - 1))
        return torch.where(keep, student, 0.0), torch.where(keep, teacher, 0.0)

    def token_logprobs(self, batch: Batch, slots: list[int], grad: bool) -> torch.Tensor:
        scored = batch.payload.scored
        if self._current(scored, batch, slots, grad) and scored.token is not None:
            return self._handed(scored.token, grad)
        return self._logprobs_of(batch, slots, grad, tokens=True)

    def _logprobs_of(self, batch: Batch, slots: list[int], grad: bool, tokens: bool) -> torch.Tensor:
        """Full log-probs [R, N, T, V], or with `tokens` those of the batch's tokens [R, N, T]: the sampler's own
        when they are still current (see Scored), else scored from the weights."""
        payload, scored = batch.payload, batch.payload.scored

        def pick(logp: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
            if not tokens:
                return logp
            chosen = batch.tokens if rows is None else batch.tokens[rows]
            return logp.gather(-1, chosen[..., None]).squeeze(-1)

        if self._current(scored, batch, slots, grad):
            logp = pick(scored.full())
        elif 2 * slots.count(-1) <= len(slots):  # rows that need no score (slot -1) get their sampler's
            slots = [s if s >= 0 else r.slot for s, r in zip(slots, batch.requests)]
            logp = pick(self._score(slots, payload, None, grad))
        else:  # mostly unneeded rows (a tick's teacher scoring with few OPD rows): score the others, zeros here
            logp = torch.zeros(*batch.tokens.shape, *(() if tokens else (self.vocab_size,)))
            needed = [i for i, s in enumerate(slots) if s >= 0]
            if needed:
                index = torch.tensor(needed)
                logp = logp.index_copy(0, index, pick(self._score([slots[i] for i in needed], payload, index, grad),
                                                      index))
        return self._handed(logp, grad)

    def _current(self, scored: Scored | None, batch: Batch, slots: list[int], grad: bool) -> bool:
        """Whether the sampler's own scores answer this call: same slots, weights still current, graph if asked."""
        return (scored is not None and scored.weights is self._cache and (scored.graph or not grad)
                and slots == [r.slot for r in batch.requests])

    def _handed(self, out: torch.Tensor, grad: bool) -> torch.Tensor:
        if grad:  # the caller's backward frees the weights' graph: later callers get a fresh leaf
            self._graded, self._cache = self._cache, None
            return out
        return out.detach()

    def _score(self, slots: list[int], payload: SimPayload, rows: torch.Tensor | None, grad: bool) -> torch.Tensor:
        """[R, N, T, V] log-probs under slots[r] of the payload's rollouts (of its rows `rows`, or all)."""
        prompt, prev = (payload.prompt, payload.prev) if rows is None else (payload.prompt[rows], payload.prev[rows])
        weights = self._weights(slots)
        where, bigram_first = self._first_rows(weights, slots)
        hidden = self._prompt_logits(weights, where, prompt, payload.group, grad)
        bigram = weights.bigram if grad else weights.bigram.detach()
        with torch.set_grad_enabled(grad):
            return net.logprobs(hidden, bigram, bigram_first, prev, self.rows_of, payload.temperature)


def _rows(slots: list[int]) -> slice | torch.Tensor:
    """The rows of these slots in a [slots, P] tensor: a slice (a view: no gather, and a cheap backward)
    when the distinct slots are contiguous, as a tick's training branches usually are; else an index."""
    unique = sorted(set(slots))
    if unique[-1] - unique[0] + 1 == len(unique):
        return slice(unique[0], unique[-1] + 1)
    return torch.tensor(unique)
