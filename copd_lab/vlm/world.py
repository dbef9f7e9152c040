"""The real world: a Hugging Face VLM whose slots are peft LoRA adapters on one shared base model.

Slot 0 is the base (adapters disabled); slot i > 0 is the adapter "slot{i}". Memory is one model plus
K small adapters. Every slot has its own AdamW over its adapter's A and B.

Work shared by a group's rollouts is done once per prompt: the vision tower (frozen, no adapters) runs
once per prompt when the prompts are encoded (prompts.py), and the text prompt runs once per prompt and
adapter, its KV cache copied to the group's rollouts (decoding.py), both when sampling and when scoring.
The rows of all requests of a call run in one batch whatever their slots (peft's mixed-adapter batches),
so the branches and teachers of a tick share one forward instead of one per adapter.
"""

from __future__ import annotations

import numpy as np
import torch
from peft import PeftModel, get_peft_model

from copd_lab.config import MergeConfig
from copd_lab.policy import Batch, Request
from copd_lab.tasks import TaskSuite, is_correct
from copd_lab.vlm.adapters import LoraSettings, peft_merge_args
from copd_lab.vlm.decoding import BASE_ADAPTER, completion_logits, sampling_logprobs
from copd_lab.vlm.engine import CachedEngine, RolloutEngine
from copd_lab.vlm.families import family_of
from copd_lab.vlm.processing import completion_mask, placeholder_token_ids, prepare_batch
from copd_lab.vlm.prompts import PromptSet, VLMPayload


class VLMWorld:
    """A World (see copd_lab.policy) of LoRA experts on one HF VLM (a family in copd_lab.vlm.families)
    and task suites."""

    def __init__(self, model, processor, suites: dict[str, TaskSuite], lora: LoraSettings | None = None,
                 max_new_tokens: int = 32, device: str = "cpu", lr: float = 1e-3, weight_decay: float = 0.0,
                 eval_prompts: int = 64, experts: str = "lora", engine: RolloutEngine | None = None):
        """
        model, processor: a transformers VLM and its processor (e.g. from copd_lab.vlm.model_io.load_vlm).
        suites: domain name -> TaskSuite; `domains` follows this order.
        lora: adapter settings of every expert slot (None: LoraSettings()).
        max_new_tokens: longest completion generated (32).
        device: "cpu" keeps float32; "cuda" moves the base to the GPU in bf16 (adapters stay float32).
        lr, weight_decay: AdamW of every slot's adapter (1e-3, 0.0; tiny models; ~1e-5 for 2B models).
        eval_prompts: cap on the eval prompts per domain that every_prompt uses (64; all domains use
            the same count, min over suites, so every request of an evaluation has the same N).
        experts: "lora" only; full-weight experts per slot are not implemented in this world.
        engine: the rollout engine (CachedEngine by default; see engine.py).
        """
        if experts != "lora":
            raise ValueError(f"experts = {experts!r} is not allowed: only 'lora' is implemented in VLMWorld")
        self.family = family_of(model)
        for domain, suite in suites.items():
            self.family.check_visual(suite.modality, domain)
        self.domains = tuple(suites)
        self.suites = [suites[d] for d in self.domains]
        self.lora = lora or LoraSettings()
        self.max_new_tokens, self.lr, self.weight_decay = max_new_tokens, lr, weight_decay
        self.device = torch.device(device)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.processor, self.tokenizer = processor, processor.tokenizer
        self.n_eval = min([eval_prompts] + [len(s.eval) for s in self.suites])
        gen_cfg = model.generation_config
        eos = gen_cfg.eos_token_id if gen_cfg.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos = [eos] if isinstance(eos, int) else list(eos)
        pad = gen_cfg.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.pad_token_id
        self.placeholders = placeholder_token_ids(processor)
        self._placeholder_index = torch.tensor(self.placeholders, dtype=torch.long, device=self.device)
        self.engine = engine or CachedEngine(self.placeholders, self.eos, self.pad_id)
        model = model.to(self.device, dtype).eval()
        self.hf_model = model
        self.peft: PeftModel = get_peft_model(model, self.lora.peft_config(), adapter_name="slot1",
                                              autocast_adapter_dtype=True)
        self.peft.eval()  # no dropout anywhere: sampling and scoring see the same function
        self.n_slots = 0

    # ---------------------------------------------------------------- slots and optimizers

    def _layers(self) -> list:
        return [m for m in self.peft.modules() if hasattr(m, "lora_A") and len(m.lora_A) > 0]

    def _params(self, slot: int) -> list[torch.Tensor]:
        name = f"slot{slot}"
        return [p for m in self._layers() for p in (m.lora_A[name].weight, m.lora_B[name].weight)]

    def _all_params(self) -> list[torch.Tensor]:
        return [p for s in range(1, self.n_slots) for p in self._params(s)]

    def _new_optimizer(self, slot: int) -> None:
        params = self._params(slot)
        self.optimizers[slot] = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

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
        for layer in self._layers():
            for part in (layer.lora_A, layer.lora_B):
                for module in part.values():
                    module.weight.requires_grad_(True)

    def reset(self, n_slots: int, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        keep = max(n_slots, 2)  # peft needs one adapter: with a single slot, slot1 exists unused
        for name in list(self.peft.peft_config):
            if int(name.removeprefix("slot")) >= keep:
                self.peft.delete_adapter(name)
        self.n_slots = keep
        # One shared A_0 for every slot (kaiming-uniform as peft's default, from the seed) and B = 0:
        # all slots equal the base and equal each other in parameter space too.
        self.init_a = []
        for layer in self._layers():
            fan_in = layer.in_features
            bound = 1.0 / fan_in**0.5
            self.init_a.append((torch.rand(self.lora.r, fan_in, generator=self.gen) * 2 - 1) * bound)
        self.optimizers: dict[int, torch.optim.Optimizer] = {}
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
            config = self.peft.peft_config[f"slot{src}"]
            self._ensure_adapter(dst, config.r, config.lora_alpha)
            values = [p.detach() for p in self._params(src)]
        with torch.no_grad():
            for target, value in zip(self._params(dst), values):
                target.copy_(value) if value is not None else target.zero_()
        self._new_optimizer(dst)

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
            for layer in self._layers():
                for part in ("lora_A", "lora_B"):
                    getattr(layer, part)[f"slot{dst}"].weight.copy_(getattr(layer, part)[scratch].weight)
        self.peft.delete_adapter(scratch)
        self._unfreeze()
        self._new_optimizer(dst)

    def step(self, loss: torch.Tensor, slots: list[int]) -> None:
        loss.backward()
        for slot in sorted(set(slots)):
            if slot > 0:
                self.optimizers[slot].step()
        for p in self._all_params():
            p.grad = None

    def flat_weights(self, slots: list[int]) -> torch.Tensor:
        """[len(slots), P] task vectors ΔW = scaling * B A of every adapted module, flat (slot 0: zeros).

        ΔW rather than (A, B): exact for any rank (merged slots too), and zero for a fresh slot.
        """
        layers = self._layers()
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

    def flat_grads(self, loss: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """[len(slots), P] gradient w.r.t. each slot's adapter parameters (A, B), flat; slot 0: zeros."""
        trained = sorted({s for s in slots if s > 0})
        params = [p for s in trained for p in self._params(s)]
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        flat, start = {}, 0
        for s in trained:
            n = len(self._params(s))
            flat[s] = torch.cat([(torch.zeros_like(p) if g is None else g).float().reshape(-1).cpu()
                                 for p, g in zip(params[start:start + n], grads[start:start + n])])
            start += n
        size = sum(p.numel() for p in self._params(1))
        return torch.stack([flat[s] if s > 0 else torch.zeros(size) for s in slots])

    def state_dict(self) -> dict:
        slots = range(1, self.n_slots)
        configs = {s: self.peft.peft_config[f"slot{s}"] for s in slots}
        return {"ranks": {s: (c.r, c.lora_alpha) for s, c in configs.items()},
                "adapters": {s: [p.detach().cpu().clone() for p in self._params(s)] for s in slots},
                "optimizers": {s: opt.state_dict() for s, opt in self.optimizers.items()},
                "init_a": [a.clone() for a in self.init_a], "gen": self.gen.get_state(),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.reset(len(state["adapters"]) + 1, 0)
        self.init_a = [a.clone() for a in state["init_a"]]
        for slot, (r, alpha) in state["ranks"].items():
            self._ensure_adapter(slot, r, alpha)
            with torch.no_grad():
                for p, value in zip(self._params(slot), state["adapters"][slot]):
                    p.copy_(value)
            self._new_optimizer(slot)
            self.optimizers[slot].load_state_dict(state["optimizers"][slot])
        self.gen.set_state(state["gen"])
        self.rng.bit_generator.state = state["rng"]

    # ---------------------------------------------------------------- prompts and rollouts

    def _prompt_rows(self, request: Request, prompts: int, every_prompt: bool) -> list[tuple[int, int]]:
        """(domain, row) of each distinct prompt, domain by domain; pooled domains split evenly."""
        out = []
        for j, d in enumerate(request.domains):
            if every_prompt:
                out += [(d, i) for i in range(self.n_eval)]
                continue
            count = len(range(j, prompts, len(request.domains)))
            size = len(self.suites[d].train)
            out += [(d, int(i)) for i in self.rng.choice(size, count, replace=count > size)]
        return out

    def _encode(self, domain: int, rows: list[int], split: str) -> tuple[PromptSet, list[dict]]:
        """Model inputs of these rows of one domain, with vision features and positions computed once per row."""
        suite, family = self.suites[domain], self.family
        data = getattr(suite, split)[rows]
        rows_as_dicts = [{k: data[k][i] for k in data} for i in range(len(rows))]
        batch = prepare_batch(self.processor, data["prompt"], data["images"], suite.modality).to(self.device)
        none = torch.zeros(0, dtype=torch.long, device=self.device)
        item_inputs = {name: [none] * len(rows) for names in family.item_inputs.values() for name in names}
        features = {kind: [()] * len(rows) for kind in family.pixels}
        kind = suite.modality
        if kind in family.pixels:
            with torch.no_grad():
                pooled, items = family.encode(self.hf_model, batch, kind)
            per_row = [len(im) if kind == "image" else 1 for im in data["images"]]
            starts = np.cumsum([0] + per_row)
            for name, value in items.items():
                item_inputs[name] = [value[a:b] for a, b in zip(starts[:-1], starts[1:])]
            features[kind] = [pooled[a:b] for a, b in zip(starts[:-1], starts[1:])]
        token_inputs = {name: batch[name] for name in family.token_inputs}
        positions = family.prompt_position_ids(self.hf_model, batch)
        prompt_set = PromptSet(batch["input_ids"], batch["attention_mask"], positions.movedim(-2, 0),
                               token_inputs, item_inputs, features)
        return prompt_set, rows_as_dicts

    def _adapter(self, slot: int) -> str:
        return f"slot{slot}" if slot > 0 else BASE_ADAPTER

    def sample(self, requests: list[Request], prompts: int, group: int, temperature: float,
               greedy: bool = False, every_prompt: bool = False) -> Batch:
        split = "eval" if every_prompt else "train"
        encoded, data_rows, domains = [], [], []
        for request in requests:
            layout = self._prompt_rows(request, prompts, every_prompt)
            sets = []
            for d in dict.fromkeys(dom for dom, _ in layout):
                prompt_set, rows = self._encode(d, [i for dom, i in layout if dom == d], split)
                sets.append(prompt_set)
                data_rows += [(d, row) for row in rows for _ in range(group)]
            encoded.append(PromptSet.cat(sets, self.pad_id))
            domains.append(torch.tensor([dom for dom, _ in layout]).repeat_interleave(group))
        if len({len(d) for d in domains}) > 1:
            raise ValueError(f"requests of one sample() call must have the same number of rollouts, got "
                             f"{[len(d) for d in domains]}: with every_prompt, give each request as many domains")
        payload = VLMPayload(encoded, group, temperature)
        adapters = [self._adapter(r.slot) for r, p in zip(requests, encoded) for _ in range(p.input_ids.shape[0])]
        rng_devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices), torch.no_grad():
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=self.gen)))
            ids, logprobs = self.engine.generate(self.peft, PromptSet.cat(encoded, self.pad_id),
                                                 adapters, group, temperature=temperature, greedy=greedy,
                                                 max_new_tokens=self.max_new_tokens)
        shape = (len(requests), domains[0].numel(), ids.shape[1])
        tokens = ids.cpu().view(shape)
        mask = completion_mask(tokens, self.eos).float()
        kept = [t[m.bool()] for t, m in zip(tokens.flatten(0, 1), mask.flatten(0, 1))]
        texts = self.tokenizer.batch_decode(kept, skip_special_tokens=True)
        rewards = [self.suites[d].verifier(text, row) for text, (d, row) in zip(texts, data_rows)]
        correct = [float(is_correct(text, row)) for text, (_, row) in zip(texts, data_rows)]
        return Batch(list(requests), torch.stack(domains), tokens, mask, torch.tensor(rewards).view(shape[:2]),
                     torch.tensor(correct).view(shape[:2]), logprobs.cpu().view(shape) * mask, payload)

    # ---------------------------------------------------------------- scoring

    def _score(self, batch: Batch, slots: list[int], grad: bool, full: bool) -> torch.Tensor:
        """Log-probs along the rollouts under slots[r]: all rows in one forward, each prompt run once."""
        r_, n_, t_ = batch.tokens.shape
        rows = [i for i, s in enumerate(slots) if s >= 0]
        vocab = self.hf_model.get_output_embeddings().out_features
        out = torch.zeros((r_, n_, t_) + ((vocab,) if full else ()))
        if not rows:  # every slot was -1
            return out
        payload = batch.payload
        prompts = [payload.prompts[i] for i in rows]
        adapters = [self._adapter(slots[i]) for i, p in zip(rows, prompts) for _ in range(p.input_ids.shape[0])]
        completion = batch.tokens[rows].flatten(0, 1).to(self.device)
        with torch.set_grad_enabled(grad):
            logits = completion_logits(self.peft, PromptSet.cat(prompts, self.pad_id), adapters,
                                       payload.group, completion)
            logp = sampling_logprobs(logits, self._placeholder_index, payload.temperature)
            if not full:
                logp = logp.gather(-1, completion[..., None]).squeeze(-1)
        # batch tensors live on the CPU (the trainer builds its own tensors there)
        return out.index_put((torch.tensor(rows),), logp.view(len(rows), n_, t_, *logp.shape[2:]).cpu())

    def token_logprobs(self, batch: Batch, slots: list[int], grad: bool) -> torch.Tensor:
        return self._score(batch, slots, grad, full=False)

    def full_logprobs(self, batch: Batch, slots: list[int], grad: bool) -> torch.Tensor:
        return self._score(batch, slots, grad, full=True)
