"""Suites by name: the three built-in ones and any a user registers with ``register_suite``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from copd_lab.tasks import image, text, video
from copd_lab.tasks.base import TaskSuite


class SuiteBuilder(Protocol):
    """Builds a suite; deterministic in ``seed``, with eval rows drawn apart from train rows."""

    def __call__(self, n_train: int, n_eval: int, seed: int, difficulty: int = 1) -> TaskSuite: ...


_BUILDERS: dict[str, SuiteBuilder] = {"text": text.build, "image": image.build, "video": video.build}


def register_suite(name: str, builder: SuiteBuilder, *, overwrite: bool = False) -> None:
    """Make ``build_suite(name, ...)`` call ``builder``; re-registering a name needs ``overwrite=True``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"suite name must be a non-empty string, got {name!r}")
    if not callable(builder):
        raise TypeError(f"builder for suite {name!r} must be callable, got {builder!r}")
    if name in _BUILDERS and not overwrite:
        raise ValueError(f"suite {name!r} is already registered; pass overwrite=True to replace it")
    _BUILDERS[name] = builder


def available_suites() -> list[str]:
    """Names ``build_suite`` accepts."""
    return sorted(_BUILDERS)


def build_suite(domain: str, n_train: int, n_eval: int, seed: int, difficulty: int = 1) -> TaskSuite:
    """The suite registered under ``domain``, with n_train and n_eval rows."""
    if domain not in _BUILDERS:
        raise ValueError(f"unknown suite {domain!r}; registered suites: {available_suites()}")
    suite = _BUILDERS[domain](n_train=n_train, n_eval=n_eval, seed=seed, difficulty=difficulty)
    if not isinstance(suite, TaskSuite):
        raise TypeError(f"builder of suite {domain!r} returned {type(suite).__name__}, not a TaskSuite")
    return suite


def build_suites(
    domains: Iterable[str], n_train: int, n_eval: int, seed: int, difficulty: int = 1
) -> dict[str, TaskSuite]:
    """One suite per domain, in the order given (each built-in suite mixes its domain into the seed)."""
    return {domain: build_suite(domain, n_train, n_eval, seed, difficulty) for domain in domains}
