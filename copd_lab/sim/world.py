"""The simulator world: every slot's tiny policy stacked in one tensor, so a tick is a few batched ops.

The policy is a small autoregressive network over the task's tokens: for prompt (d, s) at position t
after token y_{t-1}, logits = hardtanh(E_content[s, t] + E_domain[d]) W + b + U[y_{t-1}]. The hidden
layer (width = SimConfig.hidden) is the capacity that domains share; the bigram term U lets a response
keep the behaviour pattern it started with. Because the hidden part does not depend on earlier tokens,
a whole rollout's hidden logits are one batched matmul and sampling only adds U row by row.
All slots' weights live in one flat tensor [slots, P]; Adam runs on it with a mask so only the slots
that trained this tick move, each with its own step count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from copd_lab.config import MergeConfig, SimConfig
from copd_lab.merge import merge_state_dicts
from copd_lab.policy import Batch, Request
from copd_lab.sim.tasks import SimTasks


@dataclass
class SimPayload:
    """What re-scoring needs beyond the tokens: the prompts' contents and the temperature."""

    content: torch.Tensor  # [R, N]
    temperature: float

    def take(self, rows: list[int]) -> SimPayload:
        return SimPayload(self.content[torch.tensor(rows, dtype=torch.long)], self.temperature)


class SimWorld:
    """A World (see copd_lab.policy) of toy policies on SimTasks."""

    betas, eps = (0.9, 0.999), 1e-8

    def __init__(self, cfg: SimConfig, domains: tuple[str, ...], lr: float):
        self.cfg, self.domains, self.lr = cfg, tuple(domains), lr
        self.tasks = SimTasks.build(cfg, len(domains), cfg.task_seed)
        s, d, t, v, h = cfg.prompts_per_domain, len(domains), cfg.answer_len, self.tasks.vocab_size, cfg.hidden
        self.vocab_size = v
        self.shapes = {"content": (s, t, h), "domain": (d, h), "out_weight": (h, v), "out_bias": (v,),
                       "bigram": (v + 1, v)}
        self.offsets, total = {}, 0
        for name, shape in self.shapes.items():
            size = torch.Size(shape).numel()
            self.offsets[name] = (total, total + size)
            total += size
        self.n_params = total
        self._patterns: dict[tuple, torch.Tensor] = {}

    # ---------------------------------------------------------------- slots and optimizer

    def reset(self, n_slots: int, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        base = torch.randn(self.n_params, generator=self.gen) * self.cfg.init_scale
        self.flat = base.repeat(n_slots, 1).requires_grad_(True)
        self.m = torch.zeros_like(self.flat, requires_grad=False)
        self.v = torch.zeros_like(self.m)
        self.t = torch.zeros(n_slots, 1)

    def copy(self, src: int, dst: int) -> None:
        with torch.no_grad():
            self.flat[dst] = self.flat[src]
            self.m[dst], self.v[dst], self.t[dst] = 0.0, 0.0, 0.0

    def _named(self, row: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: row[a:b].view(self.shapes[n]) for n, (a, b) in self.offsets.items()}

    def merge(self, sources: list[int], dst: int, spec: MergeConfig) -> None:
        with torch.no_grad():
            experts = [self._named(self.flat[s].detach()) for s in sources]
            merged = merge_state_dicts(experts, self._named(self.flat[0].detach()), spec.method,
                                       list(spec.weights) or None, spec.density, spec.scale)
            self.flat[dst] = torch.cat([merged[n].reshape(-1) for n in self.shapes])
            self.m[dst], self.v[dst], self.t[dst] = 0.0, 0.0, 0.0

    def step(self, loss: torch.Tensor, slots: list[int]) -> None:
        """One Adam step on the slots that trained; the others keep weights and moments untouched."""
        loss.backward()
        with torch.no_grad():
            rows = torch.tensor(sorted(set(slots)))
            g, (b1, b2) = self.flat.grad[rows], self.betas
            m = self.m[rows].lerp_(g, 1 - b1)
            v = self.v[rows].mul_(b2).addcmul_(g, g, value=1 - b2)
            t = self.t[rows] + 1
            update = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt_() + self.eps)
            self.flat.index_add_(0, rows, update, alpha=-self.lr)
            self.m[rows], self.v[rows], self.t[rows] = m, v, t
        self.flat.grad = None

    def flat_weights(self, slots: list[int]) -> torch.Tensor:
        return self.flat.detach()[slots]

    def flat_grads(self, loss: torch.Tensor, slots: list[int]) -> torch.Tensor:
        (grad,) = torch.autograd.grad(loss, self.flat, retain_graph=True)
        return grad[slots]

    def state_dict(self) -> dict:
        return {"flat": self.flat.detach().clone(), "m": self.m.clone(), "v": self.v.clone(),
                "t": self.t.clone(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.flat = state["flat"].clone().requires_grad_(True)
        self.m, self.v, self.t = state["m"].clone(), state["v"].clone(), state["t"].clone()
        self.gen = torch.Generator()
        self.gen.set_state(state["gen"])

    # ---------------------------------------------------------------- the policy

    def _logit_tables(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt logits [k, D, S, T, V] and bigram [k, V+1, V] of the slots in `rows` (a [k, P] view).

        The hidden part of the policy depends only on (d, s, t), so one small batched matmul per weight
        version serves every rollout of a tick: sampling, teacher scoring and the training forward.
        """
        n = rows.shape[0]
        sizes = [b - a for a, b in self.offsets.values()]  # split: its backward is one cat
        p = {name: part.view(n, *self.shapes[name]) for name, part in zip(self.shapes, rows.split(sizes, 1))}
        pre = p["content"][:, None] + p["domain"][:, :, None, None]  # [k, D, S, T, H]
        d, s, t, h = pre.shape[1:]
        hidden = torch.nn.functional.hardtanh(pre).view(n, d * s * t, h)  # tanh is 3x slower on CPU
        logits = torch.baddbmm(p["out_bias"][:, None], hidden, p["out_weight"]).view(n, d, s, t, -1)
        return logits, p["bigram"]

    def _tables(self, slots: list[int], grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The tables of the distinct slots asked for, and each slot's row in them (work scales with the
        slots in use, not with all the slots of the run)."""
        unique = sorted(set(slots))
        where = {s: i for i, s in enumerate(unique)}
        flat = self.flat if grad else self.flat.detach()
        return (*self._logit_tables(flat[unique]), torch.tensor([where[s] for s in slots]))

    def _prompt_layout(self, requests: list[Request], prompts: int, group: int, every: bool) -> torch.Tensor:
        """[R, N] domain of each rollout: pooled domains split evenly over a request's prompts."""
        key = (tuple(r.domains for r in requests), prompts, group, every)
        if key not in self._patterns:
            s = self.cfg.prompts_per_domain
            rows = []
            for r in requests:
                if every:
                    doms = [d for d in r.domains for _ in range(s)]
                else:
                    doms = [r.domains[i % len(r.domains)] for i in range(prompts)]
                rows.append(torch.tensor(doms).repeat_interleave(group))
            self._patterns[key] = torch.stack(rows)
        return self._patterns[key]

    def sample(self, requests: list[Request], prompts: int, group: int, temperature: float,
               greedy: bool = False, every_prompt: bool = False) -> Batch:
        domain = self._prompt_layout(requests, prompts, group, every_prompt)
        n_rows, n = domain.shape
        if every_prompt:
            per = self.cfg.prompts_per_domain
            content = torch.arange(per).repeat_interleave(group).repeat(n // (per * group))
            content = content.expand(n_rows, n)
        else:
            content = torch.randint(self.cfg.prompts_per_domain, (n_rows, prompts), generator=self.gen)
            content = content.repeat_interleave(group, dim=1)
        v = self.vocab_size
        with torch.no_grad():
            table, bigram, index = self._tables([r.slot for r in requests], grad=False)
            hidden = table[index[:, None], domain, content]  # [R, N, T, V]
            bigram = bigram[index]  # [R, V+1, V]
            rows = torch.arange(n_rows)[:, None]
            prev = torch.full((n_rows, n), v, dtype=torch.long)
            if temperature != 1.0:
                hidden = hidden / temperature
            # Gumbel-max sampling: argmax(logits/τ + g) is a draw from softmax(logits/τ)
            shape = (self.cfg.answer_len, n_rows, n, v)
            noise = torch.zeros(shape) if greedy else -torch.rand(shape, generator=self.gen).log_().neg_().log_()
            tokens, logits = [], []
            for t in range(self.cfg.answer_len):
                step_logits = hidden[:, :, t] + bigram[rows, prev] / temperature
                prev = (step_logits + noise[t]).argmax(-1)
                tokens.append(prev)
                logits.append(step_logits)
            tokens = torch.stack(tokens, -1)
            logps = torch.stack(logits, 2).log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
            reward, correct = self.tasks.score(domain, content, tokens)
        return Batch(list(requests), domain, tokens, torch.ones(tokens.shape), reward, correct, logps,
                     SimPayload(content, temperature))

    def full_logprobs(self, batch: Batch, slots: list[int], grad: bool) -> torch.Tensor:
        table, bigram, index = self._tables([max(s, 0) for s in slots], grad)
        index = index[:, None, None]
        v = self.vocab_size
        prev = torch.cat([torch.full_like(batch.tokens[..., :1], v), batch.tokens[..., :-1]], -1)
        logits = table[index[..., 0], batch.domain, batch.payload.content] + bigram[index, prev]
        temperature = batch.payload.temperature
        return (logits if temperature == 1.0 else logits / temperature).log_softmax(-1)

    def token_logprobs(self, batch: Batch, slots: list[int], grad: bool) -> torch.Tensor:
        return self.full_logprobs(batch, slots, grad).gather(-1, batch.tokens[..., None]).squeeze(-1)
