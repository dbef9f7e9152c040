"""One expert's part of a sharded world: an in-process world whose owned slots are authoritative.

A `Shard` runs in a Ray actor (copd_lab.distributed.ray_cluster) or in the caller's process (tests, benchmarks). It
holds a whole world (the simulator's rows, or a VLM with its adapters or full copies) of which only the
slots of its expert are trained and read; other slots serve as scratch space when a merge gathers other
experts' weights. It keeps the batches it sampled, so the training forward and the student's side of
teacher scoring reuse what sampling computed, and the graph of its last log-probs asked with grad, so
the driver's gradient of the loss w.r.t. those log-probs finishes the backward here (the chain rule:
the same gradients as one process). Everything crosses the boundary as numpy arrays (`to_wire`), which
Ray moves through its object store without pickling torch tensors.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Callable

import numpy as np
import torch

from copd_lab.world import Batch, World


def to_wire(obj):
    """obj with every torch tensor replaced by a numpy array (dataclasses, dicts, lists and tuples walked)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: to_wire(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_wire(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: to_wire(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                                           if f.init})
    return obj


def from_wire(obj):
    """to_wire undone: numpy arrays become torch tensors (copied where Ray handed a read-only buffer)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj if obj.flags.writeable else obj.copy())
    if isinstance(obj, dict):
        return {k: from_wire(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_wire(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: from_wire(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                                           if f.init})
    return obj


def wire_bytes(obj) -> int:
    """Bytes of the arrays in a wire object (what moves between processes, less the small Python parts)."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(wire_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(wire_bytes(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(wire_bytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


class Shard:
    """An expert's world, called through wire objects (see the module docstring)."""

    def __init__(self, name: str, build_world: Callable[[], World], threads: int = 1):
        """build_world: makes this shard's local world (copd_lab.local_world.world_from_dict with the run's config,
        its placement engine set to local: a picklable partial, so a Ray actor builds it in its own process)."""
        torch.set_num_threads(threads)
        self.name = name
        self.world = build_world()
        self.held: dict[int, tuple[Batch, list]] = {}  # batch id -> (batch, its rows as export_payload gives them)
        self.graph: tuple[int, torch.Tensor] | None = None  # (key, log-probs with their graph) of the last grad call

    def info(self) -> dict:
        w = self.world
        return {"domains": w.domains, "max_new_tokens": w.max_new_tokens, "pid": os.getpid(), "pad": w.pad_id,
                "capabilities": sorted(c.__name__ for c in w.capabilities), "lr_setting": w.lr_setting,
                "name": self.name}

    def do(self, method: str, *args):
        """A World method that needs nothing of the shard's own: copy, merge, non_finite, flat_weights, ..."""
        if method == "reset":
            self.held.clear()
            self.graph = None
        return to_wire(getattr(self.world, method)(*from_wire(args)))

    def rng_state(self):
        """The state of the world's own generator (the VLM's LoRA A_0 and DARE seeds), or None."""
        return to_wire(self.world.generator_state())

    def set_rng_state(self, state) -> None:
        self.world.set_generator_state(from_wire(state))

    def sample(self, batch_id: int, requests: list, draws, args: tuple, grad: bool) -> dict:
        """Sample these requests with the given draws; keep the batch under batch_id; the rollouts as wire arrays."""
        with torch.set_grad_enabled(grad):
            batch = self.world.sample(requests, *args, draws=from_wire(draws))
        rows = self.world.export_payload(batch.payload)
        self.held[batch_id] = (batch, rows)
        return to_wire({"tokens": batch.tokens, "mask": batch.mask, "rewards": batch.rewards, "correct": batch.correct,
                        "logprobs": batch.sample_logprobs, "domain": batch.domain, "rows": rows})

    def release(self, batch_ids: list[int]) -> None:
        for batch_id in batch_ids:
            self.held.pop(batch_id, None)

    def score(self, items: list[tuple], slots: list[int], grad: bool, full: bool, key: int):
        """Log-probs of rows under slots; an item is ("held", batch id, row) or ("row", exported row, tokens, request).

        A call of exactly one held batch's rows in order scores that batch (the sampler's own numbers, reused);
        any other mix is assembled from exported rows, as another world would see them."""
        first = items[0]
        held = self.held.get(first[1]) if first[0] == "held" else None
        if held is not None and [i[:2] for i in items] == [("held", first[1])] * len(items) \
                and [i[2] for i in items] == list(range(len(held[0].requests))):
            batch = held[0]
        else:
            batch = self._assemble(items)
        with torch.set_grad_enabled(grad):
            score = self.world.full_logprobs if full else self.world.token_logprobs
            out = score(batch, slots, grad=grad)
        if grad:
            self.graph = (key, out)
        return to_wire(out.detach())

    def _assemble(self, items: list[tuple]) -> Batch:
        rows, tokens, requests = [], [], []
        for item in items:
            if item[0] == "held":
                batch, exported = self.held[item[1]]
                rows.append(exported[item[2]])
                tokens.append(batch.tokens[item[2]])
                requests.append(batch.requests[item[2]])
            else:
                rows.append(from_wire(item[1]))
                tokens.append(from_wire(item[2]))
                requests.append(item[3])
        length = max(t.shape[-1] for t in tokens)
        pad = self.world.pad_id
        tokens = torch.stack([torch.nn.functional.pad(t, (0, length - t.shape[-1]), value=pad) for t in tokens])
        zeros = torch.zeros(tokens.shape[:2])
        return Batch(requests, zeros.long(), tokens, torch.ones(tokens.shape), zeros, zeros,
                     torch.zeros(tokens.shape), self.world.import_payload(rows))

    def _surrogate(self, key: int | None, grad) -> torch.Tensor:
        """A loss whose gradient w.r.t. the kept log-probs is `grad` (from the driver): Σ grad ⊙ log-probs."""
        if key is None or self.graph is None or self.graph[0] != key:
            return torch.zeros((), requires_grad=True)
        return (self.graph[1] * from_wire(grad)).sum()

    def step(self, key: int | None, grad, slots: list[int]) -> None:
        self.world.step(self._surrogate(key, grad), slots)
        self.graph = None

    def flat_grads(self, key: int | None, grad, slots: list[int]):
        return to_wire(self.world.flat_grads(self._surrogate(key, grad), slots))


def local_copy(obj):
    """What a wire object looks like after crossing a process boundary (the in-process transport's copy)."""
    return pickle.loads(pickle.dumps(obj, protocol=5))
