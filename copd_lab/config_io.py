"""Configs in and out: built from nested dicts, TOML files and ``--set key=value`` overrides, checked
field by field (ConfigError names the field, the value and what is allowed), and written back as TOML."""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any

from copd_lab.config import ConfigError, ExperimentConfig, require

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# What `copd-lab run` assumes unless told: the real world, and 32 samples per eval prompt. With the
# VLM's 64 eval prompts, 8 samples leave about 2 points of sampling noise on a domain's score (as large as
# what RLVR gains there); 32 halve it (docs/results_vlm.md).
RUN_DEFAULTS: dict[str, Any] = {"world": "vlm", "metrics": {"eval_samples": 32}}

# Fields an older copd_lab had elsewhere: an old config that sets one gets a ConfigError saying where it went.
MOVED = {"grpo.lr": "sim.lr (the simulator's Adam lr; the VLM world's is vlm.lr)"}


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`, converting TOML lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        require(isinstance(value, dict), name, value, f"a table of {tp.__name__} fields")
        return build(tp, value, prefix=name + ".")
    if origin in (tuple,):
        require(isinstance(value, (list, tuple)), name, value, "a list")
        item_tp = typing.get_args(tp)[0]
        return tuple(_coerce(f"{name}[{i}]", v, item_tp) for i, v in enumerate(value))
    if origin in (dict,):
        require(isinstance(value, dict), name, value, "a table")
        _, val_tp = typing.get_args(tp)
        return {str(k): _coerce(f"{name}.{k}", v, val_tp) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is bool:
        require(isinstance(value, bool), name, value, "true or false")
    elif tp is int:
        require(isinstance(value, int) and not isinstance(value, bool), name, value, "an integer")
    elif tp is float:
        require(isinstance(value, (int, float)) and not isinstance(value, bool), name, value, "a number")
        return float(value)
    elif tp is str:
        require(isinstance(value, str), name, value, "a string")
    return value


def build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a (nested) dict, naming the dotted field on any error."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    for name in unknown:
        if prefix + name in MOVED:
            raise ConfigError(f"{prefix}{name} is not allowed: it moved to {MOVED[prefix + name]}")
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]} is not a field of {prefix.rstrip('.') or cls.__name__}: "
                          f"allowed fields are {', '.join(names)}")
    kwargs = {k: _coerce(prefix + k, v, hints[k]) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{prefix}{err}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """A plain nested dict (tuples as lists) that `build` accepts back and TOML can hold."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def _parse_value(text: str) -> Any:
    """Parse a --set value as a TOML value; a bare word that is not TOML is taken as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (``--set copd.rl_steps=3``) to a nested dict."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not allowed: write key=value, e.g. copd.rl_steps=3")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key} is not allowed: {part} is not a table")
        node[parts[-1]] = _parse_value(text.strip())
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                defaults: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load an ExperimentConfig from an optional TOML file plus ``--set`` overrides, validated.

    defaults: values used where neither the file nor the overrides set them, nested like the file
    (`copd-lab run`: RUN_DEFAULTS).
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"--config {str(path)!r} is not allowed: no such file") from None
        except IsADirectoryError:
            raise ConfigError(f"--config {str(path)!r} is not allowed: it is a folder; name a TOML file, e.g. "
                              f"configs/sim_default.toml") from None
        except UnicodeDecodeError:
            raise ConfigError(f"--config {str(path)!r} is not allowed: not a UTF-8 text file (TOML)") from None
        except OSError as err:
            raise ConfigError(f"--config {str(path)!r} is not allowed: it cannot be read ({err.strerror})") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"--config {str(path)!r} is not valid TOML: {err}") from None
    data = apply_overrides(_merged(defaults or {}, data), list(overrides))
    return build(ExperimentConfig, data)


def _merged(defaults: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """`data` over `defaults`, table by table (a file's [metrics] keeps the defaults it does not set)."""
    out = dict(defaults)
    for key, value in data.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both else value
    return out


def dump_toml(config: Any) -> str:
    """Write a config as TOML (scalars first, then one table per nested config)."""

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(value, list):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{scalar(k)} = {scalar(v)}" for k, v in value.items()) + "}"
        return repr(value)

    def emit(table: dict[str, Any], name: str, lines: list[str]) -> None:
        nested = {k: v for k, v in table.items() if isinstance(v, dict) and k not in _INLINE_DICTS}
        if name:
            lines.append(f"\n[{name}]")
        lines += [f"{k} = {scalar(v)}" for k, v in table.items() if k not in nested]
        for k, v in nested.items():
            emit(v, f"{name}.{k}" if name else k, lines)

    lines: list[str] = []
    emit(to_dict(config), "", lines)
    return "\n".join(lines).lstrip("\n") + "\n"


_INLINE_DICTS = {"beta_per_edge", "step_rates"}
