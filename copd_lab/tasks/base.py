"""The task plug-in interface: a task suite is a train and an eval ``datasets.Dataset`` plus a verifier.

Every suite, built-in or a user's, has the same columns (``FEATURES``):

- ``prompt``: the user text, short ("How many a in 'abaca'?"); options are given inline ("0=red 1=blue");
- ``answer``: the canonical answer, an integer written as text ("3");
- ``skill``: what the row exercises; the built-in suites share ``SKILLS`` across modalities, so the
  behavioural gap between experts can be read skill by skill;
- ``difficulty``: an integer level (1..3 for the built-in suites);
- ``images``: a list of PIL images, ``[]`` for text, ``[image]`` for image, ``[frame, ...]`` for video.

The verifier maps (completion text, dataset row) to a reward; ``answer_reward`` in ``verify.py`` is the
one the built-in suites use. A user plugs in a task of their own like this::

    from copd_lab.tasks import TaskSuite, answer_reward, build_suite, make_dataset, register_suite

    def parity_rows(numbers, difficulty):
        return make_dataset({"prompt": f"Is {x} odd? 0=no 1=yes", "answer": str(x % 2), "skill": "compare",
                             "difficulty": difficulty, "images": []} for x in numbers)

    def build_parity(n_train: int, n_eval: int, seed: int, difficulty: int = 1) -> TaskSuite:
        start = seed * (n_train + n_eval)
        train = parity_rows(range(start, start + n_train), difficulty)
        held_out = parity_rows(range(start + n_train, start + n_train + n_eval), difficulty)
        return TaskSuite("parity", "text", train, held_out, answer_reward)

    register_suite("parity", build_parity)
    suite = build_suite("parity", n_train=200, n_eval=50, seed=0)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import PIL.Image
import pyarrow.compute as pc
from datasets import Features, Image, Sequence, Value

SKILLS = ("count", "compare", "add", "order")
MODALITIES = ("text", "image", "video")

_INTEGER = re.compile(r"-?[0-9]+")

Verifier = Callable[[str, Mapping[str, Any]], float]

FEATURES = Features(
    {
        "prompt": Value("string"),
        "answer": Value("string"),
        "skill": Value("string"),
        "difficulty": Value("int64"),
        # A list of images for every modality keeps one schema for all suites and round-trips
        # through save_to_disk/load_from_disk as PNG bytes.
        "images": Sequence(Image()),
    }
)


def make_dataset(rows: Iterable[Mapping[str, Any]]) -> datasets.Dataset:
    """A Dataset with the suite columns from row dicts.

    Images may be PIL images, uint8 numpy arrays (H, W, 3) or ``{"bytes": png, "path": None}`` dicts."""
    columns: dict[str, list[Any]] = {name: [] for name in FEATURES}
    for row in rows:
        for name in FEATURES:
            columns[name].append(row[name])
    # datasets turns numpy arrays into int64 lists on the way in (and then warns as it downcasts);
    # PIL images keep their pixels exact.
    columns["images"] = [
        [PIL.Image.fromarray(image) if isinstance(image, np.ndarray) else image for image in images]
        for images in columns["images"]
    ]
    return datasets.Dataset.from_dict(columns, features=FEATURES)


@dataclass(frozen=True)
class TaskSuite:
    """One domain's tasks: what the experts train on, what they are evaluated on, and how it is scored."""

    domain: str  # "text", "image", "video" or a user's name
    modality: str  # "text" | "image" | "video": how many images a row carries
    train: datasets.Dataset
    eval: datasets.Dataset
    verifier: Verifier  # (completion text, dataset row) -> reward

    def __post_init__(self) -> None:
        # Validated once, here at the edge, so a bad user suite fails before any training step.
        if not isinstance(self.domain, str) or not self.domain:
            raise ValueError(f"TaskSuite.domain must be a non-empty string, got {self.domain!r}")
        if self.modality not in MODALITIES:
            raise ValueError(f"TaskSuite.modality must be one of {MODALITIES}, got {self.modality!r}")
        if not callable(self.verifier):
            raise TypeError(f"TaskSuite.verifier must be callable, got {self.verifier!r}")
        for split in ("train", "eval"):
            _check_split(getattr(self, split), f"TaskSuite({self.domain!r}).{split}", self.modality)


def _check_split(dataset: Any, where: str, modality: str) -> None:
    """Columns, feature types, integer answers and the image count that the modality implies."""
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"{where} must be a datasets.Dataset, got {type(dataset).__name__}")
    for name, feature in FEATURES.items():
        if name not in dataset.features:
            raise ValueError(f"{where} lacks column {name!r}; required columns: {list(FEATURES)}")
        found = dataset.features[name]
        if name == "difficulty":
            ok = isinstance(found, Value) and found.dtype.startswith("int")
        else:
            ok = found == feature
        if not ok:
            raise ValueError(f"{where} column {name!r} has feature {found}, expected {feature}")
    if len(dataset) == 0:
        return
    table = dataset.with_format("arrow")  # no image decoding: validation stays cheap on big suites
    for answer in table["answer"].to_pylist():
        if answer is None or not _INTEGER.fullmatch(answer):
            raise ValueError(f"{where} column 'answer' holds {answer!r}; answers are integers as text")
    counts = pc.list_value_length(table["images"])
    low, high = pc.min(counts).as_py(), pc.max(counts).as_py()
    expected = {"text": (0, 0), "image": (1, 1)}.get(modality)
    if expected and (low, high) != expected or modality == "video" and low < 1:
        allowed = {"text": "0", "image": "1"}.get(modality, "at least 1")
        raise ValueError(
            f"{where} rows carry {low}..{high} images; modality {modality!r} allows {allowed} per row"
        )
