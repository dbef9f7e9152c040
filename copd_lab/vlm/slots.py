"""Where the VLM world keeps its weight slots: LoRA adapters on one base, or full copies of the text decoder.

Slot 0 is the frozen base π_0; every slot i > 0 is a branch, a teacher snapshot or a merged model, with
its own AdamW. Both kinds give the decoding code (decoding.py, engine.py) one `model` it calls with a
name per row (`adapter_names`: "slot{i}", or BASE_ADAPTER for slot 0), so the rows of all slots of a
call share one call whatever the kind. The vision tower is never a slot's: it stays frozen and shared,
so vision features are computed once per prompt for every slot.

* `LoraSlots`: peft LoRA adapters on one model (memory: about one model); merged through peft.
* `FullSlots`: full float32 copies of the language model and LM head (memory: K models, plus AdamW's
  two moments each); merged with copd_lab.math.merge.merge_state_dicts, as the paper's "simple parameter
  merging" of full models reads.
"""

from __future__ import annotations

import copy

import torch
from peft import PeftModel, get_peft_model

from copd_lab.config import MergeConfig
from copd_lab.math.merge import merge_state_dicts
from copd_lab.vlm.adapters import LoraSettings, peft_merge_args
from copd_lab.vlm.decoding import BASE_ADAPTER
from copd_lab.vlm.families import Family
from copd_lab.vlm.full_forward import SlotModel
from copd_lab.vlm.mixed_lora import use_runs_forward


def adapter_name(slot: int) -> str:
    """The name a row of `slot` carries in `adapter_names`."""
    return f"slot{slot}" if slot > 0 else BASE_ADAPTER


class Slots:
    """What both kinds share: per-slot AdamW, stepping some slots, gradients per slot.

    A kind provides `model` (the callable decoding.py runs), `params(slot)` (the slot's trainable
    tensors, slot > 0), reset/copy/merge, `flat_weights` and the state dict of its weights.
    """

    model: object
    n_slots: int = 0

    def __init__(self, lr: float, weight_decay: float):
        self.lr, self.weight_decay = lr, weight_decay
        self.optimizers: dict[int, torch.optim.Optimizer] = {}

    def params(self, slot: int) -> list[torch.Tensor]:
        raise NotImplementedError

    def _grad_size(self) -> int:
        """Length of a flat gradient row (slot 0's row is zeros of this length)."""
        return sum(p.numel() for p in self.params(1))

    def _new_optimizer(self, slot: int) -> None:
        self.optimizers[slot] = torch.optim.AdamW(self.params(slot), lr=self.lr, weight_decay=self.weight_decay)

    def step(self, loss: torch.Tensor, slots: list[int]) -> None:
        """Backward `loss` and update only `slots`; every slot's gradient is cleared after."""
        loss.backward()
        for slot in sorted(set(slots)):
            if slot > 0:
                self.optimizers[slot].step()
        for slot in range(1, self.n_slots):
            for p in self.params(slot):
                p.grad = None

    def non_finite(self, slots: list[int]) -> list[int]:
        """The slots among these whose trainable tensors hold a NaN or inf (one sync for all of them)."""
        trained = sorted({s for s in slots if s > 0})
        if not trained:
            return []
        finite = torch.stack([torch.stack([torch.isfinite(p).all() for p in self.params(s)]).all() for s in trained])
        return [] if bool(finite.all()) else [s for s, ok in zip(trained, finite.tolist()) if not ok]

    def flat_grads(self, loss: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """[len(slots), P] gradient w.r.t. each slot's trainable tensors, flat; slot 0: zeros."""
        trained = sorted({s for s in slots if s > 0})
        params = [p for s in trained for p in self.params(s)]
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        flat, start = {}, 0
        for s in trained:
            n = len(self.params(s))
            flat[s] = torch.cat([(torch.zeros_like(p) if g is None else g).float().reshape(-1).cpu()
                                 for p, g in zip(params[start:start + n], grads[start:start + n])])
            start += n
        return torch.stack([flat[s] if s > 0 else torch.zeros(self._grad_size()) for s in slots])


class LoraSlots(Slots):
    """Slot i > 0 is the peft adapter "slot{i}"; slot 0 is the base with adapters disabled.

    Every slot has its own AdamW over its adapter's A and B.
    """

    def __init__(self, model, lora: LoraSettings, lr: float, weight_decay: float):
        super().__init__(lr, weight_decay)
        self.lora = lora
        self.peft: PeftModel = get_peft_model(model, lora.peft_config(), adapter_name="slot1",
                                              autocast_adapter_dtype=True)
        self.peft.eval()  # no dropout anywhere: sampling and scoring see the same function
        use_runs_forward(self.layers())  # each slot's rows are contiguous: slices, not peft's per-row indexing
        self.model = self.peft

    def layers(self) -> list:
        return [m for m in self.peft.modules() if hasattr(m, "lora_A") and len(m.lora_A) > 0]

    def params(self, slot: int) -> list[torch.Tensor]:
        name = f"slot{slot}"
        return [p for m in self.layers() for p in (m.lora_A[name].weight, m.lora_B[name].weight)]

    def _ensure_adapter(self, slot: int, r: int, alpha: float) -> None:
        """Slot's adapter exists with rank r (merged slots have a larger rank, see adapters.py)."""
        name = f"slot{slot}"
        config = self.peft.peft_config.get(name)
        if config is not None and (config.r, config.lora_alpha) == (r, alpha):
            return
        if config is not None:
            self.peft.delete_adapter(name)
        self.peft.add_adapter(name, self.lora.peft_config(r, alpha))
        self._unfreeze()

    def _unfreeze(self) -> None:
        """Every adapter trainable: peft freezes the inactive ones when adapters are added or removed, but
        slots are chosen per row (`adapter_names`), never by activating one adapter."""
        for layer in self.layers():
            for part in (layer.lora_A, layer.lora_B):
                for module in part.values():
                    module.weight.requires_grad_(True)

    def reset(self, n_slots: int, gen: torch.Generator) -> None:
        """`gen` (the world's) draws the shared A_0 now and DARE's seeds at merges."""
        self.gen = gen
        keep = max(n_slots, 2)  # peft needs one adapter: with a single slot, slot1 exists unused
        for name in list(self.peft.peft_config):
            if int(name.removeprefix("slot")) >= keep:
                self.peft.delete_adapter(name)
        self.n_slots = keep
        # One shared A_0 for every slot (kaiming-uniform as peft's default, from the seed) and B = 0:
        # all slots equal the base and equal each other in parameter space too.
        self.init_a = []
        for layer in self.layers():
            fan_in = layer.in_features
            bound = 1.0 / fan_in**0.5
            self.init_a.append((torch.rand(self.lora.r, fan_in, generator=self.gen) * 2 - 1) * bound)
        self.optimizers = {}
        for slot in range(1, keep):
            self._ensure_adapter(slot, self.lora.r, self.lora.alpha)
            self.copy(0, slot)

    def copy(self, src: int, dst: int) -> None:
        if dst == 0:
            raise ValueError("copy(dst=0) is not allowed: slot 0 is the frozen base")
        if src == 0:
            self._ensure_adapter(dst, self.lora.r, self.lora.alpha)
            values = [v for a in self.init_a for v in (a, None)]
        else:
            self.set_slot(dst, self.get_slot(src, copy=False))
            return
        with torch.no_grad():
            for target, value in zip(self.params(dst), values):
                target.copy_(value) if value is not None else target.zero_()
        self._new_optimizer(dst)

    def get_slot(self, slot: int, copy: bool = True) -> dict:
        """Slot's rank and adapter tensors (copies on the CPU, or with copy=False the live tensors, detached)."""
        config = self.peft.peft_config[f"slot{slot}"]
        tensors = [p.detach().cpu().clone() if copy else p.detach() for p in self.params(slot)]
        return {"rank": (config.r, config.lora_alpha), "tensors": tensors}

    def set_slot(self, slot: int, weights: dict) -> None:
        self._ensure_adapter(slot, *weights["rank"])
        with torch.no_grad():
            for target, value in zip(self.params(slot), weights["tensors"]):
                target.copy_(value)
        self._new_optimizer(slot)

    def merge(self, sources: list[int], dst: int, spec: MergeConfig) -> None:
        """peft's add_weighted_adapter into a scratch adapter, then copied into dst (see adapters.py)."""
        names = [f"slot{s}" for s in sources]
        if 0 in sources:
            raise ValueError("merge of slot 0 is not supported: the base has no adapter (its ΔW is zero)")
        kwargs = peft_merge_args(spec, len(sources), sum(self.peft.peft_config[n].r for n in names))
        scratch = "merge_scratch"
        with torch.random.fork_rng(devices=[]):  # DARE's drop masks come from torch's global RNG
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=self.gen)))
            self.peft.add_weighted_adapter(names, adapter_name=scratch, **kwargs)
        config = self.peft.peft_config[scratch]
        self._ensure_adapter(dst, config.r, config.lora_alpha)
        with torch.no_grad():
            for layer in self.layers():
                for part in ("lora_A", "lora_B"):
                    getattr(layer, part)[f"slot{dst}"].weight.copy_(getattr(layer, part)[scratch].weight)
        self.peft.delete_adapter(scratch)
        self._unfreeze()
        self._new_optimizer(dst)

    def flat_weights(self, slots: list[int]) -> torch.Tensor:
        """[len(slots), P] task vectors ΔW = scaling * B A of every adapted module, flat (slot 0: zeros).

        ΔW rather than (A, B): exact for any rank (merged slots too), and zero for a fresh slot.
        """
        layers = self.layers()
        size = sum(layer.base_layer.weight.numel() for layer in layers)
        rows = []
        with torch.no_grad():
            for slot in slots:
                if slot == 0:
                    rows.append(torch.zeros(size))
                else:
                    rows.append(torch.cat([layer.get_delta_weight(f"slot{slot}").float().reshape(-1).cpu()
                                           for layer in layers]))
        return torch.stack(rows)

    def state_dict(self) -> dict:
        slots = range(1, self.n_slots)
        configs = {s: self.peft.peft_config[f"slot{s}"] for s in slots}
        return {"ranks": {s: (c.r, c.lora_alpha) for s, c in configs.items()},
                "adapters": {s: [p.detach().cpu().clone() for p in self.params(s)] for s in slots},
                "optimizers": {s: copy.deepcopy(opt.state_dict()) for s, opt in self.optimizers.items()},
                "init_a": [a.clone() for a in self.init_a]}

    def load_state_dict(self, state: dict, gen: torch.Generator) -> None:
        self.reset(len(state["adapters"]) + 1, gen)
        self.init_a = [a.clone() for a in state["init_a"]]
        for slot, (r, alpha) in state["ranks"].items():
            self._ensure_adapter(slot, r, alpha)
            with torch.no_grad():
                for p, value in zip(self.params(slot), state["adapters"][slot]):
                    p.copy_(value)
            self._new_optimizer(slot)
            self.optimizers[slot].load_state_dict(state["optimizers"][slot])


class FullSlots(Slots):
    """Slot i > 0 is a full float32 copy of the text decoder's weights (language model and LM head); slot 0
    is the base model's own weights, frozen.

    float32 copies whatever the base's dtype (bf16 on a GPU), as LoRA adapters stay float32: AdamW's small
    updates would round away in bf16. A forward casts the slot's weights to the base's dtype.
    """

    def __init__(self, model, family: Family, lr: float, weight_decay: float):
        """model: the transformers VLM; family: its inputs (to split a batch's rows by slot, full_forward.py)."""
        super().__init__(lr, weight_decay)
        self.hf_model = model.requires_grad_(False)
        text = {id(p) for part in (model.get_decoder(), model.get_output_embeddings()) for p in part.parameters()}
        # named_parameters lists a tied LM head once (as embed_tokens): functional_call ties it back
        self.base = {name: p for name, p in model.named_parameters() if id(p) in text}
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.model = SlotModel(model, self._forward_weights, family)

    def params(self, slot: int) -> list[torch.Tensor]:
        return list(self.weights[slot].values())

    def _grad_size(self) -> int:
        return sum(p.numel() for p in self.base.values())

    def _forward_weights(self, name: str) -> dict[str, torch.Tensor] | None:
        """The weights a row named `name` runs with (None: the base module as it is)."""
        if name == BASE_ADAPTER:
            return None
        dtype = self.hf_model.dtype
        return {key: value.to(dtype) for key, value in self.weights[int(name.removeprefix("slot"))].items()}

    def _values(self, slot: int) -> dict[str, torch.Tensor]:
        """Slot's weights in float32, detached (slot 0: the base's)."""
        source = self.base if slot == 0 else self.weights[slot]
        return {name: value.detach().float() for name, value in source.items()}

    def _write(self, dst: int, values: dict[str, torch.Tensor]) -> None:
        """dst's weights become `values`, with a fresh optimizer."""
        if dst == 0:
            raise ValueError("copy(dst=0) is not allowed: slot 0 is the frozen base")
        if dst not in self.weights:
            self.weights[dst] = {name: torch.empty_like(p, dtype=torch.float32).requires_grad_(True)
                                 for name, p in self.base.items()}
        with torch.no_grad():
            for name, target in self.weights[dst].items():
                target.copy_(values[name])
        self._new_optimizer(dst)

    def reset(self, n_slots: int, gen: torch.Generator) -> None:
        """`gen` (the world's) draws DARE's seeds at merges."""
        self.gen = gen
        for slot in [s for s in self.weights if s >= n_slots]:
            del self.weights[slot]
        self.n_slots = n_slots
        self.optimizers = {}
        for slot in range(1, n_slots):
            self.copy(0, slot)

    def copy(self, src: int, dst: int) -> None:
        self._write(dst, self.base if src == 0 else self.weights[src])

    def get_slot(self, slot: int) -> dict:
        return {name: value.detach().cpu().clone() for name, value in self.weights[slot].items()}

    def set_slot(self, slot: int, weights: dict) -> None:
        self._write(slot, weights)

    def merge(self, sources: list[int], dst: int, spec: MergeConfig) -> None:
        """merge_state_dicts of the sources' weights, task vectors against slot 0 (the base may be a source)."""
        seed = int(torch.randint(2**62, (1,), generator=self.gen))
        merged = merge_state_dicts([self._values(s) for s in sources], self._values(0), spec.method,
                                   list(spec.weights) or None, spec.density, spec.scale, seed)
        self._write(dst, merged)

    def flat_weights(self, slots: list[int]) -> torch.Tensor:
        """[len(slots), P] task vectors θ_slot − θ_0 of the text decoder, flat (slot 0: zeros)."""
        base = self._values(0)
        with torch.no_grad():
            return torch.stack([torch.cat([(value - base[name]).reshape(-1).cpu()
                                           for name, value in self._values(slot).items()]) for slot in slots])

    def state_dict(self) -> dict:
        return {"weights": {s: {name: value.detach().cpu().clone() for name, value in self.weights[s].items()}
                            for s in range(1, self.n_slots)},
                "optimizers": {s: copy.deepcopy(opt.state_dict()) for s, opt in self.optimizers.items()}}

    def load_state_dict(self, state: dict, gen: torch.Generator) -> None:
        self.reset(len(state["weights"]) + 1, gen)
        for slot, values in state["weights"].items():
            self._write(slot, values)
            self.optimizers[slot].load_state_dict(state["optimizers"][slot])
