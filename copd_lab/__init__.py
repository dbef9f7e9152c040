"""copd_lab: Co-Evolving Policy Distillation, one algorithm over a simulator world and a VLM world.

The front door, as `from trl import GRPOConfig, GRPOTrainer`:

    from copd_lab import load_config, run_comparison
    comparison = run_comparison(load_config("configs/sim_default.toml", ["copd.rl_steps=6"]))
    print(comparison.table())

Names load on first use (as TRL's do), so `import copd_lab.config` stays light. The parts live in folders
(README, "Layout"): algorithm/ (Algorithm 1, docs/algorithm.md), math/, records/, sim/, vlm/, tasks/, distributed/,
studies/, playground/.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = [
    "CoPDConfig", "Comparison", "ConfigError", "ExperimentConfig", "GRPOConfig", "MergeConfig", "MetricsConfig",
    "MixedConfig", "OPDConfig", "PlacementConfig", "SimConfig", "VLMConfig", "dump_toml", "load_config",
    "run_comparison",
]
_HOME = {"dump_toml": "copd_lab.config_io", "load_config": "copd_lab.config_io", "Comparison": "copd_lab.experiment",
         "run_comparison": "copd_lab.experiment"}  # every other name is a config class of copd_lab.config

if TYPE_CHECKING:
    from copd_lab.config import (
        ConfigError,
        CoPDConfig,
        ExperimentConfig,
        GRPOConfig,
        MergeConfig,
        MetricsConfig,
        MixedConfig,
        OPDConfig,
        PlacementConfig,
        SimConfig,
        VLMConfig,
    )
    from copd_lab.config_io import dump_toml, load_config
    from copd_lab.experiment import Comparison, run_comparison


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'copd_lab' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME.get(name, "copd_lab.config")), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
