"""Plugging in a user's suite: the documented example runs, registration works, bad suites fail early."""

import re

import numpy as np
import pytest

import copd_lab.tasks.base as base
from copd_lab.tasks import (
    TaskSuite,
    answer_reward,
    available_suites,
    build_suite,
    make_dataset,
    register_suite,
    registry,
)


@pytest.fixture(autouse=True)
def private_registry(monkeypatch):
    """Registrations made by a test stay in that test."""
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))


def rows(n: int, **changes) -> list[dict]:
    row = {"prompt": "What is 1 plus 1?", "answer": "2", "skill": "add", "difficulty": 1, "images": []}
    return [{**row, **changes} for _ in range(n)]


def test_documented_example_runs():
    example = re.search(r"like this::\n\n(.*)\n\"\"\"", base.__doc__ + '"""', re.S).group(1)
    namespace: dict = {}
    exec(compile(example.replace("\n    ", "\n").strip(), "base-docstring", "exec"), namespace)
    suite = namespace["suite"]
    assert "parity" in available_suites()
    assert len(suite.train) == 200 and len(suite.eval) == 50
    row = suite.eval[0]
    assert suite.verifier(f"<answer>{row['answer']}</answer>", row) == 1.0


def test_user_suite_registers_and_builds():
    def build_squares(n_train: int, n_eval: int, seed: int, difficulty: int = 1) -> TaskSuite:
        rng = np.random.default_rng(seed)

        def image(lit: int) -> np.ndarray:
            pixels = np.zeros((32, 32, 3), np.uint8)
            pixels[0, :lit] = 255
            return pixels

        def split(n):
            return make_dataset(
                {
                    "prompt": "Lit pixels?",
                    "answer": str(k),
                    "skill": "count",
                    "difficulty": difficulty,
                    "images": [image(k)],
                }
                for k in rng.integers(0, 10, size=n)
            )

        return TaskSuite("lit", "image", split(n_train), split(n_eval), answer_reward)

    register_suite("lit", build_squares)
    suite = build_suite("lit", n_train=6, n_eval=3, seed=1)
    row = suite.train[0]
    assert np.asarray(row["images"][0]).any(axis=-1).sum() == int(row["answer"])
    assert suite.verifier(f"<answer>{row['answer']}</answer>", row) == 1.0
    with pytest.raises(ValueError, match="already registered"):
        register_suite("lit", build_squares)
    register_suite("lit", build_squares, overwrite=True)


def test_builder_must_return_a_task_suite():
    register_suite("broken", lambda n_train, n_eval, seed, difficulty=1: None)
    with pytest.raises(TypeError, match="not a TaskSuite"):
        build_suite("broken", 1, 1, seed=0)


@pytest.mark.parametrize(
    "train, modality, message",
    [
        (make_dataset(rows(2)).remove_columns("skill"), "text", "lacks column 'skill'"),
        (make_dataset(rows(2, answer="two")), "text", "'answer' holds 'two'"),
        (make_dataset(rows(2)), "audio", "modality must be one of"),
        (make_dataset(rows(2)), "image", "modality 'image' allows 1"),
        (make_dataset(rows(2)), "video", "at least 1"),
        (rows(2), "text", "must be a datasets.Dataset"),
    ],
)
def test_bad_suites_fail_at_construction(train, modality, message):
    with pytest.raises((ValueError, TypeError), match=message):
        TaskSuite("mine", modality, train, make_dataset(rows(1)), answer_reward)


def test_empty_splits_are_allowed():
    suite = build_suite("video", n_train=0, n_eval=0, seed=0)
    assert len(suite.train) == len(suite.eval) == 0
