"""The real world: a Hugging Face VLM whose slots are LoRA adapters on one shared base, or full copies.

The slots live in slots.py (`LoraSlots`: peft adapters, about one model of memory; `FullSlots`: full
copies of the text decoder, K models); this module holds what both share: prompts, sampling, scoring
and rewards.

Work shared by a group's rollouts is done once per prompt: the vision tower (frozen, in no slot) runs
once per prompt when the prompts are encoded (prompts.py), and the text prompt runs once per prompt and
slot, its KV cache copied to the group's rollouts (decoding.py), both when sampling and when scoring.
The rows of all requests of a call go to the slots' model in one call whatever their slots (peft's
mixed-adapter batches; for full copies, one forward per slot inside that call, full_forward.py).
"""

from __future__ import annotations

import numpy as np
import torch

from copd_lab.config import VLM_EXPERTS, MergeConfig
from copd_lab.streams import Streams
from copd_lab.tasks import TaskSuite, is_correct
from copd_lab.vlm.adapters import LoraSettings
from copd_lab.vlm.decoding import completion_logits, sampling_logprobs
from copd_lab.vlm.engine import ENGINES, HFGenerateEngine, RolloutEngine
from copd_lab.vlm.families import family_of
from copd_lab.vlm.processing import completion_mask, placeholder_token_ids, prepare_batch
from copd_lab.vlm.prompts import PromptSet, VLMPayload
from copd_lab.vlm.slots import FullSlots, LoraSlots, adapter_name
from copd_lab.world import Batch, Request, ShardableSlots


class RequestDraws(list):
    """A sample call's draws, per request: its prompts' (domain, row) layout and the seed of its sampling noise."""

    def take(self, rows: list[int]) -> RequestDraws:
        return RequestDraws(self[i] for i in rows)


class VLMWorld:
    """A World (see copd_lab.world) of LoRA or full-weight experts on one HF VLM (a family in
    copd_lab.vlm.families) and task suites."""

    capabilities = frozenset({ShardableSlots})  # a shard of a sharded world; seeds run one after another

    def __init__(self, model, processor, suites: dict[str, TaskSuite], lora: LoraSettings | None = None,
                 max_new_tokens: int = 32, device: str = "cpu", lr: float = 1e-3, weight_decay: float = 0.0,
                 eval_prompts: int = 64, experts: str = "lora", engine: str | RolloutEngine = "cached"):
        """
        model, processor: a transformers VLM and its processor (e.g. from copd_lab.vlm.model_io.load_vlm).
        suites: domain name -> TaskSuite; `domains` follows this order.
        lora: adapter settings of every expert slot (None: LoraSettings()); unused with experts="full".
        max_new_tokens: longest completion generated (32).
        device: "cpu" keeps float32; "cuda" moves the base to the GPU in bf16 (adapters and full copies stay
            float32).
        lr, weight_decay: AdamW of every slot (1e-3, 0.0; tiny models; ~1e-5 for 2B models).
        eval_prompts: cap on the eval prompts per domain that every_prompt uses (64; all domains use
            the same count, min over suites, so every request of an evaluation has the same N).
        experts: "lora" (peft adapters on one base) or "full" (a full copy of the text decoder per slot).
        engine: the rollout engine, by name ("cached" or "hf_generate", see engine.py; "vllm", see
            vllm_engine.py: a Qwen2-VL model loaded from a folder; the last two need experts="lora") or any
            RolloutEngine.
        """
        if experts not in VLM_EXPERTS:
            raise ValueError(f"experts = {experts!r} is not allowed: one of {VLM_EXPERTS}")
        if experts == "full" and (engine == "hf_generate" or isinstance(engine, HFGenerateEngine)):
            raise ValueError("engine = HFGenerateEngine is not allowed with experts = 'full': transformers' "
                             "generate runs one set of weights per call; use CachedEngine")
        if experts == "full" and engine == "vllm":
            raise ValueError("engine = 'vllm' is not allowed with experts = 'full': vLLM serves one base with LoRA "
                             "adapters, and full copies would each need base weights of their own; use 'cached'")
        self.family = family_of(model)
        for domain, suite in suites.items():
            self.family.check_visual(suite.modality, domain)
        self.domains = tuple(suites)
        self.suites = [suites[d] for d in self.domains]
        self.max_new_tokens = max_new_tokens
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
        if engine == "vllm":
            from copd_lab.vlm.vllm_engine import engine_for_world

            engine = engine_for_world(self, model, lora or LoraSettings(), device)
        elif isinstance(engine, str):
            if engine not in ENGINES:
                raise ValueError(f"engine = {engine!r} is not allowed: one of {(*ENGINES, 'vllm')} or a RolloutEngine")
            engine = ENGINES[engine](self.placeholders, self.eos, self.pad_id)
        self.engine = engine
        model = model.to(self.device, dtype).eval()
        self.hf_model = model
        if experts == "lora":
            self.slots = LoraSlots(model, lora or LoraSettings(), lr, weight_decay)
        else:
            self.slots = FullSlots(model, self.family, lr, weight_decay)

    # ---------------------------------------------------------------- slots (slots.py)

    def reset(self, n_slots: int, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)  # the shared LoRA A_0 and DARE's merge seeds
        self.streams = Streams(seed)  # prompts and sampling noise, per request stream
        self.slots.reset(n_slots, self.gen)
        reserve = getattr(self.engine, "reserve", None)
        if reserve is not None:  # an engine serving adapters in batches (vLLM): every slot plus the base
            reserve(n_slots + 1)

    def copy(self, src: int, dst: int) -> None:
        self.slots.copy(src, dst)

    def merge(self, sources: list[int], dst: int, spec: MergeConfig) -> None:
        self.slots.merge(sources, dst, spec)

    def step(self, loss: torch.Tensor, slots: list[int]) -> None:
        self.slots.step(loss, slots)

    def non_finite(self, slots: list[int]) -> list[int]:
        return self.slots.non_finite(slots)

    def flat_weights(self, slots: list[int]) -> torch.Tensor:
        return self.slots.flat_weights(slots)

    def flat_grads(self, loss: torch.Tensor, slots: list[int]) -> torch.Tensor:
        return self.slots.flat_grads(loss, slots)

    def get_slot(self, slot: int) -> dict:
        """A slot's weights (adapter tensors and rank, or full weights), to copy into another world's slot."""
        return self.slots.get_slot(slot)

    def set_slot(self, slot: int, weights: dict) -> None:
        """Slot's weights become `weights` (from get_slot), with a fresh optimizer, as copy() gives them."""
        self.slots.set_slot(slot, weights)

    def generator_state(self) -> torch.Tensor:
        """The state of the world's own generator (the shared LoRA A_0 and DARE's merge seeds)."""
        return self.gen.get_state()

    def set_generator_state(self, state: torch.Tensor) -> None:
        self.gen.set_state(state)

    @property
    def lr_setting(self) -> str:
        return f"vlm.lr = {self.slots.lr}"

    def state_dict(self) -> dict:
        return {**self.slots.state_dict(), "gen": self.gen.get_state(), "streams": self.streams.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.gen = torch.Generator()
        self.slots.load_state_dict(state, self.gen)
        self.gen.set_state(state["gen"])
        self.streams = Streams.from_state_dict(state["streams"])

    # ---------------------------------------------------------------- prompts and rollouts

    def _prompt_rows(self, request: Request, prompts: int, every_prompt: bool) -> list[tuple[int, int]]:
        """(domain, row) of each distinct prompt, domain by domain, drawn from the request's stream: a pooled
        request first draws each prompt's domain by its shares (a one-domain request draws only its rows)."""
        out, counts = [], [prompts]
        if len(request.domains) > 1 and not every_prompt:
            picks = torch.multinomial(request.domain_probs(), prompts, replacement=True,
                                      generator=self.streams(request.stream))
            counts = torch.bincount(picks, minlength=len(request.domains)).tolist()
        for j, d in enumerate(request.domains):
            if every_prompt:  # the first `prompts` eval prompts (0: all of them)
                out += [(d, i) for i in range(prompts if 0 < prompts < self.n_eval else self.n_eval)]
                continue
            count = counts[j]
            if count == 0:
                continue
            size, gen = len(self.suites[d].train), self.streams(request.stream)
            rows = torch.randint(size, (count,), generator=gen) if count > size else torch.randperm(size, generator=gen)
            out += [(d, int(i)) for i in rows[:count]]
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

    def draw(self, requests: list[Request], prompts: int, group: int, greedy: bool = False,
             every_prompt: bool = False) -> RequestDraws:
        """The random draws of a sample call, per request from its stream: its prompts' (domain, row) and the seed
        of its sampling noise. One seed per request, so that a request's tokens do not depend on the requests
        beside it in the call (a sharded world draws here and sends each shard its requests' draws)."""
        out = RequestDraws()
        for request in requests:
            layout = tuple(self._prompt_rows(request, prompts, every_prompt))
            out.append((layout, int(torch.randint(2**62, (1,), generator=self.streams(request.stream)))))
        return out

    def _encode_layouts(self, layouts: list[tuple], split: str, group: int) -> tuple[list[PromptSet], list]:
        """Each request's prompt set and the (domain, data row) of each of its rollouts; identical layouts (eval
        prompts) are encoded once."""
        encoded, data_rows, seen = [], [], {}
        for layout in layouts:
            if layout not in seen:
                sets, rows_here = [], []
                for d in dict.fromkeys(dom for dom, _ in layout):
                    prompt_set, rows = self._encode(d, [i for dom, i in layout if dom == d], split)
                    sets.append(prompt_set)
                    rows_here += [(d, row) for row in rows for _ in range(group)]
                seen[layout] = (PromptSet.cat(sets, self.pad_id), rows_here)
            encoded.append(seen[layout][0])
            data_rows += seen[layout][1]
        return encoded, data_rows

    def export_payload(self, payload: VLMPayload) -> list[tuple]:
        """Per request row, what re-scores its rollouts in another world: its prompts' (domain, row), not their
        features (the other world's vision tower encodes them again, to the same numbers)."""
        return [(layout, payload.split, payload.group, payload.temperature) for layout in payload.layouts]

    def import_payload(self, rows: list[tuple]) -> VLMPayload:
        layouts, (_, split, group, temperature) = [r[0] for r in rows], rows[0]
        return VLMPayload(self._encode_layouts(layouts, split, group)[0], group, temperature, layouts, split)

    def sample(self, requests: list[Request], prompts: int, group: int, temperature: float,
               greedy: bool = False, every_prompt: bool = False, draws: list | None = None) -> Batch:
        split = "eval" if every_prompt else "train"
        draws = draws or self.draw(requests, prompts, group, greedy, every_prompt)
        layouts = [layout for layout, _ in draws]
        encoded, data_rows = self._encode_layouts(layouts, split, group)
        domains = [torch.tensor([dom for dom, _ in layout]).repeat_interleave(group) for layout in layouts]
        if len({len(d) for d in domains}) > 1:
            raise ValueError(f"requests of one sample() call must have the same number of rollouts, got "
                             f"{[len(d) for d in domains]}: with every_prompt, give each request as many domains")
        payload = VLMPayload(encoded, group, temperature, layouts, split)
        adapters = [adapter_name(r.slot) for r, p in zip(requests, encoded) for _ in range(p.input_ids.shape[0])]
        rng_devices = [self.device] if self.device.type == "cuda" else []
        # each request's seed seeds the generator of its rows' sampling noise, so its tokens do not depend on the
        # other rows of the call; an engine that samples from torch's global RNG (transformers' generate) gets it
        # seeded from all the seeds
        noise = [(p.input_ids.shape[0] * group, torch.Generator(self.device).manual_seed(seed))
                 for p, (_, seed) in zip(encoded, draws)]
        with torch.random.fork_rng(devices=rng_devices), torch.no_grad():
            torch.manual_seed(sum(seed for _, seed in draws) % 2**62)
            ids, logprobs = self.engine.generate(self.slots.model, PromptSet.cat(encoded, self.pad_id),
                                                 adapters, group, temperature=temperature, greedy=greedy,
                                                 max_new_tokens=self.max_new_tokens, noise=noise)
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

    def _distinct_prompts(self, payload: VLMPayload, requests: list[tuple[int, int]]):
        """Each (prompt set, slot) once: the prompt sets, one adapter name per prompt row, and the prompt row
        each rollout row continues.

        Requests share prompt sets when they score one set of rollouts under several teachers (the gap
        metrics), or the same eval prompts (sample() encodes identical layouts once)."""
        first: dict[tuple[int, int], int] = {}
        sets, adapters, rows = [], [], []
        for request, slot in requests:
            prompt_set = payload.prompts[request]
            n = prompt_set.input_ids.shape[0]
            key = (id(prompt_set), slot)
            if key not in first:
                first[key] = len(adapters)
                sets.append(prompt_set)
                adapters += [adapter_name(slot)] * n
            rows.append(torch.arange(first[key], first[key] + n).repeat_interleave(payload.group))
        return sets, adapters, torch.cat(rows).to(self.device)

    def _score(self, batch: Batch, slots: list[int], grad: bool, full: bool) -> torch.Tensor:
        """Log-probs along the rollouts under slots[r]: all rows in one forward, each prompt run once."""
        r_, n_, t_ = batch.tokens.shape
        rows = [i for i, s in enumerate(slots) if s >= 0]
        vocab = self.hf_model.get_output_embeddings().out_features
        out = torch.zeros((r_, n_, t_) + ((vocab,) if full else ()))
        if not rows:  # every slot was -1
            return out
        payload = batch.payload
        prompts, adapters, prompt_rows = self._distinct_prompts(payload, [(i, slots[i]) for i in rows])
        completion = batch.tokens[rows].flatten(0, 1).to(self.device)
        with torch.set_grad_enabled(grad):
            logits = completion_logits(self.slots.model, PromptSet.cat(prompts, self.pad_id), adapters,
                                       payload.group, completion, prompt_rows)
            logp = sampling_logprobs(logits, self._placeholder_index, payload.temperature)
            if not full:
                logp = logp.gather(-1, completion[..., None]).squeeze(-1)
        # batch tensors live on the CPU (the trainer builds its own tensors there)
        return out.index_put((torch.tensor(rows),), logp.view(len(rows), n_, t_, *logp.shape[2:]).cpu())

    def token_logprobs(self, batch: Batch, slots: list[int], grad: bool) -> torch.Tensor:
        return self._score(batch, slots, grad, full=False)

    def pair_logprobs(self, batch: Batch, rows: list[int], full: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # a call per row: full copies run a forward per slot, whose rounding depends on the rows beside it (their
        # padding), so a student's sub-batch must hold exactly its teacher's rows; one domain's prompts also pad
        # to their own length then, not to the video's (measured: as fast as one call for all pairs, or faster)
        student = teacher = None
        for i in rows:
            request = batch.requests[i]
            pair = self._score(batch.take([i, i]), [request.slot, request.teacher], grad=False, full=full)
            if student is None:
                student, teacher = (torch.zeros(batch.tokens.shape + pair.shape[3:]) for _ in range(2))
            student[i], teacher[i] = pair[0], pair[1]
        return student, teacher

    def full_logprobs(self, batch: Batch, slots: list[int], grad: bool) -> torch.Tensor:
        return self._score(batch, slots, grad, full=True)
