"""Fingerprint what runs write, to check that a refactor changed no number.

Runs `copd-lab sim --seeds 2`, `copd-lab sim --seeds 1` (the one-seed path), a simulator run with the adaptive
schedule, frozen teachers and the top-k estimator, and a short `copd-lab run` on the shipped tiny VLM, each into a
fresh folder, then hashes every metric row (exact float bits, in order) and every checkpoint's tensors and plain
values. The config a checkpoint stores (its resume key) is hashed apart, with fields that moved (MOVED) read at
their new place, so an old and a new version's keys compare. It uses the command line and files only, so the same
script runs on any version.

    python scripts/fingerprint.py --save before.json         # before the change
    python scripts/fingerprint.py --compare before.json      # after it: lists every difference, exit 1 if any
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

RUNS = {
    "sim_2_seeds": ["sim", "--seeds", "2"],
    "sim_1_seed": ["sim", "--seeds", "1", "--set", "expert_steps=60", "--set", "copd.cycles=3"],
    "sim_variants": ["sim", "--seeds", "2", "--set", "expert_steps=60", "--set", "copd.cycles=3",
                     "--set", "copd.adaptive_threshold=0.95", "--set", "opd.estimator='topk'",
                     "--set", "methods=['base','experts','mopd','copd','copd_frozen','copd_drop:text<-image']",
                     "--set", "checkpoint_every=7"],
    "vlm_short": ["run", "--seeds", "1", "--set", "expert_steps=3", "--set", "distill_steps=2",
                  "--set", "copd.cycles=1", "--set", "copd.rl_steps=2", "--set", "copd.opd_steps=1",
                  "--set", "grpo.prompts_per_step=2", "--set", "grpo.group_size=2", "--set", "vlm.n_eval=4",
                  "--set", "vlm.n_train=16", "--set", "metrics.eval_samples=2", "--set", "metrics.gap_every=2",
                  "--set", "metrics.eval_every=2", "--set", "vlm.max_new_tokens=6",
                  "--set", "methods=['base','experts','mixed','mopd','copd']", "--set", "checkpoint_every=2"],
}


MOVED = {("grpo", "lr"): ("sim", "lr")}  # issue 21: the simulator's lr is sim.lr


def _moved(config: dict | None) -> dict | None:
    """A stored resume key with each moved field at its new place."""
    if config is None:
        return None
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for (table, name), (new_table, new_name) in MOVED.items():
        if name in config.get(table, {}):
            config.setdefault(new_table, {})[new_name] = config[table].pop(name)
    return config


def _hash_value(h, value) -> None:
    """Feed a checkpoint's nested plain structure into h: tensors by dtype, shape and exact bytes."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        h.update(b"D")
        for key in sorted(value, key=str):
            h.update(repr(key).encode())
            _hash_value(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(b"L")
        for item in value:
            _hash_value(h, item)
    else:
        h.update(repr(value).encode())


def fingerprint(folder: Path) -> dict[str, str]:
    out = {}
    metrics = pd.read_parquet(folder / "metrics.parquet")
    h = hashlib.sha256(str(list(metrics.columns)).encode())
    for col in metrics.columns:
        h.update(metrics[col].to_numpy().tobytes() if metrics[col].dtype.kind in "fi" else
                 "\x00".join(map(str, metrics[col])).encode())
    out["metrics"] = f"{h.hexdigest()[:16]} ({len(metrics)} rows)"
    for path in sorted((folder / "checkpoints").glob("*.pt")):
        state = torch.load(path, map_location="cpu", weights_only=True)
        config = _moved(state.pop("config", None))
        h = hashlib.sha256()
        _hash_value(h, state)
        out[f"{path.name}"] = h.hexdigest()[:16]
        out[f"{path.name} config"] = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--save", help="write the fingerprints to this JSON file")
    parser.add_argument("--compare", help="compare with fingerprints saved by --save")
    parser.add_argument("--only", nargs="*", default=list(RUNS), help=f"runs among {list(RUNS)}")
    args = parser.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = {}
    # one fixed folder per run: a run's rows name it (the run column), so a random folder would change them
    root = Path(tempfile.gettempdir()) / "copd_lab_fingerprint"
    shutil.rmtree(root, ignore_errors=True)
    for name in args.only:
        folder = root / name
        cmd = [sys.executable, "-m", "copd_lab.cli", *RUNS[name], "--quiet", "--out", str(folder)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{name}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            return 2
        result[name] = fingerprint(folder)
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in result[name].items()), flush=True)
    if args.save:
        Path(args.save).write_text(json.dumps(result, indent=1))
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        differ = [f"{run} {key}: {before[run].get(key)} before, {value} now" for run, keys in result.items()
                  for key, value in keys.items() if run in before and before[run].get(key) != value]
        for line in differ:
            print("DIFFERS", line)
        print("all fingerprints match" if not differ else f"{len(differ)} fingerprints differ")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
