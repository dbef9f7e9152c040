"""`copd-lab run` with a model folder or VLM setting it cannot use: one line naming the field, the value and what
is allowed, before any model is loaded; never a transformers traceback."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2Config, Qwen2ForCausalLM

from copd_lab.cli import main
from copd_lab.preflight import check_vlm

SHIPPED = Path(__file__).resolve().parents[2] / "tiny_models" / "qwen2vl-tiny"


def refused(capsys, tmp_path, settings: list[str], *words: str) -> str:
    argv = ["run", "--quiet", "--out", str(tmp_path / "out")] + [a for s in settings for a in ("--set", s)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("copd-lab: error: "), err
    for word in words:
        assert word in err, (word, err)
    assert not (tmp_path / "out").exists()
    return err


def copy_of_shipped(tmp_path: Path, drop: tuple[str, ...] = ()) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED, folder, ignore=shutil.ignore_patterns(*drop))
    return folder


def test_a_folder_without_config_json(tmp_path, capsys):
    folder = copy_of_shipped(tmp_path, drop=("config.json",))
    refused(capsys, tmp_path, [f"vlm.model='{folder}'"], "vlm.model", "has no config.json", "save_pretrained")


def test_an_unknown_model_type_and_a_text_only_model(tmp_path, capsys):
    folder = copy_of_shipped(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "qwen9_vl"}))
    refused(capsys, tmp_path, [f"vlm.model='{folder}'"], "model_type 'qwen9_vl'", "llava, qwen2_vl")
    text_only = tmp_path / "qwen2"
    Qwen2ForCausalLM(Qwen2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, vocab_size=64)).save_pretrained(text_only)
    capsys.readouterr()  # save_pretrained's progress bar
    refused(capsys, tmp_path, [f"vlm.model='{text_only}'"], "model_type 'qwen2'", "text-only model has no vision")


def test_a_config_without_weights_and_pickle_only_weights(tmp_path, capsys):
    folder = copy_of_shipped(tmp_path, drop=("*.safetensors",))
    refused(capsys, tmp_path, [f"vlm.model='{folder}'"], "holds no weights (*.safetensors)")
    torch.save(load_file(SHIPPED / "model.safetensors"), folder / "pytorch_model.bin")
    refused(capsys, tmp_path, [f"vlm.model='{folder}'"], "pickle files only (pytorch_model.bin)",
            "safe_serialization=True")


def test_weights_transformers_cannot_read_are_named_not_raised(tmp_path, capsys):
    folder = copy_of_shipped(tmp_path)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    refused(capsys, tmp_path, [f"vlm.model='{folder}'"], "vlm.model", "transformers could not load it")


def test_model_that_is_a_file(tmp_path, capsys):
    refused(capsys, tmp_path, [f"vlm.model='{SHIPPED / 'config.json'}'"], "it is a file")


@pytest.mark.parametrize("settings, words", [
    (["vlm.difficulty=4"], ["vlm.difficulty = 4", "(1, 2, 3)"]),
    (["domains=['text','audio']", "methods=['experts']"], ["'audio' is not a task suite", "register_suite"]),
    (["vlm.max_new_tokens=30000"], ["vlm.max_new_tokens = 30000", "max_position_embeddings"]),
    (["vlm.lora_r=1000"], ["vlm.lora_r = 1000", "hidden_size"]),
])
def test_vlm_settings_the_model_or_suites_cannot_take(tmp_path, capsys, settings, words):
    refused(capsys, tmp_path, settings, *words)


def test_the_vllm_engine_with_full_copies(tmp_path, capsys):
    refused(capsys, tmp_path, ["vlm.engine='vllm'", "vlm.experts='full'"], "vlm.engine = 'vllm'",
            "experts = 'full'")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_the_vllm_engine_without_vllm_installed(tmp_path, capsys):
    refused(capsys, tmp_path, ["vlm.engine='vllm'"], "vlm.engine = 'vllm'", "vLLM is not installed",
            "pip install -e '.[gpu]'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it(tmp_path, capsys):
    refused(capsys, tmp_path, ["vlm.device='cuda'"], "vlm.device = 'cuda'", "use vlm.device = 'cpu'")


def test_checks_run_before_any_model_is_loaded(monkeypatch):
    """The preflight refuses on the config's facts alone: loading is never reached."""
    import copd_lab.experiment as experiment
    from copd_lab.config_io import RUN_DEFAULTS, load_config

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("copd_lab.vlm.model_io.load_vlm", no_load)
    cfg = load_config(None, ["vlm.difficulty=7"], defaults=RUN_DEFAULTS)
    with pytest.raises(experiment.ConfigError, match="vlm.difficulty"):
        check_vlm(cfg)
    with pytest.raises(experiment.ConfigError, match="vlm.difficulty"):
        experiment.run_comparison(cfg, progress=False)


def test_the_default_tiny_model_is_found_from_any_folder(tmp_path, capsys, monkeypatch):
    """vlm.model's default is relative to the checkout: a user in another folder gets the shipped model."""
    monkeypatch.chdir(tmp_path)
    refused(capsys, tmp_path, ["vlm.difficulty=4"], "vlm.difficulty = 4")  # past the model check


def test_topk_must_be_below_the_models_vocabulary(tmp_path, capsys):
    vocab = json.loads((SHIPPED / "config.json").read_text())["text_config"]["vocab_size"]
    refused(capsys, tmp_path, [f"metrics.topk={vocab}"], f"metrics.topk = {vocab}", f"vocabulary of {vocab} tokens")
