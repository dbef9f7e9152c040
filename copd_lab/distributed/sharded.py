"""A World (copd_lab.world) whose slots live in shards, one per expert: the algorithm never learns it.

Every slot has one owner, the shard of its expert (copd_lab.distributed.placement.experts_of_slots: a method's
branch of that name, its frozen snapshots, and the merged model of a method whose first branch it is); slot 0, the
base, is in every shard. A call's requests go to their owners at once and their answers are gathered:

* sampling: the random draws are made by one shard from the requests' streams (`World.draw`), and each
  owner samples its requests with its share of them, so a request draws what it would in one process;
* scoring a row under a slot runs on that slot's owner; a row sampled elsewhere travels as its tokens
  and the inputs that re-score it (`export_payload`: the simulator's prompt ids, the VLM's prompt rows,
  whose vision features the teacher's own tower computes again), and the log-probs come back;
* gradients: log-probs asked with grad come back as leaf tensors; `step` and `flat_grads` backprop the
  loss to them and send each shard dL/d(log-probs), which it backprops through the graph it kept;
* copies and merges across experts move the slot's weights (`get_slot` / `set_slot`).

`transport` is how calls reach shards: Ray actors (copd_lab.distributed.ray_cluster) or shards in this process
(copd_lab.distributed.placement.LocalTransport).
`traffic` counts the bytes of arrays moved, by kind, for benchmarks/ray_overhead.py.
"""

from __future__ import annotations

import itertools
import weakref
from collections import Counter
from dataclasses import dataclass, field

import torch

from copd_lab.config import MergeConfig
from copd_lab.distributed.shard import from_wire, to_wire, wire_bytes
from copd_lab.world import Batch, ExactAccuracy, Request, TokenText


@dataclass
class ShardedPayload:
    """Where each request row of a batch lives: (shard, batch id, row in it), and its exported row."""

    refs: list[tuple[str, int, int]]
    rows: list
    anchors: list = field(default_factory=list)  # keep the shards' batches alive while this payload lives

    def take(self, rows: list[int]) -> ShardedPayload:
        return ShardedPayload([self.refs[i] for i in rows], [self.rows[i] for i in rows], self.anchors)


class ShardedWorld:
    """See the module docstring. shards: expert name -> its shard's handle (transport's to address). Its capabilities
    are its shards' exact accuracy and token text; seeds run one after another (a seed's draws are its own either
    way), and a sharded world is not itself a shard."""

    def __init__(self, transport, experts: list[str], owner: dict[int, str]):
        self.transport, self.experts, self.owner = transport, list(experts), dict(owner)
        self._released: list[tuple[str, int]] = []
        info = self._all("info")
        self.info = dict(zip(self.experts, info))
        first = info[0]
        self.domains, self.max_new_tokens, self.pad = tuple(first["domains"]), first["max_new_tokens"], first["pad"]
        self.lr_setting = first["lr_setting"]
        self.capabilities = frozenset(c for c in (ExactAccuracy, TokenText) if c.__name__ in first["capabilities"])
        self.traffic: Counter = Counter()
        self._ids = itertools.count(1)
        self._pending: dict[str, tuple[int, torch.Tensor]] = {}  # shard -> (key, leaf) of the last grad call

    # ------------------------------------------------------------------ calls

    def _call(self, calls: list[tuple[str, str, tuple]], kind: str = "") -> list:
        """Submit every (shard, method, args) at once, then gather their answers in order."""
        self._flush_released()
        futures = []
        for name, method, args in calls:
            if kind:
                self.traffic[f"{kind} out"] += wire_bytes(args)
            futures.append((name, self.transport.submit(name, method, *args)))
        out = self.transport.gather(futures)
        if kind:
            self.traffic[f"{kind} back"] += sum(wire_bytes(v) for v in out)
        return out

    def _all(self, method: str, *args) -> list:
        return self._call([(name, method, args) for name in self.experts])

    def _do(self, name: str, method: str, *args, kind: str = ""):
        return from_wire(self._call([(name, "do", (method, *to_wire(args)))], kind)[0])

    def _home(self, slot: int) -> str:
        return self.owner.get(slot, self.experts[0])

    def _flush_released(self) -> None:
        if self._released:
            by_shard: dict[str, list[int]] = {}
            for name, batch_id in self._released:
                by_shard.setdefault(name, []).append(batch_id)
            self._released = []
            for name, ids in by_shard.items():
                self.transport.submit(name, "release", ids)

    # ------------------------------------------------------------------ slots

    def reset(self, n_slots: int, seed: int) -> None:
        self._pending.clear()
        self._call([(name, "do", ("reset", n_slots, seed)) for name in self.experts])

    def copy(self, src: int, dst: int) -> None:
        if src == 0 or self._home(src) == self._home(dst):
            self._do(self._home(dst), "copy", src, dst)
        else:
            weights = self._call([(self._home(src), "do", ("get_slot", src))], "weights")[0]
            self._call([(self._home(dst), "do", ("set_slot", dst, weights))], "weights")

    def merge(self, sources: list[int], dst: int, spec: MergeConfig) -> None:
        """Gather the sources' weights where dst lives, merge there, and give every shard its generator's state."""
        home = self._home(dst)
        for src in sources:
            if src != 0 and self._home(src) != home:
                weights = self._call([(self._home(src), "do", ("get_slot", src))], "weights")[0]
                self._call([(home, "do", ("set_slot", src, weights))], "weights")
        self._do(home, "merge", sources, dst, spec)
        state = self._call([(home, "rng_state", ())])[0]
        self._call([(name, "set_rng_state", (state,)) for name in self.experts if name != home])

    def _by_home(self, slots: list[int]) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        for i, slot in enumerate(slots):
            groups.setdefault(self._home(slot), []).append(i)
        return groups

    def non_finite(self, slots: list[int]) -> list[int]:
        groups = self._by_home(slots)
        found = self._call([(name, "do", ("non_finite", [slots[i] for i in rows])) for name, rows in groups.items()])
        return sorted({s for part in found for s in part})

    def flat_weights(self, slots: list[int]) -> torch.Tensor:
        groups = self._by_home(slots)
        parts = self._call([(name, "do", ("flat_weights", [slots[i] for i in rows]))
                            for name, rows in groups.items()], "weights")
        return self._place(len(slots), groups, [from_wire(p) for p in parts])

    @staticmethod
    def _place(n: int, groups: dict[str, list[int]], parts: list[torch.Tensor]) -> torch.Tensor:
        out = torch.zeros((n, *parts[0].shape[1:]), dtype=parts[0].dtype)
        for rows, part in zip(groups.values(), parts):
            out[torch.tensor(rows)] = part
        return out

    def exact_accuracy(self, requests: list[Request], grad: bool = False, temperature: float = 1.0,
                       split: str = "eval") -> torch.Tensor:
        """ExactAccuracy, computed by each slot's owner (no gradient: the simulator's pilot runs in one process)."""
        groups = self._by_home([r.slot for r in requests])
        parts = self._call([(name, "do", ("exact_accuracy", [requests[i] for i in rows], False, temperature, split))
                            for name, rows in groups.items()])
        return self._place(len(requests), groups, [from_wire(p) for p in parts])

    def token_text(self, token: int) -> str:
        """TokenText, as the first shard's world reads the token (every shard holds the same world)."""
        return self._do(self.experts[0], "token_text", token)

    def state_dict(self) -> dict:
        return {"shards": dict(zip(self.experts, (from_wire(s) for s in self._all("do", "state_dict"))))}

    def load_state_dict(self, state: dict) -> None:
        self._call([(name, "do", ("load_state_dict", to_wire(state["shards"][name]))) for name in self.experts])

    # ------------------------------------------------------------------ rollouts

    def sample(self, requests: list[Request], prompts: int, group: int, temperature: float,
               greedy: bool = False, every_prompt: bool = False) -> Batch:
        draws = from_wire(self._call([(self.experts[0], "do", ("draw", requests, prompts, group, greedy,
                                                              every_prompt))], "draws")[0])
        groups = self._by_home([r.slot for r in requests])
        ids = {name: next(self._ids) for name in groups}
        args = (prompts, group, temperature, greedy, every_prompt)
        grad = torch.is_grad_enabled()
        parts = self._call([(name, "sample", (ids[name], [requests[i] for i in rows], to_wire(draws.take(rows)),
                                                          args, grad))
                            for name, rows in groups.items()], "rollouts")
        parts = [from_wire(p) for p in parts]
        length = max(p["tokens"].shape[-1] for p in parts)
        n = parts[0]["tokens"].shape[1]
        out = {"tokens": torch.full((len(requests), n, length), self.pad, dtype=torch.long),
               **{k: torch.zeros((len(requests), n, length)) for k in ("mask", "logprobs")},
               **{k: torch.zeros((len(requests), n)) for k in ("rewards", "correct")},
               "domain": torch.zeros((len(requests), n), dtype=torch.long)}
        refs, rows_out = [None] * len(requests), [None] * len(requests)
        for (name, rows), part in zip(groups.items(), parts):
            index = torch.tensor(rows)
            for key, value in out.items():
                value[index, ..., : part[key].shape[-1]] = part[key].to(value.dtype) if value.dim() == 3 else part[key]
            for j, i in enumerate(rows):
                refs[i], rows_out[i] = (name, ids[name], j), part["rows"][j]
        anchors = [_Anchor(self._released, name, batch_id) for name, batch_id in ids.items()]
        payload = ShardedPayload(refs, rows_out, anchors)
        return Batch(list(requests), out["domain"], out["tokens"], out["mask"], out["rewards"], out["correct"],
                     out["logprobs"], payload)

    # ------------------------------------------------------------------ scoring

    def _score(self, jobs: list[tuple[Batch, list[int]]], grad: bool, full: bool) -> list[torch.Tensor]:
        """Log-probs of each job's rows under its slots (-1: zeros), every shard's part submitted at once."""
        calls, places = [], []
        for j, (batch, slots) in enumerate(jobs):
            by_target: dict[str, list[int]] = {}
            for r, slot in enumerate(slots):
                if slot >= 0:
                    holder = batch.payload.refs[r][0]
                    by_target.setdefault(holder if slot == 0 else self._home(slot), []).append(r)
            for target, rows in by_target.items():
                items = []
                for r in rows:
                    holder, batch_id, index = batch.payload.refs[r]
                    if holder == target:
                        items.append(("held", batch_id, index))
                    else:  # the rollout travels to the scoring slot's shard
                        item = ("row", to_wire(batch.payload.rows[r]), to_wire(batch.tokens[r]), batch.requests[r])
                        self.traffic["rollouts to teachers"] += wire_bytes(item)
                        items.append(item)
                key = next(self._ids)
                calls.append((target, "score", (items, [slots[r] for r in rows], grad, full, key)))
                places.append((j, target, rows, key))
        answers = self._call(calls, "scores") if calls else []
        outs = []
        for batch, _ in jobs:
            shape = batch.tokens.shape + ((answers[0].shape[-1],) if full and answers else ())
            outs.append([torch.zeros(shape), []])
        for (j, target, rows, key), answer in zip(places, answers):
            value = from_wire(answer)
            if grad:
                value.requires_grad_(True)
                self._pending[target] = (key, value)
            outs[j][1].append((rows, value))
        results = []
        for (zeros, parts) in outs:
            out = zeros
            for rows, value in parts:
                length = value.shape[2]
                index = torch.tensor(rows)
                if length < out.shape[2]:  # a shard's rollouts pad to its own longest completion
                    value = torch.nn.functional.pad(value, (0, 0) * (value.dim() - 3) + (0, out.shape[2] - length))
                out = out.index_put((index,), value)
            results.append(out)
        return results

    def token_logprobs(self, batch: Batch, slots: list[int], grad: bool) -> torch.Tensor:
        if grad:
            self._pending.clear()
        return self._score([(batch, slots)], grad, full=False)[0]

    def full_logprobs(self, batch: Batch, slots: list[int], grad: bool) -> torch.Tensor:
        if grad:
            self._pending.clear()
        return self._score([(batch, slots)], grad, full=True)[0]

    def pair_logprobs(self, batch: Batch, rows: list[int], full: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The student on the shard that sampled, the teacher on its own shard, both at once."""
        opd = set(rows)
        # the students score every row (the sampler's own numbers, as one process reads them), kept on OPD rows
        teacher = [r.teacher if i in opd else -1 for i, r in enumerate(batch.requests)]
        with torch.no_grad():
            s, t = self._score([(batch, [r.slot for r in batch.requests]), (batch, teacher)], grad=False, full=full)
        keep = torch.tensor([i in opd for i in range(len(batch.requests))]).view(-1, *[1] * (s.dim() - 1))
        return torch.where(keep, s, 0.0), t

    # ------------------------------------------------------------------ gradients

    def _grads(self, loss: torch.Tensor, retain: bool) -> dict[str, tuple[int, torch.Tensor]]:
        """dL/d(log-probs) of each shard's last grad call."""
        names = list(self._pending)
        leaves = [self._pending[n][1] for n in names]
        grads = torch.autograd.grad(loss, leaves, retain_graph=retain, allow_unused=True) if leaves else []
        return {n: (self._pending[n][0], torch.zeros_like(leaf) if g is None else g)
                for n, leaf, g in zip(names, leaves, grads)}

    def step(self, loss: torch.Tensor, slots: list[int]) -> None:
        grads = self._grads(loss, retain=False)
        groups = self._by_home([s for s in slots if s > 0])
        trained = [s for s in slots if s > 0]
        calls = []
        for name in dict.fromkeys([*groups, *grads]):
            key, grad = grads.get(name, (None, None))
            calls.append((name, "step", (key, to_wire(grad), [trained[i] for i in groups.get(name, [])])))
        self._call(calls, "gradients")
        self._pending.clear()

    def flat_grads(self, loss: torch.Tensor, slots: list[int]) -> torch.Tensor:
        grads = self._grads(loss, retain=True)
        groups = self._by_home(slots)
        calls = []
        for name, rows in groups.items():
            key, grad = grads.get(name, (None, None))
            calls.append((name, "flat_grads", (key, to_wire(grad), [slots[i] for i in rows])))
        parts = self._call(calls, "gradients")
        return self._place(len(slots), groups, [from_wire(p) for p in parts])

    def close(self) -> None:
        self.transport.close()


class _Anchor:
    """Releases a shard's batch once no payload on the driver refers to it (sent with the next call)."""

    def __init__(self, released: list, name: str, batch_id: int):
        weakref.finalize(self, released.append, (name, batch_id))
