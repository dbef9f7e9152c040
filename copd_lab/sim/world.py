"""The simulator world: every slot's tiny policy stacked in one tensor, so a tick is a few batched ops.

The policy is a small autoregressive network over the task's tokens: for prompt (d, s) at position t
after token y_{t-1}, logits = hardtanh(E_content[s, t] + E_domain[d]) W + b + U[y_{t-1}]. The hidden
layer (width = SimConfig.hidden) is the capacity that domains share; the bigram term U lets a response
keep the behaviour pattern it started with. Because the hidden part does not depend on earlier tokens,
the hidden logits of every prompt are one batched matmul per weight version (the logit tables, built
once a tick and reused by sampling, scoring and the training forward) and sampling only adds U row by
row. All slots' weights live in one flat tensor [slots, P]; Adam runs on the rows of the slots that
trained this tick, each with its own step count. The gradient lands on the rows the logit tables were
built from (a leaf of the slots in use), not on the whole [slots, P] tensor: a full-size gradient is
zero-filled and copied into on every backward, for rows that mostly never train.

A tick here is a few hundred tensor ops on small tensors, so its cost is mostly per-op overhead: the
code below favours fewer ops (flat tables read with index_select, caches of what repeats every tick)
over fewer flops, with the float ops of the plain computation, so that none of this changes a number.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from copd_lab.config import MergeConfig, SimConfig
from copd_lab.merge import merge_state_dicts
from copd_lab.policy import Batch, NonFiniteError, Request
from copd_lab.sim.batch import Layout, LogitTables, Scored, SimPayload
from copd_lab.sim.tasks import SimTasks
from copd_lab.streams import Streams


class SimWorld:
    """A World (see copd_lab.policy) of toy policies on SimTasks."""

    betas, eps = (0.9, 0.999), 1e-8

    def __init__(self, cfg: SimConfig, domains: tuple[str, ...], lr: float):
        self.cfg, self.domains, self.lr = cfg, tuple(domains), lr
        self.tasks = SimTasks.build(cfg, len(domains), cfg.task_seed)
        s, d, t, v, h = cfg.prompts_per_domain, len(domains), cfg.answer_len, self.tasks.vocab_size, cfg.hidden
        self.vocab_size, self.n_prompts = v, d * s
        self.max_new_tokens = t  # every answer has T tokens
        self.shapes = {"content": (s, t, h), "domain": (d, h), "out_weight": (h, v), "out_bias": (v,),
                       "bigram": (v + 1, v)}
        self.offsets, total = {}, 0
        for name, shape in self.shapes.items():
            size = torch.Size(shape).numel()
            self.offsets[name] = (total, total + size)
            total += size
        self.n_params = total
        self._layouts: dict[tuple, Layout] = {}
        self._first: dict[tuple, tuple[torch.Tensor, ...]] = {}  # see _first_rows, _rollout_rows
        self._plans: dict[tuple, tuple[list[tuple[str, int]], torch.Tensor | None]] = {}
        self._cache: LogitTables | None = None
        self._graded: LogitTables | None = None  # the tables the last gradient caller got (see step)

    # ---------------------------------------------------------------- slots and optimizer
    # Every method that changes weights drops the cached logit tables (see _tables).

    def reset(self, n_slots: int, seed: int) -> None:
        base = torch.randn(self.n_params, generator=torch.Generator().manual_seed(seed)) * self.cfg.init_scale
        self.streams = Streams(seed)
        self.flat = base.repeat(n_slots, 1)
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
        return {n: row[a:b].view(self.shapes[n]) for n, (a, b) in self.offsets.items()}

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
        loss.backward()
        graded, self._graded = self._graded, None
        with torch.no_grad():
            rows = _rows(slots)
            g, (b1, b2) = self._slot_grads(graded, slots), self.betas
            m = self.m[rows].lerp_(g, 1 - b1)
            v = self.v[rows].mul_(b2).addcmul_(g, g, value=1 - b2)
            t = self.t[rows].add_(1)
            update = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt_() + self.eps)
            weights = self.flat[rows].add_(update, alpha=-self.lr)
            if not isinstance(rows, slice):  # an index gathered copies: write them back
                self.flat[rows], self.m[rows], self.v[rows], self.t[rows] = weights, m, v, t
        self._cache = None

    def _slot_grads(self, graded: LogitTables | None, slots: list[int]) -> torch.Tensor:
        """The gradient rows of the distinct slots, in order, from the leaf of the tables that were graded."""
        unique = sorted(set(slots))
        if graded is None or graded.weights.grad is None:  # the loss did not reach any weights
            return torch.zeros(len(unique), self.n_params)
        index = _rows([graded.slots[s] for s in unique])
        grad = graded.weights.grad
        return grad[index] if isinstance(index, slice) else grad.index_select(0, index)

    def non_finite(self, slots: list[int]) -> list[int]:
        rows = self.flat[_rows(slots)]
        if bool(torch.isfinite(rows).all()):  # one op and one sync on the usual path
            return []
        unique = sorted(set(slots))
        return [s for s, ok in zip(unique, torch.isfinite(rows).all(1).tolist()) if not ok]

    def flat_weights(self, slots: list[int]) -> torch.Tensor:
        return self.flat[slots]

    def flat_grads(self, loss: torch.Tensor, slots: list[int]) -> torch.Tensor:
        graded = self._graded
        (grad,) = torch.autograd.grad(loss, graded.weights, retain_graph=True)
        return grad[[graded.slots[s] for s in slots]]

    def state_dict(self) -> dict:
        return {"flat": self.flat.clone(), "m": self.m.clone(), "v": self.v.clone(),
                "t": self.t.clone(), "streams": self.streams.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.flat = state["flat"].clone()
        self.m, self.v, self.t = state["m"].clone(), state["v"].clone(), state["t"].clone()
        self.streams = Streams.from_state_dict(state["streams"])
        self._cache = self._graded = None

    # ---------------------------------------------------------------- the policy

    def _logit_tables(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt logits [k * D * S, T, V] and bigram [k * (V+1), V] of the slots in `rows` (a [k, P] view).

        The hidden part of the policy depends only on (d, s, t), so one small batched matmul per weight
        version serves every rollout: sampling, teacher scoring and the training forward. Each op here
        is also a node of the backward, and a tick's cost is mostly per-op overhead: views go straight
        to the broadcast shapes.
        """
        n, (s, t, h), (d, _), v = rows.shape[0], self.shapes["content"], self.shapes["domain"], self.vocab_size
        sizes = [b - a for a, b in self.offsets.values()]  # split: its backward is one cat
        content, domain, out_weight, out_bias, bigram = rows.split(sizes, 1)
        pre = content.view(n, 1, s * t, h) + domain.view(n, d, 1, h)  # [k, D, S * T, H]
        hidden = torch.nn.functional.hardtanh(pre).view(n, d * s * t, h)  # tanh is 3x slower on CPU
        logits = torch.baddbmm(out_bias.view(n, 1, v), hidden, out_weight.view(n, h, v))
        return logits.view(n * d * s, t, v), bigram.reshape(n * (v + 1), v)

    def _tables(self, slots: list[int]) -> LogitTables:
        """The logit tables of (at least) these slots under the current weights, with their graph.

        A tick asks for the same tables several times (sampling, teacher scoring, the training forward),
        so they are computed once, for the slots in use: the cache grows to the union of the slots asked
        for, and is dropped when weights change or a gradient caller takes it. They are built with
        autograd on, so that the training forward can reuse them; the no-grad callers take them detached.
        Work scales with the slots in use, not with all the slots of the run.
        """
        cache = self._cache
        if cache is None or not all(s in cache.slots for s in slots):
            wanted = sorted(set(slots) | set(cache.slots if cache is not None else ()))
            weights = self.flat[_rows(wanted)].requires_grad_(True)  # a view (or a copy): a leaf of its own
            with torch.enable_grad():
                prompt, bigram = self._logit_tables(weights)
            self._cache = cache = LogitTables({s: i for i, s in enumerate(wanted)}, weights, prompt, bigram)
        return cache

    def _prompt_layout(self, requests: list[Request], prompts: int, group: int, every: bool) -> Layout:
        """Where a call's rollouts come from, cached: the same request shapes come back every tick."""
        key = (tuple(r.domains for r in requests), prompts, group, every)
        if key not in self._layouts:
            s = self.cfg.prompts_per_domain
            visited = prompts if 0 < prompts < s else s  # every: the first `prompts` of each domain (0: all)
            rows = []
            for r in requests:
                if every:
                    doms = [d for d in r.domains for _ in range(visited)]
                else:
                    doms = [r.domains[i % len(r.domains)] for i in range(prompts)]
                rows.append(torch.tensor(doms).repeat_interleave(group))
            domain = torch.stack(rows)
            n_rows, n = domain.shape
            content = None
            if every:
                content = torch.arange(visited).repeat_interleave(group).repeat(n // (visited * group))
                content = content.expand(n_rows, n)
            # which drawn prompt each rollout answers (every_prompt visits prompts in order: no draw)
            prompt_of = torch.arange(1 if every else max(prompts, 1)).repeat_interleave(group)
            mask = torch.ones(n_rows, n, self.cfg.answer_len)
            self._layouts[key] = Layout(domain, domain * s, content, prompt_of, mask)
        return self._layouts[key]

    def sample(self, requests: list[Request], prompts: int, group: int, temperature: float,
               greedy: bool = False, every_prompt: bool = False) -> Batch:
        layout = self._prompt_layout(requests, prompts, group, every_prompt)
        domain, content = layout.domain, layout.content
        n_rows, n = domain.shape
        if content is None:  # a prompt's G rollouts are contiguous
            content = self._per_stream(requests, 1, 0, lambda gen, rows: torch.randint(
                self.cfg.prompts_per_domain, (rows, prompts), generator=gen)).index_select(1, layout.prompt_of)
        prompt = layout.first_prompt + content
        v, length = self.vocab_size, self.cfg.answer_len
        # the teachers that will score these rollouts join the tables now, rather than rebuild them then
        tables = self._tables([r.slot for r in requests] + [r.teacher for r in requests if r.teacher >= 0])
        prompt_first, bigram_first = self._first_rows(tables, [r.slot for r in requests])
        # in the caller's grad mode: the training forward reuses this (see Scored)
        hidden = tables.prompt.index_select(0, (prompt_first + prompt).view(-1))  # [R * N, T, V]
        with torch.no_grad():  # rollouts are flattened to R * N rows: fewer, larger ops in the token loop
            hidden_loop, bigram = hidden.detach(), tables.bigram.detach()
            if temperature != 1.0:  # x / 1.0 is x: skip the op
                hidden_loop, bigram = hidden_loop / temperature, bigram / temperature
            bigram_rows, start_rows, start = self._rollout_rows(tables, [r.slot for r in requests], n)
            # inverse-CDF sampling: one uniform u per token (Gumbel-max needs V of them, and drawing them was the
            # dearest part of a tick); the token is the first id whose cumulative probability exceeds u
            if not greedy:
                uniform = self._per_stream(requests, n, 1, lambda gen, rows: torch.rand(
                    (length, rows, 1), generator=gen)).unbind(0)
            steps, logits = [start], []  # the token before position 0: the start token
            for t, hidden_t in enumerate(hidden_loop.unbind(1)):
                logits.append(hidden_t + bigram.index_select(0, bigram_rows + steps[-1] if t else start_rows))
                if greedy:
                    steps.append(logits[-1].argmax(-1))
                else:  # u scaled by the row's total: float rounding never runs past the last id with mass
                    cdf = logits[-1].softmax(-1).cumsum_(-1)
                    steps.append(torch.searchsorted(cdf, uniform[t] * cdf[:, -1:], right=True).view(-1))
            sequence = torch.stack(steps, -1).view(n_rows, n, length + 1)  # the start token, then the answer
            tokens, prev = sequence[..., 1:], sequence[..., :-1]
            if not greedy and int(tokens.max()) >= v:  # a NaN cdf sends u past the last id
                raise NonFiniteError(f"the sampling probabilities of slot(s) {sorted({r.slot for r in requests})} "
                                     f"are NaN (finite weights so large that their logits overflow)")
        logp = self._logprobs(hidden.view(*tokens.shape, v), tables.bigram, bigram_first, prev, temperature)
        # π_old: at τ = 1 the loop's logits are the scored ones (and the training forward's token log-probs are
        # these very numbers); else h/τ + U/τ rounds unlike (h + U)/τ
        token = logp.gather(-1, tokens[..., None]).squeeze(-1) if temperature == 1.0 else None
        scored = Scored(tables, logp, token)
        with torch.no_grad():
            logps = (token.detach() if token is not None else torch.stack(logits, 1).view(*tokens.shape, v)
                     .log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1))
            reward, correct = self.tasks.score_prompts(prompt, tokens)
        return Batch(list(requests), domain, tokens, layout.mask, reward, correct, logps,
                     SimPayload(content, prompt, prev, temperature, scored))

    def _per_stream(self, requests: list[Request], per_request: int, dim: int,
                    draw: Callable[[torch.Generator, int], torch.Tensor]) -> torch.Tensor:
        """Random draws of a call, `per_request` rows each along `dim`, in request order: draw(generator, rows)
        makes the rows of each stream's requests from that stream (see copd_lab.streams), so a method's
        rollouts do not depend on the other methods' requests beside it."""
        counts, order = self._stream_plan(tuple(r.stream for r in requests), per_request)
        parts = [draw(self.streams(name), count * per_request) for name, count in counts]
        drawn = parts[0] if len(parts) == 1 else torch.cat(parts, dim)
        return drawn if order is None else drawn.index_select(dim, order)

    def _stream_plan(self, streams: tuple[str, ...], per_request: int) -> tuple[list[tuple[str, int]],
                                                                                   torch.Tensor | None]:
        """(stream, its request count) in order of first use, and where each request's rows are in the
        draws grouped by stream (None: already in request order, as when a method's requests are adjacent)."""
        key = (streams, per_request)
        if key not in self._plans:
            names = list(dict.fromkeys(streams))
            grouped = [i for name in names for i, s in enumerate(streams) if s == name]
            order = None
            if grouped != sorted(grouped):
                position = torch.tensor(grouped).argsort()  # request i's place among the grouped draws
                order = (position[:, None] * per_request + torch.arange(per_request)).view(-1)
            self._plans[key] = [(name, streams.count(name)) for name in names], order
        return self._plans[key]

    def _first_rows(self, tables: LogitTables, slots: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """[R, 1] first row of each request's slot in the tables' prompt and bigram tables (cached: a tick's
        requests and tables come back every tick)."""
        key = (tuple(tables.slots), tuple(slots))
        if key not in self._first:
            where = torch.tensor([tables.slots[s] for s in slots])[:, None]
            self._first[key] = where * self.n_prompts, where * (self.vocab_size + 1)
        return self._first[key]

    def _rollout_rows(self, tables: LogitTables, slots: list[int], n: int) -> tuple[torch.Tensor, ...]:
        """[R * N] per rollout: its slot's first bigram row, the row of the start token, and the start token V
        (cached, like _first_rows: they are the same every tick)."""
        key = (tuple(tables.slots), tuple(slots), n)
        if key not in self._first:
            bigram_rows = self._first_rows(tables, slots)[1].expand(len(slots), n).reshape(-1)
            self._first[key] = bigram_rows, bigram_rows + self.vocab_size, torch.full_like(bigram_rows, self.vocab_size)
        return self._first[key]

    def _logprobs(self, hidden: torch.Tensor, bigram: torch.Tensor, bigram_first: torch.Tensor, prev: torch.Tensor,
                  temperature: float) -> torch.Tensor:
        """[R, N, T, V] log-probs from the rollouts' prompt logits `hidden` [R, N, T, V] and the bigram rows of
        their previous tokens prev [R, N, T], request r's slot starting at row bigram_first[r] of `bigram`."""
        rows = (bigram_first[:, :, None] + prev).view(-1)
        logits = hidden + bigram.index_select(0, rows).view(hidden.shape)
        return (logits if temperature == 1.0 else logits / temperature).log_softmax(-1)

    def full_logprobs(self, batch: Batch, slots: list[int], grad: bool) -> torch.Tensor:
        return self._logprobs_of(batch, slots, grad, tokens=False)

    def exact_accuracy(self, requests: list[Request]) -> torch.Tensor:
        """[R] expected accuracy of slot r.slot on every eval prompt of domain r.domains[0], from its probabilities:
        an answer is right when all T tokens are right in one pattern, and a pattern's right sequence is one
        path, so P(right) = Σ_m Π_t p(m·Q + a_t | the path's previous token): M paths per prompt, no sampling."""
        with torch.no_grad():
            slots = [r.slot for r in requests]
            tables = self._tables(slots)
            prompt_first, bigram_first = self._first_rows(tables, slots)  # [R, 1] each
            n, s, v, t, m = len(requests), self.cfg.prompts_per_domain, self.vocab_size, self.cfg.answer_len, \
                self.cfg.patterns
            domain = torch.tensor([r.domains[0] for r in requests])
            prompt = domain[:, None] * s + torch.arange(s)  # [R, S] every eval prompt of the domain
            paths = self.tasks.answer_tokens.flatten(0, 1)[prompt].view(n, s * m, t)  # the right sequences
            hidden = tables.prompt.detach().index_select(0, (prompt_first + prompt).view(-1))  # [R * S, T, V]
            hidden = hidden.view(n, s, 1, t, v).expand(-1, -1, m, -1, -1).reshape(n, s * m, t, v)
            prev = torch.cat([torch.full_like(paths[..., :1], v), paths[..., :-1]], -1)  # the start token, then
            logp = self._logprobs(hidden, tables.bigram.detach(), bigram_first, prev, 1.0)  # τ = 1: the policy itself
            right = logp.gather(-1, paths[..., None]).squeeze(-1).sum(-1).exp().view(n, s, m)
            return right.sum(-1).mean(-1)

    def pair_logprobs(self, batch: Batch, rows: list[int], full: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # every row reads its slot's tables with the same ops whatever the other rows of a call, so the students'
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
        when they are still current (see Scored), else scored from the tables."""
        payload, scored = batch.payload, batch.payload.scored

        def pick(logp: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
            if not tokens:
                return logp
            chosen = batch.tokens if rows is None else batch.tokens[rows]
            return logp.gather(-1, chosen[..., None]).squeeze(-1)

        if self._current(scored, batch, slots, grad):
            logp = pick(scored.logp)
        elif 2 * slots.count(-1) <= len(slots):  # rows that need no score (slot -1) get their sampler's
            slots = [s if s >= 0 else r.slot for s, r in zip(slots, batch.requests)]
            logp = pick(self._score(slots, payload.prompt, payload.prev, payload.temperature, grad))
        else:  # mostly unneeded rows (a tick's teacher scoring with few OPD rows): score the others, zeros here
            logp = torch.zeros(*batch.tokens.shape, *(() if tokens else (self.vocab_size,)))
            needed = [i for i, s in enumerate(slots) if s >= 0]
            if needed:
                index = torch.tensor(needed)
                logp = logp.index_copy(0, index, pick(self._score([slots[i] for i in needed], payload.prompt[index],
                                                                  payload.prev[index], payload.temperature, grad),
                                                      index))
        return self._handed(logp, grad)

    def _current(self, scored: Scored | None, batch: Batch, slots: list[int], grad: bool) -> bool:
        """Whether the sampler's own scores answer this call: same slots, tables still current, graph if asked."""
        return (scored is not None and scored.tables is self._cache and (scored.logp.requires_grad or not grad)
                and slots == [r.slot for r in batch.requests])

    def _handed(self, logp: torch.Tensor, grad: bool) -> torch.Tensor:
        if grad:  # the caller's backward frees the tables' graph: later callers get fresh tables
            self._graded, self._cache = self._cache, None
            return logp
        return logp.detach()

    def _score(self, slots: list[int], prompt: torch.Tensor, prev: torch.Tensor, temperature: float,
               grad: bool) -> torch.Tensor:
        """[R, N, T, V] log-probs under slots[r] of rollouts with prompts prompt [R, N] and previous tokens prev."""
        tables = self._tables(slots)
        prompt_first, bigram_first = self._first_rows(tables, slots)
        table, bigram = (tables.prompt, tables.bigram) if grad else (tables.prompt.detach(), tables.bigram.detach())
        hidden = table.index_select(0, (prompt_first + prompt).view(-1)).view(*prev.shape, self.vocab_size)
        return self._logprobs(hidden, bigram, bigram_first, prev, temperature)


def _rows(slots: list[int]) -> slice | torch.Tensor:
    """The rows of these slots in a [slots, P] tensor: a slice (a view: no gather, and a cheap backward)
    when the distinct slots are contiguous, as a tick's training branches usually are; else an index."""
    unique = sorted(set(slots))
    if unique[-1] - unique[0] + 1 == len(unique):
        return slice(unique[0], unique[-1] + 1)
    return torch.tensor(unique)
