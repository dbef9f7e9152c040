"""Run checkpoints: one file per seed, written atomically, read back without unpickling code.

A checkpoint is a plain nested structure (dicts, lists, str, int, float, bool, None and tensors), so it
loads with ``torch.load(weights_only=True)``: a file cannot run code when it is read. It is written to a
temporary file in the same folder, flushed to disk, then renamed over the old one (``os.replace`` is
atomic), so an interruption at any moment leaves either the previous checkpoint or the new one, whole; the
temporary file of a killed write is removed by the next write of the same checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from copd_lab.config import ExperimentConfig
from copd_lab.config_io import to_dict

STATE_FORMAT = 6  # 6: a pooled batch draws each prompt's domain, and counts them; 5: a VLM request draws its own
# sampling seed (a sharded world splits calls); 4: OPD signals from World.pair_logprobs, Dr.GRPO over the longest
# completion; 3: VLM rows draw from their stream's generator; 2: a stream per method; 1: one per seed


def resume_key(cfg: ExperimentConfig | dict) -> dict:
    """The config fields a checkpoint must agree on to be resumed: all but which seeds and the cadence (the
    file names its seed, so seeds run apart, e.g. one per machine, gather into one table with --resume).
    A dict is a stored key, from a copd_lab that kept more fields or kept some elsewhere (grpo.lr, now sim.lr)."""
    data = dict(cfg) if isinstance(cfg, dict) else to_dict(cfg)
    if isinstance(data.get("grpo"), dict) and "lr" in data["grpo"]:  # an older copd_lab's name of sim.lr
        grpo = dict(data["grpo"])
        data["grpo"], data["sim"] = grpo, {**data.get("sim", {}), "lr": grpo.pop("lr")}
    for name in ("seed", "seeds", "checkpoint_every"):
        data.pop(name, None)
    if "placement" in data:  # where the experts ran may change (another cluster); the state's layout may not
        data["placement"] = {"engine": data["placement"].get("engine", "local")}
    return data


def checkpoint_path(out: str | Path, seed: int) -> Path:
    """Where the checkpoint of `seed` lives in a run folder: <out>/checkpoints/seed<seed>.pt."""
    return Path(out) / "checkpoints" / f"seed{seed}.pt"


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save `state` to a temp file beside `path`, fsync it, and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a write that was killed (kill -9, power cut)
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (POSIX; not possible on every platform)
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path) -> dict:
    """The state saved at `path`, loaded with weights_only=True (tensors and plain containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def first_non_finite(state: object, where: str = "") -> str | None:
    """Key path of the first floating tensor in `state` holding a NaN or inf (None: all finite)."""
    if isinstance(state, torch.Tensor):
        if not state.is_floating_point() or bool(state.sum().isfinite()):  # fast: a NaN or inf makes the sum one
            return None
        return where if not bool(torch.isfinite(state).all()) else None  # (a finite sum can still overflow)
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    for key, value in items:
        found = first_non_finite(value, f"{where}[{key!r}]")
        if found is not None:
            return found
    return None
