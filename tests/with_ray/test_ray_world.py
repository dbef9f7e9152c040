"""Experts as Ray actors (placement.engine = "ray"): the same rows as one process in both worlds, a placement group
per expert, refusals before work, and a killed actor that stops the run by name and resumes from its checkpoint."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest

from copd_lab.config import ConfigError, PlacementConfig
from copd_lab.config_io import load_config
from copd_lab.experiment import run_comparison
from copd_lab.local_world import make_world
from tests.distributed.test_sharded import KEYS, assert_same_rows, small

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "tiny_models" / "qwen2vl-tiny"


def on_ray(cfg, **placement):
    return dataclasses.replace(cfg, placement=PlacementConfig(engine="ray", **{"num_cpus": 0.5, **placement}))


def test_sim_on_ray_gives_the_rows_of_one_process(ray_cluster):
    from ray.util import placement_group_table

    cfg = small()
    before = len(placement_group_table())
    world = make_world(on_ray(cfg))
    try:
        assert sorted(world.experts) == ["image", "mixed", "student", "text", "video"]
        assert len({info["pid"] for info in world.info.values()}) == 5 != os.getpid()  # an actor process each
        groups = [g for g in placement_group_table().values() if g["state"] == "CREATED"]
        assert len(placement_group_table()) - before == 5
        assert all(list(g["bundles"].values()) == [{"CPU": 0.5}] for g in groups[-5:])
        assert_same_rows(run_comparison(cfg, progress=False).metrics,
                         run_comparison(cfg, progress=False, world=world).metrics)
        assert world.traffic["rollouts to teachers"] > 0
    finally:
        world.close()


def test_vlm_on_ray_gives_the_rows_of_one_process_up_to_float_rounding(ray_cluster):
    """Discrete rows (accuracies, rewards, lengths) are equal; a float row's rounding depends on the other rows of
    a forward (padding, matmul shapes), and one process batches every expert's rows together: measured
    |difference| <= 3.4e-5 on this budget."""
    cfg = load_config(None, [f"vlm.model='{SHIPPED}'", "world='vlm'", "expert_steps=2", "distill_steps=1",
                             "grpo.prompts_per_step=2", "grpo.group_size=2", "metrics.gap_every=1",
                             "metrics.eval_every=2", "metrics.gap_prompts=2", "vlm.n_eval=2", "vlm.n_train=16",
                             "metrics.eval_samples=1", "methods=['base','experts','static_opd:image->text','copd']",
                             "copd.rl_steps=1", "copd.opd_steps=1", "copd.cycles=1", "checkpoint_every=0"])
    one = run_comparison(cfg, progress=False).metrics
    world = make_world(on_ray(cfg))
    try:
        ray_rows = run_comparison(cfg, progress=False, world=world).metrics
    finally:
        world.close()
    merged = one.merge(ray_rows, on=KEYS, how="outer", suffixes=("_one", "_ray"), validate="one_to_one")
    assert len(merged) == len(one) == len(ray_rows) > 100
    discrete = merged.metric.str.contains("acc_|reward|length")
    assert discrete.sum() > 20
    assert (merged.value_one[discrete] == merged.value_ray[discrete]).all()
    assert (merged.value_one - merged.value_ray).abs().max() < 1e-4


def test_placement_beyond_the_cluster_is_refused_in_one_line(ray_cluster):
    with pytest.raises(ConfigError, match=r"placement.num_gpus = 1.0 is not allowed: 5 experts .* need 5 GPUs and "
                                          r"the Ray cluster has 0"):
        make_world(on_ray(small(), num_gpus=1.0))


def _descendants(pid: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        out += children
        frontier = children
    return out


def _shard_actors(pid: int) -> list[int]:
    found = []
    for child in _descendants(pid):
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"ray::Shard"):
                found.append(child)
        except OSError:
            pass
    return found


def _listening(pids: list[int]) -> list[str]:
    """The local addresses (hex, as /proc/net/tcp writes them) of the TCP sockets these processes listen on."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            pass
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cells = line.split()
            if cells[3] == "0A" and cells[9] in inodes:  # 0A: LISTEN
                found.append(cells[1].split(":")[0])
    return found


LOOPBACK_HEX = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def test_a_local_cluster_listens_on_loopback_only(ray_cluster):
    world = make_world(on_ray(small(methods=("experts",))))
    try:
        addresses = _listening([os.getpid(), *_descendants(os.getpid())])
        assert len(addresses) >= 5  # the GCS, the raylet, the driver and the actors all serve
        assert set(addresses) <= LOOPBACK_HEX, addresses
    finally:
        world.close()


def test_killed_actor_stops_the_run_naming_its_expert_and_resume_finishes_it(tmp_path):
    settings = ["placement.engine='ray'", "placement.num_cpus=0.5", "methods=['experts','copd']",
                "expert_steps=120", "checkpoint_every=10", "metrics.gap_every=10", "metrics.eval_every=40"]
    args = [arg for s in settings for arg in ("--set", s)]
    out = tmp_path / "run"
    command = [sys.executable, "-m", "copd_lab.cli", "sim", "--quiet", "--out", str(out), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    checkpoint = out / "checkpoints" / "seed0.pt"
    deadline, first = time.monotonic() + 180, None
    while time.monotonic() < deadline and proc.poll() is None:  # past the first checkpoint: mid-run
        if checkpoint.exists():
            first = first or checkpoint.stat().st_mtime_ns
            if checkpoint.stat().st_mtime_ns != first:
                break
        time.sleep(0.05)
    actors = _shard_actors(proc.pid)
    assert proc.poll() is None and len(actors) == 3, (proc.poll(), actors)
    os.kill(actors[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("copd-lab: error: the Ray actor of expert '") and "died" in line, err
    assert f"the last good checkpoint stays at {checkpoint}" in line and "--resume" in line, line
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    # the same rows as an uninterrupted run in one process
    alone = tmp_path / "alone"
    local = [a.replace("placement.engine='ray'", "placement.engine='local'") for a in args]
    done = subprocess.run([sys.executable, "-m", "copd_lab.cli", "sim", "--quiet", "--out", str(alone), *local],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [pd.read_parquet(folder / "metrics.parquet").assign(run="") for folder in (alone, out)]  # run: its --out
    assert_same_rows(*rows)


def test_ray_overhead_benchmark_prints_both_tables(ray_cluster):
    done = subprocess.run([sys.executable, "benchmarks/ray_overhead.py", "--quick", "--sizes", "3", "--no-vlm"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    rows = [line for line in lines if line.startswith("| sim | 3 |")]
    assert [row.split(" | ")[2] for row in rows] == ["hub", "all_pairs"]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[3]) > 0 and float(cells[4]) > 0 and float(cells[8]) > 0  # rollouts reached teachers
    assert any(line.startswith("| empty call, round trip |") for line in lines)
