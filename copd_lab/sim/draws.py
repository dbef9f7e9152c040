"""The random draws of a simulator sample call, from its requests' streams (copd_lab.streams).

Drawn apart from the sampling itself, so that a sharded world (copd_lab.distributed.sharded) draws a call once and
hands each shard its requests' share (`SimDraws.take`): a request then samples what it samples in one world. A
stream's rows are drawn in one call per stream, in order of the stream's first request, and put back in request
order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from copd_lab.config import SimConfig
from copd_lab.streams import Streams
from copd_lab.world import Request


@dataclass(frozen=True)
class SimDraws:
    """The random draws of one sample call (SimWorld.draw): prompts [R, P] (None: every eval prompt, in order),
    uniforms [T, R * N, 1] (None: greedy), N rollouts per request, and each prompt's domain [R, P] (None: no request
    pools domains; a pooled prompt's domain is drawn by the request's shares)."""

    content: torch.Tensor | None
    uniform: torch.Tensor | None
    n: int
    domain: torch.Tensor | None = None

    def take(self, rows: list[int]) -> SimDraws:
        """The draws of these request rows, as a call of those requests alone would use them."""
        index = torch.tensor(rows, dtype=torch.long)
        uniform = None
        if self.uniform is not None:
            cols = (index[:, None] * self.n + torch.arange(self.n)).view(-1)
            uniform = self.uniform.index_select(1, cols)
        return SimDraws(None if self.content is None else self.content[index], uniform, self.n,
                        None if self.domain is None else self.domain[index])


class CallDraws:
    """Draws the prompts and uniforms of sample calls; the stream plans of the request shapes seen are cached."""

    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self._plans: dict[tuple, tuple[list[tuple[str, int]], torch.Tensor | None]] = {}
        self._pools: dict[tuple, tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def draw(self, streams: Streams, requests: list[Request], prompts: int, group: int, greedy: bool = False,
             every_prompt: bool = False) -> SimDraws:
        """A call's prompts (unless every eval prompt is visited) and one uniform per token (unless greedy)."""
        cfg = self.cfg
        n = (cfg.eval_prompts if every_prompt and not 0 < prompts < cfg.eval_prompts else prompts) * group
        if every_prompt:
            n *= len(requests[0].domains)
        content = None if every_prompt else self.per_stream(streams, requests, 1, 0, lambda gen, rows: torch.randint(
            cfg.train_prompts, (rows, prompts), generator=gen))
        domain = None if every_prompt else self.pooled_domains(streams, requests, prompts)
        uniform = None if greedy else self.per_stream(streams, requests, n, 1, lambda gen, rows: torch.rand(
            (cfg.answer_len, rows, 1), generator=gen))
        return SimDraws(content, uniform, n, domain)

    def pooled_domains(self, streams: Streams, requests: list[Request], prompts: int) -> torch.Tensor | None:
        """[R, P] each prompt's domain when a request pools several (None when none does): a pooled prompt's domain
        is drawn by the request's shares from its stream; a one-domain request draws nothing (its rows are its
        domain), so its rollouts are those of a call without the pooled requests."""
        key = (tuple((r.domains, r.shares) for r in requests), prompts)
        if key not in self._pools:
            pooled = [i for i, r in enumerate(requests) if len(r.domains) > 1]
            width = max((len(requests[i].domains) for i in pooled), default=1)
            # per pooled request: its cumulative shares (padded with 2: never crossed) and its domains
            edges = torch.full((len(pooled), width), 2.0, dtype=torch.float64)
            table = torch.zeros(len(pooled), width, dtype=torch.long)
            for row, i in enumerate(pooled):
                k = len(requests[i].domains)
                edges[row, :k - 1] = requests[i].domain_probs().cumsum(0)[:-1]
                table[row, :k] = torch.tensor(requests[i].domains)
            fixed = torch.tensor([r.domains[0] for r in requests])[:, None].repeat(1, prompts)
            self._pools[key] = torch.tensor(pooled) if pooled else None, edges, table, fixed
        pooled, edges, table, fixed = self._pools[key]
        if pooled is None:
            return None
        uniform = self.per_stream(streams, [requests[i] for i in pooled.tolist()], 1, 0, lambda gen, rows: torch.rand(
            (rows, prompts), generator=gen, dtype=torch.float64))
        pick = (uniform[..., None] >= edges[:, None, :]).sum(-1)  # [pooled, P]: the first domain whose edge is above u
        return fixed.index_copy(0, pooled, table.gather(1, pick))

    def per_stream(self, streams: Streams, requests: list[Request], per_request: int, dim: int,
                    draw: Callable[[torch.Generator, int], torch.Tensor]) -> torch.Tensor:
        """Random draws of a call, `per_request` rows each along `dim`, in request order: draw(generator, rows)
        makes the rows of each stream's requests from that stream (see copd_lab.streams), so a method's
        rollouts do not depend on the other methods' requests beside it."""
        counts, order = self._stream_plan(tuple(r.stream for r in requests), per_request)
        parts = [draw(streams(name), count * per_request) for name, count in counts]
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
